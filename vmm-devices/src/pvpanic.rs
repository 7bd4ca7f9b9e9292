//! QEMU's pvpanic ISA device on port 0x505 (QEMU's `docs/specs/pvpanic`):
//! the guest reports a panic through it, so the host learns of it at once
//! instead of watching the console.
//!
//! A read returns the events the device knows: bit 0 PANICKED (the host
//! should act) and bit 1 CRASH_LOADED (a crash kernel takes over; the host
//! only records it). A write of PANICKED fires the panic [`Trigger`];
//! CRASH_LOADED is logged; other bits are ignored. Linux finds the device
//! through the ACPI id `QEMU0001` (its `pvpanic-mmio` driver).

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::irq::{fire, Trigger};
use crate::log_once::FaultLog;

/// The port QEMU uses.
pub const PVPANIC_PORT: u16 = 0x505;
/// Bit 0: a panic the host should handle.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Bit 1: a panic a crash kernel handles.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

const NAME: &str = "pvpanic";

/// The pvpanic device.
#[derive(Debug)]
pub struct PvPanic<T: Trigger> {
    panicked: T,
    panics: u64,
    crash_loaded: u64,
    faults: FaultLog,
}

impl<T: Trigger> PvPanic<T> {
    /// A device that fires `panicked` when the guest reports a panic.
    pub fn new(panicked: T) -> Self {
        Self {
            panicked,
            panics: 0,
            crash_loaded: 0,
            faults: FaultLog::default(),
        }
    }

    /// Panics reported so far.
    pub fn panics(&self) -> u64 {
        self.panics
    }

    /// A guest write.
    pub fn write(&mut self, value: u8) {
        if value & PVPANIC_PANICKED != 0 {
            self.panics += 1;
            fire(&self.panicked, &mut self.faults, NAME, "panic");
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            self.crash_loaded += 1;
            log::warn!("the guest panicked and loaded its crash kernel");
        }
    }
}

impl<T: Trigger> MutDevicePio for PvPanic<T> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (offset, &mut *data) {
            (0, [byte]) => *byte = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED,
            _ => self.faults.refuse_read(NAME, base, offset, data),
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data) {
            (0, [byte]) => self.write(*byte),
            _ => self.faults.refuse_write(NAME, base, offset, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fired, inb, line, outb};

    #[test]
    fn reads_its_events_and_reports_panics() {
        let (trigger, probe) = line();
        let mut dev = PvPanic::new(trigger);
        assert_eq!(inb(&mut dev, PVPANIC_PORT, 0), 0x03);
        outb(&mut dev, PVPANIC_PORT, 0, PVPANIC_CRASH_LOADED);
        assert_eq!(fired(&probe), 0);
        outb(&mut dev, PVPANIC_PORT, 0, 0xF0);
        assert_eq!(fired(&probe), 0, "unknown bits are ignored");
        outb(&mut dev, PVPANIC_PORT, 0, PVPANIC_PANICKED);
        assert_eq!(fired(&probe), 1);
        assert_eq!(dev.panics(), 1);
    }
}
