//! Port 0x61, system control port B: PIT channel 2 gate, speaker enable,
//! the refresh toggle and PIT channel 2's output (docs/devices.md §7).
//!
//! | bit | write | read here |
//! |---|---|---|
//! | 0 | PIT channel 2 gate | as written |
//! | 1 | speaker data enable | as written |
//! | 2, 3 | NMI disable/clear (SERR#, IOCHK) | 0 (not stored, as QEMU) |
//! | 4 | - | refresh toggle: **flips on every read** (QEMU parity) |
//! | 5 | - | PIT channel 2 OUT, from [`PitChannel2::output`] |
//! | 6, 7 | - | 0: no NMI source, every NMI is "unknown reason" |
//!
//! The refresh bit flipping per read makes delay loops that poll it finish
//! at once; KVM's own port 0x61 (with `KVM_PIT_SPEAKER_DUMMY`) derives it from
//! host time instead.
//!
//! **PIT channel 2.** The gate and OUT belong to the PIT. [`Port61`] talks to
//! it through [`PitChannel2`]; until a PIT model implements that,
//! [`NoPitChannel2`] ignores the gate and reads OUT as 0. Linux's PIT TSC
//! calibration (`pit_calibrate_tsc`) spins until bit 5 reads 1, with no bound,
//! so a guest that calibrates its TSC with the PIT (no kvmclock, no CPUID
//! TSC frequency) would hang on [`NoPitChannel2`]. With KVM's in-kernel PIT
//! create it with `KVM_PIT_SPEAKER_DUMMY` and let KVM handle port 0x61
//! instead of registering this device.
//!
//! Only 1-byte accesses at offset 0 are accepted; others read 0xFF, are
//! ignored when written, and are counted (logged once).

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::log_once::FaultLog;

/// Bit 0: PIT channel 2 gate.
const GATE: u8 = 0x01;
/// Bit 1: speaker data enable (speaker = channel 2 OUT and this bit).
const SPEAKER_ENABLE: u8 = 0x02;
/// The bits a write stores.
const WRITABLE: u8 = GATE | SPEAKER_ENABLE;
/// Bit 4: refresh request toggle.
const REFRESH: u8 = 0x10;
/// Bit 5: PIT channel 2 OUT.
const CH2_OUT: u8 = 0x20;

const NAME: &str = "port61";

/// PIT channel 2 as port 0x61 sees it.
pub trait PitChannel2 {
    /// The guest set the gate input (bit 0) to `high`. Called on every write;
    /// the PIT looks for edges itself.
    fn set_gate(&mut self, high: bool);
    /// Channel 2's OUT pin now.
    fn output(&mut self) -> bool;
}

/// No PIT: the gate goes nowhere and OUT reads low.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoPitChannel2;

impl PitChannel2 for NoPitChannel2 {
    fn set_gate(&mut self, _high: bool) {}

    fn output(&mut self) -> bool {
        false
    }
}

/// Saved state of [`Port61`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Port61State {
    /// Bits 1:0 as last written.
    pub control: u8,
    /// The refresh bit's current value.
    pub refresh: bool,
}

/// System control port B, one port wide.
#[derive(Debug, Default)]
pub struct Port61<P: PitChannel2 = NoPitChannel2> {
    state: Port61State,
    pit: P,
    bad_accesses: FaultLog,
}

impl Port61<NoPitChannel2> {
    /// The port with no PIT behind it.
    pub fn new() -> Self {
        Self::with_pit(NoPitChannel2)
    }
}

impl<P: PitChannel2> Port61<P> {
    /// The port wired to PIT channel 2 `pit`.
    pub fn with_pit(pit: P) -> Self {
        Self {
            state: Port61State::default(),
            pit,
            bad_accesses: FaultLog::default(),
        }
    }

    /// Rebuilds the port from `state`; passes the stored gate on to the PIT.
    pub fn from_state(state: &Port61State, pit: P) -> Self {
        let mut dev = Self::with_pit(pit);
        dev.write(state.control);
        dev.state.refresh = state.refresh;
        dev
    }

    /// The current state.
    pub fn state(&self) -> Port61State {
        self.state
    }

    /// Replaces the state (a snapshot restore); passes the stored gate on
    /// to the PIT.
    pub fn restore(&mut self, state: &Port61State) {
        self.write(state.control);
        self.state.refresh = state.refresh;
    }

