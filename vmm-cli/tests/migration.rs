//! Migration through a file end to end: QMP `migrate` with `file:PATH` on
//! the source (`finish-migrate`, then `postmigrate`; `MIGRATION` events
//! with the `events` capability; `query-migrate`), `--incoming file:PATH`
//! on a new VMM process that counts on from where the source stopped, on
//! a hand-assembled counting guest on this host's `/dev/kvm`; a restored
//! guest, its RAM the file's image mapped, saved again over that file and
//! migrated on.

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
    // What the file got: the pages holding anything (the guest's code and
    // tables, a few dozen), the rest as holes (`duplicate`), and the bytes
    // of both with the sections'.
    let ram = &info["ram"];
    let (normal, duplicate, transferred) = (
        ram["normal"].as_u64().unwrap(),
        ram["duplicate"].as_u64().unwrap(),
        ram["transferred"].as_u64().unwrap(),
    );
    assert_eq!(normal + duplicate, (64u64 << 20) / 4096, "{info}");
    assert!(normal > 0 && normal < 1024, "{info}");
    assert!(transferred > normal * 4096, "{info}");
    assert!(transferred < normal * 4096 + (1 << 20), "{info}");
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

/// `migrate` to `uri`, then `query-migrate` until it says `completed`.
fn migrate(c: &mut Client, uri: &str) {
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    let start = std::time::Instant::now();
    loop {
        let info = c.execute("query-migrate")["return"].clone();
        match info["status"].as_str() {
            Some("completed") => return,
            Some("failed" | "cancelled") => panic!("{info}"),
            _ => assert!(start.elapsed() < RUN_LIMIT, "{info}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A snapshot file's RAM image (its only region, at guest address 0).
fn ram_image(file: &std::path::Path) -> Vec<u8> {
    use vmm_pc::snapshot::format;
    let bytes = std::fs::read(file).unwrap();
    let (_, sections, end) = format::read_counted(&mut bytes.as_slice(), 1 << 30).unwrap();
    let ram = sections.iter().find(|s| s.name == "ram@0").unwrap();
    let image = format::RamImage::decode(&ram.data).unwrap();
    let at = (format::images_at(end) + image.offset) as usize;
    bytes[at..at + image.len as usize].to_vec()
}

/// A restored guest's RAM is the snapshot's image mapped private: pages it
/// never touched since are still in the file, where the page map shows
/// nothing. Saved again over the very file it came from (a new file
/// renamed over it: the mapped pages stay), every page but the guest's
/// own (its code, count and stack share one page) comes out as it was,
/// the new file restores and counts on, and that guest live-migrates on
/// from its mapped RAM. The guest writes 8 MiB before it counts, pages it
/// never touches again.
#[test]
fn a_restored_guest_saves_over_its_own_file_and_migrates_on() {
    if !kvm("migrate_mapped") {
        return;
    }
    // 8 MiB written before it counts: pages it never touches again.
    let guest = test_guests::filled_counter(DELAY, 8);
    let mut src = Counting::start("mapped-src", &guest, None);
    let file = src.dir.0.join("vm.snap");
    let uri = format!("file:{}", file.display());
    wait_counts(&src.log, 3, false);
    migrate(&mut src.qmp, &uri);
    src.quit();
    let first = ram_image(&file);

    // Restored from the file, counting, then saved over it.
    let mut restored = Counting::start("mapped-restored", &guest, Some(&uri));
    wait_counts(&restored.log, 3, true);
    migrate(&mut restored.qmp, &uri);
    let last = *counts(&restored.log, true).last().unwrap();
    restored.quit();
    let second = ram_image(&file);
    let own_page = (test_guests::COUNTER_ADDR / 4096) as usize;
    assert_eq!(
        changed_pages(&first, &second),
        [own_page],
        "pages that changed"
    );
    let nonzero = second
        .chunks(4096)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count();
    assert!(
        nonzero > 8 << 8,
        "the filled pages, the kernel's and the tables are there"
    );
    let fill = test_guests::FILL_START as usize;
    assert!(second[fill..fill + (8 << 20)].iter().all(|&b| b == 0xa5));

    // The new file restores; that guest migrates on over a socket, its
    // pages read from the file where it never touched them.
    let mut again = Counting::start("mapped-again", &guest, Some(&uri));
    let resumed = wait_counts(&again.log, 2, true);
    assert!(
        resumed[0] > last && resumed[0] <= last + 2,
        "saved after {last:#x}; restored printed {resumed:x?}"
    );
    let live_dir = TempDir::new("mapped-live-sock");
    let live = format!("unix:{}", live_dir.0.join("mig.sock").display());
    let mut dst = Counting::start("mapped-live-dst", &guest, Some(&live));
    migrate(&mut again.qmp, &live);
    let stopped = *counts(&again.log, true).last().unwrap();
    let moved = wait_counts(&dst.log, 2, true);
    assert!(
        moved[0] > stopped && moved[0] <= stopped + 2,
        "stopped after {stopped:#x}; the destination printed {moved:x?}"
    );
    again.quit();
    // The pages it never touched went too: the destination's own save
    // holds what the file did, all but the guest's page.
    let after = live_dir.0.join("after.snap");
    migrate(&mut dst.qmp, &format!("file:{}", after.display()));
    dst.quit();
    let third = ram_image(&after);
    assert_eq!(
        changed_pages(&second, &third),
        [own_page],
        "pages that changed on the way"
    );
}

/// A VMM running `guest` (restored from `incoming`, if given) with its
/// console in `dir/serial.log` and QMP connected.
struct Counting {
    dir: TempDir,
    vmm: Option<Running>,
    qmp: Client,
    log: std::path::PathBuf,
}

impl Counting {
    fn start(tag: &str, guest: &[u8], incoming: Option<&str>) -> Self {
        let dir = TempDir::new(tag);
        let log = dir.0.join("serial.log");
        let serial = format!("file:{}", log.display());
        let mut args = vec!["--serial", serial.as_str()];
        if let Some(uri) = incoming {
            args.extend(["--incoming", uri]);
        }
        let (vmm, sock) = spawn(&dir, guest, &args);
        let qmp = Client::connect(&sock);
        Self {
            dir,
            vmm: Some(vmm),
            qmp,
            log,
        }
    }

    /// QMP `quit`; the VMM must end with 0.
    fn quit(&mut self) {
        self.qmp.execute("quit");
        let o = wait(self.vmm.take().unwrap());
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

/// The indices of the 4 KiB pages where images `a` and `b` differ.
fn changed_pages(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    a.chunks(4096)
        .zip(b.chunks(4096))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
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
