//! [`TimerFdAlarm`]: one timerfd at the earliest deadline, as an `event-manager` subscriber.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::alarm::{settime, timespec_from_ns, TimerFdSink};
use crate::clocks::Clocks;
use crate::error::Error;
use crate::host::HostTime;
use crate::{TimeSource, NANOS_PER_SEC};

/// How far ahead the wall-clock watch is armed; it only exists to be cancelled.
const WALL_WATCH_HORIZON_NS: i64 = 365 * 24 * 3600 * NANOS_PER_SEC;

/// The host alarm: one non-blocking `CLOCK_MONOTONIC` timerfd armed to the earliest deadline
/// over all enabled clocks, polled by the main loop through `event-manager`.
///
/// [`TimerFdAlarm::new`] installs the timerfd as the clocks' [`AlarmSink`](crate::AlarmSink), so
/// whichever thread arms a timer that becomes the earliest deadline re-arms the timerfd (one
/// `timerfd_settime`, a thread-safe syscall) and the main loop wakes in time; a deadline that is
/// due or at most a few microseconds ahead writes a kick eventfd instead, which wakes the loop
/// as fast without a timer interrupt on the arming thread's CPU. There are no signals and no
/// extra threads. When the fd becomes readable, the subscriber reads the
/// expiration count (a spurious wake-up, `EAGAIN`, is ignored), runs the timer lists in the
/// order Realtime, Virtual, Host, and re-arms the timerfd to the next deadline.
///
/// It also watches the host wall clock with a second timerfd (`CLOCK_REALTIME`,
/// `TFD_TIMER_CANCEL_ON_SET`): when the wall clock is set, it calls [`Clocks::wall_clock_set`],
/// which notifies reset listeners of a jump and re-computes the Host deadline. If the kernel
/// does not offer that timerfd, a warning is logged and jumps are only found by Host reads.
///
/// The timerfd counts `CLOCK_MONOTONIC` time, so the clocks' [`TimeSource`] must advance at the
/// host's rate (it is [`HostTime`] outside tests).
///
/// # Example
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::{Arc, Mutex};
///
/// use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
/// use vmm_clock::{ClockType, Clocks, TimerFdAlarm};
///
/// let clocks = Clocks::host();
/// let mut main_loop = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
/// main_loop.add_subscriber(Arc::new(Mutex::new(TimerFdAlarm::new(&clocks).unwrap())));
///
/// let fired = Arc::new(AtomicBool::new(false));
/// let flag = fired.clone();
/// let timer = clocks.new_timer(ClockType::Realtime, move |_| flag.store(true, Ordering::SeqCst));
/// timer.arm_after(1_000_000); // 1 ms from now.
/// for _ in 0..100 {
///     if fired.load(Ordering::SeqCst) {
///         break;
///     }
///     main_loop.run_with_timeout(100).unwrap();
/// }
/// assert!(fired.load(Ordering::SeqCst));
/// ```
#[derive(Debug)]
pub struct TimerFdAlarm {
    clocks: Clocks,
    timer: Arc<TimerFd>,
    /// Written instead of arming the timerfd for a deadline that is due or
    /// nearly so (`alarm::KICK_WITHIN_NS`).
    kick: Arc<EventFd>,
    wall_watch: Option<TimerFd>,
}

impl TimerFdAlarm {
    /// Creates the timerfd and makes it `clocks`' alarm sink (replacing any previous one).
    /// Register the result with an `EventManager`.
    pub fn new(clocks: &Clocks) -> Result<Self, Error> {
        let timer = TimerFd::new().map_err(Error::CreateTimerFd)?;
        set_nonblocking(timer.as_raw_fd()).map_err(Error::SetNonBlocking)?;
        let timer = Arc::new(timer);
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::CreateKick)?);
        let wall_watch = match new_wall_watch() {
            Ok(watch) => Some(watch),
            Err(e) => {
                log::warn!("cannot watch the host wall clock for jumps: {e}");
                None
            }
        };
        let sink = TimerFdSink::new(timer.clone(), kick.clone(), clocks.time_source().clone());
        clocks.set_alarm_sink(Arc::new(sink));
        Ok(TimerFdAlarm {
            clocks: clocks.clone(),
            timer,
            kick,
            wall_watch,
        })
    }

    /// The alarm timerfd.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    fn on_alarm(&self) {
        match read_count(self.timer.as_raw_fd()) {
            Ok(count) => log::trace!("alarm expired ({count})"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                log::debug!("spurious alarm wake-up")
            }
            Err(e) => log::error!("cannot read the alarm timerfd: {e}"),
        }
        // Run the lists even after EAGAIN: a re-arm from another thread between the expiry and
        // this read resets the count, and running lists with nothing due is harmless.
        self.clocks.alarm_fired();
    }

    fn on_wall_watch(&self, watch: &TimerFd) {
        match read_count(watch.as_raw_fd()) {
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => self.clocks.wall_clock_set(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => log::error!("cannot read the wall-clock watch: {e}"),
            // It expired: the wall clock moved past its horizon. Just move the horizon.
            Ok(_) => {}
        }
        if let Err(e) = arm_wall_watch(watch) {
            log::error!("cannot re-arm the wall-clock watch: {e}");
        }
    }
}

