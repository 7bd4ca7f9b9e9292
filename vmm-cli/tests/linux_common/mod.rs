//! Helpers of the Linux tests (`linux.rs`, `linux_disks.rs`): the guest
//! files, nested boots sharing the host's cores, the test initramfs, a job booting the
//! guest's bzImage with it, the retry of a nested run.

#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use vmm_testbed::{
    cores::Cores, initramfs::busybox_initramfs, l2_exits, retries, run_linux, GuestFiles, HostKvm,
    Job, Outcome, TestbedError,
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

/// The vmm binary's default kernel command line (`args::DEFAULT_APPEND`),
/// as a literal for `concat!`.
macro_rules! default_append {
    () => {
        "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp"
    };
}

/// The vmm binary's default kernel command line (`args::DEFAULT_APPEND`).
#[allow(dead_code)]
pub const APPEND: &str = default_append!();

/// The VMM's default kernel command line with `quiet` (the kernel prints
/// warnings and worse only), for a test that reads its guest's markers,
/// not the boot log: a verbose boot writes the log to COM1 at two port
/// exits per character, each an emulated VMRUN in the test bed's L1, and
/// with two vCPUs the other one spins on the console meanwhile; that is
/// where TCG's SVM fault has struck most (docs/nested/README.md). A quiet
/// nested boot also takes about half as long.
#[allow(dead_code)]
pub const QUIET_APPEND: &str = concat!(default_append!(), " quiet");

/// How a panic of [`run`] starts when L1 itself failed (QEMU/TCG ended or
/// reset L1 before the job did, or L1's console stopped).
pub use vmm_testbed::retries::L1_FAULT;

/// Runs a Linux test's `body`. In the test bed (nested under TCG) a body
/// that fails runs again only when the failure is named as the test bed's
/// own ([`retries::verdict`]), printed in full under a loud `NESTED FAILURE, RETRYING` line that
/// says which: L1's ([`L1_FAULT`]: L1 ended, went silent, stopped its
/// heartbeat, reported a CPU stuck, or ran no exit sample before the time
/// limit), or TCG's SVM fault (L1 sampled a guest vCPU exiting at L1's own
/// VMRUN code, or its record of a guest's triple fault has one there:
/// [`l2_exits`]). Three tries at most. A failure of the nested guest that
/// is not so named (a hang, a reset, a wrong answer) is not retried: it
/// fails the test at once, under a `NESTED FAILURE, NOT RETRIED` line with
/// what L1 saw of the guest's vCPUs, whatever caused it (issue 18: a retry
/// would hide a bug of ours as well as TCG's). On hardware KVM there is no
/// second run. Each retry is also recorded ([`retries`]) and `cargo xtask
/// test` lists them at its end, so that a retry that passed is seen too.
pub fn nested_retry(test: &str, body: impl Fn()) {
    if HostKvm::detect() != HostKvm::Pvm {
        return body();
    }
    for attempt in 1..=retries::MAX_TRIES {
        let start = std::time::Instant::now();
        let _ = l2_exits::take_last_run();
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body)) else {
            return;
        };
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        // What L1's KVM saw of the guest's vCPUs in the failed run, if it
        // was still running late (vmm_testbed::l2_exits).
        let last = l2_exits::take_last_run();
        let samples = if last.samples.is_empty() {
            String::new()
        } else {
            format!(
                "\nL1's samples of the guest's exits:\n{}",
                last.samples.join("\n")
            )
        };
        let fault = match retries::verdict(attempt, why, last.named.as_deref()) {
            retries::Verdict::Retry { fault } => fault,
            retries::Verdict::OutOfTries { .. } => std::panic::resume_unwind(panic),
            retries::Verdict::Unnamed => {
                eprintln!(
                    "{test}: NESTED FAILURE, NOT RETRIED (try {attempt}): the nested guest failed \
                     and no test-bed fault is named (no vCPU seen at L1's VMRUN code; \
                     docs/nested/ for TCG's SVM fault){samples}"
                );
                std::panic::resume_unwind(panic);
            }
        };
        let why = format!("{why}{samples}");
        eprintln!(
            "{test}: NESTED FAILURE, RETRYING (try {attempt} failed): {fault}:\n{why}\n--- try {} ---",
            attempt + 1
        );
        retries::record(test, start.elapsed(), &fault, &why);
    }
}

/// Whether `test` runs here: some run only nested, in L1 (`why` says
/// what they need of it); on any other host they say SKIP and why.
pub fn nested_only(test: &str, why: &str) -> bool {
    if HostKvm::detect() == HostKvm::Pvm {
        return true;
    }
    eprintln!("SKIP {test}: runs only nested ({why})");
    false
}

