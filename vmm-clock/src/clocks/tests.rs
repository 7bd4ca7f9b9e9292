//! The docs/devices.md §2.8 test vectors on [`FakeTime`]; callbacks and threads in `callbacks`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::FakeTime;

mod callbacks;

const SEC: i64 = crate::NANOS_PER_SEC;

/// An alarm sink that records every `set` call.
#[derive(Debug, Default)]
struct RecordingSink {
    calls: Mutex<Vec<Option<i64>>>,
}

impl RecordingSink {
    fn calls(&self) -> Vec<Option<i64>> {
        self.calls.lock().unwrap().clone()
    }
}

impl AlarmSink for RecordingSink {
    fn set(&self, deadline: Option<i64>) {
        self.calls.lock().unwrap().push(deadline);
    }
}

/// Running clocks on a fake time source (the Virtual clock started).
fn setup() -> (Arc<FakeTime>, Clocks) {
    let time = Arc::new(FakeTime::new());
    let clocks = Clocks::new(time.clone());
    clocks.vm_start();
    (time, clocks)
}

/// A shared log of which timers ran.
type Log = Arc<Mutex<Vec<&'static str>>>;

fn logging_timer(clocks: &Clocks, clock: ClockType, name: &'static str, log: &Log) -> Timer {
    let log = log.clone();
    clocks.new_timer(clock, move |_| log.lock().unwrap().push(name))
}

fn take(log: &Log) -> Vec<&'static str> {
    std::mem::take(&mut *log.lock().unwrap())
}

// Vector 1.
#[test]
fn equal_deadlines_fire_in_arm_order() {
    let (time, clocks) = setup();
    let log = Log::default();
    let a = logging_timer(&clocks, ClockType::Virtual, "A", &log);
    let b = logging_timer(&clocks, ClockType::Virtual, "B", &log);
    let c = logging_timer(&clocks, ClockType::Virtual, "C", &log);
    a.arm(1000);
    b.arm(1000);
    c.arm(500);
    time.advance(1000);
    assert!(clocks.run_timers(ClockType::Virtual));
    assert_eq!(take(&log), ["C", "A", "B"]);

    a.arm(2000);
    b.arm(2000);
    c.arm(1500);
    a.arm(2000); // Re-arming moves A behind B.
    time.advance(1000);
    clocks.run_timers(ClockType::Virtual);
    assert_eq!(take(&log), ["C", "B", "A"]);
}

// Vector 2.
#[test]
fn past_and_negative_deadlines() {
    let (_time, clocks) = setup();
    let log = Log::default();
    let t = logging_timer(&clocks, ClockType::Virtual, "T", &log);
    t.arm(-5);
    assert!(t.pending());
    assert_eq!(t.expire_time_ns(), 0);
    assert!(t.expired(0));
    clocks.run_timers(ClockType::Virtual);
    assert_eq!(take(&log), ["T"]);
    assert!(!t.pending());
}

// Vector 3.
#[test]
fn cancelled_timer_does_not_run() {
    let (time, clocks) = setup();
    let log = Log::default();
    let t = logging_timer(&clocks, ClockType::Realtime, "T", &log);
    t.arm(100);
    t.cancel();
    t.cancel(); // Idempotent.
    assert!(!t.pending());
    assert_eq!(t.expire_time_ns(), u64::MAX);
    assert!(!t.expired(i64::MAX), "an unarmed timer is never expired");
    time.advance(1000);
    assert!(!clocks.run_all_timers());
    assert!(take(&log).is_empty());
}

// Vector 4.
#[test]
fn timer_is_not_pending_inside_its_callback() {
    let (_time, clocks) = setup();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let t = clocks.new_timer(ClockType::Realtime, move |t| {
        *seen2.lock().unwrap() = Some((t.pending(), t.expire_time_ns()));
    });
    t.arm(0);
    clocks.run_timers(ClockType::Realtime);
    assert_eq!(*seen.lock().unwrap(), Some((false, u64::MAX)));
}

