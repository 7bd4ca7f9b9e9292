//! The i8254 programmable interval timer on ports 0x40-0x43 (SUBSYSTEMS §4).
//!
//! Three channels count down at [`PIT_FREQ_HZ`]. Nothing ticks: a count and
//! an OUT level are computed from the Virtual clock when the guest asks
//! ([`PitState`] holds the load time of each count), so a paused VM's PIT is
//! frozen with the clock and costs nothing.
//!
//! **Channel 0** drives ISA IRQ 0. The device keeps one Virtual-clock timer
//! armed at the next rising edge of channel 0's OUT and pulses its
//! [`Trigger`] there (an edge on the PIC and IO-APIC inputs, both
//! edge-triggered for IRQ 0): one host wake-up per guest interrupt, never a
//! timer per tick. Edges missed while the main loop was late are dropped, not
//! replayed (QEMU's default `discard` policy). Periodic modes (2, 3) are held
//! to one edge per [`MIN_PERIODIC_IRQ_INTERVAL_NS`], as KVM's in-kernel PIT
//! is, so a guest writing a tiny count cannot flood the host.
//!
//! **Channel 2** is gated by port 0x61 bit 0 and read back on bit 5, through
//! [`PitPort61`]. Channel 1 counts and is otherwise unconnected.
//!
//! # Which behaviour, where QEMU and the datasheet differ
//!
//! * Counts, gate edges, and the instant of every IRQ 0 edge follow QEMU's
//!   model (what Linux has been run against for years): a written count
//!   takes effect at once, a control word alone does not restart counting,
//!   a low gate does not stop counting, counting is always binary.
//! * The OUT level reported in the read-back status byte and on port 0x61
//!   follows the datasheet (mode 2 is high with a one-tick low pulse, modes
//!   4/5 likewise, mode 1 is low while the one-shot runs), as SUBSYSTEMS
//!   §4.7 item 6 recommends. Modes 6 and 7 act as modes 2 and 3.
//! * NULL COUNT in the status byte is always 0 (QEMU parity).

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vmm_clock::{ClockType, Clocks, Timer};

use crate::irq::{fire, Trigger};
use crate::log_once::FaultLog;
use crate::port61::PitChannel2;

/// The input clock of every channel: 14.31818 MHz / 12.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// Ports from the base (0x40): three data ports and the control word.
pub const PIT_PORT_LEN: u16 = 4;
/// The shortest interval between two IRQ 0 edges in the periodic modes
/// (KVM's `min_timer_period_us` default for its PIT).
pub const MIN_PERIODIC_IRQ_INTERVAL_NS: i64 = 200_000;

