//! `cargo xtask bench [SUITE...] [--runs N] [--quick] [--vmm-arg ARG]...`: the numbers people
//! compare VMMs by, ours beside QEMU and beside a floor program in the same
//! run, reported as min / median / max and ratios.
//!
//! The suites (all but `alarm` when none is named):
//!
//! * `startup`: a minimal PVH guest (prints a line on COM1, exits) from
//!   spawn to its first byte on the console, to process exit, CPU time and
//!   peak RSS ([`startup`]); and how the first byte grows with 1 to 64
//!   vCPUs and 128 MiB to 16 GiB of RAM ([`scale`]);
//! * `exit`: guest reset to process exit, SIGTERM to process exit
//!   ([`startup`]);
//! * `memory`: the VMM's memory outside guest RAM, from `/proc/PID/smaps`,
//!   256 MiB and 2 GiB guests ([`memory`]);
//! * `pio`: the cost of one port-I/O exit to a device-less port, beside a
//!   bare `KVM_RUN` loop ([`pio`]);
//! * `irq`: a PIT timer interrupt's round trip through the IO-APIC, on
//!   KVM's irqchip and on the split one, ours and QEMU's ([`irq`]);
//! * `density`: how many 128 MiB VMs run at once, and the start rate when
//!   starting many in parallel ([`density`]);
//! * `linux`: Debian's kernel to `/init` on a real KVM (nested in the test
//!   bed on a PVM host), 1 and 2 vCPUs, quiet and verbose ([`linux`]);
//! * `blk`: virtio-blk-pci from inside a Linux guest with `O_DIRECT`
//!   (1 MiB sequential write and read, 4 KiB random reads at queue depth
//!   1 and 32, host CPU per I/O) beside QEMU's best `aio=`, on the same
//!   raw image and the same real KVM as `linux`; and what the PCI bus
//!   adds to our start-up ([`blk`]);
//! * `net`: virtio-net-pci on a tap between a Linux guest and L1 (TCP
//!   stream each way, 1-byte request/response, host CPU per GiB) beside
//!   QEMU's, nested in the test bed ([`net`]);
//! * `qmp`: `stop`/`cont` request-to-event latency ([`qmp`]);
//! * `suspend`: ACPI S3, guest's suspend to `SUSPEND` and `system_wakeup`
//!   to the guest running again, beside QEMU's `-M pc` ([`suspend`]);
//! * `alarm`: the timer alarm lateness benchmark of vmm-clock (criterion
//!   style, its own report; further arguments go to it).
//!
//! Every suite takes turns between the programs (A B A B, the starting
//! program rotating), after an unmeasured warm-up run of each. QEMU is
//! Debian's `qemu-system-x86_64` (installed with apt-get when missing and
//! possible), `-M microvm` with KVM. The floor is `bench-floor`: the
//! least any VMM can do on this host to run the guest.
//!
//! `--vmm-arg ARG` (repeatable) adds ARG to our VMM's command line in the
//! suites that run it on this host (all but `linux`), e.g.
//! `--vmm-arg=--seccomp=off` to measure what the filters cost; the report's
//! preamble names them.
//!
//! The report goes to the terminal and to `target/bench/`: `report.md`,
//! `results.csv`, `samples.csv` and `chart.png` (start-up and boot-time
//! distributions).

mod blk;
mod chart;
mod density;
mod irq;
mod linux;
mod memory;
mod net;
mod pio;
mod qmp;
mod report;
mod scale;
mod session;
mod snapshot;
mod startup;
mod suspend;
mod sys;
mod watchdog;

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, which};
use report::{Section, Who};

/// What the hello guests print (vmm-pc/examples/write_test_guest.rs).
const MESSAGE: &str = "Hello from a PVH guest\n";
/// Runs per program unless `--runs` says otherwise.
const DEFAULT_RUNS: usize = 20;
/// Runs per program with `--quick`.
const QUICK_RUNS: usize = 3;
/// A run that takes longer than this is killed and fails the benchmark.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// QEMU's binary, looked up in `PATH`.
const QEMU: &str = "qemu-system-x86_64";
/// QEMU's `isa-debug-exit`: the guest writes 0 to port 0xf4 and QEMU exits
/// with `(0 << 1) | 1`.
const QEMU_DEBUG_EXIT: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
const QEMU_DEBUG_EXIT_STATUS: i32 = 1;