// Vector 5.
#[test]
fn timer_armed_due_during_a_pass_runs_in_that_pass() {
    for (x_deadline, same_pass) in [(90, true), (150, false)] {
        let (time, clocks) = setup();
        time.advance(100);
        let log = Log::default();
        let x = Arc::new(logging_timer(&clocks, ClockType::Virtual, "X", &log));
        let x2 = x.clone();
        let log2 = log.clone();
        let first = clocks.new_timer(ClockType::Virtual, move |_| {
            log2.lock().unwrap().push("first");
            x2.arm(x_deadline);
        });
        first.arm(100);
        clocks.run_timers(ClockType::Virtual);
        if same_pass {
            assert_eq!(take(&log), ["first", "X"]);
        } else {
            assert_eq!(take(&log), ["first"]);
            assert!(!clocks.run_timers(ClockType::Virtual), "now is still 100");
            time.advance(50);
            clocks.run_timers(ClockType::Virtual);
            assert_eq!(take(&log), ["X"]);
        }
    }
}

/// A callback that re-arms its own timer at or before now (issue 15: the RTC's saturated
/// deadline) runs once per pass, and the alarm is left due at once for the next pass; the pass
/// itself returns. Without the once-per-pass rule it ran until the cap below (a hang without it).
#[test]
fn a_timer_rearmed_in_the_past_runs_once_per_pass() {
    const CAP: usize = 10_000;
    let at_now: fn(&Timer) -> i64 = |t| t.now();
    let at_zero: fn(&Timer) -> i64 = |_| 0;
    let a_second_ago: fn(&Timer) -> i64 = |t| t.now() - SEC;
    for (clock, deadline) in [
        (ClockType::Realtime, at_now),
        (ClockType::Virtual, at_zero),
        (ClockType::Host, a_second_ago),
    ] {
        let time = Arc::new(FakeTime::with_wall(1_000 * SEC));
        let sink = Arc::new(RecordingSink::default());
        let clocks = Clocks::with_alarm(time.clone(), sink.clone());
        clocks.vm_start();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let log = Log::default();
        let other = logging_timer(&clocks, clock, "other", &log);
        let t = clocks.new_timer(clock, move |t| {
            if counter.fetch_add(1, Ordering::SeqCst) < CAP {
                t.arm(deadline(t));
            }
        });
        t.arm(clocks.now(clock));
        other.arm(clocks.now(clock) + 10);
        time.advance(10);
        for pass in 1..=3 {
            assert!(clocks.alarm_fired(), "{clock:?} pass {pass}");
            assert_eq!(
                runs.load(Ordering::SeqCst),
                pass,
                "{clock:?}: once per pass"
            );
            assert!(t.pending(), "{clock:?}: still armed, overdue");
            let due = sink.calls().last().copied().flatten();
            assert!(
                due.is_some_and(|d| d <= time.monotonic_ns()),
                "{clock:?}: the alarm is due at once: {due:?}"
            );
        }
        assert_eq!(
            take(&log),
            ["other"],
            "{clock:?}: other due timers still run"
        );
    }
}

// Vector 6.
#[test]
fn virtual_clock_freezes_across_stop_and_start() {
    let time = Arc::new(FakeTime::with_wall(1_000 * SEC));
    let clocks = Clocks::new(time.clone());
    assert!(!clocks.is_vm_running());
    assert!(!clocks.is_enabled(ClockType::Virtual));
    time.advance(3 * SEC);
    assert_eq!(
        clocks.now(ClockType::Virtual),
        0,
        "stopped until the first vm_start"
    );
    clocks.vm_start();
    time.advance(5 * SEC);
    assert_eq!(clocks.now(ClockType::Virtual), 5 * SEC);

    let realtime = clocks.now(ClockType::Realtime);
    let host = clocks.now(ClockType::Host);
    clocks.vm_stop();
    assert!(!clocks.is_enabled(ClockType::Virtual));
    time.advance(10 * SEC);
    assert_eq!(clocks.now(ClockType::Virtual), 5 * SEC);
    assert_eq!(clocks.now(ClockType::Realtime), realtime + 10 * SEC);
    assert_eq!(clocks.now(ClockType::Host), host + 10 * SEC);

    clocks.vm_start();
    assert!(clocks.is_enabled(ClockType::Virtual));
    time.advance(SEC);
    assert_eq!(clocks.now(ClockType::Virtual), 6 * SEC);
}