const NAME: &str = "i8254";
const NS_PER_SEC: u128 = 1_000_000_000;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    fn reset(gate: bool, now: i64) -> Self {
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
    fn irq_level(&self, d: u64) -> bool {
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
    fn next_rising_after(&self, d: u64) -> Option<u64> {
        let n = u64::from(self.count);
        match self.effective_mode() {
            0 | 4 | 5 => (d < n).then_some(n),
            1 => None,
            _ => Some((d / n + 1) * n),
        }
    }

    fn periodic(&self) -> bool {
        matches!(self.effective_mode(), 2 | 3)
    }

    fn status_byte(&self, now: i64) -> u8 {
        u8::from(self.out_at(now)) << 7
            | (self.rw_mode & 3) << 4
            | (self.mode & 7) << 1
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now: i64) {
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

    fn latch_status(&mut self, now: i64) {
        if !self.status_latched {
            self.status = self.status_byte(now);
            self.status_latched = true;
        }
    }

    fn read(&mut self, now: i64) -> u8 {
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
    fn write(&mut self, value: u8, now: i64) -> bool {
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

    fn control(&mut self, value: u8, now: i64) {
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
    fn set_gate(&mut self, high: bool, now: i64) -> bool {
        let rising = high && !self.gate;
        self.gate = high;
        if rising && matches!(self.effective_mode(), 1 | 2 | 3 | 5) {
            self.load_time_ns = now;
            return true;
        }
        false
    }
}

/// The whole PIT's state, plain data: read it out with [`Pit::state`] and
/// put it back with [`Pit::restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The i8254, on the Virtual clock, pulsing `T` for IRQ 0.
///
/// Made with [`Pit::new`] inside an `Arc<Mutex<_>>`, which is what the port
/// bus holds and what the IRQ timer's callback reaches (weakly).
#[derive(Debug)]
pub struct Pit<T: Trigger> {
    state: PitState,
    clocks: Clocks,
    timer: Option<Timer>,
    irq: T,
    irq_edges: u64,
    faults: FaultLog,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Trigger + Send + 'static> Pit<T> {
    /// A PIT after reset, counting on `clocks`' Virtual clock, with
    /// channel 0's timer armed (IRQ 0 runs at 18.2 Hz until programmed).
    pub fn new(clocks: &Clocks, irq: T) -> Arc<Mutex<Self>> {
        let now = clocks.now(ClockType::Virtual);
        let pit = Arc::new(Mutex::new(Self {
            state: PitState::reset(now),
            clocks: clocks.clone(),
            timer: None,
            irq,
            irq_edges: 0,
            faults: FaultLog::default(),
        }));
        let weak: Weak<Mutex<Self>> = Arc::downgrade(&pit);
        let timer = clocks.new_timer(ClockType::Virtual, move |_| {
            if let Some(pit) = weak.upgrade() {
                lock(&pit).timer_fired();
            }
        });
        {
            let mut p = lock(&pit);
            p.timer = Some(timer);
            p.schedule(now, 0);
        }
        pit
    }
}

impl<T: Trigger> Pit<T> {
    fn now(&self) -> i64 {
        self.clocks.now(ClockType::Virtual)
    }

    /// The current state.
    pub fn state(&self) -> PitState {
        self.state
    }

    /// Replaces the state (a snapshot restore) and re-arms IRQ 0.
    pub fn restore(&mut self, state: &PitState) {
        self.state = *state;
        let now = self.now();
        let d = self.state.channels[0].elapsed_ticks(now);
        self.schedule(now, d);
    }

    /// Resets the PIT (a machine reset).
    pub fn reset(&mut self) {
        let now = self.now();
        self.state = PitState::reset(now);
        self.schedule(now, 0);
    }

    /// IRQ 0 edges raised so far.
    pub fn irq_edges(&self) -> u64 {
        self.irq_edges
    }

    /// Accesses refused by the bus adapter (wrong size or offset).
    pub fn invalid_accesses(&self) -> u64 {
        self.faults.count()
    }

    /// A guest read of port `0x40 + offset`.
    pub fn read(&mut self, offset: u16) -> u8 {
        let now = self.now();
        match usize::from(offset) {
            ch @ 0..=2 => self.state.channels[ch].read(now),
            // The control port is write-only; QEMU reads it as 0.
            _ => 0,
        }
    }

    /// A guest write of `value` to port `0x40 + offset`.
    pub fn write(&mut self, offset: u16, value: u8) {
        let now = self.now();
        match usize::from(offset) {
            ch @ 0..=2 => {
                let before = self.state.channels[ch];
                if self.state.channels[ch].write(value, now) && ch == 0 {
                    self.ch0_reloaded(&before, now);
                }
            }
            _ => self.control(value, now),
        }
    }

    fn control(&mut self, value: u8, now: i64) {
        let select = usize::from(value >> 6);
        if select == 3 {
            // Read-back: bit 5 low latches counts, bit 4 low statuses.
            for (ch, channel) in self.state.channels.iter_mut().enumerate() {
                if value & (2 << ch) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    channel.latch_count(now);
                }
                if value & 0x10 == 0 {
                    channel.latch_status(now);
                }
            }
        } else {
            self.state.channels[select].control(value, now);
        }
    }

    /// Sets channel `ch`'s GATE input (only channel 2's is wired).
    pub fn set_gate(&mut self, ch: usize, high: bool) {
        let now = self.now();
        let Some(channel) = self.state.channels.get(ch).copied() else {
            return;
        };
        if self.state.channels[ch].set_gate(high, now) && ch == 0 {
            self.ch0_reloaded(&channel, now);
        }
    }

    /// Channel `ch`'s OUT pin now (datasheet levels).
    pub fn output(&self, ch: usize) -> bool {
        let now = self.now();
        self.state.channels.get(ch).is_some_and(|c| c.out_at(now))
    }

    /// Channel `ch`'s count now, as a latch would read it.
    pub fn count(&self, ch: usize) -> Option<u16> {
        let now = self.now();
        self.state.channels.get(ch).map(|c| c.count_at(now))
    }

    /// Channel 0 restarted: an edge if its line rose, then the next one.
    fn ch0_reloaded(&mut self, before: &PitChannelState, now: i64) {
        let was = before.irq_level(before.elapsed_ticks(now));
        let ch = &self.state.channels[0];
        if ch.irq_level(0) && !was {
            self.pulse();
        }
        self.schedule(now, 0);
    }

    fn timer_fired(&mut self) {
        let now = self.now();
        let ch = self.state.channels[0];
        let Some(edge) = self.state.next_edge_tick else {
            return;
        };
        if ch.tick_time_ns(edge) > now {
            // Re-armed meanwhile for a later edge.
            self.schedule(now, edge.saturating_sub(1));
            return;
        }
        self.pulse();
        let after = ch.elapsed_ticks(now).max(edge);
        self.schedule(now, after);
    }

    /// Arms the timer for channel 0's first rising edge after tick
    /// `after`, or disarms it.
    fn schedule(&mut self, now: i64, after: u64) {
        let ch = self.state.channels[0];
        let mut next = ch.next_rising_after(after);
        if let Some(tick) = next {
            if ch.periodic() && ch.tick_time_ns(tick) < now + MIN_PERIODIC_IRQ_INTERVAL_NS {
                let floor = ch.elapsed_ticks(now + MIN_PERIODIC_IRQ_INTERVAL_NS);
                next = ch.next_rising_after(floor.saturating_sub(1).max(after));
            }
        }
        self.state.next_edge_tick = next;
        let Some(timer) = &self.timer else { return };
        match next {
            // Rounding to ns may land at or before now: run just after.
            Some(tick) => timer.arm(ch.tick_time_ns(tick).max(now + 1)),
            None => timer.cancel(),
        }
    }

    fn pulse(&mut self) {
        self.irq_edges += 1;
        fire(&self.irq, &mut self.faults, NAME, "IRQ 0");
    }
}

impl<T: Trigger> MutDevicePio for Pit<T> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (offset, &mut *data) {
            (0..=3, [byte]) => *byte = self.read(offset),
            _ => self.faults.refuse_read(NAME, base, offset, data),
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data) {
            (0..=3, [byte]) => self.write(offset, *byte),
            _ => self.faults.refuse_write(NAME, base, offset, data),
        }
    }
}

/// PIT channel 2 as port 0x61 sees it: the [`PitChannel2`] for
/// [`Port61`](crate::Port61).
#[derive(Debug)]
pub struct PitPort61<T: Trigger>(pub Arc<Mutex<Pit<T>>>);

impl<T: Trigger> PitChannel2 for PitPort61<T> {
    fn set_gate(&mut self, high: bool) {
        lock(&self.0).set_gate(2, high);
    }

    fn output(&mut self) -> bool {
        lock(&self.0).output(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::EventFdTrigger;
    use crate::test_util::{fired, line, Sim};

    const MS: i64 = 1_000_000;
    const US: i64 = 1_000;

    struct Bench {
        sim: Sim,
        pit: Arc<Mutex<Pit<EventFdTrigger>>>,
        probe: EventFdTrigger,
    }

    impl Bench {
        fn new() -> Self {
            let sim = Sim::with_wall(0);
            let (irq, probe) = line();
            let pit = Pit::new(&sim.clocks, irq);
            Self { sim, pit, probe }
        }

        fn out(&self, port: u16, value: u8) {
            lock(&self.pit).write(port - 0x40, value);
        }

        fn inp(&self, port: u16) -> u8 {
            lock(&self.pit).read(port - 0x40)
        }

        fn edges(&self, ns: i64) -> Vec<i64> {
            self.sim.edges(ns, &self.probe)
        }

        fn wait(&self, ns: i64) {
            self.sim.run_for(ns, |_| {});
        }

        fn ch(&self, ch: usize) -> PitChannelState {
            lock(&self.pit).state().channels[ch]
        }
    }

    /// Nanoseconds of `ticks` input ticks, rounded down.
    fn ticks_ns(ticks: u64) -> i64 {
        i64::try_from(u128::from(ticks) * NS_PER_SEC / u128::from(PIT_FREQ_HZ)).unwrap()
    }

    fn assert_spacing(edges: &[i64], period: i64) {
        for pair in edges.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((gap - period).abs() <= 1, "gap {gap} ns, expected {period}");
        }
    }

    #[test]
    fn vector_1_mode_2_at_hz_100() {
        let b = Bench::new();
        b.wait(MS); // let the reset schedule settle
        let t0 = b.sim.now();
        b.out(0x43, 0x34);
        b.out(0x40, 0x9C);
        b.out(0x40, 0x2E);
        assert_eq!(b.ch(0).count, 11_932);
        let edges = b.edges(55 * MS);
        assert_eq!(edges.len(), 5);
        assert_eq!(edges[0], t0 + ticks_ns(11_932));
        assert_spacing(&edges, 10_000_151);
        // At t0 + 5 ms: latch, then LSB and MSB of 5967.
        let b = Bench::new();
        let t0 = b.sim.now();
        b.out(0x43, 0x34);
        b.out(0x40, 0x9C);
        b.out(0x40, 0x2E);
        b.wait(5 * MS);
        assert_eq!(b.sim.now(), t0 + 5 * MS);
        b.out(0x43, 0x00);
        assert_eq!(b.inp(0x40), 0x4F);
        assert_eq!(b.inp(0x40), 0x17);
    }

    #[test]
    fn vector_2_mode_3_decrements_by_two_one_edge_per_period() {
        let b = Bench::new();
        b.out(0x43, 0x36);
        b.out(0x40, 0x9C);
        b.out(0x40, 0x2E);
        b.wait(5 * MS);
        b.out(0x43, 0x00);
        assert_eq!(u16::from_le_bytes([b.inp(0x40), b.inp(0x40)]), 2);
        let edges = b.edges(100 * MS);
        assert_eq!(edges.len(), 10);
        assert_spacing(&edges, 10_000_151);
        // OUT high for the first 5966 ticks of each period.
        let ch = b.ch(0);
        let start = ch.load_time_ns;
        assert!(ch.out_at(start + ticks_ns(5965)));
        assert!(!ch.out_at(start + ticks_ns(5967)));
    }

    #[test]
    fn vector_3_after_reset_18_2_hz_and_lsb_reads() {
        let b = Bench::new();
        assert_eq!(b.inp(0x40), 0x00);
        b.wait(ticks_ns(1) + 1);
        assert_eq!(b.inp(0x40), 0xFE, "mode 3 counts down by two");
        let edges = b.edges(300 * MS);
        assert_eq!(edges.len(), 5);
        assert_spacing(&edges, 54_925_401);
    }

    #[test]
    fn vector_4_hz_1000() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0xA9);
        b.out(0x40, 0x04);
        let edges = b.edges(10 * MS);
        assert_eq!(edges.len(), 10);
        assert_spacing(&edges, 999_847);
    }

    #[test]
    fn vector_5_a_latch_holds_until_read_and_a_second_is_ignored() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0x00);
        b.out(0x40, 0x00);
        b.wait(MS);
        b.out(0x43, 0x00);
        let t1 = lock(&b.pit).count(0).unwrap();
        b.wait(MS);
        b.out(0x43, 0x00);
        let first = u16::from_le_bytes([b.inp(0x40), b.inp(0x40)]);
        assert_eq!(first, t1);
        b.out(0x43, 0x00);
        let now = lock(&b.pit).count(0).unwrap();
        b.wait(MS);
        let second = u16::from_le_bytes([b.inp(0x40), b.inp(0x40)]);
        assert_eq!(second, now);
        assert_ne!(first, second);
    }

    #[test]
    fn vector_6_read_back_status_then_count() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0x9C);
        b.out(0x40, 0x2E);
        b.wait(5 * MS);
        b.out(0x43, 0xE2);
        assert_eq!(b.inp(0x40), 0xB4, "datasheet OUT (high) | word | mode 2");
        // Status only: the next read is the live count again.
        assert_eq!(b.inp(0x40), 0x4F);
        b.inp(0x40);
        b.out(0x43, 0xC2);
        assert_eq!(b.inp(0x40), 0xB4);
        assert_eq!(b.inp(0x40), 0x4F);
        assert_eq!(b.inp(0x40), 0x17);
    }

    #[test]
    fn vector_7_lsb_only_mode_0_one_edge() {
        let b = Bench::new();
        b.out(0x43, 0x10);
        let t0 = b.sim.now();
        b.out(0x40, 0x64);
        let edges = b.edges(10 * MS);
        assert_eq!(edges, vec![t0 + ticks_ns(100)]);
        assert!((ticks_ns(100) - 83_809).abs() < 10);
        // LSB-only reads.
        let b = Bench::new();
        b.out(0x43, 0x10);
        b.out(0x40, 0x64);
        b.wait(ticks_ns(10) + 1);
        assert_eq!(b.inp(0x40), 90);
        assert_eq!(b.inp(0x40), 90);
    }

    #[test]
    fn vector_8_msb_only() {
        let b = Bench::new();
        b.out(0x43, 0x20);
        b.out(0x40, 0x01);
        assert_eq!(b.ch(0).count, 256);
        assert_eq!(b.inp(0x40), 0x01, "MSB reads");
    }

    fn gate_on(p61: &mut crate::Port61<PitPort61<EventFdTrigger>>) {
        let v = p61.read();
        p61.write((v & !2) | 1);
    }

    #[test]
    fn vector_9_channel_2_through_port_61() {
        let b = Bench::new();
        let mut p61 = crate::Port61::with_pit(PitPort61(b.pit.clone()));
        gate_on(&mut p61);
        b.out(0x43, 0xB0);
        b.out(0x42, 0x9B);
        b.out(0x42, 0x2E);
        let t0 = b.sim.now();
        let mut rise = None;
        for step in 0..2000 {
            b.wait(10 * US);
            let high = p61.read() & 0x20 != 0;
            if high && rise.is_none() {
                rise = Some(b.sim.now() - t0);
            }
            if rise.is_some() {
                assert!(high, "stays high (step {step})");
            }
        }
        let rise = rise.expect("OUT2 rose");
        assert!((9_990 * US..=10_010 * US).contains(&rise), "{rise}");
        assert_eq!(fired(&b.probe), 0, "channel 2 raises no IRQ");
    }

    #[test]
    fn vector_10_quick_calibration_msb_steps() {
        let b = Bench::new();
        b.out(0x43, 0xB0);
        b.out(0x42, 0xFF);
        b.out(0x42, 0xFF);
        let mut last = 0xFF;
        let mut steps = Vec::new();
        let t0 = b.sim.now();
        for _ in 0..5000 {
            b.wait(US);
            b.inp(0x42);
            let msb = b.inp(0x42);
            if msb != last {
                assert_eq!(msb, last - 1);
                steps.push(b.sim.now() - t0);
                last = msb;
            }
        }
        assert!(steps.len() >= 20);
        for pair in steps.windows(2) {
            assert!((pair[1] - pair[0] - 214_550).abs() <= 1_000);
        }
    }

    #[test]
    fn vector_11_gate_edge_restarts_mode_2_on_channel_2() {
        let b = Bench::new();
        b.out(0x43, 0xB4);
        b.out(0x42, 0x00);
        b.out(0x42, 0x10); // N = 4096
        b.wait(MS);
        lock(&b.pit).set_gate(2, true);
        let t = b.sim.now();
        assert_eq!(b.ch(2).load_time_ns, t);
        let ch = b.ch(2);
        assert!(!ch.out_at(t + ticks_ns(4095) + 1), "the low tick before N");
        assert!(ch.out_at(t + ticks_ns(4096) + 1));
    }

    #[test]
    fn vector_12_control_word_alone_keeps_the_schedule() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0x9C);
        b.out(0x40, 0x2E);
        let t0 = b.sim.now();
        b.wait(3 * MS);
        b.out(0x43, 0x34);
        let edges = b.edges(25 * MS);
        assert_eq!(edges[0], t0 + ticks_ns(11_932));
        assert_eq!(edges.len(), 2);
    }

    #[test]
    fn vector_13_mode_4_one_shot() {
        let b = Bench::new();
        b.wait(60 * MS);
        b.out(0x43, 0x38);
        let t0 = b.sim.now();
        b.out(0x40, 0xE8);
        b.out(0x40, 0x03);
        let edges = b.edges(100 * MS);
        assert_eq!(edges, vec![t0 + ticks_ns(1000)]);
    }

    #[test]
    fn vector_14_shutdown_gives_one_late_edge() {
        let b = Bench::new();
        b.wait(MS);
        b.out(0x43, 0x30);
        let t0 = b.sim.now();
        b.out(0x40, 0x00);
        b.out(0x40, 0x00);
        let edges = b.edges(500 * MS);
        assert_eq!(edges, vec![t0 + ticks_ns(65_536)]);
    }

    #[test]
    fn half_written_word_count_keeps_the_old_count() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0x9C);
        b.out(0x40, 0x2E);
        let load = b.ch(0).load_time_ns;
        b.wait(MS);
        b.out(0x40, 0x55); // LSB only, MSB never comes
        assert_eq!(b.ch(0).count, 11_932);
        assert_eq!(b.ch(0).load_time_ns, load);
        assert_eq!(b.edges(30 * MS).len(), 3);
        // The MSB that finally comes completes the pending word.
        b.out(0x40, 0x01);
        assert_eq!(b.ch(0).count, 0x0155);
    }

    #[test]
    fn read_back_of_all_channels() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x43, 0x70 | 0x04); // ch1 word mode 2
        b.out(0x43, 0xB0);
        b.out(0x43, 0xC0 | 0x0E); // count and status of 0, 1, 2
        assert_eq!(b.inp(0x40), 0xB4);
        assert_eq!(b.inp(0x41), 0xB4);
        assert_eq!(b.inp(0x42), 0x30, "mode 0 OUT low after reset's count");
        for port in 0x40..=0x42 {
            // count after the status: LSB then MSB of 65536 - d
            b.inp(port);
            b.inp(port);
        }
        // Nothing latched any more: a status-only read-back of none is a no-op.
        b.out(0x43, 0xE0);
        assert!(!b.ch(0).status_latched);
    }

    #[test]
    fn mode_change_mid_count_takes_effect_at_the_next_load() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0xA9);
        b.out(0x40, 0x04);
        b.wait(500 * US);
        b.out(0x43, 0x30); // mode 0, no count yet
                           // The timer still fires on the old schedule, then judges by mode 0:
                           // d is past N, so no more edges.
        let edges = b.edges(10 * MS);
        assert_eq!(edges.len(), 1);
        b.out(0x40, 0xA9);
        b.out(0x40, 0x04);
        assert_eq!(b.edges(10 * MS).len(), 1, "mode 0: one edge");
    }

    #[test]
    fn tiny_periodic_counts_are_held_to_the_minimum_interval() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0x02);
        b.out(0x40, 0x00); // N = 2: 596 kHz asked
        let edges = b.edges(10 * MS);
        assert!(edges.len() <= 50, "{} edges in 10 ms", edges.len());
        assert!(edges.len() >= 45);
        // Mode 2 with N = 1 (illegal) does not spin either.
        b.out(0x40, 0x01);
        b.out(0x40, 0x00);
        assert!(b.edges(10 * MS).len() <= 50);
    }

    #[test]
    fn paused_vm_freezes_counts_and_edges() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0xA9);
        b.out(0x40, 0x04);
        b.wait(300 * US);
        b.sim.clocks.vm_stop();
        let frozen = lock(&b.pit).count(0);
        let edges = b.edges(50 * MS);
        assert!(edges.is_empty());
        assert_eq!(lock(&b.pit).count(0), frozen);
        b.sim.clocks.vm_start();
        let edges = b.edges(10 * MS);
        assert_eq!(edges.len(), 10);
        // The first edge came N ticks of *guest* time after the load.
        assert_eq!(edges[0], 50 * MS + ticks_ns(1193));
    }

    #[test]
    fn state_round_trips_and_reset_restores_defaults() {
        let b = Bench::new();
        b.out(0x43, 0x34);
        b.out(0x40, 0xA9);
        b.out(0x40, 0x04);
        b.out(0x43, 0x00);
        let saved = lock(&b.pit).state();
        let (irq, probe) = line();
        let other = Pit::new(&b.sim.clocks, irq);
        lock(&other).restore(&saved);
        assert_eq!(lock(&other).state(), saved);
        assert_eq!(b.sim.edges(5 * MS, &probe).len(), 5);
        lock(&other).reset();
        let st = lock(&other).state();
        assert_eq!(st.channels[0].mode, 3);
        assert_eq!(st.channels[0].count, 0x1_0000);
        assert!(!st.channels[2].gate);
    }

    #[test]
    fn bus_adapter_refuses_wide_accesses() {
        let b = Bench::new();
        let mut pit = lock(&b.pit);
        let mut data = [0u8; 2];
        pit.pio_read(PioAddress(0x40), 0, &mut data);
        assert_eq!(data, [0xFF, 0xFF]);
        pit.pio_write(PioAddress(0x40), 3, &[0x34, 0]);
        assert_eq!(pit.invalid_accesses(), 2);
        assert_eq!(pit.state().channels[0].mode, 3, "refused write ignored");
        let mut byte = [0u8];
        pit.pio_read(PioAddress(0x40), 3, &mut byte);
        assert_eq!(byte, [0], "control port reads 0");
    }
}
