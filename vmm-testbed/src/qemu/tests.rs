//! The QEMU runner's tests: L1's command line, fake L1s for the batch
//! runner's limits (silence, heartbeat, soft lockups), the interactive
//! ports.

use super::*;

#[test]
fn a_one_cpu_l1_gets_the_periodic_tick() {
    if std::env::var_os(APPEND_ENV).is_some() {
        return;
    }
    assert_eq!(l1_cmdline(1), format!("{L1_CMDLINE} {PERIODIC_TICK}"));
    assert_eq!(l1_cmdline(2), L1_CMDLINE);
    assert!(!L1_CMDLINE.contains("nohz"));
}

/// A stand-in for L1: `sh -c SCRIPT` (the QEMU arguments run_batch
/// adds become unused positional parameters).
fn fake_l1(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script, "sh"]);
    c
}

#[test]
fn a_silent_l1_is_left_after_the_silence_limit() {
    let start = Instant::now();
    let cmd = fake_l1("echo @@TESTBED-L1-READY 1; echo @@TESTBED-OUT-BEGIN; sleep 30");
    let r = run_batch(
        cmd,
        Duration::from_secs(20),
        None,
        Some(Duration::from_millis(300)),
        None,
    );
    match r {
        Err(TestbedError::Silent { after, console }) => {
            assert_eq!(after, Duration::from_millis(300));
            assert!(console.contains("@@TESTBED-OUT-BEGIN"), "{console}");
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // Output keeps it going: a job that prints often is not silent.
    let cmd = fake_l1(
        "echo @@TESTBED-L1-READY 1; echo @@TESTBED-OUT-BEGIN; \
         for i in 1 2 3 4 5 6; do sleep 0.1; echo $i; done; \
         printf '\\n@@TESTBED-OUT-END 0\\n@@TESTBED-ERR-BEGIN\\n@@TESTBED-ERR-END\\n'",
    );
    let out = run_batch(
        cmd,
        Duration::from_secs(20),
        None,
        Some(Duration::from_millis(400)),
        None,
    )
    .unwrap();
    assert_eq!(out.console, "1\n2\n3\n4\n5\n6\n");
    assert_eq!(out.status, Some(0));
}

/// A fake L1's script that finds the heartbeat file among QEMU's
/// arguments (as `$hb`), then runs `body`.
fn beating_l1(body: &str) -> Command {
    fake_l1(&format!(
        "for a; do case \"$a\" in file,id=heartbeat,path=*) \
         hb=\"${{a#file,id=heartbeat,path=}}\";; esac; done; {body}"
    ))
}

const READY: &str = "echo @@TESTBED-L1-READY 1; echo @@TESTBED-OUT-BEGIN";
const END: &str = "printf '\\n@@TESTBED-OUT-END 0\\n@@TESTBED-ERR-BEGIN\\n@@TESTBED-ERR-END\\n'";

fn short_beat() -> crate::heartbeat::Limits {
    crate::heartbeat::Limits {
        first: Duration::from_secs(3),
        between: Duration::from_millis(1500),
    }
}

#[test]
fn an_l1_whose_heartbeat_stops_is_hung() {
    let start = Instant::now();
    let cmd = beating_l1(&format!(
        "{READY}; for i in 1 2 3; do printf . >>\"$hb\"; sleep 0.1; done; sleep 30"
    ));
    let r = run_batch_inner(cmd, Duration::from_secs(20), None, None, None, short_beat());
    match r {
        Err(TestbedError::NoHeartbeat {
            after,
            beats,
            console,
        }) => {
            assert_eq!(after, Duration::from_millis(1500));
            assert_eq!(beats, 3);
            assert!(console.contains("@@TESTBED-OUT-BEGIN"), "{console}");
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(12));
    // One that never beats: named after the first limit.
    let r = run_batch_inner(
        fake_l1("sleep 30"),
        Duration::from_secs(20),
        None,
        None,
        None,
        short_beat(),
    );
    assert!(
        matches!(r, Err(TestbedError::NoHeartbeat { after, beats: 0, .. }) if after == Duration::from_secs(3)),
        "{r:?}"
    );
}

#[test]
fn a_beating_l1_runs_past_the_limit_and_silence_is_not_a_stop() {
    // A silent console for 3 s, beats every 0.2 s: the job ends well.
    let cmd = beating_l1(&format!(
        "{READY}; for i in $(seq 15); do printf . >>\"$hb\"; sleep 0.2; done; echo ok; {END}"
    ));
    let out =
        run_batch_inner(cmd, Duration::from_secs(20), None, None, None, short_beat()).unwrap();
    assert_eq!(out.console, "ok\n");
}

#[test]
fn a_long_soft_lockup_is_a_hung_l1() {
    let short = "[   50.1] watchdog: BUG: soft lockup - CPU#0 stuck for 27s! [vmm:430]\r\n";
    assert_eq!(l1_stuck(short), None, "a short one may be the host's load");
    let long = format!(
        "{short}[ 1548.4] watchdog: BUG: soft lockup - CPU#1 stuck for 1096s! [vmm:430]\r\n"
    );
    let what = l1_stuck(&long).expect("stuck");
    assert!(what.contains("CPU#1 stuck for 1096s! [vmm:430]"), "{what}");
    assert!(!what.contains("IPI"), "{what}");
    // With the reporter's backtrace (L1_DMESG lines) spinning on an IPI.
    let waiting =
        format!("{long}@@TESTBED-L1-DMESG [ 30.2]  smp_call_function_many_cond+0x11c/0x3b0\r\n");
    let named = l1_stuck(&waiting).expect("stuck");
    assert!(
        named.contains("1096s") && named.contains("TCG's SVM fault"),
        "{named}"
    );
    // Or L1's kernel log printed again at its panic, after the report.
    let replay = format!("{long}[ 1548.5] Call Trace:\r\n[ 1548.5]  csd_lock_wait+0x2a\r\n");
    assert!(l1_stuck(&replay).unwrap().contains("TCG's SVM fault"));
    // The function named in a guest's line before the report is not
    // L1's backtrace.
    let guest = format!("guest: smp_call_function_many_cond\r\n{long}");
    assert!(!l1_stuck(&guest).unwrap().contains("IPI"));
    assert_eq!(l1_stuck("soft lockup - CPU#0 stuck for 1000"), None);
    assert_eq!(l1_stuck("BUG: soft lockup - CPU#0 stuck for xs!"), None);
    assert_eq!(l1_stuck("no report"), None);
}

#[test]
fn interactive_serial_ports_in_order() {
    let none = interactive_serial_args(&crate::Bridges::default(), Path::new("/t/st"));
    assert_eq!(
        none.join(" "),
        "-chardev null,id=ttys1 -chardev null,id=ttys2 -chardev file,id=ttys3,path=/t/st \
         -serial chardev:ttys1 -serial chardev:ttys2 -serial chardev:ttys3"
    );
    let both = crate::Bridges {
        ttys1_socket: Some("/t/q.sock".into()),
        ttys2_file: Some("/t/console.log".into()),
    };
    let a = interactive_serial_args(&both, Path::new("/t/st")).join(" ");
    assert!(
        a.contains("socket,id=ttys1,path=/t/q.sock,server=on,wait=on"),
        "{a}"
    );
    assert!(
        a.contains("file,id=ttys2,path=/t/console.log,append=on"),
        "{a}"
    );
}

#[test]
fn the_vmm_status_from_its_port() {
    assert_eq!(vmm_status("0\r\n"), Some(0));
    assert_eq!(vmm_status("1\n"), Some(1));
    assert_eq!(vmm_status(""), None);
    assert_eq!(vmm_status("garbage"), None);
    // After the heartbeat's dots, and with one late dot after it.
    assert_eq!(vmm_status("..... 0\n"), Some(0));
    assert_eq!(vmm_status("....7\n"), Some(7));
    assert_eq!(vmm_status("... 3\n."), Some(3));
    assert_eq!(vmm_status("....."), None);
}

/// A fake interactive L1 that finds its status file among QEMU's
/// arguments (as `$st`), then runs `body`.
fn interactive_l1(body: &str) -> Command {
    fake_l1(&format!(
        "for a; do case \"$a\" in file,id=ttys3,path=*) \
         st=\"${{a#file,id=ttys3,path=}}\";; esac; done; {body}"
    ))
}

#[test]
fn an_interactive_l1_that_stops_beating_is_ended_and_named() {
    let start = Instant::now();
    // Three beats, then silence for ever (a hung L1): ended after the
    // limit, by SIGTERM (the shell dies of it at once).
    let r = run_interactive_watched(
        interactive_l1("for i in 1 2 3; do printf . >>\"$st\"; sleep 0.2; done; sleep 60"),
        &crate::Bridges::default(),
        short_beat(),
    );
    match r {
        Err(TestbedError::NoHeartbeat { after, beats, .. }) => {
            assert_eq!(after, Duration::from_millis(1500));
            assert_eq!(beats, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // Beats, then the VMM's status: its status, however long the beats
    // went on.
    let r = run_interactive_watched(
        interactive_l1(
            "for i in 1 2 3 4 5 6 7 8; do printf . >>\"$st\"; sleep 0.5; done; \
             echo ' 4' >>\"$st\"",
        ),
        &crate::Bridges::default(),
        short_beat(),
    );
    assert_eq!(r.unwrap(), 4);
    // No beat at all: named at the first limit.
    let r = run_interactive_watched(
        interactive_l1("sleep 60"),
        &crate::Bridges::default(),
        short_beat(),
    );
    assert!(
        matches!(r, Err(TestbedError::NoHeartbeat { after, beats: 0, .. }) if after == Duration::from_secs(3)),
        "{r:?}"
    );
}

#[test]
fn reset_log_summary_counts_resets_and_triple_faults() {
    let log =
        "CPU Reset (CPU 0)\nEAX=0\nCPU Reset (CPU 1)\nEAX=0\nTriple fault\nCPU Reset (CPU 0)\n";
    assert_eq!(
        reset_log_summary(log),
        "QEMU's reset log: 3 CPU resets (2 at start-up), 1 triple faults"
    );
}

#[test]
fn growth_is_seen_when_it_comes_and_not_otherwise() {
    let calls = std::cell::Cell::new(0usize);
    let grows_later = || {
        calls.set(calls.get() + 1);
        if calls.get() > 3 {
            120
        } else {
            100
        }
    };
    assert!(wait_for_growth(&grows_later, 100, Duration::from_secs(5)));
    assert!(!wait_for_growth(&|| 100, 100, Duration::from_millis(250)));
}
