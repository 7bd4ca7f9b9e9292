//! `--seccomp`: every thread of a running VMM is filtered, each by its own
//! list only, and a call off a list ends the VMM with a line naming it
//! (`on`) or goes through (`log`). The QMP, console and guest flows of
//! qmp.rs and guests.rs run with the default, `on`, so they check that
//! the lists hold for them.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vmm_pc::test_guests;

/// The status of a VMM ended by a forbidden call: 128 + SIGSYS.
const SIGSYS_STATUS: i32 = 128 + 31;

/// Connects to QMP and reads the greeting: by then the main loop runs, so
/// every thread has installed its filter.
fn greeted(path: &Path) -> UnixStream {
    let start = Instant::now();
    let s = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > RUN_LIMIT => panic!("no QMP socket: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    s.set_read_timeout(Some(RUN_LIMIT)).unwrap();
    let mut greeting = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut greeting)
        .unwrap();
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    s
}

/// `PF_USER_WORKER` in a task's flags: a kernel worker living in the
/// process (Linux 6.4 on), such as KVM's `kvm-nx-lpage-recovery` on recent
/// kernels. It never runs user code, so no filter applies to it (it shows
/// the filter of the thread that made it, the first vCPU's).
const PF_USER_WORKER: u64 = 0x4000;

/// A task's flags, from its `stat` (the 9th field; the name may hold spaces
/// and is in parentheses); `None` once the task has ended.
fn task_flags(task: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    Some(
        after_name
            .split_whitespace()
            .nth(6)
            .unwrap()
            .parse()
            .unwrap(),
    )
}

/// Each thread's name and the `Seccomp`, `Seccomp_filters` and `NoNewPrivs`
/// lines of its status; kernel workers left out, and so are threads that
/// end while being listed (the start-up CPUID thread, when the machine is
/// watched as it starts).
fn threads(pid: u32) -> BTreeMap<String, (String, String, String)> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Some(flags) = task_flags(&task) else {
            continue;
        };
        if flags & PF_USER_WORKER != 0 {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        out.insert(
            field("Name:"),
            (
                field("Seccomp:"),
                field("Seccomp_filters:"),
                field("NoNewPrivs:"),
            ),
        );
    }
    out
}

/// Runs a spinning guest on two vCPUs with QMP and `extra`; returns the
/// threads once QMP answers, after quitting through QMP.
fn thread_report(tag: &str, extra: &[&str]) -> BTreeMap<String, (String, String, String)> {
    thread_report_on(tag, "2", extra)
}

/// [`thread_report`] on `cpus` vCPUs.
fn thread_report_on(
    tag: &str,
    cpus: &str,
    extra: &[&str],
) -> BTreeMap<String, (String, String, String)> {
    let dir = TempDir::new(tag);
    let k = dir.file("spin.elf", &test_guests::hello_spin("spin\n"));
    let sock = dir.0.join("qmp.sock");
    let child = vmm()
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            cpus,
        ])
        .args(["--qmp", sock.to_str().unwrap()])
        .args(extra)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut s = greeted(&sock);
    let report = threads(pid);
    writeln!(s, r#"{{"execute":"qmp_capabilities"}}{{"execute":"quit"}}"#).unwrap();
    let out = wait(child);
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    report
}

#[test]
fn every_thread_has_its_own_filter() {
    if !kvm("seccomp_every_thread") {
        return;
    }
    let report = thread_report("seccomp-threads", &[]);
    // The main thread, the migration thread and the vCPUs: no other
    // thread (the start-up CPUID thread has ended; serial output has no
    // thread of its own), kernel workers aside.
    let names: Vec<&str> = report.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["migration", "vcpu 0", "vcpu 1", "vmm"],
        "{report:?}"
    );
    for (name, (mode, filters, nnp)) in &report {
        assert_eq!(mode, "2", "{name}: seccomp mode 2 (filter)");
        assert_eq!(nnp, "1", "{name}: no_new_privs");
        // One filter each: no thread inherited another's (the main thread
        // installs its own last, after every thread is created); but the
        // vCPU threads of a machine with several vCPUs have two: the boot
        // vCPU's, with their set-up's calls, which they all inherit, and
        // each its lock refusing those calls.
        let want = if name.starts_with("vcpu ") { "2" } else { "1" };
        if !filters.is_empty() {
            assert_eq!(filters, want, "{name}: filters");
        }
    }
}

