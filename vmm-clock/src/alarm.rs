//! The host alarm: where the earliest deadline over all clocks goes.

use std::fmt;
use std::io;
use std::os::unix::io::AsRawFd;
use std::ptr;
use std::sync::Arc;

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

/// The sink that programs a `CLOCK_MONOTONIC` timerfd, relative to the time source's now.
///
/// `timerfd_settime` is a thread-safe syscall, so any thread that arms a timer can re-arm it.
pub(crate) struct TimerFdSink {
    timer: Arc<TimerFd>,
    time: Arc<dyn TimeSource>,
}

impl TimerFdSink {
    pub(crate) fn new(timer: Arc<TimerFd>, time: Arc<dyn TimeSource>) -> Self {
        TimerFdSink { timer, time }
    }
}

impl fmt::Debug for TimerFdSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerFdSink")
            .field("fd", &self.timer.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl AlarmSink for TimerFdSink {
    fn set(&self, deadline: Option<i64>) {
        let delta = deadline.map(|d| d.saturating_sub(self.time.monotonic_ns()));
        if let Err(e) = settime(&self.timer, 0, &relative_spec(delta)) {
            log::error!("cannot program the alarm timerfd: {e}");
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
    fn sink_programs_a_real_timerfd() {
        let timer = Arc::new(TimerFd::new().unwrap());
        let sink = TimerFdSink::new(timer.clone(), Arc::new(crate::HostTime::new()));
        sink.set(Some(
            crate::HostTime::new().monotonic_ns() + 3_600 * NANOS_PER_SEC,
        ));
        assert!(timer.is_armed().unwrap());
        sink.set(None);
        assert!(!timer.is_armed().unwrap());
    }
}
