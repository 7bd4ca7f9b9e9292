//! The state behind the [`Clocks`](crate::Clocks) mutex.
//!
//! Everything here runs with the lock held, takes time from the `&dyn TimeSource` it is given,
//! and never calls a timer callback or reset listener. The only outside code it calls is the
//! [`AlarmSink`].

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::ThreadId;

use crate::alarm::AlarmSink;
use crate::handle::TimerCallback;
use crate::jump::WallJumpDetector;
use crate::timer::{TimerId, TimerList};
use crate::virtual_clock::VirtualClock;
use crate::{ClockType, TimeSource};

/// A clock-reset listener: called with the new host time after a wall-clock jump.
pub(crate) type ResetListener = Arc<dyn Fn(i64) + Send + Sync>;

/// One timer: its clock and its callback (absent while the callback runs).
pub(crate) struct Slot {
    pub(crate) clock: ClockType,
    pub(crate) callback: Option<TimerCallback>,
}

/// What decides the alarm deadline, for skipping `set` calls that change nothing.
///
/// Realtime and Virtual deadlines are exact monotonic times. A Host deadline's monotonic value
/// moves a little on every computation (the two clocks are read at different instants and drift
/// apart), so it is identified by the Host expire time; a wall-clock jump forces a new `set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlarmKey {
    Monotonic(i64),
    Host(i64),
}

/// What the alarm sink was last told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Programmed {
    /// Not known (a new sink, an expiry, a wall-clock jump): the next update always calls `set`.
    Unknown,
    Off,
    At(AlarmKey),
}

pub(crate) struct State {
    pub(crate) lists: [TimerList; 3],
    pub(crate) slots: HashMap<TimerId, Slot>,
    next_id: TimerId,
    pub(crate) enabled: [bool; 3],
    /// The thread running each clock's list, if any.
    pub(crate) runner: [Option<ThreadId>; 3],
    /// Threads waiting for a list's runner to finish (`Clocks::wait_idle`):
    /// a runner wakes them only if there are any, sparing the futex call
    /// on every alarm.
    pub(crate) idle_waiters: u32,
    /// Nested run passes in progress; alarm updates wait until the last one ends.
    passes: u32,
    pub(crate) virt: VirtualClock,
    jump: WallJumpDetector,
    /// The new host time, when a read detected a jump that listeners have not heard of yet.
    pending_reset: Option<i64>,
    listeners: Vec<(u64, ResetListener)>,
    next_listener: u64,
    sink: Option<Arc<dyn AlarmSink>>,
    programmed: Programmed,
}

impl State {
    pub(crate) fn new(time: &dyn TimeSource) -> Self {
        let mut jump = WallJumpDetector::default();
        jump.observe(time.wall_ns(), time.monotonic_ns());
        State {
            lists: Default::default(),
            slots: HashMap::new(),
            next_id: 0,
            // Virtual starts disabled until the first vm_start, as in QEMU today.
            enabled: [true, false, true],
            runner: [None; 3],
            idle_waiters: 0,
            passes: 0,
            virt: VirtualClock::default(),
            jump,
            pending_reset: None,
            listeners: Vec::new(),
            next_listener: 0,
            sink: None,
            programmed: Programmed::Unknown,
        }
    }

    /// Installs `sink`. `fresh` says it is known to be disarmed; otherwise it is programmed now.
    pub(crate) fn set_sink(
        &mut self,
        sink: Arc<dyn AlarmSink>,
        fresh: bool,
        time: &dyn TimeSource,
    ) {
        self.sink = Some(sink);
        self.programmed = if fresh {
            Programmed::Off
        } else {
            Programmed::Unknown
        };
        self.update_alarm(time);
    }

    /// The alarm has fired (a one-shot timerfd is now disarmed): the next update re-arms it.
    pub(crate) fn forget_alarm(&mut self) {
        self.programmed = Programmed::Unknown;
    }

    pub(crate) fn add_slot(&mut self, clock: ClockType, callback: TimerCallback) -> TimerId {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.insert(
            id,
            Slot {
                clock,
                callback: Some(callback),
            },
        );
        id
    }

