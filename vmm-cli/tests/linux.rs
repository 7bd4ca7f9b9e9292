//! The Debian cloud kernel boots under our VMM, from bzImage and from ELF
//! vmlinux, on 1 and 2 vCPUs with 512 MiB; a test initramfs reports from
//! inside the guest the CPU count, MemTotal and the kernel's line saying
//! ttyS0 is a 16550A, then reboots (or powers off); the VMM must end with 0.
//!
//! Linux needs a real KVM: these run directly on hardware KVM, and in the
//! test bed (nested under QEMU/TCG, see vmm-testbed) where /dev/kvm is PVM.
//! They never skip silently: without KVM or the guest files they print
//! SKIP, and with VMM_REQUIRE_KVM=1 (set by `cargo xtask test` wherever
//! /dev/kvm exists) that is a failure.

use std::path::Path;
use std::sync::Mutex;

use vmm_testbed::{initramfs::busybox_initramfs, run_linux, GuestFiles, HostKvm, Job};

mod common;

fn guest(test: &str) -> Option<GuestFiles> {
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

/// The test guest's `/init`: report, then `end` (reboot -f or poweroff -f).
fn report_init(end: &str) -> String {
    format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo \"@@CPUS $(nproc)\"\n\
         echo \"@@$(grep MemTotal /proc/meminfo)\"\n\
         echo \"@@SERIAL $(dmesg | grep 'ttyS0 at')\"\n\
         {end} -f\n"
    )
}

struct Report {
    cpus: u32,
    mem_kib: u64,
    serial: String,
}

fn parse_report(console: &str) -> Option<Report> {
    let field = |tag: &str| {
        console
            .lines()
            .find_map(|l| l.trim().strip_prefix(tag).map(|v| v.trim().to_owned()))
    };
    Some(Report {
        cpus: field("@@CPUS")?.parse().ok()?,
        mem_kib: field("@@MemTotal:")?
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?,
        serial: field("@@SERIAL")?,
    })
}

fn boot(test: &str, kernel: fn(&GuestFiles) -> &Path, cpus: u32, end: &str) {
    let Some(g) = guest(test) else { return };
    let dir = common::TempDir::new(test);
    let busybox = std::fs::read(&g.busybox).unwrap();
    let initrd = dir.file(
        "report.cpio",
        &busybox_initramfs(&busybox, &report_init(end), &[]).unwrap(),
    );
    let cpus_arg = cpus.to_string();
    let job = Job::new([
        "--kernel",
        "kernel",
        "--initrd",
        "initrd",
        "--memory",
        "512M",
        "--cpus",
        &cpus_arg,
        "--log-level",
        "info",
    ])
    .file("kernel", kernel(&g))
    .file("initrd", &initrd)
    .timeout(std::time::Duration::from_secs(180));
    let vmm = Path::new(env!("CARGO_BIN_EXE_vmm"));
    // One nested boot at a time: each L1 already keeps both host cores
    // busy under TCG, and starving it only makes runs slower and flakier.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = match run_linux(&g, vmm, &job) {
        // A nested run under TCG whose L1 gives out (no progress, or QEMU
        // ending without the job's end marker) is retried once, loudly; a
        // second failure fails the test.
        Err(e) if e.is_l1_failure() => {
            let console = e.console().unwrap_or_default();
            let tail: String = console
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            eprintln!(
                "{test}: RETRY: the first run failed ({first}); its console ended with:\n{tail}"
            );
            run_linux(&g, vmm, &job)
        }
        other => other,
    }
    .unwrap_or_else(|e| panic!("{test}: {e}"));
    eprintln!(
        "{test}: L1 ready after {:?}, whole run {:?}",
        out.l1_boot, out.total
    );
    let report = parse_report(&out.console).unwrap_or_else(|| {
        panic!(
            "{test}: no report from the guest (vmm status {:?}).\nconsole:\n{}\nvmm stderr:\n{}\nL1 console:\n{}",
            out.status, out.console, out.stderr, out.l1_console
        )
    });
    assert_eq!(report.cpus, cpus, "{test}: CPU count");
    // MemTotal is RAM less what the kernel keeps for itself.
    assert!(
        (400 * 1024..=512 * 1024).contains(&report.mem_kib),
        "{test}: MemTotal {} kB for 512 MiB",
        report.mem_kib
    );
    assert!(
        report.serial.contains("ttyS0 at I/O 0x3f8 (irq = 4") && report.serial.contains("16550A"),
        "{test}: serial line {:?}",
        report.serial
    );
    assert_eq!(out.status, Some(0), "{test}: vmm stderr:\n{}", out.stderr);
    let why = if end == "reboot" {
        "guest reset"
    } else {
        "guest powered off"
    };
    assert!(
        out.stderr.contains(why),
        "{test}: vmm stderr:\n{}",
        out.stderr
    );
}

#[test]
fn bzimage_1_cpu_reboot() {
    boot("bzimage_1_cpu", |g| &g.bzimage, 1, "reboot");
}

#[test]
fn bzimage_2_cpus_reboot() {
    boot("bzimage_2_cpus", |g| &g.bzimage, 2, "reboot");
}

#[test]
fn vmlinux_1_cpu_reboot() {
    boot("vmlinux_1_cpu", |g| &g.vmlinux, 1, "reboot");
}

#[test]
fn vmlinux_2_cpus_reboot() {
    boot("vmlinux_2_cpus", |g| &g.vmlinux, 2, "reboot");
}

#[test]
fn bzimage_poweroff() {
    boot("bzimage_poweroff", |g| &g.bzimage, 1, "poweroff");
}