    /// The PIT channel.
    pub fn pit_mut(&mut self) -> &mut P {
        &mut self.pit
    }

    /// Whether the guest enabled the speaker (bit 1).
    pub fn speaker_enabled(&self) -> bool {
        self.state.control & SPEAKER_ENABLE != 0
    }

    /// Accesses refused by the bus adapter.
    pub fn invalid_accesses(&self) -> u64 {
        self.bad_accesses.count()
    }

    /// A guest read: flips the refresh bit and samples channel 2's OUT.
    pub fn read(&mut self) -> u8 {
        self.state.refresh = !self.state.refresh;
        let mut value = self.state.control;
        if self.state.refresh {
            value |= REFRESH;
        }
        if self.pit.output() {
            value |= CH2_OUT;
        }
        value
    }

    /// A guest write: stores gate and speaker enable, passes the gate on.
    pub fn write(&mut self, value: u8) {
        self.state.control = value & WRITABLE;
        self.pit.set_gate(value & GATE != 0);
    }
}

impl<P: PitChannel2> MutDevicePio for Port61<P> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (offset, &mut *data) {
            (0, [byte]) => *byte = self.read(),
            _ => self.bad_accesses.refuse_read(NAME, base, offset, data),
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data) {
            (0, [byte]) => self.write(*byte),
            _ => self.bad_accesses.refuse_write(NAME, base, offset, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{inb, outb};

    const PORT: u16 = 0x61;

    /// A channel 2 stand-in that records the gate and returns a set OUT.
    #[derive(Debug, Default)]
    struct FakeChannel {
        gates: Vec<bool>,
        out: bool,
    }

    impl PitChannel2 for FakeChannel {
        fn set_gate(&mut self, high: bool) {
            self.gates.push(high);
        }

        fn output(&mut self) -> bool {
            self.out
        }
    }

    #[test]
    fn gate_and_speaker_read_back() {
        let mut dev = Port61::new();
        outb(&mut dev, PORT, 0, 0x03);
        assert_eq!(inb(&mut dev, PORT, 0) & 0x03, 0x03);
        assert!(dev.speaker_enabled());
    }

    #[test]
    fn refresh_bit_flips_on_every_read() {
        let mut dev = Port61::new();
        let a = inb(&mut dev, PORT, 0);
        let b = inb(&mut dev, PORT, 0);
        let c = inb(&mut dev, PORT, 0);
        assert_eq!(a ^ b, REFRESH);
        assert_eq!(b ^ c, REFRESH);
    }

    #[test]
    fn nmi_bits_are_not_stored() {
        let mut dev = Port61::new();
        outb(&mut dev, PORT, 0, 0xFC);
        assert_eq!(inb(&mut dev, PORT, 0) & 0x0F, 0x00);
        // No NMI source, and no PIT: bits 7:5 read 0.
        assert_eq!(inb(&mut dev, PORT, 0) & 0xE0, 0x00);
    }

    #[test]
    fn talks_to_pit_channel_2() {
        let mut dev = Port61::with_pit(FakeChannel::default());
        outb(&mut dev, PORT, 0, 0x01);
        outb(&mut dev, PORT, 0, 0x02);
        assert_eq!(dev.pit_mut().gates, [true, false]);
        assert_eq!(inb(&mut dev, PORT, 0) & CH2_OUT, 0);
        dev.pit_mut().out = true;
        assert_eq!(inb(&mut dev, PORT, 0) & CH2_OUT, CH2_OUT);
    }

    #[test]
    fn refuses_other_accesses() {
        let mut dev = Port61::new();
        let mut word = [0u8; 2];
        dev.pio_read(PioAddress(PORT), 0, &mut word);
        assert_eq!(word, [0xFF, 0xFF]);
        assert_eq!(inb(&mut dev, PORT, 1), 0xFF);
        dev.pio_write(PioAddress(PORT), 0, &[0x03, 0x00]);
        outb(&mut dev, PORT, 7, 0x03);
        assert_eq!(dev.state().control, 0);
        assert_eq!(dev.invalid_accesses(), 4);
    }

    #[test]
    fn state_round_trips() {
        let mut dev = Port61::new();
        outb(&mut dev, PORT, 0, 0x03);
        inb(&mut dev, PORT, 0);
        let state = dev.state();
        let copy = Port61::from_state(&state, FakeChannel::default());
        assert_eq!(copy.state(), state);
        assert_eq!(copy.pit.gates, [true]);
    }
}
