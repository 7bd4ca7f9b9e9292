//! Live migration end to end, between two VMM processes on this host's
//! `/dev/kvm`, with the hand-assembled counting guest: over `tcp:`,
//! `unix:` and `exec:` the destination counts on from where the source
//! stopped, the source ends `postmigrate` with `query-migrate` showing
//! the pre-copy's figures and `MIGRATION_PASS` events; `migrate_cancel`
//! of a throttled migration leaves the source running; a cut or damaged
//! stream ends the destination with one line.

mod common;

use std::time::{Duration, Instant};

use common::qmp_client::{spawn, Client};
use common::*;
use serde_json::json;
use vmm_pc::test_guests;

const DELAY: u32 = 100_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The source: the counting guest, its console in `dir/serial.log`,
/// counting, `MIGRATION` events on.
fn source(dir: &TempDir, extra: &[&str]) -> (Running, Client, std::path::PathBuf) {
    source_of(dir, &test_guests::counter(DELAY), extra)
}

/// [`source`] with `guest`.
fn source_of(dir: &TempDir, guest: &[u8], extra: &[&str]) -> (Running, Client, std::path::PathBuf) {
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let mut args = vec!["--serial", serial.as_str()];
    args.extend_from_slice(extra);
    let (vmm, sock) = spawn(dir, guest, &args);
    let mut c = Client::connect(&sock);
    wait_counts(&log, 5, false);
    assert_eq!(
        c.execute_with(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]})
        ),
        json!({"return": {}})
    );
    (vmm, c, log)
}

/// Sends `migrate` to `uri` and waits until it ends in `status`.
fn migrate_ends(c: &mut Client, uri: &str, status: &str) {
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    let (statuses, _) = until_done(c);
    assert_eq!(
        statuses.last().map(String::as_str),
        Some(status),
        "{statuses:?}"
    );
}

/// Waits for the source's `MIGRATION` events up to a final status;
/// returns the statuses and the `MIGRATION_PASS` events seen.
fn until_done(c: &mut Client) -> (Vec<String>, Vec<u64>) {
    let mut statuses = Vec::new();
    let mut passes = Vec::new();
    let start = Instant::now();
    let mut kept: std::collections::VecDeque<_> = std::mem::take(&mut c.events).into();
    loop {
        assert!(start.elapsed() < RUN_LIMIT, "{statuses:?}");
        let v = kept.pop_front().unwrap_or_else(|| c.line());
        match v["event"].as_str() {
            Some("MIGRATION") => {
                let s = v["data"]["status"].as_str().unwrap().to_owned();
                let done = matches!(s.as_str(), "completed" | "failed" | "cancelled");
                statuses.push(s);
                if done {
                    return (statuses, passes);
                }
            }
            Some("MIGRATION_PASS") => passes.push(v["data"]["pass"].as_u64().unwrap()),
            _ => {}
        }
    }
}