mod options;
use options::Options;

/// Runs the benchmarks `args` ask for.
/// `cargo xtask soak`: nested Linux boots counted, not timed (see
/// `linux/soak.rs`).
pub fn soak(args: &[String]) -> Result<()> {
    linux::soak::task(args)
}

pub fn task(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    if o.wants("alarm") {
        alarm(&o.alarm_args)?;
    }
    if o.suites.iter().all(|s| *s == "alarm") {
        return Ok(());
    }

    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = kvm_ok {
        bail!("the benchmarks need KVM, and /dev/kvm is unusable here: {e}");
    }
    cmd::run(&mut crate::target::release_build(&[
        "--package",
        "vmm-cli",
        "--package",
        "bench-floor",
    ])?)?;
    let qemu = ensure_qemu();
    let tmp = TempDir::new("vmm-bench")?;
    let ctx = Ctx {
        runs: o.runs,
        quick: o.quick,
        vmm_args: o.vmm_args.clone(),
        tmp: tmp.0.clone(),
        qemu,
    };

    let started = Instant::now();
    let mut sections: Vec<Section> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for suite in &o.suites {
        let t = Instant::now();
        eprintln!("\nxtask: === bench {suite} ===");
        let result = match *suite {
            "startup" => startup::startup(&ctx),
            "exit" => startup::exit(&ctx),
            "watchdog" => watchdog::run(&ctx),
            "snapshot" => snapshot::run(&ctx),
            "memory" => memory::run(&ctx),
            "pio" => pio::run(&ctx),
            "irq" => irq::run(&ctx),
            "density" => density::run(&ctx),
            "linux" => linux::run(&ctx),
            "qmp" => qmp::run(&ctx),
            "suspend" => suspend::run(&ctx),
            "blk" => blk::run(&ctx),
            "net" => net::run(&ctx),
            _ => continue,
        };
        match result {
            Ok(mut s) => {
                eprintln!(
                    "xtask: bench {suite} took {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                for x in &s {
                    print!("\n{}", report::section_markdown(x));
                }
                sections.append(&mut s);
            }
            Err(e) => {
                eprintln!("xtask: bench {suite} failed: {e:#}");
                failures.push(format!("{suite}: {e:#}"));
            }
        }
    }

    let preamble = host_description(&ctx, o.runs, started.elapsed());
    let dir = target_dir().join("bench");
    report::write_files(&dir, &sections, &preamble)?;
    match chart::draw(&dir.join("chart.png"), &sections) {
        Ok(true) => eprintln!("xtask: chart: {}", dir.join("chart.png").display()),
        Ok(false) => eprintln!("xtask: no start-up or boot-time samples: no chart"),
        Err(e) => failures.push(format!("chart: {e:#}")),
    }
    println!("\n{preamble}");
    println!(
        "Report: {} (and results.csv, samples.csv, chart.png there)",
        dir.join("report.md").display()
    );
    if !failures.is_empty() {
        bail!(
            "{} benchmark(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// What every suite needs.
pub struct Ctx {
    /// Runs per program.
    pub runs: usize,
    /// `--quick`: fewer and smaller runs, for CI.
    pub quick: bool,
    /// Extra arguments for our VMM (`--vmm-arg`).
    pub vmm_args: Vec<String>,
    /// A scratch folder, removed at the end.
    pub tmp: PathBuf,
    /// QEMU, when installed.
    pub qemu: Option<PathBuf>,
}

impl Ctx {
    /// Writes test guest `kind` into the scratch folder (once).
    fn guest(&self, kind: &str) -> Result<PathBuf> {
        let path = self.tmp.join(format!("{}.elf", kind.replace(':', "-")));
        if !path.exists() {
            write_test_guest(kind, &path)?;
        }
        Ok(path)
    }
}

/// The host, the programs' versions and the run's size, for the report.
fn host_description(ctx: &Ctx, runs: usize, took: Duration) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kvm = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect::<Vec<_>>()
        .join(", ");
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let qemu = ctx
        .qemu
        .as_ref()
        .and_then(|q| Command::new(q).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|| "QEMU not installed".into());
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let extra = if ctx.vmm_args.is_empty() {
        String::new()
    } else {
        format!("; our VMM with `{}`", ctx.vmm_args.join(" "))
    };
    format!(
        "Host: {cpu}, {cores} cores, Linux {kernel}, KVM module {kvm}; {qemu}. \
         Ours and the floor built for {}. \
         {runs} runs per program{}{extra}; {date}; the suites took {:.0} s.",
        crate::target::describe(),
        if ctx.quick { " (--quick)" } else { "" },
        took.as_secs_f64()
    )
}

/// QEMU's path; installs Debian's `qemu-system-x86` when it is missing and
/// this is a Debian machine where we are root. None (with a message) when
/// there is still no QEMU: the report then has no QEMU column.
fn ensure_qemu() -> Option<PathBuf> {
    let q = which(QEMU).or_else(|| {
        cmd::apt_install("qemu-system-x86");
        which(QEMU)
    });
    if q.is_none() {
        eprintln!("xtask: {QEMU} is not installed and could not be: no QEMU column");
    }
    q
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

/// How a run must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exit status.
    Code(i32),
    /// Killed by this signal (the floor has no SIGTERM handler).
    Signal(i32),
}

impl Expect {
    fn matches(self, s: ExitStatus) -> bool {
        match self {
            Expect::Code(c) => s.code() == Some(c),
            Expect::Signal(n) => s.signal() == Some(n),
        }
    }
}

/// One program under test.
#[derive(Debug, Clone)]
struct Program {
    who: Who,
    /// The binary.
    program: PathBuf,
    /// Its arguments.
    args: Vec<OsString>,
    /// How a good run ends.
    expect: Expect,
    /// Extra environment variables.
    env: Vec<(OsString, OsString)>,
}

impl Program {
    fn command_line(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
        s.push_str(&self.program.display().to_string());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// The floor program on `guest` with `memory_mib` of RAM.
    fn floor(guest: &Path, memory_mib: u32) -> Self {
        Self {
            who: Who::Floor,
            program: crate::target::release_dir().join("bench-floor"),
            args: vec![guest.into(), memory_mib.to_string().into()],
            expect: Expect::Code(0),
            env: Vec::new(),
        }
    }

    /// Our VMM on `guest`, serial console on stdout, with the
    /// `--vmm-arg`s.
    fn ours(ctx: &Ctx, guest: &Path, memory_mib: u32) -> Self {
        let mut args: Vec<OsString> = vec![
            "--kernel".into(),
            guest.into(),
            "--memory".into(),
            format!("{memory_mib}M").into(),
            "--serial".into(),
            "stdio".into(),
        ];
        args.extend(ctx.vmm_args.iter().map(OsString::from));
        Self {
            who: Who::Ours,
            program: crate::target::vmm(),
            args,
            expect: Expect::Code(0),
            env: Vec::new(),
        }
    }

    /// QEMU's `machine` (`microvm` or `pc`) on `guest`, KVM, one vCPU,
    /// nothing but the serial console on stdout and `isa-debug-exit`.
    fn qemu(qemu: &Path, machine: &str, guest: &Path, memory_mib: u32) -> Self {
        let mut args: Vec<OsString> = [
            "-M",
            machine,
            "-accel",
            "kvm",
            "-cpu",
            // Plain `host` aborts on an MSR on this kind of host.
            "host,-arch-capabilities",
            "-m",
            &format!("{memory_mib}M"),
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
        args.push(guest.into());
        Self {
            who: Who::Qemu,
            program: qemu.to_owned(),
            args,
            expect: Expect::Code(QEMU_DEBUG_EXIT_STATUS),
            env: Vec::new(),
        }
    }

    fn expect(mut self, e: Expect) -> Self {
        self.expect = e;
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Whether it runs with `key` in its environment.
    fn has_env(&self, key: &str) -> bool {
        self.env.iter().any(|(k, _)| k == key)
    }
}

/// What one run of a program gave.
struct Outcome {
    /// Just before the spawn.
    start: Instant,
    /// Each read from stdout: when, and the output's length after it.
    chunks: Vec<(Instant, usize)>,
    /// When `on_output` reported (a signal sent, say).
    marked: Option<Instant>,
    /// When `waitid` saw the exit.
    exited: Instant,
    /// Killed after [`RUN_TIMEOUT`].
    timed_out: bool,
    usage: sys::Usage,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Outcome {
    /// When the output first reached `len` bytes.
    fn time_of_byte(&self, offset: usize) -> Option<Instant> {
        self.chunks
            .iter()
            .find(|(_, end)| *end > offset)
            .map(|(t, _)| *t)
    }

    fn first_output(&self) -> Option<Duration> {
        self.chunks
            .first()
            .map(|(t, _)| t.duration_since(self.start))
    }

    /// The time from the last output to the exit.
    fn last_output_to_exit(&self) -> Option<Duration> {
        self.chunks
            .last()
            .map(|(t, _)| self.exited.duration_since(*t))
    }
}

/// A callback run in the stdout reader when the output holds the guest's
/// message: gets the child's pid, returns the instant it wants recorded.
type OnMessage = Box<dyn FnOnce(u32) -> Option<Instant> + Send>;

/// Runs `p` once, stdin from /dev/null, stdout and stderr into pipes;
/// `on_message` runs once the output holds [`MESSAGE`].
fn execute(p: &Program, on_message: Option<OnMessage>) -> Result<Outcome> {
    let mut c = Command::new(&p.program);
    c.args(&p.args)
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Linux carries the RSS of the process image that exec replaces into
    // the child's ru_maxrss. With std's default posix_spawn (a vfork) that
    // image is all of xtask (about 3 MiB, more than bench-floor's own
    // peak); a pre_exec hook makes std fork instead, so only the pages the
    // fork copied (xtask's anonymous memory, under 1 MiB) are carried. The
    // start-up report measures that carry with `true`.
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
        let mut chunks = Vec::new();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut on_message = on_message;
        let mut marked = None;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let now = Instant::now();
                    all.extend_from_slice(&buf[..n]);
                    chunks.push((now, all.len()));
                    if on_message.is_some() && contains(&all, MESSAGE.as_bytes()) {
                        if let Some(f) = on_message.take() {
                            marked = f(pid);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        (chunks, all, marked)
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
            sys::signal_child(pid, libc::SIGKILL);
        }
        timed_out
    });

    // See the exit without reaping, so that neither the watchdog nor an
    // `on_message` callback can ever signal a reused pid; then reap with
    // the resource usage.
    let waited = sys::wait_exited(pid);
    let exited = Instant::now();
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    let (chunks, stdout, marked) = out_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
    waited.context("waitid failed")?;
    let usage = sys::reap(pid).context("wait4 failed")?;
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Outcome {
        start,
        chunks,
        marked,
        exited,
        timed_out,
        usage,
        stdout,
        stderr,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `p` once and checks that it ended as expected, printing `expect_out`.
fn run_checked(p: &Program, expect_out: &str, on_message: Option<OnMessage>) -> Result<Outcome> {
    let o = execute(p, on_message)?;
    let explain = || {
        format!(
            "\n  command: {}\n  stdout: {:?}\n  stderr: {}",
            p.command_line(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr).trim_end()
        )
    };
    let name = p.who.name();
    if o.timed_out {
        bail!("{name} did not exit within {RUN_TIMEOUT:?}{}", explain());
    }
    if !p.expect.matches(o.usage.status) {
        bail!(
            "{name} ended with {} (expected {:?}){}",
            o.usage.status,
            p.expect,
            explain()
        );
    }
    if !contains(&o.stdout, expect_out.as_bytes()) {
        bail!("{name} did not print {expect_out:?}{}", explain());
    }
    Ok(o)
}

/// Runs each program once unmeasured (page cache, dynamic linker, KVM
/// module state), dropping a QEMU that cannot run the guest here (with a
/// message) as if it were missing.
fn warm_up(
    programs: &mut Vec<Program>,
    expect_out: &str,
    on_message: impl Fn() -> Option<OnMessage>,
) -> Result<()> {
    let mut i = 0;
    while i < programs.len() {
        match run_checked(&programs[i], expect_out, on_message()) {
            Ok(_) => i += 1,
            Err(e) if programs[i].who == Who::Qemu => {
                eprintln!("xtask: QEMU cannot run this guest here, no QEMU column: {e:#}");
                programs.remove(i);
            }
            Err(e) => return Err(e.context(format!("warm-up run of {}", programs[i].who.name()))),
        }
    }
    Ok(())
}

/// Runs every program `runs` times, taking turns (the first program
/// rotating each round), and hands each outcome to `record`.
fn interleaved(
    programs: &[Program],
    runs: usize,
    expect_out: &str,
    on_message: impl Fn() -> Option<OnMessage>,
    mut record: impl FnMut(&Program, &Outcome) -> Result<()>,
) -> Result<()> {
    for round in 0..runs {
        for k in 0..programs.len() {
            let p = &programs[(round + k) % programs.len()];
            let o = run_checked(p, expect_out, on_message())
                .with_context(|| format!("run {} of {}", round + 1, p.who.name()))?;
            record(p, &o)?;
        }
    }
    Ok(())
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A fresh folder in `parent` (which is made if missing).
    fn new_in(parent: &Path, prefix: &str) -> Result<Self> {
        let dir = parent.join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes test guest `kind` (`vmm-pc/examples/write_test_guest.rs`) to
/// `path`.
pub(crate) fn write_test_guest(kind: &str, path: &Path) -> Result<()> {
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

pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => cmd::root().join(d),
        None => cmd::root().join("target"),
    }
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

    fn parse(v: &[&str]) -> Result<Options> {
        Options::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_line() {
        let all = parse(&[]).unwrap();
        assert_eq!(all.runs, DEFAULT_RUNS);
        assert!(!all.quick);
        assert_eq!(all.suites.len(), options::SUITES.len() - 1);
        assert!(!all.wants("alarm"));
        assert_eq!(parse(&["--runs", "5"]).unwrap().runs, 5);
        assert_eq!(parse(&["--runs=7"]).unwrap().runs, 7);
        let q = parse(&["--quick"]).unwrap();
        assert_eq!((q.runs, q.quick), (QUICK_RUNS, true));
        assert_eq!(parse(&["--quick", "--runs", "2"]).unwrap().runs, 2);
        assert!(all.vmm_args.is_empty());
        let v = parse(&["--vmm-arg", "--seccomp", "--vmm-arg=off", "pio"]).unwrap();
        assert_eq!(
            (v.vmm_args, v.suites),
            (vec!["--seccomp".to_owned(), "off".to_owned()], vec!["pio"])
        );
        let some = parse(&["pio", "boot", "pio"]).unwrap();
        assert_eq!(some.suites, ["startup", "pio"]);
        let a = parse(&["alarm", "--", "--x"]).unwrap();
        assert_eq!(
            (a.suites.clone(), a.alarm_args.clone()),
            (vec!["alarm"], vec!["--x".to_owned()])
        );
        for bad in [
            &["--runs", "0"][..],
            &["--runs"],
            &["--fast"],
            &["bogus"],
            &["--vmm-arg"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expected_endings() {
        assert!(Expect::Code(1).matches(ExitStatus::from_raw(1 << 8)));
        assert!(!Expect::Code(0).matches(ExitStatus::from_raw(1 << 8)));
        assert!(Expect::Signal(15).matches(ExitStatus::from_raw(15)));
        assert!(!Expect::Signal(15).matches(ExitStatus::from_raw(0)));
    }
}
