//! `cargo xtask bench [boot|alarm|qmp] [--runs N]`: the benchmarks.
//!
//! * `qmp`: `stop`/`cont` latency, request to event, ours beside QEMU
//!   (see [`qmp`]).
//!
//! * `alarm`: the timer alarm lateness benchmark (`cargo bench -p vmm-clock
//!   --bench alarm_lateness`); further arguments go to it.
//! * `boot`: how fast a tiny PVH guest (`test_guests::hello_exit`: prints a
//!   line on COM1, exits) runs from spawn to exit, on the floor (the
//!   `bench-floor` program: the least any VMM can do on this host), on our
//!   `vmm`, and on QEMU's `microvm` machine when QEMU is installed. All
//!   three get the same ELF and 128 MiB of RAM, one vCPU, stdin from
//!   /dev/null and stdout and stderr into pipes.
//!
//! With no benchmark named, both run (alarm first).
//!
//! Per run, the boot benchmark measures, on the monotonic clock from just
//! before the spawn: the first byte on the child's stdout (a thread blocked
//! in `read` on the pipe takes the time) and the child's exit (`waitid`
//! returns); then `wait4` gives the CPU time (user + system, all threads)
//! and the peak RSS (`ru_maxrss`). Each run must end with the expected
//! status and print the guest's message, else the benchmark fails. The
//! programs take turns (round-robin, the starting program rotating each
//! round), so host drift hits them all alike, after one unmeasured warm-up
//! run each.

pub mod linux;
mod qmp;
mod sys;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// What `write_test_guest hello-exit` makes the guest print
/// (vmm-pc/examples/write_test_guest.rs).
const MESSAGE: &str = "Hello from a PVH guest\n";
/// Guest RAM for every program, MiB.
const MEMORY_MIB: u32 = 128;
/// Runs per program unless `--runs` says otherwise.
const DEFAULT_RUNS: usize = 20;
/// A run that takes longer than this is killed and fails the benchmark.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// QEMU's binary, looked up in `PATH`.
const QEMU: &str = "qemu-system-x86_64";
/// The port and exit status of QEMU's `isa-debug-exit`: the guest writes
/// 0 there, and QEMU exits with `(0 << 1) | 1`.
const QEMU_DEBUG_EXIT: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
const QEMU_EXIT_STATUS: i32 = 1;

/// Runs the benchmarks `args` ask for.
pub fn task(args: &[String]) -> Result<()> {
    match args.split_first() {
        Some((first, rest)) if first == "alarm" => alarm(rest),
        Some((first, rest)) if first == "boot" => boot(parse_runs(rest)?),
        Some((first, _)) if first == "qmp" => qmp::run(),
        _ => {
            let runs = parse_runs(args)?;
            alarm(&[])?;
            boot(runs)
        }
    }
}

fn parse_runs(args: &[String]) -> Result<usize> {
    let mut runs = DEFAULT_RUNS;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("--runs") {
            Some("") => it.next().map(String::as_str),
            Some(v) if v.starts_with('=') => Some(&v[1..]),
            _ => bail!("unknown argument `{a}` (expected boot, alarm or --runs N)"),
        };
        runs = match value.map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => n,
            _ => bail!("--runs needs a positive number"),
        };
    }
    Ok(runs)
}

/// The timer alarm lateness benchmark.
fn alarm(extra: &[String]) -> Result<()> {
    let mut c = cmd::cargo([
        "bench",
        "--package",
        "vmm-clock",
        "--bench",
        "alarm_lateness",
        "--",
    ]);
    c.args(extra);
    cmd::run(&mut c)
}

/// One program under test.
struct Program {
    /// The name in the table.
    name: &'static str,
    /// The binary.
    program: PathBuf,
    /// Its arguments.
    args: Vec<OsString>,
    /// The exit status a successful run ends with.
    status: i32,
}

