//! The test bed's own view of a guest that does not finish: L1 samples
//! its KVM's exits of the guest's vCPUs (`vmm_testbed::l2_exits`), so that
//! a failed nested test says whether a vCPU was at L1's own VMRUN code
//! (TCG's SVM fault) or not, and a guest that resets by a triple fault
//! leaves L1's record of its last exits. Nested only: on hardware KVM
//! there is no L1.

use std::time::Duration;

use vmm_testbed::l2_exits;

mod common;
mod linux_common;

use linux_common::{debian_job, guest, nested_only, nested_retry, run, test_initrd};
use vmm_testbed::{GuestFiles, Job};

/// A small guest (256 MiB) whose kernel prints only warnings, with
/// `append` as its command line.
fn quiet_job(g: &GuestFiles, initrd: &std::path::Path, append: &str) -> Job {
    debian_job(g, initrd, ["--memory", "256M", "--append", append])
}

/// A guest that spins in user space once booted, and a companion that
/// ends when it says so: the VMM is still running 5 s later, so L1
/// samples its vCPU's exits, then stops it. The companion also prints
/// L1's soft-lockup settings (`vmm_testbed::qemu::L1_CMDLINE`: a report
/// after 50 s, then a panic that prints L1's whole kernel log) and counts
/// the other VMs with a vCPU in L1 (the pin, `vmm_testbed::l1_pin`).
#[test]
fn a_spinning_guest_is_sampled_from_l1() {
    let test = "a_spinning_guest_is_sampled_from_l1";
    if !nested_only(test, "L1's KVM trace events; there is no L1 on this host") {
        return;
    }
    nested_retry(test, || {
        let Some(g) = guest(test) else {
            return;
        };
        let dir = common::TempDir::new(test);
        let initrd = test_initrd(&g, &dir, "echo @@SPINNING\nwhile :; do :; done", &[], false);
        let job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "256M",
                "--serial",
                "file:console.log",
                "--append",
                "console=ttyS0 quiet panic=-1",
            ],
        )
        .companion(
            "i=0; while ! grep -q @@SPINNING console.log 2>/dev/null && [ $i -lt 1200 ]; \
             do sleep 0.1; i=$((i+1)); done; grep -c @@SPINNING console.log; \
             echo @@L1-LOCKUP-SETTINGS $(cat /proc/sys/kernel/watchdog_thresh \
             /proc/sys/kernel/softlockup_panic /proc/sys/kernel/panic_print); \
             n=0; for p in /proc/[0-9]*; do [ \"${p#/proc/}\" = \"$VMM_PID\" ] && continue; \
             ls -l $p/fd 2>/dev/null | grep -q kvm-vcpu && n=$((n+1)); done; \
             echo @@L1-PIN $n $(cat /proc/$VMM_PID/comm)",
        )
        .timeout(Duration::from_secs(240));
        let out = run(test, &g, &job);
        let l1 = &out.l1_console;
        let why = || format!("{test}: L1's console:\n{l1}");
        // The companion's count (L1's kernel may print among the lines).
        assert!(
            out.console.lines().any(|l| l.trim() == "1"),
            "the guest never spun:\n{}",
            why()
        );
        assert!(
            out.console
                .lines()
                .any(|l| l.trim() == "@@L1-LOCKUP-SETTINGS 25 1 97"),
            "L1's soft-lockup settings:\n{}",
            out.console
        );
        // L1 keeps one other VM with a vCPU, paused, for the session
        // (vmm_testbed::l1_pin), and the companion finds the job's VMM in
        // $VMM_PID.
        let pins = usize::from(vmm_testbed::l1_pin::wanted());
        assert!(
            out.console
                .lines()
                .any(|l| l.trim() == format!("@@L1-PIN {pins} vmm")),
            "L1's pin:\n{}",
            out.console
        );
        // A one-CPU L1 (this guest has one vCPU) ticks periodically, a
        // two-CPU one does not (vmm_testbed::qemu::PERIODIC_TICK).
        let tick = if vmm_testbed::qemu::l1_cpus(Some(1)) == 1 {
            " tick=periodic"
        } else {
            " tick=oneshot"
        };
        let clock = l1
            .lines()
            .find(|l| l.starts_with("@@TESTBED-L1-CLOCK "))
            .unwrap_or_else(|| panic!("no clock line:\n{}", why()));
        eprintln!("{test}: {clock}");
        assert!(clock.trim_end().ends_with(tick), "{clock}");
        let svm = l2_exits::l1_svm_vcpu_run(l1).unwrap_or_else(|| panic!("no symbol:\n{}", why()));
        assert!(svm >= 0xffff_8000_0000_0000, "{svm:#x}\n{}", why());
        let samples = l2_exits::samples(l1);
        assert_eq!(samples.len(), 1, "{}", why());
        let vcpu0 = samples[0]
            .iter()
            .find(|v| v.vcpu == 0)
            .unwrap_or_else(|| panic!("no exits of vCPU 0:\n{}", why()));
        assert!(vcpu0.exits > 0 && vcpu0.rip != 0, "{vcpu0:?}");
        eprintln!(
            "{test}: L1 sampled vCPU 0: {} exits in {} s, the last `{}` at {:#x}; \
             L1's __svm_vcpu_run at {svm:#x}",
            vcpu0.exits,
            l2_exits::SAMPLE_SECONDS,
            vcpu0.reason,
            vcpu0.rip
        );
        // A guest spinning in its own code is not TCG's fault.
        assert_eq!(l2_exits::named_fault(l1), None, "{}", why());
        assert!(
            !out.console.contains(l2_exits::EXITS_MARKER),
            "samples are not the VMM's output"
        );
    });
}

