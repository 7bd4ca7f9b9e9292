//! `cargo xtask soak`: how often a nested Linux boot fails, per VMM.
//!
//! The same boots as `bench linux` (the default guest's kernel, a `/init`
//! that prints a marker and reboots, 256 MiB, 1 and 2 vCPUs, quiet and
//! verbose console, our VMM and QEMU `microvm` taking turns in the same
//! L1), `rounds` times each, with no retry: every boot counts. Each one
//! ends as
//!
//! - **ok**: the marker came and the VMM exited 0 (the guest's reboot);
//! - **hang**: the VMM was still running at the time limit. Before it is
//!   killed, the timing helper asks it over QMP (`human-monitor-command`)
//!   for `info registers -a` and `info lapic`, so that the report says
//!   where each vCPU was;
//! - **reset**: the VMM exited 0 before the marker: the guest reset (a
//!   triple fault) or powered off in the middle of its boot, which nobody
//!   asked for;
//! - **error**: any other end (a non-zero status, a signal).
//!
//! An L1 that dies or goes silent is counted too (an L1 fault, not the
//! VMM's), and a fresh L1 runs the boots it left. With `--busy` a host
//! thread spins for the whole run, so that L1 competes for the host's
//! cores as it does under CI.
//!
//! The table, and every failed boot's last console lines and vCPU dump,
//! go to stdout and to `target/soak/soak-<unix time>.md`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmm_testbed::{initramfs::busybox_initramfs, l2_exits, GuestFiles, Job, TestbedError};

use super::{
    build_helper, configs, console_key, log_after, parse_boot_line, plan, Boot, BootLine, Config,
    Vmm, BOOT_TIMEOUT_S, CPUS, HELPER, INIT, MARKER,
};
use crate::bench::session::console_tail;
use crate::bench::{target_dir, TempDir};
use crate::cmd;

/// The QMP socket each boot's VMM serves, in the job folder.
const QMP_SOCKET: &str = "l2.qmp";
/// The companion's first line: where this L1 put kvm_amd's VMRUN code, so
/// that a hung guest's RIP can be told from L1's own (kvm_amd loads at a
/// different address in each L1 boot).
const L1_SYMBOLS: &str = "echo \"@@L1-SYMS $(grep -w __svm_vcpu_run /proc/kallsyms | head -1) \
     noinstr=$(cat /sys/module/kvm_amd/sections/.noinstr.text 2>/dev/null)\" >>\"$TESTBED_LIVE\"";
/// L1 sessions at most, whatever the number of boots.
const MAX_SESSIONS: usize = 12;

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    rounds: usize,
    busy: bool,
    /// Only this many vCPUs (`--cpus`), else 1 and 2.
    cpus: Option<u32>,
    /// Only this console (`--console quiet|verbose`), else both.
    quiet: Option<bool>,
    /// Only this VMM (`--vmm ours|qemu`), else both.
    only: Option<Vmm>,
    /// Added to our VMM's command line (`--vmm-arg ARG`, repeatable), e.g.
    /// `--irqchip=kernel` to soak another configuration of ours.
    vmm_args: Vec<String>,
    /// At most this many boots per L1 session (`--per-l1 N`), else all of
    /// them in as few sessions as L1 allows: `--per-l1 1` boots each guest
    /// in a fresh L1, as the tests do, and so counts L1 faults per L1.
    per_l1: Option<usize>,
    /// Seconds a boot has to reach its marker before it counts as a hang
    /// (`--boot-limit S`, else `bench linux`'s limit): an L1 of one CPU on
    /// a busy host boots slower than the default allows.
    boot_limit: u32,
}

/// The range `--boot-limit` takes, seconds.
const BOOT_LIMITS: std::ops::RangeInclusive<u32> = 10..=600;

impl Default for Options {
    /// Ten rounds of every configuration under both VMMs, `bench linux`'s
    /// time limit, an idle host.
    fn default() -> Self {
        Options {
            rounds: 10,
            busy: false,
            cpus: None,
            quiet: None,
            only: None,
            vmm_args: Vec::new(),
            per_l1: None,
            boot_limit: BOOT_TIMEOUT_S,
        }
    }
}