impl Program {
    fn command_line(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_output: Duration,
    exit: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes test guest `kind` (`vmm-pc/examples/write_test_guest.rs`) to
/// `path`.
fn write_test_guest(kind: &str, path: &std::path::Path) -> Result<()> {
    let mut write = cmd::cargo([
        "run",
        "--quiet",
        "--release",
        "--package",
        "vmm-pc",
        "--example",
        "write_test_guest",
        "--",
        kind,
    ]);
    write.arg(path);
    cmd::run(&mut write)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => cmd::root().join(d),
        None => cmd::root().join("target"),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The boot benchmark.
fn boot(runs: usize) -> Result<()> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        bail!("the boot benchmark needs KVM, and /dev/kvm is unusable here: {e}");
    }

    cmd::run(&mut cmd::cargo([
        "build",
        "--release",
        "--package",
        "vmm-cli",
        "--package",
        "bench-floor",
    ]))?;
    let tmp = TempDir(std::env::temp_dir().join(format!("vmm-bench-boot-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0)
        .with_context(|| format!("cannot create {}", tmp.0.display()))?;
    let guest = tmp.0.join("hello-exit.elf");
    write_test_guest("hello-exit", &guest)?;
    let image =
        std::fs::read(&guest).with_context(|| format!("cannot read {}", guest.display()))?;
    if !image
        .windows(MESSAGE.len())
        .any(|w| w == MESSAGE.as_bytes())
    {
        bail!(
            "the guest {} does not hold the message {MESSAGE:?}",
            guest.display()
        );
    }

    let release = target_dir().join("release");
    let g = guest.as_os_str().to_owned();
    let mut programs = vec![
        Program {
            name: "floor",
            program: release.join("bench-floor"),
            args: vec![g.clone(), MEMORY_MIB.to_string().into()],
            status: 0,
        },
        Program {
            name: "vmm (ours)",
            program: release.join("vmm"),
            args: [
                "--kernel".into(),
                g.clone(),
                "--memory".into(),
                format!("{MEMORY_MIB}M").into(),
                "--serial".into(),
                "stdio".into(),
            ]
            .into(),
            status: 0,
        },
    ];
    match find_in_path(QEMU) {
        Some(qemu) => {
            let mut args: Vec<OsString> = [
                "-M",
                "microvm",
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-m",
                &format!("{MEMORY_MIB}M"),
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                "-device",
                QEMU_DEBUG_EXIT,
                "-kernel",
            ]
            .iter()
            .map(OsString::from)
            .collect();
            args.push(g);
            programs.push(Program {
                name: "QEMU microvm",
                program: qemu,
                args,
                status: QEMU_EXIT_STATUS,
            });
        }
        None => eprintln!("xtask: {QEMU} is not installed (not in PATH): no QEMU column"),
    }

    eprintln!("xtask: command lines (stdin /dev/null, stdout and stderr piped):");
    for p in &programs {
        eprintln!("  {:<13} {}", p.name, p.command_line());
    }

    // Warm-up: page cache, dynamic linker, KVM module state. A QEMU that
    // cannot run this guest here is left out like a missing one.
    let mut i = 0;
    while i < programs.len() {
        match run_once(&programs[i]) {
            Ok(_) => i += 1,
            Err(e) if programs[i].name == "QEMU microvm" => {
                eprintln!("xtask: QEMU cannot run the guest here, no QEMU column: {e:#}");
                programs.remove(i);
            }
            Err(e) => return Err(e.context(format!("warm-up run of {}", programs[i].name))),
        }
    }

    eprintln!(
        "xtask: {runs} runs of each of {} programs, interleaved",
        programs.len()
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::with_capacity(runs); programs.len()];
    for round in 0..runs {
        for k in 0..programs.len() {
            let i = (round + k) % programs.len();
            let s = run_once(&programs[i])
                .with_context(|| format!("run {} of {}", round + 1, programs[i].name))?;
            samples[i].push(s);
        }
    }

    print!("{}", report(&programs, &samples, runs, spawn_carry_kib()));
    Ok(())
}

/// What one run of a program gave.
struct Outcome {
    /// Just before the spawn.
    start: Instant,
    /// When the first bytes on stdout were read.
    first_output: Option<Instant>,
    /// When `waitid` saw the exit.
    exited: Instant,
    /// Killed after [`RUN_TIMEOUT`].
    timed_out: bool,
    usage: sys::Usage,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `p` once, stdin from /dev/null, stdout and stderr into pipes.
fn execute(p: &Program) -> Result<Outcome> {
    let mut c = Command::new(&p.program);
    c.args(&p.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Linux carries the RSS of the process image that exec replaces into
    // the child's ru_maxrss. With std's default posix_spawn (a vfork) that
    // image is all of xtask (about 3 MiB, more than bench-floor's own
    // peak); a pre_exec hook makes std fork instead, so only the pages the
    // fork copied (xtask's anonymous memory, under 1 MiB) are carried. The
    // report measures that carry with `true`.
    // SAFETY: the hook does nothing, which is async-signal-safe.
    unsafe {
        c.pre_exec(|| Ok(()));
    }
    let start = Instant::now();
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot start {}", p.program.display()))?;
    let pid = child.id();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("no stdout or stderr pipe");
    };
    let out_reader = thread::spawn(move || {
        let mut first = None;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    all.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        (first, all)
    });
    let err_reader = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    let (done, timer) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        let timed_out = timer.recv_timeout(RUN_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout);
        if timed_out {
            sys::kill_child(pid);
        }
        timed_out
    });

    // See the exit without reaping, so that the watchdog can never kill a
    // reused pid; then reap with the resource usage.
    let waited = sys::wait_exited(pid);
    let exited = Instant::now();
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    waited.context("waitid failed")?;
    let usage = sys::reap(pid).context("wait4 failed")?;
    let (first_output, stdout) = out_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Outcome {
        start,
        first_output,
        exited,
        timed_out,
        usage,
        stdout,
        stderr,
    })
}

/// Runs `p` once and checks its status and output.
fn run_once(p: &Program) -> Result<Sample> {
    let o = execute(p)?;
    let explain = || {
        format!(
            "\n  command: {}\n  stdout: {:?}\n  stderr: {}",
            p.command_line(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr).trim_end()
        )
    };
    if o.timed_out {
        bail!(
            "{} did not exit within {RUN_TIMEOUT:?}{}",
            p.name,
            explain()
        );
    }
    if o.usage.status.code() != Some(p.status) {
        bail!(
            "{} ended with {} (expected exit status {}){}",
            p.name,
            o.usage.status,
            p.status,
            explain()
        );
    }
    if !o
        .stdout
        .windows(MESSAGE.len())
        .any(|w| w == MESSAGE.as_bytes())
    {
        bail!("{} did not print the guest's message{}", p.name, explain());
    }
    let Some(first) = o.first_output else {
        bail!("{} printed nothing{}", p.name, explain());
    };
    Ok(Sample {
        first_output: first.duration_since(o.start),
        exit: o.exited.duration_since(o.start),
        cpu: o.usage.cpu,
        max_rss_kib: o.usage.max_rss_kib,
    })
}

/// The peak RSS `true` reports when spawned as the programs are: what the
/// spawn itself carries into ru_maxrss (see [`execute`]), KiB. None when
/// there is no `true` in `PATH`.
fn spawn_carry_kib() -> Option<u64> {
    let p = Program {
        name: "true",
        program: find_in_path("true")?,
        args: Vec::new(),
        status: 0,
    };
    let mut kib: Vec<u64> = (0..5)
        .filter_map(|_| execute(&p).ok())
        .map(|o| o.usage.max_rss_kib)
        .collect();
    kib.sort_unstable();
    kib.get(kib.len() / 2).copied()
}

/// The `q`-quantile of `values` (linear interpolation between ranks).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// One metric: its column title, unit and how to get it from a sample.
struct Metric {
    title: &'static str,
    unit: &'static str,
    get: fn(&Sample) -> f64,
}

const METRICS: [Metric; 4] = [
    Metric {
        title: "first output",
        unit: "ms",
        get: |s| s.first_output.as_secs_f64() * 1e3,
    },
    Metric {
        title: "exit",
        unit: "ms",
        get: |s| s.exit.as_secs_f64() * 1e3,
    },
    Metric {
        title: "CPU user+sys",
        unit: "ms",
        get: |s| s.cpu.as_secs_f64() * 1e3,
    },
    Metric {
        title: "peak RSS",
        unit: "MiB",
        get: |s| s.max_rss_kib as f64 / 1024.0,
    },
];

/// The report: medians and p90 per program, then ours over the others.
fn report(
    programs: &[Program],
    samples: &[Vec<Sample>],
    runs: usize,
    carry_kib: Option<u64>,
) -> String {
    // (median, p90) per program and metric.
    let stats: Vec<Vec<(f64, f64)>> = samples
        .iter()
        .map(|s| {
            METRICS
                .iter()
                .map(|m| {
                    let v: Vec<f64> = s.iter().map(m.get).collect();
                    (quantile(&v, 0.5), quantile(&v, 0.9))
                })
                .collect()
        })
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nBoot benchmark: hello_exit PVH guest, {MEMORY_MIB} MiB, 1 vCPU; \
         {runs} interleaved runs each; median (p90)\n"
    );
    let _ = write!(out, "| {:<20} |", "");
    for m in &METRICS {
        let _ = write!(out, " {:<21} |", format!("{} ({})", m.title, m.unit));
    }
    let _ = write!(out, "\n|{}|", "-".repeat(22));
    for _ in &METRICS {
        let _ = write!(out, "{}|", "-".repeat(23));
    }
    out.push('\n');
    for (p, st) in programs.iter().zip(&stats) {
        let _ = write!(out, "| {:<20} |", p.name);
        for (median, p90) in st {
            let _ = write!(out, " {:<21} |", format!("{median:.2} ({p90:.2})"));
        }
        out.push('\n');
    }
    let ours = programs.iter().position(|p| p.name == "vmm (ours)");
    for (i, p) in programs.iter().enumerate() {
        let Some(o) = ours.filter(|&o| o != i) else {
            continue;
        };
        let label = match p.name {
            "floor" => "ours / floor",
            "QEMU microvm" => "ours / QEMU",
            other => other,
        };
        let _ = write!(out, "| {label:<20} |");
        for (m, theirs) in stats[o].iter().zip(&stats[i]) {
            let _ = write!(
                out,
                " {:<21} |",
                format!("{:.2}x ({:.2}x)", m.0 / theirs.0, m.1 / theirs.1)
            );
        }
        out.push('\n');
    }
    if !programs.iter().any(|p| p.name == "QEMU microvm") {
        let _ = writeln!(out, "\n(no QEMU column: {QEMU} is missing or failed)");
    }
    let expected: Vec<String> = programs
        .iter()
        .map(|p| format!("{} {}", p.name, p.status))
        .collect();
    let _ = writeln!(
        out,
        "\nEvery run printed the message and ended with the expected status ({}; \
         QEMU's isa-debug-exit gives (0 << 1) | 1).",
        expected.join(", ")
    );
    if let Some(kib) = carry_kib {
        let _ = writeln!(
            out,
            "Peak RSS is wait4's ru_maxrss; the spawn carries some of xtask's pages \
             into it: `true` spawned the same way reports {:.2} MiB.",
            kib as f64 / 1024.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert!((quantile(&v, 0.9) - 4.6).abs() < 1e-9);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn runs_flag() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_runs(&[]).unwrap(), DEFAULT_RUNS);
        assert_eq!(parse_runs(&s(&["--runs", "5"])).unwrap(), 5);
        assert_eq!(parse_runs(&s(&["--runs=7"])).unwrap(), 7);
        assert!(parse_runs(&s(&["--runs", "0"])).is_err());
        assert!(parse_runs(&s(&["--runs"])).is_err());
        assert!(parse_runs(&s(&["--fast"])).is_err());
    }

    #[test]
    fn the_report_has_a_row_per_program_and_ratios() {
        let prog = |name| Program {
            name,
            program: PathBuf::from(name),
            args: Vec::new(),
            status: 0,
        };
        let sample = |ms: u64| Sample {
            first_output: Duration::from_millis(ms),
            exit: Duration::from_millis(2 * ms),
            cpu: Duration::from_millis(ms),
            max_rss_kib: 1024 * ms,
        };
        let programs = [prog("floor"), prog("vmm (ours)"), prog("QEMU microvm")];
        let samples = vec![vec![sample(10)], vec![sample(20)], vec![sample(40)]];
        let r = report(&programs, &samples, 1, Some(1024));
        assert!(r.contains("| ours / floor         | 2.00x (2.00x)"), "{r}");
        assert!(r.contains("| ours / QEMU          | 0.50x (0.50x)"), "{r}");
        assert!(r.contains("| floor                | 10.00 (10.00)"), "{r}");
        assert!(!r.contains("no QEMU column"), "{r}");
    }
}
