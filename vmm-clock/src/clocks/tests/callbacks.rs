//! Callbacks that use the clocks, and timers shared between threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use super::*;

#[test]
fn callback_rearms_itself_periodically() {
    let (time, clocks) = setup();
    let count = Arc::new(AtomicUsize::new(0));
    let count2 = count.clone();
    let mut deadline = 1000;
    let t = clocks.new_timer(ClockType::Virtual, move |t| {
        count2.fetch_add(1, Ordering::SeqCst);
        deadline += 1000;
        t.arm(deadline);
    });
    t.arm(1000);
    for n in 1..=5 {
        time.advance(1000);
        assert!(clocks.run_timers(ClockType::Virtual));
        assert_eq!(count.load(Ordering::SeqCst), n);
        assert_eq!(t.expire_time_ns(), (n as u64 + 1) * 1000);
    }
    // Falling behind by three periods catches up one period per pass (a timer runs at most
    // once per pass), the main loop getting its turn between them.
    time.advance(3000);
    for n in 6..=8 {
        assert!(clocks.run_timers(ClockType::Virtual));
        assert_eq!(count.load(Ordering::SeqCst), n);
    }
    assert!(!clocks.run_timers(ClockType::Virtual), "caught up");
    assert_eq!(t.expire_time_ns(), 9000);
}

#[test]
fn callback_cancels_another_timer_before_it_runs() {
    let (time, clocks) = setup();
    let log = Log::default();
    let victim = Arc::new(logging_timer(&clocks, ClockType::Realtime, "victim", &log));
    let victim2 = victim.clone();
    let log2 = log.clone();
    let killer = clocks.new_timer(ClockType::Realtime, move |_| {
        log2.lock().unwrap().push("killer");
        victim2.cancel();
    });
    killer.arm(10);
    victim.arm(10);
    time.advance(10);
    clocks.run_all_timers();
    assert_eq!(take(&log), ["killer"]);
    assert!(!victim.pending());
}

#[test]
fn a_timer_dropped_by_its_own_callback_is_deleted_after_it_returns() {
    let (time, clocks) = setup();
    let count = Arc::new(AtomicUsize::new(0));
    let holder: Arc<Mutex<Option<Timer>>> = Arc::default();
    let holder2 = holder.clone();
    let count2 = count.clone();
    let t = clocks.new_timer(ClockType::Realtime, move |t| {
        count2.fetch_add(1, Ordering::SeqCst);
        t.arm(0); // Due again in this pass, but the timer is about to be dropped.
        drop(holder2.lock().unwrap().take());
        // The view still works, on a deleted timer.
        assert!(!t.pending());
    });
    t.arm(5);
    *holder.lock().unwrap() = Some(t);
    time.advance(5);
    assert!(clocks.run_all_timers());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn timers_armed_from_another_thread_run_on_this_one() {
    let (time, clocks) = setup();
    let sink = Arc::new(RecordingSink::default());
    clocks.set_alarm_sink(sink.clone());
    let ran_on = Arc::new(Mutex::new(Vec::new()));
    let ran_on2 = ran_on.clone();
    let timer = Arc::new(clocks.new_timer(ClockType::Virtual, move |_| {
        ran_on2.lock().unwrap().push(thread::current().id());
    }));

    // A "vCPU" thread arms the timer 100 times while this thread keeps running the lists.
    let (armed_tx, armed_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let vcpu_timer = timer.clone();
    let vcpu_clocks = clocks.clone();
    let vcpu = thread::spawn(move || {
        for _ in 0..100 {
            vcpu_timer.arm(vcpu_clocks.now(ClockType::Virtual) + 10);
            armed_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        }
    });
    for _ in 0..100 {
        armed_rx.recv().unwrap();
        // The arm reached the alarm sink from the other thread.
        assert_eq!(sink.calls().last(), Some(&clocks.alarm_deadline()));
        time.advance(10);
        assert!(clocks.run_all_timers());
        go_tx.send(()).unwrap();
    }
    vcpu.join().unwrap();
    let ran_on = ran_on.lock().unwrap();
    assert_eq!(ran_on.len(), 100);
    assert!(ran_on.iter().all(|&id| id == thread::current().id()));
}

#[test]
fn concurrent_arming_and_running_loses_no_timer() {
    let (_time, clocks) = setup();
    let count = Arc::new(AtomicUsize::new(0));
    let timers: Vec<Arc<Timer>> = (0..4)
        .map(|_| {
            let count = count.clone();
            Arc::new(clocks.new_timer(ClockType::Realtime, move |_| {
                count.fetch_add(1, Ordering::SeqCst);
            }))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let clocks = clocks.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                clocks.run_all_timers();
            }
        })
    };
    let armers: Vec<_> = timers
        .iter()
        .map(|t| {
            let t = t.clone();
            thread::spawn(move || {
                for _ in 0..1000 {
                    t.arm(0);
                    while t.pending() {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for a in armers {
        a.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    runner.join().unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 4000);
}

#[test]
fn disabling_waits_for_a_running_callback() {
    let (time, clocks) = setup();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let go_rx = Mutex::new(go_rx);
    let t = clocks.new_timer(ClockType::Virtual, move |_| {
        started_tx.send(()).unwrap();
        go_rx.lock().unwrap().recv().unwrap();
        for _ in 0..100 {
            thread::yield_now();
        }
        done2.store(true, Ordering::SeqCst);
    });
    t.arm(1);
    time.advance(1);
    let main_loop = {
        let clocks = clocks.clone();
        thread::spawn(move || clocks.run_all_timers())
    };
    started_rx.recv().unwrap();
    go_tx.send(()).unwrap();
    clocks.vm_stop();
    assert!(
        done.load(Ordering::SeqCst),
        "vm_stop returned while the callback ran"
    );
    assert!(main_loop.join().unwrap());
}

#[test]
fn callbacks_may_use_the_clocks_freely() {
    let (time, clocks) = setup();
    let other = Arc::new(clocks.new_timer(ClockType::Host, |_| {}));
    let other2 = other.clone();
    let t = clocks.new_timer(ClockType::Virtual, move |t| {
        let c = t.clocks();
        c.now(ClockType::Host);
        c.deadline_ns(ClockType::Virtual);
        other2.arm(c.now(ClockType::Host) + 5);
        // Re-entrant runs of the list being run are refused, not deadlocked.
        assert!(!c.run_timers(ClockType::Virtual));
        c.vm_stop();
        c.vm_start();
    });
    t.arm(0);
    time.advance(1);
    assert!(clocks.run_all_timers());
    assert!(other.pending());
    assert!(format!("{clocks:?}").starts_with("Clocks"));
    assert!(format!("{t:?}").contains("Virtual"));
}