// Vector 7.
#[test]
fn disabled_clock_runs_nothing_and_has_no_deadline() {
    let (time, clocks) = setup();
    let log = Log::default();
    let t = logging_timer(&clocks, ClockType::Virtual, "T", &log);
    t.arm(10);
    time.advance(20);
    assert_eq!(
        clocks.deadline_ns(ClockType::Virtual),
        Some(0),
        "overdue clamps to 0"
    );
    clocks.set_enabled(ClockType::Virtual, false);
    assert!(!clocks.run_timers(ClockType::Virtual));
    assert!(!clocks.run_all_timers());
    assert_eq!(clocks.deadline_ns(ClockType::Virtual), None);
    assert_eq!(clocks.alarm_deadline(), None);
    assert!(t.pending(), "timers stay queued");
    clocks.set_enabled(ClockType::Virtual, true);
    assert!(clocks.run_timers(ClockType::Virtual));
    assert_eq!(take(&log), ["T"]);
}

// Vector 8.
#[test]
fn only_a_new_earliest_deadline_reprograms_the_alarm() {
    let time = Arc::new(FakeTime::new());
    let sink = Arc::new(RecordingSink::default());
    let clocks = Clocks::with_alarm(time.clone(), sink.clone());
    let a = clocks.new_timer(ClockType::Realtime, |_| {});
    let b = clocks.new_timer(ClockType::Realtime, |_| {});
    let c = clocks.new_timer(ClockType::Realtime, |_| {});
    assert!(sink.calls().is_empty());
    a.arm(1000);
    assert_eq!(sink.calls(), [Some(1000)]);
    b.arm(2000);
    a.arm(1000); // Same deadline again.
    assert_eq!(sink.calls().len(), 1, "a later timer does not re-arm");
    c.arm(500);
    assert_eq!(sink.calls(), [Some(1000), Some(500)], "exactly one settime");
    c.cancel();
    assert_eq!(sink.calls().last(), Some(&Some(1000)));
    a.cancel();
    b.cancel();
    assert_eq!(sink.calls().last(), Some(&None), "no deadline disarms");
    assert_eq!(sink.calls().len(), 5);
}

#[test]
fn alarm_deadline_converts_each_clock_to_monotonic() {
    let time = Arc::new(FakeTime::with_wall(100 * SEC));
    time.advance(SEC); // monotonic 1 s, wall 101 s.
    let sink = Arc::new(RecordingSink::default());
    let clocks = Clocks::with_alarm(time.clone(), sink.clone());

    let v = clocks.new_timer(ClockType::Virtual, |_| {});
    v.arm(500);
    assert!(sink.calls().is_empty(), "Virtual is stopped and disabled");
    clocks.vm_start(); // Virtual 0 at monotonic 1 s.
    assert_eq!(sink.calls(), [Some(SEC + 500)]);
    clocks.vm_stop();
    assert_eq!(sink.calls().last(), Some(&None));

    let h = clocks.new_timer(ClockType::Host, |_| {});
    h.arm(103 * SEC);
    assert_eq!(sink.calls().last(), Some(&Some(3 * SEC)));
    // The wall clock steps back 10 s: the Host deadline moves 10 s later.
    time.set_wall(91 * SEC);
    clocks.now(ClockType::Host);
    assert_eq!(sink.calls().last(), Some(&Some(13 * SEC)));
}

#[test]
fn alarm_is_rearmed_after_each_expiry() {
    let time = Arc::new(FakeTime::new());
    let sink = Arc::new(RecordingSink::default());
    let clocks = Clocks::with_alarm(time.clone(), sink.clone());
    let t = clocks.new_timer(ClockType::Realtime, |t| t.arm(t.now() + 100));
    t.arm(100);
    time.advance(100);
    assert!(clocks.alarm_fired());
    time.advance(10);
    // Fired early (e.g. Host drift): nothing runs, the same deadline is programmed again.
    assert!(!clocks.alarm_fired());
    assert_eq!(sink.calls(), [Some(100), Some(200), Some(200)]);
}

