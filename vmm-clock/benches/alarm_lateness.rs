//! Alarm lateness: how late a 1 kHz periodic Realtime timer fires through our timerfd alarm and
//! a real `EventManager`, beside a bare timerfd loop on the same host (the physical limit).
//!
//! The two paths run in alternating rounds of 250 periods, so both see the same host noise.
//! Each callback records `lateness = monotonic_now - deadline` and re-arms at
//! `deadline + 1 ms`. The bare loop arms a `CLOCK_MONOTONIC` timerfd at the same absolute
//! deadlines, blocks in `read`, and records lateness the same way.
//!
//! ```text
//! cargo bench -p vmm-clock --bench alarm_lateness [-- --secs 10]
//! ALARM_LATENESS_SECS=10 cargo bench -p vmm-clock --bench alarm_lateness
//! ALARM_LATENESS_SLACK_NS=1 ...   # set the timer slack first, as QEMU does (default 50 µs)
//! ```

use std::env;
use std::os::unix::io::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_clock::{ClockType, Clocks, HostTime, TimeSource, Timer, TimerFdAlarm, NANOS_PER_SEC};
use vmm_sys_util::timerfd::TimerFd;

const PERIOD_NS: i64 = 1_000_000;
const DEFAULT_SECS: f64 = 3.0;
/// Periods per round; the two paths alternate rounds.
const ROUND: usize = 250;

/// The run length in seconds: `--secs N` (after `--`), else `ALARM_LATENESS_SECS`, else 3.
fn secs() -> f64 {
    let args: Vec<String> = env::args().collect();
    let from_args = args
        .windows(2)
        .find(|w| w[0] == "--secs")
        .map(|w| w[1].clone());
    from_args
        .or_else(|| env::var("ALARM_LATENESS_SECS").ok())
        .map(|s| s.parse().expect("the duration must be a number of seconds"))
        .unwrap_or(DEFAULT_SECS)
}

fn timer_slack_ns() -> i64 {
    if let Ok(slack) = env::var("ALARM_LATENESS_SLACK_NS") {
        let slack: libc::c_ulong = slack.parse().expect("the slack must be a number of ns");
        // SAFETY: PR_SET_TIMERSLACK takes an integer and only changes this thread's slack.
        let ret = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack, 0, 0, 0) };
        assert_eq!(ret, 0, "prctl(PR_SET_TIMERSLACK) failed");
    }
    // SAFETY: PR_GET_TIMERSLACK takes no pointers and returns this thread's slack.
    i64::from(unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) })
}

/// Our path: a Realtime timer on `Clocks`, the `TimerFdAlarm`, and a real `EventManager`.
struct Ours {
    clocks: Clocks,
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    timer: Timer,
    deadline: Arc<AtomicI64>,
    remaining: Arc<AtomicUsize>,
    lateness: Arc<Mutex<Vec<i64>>>,
}

impl Ours {
    fn new() -> Self {
        let clocks = Clocks::host();
        let alarm = TimerFdAlarm::new(&clocks).expect("cannot create the alarm");
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .expect("cannot create the event manager");
        manager.add_subscriber(Arc::new(Mutex::new(alarm)));
        let deadline = Arc::new(AtomicI64::new(0));
        let remaining = Arc::new(AtomicUsize::new(0));
        let lateness = Arc::new(Mutex::new(Vec::new()));
        let (d, r, l) = (deadline.clone(), remaining.clone(), lateness.clone());
        let timer = clocks.new_timer(ClockType::Realtime, move |t| {
            let deadline = d.load(Ordering::Relaxed);
            l.lock().unwrap().push(t.now() - deadline);
            if r.fetch_sub(1, Ordering::Relaxed) > 1 {
                d.store(deadline + PERIOD_NS, Ordering::Relaxed);
                t.arm(deadline + PERIOD_NS);
            }
        });
        Ours {
            clocks,
            manager,
            timer,
            deadline,
            remaining,
            lateness,
        }
    }

    /// Runs `periods` periods; returns their lateness.
    fn round(&mut self, periods: usize) -> Vec<i64> {
        let first = self.clocks.now(ClockType::Realtime) + PERIOD_NS;
        self.deadline.store(first, Ordering::Relaxed);
        self.remaining.store(periods, Ordering::Relaxed);
        self.timer.arm(first);
        while self.remaining.load(Ordering::Relaxed) > 0 {
            self.manager
                .run_with_timeout(1000)
                .expect("event loop failed");
        }
        std::mem::take(&mut *self.lateness.lock().unwrap())
    }
}

/// The physical limit: one timerfd, absolute 1 ms deadlines, blocking read.
fn run_bare(timer: &mut TimerFd, periods: usize) -> Vec<i64> {
    let host = HostTime::new();
    let mut deadline = host.monotonic_ns() + PERIOD_NS;
    let mut lateness = Vec::with_capacity(periods);
    for _ in 0..periods {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: deadline / NANOS_PER_SEC,
                tv_nsec: deadline % NANOS_PER_SEC,
            },
        };
        // SAFETY: `timer` owns a valid timerfd, `spec` is a valid itimerspec the kernel only
        // reads, and a null old-value pointer is allowed.
        let ret = unsafe {
            libc::timerfd_settime(
                timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                ptr::null_mut(),
            )
        };
        assert_eq!(ret, 0, "timerfd_settime failed");
        timer.wait().expect("timerfd read failed");
        lateness.push(host.monotonic_ns() - deadline);
        deadline += PERIOD_NS;
    }
    lateness
}

struct Summary {
    samples: usize,
    median_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn summarize(mut lateness: Vec<i64>) -> Summary {
    lateness.sort_unstable();
    let n = lateness.len();
    // Nearest-rank percentile.
    let rank = |p: f64| lateness[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
    Summary {
        samples: n,
        median_us: rank(0.50),
        p99_us: rank(0.99),
        max_us: lateness[n - 1] as f64 / 1e3,
    }
}

fn main() {
    let secs = secs();
    let samples = ((secs * 1e3).round() as usize).max(1);
    let slack = timer_slack_ns();
    println!(
        "alarm_lateness: 1 kHz periodic timer, {samples} periods each, \
         alternating in rounds of {ROUND} periods; timer slack {slack} ns"
    );

    // Alternate short rounds so both paths see the same host noise.
    let mut ours = Ours::new();
    let mut bare_timer = TimerFd::new().expect("cannot create a timerfd");
    let (mut ours_lateness, mut bare_lateness) = (Vec::new(), Vec::new());
    let mut left = samples;
    while left > 0 {
        let periods = left.min(ROUND);
        ours_lateness.extend(ours.round(periods));
        bare_lateness.extend(run_bare(&mut bare_timer, periods));
        left -= periods;
    }
    let ours = summarize(ours_lateness);
    let bare = summarize(bare_lateness);

    println!();
    println!(
        "{:<28} {:>8} {:>12} {:>12} {:>12}",
        "", "samples", "median µs", "p99 µs", "max µs"
    );
    for (name, s) in [
        ("bare timerfd (limit)", &bare),
        ("ours: alarm + EventManager", &ours),
    ] {
        println!(
            "{:<28} {:>8} {:>12.1} {:>12.1} {:>12.1}",
            name, s.samples, s.median_us, s.p99_us, s.max_us
        );
    }
    println!(
        "{:<28} {:>8} {:>11.2}x {:>11.2}x",
        "ours / bare",
        "",
        ours.median_us / bare.median_us,
        ours.p99_us / bare.p99_us
    );
}
