//! The host alarm: where the earliest deadline over all clocks goes.

use std::fmt;
use std::io;
use std::os::unix::io::AsRawFd;
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::{TimeSource, NANOS_PER_SEC};

/// Receives the earliest deadline over all enabled clocks.
///
/// [`Clocks`](crate::Clocks) calls [`set`](AlarmSink::set) whenever that deadline changes
/// (a timer became or stopped being the earliest, a clock was enabled or disabled, the VM
/// stopped or started, the host wall clock jumped) and once after every alarm expiry, and skips
/// the call when nothing changed. The call is made with the clocks' internal lock held, which
/// keeps concurrent updates in order: the sink must not call back into the `Clocks`.
///
/// The real sink is [`TimerFdAlarm`](crate::TimerFdAlarm)'s timerfd; tests can count calls.
pub trait AlarmSink: Send + Sync {
    /// Fires the alarm at `deadline`, an absolute time on the [`TimeSource`]'s monotonic clock
    /// (possibly in the past: fire as soon as possible), or disarms it when `None`.
    fn set(&self, deadline: Option<i64>);
}

/// Converts non-negative nanoseconds to a `timespec`.
pub(crate) fn timespec_from_ns(ns: i64) -> libc::timespec {
    let ns = ns.max(0);
    libc::timespec {
        tv_sec: ns / NANOS_PER_SEC,
        tv_nsec: ns % NANOS_PER_SEC,
    }
}

/// The one-shot, relative `itimerspec` for a timer due in `delta` ns, or the disarming one.
///
/// An all-zero `it_value` disarms a timerfd, so a due or overdue timer (`delta <= 0`) is
/// sent as 1 ns.
pub(crate) fn relative_spec(delta: Option<i64>) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: timespec_from_ns(0),
        it_value: timespec_from_ns(delta.map_or(0, |d| d.max(1))),
    }
}