impl Options {
    /// Whether `config` is one this run boots.
    fn wants(&self, config: Config) -> bool {
        self.cpus.is_none_or(|c| c == config.cpus) && self.quiet.is_none_or(|q| q == config.quiet)
    }

    /// Whether `boot` is one this run boots.
    fn wants_boot(&self, boot: &Boot) -> bool {
        self.wants(boot.config) && self.only.is_none_or(|v| v == boot.vmm)
    }

    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix("--vmm-arg=") {
                o.vmm_args.push(v.to_owned());
                continue;
            }
            match a.as_str() {
                "--busy" => o.busy = true,
                "--vmm-arg" => match it.next() {
                    Some(v) => o.vmm_args.push(v.clone()),
                    None => bail!("--vmm-arg needs an argument"),
                },
                "--vmm" => {
                    o.only = match it.next().map(String::as_str) {
                        Some("ours") => Some(Vmm::Ours),
                        Some("qemu") => Some(Vmm::Qemu),
                        _ => bail!("--vmm takes ours or qemu"),
                    }
                }
                "--rounds" => {
                    o.rounds = match it.next().map(|v| v.parse::<usize>()) {
                        Some(Ok(n)) if n > 0 => n,
                        _ => bail!("--rounds needs a positive number"),
                    }
                }
                "--per-l1" => {
                    o.per_l1 = match it.next().map(|v| v.parse::<usize>()) {
                        Some(Ok(n)) if n > 0 => Some(n),
                        _ => bail!("--per-l1 needs a positive number"),
                    }
                }
                "--boot-limit" => {
                    o.boot_limit = match it.next().map(|v| v.parse::<u32>()) {
                        Some(Ok(n)) if BOOT_LIMITS.contains(&n) => n,
                        _ => bail!(
                            "--boot-limit takes seconds from {} to {}",
                            BOOT_LIMITS.start(),
                            BOOT_LIMITS.end()
                        ),
                    }
                }
                "--cpus" => {
                    o.cpus = match it.next().map(|v| v.parse::<u32>()) {
                        Some(Ok(n)) if CPUS.contains(&n) => Some(n),
                        _ => bail!("--cpus takes 1 or 2"),
                    }
                }
                "--console" => {
                    o.quiet = match it.next().map(String::as_str) {
                        Some("quiet") => Some(true),
                        Some("verbose") => Some(false),
                        _ => bail!("--console takes quiet or verbose"),
                    }
                }
                other => bail!(
                    "unknown argument `{other}` (flags: --rounds N, --busy, --cpus 1|2, \
                     --console quiet|verbose, --vmm ours|qemu, --vmm-arg ARG, --per-l1 N, --boot-limit S)"
                ),
            }
        }
        Ok(o)
    }
}

/// How one boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ok,
    Hang,
    Reset,
    Error,
}

impl End {
    fn of(b: &BootLine) -> Self {
        match (b.to_init_ms.is_some(), b.status.as_str()) {
            (true, "0") => End::Ok,
            (_, "timeout") => End::Hang,
            (false, "0") => End::Reset,
            _ => End::Error,
        }
    }
}

/// One boot's end, with what was printed about it.
#[derive(Debug, Clone)]
struct Ended {
    boot: Boot,
    end: End,
    status: String,
    /// From the VMM's start to the guest's `/init` marker, ms (if it came).
    to_init_ms: Option<f64>,
    /// The end of its console and stderr (failed boots only).
    log: String,
    /// Its vCPUs at the time limit (hangs), or L1's record of each vCPU's
    /// last exits up to the triple fault (resets: `@@TESTBED-L2-RESET`).
    dump: String,
}

/// The `@@DUMP-BEGIN` … `@@DUMP-END` block right before line `i`, if any.
fn dump_before(lines: &[&str], i: usize) -> String {
    if i == 0 || lines[i - 1].trim() != "@@DUMP-END" {
        return String::new();
    }
    let Some(begin) = lines[..i - 1]
        .iter()
        .rposition(|l| l.trim() == "@@DUMP-BEGIN")
    else {
        return String::new();
    };
    lines[begin + 1..i - 1].join("\n")
}

