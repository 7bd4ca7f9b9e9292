//! A guest in ACPI S3 saved, migrated and loaded as such, between VMM
//! processes on this host's `/dev/kvm` (PVM included), with the
//! benchmark's S3 guest (`test_guests::suspend_cycles`: `z` as it
//! suspends, `wz` for each wake-up at its waking vector): after
//! `migrate file:`, `migrate unix:` or `snapshot-save`/`snapshot-load`
//! the machine is `suspended`, nothing runs, and `system_wakeup` wakes the
//! guest where the source would have; a failed or cancelled migration
//! leaves the source `suspended`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::qmp_client::{quit, spawn, Client};
use common::*;
use serde_json::json;
use vmm_pc::test_guests;

/// A machine with the S3 guest, its console in `dir/serial.log`, run
/// until the guest suspended (`z`); `MIGRATION` events on.
fn suspended(dir: &TempDir, extra: &[&str]) -> (Running, Client, PathBuf) {
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let mut args = vec!["--paused", "--serial", serial.as_str()];
    args.extend_from_slice(extra);
    let (vmm, sock) = spawn(dir, &test_guests::suspend_cycles(), &args);
    let mut c = Client::connect(&sock);
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("SUSPEND");
    assert_eq!(wait_for_output(&log, 1), b"z");
    assert_eq!(c.status()["status"], "suspended");
    assert_eq!(
        c.execute_with(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]})
        ),
        json!({"return": {}})
    );
    // The start's RESUME is behind us.
    c.events.clear();
    (vmm, c, log)
}

/// A destination of the S3 guest: `extra` holds `--incoming`.
fn destination(dir: &TempDir, extra: &[&str]) -> (Running, Client, PathBuf) {
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let mut args = vec!["--serial", serial.as_str()];
    args.extend_from_slice(extra);
    let (vmm, sock) = spawn(dir, &test_guests::suspend_cycles(), &args);
    (vmm, Client::connect(&sock), log)
}

