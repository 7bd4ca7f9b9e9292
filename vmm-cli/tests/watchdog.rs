//! The ib700 watchdog end to end (`--device ib700`, `--action watchdog=`,
//! QMP `watchdog-set-action`/`set-action` and the `WATCHDOG` event) on a
//! hand-assembled guest that arms it and never pets it, on this host's
//! `/dev/kvm` (PVM included).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::qmp_client::{spawn, Client};
use common::*;
use serde_json::json;
use vmm_pc::test_guests;

/// The timeout index for 0 s: the watchdog fires as soon as it is armed.
const AT_ONCE: u8 = 15;

fn serial_file(dir: &TempDir) -> (PathBuf, String) {
    let log = dir.0.join("serial.log");
    (log.clone(), format!("file:{}", log.display()))
}

fn wait_for_output(path: &Path, want: &[u8]) {
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        if bytes.starts_with(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {:?} on the serial port",
            String::from_utf8_lossy(&bytes)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pause_stops_in_watchdog_and_cont_runs_again() {
    if !kvm("watchdog_pause") {
        return;
    }
    let dir = TempDir::new("wdt-pause");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(
        &dir,
        &test_guests::watchdog("wd\n", AT_ONCE),
        &[
            "--serial",
            &serial,
            "--paused",
            "--device",
            "ib700",
            "--action",
            "watchdog=pause",
        ],
    );
    let mut c = Client::connect(&sock);
    c.execute("cont");
    assert_eq!(c.event("WATCHDOG")["data"], json!({"action": "pause"}));
    c.event("STOP");
    assert_eq!(c.status()["status"], "watchdog");
    wait_for_output(&log, b"wd\n");
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("RESUME");
    assert_eq!(c.status()["status"], "running");
    // The device is in the machine's device list.
    let qtree = c.execute_with(
        "human-monitor-command",
        json!({"command-line": "info qtree"}),
    );
    assert!(
        qtree["return"]
            .as_str()
            .unwrap()
            .contains("dev: ib700, id \"watchdog0\""),
        "{qtree}"
    );
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn reset_is_a_guest_reset_and_the_guest_boots_again() {
    if !kvm("watchdog_reset") {
        return;
    }
    let dir = TempDir::new("wdt-reset");
    let (log, serial) = serial_file(&dir);
    // The default action is reset; with --reboot reset the machine resets
    // in place and the guest arms the watchdog again.
    let (child, sock) = spawn(
        &dir,
        &test_guests::watchdog("wd\n", AT_ONCE),
        &[
            "--serial", &serial, "--paused", "--device", "ib700", "--reboot", "reset",
        ],
    );
    let mut c = Client::connect(&sock);
    c.execute("cont");
    assert_eq!(c.event("WATCHDOG")["data"], json!({"action": "reset"}));
    assert_eq!(
        c.event("RESET")["data"],
        json!({"guest": true, "reason": "guest-reset"})
    );
    wait_for_output(&log, b"wd\nwd\n");
    // Now nothing: the action is none, and the guest runs on.
    assert_eq!(
        c.execute_with("watchdog-set-action", json!({"action": "none"})),
        json!({"return": {}})
    );
    c.events.clear();
    assert_eq!(c.event("WATCHDOG")["data"], json!({"action": "none"}));
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn poweroff_ends_the_vmm_with_status_0() {
    if !kvm("watchdog_poweroff") {
        return;
    }
    let dir = TempDir::new("wdt-poweroff");
    let k = dir.file("wd.elf", &test_guests::watchdog("wd\n", AT_ONCE));
    let o = run_kernel(
        &k,
        &[
            "--device",
            "ib700",
            "--action",
            "watchdog=poweroff",
            "--log-level",
            "info",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the watchdog fired (action poweroff)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(o.stdout, b"wd\n");
}

#[test]
fn inject_nmi_reaches_the_guest() {
    if !kvm("watchdog_nmi") {
        return;
    }
    // The guest has no IDT: the NMI ends in a triple fault, which the
    // default --reboot exit turns into the VMM's exit.
    let dir = TempDir::new("wdt-nmi");
    let k = dir.file("wd.elf", &test_guests::watchdog("wd\n", AT_ONCE));
    let o = run_kernel(
        &k,
        &[
            "--device",
            "ib700",
            "--action",
            "watchdog=inject-nmi",
            "--log-level",
            "info",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("guest reset (triple fault"),
        "{}",
        stderr(&o)
    );
    assert_eq!(o.stdout, b"wd\n");
}

#[test]
fn without_the_device_the_guest_arms_nothing() {
    if !kvm("watchdog_absent") {
        return;
    }
    let dir = TempDir::new("wdt-absent");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(
        &dir,
        &test_guests::watchdog("wd\n", AT_ONCE),
        &["--serial", &serial, "--action", "watchdog=poweroff"],
    );
    let mut c = Client::connect(&sock);
    wait_for_output(&log, b"wd\n");
    // The guest's write went to ports with no device; it halts, running.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.status()["status"], "running");
    assert!(c.events.iter().all(|e| e["event"] != "WATCHDOG"));
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}
