//! The monitor's `info registers` and `info lapic` through QMP's
//! `human-monitor-command`, on a two-vCPU hand-assembled guest on this
//! host's `/dev/kvm` (PVM included): the boot CPU spins, CPU 1 is halted
//! in its real-mode trampoline. Read while running and while paused.

mod common;

use std::time::{Duration, Instant};

use common::qmp_client::{quit, spawn, Client};
use common::*;
use serde_json::{json, Value};
use vmm_pc::test_guests;

/// Runs a monitor line; the reply (events that come first are kept).
fn hmp_with(c: &mut Client, line: &str, cpu_index: Option<u32>) -> Value {
    let mut arguments = json!({ "command-line": line });
    if let Some(i) = cpu_index {
        arguments["cpu-index"] = json!(i);
    }
    c.execute_with("human-monitor-command", arguments)
}

/// A monitor line's output text.
fn hmp(c: &mut Client, line: &str) -> String {
    let v = hmp_with(c, line, None);
    v["return"]
        .as_str()
        .unwrap_or_else(|| panic!("{line}: {v}"))
        .to_owned()
}

/// The `CPU#N` sections of an `info registers` output, by vCPU index.
fn sections(text: &str) -> Vec<(u32, String)> {
    assert!(text.starts_with("\r\nCPU#"), "{text}");
    text.split("\r\nCPU#")
        .skip(1)
        .map(|s| {
            let (index, body) = s.split_once("\r\n").expect("a CPU# line");
            (index.parse().expect("a CPU number"), body.to_owned())
        })
        .collect()
}