/// Runs `job` where Linux boots (see the module docs). Nested, a guest of
/// one vCPU gets an L1 of one CPU (unless the job or
/// `VMM_TESTBED_L1_CPUS` chose): TCG's SVM fault, which hangs or resets
/// nested guests now and then, was seen only with two L1 CPUs
/// (docs/nested/README.md), and such a run keeps one host core busy, so
/// two of them run side by side on a two-core host. A run takes as many
/// host cores as its L1 has CPUs ([`Cores`]): an L1 starved by another
/// only makes runs slower and flakier. Prints how long L1 took to be
/// ready and the whole run. A failure panics (with [`L1_FAULT`] first
/// when L1 itself failed), and [`nested_retry`] decides whether the test
/// runs again.
pub fn run(test: &str, g: &GuestFiles, job: &Job) -> Outcome {
    let vmm = Path::new(env!("CARGO_BIN_EXE_vmm"));
    let job = &l1_for_guest(job);
    static CORES: OnceLock<Cores> = OnceLock::new();
    let cores = CORES.get_or_init(|| Cores::new(Cores::host()));
    let _cores = cores.take(vmm_testbed::qemu::l1_cpus(job.l1_cpus));
    let out = run_linux(g, vmm, job).unwrap_or_else(|e| {
        // A guest reset by TCG's SVM fault (its last exit at L1's VMRUN
        // code) ends the VMM early, and a companion may then wait for it
        // until the limit: named as such, not as a hung L1.
        if let TestbedError::Timeout { console, .. } = &e {
            if let Some(named) = l2_exits::named_fault(console) {
                panic!("{test}: {named}, then the time limit: {e}")
            }
        }
        fail(test, e)
    });
    eprintln!(
        "{test}: L1 ready after {:?}, whole run {:?}",
        out.l1_boot, out.total
    );
    out
}

/// Panics for `run`'s failure `e` of `test`, with [`L1_FAULT`] first when
/// L1 itself failed.
fn fail(test: &str, e: TestbedError) -> ! {
    match e {
        TestbedError::L1Ended { .. }
        | TestbedError::Silent { .. }
        | TestbedError::NoHeartbeat { .. }
        | TestbedError::L1Stuck { .. } => {
            panic!("{L1_FAULT}{test}: {e}")
        }
        // L1 samples a guest still running 45 s before the limit; no
        // sample means L1 itself was not running (a hung L1 whose console
        // just stopped, seen in a CI rehearsal on 2026-12-04).
        TestbedError::Timeout { ref console, .. } if !console.contains(l2_exits::EXITS_MARKER) => {
            panic!("{L1_FAULT}{test}: L1 hung: no sample of the guest's exits before the time limit: {e}")
        }
        e => panic!("{test}: {e}"),
    }
}

/// `job` with an L1 of one CPU when its guest has one vCPU and the job
/// did not choose (see [`run`]).
fn l1_for_guest(job: &Job) -> Job {
    match (job.l1_cpus, job.guest_cpus()) {
        (None, Some(1)) => job.clone().l1_cpus(1),
        _ => job.clone(),
    }
}

/// A job booting the guest's bzImage with `initrd`: `--kernel kernel
/// --initrd initrd` and then `args`, both files added (as `kernel` and
/// `initrd`). The rest (other files, the time limit, ...) is the caller's.
pub fn debian_job<I, S>(g: &GuestFiles, initrd: &Path, args: I) -> Job
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let prefix = ["--kernel", "kernel", "--initrd", "initrd"].map(String::from);
    Job::new(prefix.into_iter().chain(args.into_iter().map(Into::into)))
        .file("kernel", &g.bzimage)
        .file("initrd", initrd)
}

/// Guest shell lines (busybox `sh`, after `insmod /evdev.ko` and
/// `insmod /button.ko`) that wait up to 10 s for the ACPI power button's
/// input device, then watch every input event device: on its first event
/// a watcher prints `@@POWERBUTTON`, runs `then` (shell lines ending in a
/// newline, or nothing) and powers off. The shell opens each device itself
/// before that device's reader starts in the background, so a press made
/// once these lines have run is never lost to a reader that has not opened
/// its device yet (evdev queues a client's events from its open on). In a
/// CI rehearsal a guest's second boot, whose next line came at once, never
/// saw the `system_powerdown` sent on that line (no `@@POWERBUTTON`, its
/// vCPU halted); a reader still starting under L1's TCG is the likely
/// cause, and with the devices opened first it is not possible.
pub fn power_button_watch(then: &str) -> String {
    format!(
        "i=0; until grep -qs 'Power Button' /sys/class/input/event*/device/name || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
fd=3
for e in /dev/input/event*; do
  [ $fd -le 9 ] || break
  eval \"exec $fd<$e\"
  (busybox dd bs=24 count=1 of=/dev/null <&$fd 2>/dev/null; echo @@POWERBUTTON
{then}poweroff -f) &
  fd=$((fd+1))
done
"
    )
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
    let probe = with_probe.then(|| build_static(dir, "clockprobe"));
    let programs: Vec<(&str, &Path)> = probe.iter().map(|p| ("clockprobe", p.as_path())).collect();
    test_initrd_with(g, dir, script, modules, &programs)
}

