//! The `bench-floor` binary on a real `/dev/kvm`: it boots the hand-made
//! PVH guests, copies their COM1 output to stdout and exits 0 when they
//! write port 0xf4 or 0x64. Without a usable `/dev/kvm` these print SKIP,
//! unless `VMM_REQUIRE_KVM=1` (set by `cargo xtask test`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use vmm_pc::test_guests::{hello_exit, hello_reset};

fn run(name: &str, image: &[u8]) -> Output {
    let path: PathBuf =
        std::env::temp_dir().join(format!("bench-floor-{name}-{}.elf", std::process::id()));
    std::fs::write(&path, image).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bench-floor"))
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn hello_exit_prints_and_exits_on_port_0xf4() {
    if !vmm_core::kvm::usable_for_tests("hello_exit_prints_and_exits_on_port_0xf4") {
        return;
    }
    let out = run("exit", &hello_exit("from the floor\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"from the floor\n");
}

#[test]
fn hello_reset_exits_on_the_i8042_port() {
    if !vmm_core::kvm::usable_for_tests("hello_reset_exits_on_the_i8042_port") {
        return;
    }
    let out = run("reset", &hello_reset("reset\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"reset\n");
}

#[test]
fn a_missing_file_fails_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench-floor"))
        .arg("/nonexistent/guest.elf")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/guest.elf"));
}
