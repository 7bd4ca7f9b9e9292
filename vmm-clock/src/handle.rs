//! [`Timer`]: the handle on one timer.

use std::fmt;

use crate::clocks::Clocks;
use crate::timer::TimerId;
use crate::ClockType;

/// A timer callback. Its argument is the firing timer.
pub type TimerCallback = Box<dyn FnMut(&Timer) + Send + 'static>;

/// One timer on one clock, created by [`Clocks::new_timer`].
///
/// Deadlines are absolute nanoseconds on the timer's clock. Every method takes `&self` and is
/// thread-safe: a vCPU thread may arm or cancel a timer whose callback runs on the main loop.
///
/// # Ownership
///
/// A `Timer` is the timer's only owner and is not `Clone`: dropping it cancels and deletes the
/// timer (a callback running at that moment finishes, and is then dropped). To use one timer from
/// several places, share it (for example in an `Arc` or inside the device state). A callback
/// receives `&Timer` for the firing timer: a borrowed view it can arm, cancel and query, but
/// cannot keep.
pub struct Timer {
    clocks: Clocks,
    id: TimerId,
    clock: ClockType,
    /// False for the view handed to a callback: dropping it must not delete the timer.
    owner: bool,
}

impl Timer {
    pub(crate) fn owned(clocks: Clocks, id: TimerId, clock: ClockType) -> Self {
        Timer {
            clocks,
            id,
            clock,
            owner: true,
        }
    }

    pub(crate) fn view(clocks: Clocks, id: TimerId, clock: ClockType) -> Self {
        Timer {
            clocks,
            id,
            clock,
            owner: false,
        }
    }

    /// The clock this timer runs on.
    pub fn clock(&self) -> ClockType {
        self.clock
    }

    /// The clocks this timer belongs to.
    pub fn clocks(&self) -> &Clocks {
        &self.clocks
    }

    /// Reads this timer's clock.
    pub fn now(&self) -> i64 {
        self.clocks.now(self.clock)
    }

    /// Arms the timer at absolute time `expire_ns` on its clock (QEMU's `timer_mod_ns`);
    /// negative values clamp to 0, and a time in the past fires on the next run. Re-arming moves
    /// the timer behind every other timer with the same deadline.
    pub fn arm(&self, expire_ns: i64) {
        self.clocks
            .with_state(|st, time| st.arm(self.id, expire_ns, time));
    }

    /// Arms the timer `delta_ns` after its clock's current time, read under the same lock.
    pub fn arm_after(&self, delta_ns: i64) {
        self.clocks.with_state(|st, time| {
            let expire = st.now(self.clock, time).saturating_add(delta_ns);
            st.arm(self.id, expire, time);
        });
    }

    /// Moves the deadline earlier only (QEMU's `timer_mod_anticipate_ns`): no effect if the
    /// timer is armed at or before `expire_ns`; otherwise the same as [`arm`](Timer::arm).
    pub fn arm_if_earlier(&self, expire_ns: i64) {
        self.clocks
            .with_state(|st, time| st.arm_if_earlier(self.id, expire_ns, time));
    }

    /// Unarms the timer (QEMU's `timer_del`). Idempotent.
    pub fn cancel(&self) {
        self.clocks.with_state(|st, time| st.cancel(self.id, time));
    }

    /// The deadline, if armed.
    pub fn expire_ns(&self) -> Option<i64> {
        self.clocks.with_state(|st, _| st.expire_of(self.id))
    }

    /// Whether the timer is armed. False inside its own callback unless the callback re-armed it.
    pub fn pending(&self) -> bool {
        self.expire_ns().is_some()
    }

    /// The deadline if armed, else `u64::MAX` (QEMU's `timer_expire_time_ns`).
    pub fn expire_time_ns(&self) -> u64 {
        self.expire_ns()
            .map_or(u64::MAX, |e| u64::try_from(e).unwrap_or(0))
    }

    /// Whether the timer is armed with a deadline at or before `now_ns`. Unlike QEMU's
    /// `timer_expired`, an unarmed timer is not expired.
    pub fn expired(&self, now_ns: i64) -> bool {
        self.expire_ns().is_some_and(|e| e <= now_ns)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.owner {
            // The slot (with the callback) is dropped after the lock is released.
            let slot = self
                .clocks
                .with_state(|st, time| st.remove_slot(self.id, time));
            drop(slot);
        }
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("id", &self.id)
            .field("clock", &self.clock)
            .field("owner", &self.owner)
            .finish()
    }
}
