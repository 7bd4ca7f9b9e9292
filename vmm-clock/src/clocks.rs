//! [`Clocks`]: the shared, thread-safe handle on the clocks and their timer lists.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::alarm::AlarmSink;
use crate::handle::Timer;
use crate::host::HostTime;
use crate::state::State;
use crate::timer::TimerId;
use crate::{ClockType, TimeSource};

/// Identifies a listener added with [`Clocks::add_reset_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResetListenerId(u64);

struct Shared {
    time: Arc<dyn TimeSource>,
    state: Mutex<State>,
    /// Signalled when a thread stops running a clock's list (see [`Clocks::set_enabled`]).
    idle: Condvar,
}

/// The clocks (Realtime, Virtual, Host) and one timer list per clock.
///
/// A cheap handle: clones share the same clocks. It is `Send + Sync`; every method may be called
/// from any thread, including from inside a timer callback or a reset listener, because none of
/// them is called with the internal lock held.
///
/// Initial state: Realtime and Host are enabled; Virtual is stopped at 0 and disabled until the
/// first [`vm_start`](Clocks::vm_start), as in QEMU today.
#[derive(Clone)]
pub struct Clocks {
    shared: Arc<Shared>,
}

impl Clocks {
    /// Returns clocks reading time from `time`, with no alarm. Timers run only when
    /// [`run_timers`](Clocks::run_timers) is called, or when an alarm is added with
    /// [`TimerFdAlarm::new`](crate::TimerFdAlarm::new) or [`set_alarm_sink`](Clocks::set_alarm_sink).
    pub fn new(time: Arc<dyn TimeSource>) -> Self {
        let state = State::new(&*time);
        Clocks {
            shared: Arc::new(Shared {
                time,
                state: Mutex::new(state),
                idle: Condvar::new(),
            }),
        }
    }

    /// Returns clocks reading the host's time ([`HostTime`]).
    pub fn host() -> Self {
        Self::new(Arc::new(HostTime::new()))
    }

    /// Returns clocks whose earliest deadline goes to `sink`, which starts disarmed: the first
    /// [`AlarmSink::set`] call comes with the first armed timer.
    pub fn with_alarm(time: Arc<dyn TimeSource>, sink: Arc<dyn AlarmSink>) -> Self {
        let clocks = Self::new(time);
        clocks.with_state(|st, time| st.set_sink(sink, true, time));
        clocks
    }

    /// Sends the earliest deadline to `sink` from now on, replacing any previous sink, and
    /// programs it at once.
    pub fn set_alarm_sink(&self, sink: Arc<dyn AlarmSink>) {
        self.with_state(|st, time| st.set_sink(sink, false, time));
    }

    /// The time source the clocks read.
    pub fn time_source(&self) -> &Arc<dyn TimeSource> {
        &self.shared.time
    }

    /// Reads `clock`, in nanoseconds.
    ///
    /// Reading the Host clock checks for a wall-clock jump and, if there was one, calls the
    /// reset listeners (on this thread, before returning).
    pub fn now(&self, clock: ClockType) -> i64 {
        match clock {
            ClockType::Realtime => self.shared.time.monotonic_ns(),
            _ => self.with_state(|st, time| st.now(clock, time)),
        }
    }

    /// The VM stopped: freezes the Virtual clock at its current value and disables it, so its
    /// timers do not run. Idempotent.
    ///
    /// Like [`set_enabled`](Clocks::set_enabled)`(Virtual, false)`, waits for a Virtual timer
    /// callback running on another thread to finish.
    pub fn vm_stop(&self) {
        let mut st = self.lock();
        st.virt.stop(self.shared.time.monotonic_ns());
        st.enabled[ClockType::Virtual.index()] = false;
        let mut st = self.wait_idle(st, ClockType::Virtual);
        st.update_alarm(&*self.shared.time);
        self.unlock(st);
    }

    /// The VM runs: the Virtual clock continues from its frozen value and is enabled. Idempotent.
    pub fn vm_start(&self) {
        self.with_state(|st, time| {
            st.virt.start(time.monotonic_ns());
            st.enabled[ClockType::Virtual.index()] = true;
            st.update_alarm(time);
        });
    }

    /// Sets the Virtual clock's value while the VM is stopped (a snapshot
    /// or an incoming migration puts the guest's time back): it continues
    /// from `ns` at the next [`vm_start`](Clocks::vm_start). Timers keep
    /// their deadlines (their owners re-arm them from their restored
    /// state). Returns false, changing nothing, while the VM runs.
    pub fn set_virtual_ns(&self, ns: i64) -> bool {
        self.with_state(|st, time| {
            let done = st.virt.set_frozen(ns);
            st.update_alarm(time);
            done
        })
    }