/// The boots a console reports.
///
/// L1 prints a reset's record of exits (`vmm_testbed::l2_exits`) up to
/// 15 s after the boot ended, so a reset gets the first such line after
/// its own that no earlier reset took.
fn parse(console: &str) -> Vec<Ended> {
    let lines: Vec<&str> = console.lines().collect();
    let mut v = Vec::new();
    // Where the reset records are, in order; each reset takes the first
    // one after its own line.
    let mut records = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(l2_exits::RESET_MARKER))
        .peekable();
    for (i, line) in lines.iter().enumerate() {
        let Some(b) = parse_boot_line(line) else {
            continue;
        };
        let end = End::of(&b);
        let dump = if end == End::Reset {
            while records.next_if(|(at, _)| *at < i).is_some() {}
            records
                .next()
                .map_or_else(String::new, |(_, l)| l.trim().to_owned())
        } else {
            dump_before(&lines, i)
        };
        v.push(Ended {
            boot: b.boot(),
            end,
            status: b.status.clone(),
            to_init_ms: b.to_init_ms,
            log: log_after(&lines, i),
            dump,
        });
    }
    v
}

/// `median / max` of `ms` in seconds, or `-` when there are none.
fn median_and_max_s(ms: impl Iterator<Item = f64>) -> String {
    let mut v: Vec<f64> = ms.collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{:.1} / {:.1}", median / 1000.0, v[v.len() - 1] / 1000.0)
}

/// The last guest kernel timestamp (`[   2.517000]`) in `log`, seconds.
fn last_guest_time(log: &str) -> Option<f64> {
    log.lines().rev().find_map(|l| {
        let rest = l.trim_start().strip_prefix('[')?;
        let (t, _) = rest.split_once(']')?;
        t.trim().parse().ok()
    })
}

/// Whether `line` is one of our VMM's own log lines on stderr
/// (`[2026-12-03T23:02:30.487651Z INFO ...]`), not the guest's.
fn is_vmm_log_line(line: &str) -> bool {
    let b = line.trim_start().as_bytes();
    b.len() > 6 && b[0] == b'[' && b[1..5].iter().all(u8::is_ascii_digit) && b[5] == b'-'
}

/// The shell line running `boot` once, its VMM serving QMP for the dump.
fn boot_line(boot: &Boot, vmm_args: &[String], limit: u32) -> String {
    let cpus = boot.config.cpus;
    let mut hmp = String::from("info registers -a");
    for id in 0..cpus {
        let _ = write!(hmp, ";info lapic {id}");
    }
    let qmp = match boot.vmm {
        Vmm::Ours => vmm_args
            .iter()
            .fold(format!(" --qmp {QMP_SOCKET}"), |mut s, a| {
                let _ = write!(s, " '{a}'");
                s
            }),
        Vmm::Qemu => format!(" -qmp unix:{QMP_SOCKET},server=on,wait=off"),
    };
    format!(
        "rm -f {QMP_SOCKET}; SPAWN_QMP={QMP_SOCKET} SPAWN_HMP='{hmp}' ./{HELPER} '{}' '{MARKER}' \
         {limit} /tmp/l2.log {}{qmp} >>\"$TESTBED_LIVE\"",
        boot.label(),
        boot.vmm.command(cpus, &super::append(boot.config.quiet)),
    )
}

