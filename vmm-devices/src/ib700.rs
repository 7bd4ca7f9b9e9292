//! The iBASE IB700 single-board computer's watchdog (QEMU's `ib700`), on
//! the Virtual clock.
//!
//! Two write-only ports: a write to 0x443 (re)arms the watchdog with the
//! timeout that the low four bits of the byte select, 30 s down to 0 s in
//! steps of 2 s (index 0 is 30 s, 15 is 0 s, as Linux's `ib700wdt` driver
//! numbers them); a write to 0x441 disarms it. When the timeout passes
//! with no new write to 0x443, the watchdog fires its line once (the
//! machine then carries out the `--action watchdog=` policy) and stays
//! disarmed until armed again. Reads return 0xff (nothing drives the
//! bus). The timer runs on the Virtual clock: it stands still while the
//! VM is stopped, as the guest's own time does.
//!
//! Bounds: one timer, one line edge per arming; a guest re-arming in a
//! loop only moves the deadline.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::Trigger;
use vmm_clock::{ClockType, Clocks, Timer};
use vmm_qom::{InvalidState, Stateful};

use crate::irq::{fire, EventFdTrigger};
use crate::log_once::FaultLog;

/// The first port (disarm); the block is [`IB700_PORT_LEN`] ports long.
pub const IB700_PORT: u16 = 0x441;
/// Ports 0x441-0x443.
pub const IB700_PORT_LEN: u16 = 3;
/// Offset of the disarm port (0x441).
const STOP: PioAddressOffset = 0;
/// Offset of the arm port (0x443).
const START: PioAddressOffset = 2;
const NS_PER_SEC: i64 = 1_000_000_000;

const NAME: &str = "ib700";

/// The timeout, in seconds, that a byte written to 0x443 selects.
pub fn timeout_secs(value: u8) -> i64 {
    30 - 2 * i64::from(value & 0x0f)
}

/// The watchdog's state: when it fires, if armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ib700State {
    /// Virtual-clock time (ns) at which the watchdog fires; `None` while
    /// disarmed.
    pub deadline_ns: Option<i64>,
}

/// The IB700 watchdog, firing `T` when it expires.
#[derive(Debug)]
pub struct Ib700<T: Trigger = EventFdTrigger> {
    state: Ib700State,
    clocks: Clocks,
    timer: Option<Timer>,
    expired: T,
    fired: u64,
    faults: FaultLog,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Trigger + Send + 'static> Ib700<T> {
    /// A disarmed watchdog on `clocks`' Virtual clock that fires `expired`.
    pub fn new(clocks: &Clocks, expired: T) -> Arc<Mutex<Self>> {
        let dev = Arc::new(Mutex::new(Self {
            state: Ib700State::default(),
            clocks: clocks.clone(),
            timer: None,
            expired,
            fired: 0,
            faults: FaultLog::default(),
        }));
        let weak: Weak<Mutex<Self>> = Arc::downgrade(&dev);
        let timer = clocks.new_timer(ClockType::Virtual, move |_| {
            if let Some(dev) = weak.upgrade() {
                lock(&dev).expire();
            }
        });
        lock(&dev).timer = Some(timer);
        dev
    }
}

impl<T: Trigger> Ib700<T> {
    /// How many times the watchdog fired.
    pub fn fired(&self) -> u64 {
        self.fired
    }

    /// The state.
    pub fn state(&self) -> Ib700State {
        self.state
    }

    /// A guest write at `offset` from 0x441.
    pub fn write(&mut self, offset: PioAddressOffset, value: u8) {
        match offset {
            START => {
                let now = self.clocks.now(ClockType::Virtual);
                let deadline = now.saturating_add(timeout_secs(value) * NS_PER_SEC);
                self.arm(Some(deadline));
            }
            STOP => self.arm(None),
            _ => {}
        }
    }

