//! Migration through a file end to end: QMP `migrate` with `file:PATH` on
//! the source (`finish-migrate`, then `postmigrate`; `MIGRATION` events
//! with the `events` capability; `query-migrate`), `--incoming file:PATH`
//! on a new VMM process that counts on from where the source stopped, on
//! a hand-assembled counting guest on this host's `/dev/kvm`.

mod common;

use std::time::Duration;

use common::qmp_client::{spawn, Client};
use common::*;
use serde_json::json;
use vmm_pc::test_guests;

const DELAY: u32 = 100_000;

#[test]
fn a_guest_migrated_through_a_file_counts_on_in_a_new_process() {
    if !kvm("migrate_file") {
        return;
    }
    let dir = TempDir::new("migrate-src");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let file = dir.0.join("vm.mig");
    let guest = test_guests::counter(DELAY);
    let (src, sock) = spawn(&dir, &guest, &["--serial", &serial]);
    let mut c = Client::connect(&sock);
    assert_eq!(c.execute("query-migrate"), json!({"return": {}}));
    wait_counts(&log, 5, false);
    assert_eq!(
        c.execute_with(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]})
        ),
        json!({"return": {}})
    );
    let uri = format!("file:{}", file.display());
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    for status in ["setup", "active", "completed"] {
        assert_eq!(c.event("MIGRATION")["data"]["status"], status);
    }
    c.event("STOP");
    assert_eq!(c.status()["status"], "postmigrate");
    let info = c.execute("query-migrate")["return"].clone();
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(info["ram"]["total"], 64u64 << 20);
    let at_migration = counts(&log, false);
    let last = *at_migration.last().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        counts(&log, false),
        at_migration,
        "the source stays stopped"
    );

    // The destination: the same command line with --incoming.
    let dir2 = TempDir::new("migrate-dst");
    let log2 = dir2.0.join("serial.log");
    let serial2 = format!("file:{}", log2.display());
    let (dst, sock2) = spawn(&dir2, &guest, &["--serial", &serial2, "--incoming", &uri]);
    let mut d = Client::connect(&sock2);
    let resumed = wait_counts(&log2, 3, true);
    assert!(
        resumed[0] > last && resumed[0] <= last + 2,
        "the source stopped after {last:#x}; the destination printed {resumed:x?}"
    );
    assert_eq!(resumed[1], resumed[0] + 1);
    assert_eq!(d.status()["status"], "running");
    d.execute("quit");
    let o = wait(dst);
    assert!(o.status.success(), "{}", stderr(&o));

    // `cont` runs the source again, as QEMU's after a migration.
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    assert_eq!(c.status()["status"], "running");
    wait_counts(&log, at_migration.len() + 2, false);
    c.execute("quit");
    let o = wait(src);
    assert!(o.status.success(), "{}", stderr(&o));

    // Paused destination: loads, waits for cont.
    let dir3 = TempDir::new("migrate-dst-paused");
    let (dst, sock3) = spawn(
        &dir3,
        &guest,
        &["--serial", "none", "--incoming", &uri, "--paused"],
    );
    let mut p = Client::connect(&sock3);
    assert_eq!(p.status()["status"], "paused");
    assert_eq!(p.execute("cont"), json!({"return": {}}));
    assert_eq!(p.status()["status"], "running");
    p.execute("quit");
    assert!(wait(dst).status.success());

    // A destination of another shape refuses the file and ends with 1.
    let k = dir3.file("counter.elf", &guest);
    let o = run_kernel(&k, &["--memory", "128M", "--incoming", &uri]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the snapshot has 64 MiB of RAM, this machine 128 MiB"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn incoming_defer_waits_for_migrate_incoming() {
    if !kvm("migrate_defer") {
        return;
    }
    let dir = TempDir::new("migrate-defer-src");
    let file = dir.0.join("vm.mig");
    let uri = format!("file:{}", file.display());
    let guest = test_guests::counter(DELAY);
    let (src, sock) = spawn(&dir, &guest, &["--serial", "none"]);
    let mut c = Client::connect(&sock);
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    c.execute("quit");
    wait(src);

    let dir2 = TempDir::new("migrate-defer-dst");
    let log = dir2.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (dst, sock2) = spawn(
        &dir2,
        &guest,
        &["--serial", &serial, "--incoming", "defer", "--paused"],
    );
    let mut d = Client::connect(&sock2);
    assert_eq!(d.status()["status"], "inmigrate");
    // `cont` now only says to run once loaded, as QEMU's.
    assert_eq!(d.execute("cont"), json!({"return": {}}));
    assert_eq!(d.status()["status"], "inmigrate");
    assert_eq!(
        d.execute_with("migrate-incoming", json!({"uri": "file:/nonexistent"}))["error"]["class"],
        "GenericError"
    );
    assert_eq!(
        d.status()["status"],
        "inmigrate",
        "a failed load changes nothing"
    );
    assert_eq!(
        d.execute_with("migrate-incoming", json!({ "uri": uri })),
        json!({"return": {}})
    );
    assert_eq!(d.status()["status"], "running");
    wait_counts(&log, 3, true);
    let again = d.execute_with("migrate-incoming", json!({ "uri": uri }));
    assert!(
        again["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("--incoming defer"),
        "{again}"
    );
    d.execute("quit");
    assert!(wait(dst).status.success());
}