    /// Deletes timer `id`; returns its slot so the caller drops the callback after unlocking.
    pub(crate) fn remove_slot(&mut self, id: TimerId, time: &dyn TimeSource) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if self.lists[slot.clock.index()].cancel(id) {
            self.update_alarm(time);
        }
        Some(slot)
    }

    fn list_of(&mut self, id: TimerId) -> Option<&mut TimerList> {
        let clock = self.slots.get(&id)?.clock;
        Some(&mut self.lists[clock.index()])
    }

    pub(crate) fn arm(&mut self, id: TimerId, expire: i64, time: &dyn TimeSource) {
        if let Some(list) = self.list_of(id) {
            list.arm(id, expire);
            self.update_alarm(time);
        }
    }

    pub(crate) fn arm_if_earlier(&mut self, id: TimerId, expire: i64, time: &dyn TimeSource) {
        if let Some(list) = self.list_of(id) {
            list.arm_if_earlier(id, expire);
            self.update_alarm(time);
        }
    }

    pub(crate) fn cancel(&mut self, id: TimerId, time: &dyn TimeSource) {
        if self.list_of(id).is_some_and(|list| list.cancel(id)) {
            self.update_alarm(time);
        }
    }

    pub(crate) fn expire_of(&self, id: TimerId) -> Option<i64> {
        let clock = self.slots.get(&id)?.clock;
        self.lists[clock.index()].expire_of(id)
    }

    /// Reads `clock`. A Host read checks for a wall-clock jump.
    pub(crate) fn now(&mut self, clock: ClockType, time: &dyn TimeSource) -> i64 {
        match clock {
            ClockType::Realtime => time.monotonic_ns(),
            ClockType::Virtual => self.virt.now(time.monotonic_ns()),
            ClockType::Host => self.read_host(time),
        }
    }

    fn read_host(&mut self, time: &dyn TimeSource) -> i64 {
        let wall = time.wall_ns();
        if self.jump.observe(wall, time.monotonic_ns()) {
            log::info!("host clock jumped to {wall} ns");
            self.host_clock_changed(wall, time);
        }
        wall
    }

    /// The wall clock was set: tell the listeners (when `Some`) and recompute the Host deadline.
    pub(crate) fn host_clock_changed(&mut self, new_time: i64, time: &dyn TimeSource) {
        self.pending_reset = Some(new_time);
        self.programmed = Programmed::Unknown;
        self.update_alarm(time);
    }

    /// Re-reads the host clock after the kernel reported that the wall clock was set.
    pub(crate) fn wall_clock_set(&mut self, time: &dyn TimeSource) {
        let wall = time.wall_ns();
        if self.jump.observe(wall, time.monotonic_ns()) {
            log::info!("host clock was set to {wall} ns");
            self.pending_reset = Some(wall);
        }
        // Even a step too small to notify listeners moves the Host deadline.
        self.programmed = Programmed::Unknown;
        self.update_alarm(time);
    }

    /// Takes a jump detected since the last call, with the listeners to tell about it.
    pub(crate) fn take_reset(&mut self) -> Option<(i64, Vec<ResetListener>)> {
        let new_time = self.pending_reset.take()?;
        let listeners = self.listeners.iter().map(|(_, l)| l.clone()).collect();
        Some((new_time, listeners))
    }

    pub(crate) fn add_listener(&mut self, listener: ResetListener) -> u64 {
        let id = self.next_listener;
        self.next_listener += 1;
        self.listeners.push((id, listener));
        id
    }

    pub(crate) fn remove_listener(&mut self, id: u64) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|(i, _)| *i != id);
        self.listeners.len() != before
    }

    /// QEMU's `deadline_ns`: `None` if `clock` is disabled or has no armed timer, else the time
    /// until its earliest deadline, 0 if overdue.
    pub(crate) fn deadline_ns(&mut self, clock: ClockType, time: &dyn TimeSource) -> Option<i64> {
        if !self.enabled[clock.index()] {
            return None;
        }
        let head = self.lists[clock.index()].head()?;
        Some(head.saturating_sub(self.now(clock, time)).max(0))
    }

    pub(crate) fn begin_pass(&mut self) {
        self.passes += 1;
    }

    pub(crate) fn end_pass(&mut self, time: &dyn TimeSource) {
        self.passes -= 1;
        self.update_alarm(time);
    }

    /// The earliest deadline over all enabled clocks, as an absolute monotonic time.
    fn next_alarm(&self, time: &dyn TimeSource) -> Option<(AlarmKey, i64)> {
        let head = |clock: ClockType| {
            let i = clock.index();
            self.lists[i].head().filter(|_| self.enabled[i])
        };
        let mut candidates = [None; 3];
        candidates[0] = head(ClockType::Realtime).map(|e| (AlarmKey::Monotonic(e), e));
        candidates[1] = head(ClockType::Virtual).and_then(|e| {
            let m = self.virt.monotonic_deadline(e, time.monotonic_ns())?;
            Some((AlarmKey::Monotonic(m), m))
        });
        candidates[2] = head(ClockType::Host).map(|e| {
            let wall = time.wall_ns();
            let m = time.monotonic_ns().saturating_add(e.saturating_sub(wall));
            (AlarmKey::Host(e), m)
        });
        candidates.into_iter().flatten().min_by_key(|&(_, m)| m)
    }

    /// The next alarm deadline, for main loops that compute their own poll timeout.
    pub(crate) fn alarm_deadline(&self, time: &dyn TimeSource) -> Option<i64> {
        self.next_alarm(time).map(|(_, m)| m)
    }

    /// Tells the sink about a changed earliest deadline. Deferred while a run pass is in
    /// progress: the pass updates the alarm when it ends.
    pub(crate) fn update_alarm(&mut self, time: &dyn TimeSource) {
        if self.passes > 0 || self.sink.is_none() {
            return;
        }
        let next = self.next_alarm(time);
        let wanted = next.map_or(Programmed::Off, |(key, _)| Programmed::At(key));
        if wanted == self.programmed {
            return;
        }
        self.programmed = wanted;
        if let Some(sink) = &self.sink {
            sink.set(next.map(|(_, m)| m));
        }
    }
}