/// A job that reaches its time limit (a guest spinning for ever) ends
/// with L1's own CPUs' registers, asked of L1's QEMU over its QMP socket
/// (`vmm_testbed::l1_monitor`): what a silent, hung L1 leaves to go by.
#[test]
fn a_job_at_its_time_limit_reports_l1s_cpus() {
    let test = "a_job_at_its_time_limit_reports_l1s_cpus";
    if !nested_only(test, "L1's QEMU; there is no L1 on this host") {
        return;
    }
    nested_retry(test, || {
        let Some(g) = guest(test) else {
            return;
        };
        let dir = common::TempDir::new(test);
        let initrd = test_initrd(&g, &dir, "while :; do :; done", &[], false);
        let job =
            quiet_job(&g, &initrd, "console=ttyS0 quiet panic=-1").timeout(Duration::from_secs(40));
        let vmm = std::path::Path::new(env!("CARGO_BIN_EXE_vmm"));
        match vmm_testbed::run_linux(&g, vmm, &job) {
            Err(vmm_testbed::TestbedError::Timeout { console, .. }) => {
                let line = console
                    .lines()
                    .find(|l| l.starts_with(vmm_testbed::l1_monitor::CPUS_MARKER))
                    .unwrap_or_else(|| panic!("{test}: no L1 CPUs line:\n{console}"));
                eprintln!("{test}: {line}");
                // One entry per L1 CPU, each with a hexadecimal RIP.
                let cpus: Vec<&str> = line.split_whitespace().skip(1).collect();
                assert_eq!(
                    cpus.len() as u32,
                    vmm_testbed::qemu::l1_cpus(None),
                    "{line}"
                );
                for c in cpus {
                    let rip = c.split_once('=').map(|(_, v)| &v[..16.min(v.len())]);
                    assert!(
                        rip.is_some_and(|r| u64::from_str_radix(r, 16).is_ok()),
                        "{line}"
                    );
                }
                // The key press: L1 was not asleep (its CPU runs the
                // guest's loop), so nothing more came.
                let poke = console
                    .lines()
                    .find(|l| l.starts_with(vmm_testbed::l1_monitor::POKE_MARKER))
                    .unwrap_or_else(|| panic!("{test}: no key press line:\n{console}"));
                eprintln!("{test}: {poke}");
                assert!(poke.contains("changed nothing"), "{poke}");
                // Then the NMI: L1 panics on it and prints its CPUs'
                // backtraces, the vCPU thread's among them.
                let nmi = console
                    .lines()
                    .find(|l| l.starts_with(vmm_testbed::l1_monitor::NMI_MARKER))
                    .unwrap_or_else(|| panic!("{test}: no NMI line:\n{console}"));
                assert!(vmm_testbed::l1_monitor::nmi_sent(nmi), "{nmi}\n{console}");
                assert!(
                    console.contains("Kernel panic - not syncing: NMI"),
                    "{test}: L1 did not panic on the NMI:\n{console}"
                );
                // Its summary at the end: each CPU, the VMM's threads.
                let summary: Vec<&str> = console
                    .lines()
                    .filter(|l| l.starts_with(vmm_testbed::l1_panic::PANIC_MARKER))
                    .collect();
                eprintln!("{test}: L1's panic:\n{}", summary.join("\n"));
                // The vCPU thread on an L1 CPU (its `KVM_RUN`). Where the
                // NMI lands in it varies, and the summary shows only the
                // innermost frame and four callers: entering the guest
                // (`kvm_arch_vcpu_ioctl_run` shown), decoding an instruction
                // to emulate, or a timer interrupt on top of
                // `kvm_vcpu_ioctl` (both seen in CI rehearsals), so the
                // thread on a CPU is what is asserted, not its frames.
                assert!(
                    summary
                        .iter()
                        .any(|l| l.contains(" cpu") && l.contains("`vcpu 0` at ")),
                    "{test}: no vCPU thread on an L1 CPU:\n{console}"
                );
                assert!(
                    summary.iter().any(|l| l.contains(" task vmm pid ")),
                    "{test}: no VMM main thread in L1's tasks:\n{console}"
                );
            }
            other => panic!("{test}: expected the time limit, got {other:?}"),
        }
    });
}

