//! `cargo xtask`: the project's developer tasks, in Rust so that they run
//! wherever cargo does.
//!
//! ```text
//! cargo xtask run         boot the default guest to a shell in this terminal
//! cargo xtask test        all tests of every crate (KVM tests must run where /dev/kvm exists)
//! cargo xtask lint        cargo fmt --check and clippy -D warnings
//! cargo xtask check-deps  the KVM-free crates reach no KVM crate
//! cargo xtask bench       the benchmarks, with their reports
//! cargo xtask fuzz        the libFuzzer targets in fuzz/, N seconds each
//! cargo xtask ci          lint, check-deps and test: what .ci/run runs
//! cargo xtask guest       fetch and build the default guest (kernel, initramfs)
//! cargo xtask startup-order  trace a start's functions for the release link's order
//! cargo xtask check-binary  the release binary calls no function its static link left out
//! ```

use std::process::ExitCode;

use anyhow::{bail, Result};

mod bench;
mod cmd;
mod deps;
mod fuzz;
mod guest;
mod links;
mod null_calls;
mod run;
mod startup_order;
mod target;

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  run [-- VMM-ARGS]        build the VMM and the default guest (if missing) and boot
                           it to a shell in this terminal; on a PVM host, nested in
                           the test bed (QEMU/TCG with a real KVM inside)
  test [CARGO-TEST-ARGS]   run every crate's tests; where /dev/kvm exists, the KVM
                           tests are required to run (VMM_REQUIRE_KVM=1)
  lint                     links in README.md and docs/ stay inside the repository,
                           cargo fmt --check (also of fuzz/), clippy --workspace
                           --all-targets -D warnings
  check-deps               fail if vmm-runstate, vmm-clock, vmm-devices, vmm-pci, vmm-qom,
                           vmm-virtio or vmm-qmp reach kvm-ioctls or kvm-bindings
                           (through any crate)
  bench [SUITE...] [--runs N] [--quick] [--vmm-arg ARG]... [-- ALARM-ARGS]
                           the benchmark suite, ours beside QEMU (installed with
                           apt-get if missing) and a floor program, taking turns;
                           min/median/max and ratios in a table, and report.md,
                           results.csv, samples.csv, chart.png in target/bench/.
                           Suites (all but alarm when none is named): startup,
                           exit, memory, pio, density, linux, qmp, alarm.
                           --vmm-arg adds ARG to our VMM's command line (not in
                           linux), e.g. --vmm-arg=--seccomp=off.
                           --runs N runs per program (default 20), --quick: 3
                           runs and smaller sizes (what CI runs)
  soak [--rounds N] [--busy] [--cpus 1|2] [--console quiet|verbose]
       [--vmm ours|qemu] [--vmm-arg ARG]... [--per-l1 N] [--boot-limit S]
                           boot Linux (bench linux's boots: 1 and 2 vCPUs, quiet
                           and verbose) N times each (default 10) under our VMM
                           and QEMU, taking turns in the same L1s, no retries;
                           counts ok / hang / reset / error per VMM and L1
                           faults; a hung VMM's vCPUs (QMP `info registers -a`,
                           `info lapic`) go into target/soak/soak-TIME.md.
                           --busy: one host core kept busy throughout;
                           --cpus, --console, --vmm: only those configurations
                           or that VMM; --vmm-arg adds ARG to our VMM's
                           command line (e.g. --vmm-arg=--irqchip=kernel);
                           --per-l1 N: at most N boots per L1 session (1: each
                           in a fresh L1, as the tests boot, to count L1
                           faults per L1 session); --boot-limit S: seconds a
                           boot has to reach /init before it counts as a hang
                           (default 60; 10 to 600)
  fuzz [TARGET...] [--seconds N] [--sanitizer address|none]
                           build the libFuzzer targets in fuzz/ with cargo-fuzz
                           (installed if missing; stable toolchain with
                           RUSTC_BOOTSTRAP=1) and run each (all when none is
                           named) for N seconds (default 60), one at a time:
                           executions and coverage per target; fails on a crash
                           or timeout and names the reproducer
  ci                       lint, check-deps, test (what .ci/run runs)
  startup-order [--check]  trace which functions a start of the release VMM runs
                           (gdb, a one-shot breakpoint on each) and write them to
                           vmm-cli/startup-order.txt, which the release link puts
                           side by side: less of the binary mapped at start-up.
                           --check: fail when a release build has under 95% of
                           the names there (stale: write it again); not checked
                           under another rustc than the file names
  check-binary [BINARY]    build the release VMM (or take BINARY) and fail if it calls a function
                           through a GOT slot its static link left at 0 (a C
                           library function std declares weak, which LTO made
                           weak in our code too: reach it with libc::syscall)
  guest [--dir DIR] [--refresh] [--rootfs [PATH]] [--size SIZE]
                           fetch the Debian cloud kernel and busybox-static with
                           apt-get, and build the default guest into DIR (default
                           target/guest, or $VMM_GUEST_DIR): bzImage, vmlinux,
                           initramfs.cpio, busybox, modules/; reused when present.
                           --rootfs: also an ext4 root disk at PATH (default
                           DIR/rootfs.img; SIZE default 128M, sparse) with busybox,
                           /etc, the modules and an /sbin/init; boot it with
                           --drive file=PATH,if=virtio,format=raw and
                           --append \"console=ttyS0 root=/dev/vda rw\"
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        bail!("no task given");
    };
    match task.as_str() {
        "test" => test(rest),
        "lint" => lint(),
        "check-deps" => deps::check(),
        "bench" => bench::task(rest),
        "soak" => bench::soak(rest),
        "fuzz" => fuzz::task(rest),
        "guest" => guest::task(rest),
        "run" => run::task(rest),
        "startup-order" => startup_order::task(rest),
        "check-binary" => null_calls::task(rest),
        "ci" => {
            lint()?;
            deps::check()?;
            test(&[])
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            print!("{USAGE}");
            bail!("unknown task `{other}`")
        }
    }
}