    /// Whether the Virtual clock is running (between [`vm_start`](Clocks::vm_start) and
    /// [`vm_stop`](Clocks::vm_stop)).
    pub fn is_vm_running(&self) -> bool {
        self.lock().virt.is_running()
    }

    /// Enables or disables `clock` (QEMU's `qemu_clock_enable`), separately from the freeze.
    ///
    /// A disabled clock runs no timers and reports no deadline; its timers stay armed and run
    /// after it is enabled again if they are due.
    ///
    /// Disabling waits until a callback of `clock` running on another thread has returned, so
    /// afterwards no timer of `clock` runs. Called from a callback of `clock` itself it does not
    /// wait (the current pass stops after that callback); do not call it while holding a lock
    /// that such a callback may take.
    pub fn set_enabled(&self, clock: ClockType, enabled: bool) {
        let mut st = self.lock();
        st.enabled[clock.index()] = enabled;
        if !enabled {
            st = self.wait_idle(st, clock);
        }
        st.update_alarm(&*self.shared.time);
        self.unlock(st);
    }

    /// Whether `clock` is enabled.
    pub fn is_enabled(&self, clock: ClockType) -> bool {
        self.lock().enabled[clock.index()]
    }

    /// Creates an unarmed timer on `clock` that calls `callback` when it expires.
    ///
    /// The callback runs on the thread that runs the timer lists, without any internal lock
    /// held. Its argument is the firing timer, which it may re-arm; inside the callback the
    /// timer is no longer pending.
    pub fn new_timer<F>(&self, clock: ClockType, callback: F) -> Timer
    where
        F: FnMut(&Timer) + Send + 'static,
    {
        let id = self.lock().add_slot(clock, Box::new(callback));
        Timer::owned(self.clone(), id, clock)
    }

    /// Runs the expired timers of `clock` (QEMU's `timerlist_run_timers`); returns whether any
    /// callback ran.
    ///
    /// Does nothing if `clock` is disabled, or if its list is already being run (by another
    /// thread, or further up this thread's stack). Otherwise samples the clock once and runs
    /// timers in deadline order while the earliest is due at that sampled time. A timer armed
    /// during the pass at or before that time therefore runs in the same pass, unless it has
    /// already run in it.
    ///
    /// **Each timer runs at most once per pass.** A callback that re-arms its own timer (or
    /// another timer that already ran) at or before the sampled time does not run again in the
    /// same pass: the timer stays armed and overdue, the alarm is programmed for it when the pass
    /// ends (an overdue deadline fires at once), and it runs in the next pass. So a pass ends
    /// after at most one callback per timer, and a timer that keeps re-arming itself in the past
    /// (a device whose deadline arithmetic saturated, say) costs one callback per trip through
    /// the main loop instead of trapping the loop in this pass: epoll, signals, QMP and the
    /// console still get their turn between the passes. Unlike QEMU's
    /// `timerlist_run_timers`, which runs such a timer again until it stops re-arming.
    ///
    /// While a pass runs, alarm updates wait: the alarm is re-programmed once when it ends.
    pub fn run_timers(&self, clock: ClockType) -> bool {
        let _pass = PassGuard::new(self);
        self.run_list(clock)
    }

    /// Runs the expired timers of every clock, in the order Realtime, Virtual, Host; returns
    /// whether any callback ran. The alarm is re-programmed once, at the end.
    pub fn run_all_timers(&self) -> bool {
        let _pass = PassGuard::new(self);
        ClockType::ALL
            .into_iter()
            .fold(false, |ran, clock| self.run_list(clock) | ran)
    }

    /// Tells the clocks that the alarm given to the [`AlarmSink`] has fired (it is one-shot, so
    /// now disarmed): runs all timer lists, then programs the alarm again. Returns whether any
    /// callback ran. [`TimerFdAlarm`](crate::TimerFdAlarm) calls this.
    pub fn alarm_fired(&self) -> bool {
        self.lock().forget_alarm();
        self.run_all_timers()
    }

    /// The time until the earliest deadline of `clock` (QEMU's `timerlist_deadline_ns`), 0 if it
    /// is overdue; `None` if `clock` is disabled or has no armed timer (QEMU's -1).
    pub fn deadline_ns(&self, clock: ClockType) -> Option<i64> {
        self.with_state(|st, time| st.deadline_ns(clock, time))
    }

    /// The absolute monotonic time (on the time source) of the earliest deadline over all
    /// enabled clocks, or `None`. This is the value given to the [`AlarmSink`]; a main loop
    /// without a sink can use it to compute its poll timeout.
    pub fn alarm_deadline(&self) -> Option<i64> {
        self.with_state(|st, time| st.alarm_deadline(time))
    }

