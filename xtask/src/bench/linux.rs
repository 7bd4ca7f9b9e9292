//! Linux from spawn to `/init`: the default guest's kernel (bzImage) with
//! a tiny initramfs whose `/init` prints a marker as its first action and
//! then reboots, on our VMM and on QEMU's `microvm` machine, on 1 and 2
//! vCPUs, with a `quiet` and a verbose (no `quiet`) console.
//!
//! Linux needs a real KVM: on a hardware-KVM host both VMMs run directly;
//! where `/dev/kvm` is PVM they run inside one L1 of the test bed
//! (vmm-testbed, nested under QEMU/TCG), the host's QEMU shipped into L1
//! ([`vmm_testbed::Job::with_qemu`]). Either way one shell script runs
//! the boots one after the other, through `spawn_to_marker.c` (built
//! static here): the clock (CLOCK_MONOTONIC where the VMMs run) starts
//! just before the fork, `to_init` is the first read of the marker on the
//! VMM's stdout (the guest's serial console, through a pipe), `exit` is
//! the VMM's exit (the guest's `reboot -f` with `reboot=t`: our VMM exits
//! on the reset, QEMU with `-no-reboot`).
//!
//! Both get the same kernel, initramfs, 256 MiB, vCPU count and kernel
//! command line. One unmeasured warm-up boot each, then `runs` rounds;
//! each round boots every configuration on both VMMs, taking turns (which
//! VMM goes first alternates from one configuration to the next and from
//! one round to the next). `--quick` (CI's run, which only keeps the suite
//! from rotting) boots the quiet configurations once each, without the
//! warm-up: four boots instead of ten.
//!
//! QEMU runs `-M microvm` with its defaults (ACPI, PIC, PIT, RTC, its
//! ISA serial port) and `-cpu host,-arch-capabilities` (Debian's QEMU 7.2
//! aborts on the `IA32_ARCH_CAPABILITIES` MSR with plain `-cpu host` on
//! some hosts, as in `cargo xtask bench startup`); ours with its defaults.
//!
//! Nested, times include L1's overheads (TCG-emulated SVM): every exit of
//! L2 is costly, so that a verbose console (a port write per character)
//! and anything the guest polls weigh far more than on hardware. Compare
//! the two VMMs with each other, not with hardware numbers. A boot that
//! fails (a hang, a reset before `/init`) is not tried again: it is
//! printed with its console's end and counted per VMM in the report, and
//! its run is left out of the figures (`cargo xtask soak` counts such
//! failures in earnest, see docs/nested/). Only an L1 that dies or goes
//! silent, the test bed's own fault, is followed by a fresh L1 for the
//! boots it did not run ([`SESSIONS`]).
//!
//! Nested, the quiet boots run in an L1 of two CPUs and the verbose ones
//! in an L1 of one ([`l1_cpus`]), where `cargo xtask soak` had 50 of 50
//! boots of ours in each configuration; both VMMs always share an L1.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmm_testbed::{initramfs::busybox_initramfs, GuestFiles, Job};

use super::report::{Goal, Row, Section, Who};
use super::{session, Ctx, TempDir};
use crate::cmd;

/// Boots of one VMM in one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxSeries {
    /// "vmm (ours)" or "QEMU microvm".
    pub vmm: String,
    /// vCPUs.
    pub cpus: u32,
    /// `quiet` on the kernel command line, else a verbose console.
    pub quiet: bool,
    /// Spawn to the marker `/init` prints, per run, ms.
    pub to_init_ms: Vec<f64>,
    /// Spawn to the VMM's exit, per run, ms.
    pub exit_ms: Vec<f64>,
}