/// `query-status` until it leaves `inmigrate`.
fn settled(c: &mut Client) -> serde_json::Value {
    for _ in 0..3000 {
        let s = c.status();
        if s["status"] != "inmigrate" {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("still inmigrate");
}

/// Nothing runs while suspended: the console holds `before`, still.
fn sleeps(log: &Path, before: &[u8]) {
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read(log).unwrap_or_default(), before);
}

/// `system_wakeup`: WAKEUP, the guest's `w` at its waking vector, then
/// SUSPEND and `z` again; the console then holds `expect`.
fn wakes(c: &mut Client, log: &Path, expect: &[u8]) {
    assert_eq!(c.execute("system_wakeup"), json!({"return": {}}));
    c.event("WAKEUP");
    c.event("SUSPEND");
    assert_eq!(wait_for_output(log, expect.len()), expect);
    assert_eq!(c.status()["status"], "suspended");
}

/// The MIGRATION statuses up to `completed` or `failed`.
fn migration_end(c: &mut Client) -> String {
    loop {
        let s = c.event("MIGRATION")["data"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if matches!(s.as_str(), "completed" | "failed" | "cancelled") {
            return s;
        }
    }
}

#[test]
fn a_suspended_guest_migrated_through_a_file_wakes_in_the_new_process() {
    if !kvm("s3_migrate_file") {
        return;
    }
    let dir = TempDir::new("s3mig-src");
    let (src, mut c, log) = suspended(&dir, &[]);
    // A migration that fails (no such directory) leaves it suspended.
    let bad = format!("file:{}", dir.0.join("no/such/dir/vm.mig").display());
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": bad })),
        json!({"return": {}})
    );
    assert_eq!(migration_end(&mut c), "failed");
    assert_eq!(c.status()["status"], "suspended");
    // Its clocks stopped and ran again: STOP and RESUME, as QEMU's.
    c.event("STOP");
    c.event("RESUME");

    let file = dir.0.join("vm.mig");
    let uri = format!("file:{}", file.display());
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    assert_eq!(migration_end(&mut c), "completed");
    assert_eq!(c.status()["status"], "postmigrate");
    c.event("STOP");

    // The destination comes up suspended and wakes on system_wakeup.
    let dir2 = TempDir::new("s3mig-dst");
    let (dst, mut d, log2) = destination(&dir2, &["--incoming", &uri]);
    assert_eq!(
        settled(&mut d),
        json!({"running": false, "singlestep": false, "status": "suspended"})
    );
    sleeps(&log2, b"");
    wakes(&mut d, &log2, b"wz");
    wakes(&mut d, &log2, b"wzwz");
    quit(&mut d, dst);

    // With --paused: paused (as QEMU's -S), and `cont` goes to suspended.
    let dir3 = TempDir::new("s3mig-dst-paused");
    let (dst, mut d, log3) = destination(&dir3, &["--incoming", &uri, "--paused"]);
    assert_eq!(settled(&mut d)["status"], "paused");
    assert_eq!(
        d.execute("system_wakeup")["error"]["desc"],
        "Unable to wake up: guest is not in suspended state"
    );
    assert_eq!(d.execute("cont"), json!({"return": {}}));
    assert_eq!(d.status()["status"], "suspended");
    d.event("RESUME");
    sleeps(&log3, b"");
    wakes(&mut d, &log3, b"wz");
    quit(&mut d, dst);

    // `cont` on the source puts its guest back to sleep, not running.
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    assert_eq!(c.status()["status"], "suspended");
    c.event("RESUME");
    sleeps(&log, b"z");
    wakes(&mut c, &log, b"zwz");
    quit(&mut c, src);
}

#[test]
fn a_suspended_guest_migrated_live_over_unix_wakes_on_the_destination() {
    if !kvm("s3_migrate_unix") {
        return;
    }
    let dir = TempDir::new("s3live-src");
    let (src, mut c, log) = suspended(&dir, &[]);
    let dir2 = TempDir::new("s3live-dst");
    let uri = format!("unix:{}", dir2.0.join("mig.sock").display());
    let (dst, mut d, log2) = destination(&dir2, &["--incoming", &uri]);
    assert_eq!(d.status()["status"], "inmigrate");
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    assert_eq!(migration_end(&mut c), "completed");
    assert_eq!(c.status()["status"], "postmigrate");
    assert_eq!(settled(&mut d)["status"], "suspended");
    assert_eq!(d.execute("query-migrate")["return"]["status"], "completed");
    sleeps(&log2, b"");
    wakes(&mut d, &log2, b"wz");
    quit(&mut d, dst);
    sleeps(&log, b"z");
    quit(&mut c, src);
}

#[test]
fn a_cancelled_live_migration_leaves_the_source_suspended() {
    if !kvm("s3_migrate_cancel") {
        return;
    }
    let dir = TempDir::new("s3cancel-src");
    let (src, mut c, log) = suspended(&dir, &[]);
    let dir2 = TempDir::new("s3cancel-dst");
    let uri = format!("unix:{}", dir2.0.join("mig.sock").display());
    let (dst, mut d, _) = destination(&dir2, &["--incoming", &uri]);
    assert_eq!(d.status()["status"], "inmigrate");
    // 4 KiB/s: the first pass takes seconds.
    assert_eq!(
        c.execute_with("migrate-set-parameters", json!({"max-bandwidth": 4096})),
        json!({"return": {}})
    );
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.execute("query-migrate")["return"]["status"], "active");
    assert_eq!(c.execute("migrate_cancel"), json!({"return": {}}));
    assert_eq!(migration_end(&mut c), "cancelled");
    assert_eq!(c.status()["status"], "suspended");
    sleeps(&log, b"z");
    wakes(&mut c, &log, b"zwz");
    quit(&mut c, src);
    // The destination saw a cut stream: it ends with status 1.
    let o = wait(dst);
    drop(d);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// A snapshot-save and snapshot-load job; its error (`null` if none).
fn job(c: &mut Client, kind: &str, id: &str, file: &Path) -> serde_json::Value {
    c.execute_with(
        kind,
        json!({"job-id": id, "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    loop {
        let e = c.event("JOB_STATUS_CHANGE");
        if e["data"]["id"] == id && e["data"]["status"] == "concluded" {
            break;
        }
    }
    let jobs = c.execute("query-jobs");
    jobs["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .map(|j| j["error"].clone())
        .unwrap_or_else(|| panic!("no job {id}: {jobs}"))
}

/// The snapshot file at `file` with its `runstate` section's data
/// replaced by `data` (the checksums right, the RAM images moved along).
fn with_runstate(file: &Path, data: &[u8]) -> Vec<u8> {
    use vmm_pc::snapshot::format;
    let bytes = std::fs::read(file).unwrap();
    let (shape, sections, end) = format::read_counted(&mut bytes.as_slice(), 1 << 30).unwrap();
    assert!(sections.iter().any(|s| s.name == "runstate"));
    let refs: Vec<(&str, &[u8])> = sections
        .iter()
        .map(|s| {
            let d = if s.name == "runstate" { data } else { &s.data };
            (s.name.as_str(), d)
        })
        .collect();
    let mut out = Vec::new();
    format::write(&mut out, &shape, &refs).unwrap();
    out.resize(format::images_at(out.len() as u64) as usize, 0);
    out.extend_from_slice(&bytes[format::images_at(end) as usize..]);
    out
}

#[test]
fn a_snapshot_of_a_suspended_guest_loads_suspended() {
    if !kvm("s3_snapshot") {
        return;
    }
    let dir = TempDir::new("s3snap");
    let (vmm, mut c, log) = suspended(&dir, &[]);
    let file = dir.0.join("snap");
    // suspended -> save-vm -> suspended; STOP and RESUME (its clocks), as
    // QEMU's.
    assert!(job(&mut c, "snapshot-save", "s", &file).is_null());
    assert_eq!(c.status()["status"], "suspended");
    c.event("STOP");
    c.event("RESUME");
    assert!(!c.events.iter().any(|e| e["event"] == "WAKEUP"));
    sleeps(&log, b"z");
    // Woken, then loaded while suspended: suspended, and it wakes again
    // from the saved point.
    wakes(&mut c, &log, b"zwz");
    assert!(job(&mut c, "snapshot-load", "l", &file).is_null());
    assert_eq!(c.status()["status"], "suspended");
    c.event("STOP");
    c.event("RESUME");
    sleeps(&log, b"zwz");
    wakes(&mut c, &log, b"zwzwz");
    // A file whose runstate names a state a load cannot resume in is
    // refused before anything changes.
    let bad = dir.0.join("bad-runstate");
    std::fs::write(&bad, with_runstate(&file, br#"{"state":"running"}"#)).unwrap();
    let e = job(&mut c, "snapshot-load", "bad", &bad).to_string();
    assert!(e.contains("run state 'running'"), "{e}");
    assert_eq!(c.status()["status"], "suspended");
    sleeps(&log, b"zwzwz");
    quit(&mut c, vmm);

    // Loaded into a machine that never ran (--paused, prelaunch): it
    // stays stopped, and `cont` goes to suspended.
    let dir2 = TempDir::new("s3snap-load");
    let (vmm, mut d, log2) = destination(&dir2, &["--paused"]);
    assert!(job(&mut d, "snapshot-load", "l", &file).is_null());
    assert_eq!(d.status()["status"], "prelaunch");
    assert_eq!(d.execute("cont"), json!({"return": {}}));
    assert_eq!(d.status()["status"], "suspended");
    sleeps(&log2, b"");
    wakes(&mut d, &log2, b"wz");
    quit(&mut d, vmm);
}
