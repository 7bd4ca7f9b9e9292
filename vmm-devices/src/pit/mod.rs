//! The i8254 programmable interval timer on ports 0x40-0x43 (docs/devices.md §4).
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
//!   4/5 likewise, mode 1 is low while the one-shot runs), as docs/devices.md
//!   §4.7 item 6 recommends. Modes 6 and 7 act as modes 2 and 3.
//! * NULL COUNT in the status byte is always 0 (QEMU parity).

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vmm_clock::{ClockType, Clocks, Timer};

use crate::irq::{fire, Trigger};
use crate::log_once::FaultLog;
use crate::port61::PitChannel2;

mod channel;

pub use channel::{PitChannelState, PitState};

/// The input clock of every channel: 14.31818 MHz / 12.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// Ports from the base (0x40): three data ports and the control word.
pub const PIT_PORT_LEN: u16 = 4;
/// The shortest interval between two IRQ 0 edges in the periodic modes
/// (KVM's `min_timer_period_us` default for its PIT).
pub const MIN_PERIODIC_IRQ_INTERVAL_NS: i64 = 200_000;

const NAME: &str = "i8254";
const NS_PER_SEC: u128 = 1_000_000_000;

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
    pub(crate) fn now(&self) -> i64 {
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
            let soonest = now.saturating_add(MIN_PERIODIC_IRQ_INTERVAL_NS);
            if ch.periodic() && ch.tick_time_ns(tick) < soonest {
                let floor = ch.elapsed_ticks(soonest);
                next = ch.next_rising_after(floor.saturating_sub(1).max(after));
            }
        }
        self.state.next_edge_tick = next;
        let Some(timer) = &self.timer else { return };
        match next {
            // Rounding to ns may land at or before now: run just after.
            Some(tick) => timer.arm(ch.tick_time_ns(tick).max(now.saturating_add(1))),
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
mod tests;