/// Migrates the counting guest from a source to a destination started
/// with `--incoming incoming`, by `migrate` to `uri`.
fn live(tag: &str, incoming: &str, uri: &str, src_extra: &[&str]) {
    let dir = TempDir::new(&format!("live-{tag}-src"));
    let (src, mut c, log) = source(&dir, src_extra);
    let dir2 = TempDir::new(&format!("live-{tag}-dst"));
    let log2 = dir2.0.join("serial.log");
    let serial2 = format!("file:{}", log2.display());
    let guest = test_guests::counter(DELAY);
    let (dst, sock2) = spawn(
        &dir2,
        &guest,
        &["--serial", &serial2, "--incoming", incoming],
    );
    let mut d = Client::connect(&sock2);
    assert_eq!(d.status()["status"], "inmigrate");

    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    // QMP answers while the migration runs.
    let during = c.execute("query-migrate")["return"].clone();
    assert!(
        ["setup", "active", "completed"].contains(&during["status"].as_str().unwrap()),
        "{during}"
    );
    let (statuses, passes) = until_done(&mut c);
    assert_eq!(statuses.first().map(String::as_str), Some("setup"));
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("completed"),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|s| s == "active"), "{statuses:?}");
    assert!(!passes.is_empty() && passes[0] == 1, "{passes:?}");
    assert_eq!(c.status()["status"], "postmigrate");
    let info = c.execute("query-migrate")["return"].clone();
    assert_eq!(info["status"], "completed", "{info}");
    let ram = &info["ram"];
    assert_eq!(ram["total"], 64u64 << 20);
    assert_eq!(ram["remaining"], 0);
    // Every page the guest touched went whole or as a zero mark; pages it
    // never touched cost nothing (QEMU skips zero pages the same way).
    let normal = ram["normal"].as_u64().unwrap();
    assert!(normal >= 2, "{info}");
    assert!(
        ram["transferred"].as_u64().unwrap() >= normal * 4096,
        "{info}"
    );
    assert_eq!(ram["normal-bytes"].as_u64().unwrap(), normal * 4096);
    assert!(ram["dirty-sync-count"].as_u64().unwrap() >= 2, "{info}");
    assert!(info["downtime"].as_u64().is_some(), "{info}");
    assert!(info["total-time"].as_u64().unwrap() >= info["downtime"].as_u64().unwrap());
    let at_migration = counts(&log, false);
    let last = *at_migration.last().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        counts(&log, false),
        at_migration,
        "the source stays stopped"
    );

    let resumed = wait_counts(&log2, 3, true);
    assert!(
        resumed[0] > last && resumed[0] <= last + 2,
        "the source stopped after {last:#x}; the destination printed {resumed:x?}"
    );
    assert_eq!(resumed[1], resumed[0] + 1);
    assert_eq!(d.status()["status"], "running");
    // The destination's answer is its status alone, as QEMU's.
    assert_eq!(
        d.execute("query-migrate")["return"],
        json!({"status": "completed"})
    );
    d.execute("quit");
    let o = wait(dst);
    assert!(o.status.success(), "{}", stderr(&o));
    c.execute("quit");
    let o = wait(src);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn live_migration_over_tcp() {
    if !kvm("live_tcp") {
        return;
    }
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    live("tcp", &uri, &uri, &[]);
}

#[test]
fn live_migration_over_unix() {
    if !kvm("live_unix") {
        return;
    }
    let dir = TempDir::new("live-unix-sock");
    let uri = format!("unix:{}", dir.0.join("mig.sock").display());
    live("unix", &uri, &uri, &[]);
}

#[test]
fn live_migration_through_exec() {
    if !kvm("live_exec") {
        return;
    }
    let dir = TempDir::new("live-exec-file");
    let file = dir.0.join("stream");
    // The source's command needs a VMM that may start programs.
    let (src, mut c, _log) = source(&dir, &["--seccomp", "off"]);
    let uri = format!("exec:cat > '{}'", file.display());
    migrate_ends(&mut c, &uri, "completed");
    c.execute("quit");
    wait(src);
    // The destination reads the command's stdout (under seccomp: the
    // command starts before the filters).
    let dir2 = TempDir::new("live-exec-dst");
    let log2 = dir2.0.join("serial.log");
    let serial2 = format!("file:{}", log2.display());
    let incoming = format!("exec:cat '{}'", file.display());
    let (dst, sock2) = spawn(
        &dir2,
        &test_guests::counter(DELAY),
        &["--serial", &serial2, "--incoming", &incoming],
    );
    let mut d = Client::connect(&sock2);
    let resumed = wait_counts(&log2, 3, true);
    assert_eq!(resumed[1], resumed[0] + 1);
    assert_eq!(d.status()["status"], "running");
    d.execute("quit");
    assert!(wait(dst).status.success());
    // Under seccomp, the source refuses exec: with the reason.
    let dir3 = TempDir::new("live-exec-filtered");
    let (src, mut c, _log) = source(&dir3, &[]);
    let refused = c.execute_with("migrate", json!({"uri": "exec:cat > /dev/null"}));
    assert!(
        refused["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("seccomp"),
        "{refused}"
    );
    c.execute("quit");
    wait(src);
}

/// An `exec:` command that never reads: the stream fills its pipe and the
/// migration waits; `migrate_cancel` kills the command, and the source runs
/// on (it stayed `cancelling` for good before the command was killable).
#[test]
fn migrate_cancel_ends_an_exec_command_that_does_not_read() {
    if !kvm("live_exec_cancel") {
        return;
    }
    let dir = TempDir::new("live-exec-cancel");
    let (src, mut c, log) = source(&dir, &["--seccomp", "off"]);
    assert_eq!(
        c.execute_with("migrate", json!({"uri": "exec:exec sleep 600"})),
        json!({"return": {}})
    );
    c.event("MIGRATION");
    assert_eq!(c.event("MIGRATION")["data"]["status"], "active");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.execute("query-migrate")["return"]["status"], "active");
    assert_eq!(c.execute("migrate_cancel"), json!({"return": {}}));
    let (statuses, _) = until_done(&mut c);
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("cancelled"),
        "{statuses:?}"
    );
    assert_eq!(c.status()["status"], "running");
    let before = counts(&log, false).len();
    wait_counts(&log, before + 3, false);
    c.execute("quit");
    assert!(wait(src).status.success());
}