/// Runs every test of the workspace. Where `/dev/kvm` exists, KVM tests may
/// not skip: `VMM_REQUIRE_KVM=1` turns their "no KVM here" skip into a
/// failure.
fn test(extra: &[String]) -> Result<()> {
    // The VMM's tests run the binary built for the target the release
    // ships for (musl: see target.rs), so its seccomp lists are that C
    // library's.
    let mut c = cmd::cargo(["test", "--workspace"]);
    c.args(target::cargo_args()?).args(extra);
    if std::path::Path::new("/dev/kvm").exists() {
        c.env("VMM_REQUIRE_KVM", "1");
        // The Linux boot tests need the default guest.
        let g = guest::ensure()?;
        c.env(vmm_testbed::GUEST_DIR_ENV, &g.paths.dir);
        // The QMP tests drive the VMM with QEMU's own Python client.
        ensure_qemu_qmp()?;
    }
    let retry_log = cmd::root().join("target").join("nested-retries.log");
    // A record left by an earlier run is not this run's.
    let _ = std::fs::remove_file(&retry_log);
    let _ = std::fs::remove_file(vmm_testbed::retries::details_path(&retry_log));
    c.env(vmm_testbed::retries::RETRY_LOG_ENV, &retry_log);
    let result = cmd::run(&mut c);
    report_retries(&retry_log);
    result
}

/// Prints the nested tests that failed a try and ran again (their record,
/// `vmm_testbed::retries`), whether the run passed or not: a passing test
/// keeps its first try's failure out of `cargo test`'s output.
fn report_retries(log: &std::path::Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        eprintln!("xtask test: no nested test needed a second try");
        return;
    }
    eprintln!(
        "xtask test: NESTED RETRIES: {} test run(s) failed a try and ran again (record: {}):",
        lines.len(),
        log.display()
    );
    for l in lines {
        eprintln!("  {l}");
    }
    // The end of each failed try (its console and the VMM's stderr):
    // a passing second try leaves it nowhere else.
    let details_path = vmm_testbed::retries::details_path(log);
    if let Ok(details) = std::fs::read_to_string(&details_path) {
        eprintln!(
            "xtask test: the failed tries' last lines (also in {}):",
            details_path.display()
        );
        eprint!("{details}");
    }
}

/// Installs QEMU's Python QMP client (`qemu.qmp`, PyPI) when missing.
fn ensure_qemu_qmp() -> Result<()> {
    let import = || {
        std::process::Command::new("python3")
            .args(["-c", "import qemu.qmp"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if import() {
        return Ok(());
    }
    eprintln!("xtask: installing qemu.qmp (QEMU's Python QMP client) for the QMP tests");
    let mut pip = std::process::Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "qemu.qmp"]);
    cmd::run(&mut pip)?;
    anyhow::ensure!(
        import(),
        "qemu.qmp is still not importable after pip install"
    );
    Ok(())
}

fn lint() -> Result<()> {
    links::check(&cmd::root())?;
    cmd::run(&mut cmd::cargo(["fmt", "--all", "--", "--check"]))?;
    // The fuzz targets are a workspace of their own (fuzz/).
    cmd::run(&mut cmd::cargo([
        "fmt",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--",
        "--check",
    ]))?;
    cmd::run(&mut cmd::cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The binary again for the target it ships for (musl: its allocator
    // and seccomp calls are compiled only there).
    let shipped = target::cargo_args()?;
    if !shipped.is_empty() {
        let mut c = cmd::cargo(["clippy", "--package", "vmm-cli", "--all-targets"]);
        c.args(&shipped).args(["--", "-D", "warnings"]);
        cmd::run(&mut c)?;
    }
    // The fuzz targets build with the stable toolchain too: checked here,
    // with the rest, so that a changed API breaks lint rather than the
    // fuzz step at the end of a CI run.
    cmd::run(&mut cmd::cargo([
        "clippy",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]))
}