/// [`test_initrd`] with `programs` (guest name, host file) as `/NAME`,
/// executable.
pub fn test_initrd_with(
    g: &GuestFiles,
    dir: &common::TempDir,
    script: &str,
    modules: &[&str],
    programs: &[(&str, &Path)],
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
    for (name, path) in programs {
        extra.push(((*name).to_owned(), std::fs::read(path).unwrap(), 0o755));
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

/// The guest's virtio-net drivers, in dependency order.
pub const NET_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// In a companion's output: the text between `from` and the next `@@`
/// section marker the migration tests print.
pub fn section<'a>(c: &'a str, from: &str) -> &'a str {
    let start = c
        .find(&format!("{from}\n"))
        .map(|i| i + from.len() + 1)
        .unwrap_or_else(|| panic!("no {from} section:\n{c}"));
    let rest = &c[start..];
    let end = [
        "@@SRCQMP\n",
        "@@SRCSTATE\n",
        "@@DSTQMP\n",
        "@@DSTERR\n",
        "@@SRCLOG\n",
        "@@DSTLOG\n",
        "@@END",
    ]
    .iter()
    .filter_map(|m| rest.find(m))
    .min()
    .unwrap_or(rest.len());
    &rest[..end]
}

/// The `return` of the first `query-migrate` reply with status
/// `completed` among a QMP client's `@@QMP` lines.
pub fn completed_migration(qmp: &str) -> Option<serde_json::Value> {
    qmp.lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l.trim().strip_prefix("@@QMP ")?).ok()
        })
        .find(|v| v["return"]["status"] == "completed")
        .map(|v| v["return"].clone())
}

/// Prints a completed migration's figures (from [`completed_migration`]).
pub fn print_migration(test: &str, r: &serde_json::Value) {
    eprintln!(
        "{test}: total {} ms, downtime {} ms, {} bytes, {} dirty syncs",
        r["total-time"], r["downtime"], r["ram"]["transferred"], r["ram"]["dirty-sync-count"]
    );
}

/// (tick, check) of each whole `@@TICK N ok|BAD` a guest printed. A tick
/// cut short by a stop may be followed on its line by the next one the
/// console prints (after a load, the tick the guest goes on from), or by
/// a kernel message: each `@@TICK ` starts a tick, and one without its
/// check is left out.
pub fn checked_ticks(log: &str) -> Vec<(u32, String)> {
    log.split("@@TICK ")
        .skip(1)
        .filter_map(|t| {
            let mut f = t.split_whitespace();
            let n = f.next()?.parse().ok()?;
            let word = f.next()?;
            let ok = ["ok", "BAD"].into_iter().find(|w| word.starts_with(w))?;
            Some((n, ok.to_owned()))
        })
        .collect()
}

/// A companion script's line that, when the source's QMP step failed
/// (`$rc` not 0), asks the source VMM (QMP at `qmp.sock`) where its vCPUs
/// are (`info registers -a`, `info lapic`) into `src.state`, for the
/// failure's report (printed after `@@SRCSTATE`): a guest that never got
/// to its marker shows where it stopped.
#[allow(dead_code)]
pub const SOURCE_STATE_ON_FAILURE: &str = "[ $rc -eq 0 ] || ./qmpclient qmp.sock \
  '{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"info registers -a\"}}' \
  '{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"info lapic\"}}' \
  > src.state 2>&1\n";

/// Checks the ticks of a guest that moved from a source VMM to a
/// destination: some on each side, the destination going on from the
/// tick after the source's last (or the one after that, when the stop cut
/// a line short), none missing up to `last`, every one `ok`.
pub fn assert_ticks_go_on(
    test: &str,
    src: &[(u32, String)],
    dst: &[(u32, String)],
    last: u32,
    report: &str,
) {
    let (Some(src_last), Some(dst_first), Some(dst_last)) = (src.last(), dst.first(), dst.last())
    else {
        panic!("{test}: no ticks on one side\n{report}");
    };
    assert!(
        dst_first.0 == src_last.0 + 1 || dst_first.0 == src_last.0 + 2,
        "{test}: the destination went on from tick {}, the source stopped at {}\n{report}",
        dst_first.0,
        src_last.0
    );
    for w in dst.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "{test}: destination ticks\n{report}");
    }
    assert_eq!(dst_last.0, last, "{test}: the last tick\n{report}");
    assert!(
        src.iter().chain(dst).all(|(_, ok)| ok == "ok"),
        "{test}: a tick's check failed\n{report}"
    );
}
