//! The `vmm` binary booting hand-assembled PVH guests on the host's
//! `/dev/kvm` (PVM included): serial output, exit paths and statuses.

mod common;

use std::time::Duration;

use common::*;
use vmm_pc::test_guests;

#[test]
fn hello_on_stdout_and_i8042_reset_ends_with_0() {
    if !kvm("hello_on_stdout") {
        return;
    }
    let dir = TempDir::new("hello");
    let k = dir.file("hello.elf", &test_guests::hello_reset("Hello, PVH\n"));
    let o = run_kernel(&k, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello, PVH\n");
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn serial_to_a_file() {
    if !kvm("serial_to_a_file") {
        return;
    }
    let dir = TempDir::new("file");
    let k = dir.file("hello.elf", &test_guests::hello_reset("to the file\n"));
    let log = dir.0.join("console.log");
    let arg = format!("file:{}", log.display());
    let o = run_kernel(&k, &["--serial", &arg]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to the file\n");
}

#[test]
fn serial_none_discards() {
    if !kvm("serial_none_discards") {
        return;
    }
    let dir = TempDir::new("none");
    let k = dir.file(
        "hello.elf",
        &test_guests::hello_reset("nobody reads this\n"),
    );
    let o = run_kernel(&k, &["--serial", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn acpi_poweroff_ends_with_0() {
    if !kvm("acpi_poweroff") {
        return;
    }
    let dir = TempDir::new("poweroff");
    let k = dir.file("off.elf", &test_guests::hello_poweroff("bye\n"));
    let o = run_kernel(&k, &["--log-level", "info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bye\n");
    assert!(stderr(&o).contains("guest powered off"), "{}", stderr(&o));
}

#[test]
fn two_vcpus_both_run() {
    if !kvm("two_vcpus_both_run") {
        return;
    }
    let dir = TempDir::new("smp");
    let k = dir.file("smp.elf", &test_guests::two_cpus());
    let o = run_kernel(&k, &["--cpus", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // "A" from CPU 1 (started by INIT/SIPI), then "B" from CPU 0 once it
    // saw CPU 1's flag; "-" would mean CPU 1 never ran.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "AB");
}

#[test]
fn one_vcpu_gives_no_ap() {
    if !kvm("one_vcpu_gives_no_ap") {
        return;
    }
    let dir = TempDir::new("up");
    let k = dir.file("smp.elf", &test_guests::two_cpus());
    let o = run_kernel(&k, &["--cpus", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "-");
}

#[test]
fn unknown_ports_read_all_ones() {
    if !kvm("unknown_ports_read_all_ones") {
        return;
    }
    let dir = TempDir::new("port");
    for port in [0x99u16, 0x2f8, 0xcf8, 0xffff] {
        let k = dir.file("port.elf", &test_guests::read_port(port));
        let o = run_kernel(&k, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(o.stdout, [0xff], "port {port:#x}");
    }
}

#[test]
fn sigterm_stops_a_spinning_guest_cleanly() {
    if !kvm("sigterm_stops") {
        return;
    }
    let dir = TempDir::new("sigterm");
    let k = dir.file("spin.elf", &test_guests::hello_spin("spinning\n"));
    let mut child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--log-level", "info"])
        .spawn()
        .unwrap();
    // Wait until the guest runs (its line is out), then terminate. The
    // read happens on a thread so that a broken VMM fails the test instead
    // of hanging it.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = [0u8; 9];
        let _ = tx.send(std::io::Read::read_exact(&mut stdout, &mut line).map(|()| line));
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(Ok(line)) => assert_eq!(&line, b"spinning\n"),
        other => {
            let _ = child.kill();
            panic!("the guest did not print its line: {other:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("terminating on signal SIGTERM"),
        "{}",
        stderr(&o)
    );
}
