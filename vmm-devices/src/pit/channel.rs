//! One i8254 channel: its count, OUT level and byte-access state machine, and
//! the whole PIT's plain-data state, all computed from the Virtual-clock time
//! at which the count was loaded.

use super::{NS_PER_SEC, PIT_FREQ_HZ};

/// Byte-access states of a channel (the RW field, plus the second half of
/// a word access).
mod access {
    /// Nothing latched / never programmed.
    pub const NONE: u8 = 0;
    pub const LSB: u8 = 1;
    pub const MSB: u8 = 2;
    /// LSB then MSB: the LSB comes next.
    pub const WORD_LSB: u8 = 3;
    /// LSB then MSB: the MSB comes next.
    pub const WORD_MSB: u8 = 4;
}

/// One channel's state, everything a snapshot needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PitChannelState {
    /// The count in use, 1..=65536 (a written 0 means 65536).
    pub count: u32,
    /// The value a counter-latch command captured.
    pub latched_count: u16,
    /// Which latched byte(s) remain to be read ([`access`] states; 0: none).
    pub count_latched: u8,
    /// Whether a read-back latched the status byte.
    pub status_latched: bool,
    /// The latched status byte.
    pub status: u8,
    /// Where the next live-count read is in a word access.
    pub read_state: u8,
    /// Where the next data write is in a word access.
    pub write_state: u8,
    /// The LSB of a word write, waiting for its MSB.
    pub write_latch: u8,
    /// The access mode last programmed (RW field, 1..=3; 0 never set).
    pub rw_mode: u8,
    /// The mode field as written (0..=7).
    pub mode: u8,
    /// The BCD bit as written (stored and reported; counting is binary).
    pub bcd: bool,
    /// The GATE input.
    pub gate: bool,
    /// Virtual-clock time (ns) at which the count was loaded or the gate
    /// last retriggered it.
    pub load_time_ns: i64,
}

impl PitChannelState {
    /// A channel after reset: mode 3, count 65536, loaded at `now`.
    pub(super) fn reset(gate: bool, now: i64) -> Self {
        Self {
            count: 0x1_0000,
            latched_count: 0,
            count_latched: access::NONE,
            status_latched: false,
            status: 0,
            read_state: access::NONE,
            write_state: access::NONE,
            write_latch: 0,
            rw_mode: access::NONE,
            mode: 3,
            bcd: false,
            gate,
            load_time_ns: now,
        }
    }

    /// Input ticks since the count was loaded.
    pub fn elapsed_ticks(&self, now: i64) -> u64 {
        let ns = u128::try_from(now.saturating_sub(self.load_time_ns)).unwrap_or(0);
        u64::try_from(ns * u128::from(PIT_FREQ_HZ) / NS_PER_SEC).unwrap_or(u64::MAX)
    }

    /// The Virtual-clock time of input tick `ticks` after the load.
    pub fn tick_time_ns(&self, ticks: u64) -> i64 {
        let ns = u128::from(ticks) * NS_PER_SEC / u128::from(PIT_FREQ_HZ);
        self.load_time_ns
            .saturating_add(i64::try_from(ns).unwrap_or(i64::MAX))
    }

