//! The machine's [`IoHandler`]: vCPU exits onto the port and MMIO buses.
//!
//! Unmapped ports read as all ones (0xff…), as an ISA bus with nothing
//! driving it does, and writes to them are dropped; each unmapped port is
//! logged once, at debug level. Unmapped MMIO behaves the same. Nothing a
//! guest does here can fail or panic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::{DeviceMmio, DevicePio};
use vmm_core::io::IoHandler;
use vmm_core::vcpu::ExtIntSource;
use vmm_pci::PciRoot;

use crate::irqchip::IrqLines;

/// How many distinct unmapped MMIO pages are logged before we stop (a guest
/// could otherwise make the log grow without bound).
const MMIO_LOG_LIMIT: usize = 64;

/// One bit per I/O port: "already logged as unmapped".
struct PortBitmap([AtomicU64; 1024]);

impl PortBitmap {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Sets the bit for `port`; returns whether it was clear before.
    fn first_time(&self, port: u16) -> bool {
        let word = &self.0[usize::from(port / 64)];
        let bit = 1u64 << (port % 64);
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

/// The PC's buses. Fixed devices sit on ranges of their own; an access no
/// fixed device claims goes to the PCI BARs that decode it, if any (BARs
/// move whenever the guest reprograms them, so they are looked up, not
/// registered).
pub struct PcIo {
    bus: IoManager,
    pci: Option<Arc<Mutex<PciRoot>>>,
    /// Where KVM's IO-APIC EOI exits go (the split irqchip's IO-APIC), and
    /// the boot vCPU's external interrupts come from (its 8259s).
    irq: Option<IrqLines>,
    logged_ports: PortBitmap,
    logged_mmio: AtomicUsize,
}

impl std::fmt::Debug for PcIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcIo").finish_non_exhaustive()
    }
}

/// A device could not be placed on the bus.
#[derive(Debug, thiserror::Error)]
#[error("cannot place {name} at {base:#x} (+{len:#x})")]
pub struct BusError {
    /// The device.
    pub name: &'static str,
    /// First port or address.
    pub base: u64,
    /// Number of ports or bytes.
    pub len: u64,
    /// The bus's reason.
    #[source]
    pub source: vm_device::bus::Error,
}

impl Default for PcIo {
    fn default() -> Self {
        Self::new()
    }
}

impl PcIo {
    /// Empty buses.
    pub fn new() -> Self {
        Self {
            bus: IoManager::new(),
            pci: None,
            irq: None,
            logged_ports: PortBitmap::new(),
            logged_mmio: AtomicUsize::new(0),
        }
    }

    /// Places `device` on ports `base..base + len`.
    pub fn add_pio(
        &mut self,
        name: &'static str,
        base: u16,
        len: u16,
        device: Arc<dyn DevicePio + Send + Sync>,
    ) -> Result<(), BusError> {
        let err = |source| BusError {
            name,
            base: u64::from(base),
            len: u64::from(len),
            source,
        };
        let range = PioRange::new(PioAddress(base), len).map_err(err)?;
        self.bus.register_pio(range, device).map_err(err)
    }

    /// Places `device` on MMIO `base..base + len`.
    pub fn add_mmio(
        &mut self,
        name: &'static str,
        base: u64,
        len: u64,
        device: Arc<dyn DeviceMmio + Send + Sync>,
    ) -> Result<(), BusError> {
        let err = |source| BusError {
            name,
            base,
            len,
            source,
        };
        let range = MmioRange::new(MmioAddress(base), len).map_err(err)?;
        self.bus.register_mmio(range, device).map_err(err)
    }

    /// Sends the local APICs' EOIs of level-triggered vectors to `irq`.
    pub fn set_irq_lines(&mut self, irq: IrqLines) {
        self.irq = Some(irq);
    }

    /// Sends what no fixed device claims to `root`'s BARs.
    pub fn set_pci(&mut self, root: Arc<Mutex<PciRoot>>) {
        self.pci = Some(root);
    }

    fn pci(&self) -> Option<std::sync::MutexGuard<'_, PciRoot>> {
        self.pci
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn unmapped_port(&self, port: u16, what: &str, len: usize) {
        if self.logged_ports.first_time(port) {
            log::debug!("unmapped port {port:#x}: {len}-byte {what} (logged once per port)");
        }
    }

    fn unmapped_mmio(&self, addr: u64, what: &str, len: usize) {
        let n = self.logged_mmio.fetch_add(1, Ordering::Relaxed);
        if n < MMIO_LOG_LIMIT {
            log::debug!("unmapped MMIO at {addr:#x}: {len}-byte {what}");
        } else if n == MMIO_LOG_LIMIT {
            log::debug!("further unmapped MMIO accesses are not logged");
        }
    }
}