/// The hex value of `name=` in `section` (`RIP`, `EFER`, ...).
fn field(section: &str, name: &str) -> u64 {
    let at = section
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {section}"));
    let hex: String = section[at + name.len() + 1..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// Checks both vCPUs' registers: the boot CPU in the guest's 32-bit code,
/// CPU 1 halted in its trampoline.
fn check_both(text: &str) {
    let cpus = sections(text);
    assert_eq!(
        cpus.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1],
        "{text}"
    );
    let bsp = &cpus[0].1;
    let rip = field(bsp, "RIP");
    assert!(
        (test_guests::LOAD_ADDR..test_guests::LOAD_ADDR + 0x100).contains(&rip),
        "boot CPU's RIP {rip:#x} outside the guest's code: {text}"
    );
    for line in [
        "RAX=",
        "R8 =",
        "RFL=",
        " A20=1 SMM=0 HLT=0",
        "CS =",
        "LDT=",
        "TR =",
        "GDT=",
        "IDT=",
        "CR0=",
        "DR0=",
        "DR6=",
        "EFER=",
        "MP_STATE=runnable",
    ] {
        assert!(bsp.contains(line), "{line} in {bsp}");
    }
    // PVH entry: protected mode, flat 32-bit code, no long mode.
    assert_eq!(field(bsp, "CR0") & 1, 1, "{bsp}");
    assert_eq!(field(bsp, "EFER") & (1 << 10), 0, "{bsp}");
    assert!(bsp.contains(" CS32 ["), "{bsp}");
    let ap = &cpus[1].1;
    assert!(ap.contains(" HLT=1\r\n"), "{ap}");
    assert!(ap.contains("\r\nMP_STATE=halted "), "{ap}");
    assert!(
        ap.contains("\r\nCS =1000 0000000000010000 0000ffff "),
        "real mode at the SIPI vector: {ap}"
    );
    assert!(
        field(ap, "RIP") <= test_guests::TWO_CPUS_AP_LEN,
        "CPU 1's RIP outside its trampoline: {ap}"
    );
    assert!(text.ends_with("\r\n"), "{text}");
}

fn check_lapics(c: &mut Client) {
    let bsp = hmp(c, "info lapic");
    assert!(
        bsp.starts_with("dumping local APIC state for CPU 0"),
        "{bsp}"
    );
    for line in [
        "\r\nAPIC ID 0 version 0x",
        " base 0xfee00000 enabled BSP\r\n",
        "\r\nLVT0\t 0x",
        "\r\nLVT1\t 0x",
        "\r\nLVTERR\t 0x",
        "\r\nLVTT\t 0x",
        "\r\nTimer\t DCR=",
        // The guest software-enabled its APIC (SVR 0x1ff) to wake CPU 1.
        "\r\nSPIV\t 0x000001ff APIC enabled",
        // Its last IPI: the STARTUP with vector 0x10, to APIC ID 1.
        "\r\nICR\t 0x00004610 physical ",
        "\r\nICR2\t 0x01000000 cpu 1\r\n",
        "\r\nISR\t",
        "\r\nIRR\t",
        "\r\nTMR\t",
        " PPR 0x",
    ] {
        assert!(bsp.contains(line), "{line:?} in {bsp}");
    }
    let ap = hmp(c, "info lapic 1");
    assert!(ap.contains("\r\nAPIC ID 1 version 0x"), "{ap}");
    assert!(!ap.contains(" BSP\r\n"), "{ap}");
    assert_eq!(ap, hmp(c, "info lapic 0x1"));
    let none = hmp(c, "info lapic 99");
    assert!(none.starts_with("Error: no CPU with APIC ID 99"), "{none}");
}

#[test]
fn info_registers_and_lapic_show_each_vcpu() {
    if !kvm("hmp_info_registers") {
        return;
    }
    let dir = TempDir::new("hmp-regs");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::two_cpus_spin(),
        &["--cpus", "2", "--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    // Both vCPUs have started: CPU 1 printed "A", the boot CPU "B".
    let start = Instant::now();
    while std::fs::read(&log).unwrap_or_default() != b"AB" {
        assert!(
            start.elapsed() < RUN_LIMIT,
            "serial: {:?}",
            String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Running.
    assert_eq!(c.status()["status"], "running");
    let all = hmp(&mut c, "info registers -a");
    check_both(&all);
    eprintln!("info registers -a (running):{all}");
    let current = hmp(&mut c, "info registers");
    assert_eq!(sections(&current).len(), 1, "{current}");
    assert!(current.starts_with("\r\nCPU#0\r\nRAX="), "{current}");
    let one = hmp(&mut c, "info registers 1");
    assert!(one.starts_with("\r\nCPU#1\r\n"), "{one}");
    assert!(one.contains(" HLT=1\r\n"), "{one}");
    // QMP's cpu-index makes CPU 1 the current one for the line.
    let via_index = hmp_with(&mut c, "info registers", Some(1));
    assert!(
        via_index["return"]
            .as_str()
            .unwrap()
            .starts_with("\r\nCPU#1\r\n"),
        "{via_index}"
    );
    let lapic1 = hmp_with(&mut c, "info lapic", Some(1));
    assert!(
        lapic1["return"]
            .as_str()
            .unwrap()
            .contains("\r\nAPIC ID 1 "),
        "{lapic1}"
    );
    assert_eq!(
        hmp_with(&mut c, "info registers", Some(u32::MAX))["return"]
            .as_str()
            .unwrap()
            .split(" (")
            .next(),
        Some("Error: CPU#4294967295 not available")
    );
    let bad = hmp(&mut c, "info registers 5");
    assert!(bad.starts_with("Error: CPU#5 not available"), "{bad}");
    check_lapics(&mut c);
    let lapic = hmp(&mut c, "info lapic");
    eprintln!("info lapic (running):\r\n{lapic}");
    // Still running, and still answering.
    assert_eq!(c.status()["status"], "running");

    // Paused: the same picture, and it holds still.
    assert_eq!(c.execute("stop"), json!({"return": {}}));
    c.event("STOP");
    let paused = hmp(&mut c, "info registers -a");
    check_both(&paused);
    assert_eq!(
        paused,
        hmp(&mut c, "info registers -a"),
        "paused vCPUs move"
    );
    check_lapics(&mut c);
    assert_eq!(c.status()["status"], "paused");
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("RESUME");
    check_both(&hmp(&mut c, "info registers -a"));

    quit(&mut c, child);
}