    /// Adds a "clock reset" listener, called with the new Host time when a read of the Host
    /// clock finds that the wall clock jumped: backwards at all, or forwards by more than
    /// [`MAX_FORWARD_JUMP_NS`](crate::MAX_FORWARD_JUMP_NS) beyond the monotonic clock's advance.
    ///
    /// Listeners run on the thread whose read found the jump, with no internal lock held.
    pub fn add_reset_listener<F>(&self, listener: F) -> ResetListenerId
    where
        F: Fn(i64) + Send + Sync + 'static,
    {
        ResetListenerId(self.lock().add_listener(Arc::new(listener)))
    }

    /// Removes a reset listener; returns whether it was registered.
    pub fn remove_reset_listener(&self, id: ResetListenerId) -> bool {
        self.lock().remove_listener(id.0)
    }

    /// Tells the clocks that the host wall clock was set (a `TFD_TIMER_CANCEL_ON_SET` timerfd
    /// reported `ECANCELED`): reads the Host clock, which calls the reset listeners if the step
    /// counts as a jump, and recomputes the Host deadline.
    pub fn wall_clock_set(&self) {
        self.with_state(|st, time| st.wall_clock_set(time));
    }

    /// Runs `f` on the locked state, then calls reset listeners if `f` found a wall-clock jump.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State, &dyn TimeSource) -> R) -> R {
        let mut st = self.lock();
        let result = f(&mut st, &*self.shared.time);
        self.unlock(st);
        result
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under the lock, so poisoning only follows a panicking sink; the
        // state is consistent between operations, so keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases the lock, then calls the reset listeners for a jump found under it.
    fn unlock(&self, mut st: MutexGuard<'_, State>) {
        let reset = st.take_reset();
        drop(st);
        if let Some((new_time, listeners)) = reset {
            for listener in listeners {
                listener(new_time);
            }
        }
    }

    /// Waits until no other thread runs `clock`'s list.
    fn wait_idle<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        clock: ClockType,
    ) -> MutexGuard<'a, State> {
        let me = thread::current().id();
        while st.runner[clock.index()].is_some_and(|t| t != me) {
            st.idle_waiters += 1;
            st = self
                .shared
                .idle
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
            st.idle_waiters -= 1;
        }
        st
    }

    fn run_list(&self, clock: ClockType) -> bool {
        let i = clock.index();
        let me = thread::current().id();
        let now = self.with_state(|st, time| {
            if !st.enabled[i] || st.runner[i].is_some() {
                return None;
            }
            st.runner[i] = Some(me);
            Some(st.now(clock, time))
        });
        let Some(now) = now else {
            return false;
        };
        let _runner = RunnerGuard {
            clocks: self,
            clock,
        };
        // The timers that ran in this pass: none runs twice (see `run_timers`).
        let mut done: HashSet<TimerId> = HashSet::new();
        loop {
            let mut st = self.lock();
            if !st.enabled[i] {
                break;
            }
            let Some(id) = st.lists[i].pop_expired_except(now, |id| done.contains(&id)) else {
                break;
            };
            // Absent only if an earlier run of this callback panicked.
            let Some(mut callback) = st.slots.get_mut(&id).and_then(|s| s.callback.take()) else {
                continue;
            };
            done.insert(id);
            drop(st);
            callback(&Timer::view(self.clone(), id, clock));
            let mut st = self.lock();
            // Put the callback back, unless its timer was dropped meanwhile: then drop the
            // callback, outside the lock since it may own other timers.
            let orphan = match st.slots.get_mut(&id) {
                Some(slot) => slot.callback.replace(callback),
                None => Some(callback),
            };
            drop(st);
            drop(orphan);
        }
        !done.is_empty()
    }
}

impl fmt::Debug for Clocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Clocks");
        if let Ok(st) = self.shared.state.try_lock() {
            d.field("enabled", &st.enabled)
                .field("virtual_running", &st.virt.is_running())
                .field("timers", &st.slots.len())
                .field("armed", &st.lists.each_ref().map(|l| l.len()));
        }
        d.finish_non_exhaustive()
    }
}

/// Counts a run pass; alarm updates wait until the outermost pass ends (also on unwinding).
struct PassGuard<'a>(&'a Clocks);

impl<'a> PassGuard<'a> {
    fn new(clocks: &'a Clocks) -> Self {
        clocks.lock().begin_pass();
        PassGuard(clocks)
    }
}

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        self.0.with_state(|st, time| st.end_pass(time));
    }
}

/// Marks `clock`'s list as no longer being run (also on unwinding) and wakes waiters.
struct RunnerGuard<'a> {
    clocks: &'a Clocks,
    clock: ClockType,
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut st = self.clocks.lock();
            st.runner[self.clock.index()] = None;
            st.idle_waiters
        };
        // A waiter counts itself under the lock before it waits, so none
        // is missed; with none (the rule: every alarm), no futex call.
        if waiters > 0 {
            self.clocks.shared.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests;