/// Calls `timerfd_settime` on `timer`.
pub(crate) fn settime(
    timer: &TimerFd,
    flags: libc::c_int,
    spec: &libc::itimerspec,
) -> io::Result<()> {
    // SAFETY: `timer` owns a valid timerfd for the duration of the call, `spec` is a valid
    // itimerspec the kernel only reads, and a null old-value pointer is allowed.
    let ret = unsafe { libc::timerfd_settime(timer.as_raw_fd(), flags, spec, ptr::null_mut()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A deadline at most this far ahead (or past) wakes the main loop through
/// the kick eventfd instead of the timerfd: the loop's wake-up takes about
/// as long, and a timerfd armed so close makes the arming thread's CPU
/// take a timer interrupt at once (on a host that is itself a guest, a
/// costly one: about 19 µs per arming in the `irq` benchmark here).
pub(crate) const KICK_WITHIN_NS: i64 = 5_000;

/// The sink that programs a `CLOCK_MONOTONIC` timerfd, relative to the time source's now, or,
/// for a deadline that is due or nearly so, writes the kick eventfd (see [`KICK_WITHIN_NS`]).
///
/// `timerfd_settime` and eventfd writes are thread-safe syscalls, so any thread that arms a
/// timer can re-arm the alarm.
pub(crate) struct TimerFdSink {
    timer: Arc<TimerFd>,
    kick: Arc<EventFd>,
    time: Arc<dyn TimeSource>,
    /// What was last done. The clocks call [`AlarmSink::set`] under their lock, so this lock is
    /// never contended.
    state: Mutex<SinkState>,
}

/// What a [`TimerFdSink`] last did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SinkState {
    /// The deadline the timerfd was armed to (`None`: disarmed).
    armed: Option<i64>,
    /// The deadline the kick eventfd was written for.
    kicked: Option<i64>,
}

/// What [`TimerFdSink::set`] does for a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Nothing: the timerfd is disarmed already.
    Nothing,
    /// `timerfd_settime` to this deadline (`None`: disarm).
    Arm(Option<i64>),
    /// Write the kick eventfd.
    Kick,
}

impl SinkState {
    /// What to do for `deadline` at `now`, and the state after it.
    fn plan(self, deadline: Option<i64>, now: i64) -> (Action, SinkState) {
        match deadline {
            None if disarm_needed(self.armed, now) => (Action::Arm(None), SinkState::default()),
            None => (Action::Nothing, SinkState::default()),
            // Kicked for this deadline already and the loop woke early:
            // the timerfd takes it.
            Some(d) if d.saturating_sub(now) <= KICK_WITHIN_NS && self.kicked != Some(d) => (
                Action::Kick,
                SinkState {
                    kicked: Some(d),
                    ..self
                },
            ),
            Some(d) => (
                Action::Arm(Some(d)),
                SinkState {
                    armed: Some(d),
                    kicked: None,
                },
            ),
        }
    }
}

impl TimerFdSink {
    pub(crate) fn new(timer: Arc<TimerFd>, kick: Arc<EventFd>, time: Arc<dyn TimeSource>) -> Self {
        TimerFdSink {
            timer,
            kick,
            time,
            state: Mutex::new(SinkState::default()),
        }
    }
}

/// Whether disarming needs a `timerfd_settime`: not if the timerfd was
/// armed to no deadline, or to one that has passed at `now` (a one-shot
/// timerfd disarms itself when it expires; should its expiry lag `now` by
/// a hair, it fires once more, which the alarm takes as a spurious
/// wake-up). This spares a system call after every alarm that leaves no
/// timer armed.
fn disarm_needed(armed: Option<i64>, now: i64) -> bool {
    armed.is_some_and(|d| d > now)
}

impl fmt::Debug for TimerFdSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerFdSink")
            .field("fd", &self.timer.as_raw_fd())
            .field("kick", &self.kick.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl AlarmSink for TimerFdSink {
    fn set(&self, deadline: Option<i64>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.time.monotonic_ns();
        let (action, next) = state.plan(deadline, now);
        let done = match action {
            Action::Nothing => Ok(()),
            Action::Arm(d) => {
                let delta = d.map(|d| d.saturating_sub(now));
                settime(&self.timer, 0, &relative_spec(delta))
            }
            Action::Kick => self.kick.write(1),
        };
        match done {
            Ok(()) => *state = next,
            Err(e) => log::error!("cannot program the alarm ({action:?}): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_ns(spec: &libc::itimerspec) -> i64 {
        spec.it_value.tv_sec * NANOS_PER_SEC + spec.it_value.tv_nsec
    }

    #[test]
    fn no_deadline_disarms() {
        let spec = relative_spec(None);
        assert_eq!(value_ns(&spec), 0);
        assert_eq!((spec.it_interval.tv_sec, spec.it_interval.tv_nsec), (0, 0));
    }

    #[test]
    fn due_or_overdue_becomes_one_ns() {
        assert_eq!(value_ns(&relative_spec(Some(0))), 1);
        assert_eq!(value_ns(&relative_spec(Some(-5))), 1);
        assert_eq!(value_ns(&relative_spec(Some(i64::MIN))), 1);
    }

    #[test]
    fn splits_seconds_and_nanoseconds() {
        let spec = relative_spec(Some(2_500_000_001));
        assert_eq!(
            (spec.it_value.tv_sec, spec.it_value.tv_nsec),
            (2, 500_000_001)
        );
        assert_eq!((spec.it_interval.tv_sec, spec.it_interval.tv_nsec), (0, 0));
    }

    #[test]
    fn only_a_deadline_still_ahead_needs_disarming() {
        assert!(!disarm_needed(None, 100));
        assert!(!disarm_needed(Some(99), 100), "expired: disarmed itself");
        assert!(!disarm_needed(Some(100), 100));
        assert!(disarm_needed(Some(101), 100));
    }

    #[test]
    fn a_due_deadline_kicks_once_then_takes_the_timerfd() {
        let idle = SinkState::default();
        let far = 1_000_000 + KICK_WITHIN_NS + 1;
        let (a, s) = idle.plan(Some(far), 1_000_000);
        assert_eq!(a, Action::Arm(Some(far)));
        // Due, or nearly: the kick; the timerfd stays as it was.
        let (a, s) = s.plan(Some(1_000_500), 1_000_000);
        assert_eq!(a, Action::Kick);
        assert_eq!(s.armed, Some(far));
        // The loop woke before it was due: now the timerfd.
        let (a, s) = s.plan(Some(1_000_500), 1_000_100);
        assert_eq!(a, Action::Arm(Some(1_000_500)));
        // A new near deadline kicks again; an overdue one too.
        let (a, s) = s.plan(Some(1_000_200), 1_000_150);
        assert_eq!(a, Action::Kick);
        let (a, s) = s.plan(Some(5), 1_000_150);
        assert_eq!(a, Action::Kick);
        // Nothing left: the timerfd (armed to a passed deadline) is idle.
        assert_eq!(
            s.plan(None, 2_000_000),
            (Action::Nothing, SinkState::default())
        );
        let armed = SinkState {
            armed: Some(3_000_000),
            kicked: None,
        };
        assert_eq!(
            armed.plan(None, 2_000_000),
            (Action::Arm(None), SinkState::default())
        );
    }

    #[test]
    fn sink_programs_a_real_timerfd() {
        let timer = Arc::new(TimerFd::new().unwrap());
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let sink = TimerFdSink::new(
            timer.clone(),
            kick.clone(),
            Arc::new(crate::HostTime::new()),
        );
        sink.set(Some(
            crate::HostTime::new().monotonic_ns() + 3_600 * NANOS_PER_SEC,
        ));
        assert!(timer.is_armed().unwrap());
        sink.set(None);
        assert!(!timer.is_armed().unwrap());
        // Re-armed after a disarm: the sink does not think it is idle.
        sink.set(Some(
            crate::HostTime::new().monotonic_ns() + 3_600 * NANOS_PER_SEC,
        ));
        assert!(timer.is_armed().unwrap());
        sink.set(None);
        assert!(!timer.is_armed().unwrap());
        // A deadline that is due: the kick, the timerfd left alone.
        sink.set(Some(crate::HostTime::new().monotonic_ns()));
        assert_eq!(kick.read().unwrap(), 1);
        assert!(!timer.is_armed().unwrap());
    }
}
