//! Port 0x80: the POST-code / I/O-delay port (docs/devices.md §8).
//!
//! Writes are accepted and the last byte is kept (a boot-progress debugging
//! aid, logged at `trace`); reads return 0xFF, as nothing decodes them on a
//! PC. Linux writes here only for I/O delays (`outb_p`), which KVM guests
//! skip when CPUID advertises `KVM_FEATURE_NOP_IO_DELAY`: every write is a
//! VM exit, so the machine should advertise it.
//!
//! Only 1-byte writes at offset 0 are recorded; other writes are ignored and
//! counted (logged once). Reads of any size read all ones.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::log_once::FaultLog;

const NAME: &str = "port80";

/// Saved state of [`Port80`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Port80State {
    /// The last code written, if any.
    pub last_code: Option<u8>,
    /// How many codes were written (saturating).
    pub writes: u64,
}

/// The POST-code port, one port wide.
#[derive(Debug, Default)]
pub struct Port80 {
    state: Port80State,
    bad_accesses: FaultLog,
}

impl Port80 {
    /// Nothing written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the port from `state`.
    pub fn from_state(state: &Port80State) -> Self {
        Self {
            state: *state,
            bad_accesses: FaultLog::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> Port80State {
        self.state
    }

    /// Replaces the state (a snapshot restore).
    pub fn restore(&mut self, state: &Port80State) {
        self.state = *state;
    }

    /// The last POST code the guest wrote.
    pub fn last_code(&self) -> Option<u8> {
        self.state.last_code
    }

    /// Writes refused by the bus adapter.
    pub fn invalid_accesses(&self) -> u64 {
        self.bad_accesses.count()
    }
}

impl MutDevicePio for Port80 {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data) {
            (0, [code]) => {
                log::trace!("{NAME}: POST code {code:#04x}");
                self.state.last_code = Some(*code);
                self.state.writes = self.state.writes.saturating_add(1);
            }
            _ => self.bad_accesses.refuse_write(NAME, base, offset, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{inb, outb};

    const PORT: u16 = 0x80;

    #[test]
    fn records_the_last_code_and_reads_all_ones() {
        let mut dev = Port80::new();
        assert_eq!(dev.last_code(), None);
        outb(&mut dev, PORT, 0, 0x55);
        assert_eq!(inb(&mut dev, PORT, 0), 0xFF);
        outb(&mut dev, PORT, 0, 0xAA);
        assert_eq!(dev.last_code(), Some(0xAA));
        assert_eq!(dev.state().writes, 2);
        let mut word = [0u8; 2];
        dev.pio_read(PioAddress(PORT), 0, &mut word);
        assert_eq!(word, [0xFF, 0xFF]);
    }

    #[test]
    fn ignores_other_writes() {
        let mut dev = Port80::new();
        dev.pio_write(PioAddress(PORT), 0, &[0x12, 0x34]);
        dev.pio_write(PioAddress(PORT), 0, &[]);
        outb(&mut dev, PORT, 1, 0x56);
        assert_eq!(dev.state(), Port80State::default());
        assert_eq!(dev.invalid_accesses(), 3);
    }

    #[test]
    fn state_round_trips_and_saturates() {
        let state = Port80State {
            last_code: Some(0x42),
            writes: u64::MAX,
        };
        let mut dev = Port80::from_state(&state);
        assert_eq!(dev.state(), state);
        outb(&mut dev, PORT, 0, 0x43);
        assert_eq!(dev.state().writes, u64::MAX);
        assert_eq!(dev.last_code(), Some(0x43));
    }
}