/// Without QMP nothing can ask for a migration: no migration thread (and
/// its filter) is made. Once the main thread's filter is in, every thread
/// the machine makes exists.
#[test]
fn no_migration_thread_without_qmp() {
    if !kvm("seccomp_no_migration_thread") {
        return;
    }
    let dir = TempDir::new("seccomp-no-migration");
    let k = dir.file("spin.elf", &test_guests::hello_spin("spin\n"));
    let mut child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--memory", "64M"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let report = loop {
        let report = threads(pid);
        if report.get("vmm").is_some_and(|(mode, _, _)| mode == "2") {
            break report;
        }
        assert!(start.elapsed() < RUN_LIMIT, "no main filter: {report:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    let _ = child.wait();
    let names: Vec<&str> = report.keys().map(String::as_str).collect();
    assert_eq!(names, ["vcpu 0", "vmm"], "{report:?}");
}

/// With one vCPU its thread installs the vCPU list itself: one filter.
#[test]
fn a_single_vcpu_has_one_filter() {
    if !kvm("seccomp_single_vcpu") {
        return;
    }
    let report = thread_report_on("seccomp-one-vcpu", "1", &[]);
    let (mode, filters, _) = &report["vcpu 0"];
    assert_eq!(mode, "2", "{report:?}");
    assert!(!report.contains_key("vcpu 1"), "{report:?}");
    if !filters.is_empty() {
        assert_eq!(filters, "1", "{report:?}");
    }
}

/// A socket device's worker (made at build time, parked until a driver
/// starts the device, which this guest never does) has its own filter,
/// one, like every other thread.
#[test]
fn a_vsock_devices_worker_has_its_own_filter() {
    if !kvm("seccomp_vsock_worker") {
        return;
    }
    let dir = TempDir::new("seccomp-vsock");
    let device = format!(
        "virtio-vsock-pci,guest-cid=3,uds={}",
        dir.0.join("v.sock").display()
    );
    let report = thread_report("seccomp-vsock-threads", &["--device", &device]);
    let names: Vec<&str> = report.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["migration", "vcpu 0", "vcpu 1", "virtio-vsock", "vmm"],
        "{report:?}"
    );
    let (mode, filters, nnp) = &report["virtio-vsock"];
    assert_eq!((mode.as_str(), nnp.as_str()), ("2", "1"), "{report:?}");
    if !filters.is_empty() {
        assert_eq!(filters, "1", "one filter: {report:?}");
    }
}

#[test]
fn off_installs_no_filter() {
    if !kvm("seccomp_off") {
        return;
    }
    let report = thread_report("seccomp-off", &["--seccomp", "off"]);
    assert_eq!(report.len(), 4, "{report:?}");
    for (name, (mode, _, _)) in &report {
        assert_eq!(mode, "0", "{name}: no filter");
    }
}