/// A guest that resets by a triple fault on purpose (`reboot=t`): L1 has
/// recorded its vCPU's exits from the start, the `shutdown` exit stopped
/// the record, and after the VMM's end L1 prints the vCPU's last exits up
/// to it (`@@TESTBED-L2-RESET`): in the guest's own code, so no TCG fault
/// is named. (A reset after exits at L1's VMRUN code would be.)
#[test]
fn a_guests_triple_fault_is_shown_from_l1() {
    let test = "a_guests_triple_fault_is_shown_from_l1";
    if !nested_only(test, "L1's KVM trace events; there is no L1 on this host") {
        return;
    }
    nested_retry(test, || {
        let Some(g) = guest(test) else {
            return;
        };
        let dir = common::TempDir::new(test);
        let initrd = test_initrd(&g, &dir, "echo @@RESETTING\nreboot -f", &[], false);
        let job = quiet_job(&g, &initrd, "console=ttyS0 quiet reboot=t panic=-1")
            .timeout(Duration::from_secs(180));
        let out = run(test, &g, &job);
        let l1 = &out.l1_console;
        let why = || format!("{test}: L1's console:\n{l1}\nVMM's stderr:\n{}", out.stderr);
        assert!(out.console.contains("@@RESETTING"), "{}", why());
        assert!(out.stderr.contains("triple fault on vCPU 0"), "{}", why());
        let resets = l2_exits::resets(l1);
        if !l2_exits::record_wanted() {
            assert!(resets.is_empty(), "{}", why());
            return;
        }
        assert_eq!(resets.len(), 1, "{}", why());
        let vcpu0 = resets[0]
            .iter()
            .find(|v| v.vcpu == 0)
            .unwrap_or_else(|| panic!("no exits of vCPU 0:\n{}", why()));
        let (reason, rip) = vcpu0.exits.last().expect("exits");
        eprintln!(
            "{test}: L1 recorded vCPU 0's last {} exits, the last `{reason}` at {rip:#x}",
            vcpu0.exits.len()
        );
        assert_eq!(reason, "shutdown", "{}", why());
        assert!(
            *rip >= 0xffff_ffff_8000_0000,
            "the guest's kernel: {rip:#x}"
        );
        assert_eq!(l2_exits::named_fault(l1), None, "{}", why());
    });
}