// Vector 10.
#[test]
fn wall_jump_calls_reset_listeners_once() {
    let time = Arc::new(FakeTime::with_wall(10_000 * SEC));
    let clocks = Clocks::new(time.clone());
    clocks.vm_start();
    time.advance(5 * SEC);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let heard2 = heard.clone();
    let id = clocks.add_reset_listener(move |t| heard2.lock().unwrap().push(t));
    let (virt, real) = (
        clocks.now(ClockType::Virtual),
        clocks.now(ClockType::Realtime),
    );

    time.set_wall(10_005 * SEC - 3_600 * SEC);
    assert_eq!(clocks.now(ClockType::Host), 6_405 * SEC);
    clocks.now(ClockType::Host);
    assert_eq!(*heard.lock().unwrap(), [6_405 * SEC]);
    assert_eq!(clocks.now(ClockType::Virtual), virt);
    assert_eq!(clocks.now(ClockType::Realtime), real);

    // Time passing is not a jump, even a long gap between reads.
    time.advance(600 * SEC);
    clocks.now(ClockType::Host);
    // A small forward step is not a jump; one over 60 s is.
    time.set_wall(clocks.now(ClockType::Host) + 30 * SEC);
    clocks.now(ClockType::Host);
    assert_eq!(heard.lock().unwrap().len(), 1);
    let stepped = clocks.now(ClockType::Host) + 61 * SEC;
    time.set_wall(stepped);
    clocks.run_timers(ClockType::Host);
    assert_eq!(*heard.lock().unwrap(), [6_405 * SEC, stepped]);

    assert!(clocks.remove_reset_listener(id));
    assert!(!clocks.remove_reset_listener(id));
    time.set_wall(0);
    clocks.now(ClockType::Host);
    assert_eq!(heard.lock().unwrap().len(), 2);
}

#[test]
fn wall_clock_set_notifies_and_reprograms() {
    let time = Arc::new(FakeTime::with_wall(1_000 * SEC));
    let sink = Arc::new(RecordingSink::default());
    let clocks = Clocks::with_alarm(time.clone(), sink.clone());
    let heard = Arc::new(AtomicUsize::new(0));
    let heard2 = heard.clone();
    clocks.add_reset_listener(move |_| {
        heard2.fetch_add(1, Ordering::SeqCst);
    });
    let h = clocks.new_timer(ClockType::Host, |_| {});
    h.arm(1_010 * SEC);
    assert_eq!(sink.calls(), [Some(10 * SEC)]);
    // A 5 s step: too small for listeners, but the Host deadline moves.
    time.set_wall(1_005 * SEC);
    clocks.wall_clock_set();
    assert_eq!(heard.load(Ordering::SeqCst), 0);
    assert_eq!(sink.calls(), [Some(10 * SEC), Some(5 * SEC)]);
    time.set_wall(0);
    clocks.wall_clock_set();
    assert_eq!(heard.load(Ordering::SeqCst), 1);
}

#[test]
fn dropping_a_timer_deletes_it() {
    let (time, clocks) = setup();
    let log = Log::default();
    let t = logging_timer(&clocks, ClockType::Realtime, "T", &log);
    t.arm(10);
    drop(t);
    time.advance(10);
    assert!(!clocks.run_all_timers());
    assert_eq!(clocks.alarm_deadline(), None);
}

#[test]
fn arm_if_earlier_and_arm_after() {
    let (time, clocks) = setup();
    time.advance(1000);
    let t = clocks.new_timer(ClockType::Realtime, |_| {});
    t.arm_after(500);
    assert_eq!(t.expire_ns(), Some(1500));
    t.arm_if_earlier(2000);
    assert_eq!(t.expire_ns(), Some(1500));
    t.arm_if_earlier(1200);
    assert_eq!(t.expire_ns(), Some(1200));
    assert_eq!(clocks.deadline_ns(ClockType::Realtime), Some(200));
    assert_eq!(t.clock(), ClockType::Realtime);
}