/// QMP's system_reset reloads the kernel and the initrd on the main thread
/// and sets every vCPU up again on its own thread, running and paused:
/// all within the lists (the tests in qmp.rs reset without an initrd).
#[test]
fn system_reset_with_an_initrd_stays_within_the_lists() {
    if !kvm("seccomp_reset_initrd") {
        return;
    }
    let dir = TempDir::new("seccomp-reset");
    let k = dir.file("spin.elf", &test_guests::hello_spin("spin\n"));
    let initrd = dir.file("initrd", &vec![0x5a; 300_000]);
    let sock = dir.0.join("qmp.sock");
    let child = vmm()
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "2",
        ])
        .args(["--initrd", initrd.to_str().unwrap()])
        .args(["--qmp", sock.to_str().unwrap(), "--serial", "none"])
        .spawn()
        .unwrap();
    let mut s = greeted(&sock);
    let commands = [
        "qmp_capabilities",
        "system_reset",
        "stop",
        "system_reset",
        "cont",
        "query-status",
        "quit",
    ];
    for c in commands {
        common::qmp_client::send_line(&mut s, &format!(r#"{{"execute":"{c}"}}"#));
    }
    let mut replies = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if !line.contains("\"event\"") {
            replies.push(line);
        }
        if replies.len() == commands.len() {
            break;
        }
    }
    assert!(
        replies[..5].iter().all(|r| r == r#"{"return":{}}"#),
        "{replies:?}"
    );
    assert!(replies[5].contains(r#""status":"running""#), "{replies:?}");
    let out = wait(child);
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
}

/// Debug builds only: VMM_SECCOMP_TEST_FORBIDDEN makes a thread call
/// getppid, which is on no list, right after installing its filter.
fn forbidden(tag: &str, thread: &str, extra: &[&str]) -> Option<std::process::Output> {
    if !cfg!(debug_assertions) {
        eprintln!("SKIP {tag}: VMM_SECCOMP_TEST_FORBIDDEN is for debug builds only");
        return None;
    }
    let dir = TempDir::new(tag);
    let k = dir.file("hello.elf", &test_guests::hello_reset("hello\n"));
    // The migration thread exists only where something can ask for a
    // migration: a QMP server (never connected to here).
    let sock = dir.0.join("qmp.sock");
    let qmp: &[&str] = if thread == "migration" {
        &["--qmp", sock.to_str().unwrap()]
    } else {
        &[]
    };
    let child = vmm()
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "2",
        ])
        .args(qmp)
        .args(extra)
        .env("VMM_SECCOMP_TEST_FORBIDDEN", thread)
        .spawn()
        .unwrap();
    Some(wait(child))
}

#[test]
fn a_forbidden_call_ends_the_vmm_with_a_line_naming_it() {
    if !kvm("seccomp_forbidden") {
        return;
    }
    for (thread, name) in [
        ("main", "main"),
        ("vcpu", "vcpu "),
        ("migration", "migration"),
    ] {
        let Some(out) = forbidden("seccomp-forbidden", thread, &[]) else {
            return;
        };
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(SIGSYS_STATUS), "{thread}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("vmm: seccomp:"))
            .unwrap_or_else(|| panic!("{thread}: no seccomp line in {err:?}"));
        let want = format!("vmm: seccomp: forbidden system call 110 (getppid) on thread {name}");
        assert!(line.starts_with(&want), "{thread}: {line:?}");
        assert!(line.ends_with(')') && line.contains("(tid "), "{line:?}");
        // The guest never ran: every filter goes in before guest code, but
        // the main thread's and the migration thread's (made once the boot
        // vCPU runs, before the main loop reads anything).
        if !["main", "migration"].contains(&thread) {
            assert!(!out.stdout.windows(5).any(|w| w == b"hello"), "{thread}");
        }
    }
}

/// Once a vCPU thread's lock is in, the set-up's calls it inherited from
/// the boot vCPU's filter (here: naming the thread) end the VMM too.
#[test]
fn the_vcpu_lock_refuses_the_set_up_calls() {
    if !kvm("seccomp_vcpu_lock") {
        return;
    }
    let Some(out) = forbidden("seccomp-vcpu-lock", "vcpu-setup", &[]) else {
        return;
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(SIGSYS_STATUS), "{err}");
    assert!(
        err.contains("vmm: seccomp: forbidden system call 157 (prctl) on thread vcpu "),
        "{err}"
    );
    assert!(!out.stdout.windows(5).any(|w| w == b"hello"));
    // Let through with `log`, the same run boots.
    let Some(out) = forbidden("seccomp-vcpu-lock-log", "vcpu-setup", &["--seccomp", "log"]) else {
        return;
    };
    let err = stderr(&out);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("made a set-up call after the lock"), "{err}");
}

#[test]
fn log_lets_a_forbidden_call_through() {
    if !kvm("seccomp_log") {
        return;
    }
    for thread in ["main", "vcpu", "migration"] {
        let Some(out) = forbidden("seccomp-log", thread, &["--seccomp", "log"]) else {
            return;
        };
        let err = stderr(&out);
        assert!(out.status.success(), "{thread}: {:?}: {err}", out.status);
        assert!(err.contains("made a forbidden call"), "{thread}: {err}");
        assert!(!err.contains("vmm: seccomp:"), "{thread}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{thread}");
    }
}