/// What `/init` prints first.
const MARKER: &str = "@@L2-INIT-RUNNING";
/// The L2 guest's `/init`.
const INIT: &str = "#!/bin/sh\necho @@L2-INIT-RUNNING\nreboot -f\n";
/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 256;
/// vCPU counts.
const CPUS: [u32; 2] = [1, 2];
/// The kernel command line of both VMMs, before `quiet`: the serial
/// console, a triple-fault reboot (microvm has no i8042; our VMM exits on
/// either), no i8042 probing beyond the controller (our default).
const APPEND: &str = "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nomux i8042.nopnp";
/// One boot's time limit inside the script, seconds.
const BOOT_TIMEOUT_S: u32 = 60;
/// Runs per configuration at most: each nested boot takes 5 to 20 s.
const MAX_RUNS: usize = 3;
/// L1 sessions at most: one normally; a further one runs what an L1 that
/// died or hung left undone.
const SESSIONS: usize = 5;
/// L1's CPUs for a configuration's boots, nested: one for a verbose
/// console, the test bed's default (two) for a quiet one. Verbose
/// two-vCPU boots met TCG's SVM fault in L1s of two CPUs (`cargo xtask
/// soak`, 50 rounds each: ours 49 and 47 of 50 on an idle and a busy host,
/// QEMU 50 and 41) and never in L1s of one (50 of 50 for both, both
/// hosts); quiet boots had 50 of 50 for ours in L1s of two
/// (docs/nested/README.md). `cargo xtask run` chooses the same way for
/// its verbose boots. `VMM_TESTBED_L1_CPUS` still wins.
fn l1_cpus(config: Config) -> u32 {
    if config.quiet {
        vmm_testbed::qemu::L1_CPUS
    } else {
        1
    }
}

/// `boots` split by [`l1_cpus`], in the order of each width's first boot,
/// each keeping its boots' order.
fn by_l1(boots: &[Boot]) -> Vec<(u32, Vec<Boot>)> {
    let mut groups: Vec<(u32, Vec<Boot>)> = Vec::new();
    for b in boots {
        let cpus = l1_cpus(b.config);
        match groups.iter_mut().find(|(c, _)| *c == cpus) {
            Some((_, g)) => g.push(*b),
            None => groups.push((cpus, vec![*b])),
        }
    }
    groups
}

/// The helper's name in the job folder.
const HELPER: &str = "spawn_to_marker";

/// The two VMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ours,
    Qemu,
}

impl Vmm {
    /// The `vmm=` value in `@@BOOT` lines.
    fn key(self) -> &'static str {
        match self {
            Vmm::Ours => "ours",
            Vmm::Qemu => "qemu",
        }
    }

    /// The name in [`LinuxSeries::vmm`].
    fn name(self) -> &'static str {
        match self {
            Vmm::Ours => "vmm (ours)",
            Vmm::Qemu => "QEMU microvm",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        [Vmm::Ours, Vmm::Qemu].into_iter().find(|v| v.key() == key)
    }

    /// The shell command booting `cpus` vCPUs with `append`, in the job
    /// folder (`$VMM`, `$QEMU` and `$QEMU_DATA` come from the test bed).
    fn command(self, cpus: u32, append: &str) -> String {
        match self {
            // `--log-level info` adds a line or two on stderr (which goes
            // to the boot's log): why the VMM ended, for a failed try.
            Vmm::Ours => format!(
                "\"$VMM\" --kernel bzImage --initrd initrd --memory {MEMORY_MIB}M \
                 --cpus {cpus} --log-level info --append '{append}'"
            ),
            Vmm::Qemu => format!(
                "\"$QEMU\" -M microvm -accel kvm -cpu host,-arch-capabilities -smp {cpus} -m {MEMORY_MIB}M \
                 -nodefaults -no-user-config -display none -no-reboot -serial stdio \
                 -L \"$QEMU_DATA\" -kernel bzImage -initrd initrd -append '{append}'"
            ),
        }
    }
}

/// One configuration: vCPUs and console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    cpus: u32,
    quiet: bool,
}

/// Every configuration, in report order.
fn configs() -> Vec<Config> {
    let mut v = Vec::new();
    for quiet in [true, false] {
        for cpus in CPUS {
            v.push(Config { cpus, quiet });
        }
    }
    v
}

fn append(quiet: bool) -> String {
    if quiet {
        format!("{APPEND} quiet")
    } else {
        APPEND.to_owned()
    }
}

fn console_key(quiet: bool) -> &'static str {
    if quiet {
        "quiet"
    } else {
        "verbose"
    }
}

/// One boot: which VMM, which configuration, which round (`None`: the
/// unmeasured warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Boot {
    vmm: Vmm,
    config: Config,
    run: Option<usize>,
}