impl IoHandler for PcIo {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.bus.pio_read(PioAddress(port), data).is_err()
            && !self.pci().is_some_and(|mut p| p.pio_read(port, data))
        {
            data.fill(0xff);
            self.unmapped_port(port, "read", data.len());
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if self.bus.pio_write(PioAddress(port), data).is_err()
            && !self.pci().is_some_and(|mut p| p.pio_write(port, data))
        {
            self.unmapped_port(port, "write", data.len());
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.bus.mmio_read(MmioAddress(addr), data).is_err()
            && !self.pci().is_some_and(|mut p| p.mmio_read(addr, data))
        {
            data.fill(0xff);
            self.unmapped_mmio(addr, "read", data.len());
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.bus.mmio_write(MmioAddress(addr), data).is_err()
            && !self.pci().is_some_and(|mut p| p.mmio_write(addr, data))
        {
            self.unmapped_mmio(addr, "write", data.len());
        }
    }

    fn ioapic_eoi(&self, vector: u8) {
        if let Some(irq) = &self.irq {
            irq.eoi(vector);
        }
    }

    /// The split irqchip's 8259s, for the boot CPU (their INT output is
    /// its LINT0, ExtINT).
    fn external_interrupts(&self, vcpu: u32) -> Option<Arc<dyn ExtIntSource>> {
        match &self.irq {
            Some(IrqLines::Split(chips)) if vcpu == 0 => Some(Arc::new(chips.ext_int())),
            _ => None,
        }
    }
}

/// The machine's I/O as the vCPU threads get it: started while the
/// devices are still being made (so that their set-up runs beside it),
/// they run guest code, and so ask anything here, only once the machine has
/// [`LateIo::set`] the finished [`PcIo`]. Before that, an access finds
/// nothing (as an unmapped one), which no guest can make.
#[derive(Default)]
pub(crate) struct LateIo(OnceLock<Arc<PcIo>>);

impl LateIo {
    /// Hands the finished I/O over (once; a second call changes nothing).
    pub(crate) fn set(&self, io: Arc<PcIo>) {
        let _ = self.0.set(io);
    }
}

impl IoHandler for LateIo {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        match self.0.get() {
            Some(io) => io.pio_read(port, data),
            None => data.fill(0xff),
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if let Some(io) = self.0.get() {
            io.pio_write(port, data);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.0.get() {
            Some(io) => io.mmio_read(addr, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some(io) = self.0.get() {
            io.mmio_write(addr, data);
        }
    }

    fn ioapic_eoi(&self, vector: u8) {
        if let Some(io) = self.0.get() {
            io.ioapic_eoi(vector);
        }
    }

    fn external_interrupts(&self, vcpu: u32) -> Option<Arc<dyn ExtIntSource>> {
        self.0.get()?.external_interrupts(vcpu)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vm_device::bus::PioAddressOffset;
    use vm_device::MutDevicePio;

    use super::*;

    #[derive(Default)]
    struct Latch(Vec<(u16, Vec<u8>)>);

    impl MutDevicePio for Latch {
        fn pio_read(&mut self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn pio_write(&mut self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn mapped_ports_reach_the_device_with_offsets() {
        let mut io = PcIo::new();
        let dev = Arc::new(Mutex::new(Latch::default()));
        io.add_pio("latch", 0x3f8, 8, dev.clone()).unwrap();
        io.pio_write(0x3fb, &[0x80]);
        let mut b = [0u8; 1];
        io.pio_read(0x3fd, &mut b);
        assert_eq!(b, [5]);
        assert_eq!(dev.lock().unwrap().0, [(3, vec![0x80])]);
    }

    #[test]
    fn unmapped_ports_read_all_ones_at_every_width() {
        let io = PcIo::new();
        for len in [1, 2, 4] {
            let mut d = vec![0u8; len];
            io.pio_read(0x1234, &mut d);
            assert!(d.iter().all(|b| *b == 0xff));
        }
        io.pio_write(0x1234, &[1, 2, 3, 4]);
        let mut d = [0u8; 8];
        io.mmio_read(0xd000_0000, &mut d);
        assert_eq!(d, [0xff; 8]);
        io.mmio_write(0xd000_0000, &d);
    }

    #[test]
    fn every_port_any_width_is_safe() {
        let mut io = PcIo::new();
        io.add_pio("latch", 0xfff8, 8, Arc::new(Mutex::new(Latch::default())))
            .unwrap();
        for port in (0..=u16::MAX).step_by(7).chain([u16::MAX]) {
            for len in [0usize, 1, 2, 4, 8] {
                let mut d = vec![0u8; len];
                io.pio_read(port, &mut d);
                io.pio_write(port, &d);
            }
        }
    }

    #[test]
    fn overlapping_devices_are_refused() {
        let mut io = PcIo::new();
        let dev = Arc::new(Mutex::new(Latch::default()));
        io.add_pio("a", 0x60, 5, dev.clone()).unwrap();
        let e = io.add_pio("b", 0x61, 1, dev).unwrap_err();
        assert_eq!(e.to_string(), "cannot place b at 0x61 (+0x1)");
    }

    #[test]
    fn late_io_finds_nothing_until_set_then_the_devices() {
        let late = LateIo::default();
        let mut b = [0u8; 2];
        late.pio_read(0x3f8, &mut b);
        assert_eq!(b, [0xff; 2]);
        late.pio_write(0x3f8, &[1]);
        late.mmio_read(0xd000_0000, &mut b);
        assert_eq!(b, [0xff; 2]);
        assert!(late.external_interrupts(0).is_none());
        let mut io = PcIo::new();
        let dev = Arc::new(Mutex::new(Latch::default()));
        io.add_pio("latch", 0x3f8, 8, dev.clone()).unwrap();
        late.set(Arc::new(io));
        late.pio_write(0x3fb, &[0x80]);
        late.pio_read(0x3fd, &mut b[..1]);
        assert_eq!(b[0], 5);
        // Only what came after the hand-over.
        assert_eq!(dev.lock().unwrap().0, [(3, vec![0x80])]);
    }

    #[test]
    fn log_once_bitmap() {
        let b = PortBitmap::new();
        assert!(b.first_time(0));
        assert!(!b.first_time(0));
        assert!(b.first_time(u16::MAX));
        assert!(!b.first_time(u16::MAX));
    }
}