#[test]
fn migrate_cancel_puts_the_source_back() {
    if !kvm("live_cancel") {
        return;
    }
    let dir = TempDir::new("live-cancel");
    let (src, mut c, log) = source(&dir, &[]);
    let dir2 = TempDir::new("live-cancel-dst");
    let uri = format!("unix:{}", dir2.0.join("mig.sock").display());
    let (dst, sock2) = spawn(
        &dir2,
        &test_guests::counter(DELAY),
        &["--serial", "none", "--incoming", &uri],
    );
    let mut d = Client::connect(&sock2);
    assert_eq!(d.status()["status"], "inmigrate");
    // 4 KiB/s: the first pass alone (the guest's few touched pages)
    // takes seconds.
    assert_eq!(
        c.execute_with("migrate-set-parameters", json!({"max-bandwidth": 4096})),
        json!({"return": {}})
    );
    assert_eq!(
        c.execute("query-migrate-parameters")["return"],
        json!({"downtime-limit": 300, "max-bandwidth": 4096})
    );
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    c.event("MIGRATION");
    let active = c.event("MIGRATION");
    assert_eq!(active["data"]["status"], "active");
    std::thread::sleep(Duration::from_millis(300));
    let info = c.execute("query-migrate")["return"].clone();
    assert_eq!(info["status"], "active", "{info}");
    assert!(info["expected-downtime"].is_u64(), "{info}");
    assert!(
        info["ram"]["transferred"].as_u64().unwrap() < 1 << 20,
        "{info}"
    );
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri }))["error"]["desc"],
        "There's a migration process in progress"
    );
    // The destination, whose migration thread writes RAM meanwhile, takes
    // no snapshot job either way (a save would read that RAM, a load map
    // over it).
    let file = dir2.0.join("snap");
    for job in ["snapshot-save", "snapshot-load"] {
        let r = d.execute_with(
            job,
            json!({"job-id": "j", "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
        );
        assert_eq!(
            r["error"]["desc"], "There's a migration process in progress",
            "{job}: {r}"
        );
    }
    assert!(!file.exists());
    // Nor a reset: it would reload the kernel under the incoming RAM (and
    // `inmigrate -> prelaunch` ended the VMM).
    let r = d.execute("system_reset");
    assert_eq!(
        r["error"]["desc"], "Guest is waiting for an incoming migration",
        "{r}"
    );
    assert_eq!(d.status()["status"], "inmigrate");
    assert_eq!(c.execute("migrate_cancel"), json!({"return": {}}));
    let (statuses, _) = until_done(&mut c);
    assert_eq!(statuses, ["cancelling", "cancelled"]);
    assert_eq!(c.execute("query-migrate")["return"]["status"], "cancelled");
    assert_eq!(c.status()["status"], "running");
    let before = counts(&log, false).len();
    wait_counts(&log, before + 3, false);
    c.execute("quit");
    assert!(wait(src).status.success());
    // The destination saw a cut stream: it ends with one line.
    let o = wait(dst);
    drop(d);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("load of migration failed"),
        "{}",
        stderr(&o)
    );
}