impl MutEventSubscriber for TimerFdAlarm {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            log::error!("error on timer fd {fd}: {set:?}; unregistering it");
            if let Err(e) = ops.remove(events) {
                log::error!("cannot unregister fd {fd}: {e}");
            }
            return;
        }
        if fd == self.timer.as_raw_fd() {
            self.on_alarm();
        } else if fd == self.kick.as_raw_fd() {
            // Drained before the lists run: a kick written meanwhile wakes
            // the loop again.
            if let Err(e) = self.kick.read() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::error!("cannot read the alarm's kick eventfd: {e}");
                }
            }
            self.clocks.alarm_fired();
        } else if let Some(watch) = self.wall_watch.as_ref().filter(|w| w.as_raw_fd() == fd) {
            self.on_wall_watch(watch);
        } else {
            log::warn!("TimerFdAlarm: unexpected event on fd {fd}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&*self.timer, EventSet::IN)) {
            log::error!("cannot register the alarm timerfd: {e}");
        }
        if let Err(e) = ops.add(Events::new(&*self.kick, EventSet::IN)) {
            log::error!("cannot register the alarm's kick eventfd: {e}");
        }
        if let Some(watch) = &self.wall_watch {
            if let Err(e) = ops.add(Events::new(watch, EventSet::IN)) {
                log::warn!("cannot register the wall-clock watch: {e}");
            }
        }
    }
}

fn set_nonblocking(fd: RawFd) -> Result<(), errno::Error> {
    // SAFETY: F_GETFL on a descriptor we own only reads its flags; the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(errno::Error::last());
    }
    // SAFETY: F_SETFL on a descriptor we own only changes its status flags; the result is checked.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(errno::Error::last());
    }
    Ok(())
}

/// Reads a timerfd's 8-byte expiration count.
fn read_count(fd: RawFd) -> io::Result<u64> {
    let mut count = 0u64;
    // SAFETY: `count` is a valid, writable 8-byte buffer that outlives the call, and the length
    // passed is its size, so the kernel writes only inside it.
    let ret = unsafe {
        libc::read(
            fd,
            (&mut count as *mut u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(count)
}

/// A `CLOCK_REALTIME` timerfd whose reads fail with `ECANCELED` when the wall clock is set.
fn new_wall_watch() -> io::Result<TimerFd> {
    // SAFETY: timerfd_create takes no pointers; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by timerfd_create, so it is a valid timerfd nothing else owns.
    let watch = unsafe { TimerFd::from_raw_fd(fd) };
    arm_wall_watch(&watch)?;
    Ok(watch)
}

fn arm_wall_watch(watch: &TimerFd) -> io::Result<()> {
    let at = HostTime::new()
        .wall_ns()
        .saturating_add(WALL_WATCH_HORIZON_NS);
    let spec = libc::itimerspec {
        it_interval: timespec_from_ns(0),
        it_value: timespec_from_ns(at),
    };
    settime(
        watch,
        libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
        &spec,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use event_manager::{EventManager, SubscriberOps};

    use super::*;
    use crate::ClockType;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    const MS: i64 = 1_000_000;

    #[test]
    fn real_timerfd_runs_timers_through_event_manager() {
        let clocks = Clocks::host();
        let alarm = TimerFdAlarm::new(&clocks).unwrap();
        let mut manager = EventManager::<Subscriber>::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(alarm)));

        let one_shot = Arc::new(AtomicUsize::new(0));
        let fired = one_shot.clone();
        let once = clocks.new_timer(ClockType::Realtime, move |_| {
            fired.fetch_add(1, Ordering::SeqCst);
        });
        once.arm(clocks.now(ClockType::Realtime) + 5 * MS);

        const PERIODS: usize = 10;
        let periodic = Arc::new(AtomicUsize::new(0));
        let ticks = periodic.clone();
        let tick = clocks.new_timer(ClockType::Realtime, move |t| {
            if ticks.fetch_add(1, Ordering::SeqCst) + 1 < PERIODS {
                t.arm_after(MS);
            }
        });
        tick.arm_after(MS);

        // Bounded: at most 10 s of 100 ms polls, though the timers need about 10 ms.
        let give_up = clocks.now(ClockType::Realtime) + 10_000 * MS;
        while (one_shot.load(Ordering::SeqCst) == 0 || periodic.load(Ordering::SeqCst) < PERIODS)
            && clocks.now(ClockType::Realtime) < give_up
        {
            manager.run_with_timeout(100).unwrap();
        }
        assert_eq!(one_shot.load(Ordering::SeqCst), 1);
        assert_eq!(periodic.load(Ordering::SeqCst), PERIODS);
        // Nothing is armed any more, so the timerfd ends up disarmed.
        assert_eq!(clocks.alarm_deadline(), None);
        manager.run_with_timeout(0).unwrap();
        assert_eq!(periodic.load(Ordering::SeqCst), PERIODS);
    }

    #[test]
    fn timerfd_is_nonblocking_and_read_reports_eagain() {
        let alarm = TimerFdAlarm::new(&Clocks::host()).unwrap();
        let err = read_count(alarm.timer_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