    fn arm(&mut self, deadline: Option<i64>) {
        self.state.deadline_ns = deadline;
        if let Some(timer) = &self.timer {
            match deadline {
                Some(at) => timer.arm(at),
                None => timer.cancel(),
            }
        }
    }

    fn expire(&mut self) {
        if self.state.deadline_ns.take().is_some() {
            self.fired += 1;
            fire(&self.expired, &mut self.faults, NAME, "expiry");
        }
    }
}

impl<T: Trigger> MutDevicePio for Ib700<T> {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if let [byte] = data {
            self.write(offset, *byte);
        }
    }
}

impl<T: Trigger> Stateful for Ib700<T> {
    const TYPE: &'static str = "ib700";
    type State = Ib700State;

    fn state(&self) -> Ib700State {
        self.state
    }

    /// The deadline comes back on the Virtual clock as it was saved; the
    /// clock itself is the machine's to restore.
    fn restore(&mut self, state: Ib700State) -> Result<(), InvalidState> {
        self.arm(state.deadline_ns);
        Ok(())
    }

    fn reset(&mut self) {
        self.arm(None);
    }
}

#[cfg(test)]
mod tests {
    use vmm_qom::Device;

    use super::*;
    use crate::test_util::{fired, line, outb, Sim};

    #[test]
    fn the_timeout_table_runs_from_30_s_down_to_0_s() {
        assert_eq!(timeout_secs(0), 30);
        assert_eq!(timeout_secs(14), 2);
        assert_eq!(timeout_secs(15), 0);
        assert_eq!(timeout_secs(0xf1), 28, "only the low four bits count");
    }

    #[test]
    fn armed_and_left_alone_it_fires_once_at_its_timeout() {
        let sim = Sim::with_wall(0);
        let (line, probe) = line();
        let wdt = Ib700::new(&sim.clocks, line);
        outb(&mut *lock(&wdt), IB700_PORT, 2, 14); // 2 s
        let edges = sim.edges(10 * NS_PER_SEC, &probe);
        assert_eq!(edges, vec![2 * NS_PER_SEC]);
        assert_eq!(lock(&wdt).fired(), 1);
        assert_eq!(
            lock(&wdt).state().deadline_ns,
            None,
            "disarmed after firing"
        );
    }

    #[test]
    fn petting_moves_the_deadline_and_0x441_disarms() {
        let sim = Sim::with_wall(0);
        let (line, probe) = line();
        let wdt = Ib700::new(&sim.clocks, line);
        outb(&mut *lock(&wdt), IB700_PORT, 2, 14); // 2 s
                                                   // Petted every second for 5 s: never fires.
        for _ in 0..5 {
            sim.run_for(NS_PER_SEC, |_| {});
            outb(&mut *lock(&wdt), IB700_PORT, 2, 14);
        }
        assert_eq!(fired(&probe), 0);
        outb(&mut *lock(&wdt), IB700_PORT, 0, 0); // disarm
        assert!(sim.edges(10 * NS_PER_SEC, &probe).is_empty());
        assert_eq!(crate::test_util::inb(&mut *lock(&wdt), IB700_PORT, 2), 0xff);
    }

    #[test]
    fn state_reset_and_restore() {
        let sim = Sim::with_wall(0);
        let (line, probe) = line();
        let wdt = Ib700::new(&sim.clocks, line);
        outb(&mut *lock(&wdt), IB700_PORT, 2, 13); // 4 s
        let saved = lock(&wdt).save().unwrap();
        Device::reset(&mut *lock(&wdt));
        assert!(
            sim.edges(10 * NS_PER_SEC, &probe).is_empty(),
            "reset disarms"
        );
        let (line2, probe2) = crate::test_util::line();
        let wdt2 = Ib700::new(&sim.clocks, line2);
        lock(&wdt2).load(&saved).unwrap();
        // The saved deadline has passed on this clock: it fires at once.
        assert_eq!(sim.edges(NS_PER_SEC, &probe2).len(), 1);
    }
}