/// Feeds `bytes` to a destination as its stream and returns its output.
fn destination_fed(tag: &str, bytes: &[u8]) -> std::process::Output {
    let dir = TempDir::new(tag);
    let stream = dir.file("stream", bytes);
    let k = dir.file("counter.elf", &test_guests::counter(DELAY));
    let incoming = format!("exec:cat '{}'", stream.display());
    run_kernel(
        &k,
        &[
            "--memory",
            "64M",
            "--serial",
            "none",
            "--incoming",
            &incoming,
        ],
    )
}

#[test]
fn a_cut_or_damaged_stream_ends_the_destination_with_one_line() {
    if !kvm("live_bad_stream") {
        return;
    }
    // A real stream, through exec: into a file.
    let dir = TempDir::new("live-bad-src");
    let file = dir.0.join("stream");
    let (src, mut c, _log) = source(&dir, &["--seccomp", "off"]);
    let uri = format!("exec:cat > '{}'", file.display());
    c.execute_with("migrate", json!({ "uri": uri }));
    let (statuses, _) = until_done(&mut c);
    assert_eq!(statuses.last().map(String::as_str), Some("completed"));
    c.execute("quit");
    wait(src);
    let good = std::fs::read(&file).unwrap();
    let o = destination_fed("live-bad-cut", &good[..good.len() / 2]);
    assert_one_line_error(&o, "load of migration failed: the snapshot is cut short");
    let mut damaged = good.clone();
    let at = good.len() / 3;
    damaged[at] ^= 0xff;
    let o = destination_fed("live-bad-crc", &damaged);
    assert_one_line_error(&o, "load of migration failed:");
    let o = destination_fed("live-bad-magic", b"GARBAGE!garbage garbage");
    assert_one_line_error(&o, "bad magic");
}

#[test]
fn incoming_defer_then_migrate_incoming_over_tcp_ends_paused_with_paused() {
    if !kvm("live_defer") {
        return;
    }
    let dir2 = TempDir::new("live-defer-dst");
    let log2 = dir2.0.join("serial.log");
    let serial2 = format!("file:{}", log2.display());
    let (dst, sock2) = spawn(
        &dir2,
        &test_guests::counter(DELAY),
        &["--serial", &serial2, "--incoming", "defer", "--paused"],
    );
    let mut d = Client::connect(&sock2);
    assert_eq!(d.status()["status"], "inmigrate");
    // A port in use is the command's error (QEMU's text), and the machine
    // waits on for another try; `--incoming` with it is a one-line error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_uri = format!("tcp:127.0.0.1:{}", busy.local_addr().unwrap().port());
    let r = d.execute_with("migrate-incoming", json!({ "uri": busy_uri }));
    let desc = r["error"]["desc"].as_str().unwrap_or_default();
    assert!(
        desc.starts_with(&format!(
            "Failed to bind socket '{}': ",
            &busy_uri["tcp:".len()..]
        )),
        "{r}"
    );
    assert_eq!(d.status()["status"], "inmigrate");
    let o = vmm()
        .args(["--kernel", dir2.0.join("guest.elf").to_str().unwrap()])
        .args([
            "--memory",
            "64M",
            "--serial",
            "none",
            "--incoming",
            &busy_uri,
        ])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--incoming: Failed to bind socket");
    drop(busy);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    assert_eq!(
        d.execute_with("migrate-incoming", json!({ "uri": uri })),
        json!({"return": {}})
    );
    // Listening (on the migration thread) and still answering.
    assert_eq!(d.status()["status"], "inmigrate");
    assert_eq!(d.execute("query-migrate")["return"]["status"], "active");
    let dir = TempDir::new("live-defer-src");
    let (src, mut c, _log) = source(&dir, &[]);
    // Listening once the command returned: the first try goes through.
    migrate_ends(&mut c, &uri, "completed");
    assert_eq!(c.status()["status"], "postmigrate");
    // --paused: loaded, waiting for cont.
    let start = Instant::now();
    while d.status()["status"] == "inmigrate" {
        assert!(start.elapsed() < RUN_LIMIT);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.status()["status"], "paused");
    assert!(counts(&log2, true).is_empty());
    assert_eq!(d.execute("cont"), json!({"return": {}}));
    let resumed = wait_counts(&log2, 3, true);
    assert_eq!(resumed[1], resumed[0] + 1);
    d.execute("quit");
    assert!(wait(dst).status.success());
    // cont runs the source again, as QEMU's after a migration.
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    assert!(wait(src).status.success());
}

