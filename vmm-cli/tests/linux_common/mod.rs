//! Helpers of the Linux tests (`linux.rs`, `linux_disks.rs`): the guest
//! files, one nested boot at a time, the test initramfs, the retry of a
//! nested run.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Mutex;

use vmm_testbed::{
    initramfs::busybox_initramfs, run_linux, GuestFiles, HostKvm, Job, Outcome, TestbedError,
};

use crate::common;

pub fn guest(test: &str) -> Option<GuestFiles> {
    if HostKvm::detect() == HostKvm::Missing {
        assert!(
            !vmm_core::kvm::required_for_tests(),
            "{test}: VMM_REQUIRE_KVM=1 but there is no /dev/kvm"
        );
        eprintln!("SKIP {test}: no /dev/kvm");
        return None;
    }
    match GuestFiles::default_location() {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(
                !vmm_core::kvm::required_for_tests(),
                "{test}: VMM_REQUIRE_KVM=1 but {e}"
            );
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}

/// How a panic of [`run`] starts when L1 itself failed (QEMU/TCG ended or
/// reset L1 before the job did, or L1's console stopped): the test bed's
/// fault, not the VMM's, and the only failure [`nested_retry`] runs again.
pub const L1_FAULT: &str = "L1 FAULT: ";

/// Runs a Linux test's `body`. In the test bed (nested under TCG) a body
/// whose L1 failed ([`L1_FAULT`]: L1 ended or went silent, which `cargo
/// xtask soak` counts apart) runs once more, after the fault is printed in
/// full. Anything else fails the test at once: a guest that hangs, resets
/// or misbehaves under our VMM is a failure even nested (it used to be
/// retried, which hid a VMM fault: see docs/nested/). On hardware KVM
/// there is no second run.
pub fn nested_retry(test: &str, body: impl Fn()) {
    if HostKvm::detect() != HostKvm::Pvm {
        return body();
    }
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body));
    if let Err(panic) = first {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        if !why.starts_with(L1_FAULT) {
            std::panic::resume_unwind(panic);
        }
        eprintln!(
            "{test}: L1 FAULT, RETRYING ONCE (the test bed's L1 failed, not the VMM):\n{why}\n\
             --- second run ---"
        );
        body();
    }
}

/// Runs `job` where Linux boots (see the module docs), one nested boot at
/// a time: each L1 already keeps both host cores busy under TCG, and
/// starving it only makes runs slower and flakier. A failure panics (with
/// [`L1_FAULT`] first when L1 itself failed), and [`nested_retry`] decides
/// whether the test runs again.
pub fn run(test: &str, g: &GuestFiles, job: &Job) -> Outcome {
    let vmm = Path::new(env!("CARGO_BIN_EXE_vmm"));
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run_linux(g, vmm, job).unwrap_or_else(|e| match e {
        TestbedError::L1Ended { .. } | TestbedError::Silent { .. } => {
            panic!("{L1_FAULT}{test}: {e}")
        }
        e => panic!("{test}: {e}"),
    })
}

/// A test initramfs: busybox, `/init` = the usual mounts then `script`,
/// the kernel's `modules` as `/NAME.ko`, and `/clockprobe` if asked for.
pub fn test_initrd(
    g: &GuestFiles,
    dir: &common::TempDir,
    script: &str,
    modules: &[&str],
    with_probe: bool,
) -> std::path::PathBuf {
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         {script}\n"
    );
    let mut extra: Vec<(String, Vec<u8>, u32)> = modules
        .iter()
        .map(|m| {
            (
                format!("{m}.ko"),
                std::fs::read(g.module(m)).unwrap(),
                0o644,
            )
        })
        .collect();
    if with_probe {
        let probe = std::fs::read(build_static(dir, "clockprobe")).unwrap();
        extra.push(("clockprobe".to_owned(), probe, 0o755));
    }
    let busybox = std::fs::read(&g.busybox).unwrap();
    dir.file(
        "initrd.cpio",
        &busybox_initramfs(&busybox, &init, &extra).unwrap(),
    )
}

/// Builds `tests/guest/NAME.c` static (busybox's initramfs and L1 have no
/// C library) into `dir`.
pub fn build_static(dir: &common::TempDir, name: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/guest/{name}.c"));
    let out = dir.0.join(name);
    let status = std::process::Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cannot run cc (gcc and libc6-dev build the guest's probes)");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}
