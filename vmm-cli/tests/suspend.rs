//! ACPI S3 end to end on this host's `/dev/kvm` (PVM included), with a
//! hand-assembled guest (`test_guests::suspend_to_ram`): the guest writes a
//! real-mode waking vector into the FACS and suspends through PM1a control;
//! QMP sees `suspended` and `SUSPEND`; `system_wakeup` and the power button
//! wake it (`WAKEUP`), and its code at the waking vector runs and reports
//! what PM1_STS said on the serial port.

mod common;

use std::time::Duration;

use common::qmp_client::{quit, spawn, Client};
use common::*;
use serde_json::json;
use vmm_pc::test_guests;

const NOT_SUSPENDED: &str = "Unable to wake up: guest is not in suspended state";

#[test]
fn suspend_to_ram_and_wake_by_qmp_and_the_power_button() {
    if !kvm("suspend_wakeup") {
        return;
    }
    let dir = TempDir::new("s3");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::suspend_to_ram(true, false),
        // Paused until the client is there for the events.
        &["--paused", "--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    assert_eq!(
        c.execute("query-current-machine")["return"],
        json!({"wakeup-suspend-support": true})
    );
    // The guest suspends: SUSPEND, no data; `suspended`, not running.
    let suspend = c.event("SUSPEND");
    assert!(suspend.get("data").is_none(), "{suspend}");
    assert_eq!(wait_for_output(&log, 11), b"suspending\n");
    assert_eq!(
        c.status(),
        json!({"running": false, "singlestep": false, "status": "suspended"})
    );
    // stop and cont leave a suspended guest asleep.
    assert_eq!(c.execute("stop"), json!({"return": {}}));
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    assert_eq!(c.status()["status"], "suspended");
    // (Snapshots and migrations of a suspended guest: suspend_migration.rs.)
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read(&log).unwrap(), b"suspending\n", "nothing ran");

    // system_wakeup: WAKEUP, the code at the waking vector runs and sees
    // WAK_STS without PWRBTN_STS ("W"), then suspends again.
    assert_eq!(c.execute("system_wakeup"), json!({"return": {}}));
    let wakeup = c.event("WAKEUP");
    assert!(wakeup.get("data").is_none(), "{wakeup}");
    assert_eq!(wait_for_output(&log, 12), b"suspending\nW");
    c.event("SUSPEND");
    assert_eq!(c.status()["status"], "suspended");

    // The power button wakes it with PWRBTN_STS ("P"); it then halts.
    assert_eq!(c.execute("system_powerdown"), json!({"return": {}}));
    c.event("POWERDOWN");
    c.event("WAKEUP");
    assert_eq!(wait_for_output(&log, 13), b"suspending\nWP");
    assert_eq!(c.status()["status"], "running");

    // Not suspended: QEMU's refusal, over QMP and the human monitor.
    let r = c.execute("system_wakeup");
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(r["error"]["desc"], NOT_SUSPENDED);
    let r = c.execute_with(
        "human-monitor-command",
        json!({"command-line": "system_wakeup"}),
    );
    assert!(r["return"].as_str().unwrap().contains(NOT_SUSPENDED), "{r}");
    assert!(
        !c.events.iter().any(|e| e["event"] == "RESET"),
        "{:?}",
        c.events
    );
    quit(&mut c, child);
}

#[test]
fn waking_without_a_vector_resets_the_machine() {
    if !kvm("suspend_no_vector") {
        return;
    }
    let dir = TempDir::new("s3-novector");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::suspend_to_ram(false, false),
        // Paused until the client is there for the events.
        &["--paused", "--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("SUSPEND");
    assert_eq!(c.status()["status"], "suspended");
    // No waking vector: a full reset, the guest boots again and suspends.
    assert_eq!(c.execute("system_wakeup"), json!({"return": {}}));
    c.event("WAKEUP");
    let reset = c.event("RESET");
    assert_eq!(reset["data"]["guest"], true);
    assert_eq!(wait_for_output(&log, 22), b"suspending\n".repeat(2));
    c.event("SUSPEND");
    assert_eq!(c.status()["status"], "suspended");
    // system_reset of a suspended guest boots it again at once.
    assert_eq!(c.execute("system_reset"), json!({"return": {}}));
    c.event("RESET");
    assert_eq!(wait_for_output(&log, 33), b"suspending\n".repeat(3));
    c.event("SUSPEND");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_rtc_alarm_wakes_the_guest_when_it_enabled_rtc_en() {
    if !kvm("suspend_rtc") {
        return;
    }
    let dir = TempDir::new("s3-rtc");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::suspend_to_ram(true, true),
        &["--paused", "--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    // The alarm fires every second: two wake-ups with RTC_STS, no command.
    for _ in 0..2 {
        c.event("SUSPEND");
        c.event("WAKEUP");
    }
    assert_eq!(wait_for_output(&log, 13), b"suspending\nRR");
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The benchmark's guest (`test_guests::suspend_cycles`) finds our FACS as
/// a firmware-less kernel would, through the RSDP, the XSDT and the FADT,
/// and its waking vector is where it wakes: `z` (suspending), then `wz`
/// for each `system_wakeup`, never `!` (no FACS found).
#[test]
fn the_benchmark_guest_finds_the_facs_through_the_acpi_tables() {
    if !kvm("suspend_cycles") {
        return;
    }
    let dir = TempDir::new("s3-cycles");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::suspend_cycles(),
        &["--paused", "--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("SUSPEND");
    assert_eq!(wait_for_output(&log, 1), b"z");
    for n in 1..=3 {
        assert_eq!(c.execute("system_wakeup"), json!({"return": {}}));
        c.event("WAKEUP");
        c.event("SUSPEND");
        assert_eq!(wait_for_output(&log, 1 + 2 * n), &b"zwzwzwz"[..1 + 2 * n]);
    }
    assert_eq!(c.status()["status"], "suspended");
    quit(&mut c, child);
}