#[test]
fn a_destination_that_goes_away_fails_the_migration_and_the_source_runs_on() {
    if !kvm("live_peer_gone") {
        return;
    }
    let dir = TempDir::new("live-gone");
    let (src, mut c, log) = source(&dir, &[]);
    let dir2 = TempDir::new("live-gone-dst");
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (dst, sock2) = spawn(
        &dir2,
        &test_guests::counter(DELAY),
        &["--serial", "none", "--incoming", &uri],
    );
    Client::connect(&sock2);
    // Throttled, so that the destination dies mid-stream.
    c.execute_with("migrate-set-parameters", json!({"max-bandwidth": 4096}));
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(dst); // killed
    let (statuses, _) = until_done(&mut c);
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("failed"),
        "{statuses:?}"
    );
    let info = c.execute("query-migrate")["return"].clone();
    assert_eq!(info["status"], "failed");
    assert!(
        info["error-desc"]
            .as_str()
            .unwrap()
            .contains("cannot write the stream"),
        "{info}"
    );
    assert_eq!(c.status()["status"], "running");
    let before = counts(&log, false).len();
    wait_counts(&log, before + 3, false);
    c.execute("quit");
    assert!(wait(src).status.success());
}

#[test]
fn a_refused_connection_fails_the_migration_and_the_source_runs_on() {
    if !kvm("live_refused") {
        return;
    }
    let dir = TempDir::new("live-refused");
    let (src, mut c, log) = source(&dir, &[]);
    // Nothing listens there (the port was free a moment ago).
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    migrate_ends(&mut c, &uri, "failed");
    let info = c.execute("query-migrate")["return"].clone();
    assert_eq!(info["status"], "failed", "{info}");
    let desc = info["error-desc"].as_str().unwrap_or_default();
    assert!(desc.contains("Connection refused"), "{info}");
    assert_eq!(c.status()["status"], "running");
    let before = counts(&log, false).len();
    wait_counts(&log, before + 3, false);
    // A paused source stays paused when its migration fails.
    assert_eq!(c.execute("stop"), json!({"return": {}}));
    migrate_ends(&mut c, &uri, "failed");
    assert_eq!(c.status()["status"], "paused");
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    // And a later migration may go elsewhere.
    let file = dir.0.join("after.mig");
    assert_eq!(
        c.execute_with(
            "migrate",
            json!({ "uri": format!("file:{}", file.display()) })
        ),
        json!({"return": {}})
    );
    let (statuses, _) = until_done(&mut c);
    assert_eq!(statuses.last().map(String::as_str), Some("completed"));
    c.execute("quit");
    assert!(wait(src).status.success());
}