impl Boot {
    /// The label of its `@@BOOT` line.
    fn label(&self) -> String {
        format!(
            "vmm={} cpus={} console={} run={}",
            self.vmm.key(),
            self.config.cpus,
            console_key(self.config.quiet),
            self.run.map_or("warmup".to_owned(), |r| r.to_string())
        )
    }

    fn describe(&self) -> String {
        format!(
            "{} with {} vCPU(s), {} console, run {}",
            self.vmm.name(),
            self.config.cpus,
            console_key(self.config.quiet),
            self.run.map_or("warm-up".to_owned(), |r| r.to_string())
        )
    }
}

/// The warm-up: one boot of each VMM.
fn warm_up() -> Vec<Boot> {
    [Vmm::Ours, Vmm::Qemu]
        .into_iter()
        .map(|vmm| Boot {
            vmm,
            config: Config {
                cpus: 1,
                quiet: true,
            },
            run: None,
        })
        .collect()
}

/// The measured boots: `runs` rounds of every configuration on both VMMs,
/// taking turns (who goes first alternates per configuration and round).
fn plan(runs: usize) -> Vec<Boot> {
    let mut v = Vec::new();
    for round in 0..runs {
        for (i, config) in configs().into_iter().enumerate() {
            let order = if (round + i) % 2 == 0 {
                [Vmm::Ours, Vmm::Qemu]
            } else {
                [Vmm::Qemu, Vmm::Ours]
            };
            for vmm in order {
                v.push(Boot {
                    vmm,
                    config,
                    run: Some(round),
                });
            }
        }
    }
    v
}

/// The script running `boots` one after the other, once each. The
/// helper's lines go to `$TESTBED_LIVE` (nested: L1's console), so that
/// the boots done so far reach the host even if L1 dies later.
fn script(boots: &[Boot]) -> String {
    let mut s = String::new();
    for b in boots {
        let _ = writeln!(
            s,
            "./{HELPER} '{}' '{MARKER}' {BOOT_TIMEOUT_S} /tmp/l2.log {} >>\"$TESTBED_LIVE\"",
            b.label(),
            b.vmm.command(b.config.cpus, &append(b.config.quiet))
        );
    }
    s
}

/// One `@@BOOT` line.
#[derive(Debug, Clone, PartialEq)]
struct BootLine {
    vmm: Vmm,
    cpus: u32,
    quiet: bool,
    /// `None` for the warm-up.
    run: Option<usize>,
    to_init_ms: Option<f64>,
    exit_ms: Option<f64>,
    status: String,
}

impl BootLine {
    fn ok(&self) -> bool {
        self.status == "0" && self.to_init_ms.is_some() && self.exit_ms.is_some()
    }
}

/// Parses `@@BOOT vmm=ours cpus=2 console=quiet run=0 to_init_ms=1.5
/// exit_ms=2.5 status=0` (times of -1: none).
fn parse_boot_line(line: &str) -> Option<BootLine> {
    let rest = line.trim().strip_prefix("@@BOOT ")?;
    let mut vmm = None;
    let mut cpus = None;
    let mut quiet = None;
    let mut run = None;
    let mut to_init = None;
    let mut exit = None;
    let mut status = None;
    let time = |v: &str| -> Option<Option<f64>> {
        let t: f64 = v.parse().ok()?;
        Some((t.is_finite() && t >= 0.0).then_some(t))
    };
    for field in rest.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "vmm" => vmm = Some(Vmm::from_key(v)?),
            "cpus" => cpus = Some(v.parse().ok()?),
            "console" => {
                quiet = Some(match v {
                    "quiet" => true,
                    "verbose" => false,
                    _ => return None,
                })
            }
            "run" => {
                run = Some(if v == "warmup" {
                    None
                } else {
                    Some(v.parse().ok()?)
                })
            }
            "to_init_ms" => to_init = Some(time(v)?),
            "exit_ms" => exit = Some(time(v)?),
            "status" => status = Some(v.to_owned()),
            _ => {}
        }
    }
    Some(BootLine {
        vmm: vmm?,
        cpus: cpus?,
        quiet: quiet?,
        run: run?,
        to_init_ms: to_init?,
        exit_ms: exit?,
        status: status?,
    })
}

