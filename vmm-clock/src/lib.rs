//! QEMU's clocks and timer lists, driven by one `timerfd` alarm.
//!
//! This crate keeps guest-visible time for the VMM. It has no KVM dependency.
//!
//! # Main types
//!
//! * [`ClockType`]: the three clocks, Realtime, Virtual and Host. Every value is `i64` nanoseconds.
//! * [`TimeSource`]: where host time comes from. [`HostTime`] reads `clock_gettime`; it is the only
//!   code in the crate that reads host time. `FakeTime` (with the `test-utils` feature, and in this
//!   crate's own tests) is moved by hand, so timer tests never sleep.
//! * [`Clocks`]: a cheap, cloneable, thread-safe handle on the clocks and their timer lists. It
//!   reads the clocks, freezes the Virtual clock across [`Clocks::vm_stop`] / [`Clocks::vm_start`],
//!   enables and disables clocks, runs the timer lists, and calls "clock reset" listeners when
//!   the host wall clock jumps.
//! * [`Timer`]: a timer created by [`Clocks::new_timer`] with a callback. Arm it at an absolute
//!   deadline on its clock, cancel it, query it. Dropping it deletes the timer.
//! * [`AlarmSink`]: receives the earliest deadline over all enabled clocks whenever it changes.
//! * [`TimerFdAlarm`]: the real alarm. It owns one `CLOCK_MONOTONIC` timerfd, installs itself as
//!   the sink, and is an `event-manager` subscriber that runs the timer lists when the fd fires.
//!
//! # Threads
//!
//! Device models arm and cancel timers from vCPU threads; the callbacks run on whichever thread
//! calls [`Clocks::run_timers`] (the main loop, through [`TimerFdAlarm`]). The state sits behind
//! one mutex, and no callback or listener is ever called with it held, so a callback may arm,
//! cancel or read any clock, its own timer included. When a timer armed on another thread becomes
//! the new earliest deadline, the timerfd is re-armed at once, so the main loop wakes in time.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//!
//! use vmm_clock::{ClockType, Clocks, FakeTime};
//!
//! let time = Arc::new(FakeTime::new());
//! let clocks = Clocks::new(time.clone());
//! clocks.vm_start(); // The Virtual clock starts stopped, as QEMU's does.
//!
//! // A 1 ms periodic timer on the Virtual clock that re-arms itself.
//! let ticks = Arc::new(AtomicU32::new(0));
//! let counter = ticks.clone();
//! let mut deadline = 1_000_000;
//! let timer = clocks.new_timer(ClockType::Virtual, move |t| {
//!     counter.fetch_add(1, Ordering::Relaxed);
//!     deadline += 1_000_000;
//!     t.arm(deadline);
//! });
//! timer.arm(1_000_000);
//!
//! time.advance(1_000_000);
//! assert!(clocks.run_all_timers());
//! assert_eq!(ticks.load(Ordering::Relaxed), 1);
//!
//! // While the VM is stopped, the Virtual clock is frozen and its timers do not run.
//! clocks.vm_stop();
//! time.advance(5_000_000);
//! assert!(!clocks.run_all_timers());
//! assert_eq!(clocks.now(ClockType::Virtual), 1_000_000);
//! ```

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

mod alarm;
mod clocks;
mod driver;
mod error;
#[cfg(any(test, feature = "test-utils"))]
mod fake;
mod handle;
mod host;
mod jump;
mod state;
mod timer;
mod virtual_clock;

pub use alarm::AlarmSink;
pub use clocks::{Clocks, ResetListenerId};
pub use driver::TimerFdAlarm;
pub use error::Error;
#[cfg(any(test, feature = "test-utils"))]
pub use fake::FakeTime;
pub use handle::{Timer, TimerCallback};
pub use host::HostTime;
pub use jump::MAX_FORWARD_JUMP_NS;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The clocks a timer can be bound to. Every clock reads as `i64` nanoseconds.
///
/// The sentences are QEMU's meanings of its `QEMUClockType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClockType {
    /// The real-time clock runs even while the VM is stopped, so it must only be used for
    /// things that do not change the guest's state (UI refresh, monitor, throttling).
    ///
    /// Source: host `CLOCK_MONOTONIC`.
    Realtime,
    /// The virtual clock runs only while the VM runs: it stops (freezes) when the VM is
    /// stopped, and continues from the frozen value when it runs again.
    ///
    /// Source: host `CLOCK_MONOTONIC` plus an offset. It starts stopped at 0 and disabled; the
    /// first [`Clocks::vm_start`] starts it. Guest-visible device timers (PIT, HPET, UART) use it.
    Virtual,
    /// The host clock is for device models that emulate a real time source such as the RTC: it
    /// keeps running while the VM is stopped and follows changes the user makes to the host's
    /// wall clock.
    ///
    /// Source: host `CLOCK_REALTIME`. It may jump; see [`Clocks::add_reset_listener`].
    Host,
}

impl ClockType {
    /// All clocks, in the order [`Clocks::run_all_timers`] runs their timer lists.
    pub const ALL: [ClockType; 3] = [ClockType::Realtime, ClockType::Virtual, ClockType::Host];

    /// The position of this clock in [`ClockType::ALL`].
    pub const fn index(self) -> usize {
        match self {
            ClockType::Realtime => 0,
            ClockType::Virtual => 1,
            ClockType::Host => 2,
        }
    }
}

/// Where host time comes from.
///
/// [`HostTime`] reads the real clocks; `FakeTime` (feature `test-utils`) is moved by hand.
pub trait TimeSource: Send + Sync {
    /// A monotonic time in nanoseconds: never goes backwards and does not follow wall-clock
    /// changes (`CLOCK_MONOTONIC` for [`HostTime`]).
    fn monotonic_ns(&self) -> i64;

    /// The wall-clock time in nanoseconds since the Unix epoch (`CLOCK_REALTIME` for
    /// [`HostTime`]). It may jump forwards or backwards.
    fn wall_ns(&self) -> i64;
}