#[test]
fn a_guest_that_never_converges_stops_at_the_pass_cap() {
    if !kvm("live_pass_cap") {
        return;
    }
    // A fast counter: a count every few hundred microseconds.
    let fast = test_guests::counter(1000);
    let dir = TempDir::new("live-cap");
    let (src, mut c, _log) = source_of(&dir, &fast, &[]);
    // No downtime allowed, and passes slow enough (16 KiB/s: even a pass
    // of one page takes over 100 ms) that the counter's page is dirty
    // again after each: only the cap (30 passes) ends the pre-copy. A
    // pass during which the guest did not get the CPU at all (a loaded
    // host) leaves nothing to send and ends it early, rightly; then the
    // source runs again and migrates to a new destination, three tries.
    assert_eq!(
        c.execute_with(
            "migrate-set-parameters",
            json!({"downtime-limit": 0, "max-bandwidth": 16384})
        ),
        json!({"return": {}})
    );
    let mut seen = Vec::new();
    for attempt in 0..3 {
        let dir2 = TempDir::new(&format!("live-cap-dst{attempt}"));
        let log2 = dir2.0.join("serial.log");
        let serial2 = format!("file:{}", log2.display());
        let uri = format!("unix:{}", dir2.0.join("mig.sock").display());
        let (dst, sock2) = spawn(&dir2, &fast, &["--serial", &serial2, "--incoming", &uri]);
        let mut d = Client::connect(&sock2);
        if attempt > 0 {
            assert_eq!(c.execute("cont"), json!({"return": {}}));
        }
        c.execute_with("migrate", json!({ "uri": uri }));
        let (statuses, passes) = until_done(&mut c);
        assert_eq!(statuses.last().map(String::as_str), Some("completed"));
        let n = passes.len() as u64;
        assert!((2..=31).contains(&n), "{passes:?}");
        assert_eq!(passes, (1..=n).collect::<Vec<u64>>());
        let info = c.execute("query-migrate")["return"].clone();
        assert_eq!(info["ram"]["dirty-sync-count"], n, "{info}");
        let resumed = wait_counts(&log2, 3, true);
        assert_eq!(resumed[1], resumed[0] + 1);
        d.execute("quit");
        assert!(wait(dst).status.success());
        seen.push(n);
        if n == 31 {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&31), "passes per try: {seen:?}");
    c.execute("quit");
    assert!(wait(src).status.success());
}

/// A machine with a disk, to a destination on the same image (shared
/// storage): the destination opens it without its lock, and takes the
/// lock once the source, completing, has let it go (waiting for it under
/// its seccomp filter); both end cleanly.
#[test]
fn a_machine_with_a_disk_migrates_to_a_vmm_on_the_same_image() {
    if !kvm("live_disk") {
        return;
    }
    let dir = TempDir::new("live-disk-src");
    let image = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let drive = format!("file={},if=virtio,format=raw", image.display());
    let guest = test_guests::counter(DELAY);
    let (src, mut c, _log) = source_of(&dir, &guest, &["--drive", &drive]);
    let dir2 = TempDir::new("live-disk-dst");
    let log2 = dir2.0.join("serial.log");
    let serial2 = format!("file:{}", log2.display());
    let uri = format!("unix:{}", dir2.0.join("mig.sock").display());
    let (dst, sock2) = spawn(
        &dir2,
        &guest,
        &["--serial", &serial2, "--drive", &drive, "--incoming", &uri],
    );
    let mut d = Client::connect(&sock2);
    migrate_ends(&mut c, &uri, "completed");
    let resumed = wait_counts(&log2, 3, true);
    assert_eq!(resumed[1], resumed[0] + 1);
    assert_eq!(d.status()["status"], "running");
    // The destination holds the image's lock now.
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&image).unwrap();
        // SAFETY: flock on a descriptor this test owns; no memory involved.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, -1, "the image is not locked");
    }
    d.execute("quit");
    let o = wait(dst);
    assert!(o.status.success(), "{}", stderr(&o));
    c.execute("quit");
    let o = wait(src);
    assert!(o.status.success(), "{}", stderr(&o));
}