/// The `@@LOG-BEGIN` … `@@LOG-END` block right after line `i`, if any.
pub(super) fn log_after(lines: &[&str], i: usize) -> String {
    if lines.get(i + 1).map(|l| l.trim()) != Some("@@LOG-BEGIN") {
        return String::new();
    }
    lines[i + 2..]
        .iter()
        .take_while(|l| l.trim() != "@@LOG-END")
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// A boot that failed (and was tried again): what, and the end of its
/// console and stderr.
#[derive(Debug, Clone)]
struct Failure {
    vmm: Vmm,
    boot: Boot,
    what: String,
    log: String,
}

impl BootLine {
    fn boot(&self) -> Boot {
        Boot {
            vmm: self.vmm,
            config: Config {
                cpus: self.cpus,
                quiet: self.quiet,
            },
            run: self.run,
        }
    }
}

/// The good boots (marker seen, status 0) and the failed tries in a
/// console; lines that do not parse are ignored (L1's console can cut a
/// line).
fn parse_console(console: &str) -> (Vec<BootLine>, Vec<Failure>) {
    let lines: Vec<&str> = console.lines().collect();
    let mut good = Vec::new();
    let mut failures = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(b) = parse_boot_line(line) else {
            continue;
        };
        if b.ok() {
            good.push(b);
        } else {
            failures.push(Failure {
                vmm: b.vmm,
                boot: b.boot(),
                what: format!(
                    "{}: {} (status {})",
                    b.boot().describe(),
                    if b.to_init_ms.is_none() {
                        "no /init marker"
                    } else {
                        "a bad end"
                    },
                    b.status,
                ),
                log: log_after(&lines, i),
            });
        }
    }
    (good, failures)
}

/// One series per VMM and configuration, from the good measured boots.
fn series(good: &[BootLine]) -> Vec<LinuxSeries> {
    let mut v = Vec::new();
    for config in configs() {
        for vmm in [Vmm::Ours, Vmm::Qemu] {
            let mut runs: Vec<&BootLine> = good
                .iter()
                .filter(|b| {
                    let boot = b.boot();
                    boot.vmm == vmm && boot.config == config && boot.run.is_some()
                })
                .collect();
            runs.sort_by_key(|b| b.run);
            v.push(LinuxSeries {
                vmm: vmm.name().to_owned(),
                cpus: config.cpus,
                quiet: config.quiet,
                to_init_ms: runs.iter().filter_map(|b| b.to_init_ms).collect(),
                exit_ms: runs.iter().filter_map(|b| b.exit_ms).collect(),
            });
        }
    }
    v
}

/// Builds `spawn_to_marker.c` static into `dir` (L1 has no C library).
fn build_helper(dir: &Path) -> Result<PathBuf> {
    let src = cmd::root().join("xtask/src/bench/spawn_to_marker.c");
    let out = dir.join(HELPER);
    let mut cc = std::process::Command::new("cc");
    cc.args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src);
    cmd::run(&mut cc).context("building the timing helper (gcc and libc6-dev)")?;
    Ok(out)
}

/// The `linux` suite: at most [`MAX_RUNS`] runs (one with `--quick`, of
/// the quiet configurations only and without the warm-up).
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let runs = if ctx.quick { 1 } else { ctx.runs.min(MAX_RUNS) };
    let (series, sessions) = boots(runs, ctx.quick)?;
    Ok(section(&series, runs, sessions))
}

/// What one call of the suite boots: the warm-ups, then `runs` rounds
/// (with `quick`, no warm-up and the quiet configurations only).
fn schedule(runs: usize, quick: bool) -> (Vec<Boot>, Vec<Boot>) {
    let mut measured = plan(runs);
    if quick {
        measured.retain(|b| b.config.quiet);
        (Vec::new(), measured)
    } else {
        (warm_up(), measured)
    }
}