    /// The mode in effect: 6 and 7 are 2 and 3, as on a real 8254.
    pub fn effective_mode(&self) -> u8 {
        match self.mode {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    /// The count a read or latch returns at `now`.
    pub fn count_at(&self, now: i64) -> u16 {
        let d = self.elapsed_ticks(now);
        let n = u64::from(self.count);
        let value = match self.effective_mode() {
            0 | 1 | 4 | 5 => n.wrapping_sub(d),
            3 => n - (d.wrapping_mul(2) % n),
            _ => n - d % n,
        };
        // Truncation is the counter's width: 65536 reads as 0.
        (value & 0xFFFF) as u16
    }

    /// The OUT pin at `now`, as the datasheet draws it (status byte, port
    /// 0x61 bit 5).
    pub fn out_at(&self, now: i64) -> bool {
        let d = self.elapsed_ticks(now);
        let n = u64::from(self.count);
        match self.effective_mode() {
            0 | 1 => d >= n,
            2 => d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// The IRQ line's level `d` ticks after the load, in QEMU's model,
    /// whose rising edges are the interrupts.
    pub(super) fn irq_level(&self, d: u64) -> bool {
        let n = u64::from(self.count);
        match self.effective_mode() {
            0 => d >= n,
            1 => d < n,
            2 => d % n == 0 && d != 0,
            3 => d % n < n.div_ceil(2),
            _ => d == n,
        }
    }

    /// The first tick after `d` at which the IRQ line rises, if any.
    pub(super) fn next_rising_after(&self, d: u64) -> Option<u64> {
        let n = u64::from(self.count);
        match self.effective_mode() {
            0 | 4 | 5 => (d < n).then_some(n),
            1 => None,
            _ => Some((d / n + 1) * n),
        }
    }

    pub(super) fn periodic(&self) -> bool {
        matches!(self.effective_mode(), 2 | 3)
    }

    pub(super) fn status_byte(&self, now: i64) -> u8 {
        u8::from(self.out_at(now)) << 7
            | (self.rw_mode & 3) << 4
            | (self.mode & 7) << 1
            | u8::from(self.bcd)
    }

    pub(super) fn latch_count(&mut self, now: i64) {
        // A second latch before the first is read is ignored.
        if self.count_latched == access::NONE {
            self.latched_count = self.count_at(now);
            self.count_latched = match self.rw_mode {
                access::NONE => access::LSB,
                access::MSB => access::MSB,
                access::LSB => access::LSB,
                _ => access::WORD_LSB,
            };
        }
    }

    pub(super) fn latch_status(&mut self, now: i64) {
        if !self.status_latched {
            self.status = self.status_byte(now);
            self.status_latched = true;
        }
    }

    pub(super) fn read(&mut self, now: i64) -> u8 {
        if self.status_latched {
            self.status_latched = false;
            return self.status;
        }
        if self.count_latched != access::NONE {
            let [lo, hi] = self.latched_count.to_le_bytes();
            let (value, next) = match self.count_latched {
                access::MSB => (hi, access::NONE),
                access::WORD_LSB => (lo, access::MSB),
                _ => (lo, access::NONE),
            };
            self.count_latched = next;
            return value;
        }
        let [lo, hi] = self.count_at(now).to_le_bytes();
        match self.read_state {
            access::MSB => hi,
            access::WORD_LSB => {
                self.read_state = access::WORD_MSB;
                lo
            }
            access::WORD_MSB => {
                self.read_state = access::WORD_LSB;
                hi
            }
            _ => lo,
        }
    }

    /// A data-port write; returns whether it loaded a new count.
    pub(super) fn write(&mut self, value: u8, now: i64) -> bool {
        let count = match self.write_state {
            access::MSB => u32::from(value) << 8,
            access::WORD_LSB => {
                self.write_latch = value;
                self.write_state = access::WORD_MSB;
                return false;
            }
            access::WORD_MSB => {
                self.write_state = access::WORD_LSB;
                u32::from(u16::from_le_bytes([self.write_latch, value]))
            }
            _ => u32::from(value),
        };
        self.count = if count == 0 { 0x1_0000 } else { count };
        self.load_time_ns = now;
        true
    }

    pub(super) fn control(&mut self, value: u8, now: i64) {
        let rw = (value >> 4) & 3;
        if rw == 0 {
            self.latch_count(now);
            return;
        }
        self.rw_mode = rw;
        let state = if rw == 3 { access::WORD_LSB } else { rw };
        self.read_state = state;
        self.write_state = state;
        self.mode = (value >> 1) & 7;
        self.bcd = value & 1 != 0;
    }

    /// Sets GATE; returns whether the count restarted (a rising edge in
    /// modes 1, 2, 3 and 5).
    pub(super) fn set_gate(&mut self, high: bool, now: i64) -> bool {
        let rising = high && !self.gate;
        self.gate = high;
        if rising && matches!(self.effective_mode(), 1 | 2 | 3 | 5) {
            self.load_time_ns = now;
            return true;
        }
        false
    }
}

/// The whole PIT's state, plain data: read it out with [`Pit::state`](super::Pit::state) and
/// put it back with [`Pit::restore`](super::Pit::restore).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PitState {
    /// Channels 0, 1 and 2.
    pub channels: [PitChannelState; 3],
    /// The channel-0 tick (from its load) of the next IRQ 0 edge the timer
    /// is armed for.
    pub next_edge_tick: Option<u64>,
}

impl PitState {
    /// The state after reset at Virtual time `now`: every channel in mode 3
    /// with count 65536; gates high except channel 2's.
    pub fn reset(now: i64) -> Self {
        Self {
            channels: [
                PitChannelState::reset(true, now),
                PitChannelState::reset(true, now),
                PitChannelState::reset(false, now),
            ],
            next_edge_tick: None,
        }
    }
}