/// Runs the soak (`args`: `--rounds N`, `--busy`).
pub fn task(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    cmd::run(&mut crate::target::release_build(&[
        "--package",
        "vmm-cli",
    ])?)?;
    let guest = GuestFiles::default_location()?;
    let vmm = crate::target::vmm();
    let tmp = TempDir::new("vmm-soak")?;
    let helper = build_helper(&tmp.0)?;
    let busybox = std::fs::read(&guest.busybox)
        .with_context(|| format!("cannot read {}", guest.busybox.display()))?;
    let initrd = tmp.0.join("initrd.cpio");
    std::fs::write(&initrd, busybox_initramfs(&busybox, INIT, &[])?)
        .with_context(|| format!("cannot write {}", initrd.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    let spinner = o.busy.then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    });

    let load_at_start = load_average();
    let started = Instant::now();
    let mut pending = plan(o.rounds);
    pending.retain(|b| o.wants_boot(b));
    let total = pending.len();
    let mut ended: Vec<Ended> = Vec::new();
    let mut l1_faults: Vec<String> = Vec::new();
    let mut l1_symbols: Vec<String> = Vec::new();
    let mut sessions = 0;
    // With a cap per session, as many more as its faults may need.
    let most_sessions = o
        .per_l1
        .map_or(MAX_SESSIONS, |n| total.div_ceil(n) + MAX_SESSIONS);
    while !pending.is_empty() && sessions < most_sessions {
        sessions += 1;
        let now = o.per_l1.map_or(pending.len(), |n| n.min(pending.len()));
        let script: String = std::iter::once(L1_SYMBOLS.to_owned() + "\n")
            .chain(
                pending[..now]
                    .iter()
                    .map(|b| boot_line(b, &o.vmm_args, o.boot_limit) + "\n"),
            )
            .collect();
        // Each boot prints within its limit plus the dump's 5 s per line.
        let per_boot = u64::from(o.boot_limit) + 20;
        let job = Job::new(["--version"])
            .file("bzImage", &guest.bzimage)
            .file("initrd", &initrd)
            .file(HELPER, &helper)
            .with_qemu()
            .companion(&script)
            .silence_limit(Duration::from_secs(per_boot + 30))
            .timeout(Duration::from_secs(180 + now as u64 * per_boot));
        eprintln!(
            "xtask soak: L1 session {sessions}: {now} of {} boots, {} done, {:.0?} so far",
            pending.len(),
            total - pending.len(),
            started.elapsed()
        );
        let (console, fault) = match vmm_testbed::run_linux(&guest, &vmm, &job) {
            Ok(out) => (out.console, None),
            Err(TestbedError::L1Ended {
                status,
                qemu_stderr,
                console,
            }) => (
                console,
                Some(format!(
                    "session {sessions}: L1 ended early (QEMU status {status:?}): {}",
                    qemu_stderr.trim()
                )),
            ),
            Err(TestbedError::Timeout { after, console }) => (
                console,
                Some(format!("session {sessions}: timed out after {after:?}")),
            ),
            Err(TestbedError::L1Stuck { what, console }) => {
                (console, Some(format!("session {sessions}: {what}")))
            }
            Err(TestbedError::Silent { after, console }) => (
                console,
                Some(format!(
                    "session {sessions}: L1 hung (silent for {after:?})"
                )),
            ),
            Err(TestbedError::NoHeartbeat { after, console, .. }) => (
                console,
                Some(format!(
                    "session {sessions}: L1 hung (no heartbeat for {after:?})"
                )),
            ),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        for l in console.lines() {
            if let Some(syms) = l.trim().strip_prefix("@@L1-SYMS ") {
                l1_symbols.push(format!("session {sessions}: {syms}"));
            }
        }
        for e in parse(&console) {
            if let Some(pos) = pending.iter().position(|p| *p == e.boot) {
                pending.remove(pos);
                eprintln!("xtask soak: {}: {:?}", e.boot.describe(), e.end);
                ended.push(e);
            }
        }
        if let Some(fault) = fault {
            // The boots run in order: the first one left was running.
            let running = pending.first().map_or("none".to_owned(), |b| b.describe());
            let report = format!(
                "{fault}; the boot running then: {running}; L1's console ended with:\n\n```\n{}\n```",
                console_tail(&vmm_testbed::l1_panic::without_dump(&console), 30)
            );
            // Now, not only in the report at the end: a soak stopped by
            // hand keeps what its L1 faults said.
            eprintln!("xtask soak: L1 fault: {report}");
            l1_faults.push(report);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = spinner {
        let _ = s.join();
    }

    let l1 = L1 {
        sessions,
        faults: l1_faults,
        symbols: l1_symbols,
        host: format!(
            "L1's QEMU: {}; the host's load average (1, 5, 15 min): {load_at_start} at the start, \
             {} at the end",
            l1_qemu_version(),
            load_average()
        ),
    };
    let text = report(&o, &ended, &pending, &l1, started.elapsed());
    print!("{text}");
    let dir = target_dir().join("soak");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("soak-{secs}.md"));
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask soak: the report is in {}", path.display());
    Ok(())
}

/// The host's load average, as `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The first line of `qemu-system-x86_64 --version` (L1's QEMU, from `PATH`).
fn l1_qemu_version() -> String {
    std::process::Command::new(vmm_testbed::qemu::QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What the L1 sessions reported.
#[derive(Debug, Default)]
struct L1 {
    /// L1's QEMU and the host's load, as measured around the run.
    host: String,
    sessions: usize,
    /// L1s that died, hung or ran out of time.
    faults: Vec<String>,
    /// Each session's `__svm_vcpu_run` and kvm_amd `.noinstr.text`.
    symbols: Vec<String>,
}

/// The report: a table per VMM and configuration, the L1 faults, then
/// every failed boot's details.
fn report(o: &Options, ended: &[Ended], pending: &[Boot], l1: &L1, took: Duration) -> String {
    let sessions = l1.sessions;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Nested Linux boots: {} rounds, host {}, L1 `-accel {} -smp {}`, {sessions} L1 session(s){}, {:.0?}\n",
        o.rounds,
        if o.busy {
            "with one core kept busy"
        } else {
            "with no busy thread"
        },
        vmm_testbed::qemu::l1_accel(),
        vmm_testbed::qemu::l1_cpus(None),
        o.per_l1
            .map_or_else(String::new, |n| format!(" of at most {n} boot(s) each")),
        took
    );
    if !l1.host.is_empty() {
        let _ = writeln!(s, "{}\n", l1.host);
    }
    if o.boot_limit != BOOT_TIMEOUT_S {
        let _ = writeln!(
            s,
            "A boot not at its marker after {} s counts as a hang (`--boot-limit`; the default is {BOOT_TIMEOUT_S} s).\n",
            o.boot_limit
        );
    }
    if !o.vmm_args.is_empty() {
        let _ = writeln!(s, "Our VMM's added arguments: `{}`\n", o.vmm_args.join(" "));
    }
    let _ = writeln!(
        s,
        "| VMM | vCPUs | console | boots | ok | hang | reset | error | to /init, median / max (s) |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for config in configs().into_iter().filter(|c| o.wants(*c)) {
        for vmm in [Vmm::Ours, Vmm::Qemu]
            .into_iter()
            .filter(|v| o.only.is_none_or(|x| x == *v))
        {
            let mine: Vec<&Ended> = ended
                .iter()
                .filter(|e| e.boot.vmm == vmm && e.boot.config == config)
                .collect();
            let n = |end: End| mine.iter().filter(|e| e.end == end).count();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                vmm.name(),
                config.cpus,
                console_key(config.quiet),
                mine.len(),
                n(End::Ok),
                n(End::Hang),
                n(End::Reset),
                n(End::Error),
                median_and_max_s(mine.iter().filter_map(|e| e.to_init_ms))
            );
        }
    }
    let _ = writeln!(s, "\nL1 faults: {}", l1.faults.len());
    for f in &l1.faults {
        let _ = writeln!(s, "- {f}");
    }
    let _ = writeln!(s, "\nL1's kvm_amd (for the RIPs below):");
    for f in &l1.symbols {
        let _ = writeln!(s, "- {f}");
    }
    if !pending.is_empty() {
        let _ = writeln!(s, "\nnever run (L1 sessions ran out): {}", pending.len());
    }
    for e in ended.iter().filter(|e| e.end != End::Ok) {
        let last = e
            .log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !is_vmm_log_line(l));
        let _ = writeln!(
            s,
            "\n## {:?}: {} (status {})\n\nlast guest time: {}; last line: {}\n\n```\n{}\n```",
            e.end,
            e.boot.describe(),
            e.status,
            last_guest_time(&e.log).map_or("none".to_owned(), |t| format!("{t:.3} s")),
            last.unwrap_or("(none)").trim(),
            e.log.trim_end()
        );
        if !e.dump.is_empty() {
            let what = if e.end == End::Reset {
                "L1's record of each vCPU's last exits, up to the triple fault's `shutdown`"
            } else {
                "vCPUs at the time limit"
            };
            let _ = writeln!(s, "\n{what}:\n\n```\n{}\n```", e.dump);
        }
    }
    s
}

#[cfg(test)]
mod tests;