/// The report's section: one row per configuration, ours beside QEMU.
fn section(series: &[LinuxSeries], runs: usize, sessions: Vec<String>) -> Vec<Section> {
    let mut s = Section::new(
        "linux",
        format!(
            "Linux to /init: Debian's kernel, {MEMORY_MIB} MiB, on a real KVM ({})",
            match vmm_testbed::HostKvm::detect() {
                vmm_testbed::HostKvm::Pvm => "nested: both VMMs in the same L1 of the test bed",
                _ => "directly on this host",
            }
        ),
    );
    s.note(format!(
        "The default guest's bzImage and an initramfs whose /init prints a marker first; the \
         time from spawn to the marker on the VMM's stdout (the serial console), taken where the \
         VMMs run by spawn_to_marker.c. Same kernel, initramfs, memory, vCPUs and command line \
         (`{APPEND}`, plus `quiet` for the quiet rows); {runs} run(s) per VMM and configuration \
         after a warm-up, taking turns (`--quick`: the quiet rows only, no warm-up)."
    ));
    s.note(
        "QEMU: -M microvm -accel kvm -cpu host,-arch-capabilities -nodefaults -no-reboot \
         (its defaults: ACPI, PIC, PIT, RTC, ISA serial).",
    );
    if vmm_testbed::HostKvm::detect() == vmm_testbed::HostKvm::Pvm {
        s.note(
            "Nested, every exit of L2 goes through L1's TCG-emulated SVM, so exits weigh far \
             more than on hardware (a verbose console is a port write per character): compare \
             the two VMMs with each other, not with hardware figures.",
        );
        s.note(format!(
            "The quiet boots ran in an L1 of {} CPU(s), the verbose ones in an L1 of {} \
             (`cargo xtask soak`: verbose boots of both VMMs failed now and then in L1s of two \
             CPUs, never in L1s of one); both VMMs take turns in the same L1.",
            vmm_testbed::qemu::l1_cpus(Some(l1_cpus(Config {
                cpus: 2,
                quiet: true
            }))),
            vmm_testbed::qemu::l1_cpus(Some(l1_cpus(Config {
                cpus: 2,
                quiet: false
            }))),
        ));
    }
    for n in sessions {
        s.note(n);
    }
    // A configuration nothing measured (`--quick` boots no verbose console)
    // has no row.
    let measured = |c: &Config| {
        series
            .iter()
            .any(|x| x.cpus == c.cpus && x.quiet == c.quiet && !x.to_init_ms.is_empty())
    };
    for config in configs().into_iter().filter(measured) {
        let label = format!(
            "{} vCPU{}, {}: spawn to /init",
            config.cpus,
            if config.cpus == 1 { "" } else { "s" },
            if config.quiet { "quiet" } else { "verbose" }
        );
        let mut row = Row::new(label, "ms").goal(Goal::QemuRatio(0.9));
        for x in series
            .iter()
            .filter(|x| x.cpus == config.cpus && x.quiet == config.quiet)
        {
            let who = if x.vmm == Vmm::Ours.name() {
                Who::Ours
            } else {
                Who::Qemu
            };
            for v in &x.to_init_ms {
                row.push(who, *v);
            }
        }
        s.rows.push(row);
    }
    vec![s]
}

/// Boots every configuration `runs` times on both VMMs (see the module
/// docs) and returns one series per VMM and configuration (for each
/// console, `quiet` then verbose, for each vCPU count, 1 then 2, ours
/// then QEMU's), and a line per L1 session.
fn boots(runs: usize, quick: bool) -> Result<(Vec<LinuxSeries>, Vec<String>)> {
    if runs == 0 {
        bail!("the Linux benchmark needs at least one run");
    }
    let started = Instant::now();
    let guest = GuestFiles::default_location()?;
    // `cargo xtask bench` has built the release `vmm` before any suite.
    let vmm = crate::target::vmm();
    let tmp = TempDir::new("vmm-bench-linux")?;
    let helper = build_helper(&tmp.0)?;
    let busybox = std::fs::read(&guest.busybox)
        .with_context(|| format!("cannot read {}", guest.busybox.display()))?;
    let initrd = tmp.0.join("initrd.cpio");
    std::fs::write(&initrd, busybox_initramfs(&busybox, INIT, &[])?)
        .with_context(|| format!("cannot write {}", initrd.display()))?;

    let (warm_ups, measured) = schedule(runs, quick);
    let mut good: Vec<BootLine> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut sessions = Vec::new();
    let mut unrun: Vec<Boot> = Vec::new();
    let mut session = 0;
    for (l1_cpus, mut pending) in by_l1(&measured) {
        for _ in 1..=SESSIONS {
            session += 1;
            let mut boots = warm_ups.clone();
            boots.extend_from_slice(&pending);
            let job = Job::new(["--version"])
                .file("bzImage", &guest.bzimage)
                .file("initrd", &initrd)
                .file(HELPER, &helper)
                .with_qemu()
                .l1_cpus(l1_cpus)
                .companion(&script(&boots))
                // Every try prints a line within BOOT_TIMEOUT_S, and L1's KVM
                // a line as each L2 starts: a longer silence is a hung L1.
                .silence_limit(Duration::from_secs(u64::from(BOOT_TIMEOUT_S) + 30))
                .timeout(Duration::from_secs(
                    180 + boots.len() as u64 * u64::from(BOOT_TIMEOUT_S),
                ));
            eprintln!(
                "xtask: Linux to /init, session {session}: {} boots ({} warm-ups) {}",
                boots.len(),
                warm_ups.len(),
                match vmm_testbed::HostKvm::detect() {
                    vmm_testbed::HostKvm::Pvm => format!(
                        "nested in one L1 of the test bed ({} CPU(s))",
                        vmm_testbed::qemu::l1_cpus(Some(l1_cpus))
                    ),
                    _ => "directly on this host's KVM".to_owned(),
                }
            );
            let run = vmm_testbed::run_linux(&guest, &vmm, &job);
            let console = session::l1_console("Linux to /init", session, run, &mut sessions)?;
            let (g, f) = parse_console(&console);
            for b in &g {
                eprintln!(
                    "xtask: {}: to /init {:.1} ms, exit {:.1} ms",
                    b.boot().describe(),
                    b.to_init_ms.unwrap_or(f64::NAN),
                    b.exit_ms.unwrap_or(f64::NAN)
                );
            }
            for x in &f {
                let tail: Vec<&str> = x.log.lines().rev().take(6).collect();
                eprintln!("xtask: FAILED {}; its last lines:", x.what);
                for l in tail.iter().rev() {
                    eprintln!("    {l}");
                }
            }
            // Every boot that ended, well or not, is done: only what an L1
            // fault left unrun goes to the next session.
            pending
                .retain(|p| !g.iter().any(|b| b.boot() == *p) && !f.iter().any(|x| x.boot == *p));
            good.extend(g.into_iter().filter(|b| b.run.is_some()));
            failures.extend(f);
            if pending.is_empty() {
                break;
            }
        }
        unrun.extend(pending);
    }
    // What nesting cost, said in the report: failed tries per VMM (each
    // printed above with its console's end), and boots never measured.
    let failed = |vmm: Vmm| failures.iter().filter(|f| f.vmm == vmm).count();
    sessions.push(format!(
        "failed boots (not retried, left out of the figures): ours {}, QEMU {}",
        failed(Vmm::Ours),
        failed(Vmm::Qemu)
    ));
    if !unrun.is_empty() {
        let missing: Vec<String> = unrun.iter().map(Boot::describe).collect();
        sessions.push(format!(
            "not measured after {SESSIONS} L1 sessions of their L1 width: {}",
            missing.join("; ")
        ));
    }
    // A benchmark that boots neither VMM is broken, not unlucky.
    for vmm in [Vmm::Ours, Vmm::Qemu] {
        if !good.iter().any(|b| b.vmm == vmm && b.run.is_some()) {
            let mut why = String::new();
            for f in &failures {
                let _ = write!(
                    why,
                    "\n{}; end of its console and stderr:\n{}\n",
                    f.what, f.log
                );
            }
            bail!(
                "the Linux benchmark measured no boot of {} in {SESSIONS} sessions\n\
                 sessions: {}\nfailed tries:{why}",
                vmm.name(),
                sessions.join("; ")
            );
        }
    }
    eprintln!(
        "xtask: Linux benchmark done in {:.1?} ({})",
        started.elapsed(),
        sessions.join("; "),
    );
    Ok((series(&good), sessions))
}

pub(super) mod soak;

#[cfg(test)]
mod tests;
