//! Running L1 under QEMU with TCG (`-cpu max` emulates AMD SVM, so L1 has a
//! real KVM whatever the host's is).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::markers::{self, Parsed};
use crate::process::{die_with_parent, drain};
use crate::{Outcome, TestbedError};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Set to 1, this environment variable makes batch runs copy L1's console
/// to stderr as it comes (to watch a long job).
pub const ECHO_ENV: &str = "VMM_TESTBED_ECHO";

/// Overrides L1's `-accel` value (default `tcg`), to measure another
/// set-up of L1 with `cargo xtask soak` (e.g. `tcg,thread=single`).
pub const ACCEL_ENV: &str = "VMM_TESTBED_ACCEL";

/// L1's `-accel`: [`ACCEL_ENV`] or `tcg`.
pub fn l1_accel() -> String {
    std::env::var(ACCEL_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "tcg".to_owned())
}

/// Overrides L1's vCPU count (default [`L1_CPUS`]), to measure L1 with
/// one (`VMM_TESTBED_L1_CPUS=1 cargo xtask soak`).
pub const CPUS_ENV: &str = "VMM_TESTBED_L1_CPUS";

/// L1's vCPUs: two. With two (multi-threaded TCG, one host thread each)
/// nested L2 boots under both our VMM and QEMU hang or reset now and then:
/// each hang caught had an L2 vCPU holding L1's own registers from just
/// after L1's emulated `VMRUN`, a fault of TCG's SVM emulation. With one,
/// `cargo xtask soak` saw no such failure, but two of the Linux tests
/// (QMP clients beside a 2-vCPU guest) timed out in a CI rehearsal with
/// one, cause not found; so two stays the default until that is. Verbose
/// boots, where the fault showed, get one: `cargo xtask run` for guests of
/// up to two vCPUs and the Linux benchmark's verbose rows
/// (docs/nested/README.md).
pub const L1_CPUS: u32 = 2;

/// L1's `-smp`: [`CPUS_ENV`] when it is a number from 1 to 16, else the
/// job's choice, else [`L1_CPUS`].
pub fn l1_cpus(job: Option<u32>) -> u32 {
    std::env::var(CPUS_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| (1..=16).contains(n))
        .or(job)
        .unwrap_or(L1_CPUS)
}

/// L1's kernel command line: quiet, so that its console carries our lines.
/// `no_timer_check`: L1 runs under TCG with no hypervisor signature, so
/// its kernel times IRQ 0 through the IO-APIC at boot, and on a loaded
/// host TCG can starve that check until the kernel panics with "IO-APIC +
/// timer doesn't work!" (seen on 2026-12-03 in the `linux_migration`
/// test's first try, with three nested test beds on two cores). The
/// timer does work under TCG; the check only measures the host's load.
///
/// A soft lockup of L1's own kernel: reported after 50 s
/// (`watchdog_thresh=25`; the default 10 gives 20 s, which a loaded host
/// can reach), then L1 panics (`softlockup_panic=1`) and, its console now
/// verbose, prints its whole kernel log again (`panic_print` bit `0x20`): the
/// report's registers and backtrace, which the quiet console hid. A hung
/// L1 often has no CPU left for a user-space reporter (one CPU held in L2
/// by TCG's fault, the other spinning on it), so the kernel prints them.
/// Before the log, the panic prints every task's state (`0x01`: where
/// each of the VMM's threads sleeps) and every CPU's backtrace (`0x40`).
///
/// A silent L1 is sent an NMI by the test bed (`l1_monitor`), and
/// `unknown_nmi_panic` makes it the same panic: L1 then says where it is
/// even when nothing in it would print a word.
///
/// A one-CPU L1 adds [`PERIODIC_TICK`] (see there).
pub const L1_CMDLINE: &str = "console=ttyS0 loglevel=0 quiet panic=-1 mitigations=off \
     no_timer_check watchdog_thresh=25 softlockup_panic=1 panic_print=0x61 unknown_nmi_panic";

/// What a one-CPU L1 adds to [`L1_CMDLINE`]: a periodic tick (its local
/// APIC timer in periodic mode, QEMU re-arming it itself). With the
/// default one-shot timer, programmed afresh at each interrupt, a one-CPU
/// L1 now and then went to sleep for good, its CPU halted in the idle
/// loop and every task asleep (the guest's vCPU thread in
/// `kvm_vcpu_block`), until anything else interrupted it: a key pressed
/// over QMP woke it and the job ran on to its end (2026-12-04). So TCG
/// lost a one-shot timer interrupt, and the next one is never programmed.
/// Seen in three of four runs of `linux_vsock`'s two tests side by side
/// in one-CPU L1s, in one of two with `nohz=off` alone, in none of three
/// with both. A two-CPU L1 keeps the one-shot tick: with the periodic one
/// it faulted in 5 of 35 soak boots (triple faults, a kernel stack
/// overflow, CPUs that took no NMI: TCG's SVM faults, which more
/// interrupts during L2's runs seem to meet more often), against 4 and 1
/// in 100 before (docs/nested/README.md).
pub const PERIODIC_TICK: &str = "nohz=off highres=off";

/// Whether QEMU is installed.
pub fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The QEMU command for L1 (without its console arguments).
pub fn l1_command(kernel: &Path, initrd: &Path, memory_mib: u32, cpus: Option<u32>) -> Command {
    let mut c = Command::new(QEMU);
    c.args(["-accel", &l1_accel(), "-cpu", "max"])
        .args(["-smp", &l1_cpus(cpus).to_string()])
        .args(["-m", &format!("{memory_mib}M")])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &l1_cmdline(l1_cpus(cpus))]);
    c
}

/// Adds words to L1's kernel command line ([`L1_CMDLINE`]), to try an L1
/// setting without a rebuild (`VMM_TESTBED_L1_APPEND="nohz=off"`).
pub const APPEND_ENV: &str = "VMM_TESTBED_L1_APPEND";

/// The kernel command line of an L1 with `cpus` CPUs: [`L1_CMDLINE`],
/// [`PERIODIC_TICK`] for one CPU, then [`APPEND_ENV`].
pub fn l1_cmdline(cpus: u32) -> String {
    let mut line = L1_CMDLINE.to_owned();
    if cpus == 1 {
        line = format!("{line} {PERIODIC_TICK}");
    }
    match std::env::var(APPEND_ENV) {
        Ok(extra) if !extra.trim().is_empty() => format!("{line} {}", extra.trim()),
        _ => line,
    }
}

/// L1's virtio disks, in order: QEMU's `-drive`, a comma in a path doubled.
pub fn add_l1_disks(cmd: &mut Command, disks: &[PathBuf]) {
    for d in disks {
        let path = d.display().to_string().replace(',', ",,");
        cmd.arg("-drive")
            .arg(format!("file={path},if=virtio,format=raw"));
    }
}

/// A temporary file for the L1 initramfs, removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `bytes` to a fresh file in the temp folder.
    pub fn new(bytes: &[u8]) -> Result<Self, TestbedError> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("vmm-testbed-l1-{}-{n}.cpio", std::process::id()));
        std::fs::write(&path, bytes).map_err(|e| TestbedError::Write(path.clone(), e))?;
        Ok(Self(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills and reaps the child when dropped (every exit path cleans up).
pub(crate) struct Reaper(pub(crate) Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// What QEMU's reset log says about how L1 ended: its `Triple fault` and
/// reset lines, without the register dumps.
pub fn reset_log_summary(log: &str) -> String {
    let resets = log.matches("CPU Reset").count();
    let triple = log.matches("Triple fault").count();
    format!("QEMU's reset log: {resets} CPU resets (2 at start-up), {triple} triple faults")
}

/// Runs L1 in batch mode until the job's end marker or `timeout`; with
/// `serial2`, L1's second serial port is a Unix socket QEMU serves there
/// (QEMU starts L1 once a client has connected).
///
/// With `silence`, an L1 whose console stays silent that long (a hung L1)
/// is killed and the run ends with [`TestbedError::Silent`]. With `live`,
/// L1's console is also appended to that file as it comes (see
/// [`crate::Job::live_console`]). An L1 that reports one of its CPUs stuck
/// for [`L1_STUCK_LIMIT`] ends the run with [`TestbedError::L1Stuck`].
/// What L1 sampled of the guest's vCPUs is kept for
/// [`crate::l2_exits::take_last_run`].
pub fn run_batch(
    cmd: Command,
    timeout: Duration,
    serial2: Option<&Path>,
    silence: Option<Duration>,
    live: Option<&Path>,
) -> Result<Outcome, TestbedError> {
    let beat = crate::heartbeat::Limits::default();
    let result = run_batch_inner(cmd, timeout, serial2, silence, live, beat);
    // What L1 saw of the L2 vCPUs, kept for a test that fails later.
    let console = match &result {
        Ok(o) => o.l1_console.as_str(),
        Err(
            TestbedError::L1Ended { console, .. }
            | TestbedError::Timeout { console, .. }
            | TestbedError::Silent { console, .. }
            | TestbedError::NoHeartbeat { console, .. }
            | TestbedError::L1Stuck { console, .. },
        ) => console.as_str(),
        Err(_) => "",
    };
    crate::l2_exits::record(console);
    result
}

fn run_batch_inner(
    mut cmd: Command,
    timeout: Duration,
    serial2: Option<&Path>,
    silence: Option<Duration>,
    live: Option<&Path>,
    beat: crate::heartbeat::Limits,
) -> Result<Outcome, TestbedError> {
    let start = Instant::now();
    // QEMU logs CPU resets and triple faults: an L1 that ends without a
    // word (a triple fault under `-no-reboot`) is then told apart from
    // one that powered off.
    let reset_log = TempFile(std::env::temp_dir().join(format!(
        "vmm-testbed-qemu-{}-{:?}.log",
        std::process::id(),
        std::thread::current().id()
    )));
    cmd.args(["-d", "cpu_reset", "-D"])
        .arg(&reset_log.0)
        .args(["-serial", "stdio"]);
    // L1's heartbeat (crate::heartbeat): a hung L1 is named within a
    // minute, not at the time limit.
    let heartbeat = TempFile(std::env::temp_dir().join(format!(
        "vmm-testbed-heartbeat-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )));
    let _ = std::fs::remove_file(&heartbeat.0);
    let mut watch = crate::heartbeat::Watch::new(beat);
    let mut last_look = Instant::now();
    // A run that ends at a limit first asks QEMU where L1's CPUs are.
    let qmp = TempFile(crate::l1_monitor::socket_path());
    let _ = std::fs::remove_file(&qmp.0);
    cmd.args(crate::l1_monitor::qmp_args(&qmp.0));
    if let Some(path) = serial2 {
        cmd.arg("-serial")
            .arg(format!("unix:{},server=on,wait=on", path.display()));
    }
    cmd.args(crate::heartbeat::qemu_args(&heartbeat.0, serial2.is_some()));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = Reaper(cmd.spawn().map_err(|e| TestbedError::Tool(QEMU, e))?);
    let stderr = drain(child.0.stderr.take().ok_or(TestbedError::NoPipe)?);
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let l1_ready_at = Arc::new(Mutex::new(None::<Duration>));
    let mut stdout = child.0.stdout.take().ok_or(TestbedError::NoPipe)?;
    let echo = std::env::var_os(ECHO_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    let mut live = match live {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| TestbedError::Tool("the live console file", e))?,
        ),
        None => None,
    };
    let reader = {
        let console = Arc::clone(&console);
        let ready = Arc::clone(&l1_ready_at);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if echo {
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                if let Some(f) = live.as_mut() {
                    use std::io::Write;
                    let _ = f.write_all(&buf[..n]);
                }
                let mut c = console.lock().unwrap_or_else(|e| e.into_inner());
                c.extend_from_slice(&buf[..n]);
                let mut r = ready.lock().unwrap_or_else(|e| e.into_inner());
                if r.is_none() && String::from_utf8_lossy(&c).contains(markers::L1_READY) {
                    *r = Some(start.elapsed());
                }
            }
        })
    };
    let text =
        || String::from_utf8_lossy(&console.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let console_len = || console.lock().unwrap_or_else(|e| e.into_inner()).len();
    // At a limit: L1's CPUs' registers, a key press (does a sleeping L1
    // wake?), then an NMI that L1 panics on, printing every CPU's
    // backtrace and every task (l1_monitor).
    let with_l1_report = || {
        let line = crate::l1_monitor::l1_cpus_line(&qmp.0, &text());
        let before = console_len();
        let key = crate::l1_monitor::press_key(&qmp.0);
        if key.is_ok() {
            std::thread::sleep(POKE_WAIT);
        }
        let poke =
            crate::l1_monitor::poke_line(&key, console_len().saturating_sub(before), POKE_WAIT);
        let line = format!("{line}\n{poke}");
        let before = console_len();
        let mut nmi = crate::l1_monitor::inject_nmi(&qmp.0);
        if crate::l1_monitor::nmi_sent(&nmi) {
            // Seen in CI rehearsals: an L1 silent after the NMI (TCG held
            // or dropped it); a second one is cheap beside a lost report.
            if !wait_for_growth(&console_len, before, NMI_ANSWER) {
                let again = crate::l1_monitor::inject_nmi(&qmp.0);
                let again = again.trim_start_matches(crate::l1_monitor::NMI_MARKER);
                nmi = format!(
                    "{nmi}; L1 silent for {} s, another NMI:{again}",
                    NMI_ANSWER.as_secs()
                );
                wait_for_growth(&console_len, before, NMI_ANSWER);
            }
            wait_until_quiet(&console_len, NMI_QUIET, NMI_DRAIN);
        }
        markers::normalize(&with_panic_summary(format!("{}\n{line}\n{nmi}\n", text())))
    };
    let (mut last_len, mut last_change) = (0, Instant::now());
    let parsed = loop {
        let now = text();
        let p = markers::parse(&now);
        if p.finished() {
            break p;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            // QEMU ended: read what is left, then judge.
            let _ = reader.join();
            let p = markers::parse(&text());
            if p.finished() {
                break p;
            }
            let mut err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            let log = std::fs::read_to_string(&reset_log.0).unwrap_or_default();
            err.push_str(&reset_log_summary(&log));
            // L1 panics at its soft-lockup report (L1_CMDLINE): a hung L1.
            let all = text();
            if let Some(what) = l1_stuck(&all) {
                return Err(TestbedError::L1Stuck {
                    what,
                    console: markers::normalize(&with_panic_summary(all)),
                });
            }
            return Err(TestbedError::L1Ended {
                status: status.code(),
                qemu_stderr: err,
                console: markers::normalize(&with_panic_summary(text())),
            });
        }
        if start.elapsed() > timeout {
            return Err(TestbedError::Timeout {
                after: timeout,
                console: with_l1_report(),
            });
        }
        if last_look.elapsed() >= HEARTBEAT_LOOK {
            last_look = Instant::now();
            let beats = crate::heartbeat::file_len(&heartbeat.0);
            if let Some(after) = watch.check(beats, last_look) {
                return Err(TestbedError::NoHeartbeat {
                    after,
                    beats: watch.beats(),
                    console: with_l1_report(),
                });
            }
        }
        let len = console_len();
        if len != last_len {
            if let Some(what) = l1_stuck(&now) {
                // L1 panics on it and prints its log again (L1_CMDLINE):
                // give that a few seconds to come.
                let drain_end = Instant::now() + STUCK_DRAIN;
                while Instant::now() < drain_end && matches!(child.0.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_millis(200));
                let all = text();
                return Err(TestbedError::L1Stuck {
                    what: l1_stuck(&all).unwrap_or(what),
                    console: markers::normalize(&with_panic_summary(all)),
                });
            }
            (last_len, last_change) = (len, Instant::now());
        } else if let Some(limit) = silence.filter(|&l| last_change.elapsed() > l) {
            return Err(TestbedError::Silent {
                after: limit,
                console: with_l1_report(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let total = start.elapsed();
    let l1_ready = *l1_ready_at.lock().unwrap_or_else(|e| e.into_inner());
    drop(child);
    outcome(parsed, text(), l1_ready, total)
}

/// `console` with the summary of L1's panic, if it printed one, added at
/// its end (`l1_panic`), where the retry record's tail keeps it.
fn with_panic_summary(mut console: String) -> String {
    for line in crate::l1_panic::summary(&console) {
        console.push_str(&line);
        console.push('\n');
    }
    console
}

/// How often a batch run looks at L1's heartbeat file.
const HEARTBEAT_LOOK: Duration = Duration::from_millis(500);

/// How long a run at its limit watches L1's console after the key press.
const POKE_WAIT: Duration = Duration::from_secs(10);

/// After the NMI at a limit: L1's panic output is over once its console
/// has been still for [`NMI_QUIET`], or at [`NMI_DRAIN`].
const NMI_QUIET: Duration = Duration::from_secs(3);
const NMI_DRAIN: Duration = Duration::from_secs(30);
/// How long L1 gets to start printing after an NMI before it gets
/// another.
const NMI_ANSWER: Duration = Duration::from_secs(10);

/// Waits until `len` (a console's length) grows past `from`, or `limit`
/// has passed; whether it grew.
fn wait_for_growth(len: &dyn Fn() -> usize, from: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if len() > from {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    len() > from
}

/// Waits until `len` (a console's length) has not changed for `quiet`, or
/// `limit` has passed.
fn wait_until_quiet(len: &dyn Fn() -> usize, quiet: Duration, limit: Duration) {
    let start = Instant::now();
    let (mut last, mut since) = (len(), Instant::now());
    while start.elapsed() < limit && since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(100));
        let now = len();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// How long one of L1's CPUs may be stuck in its kernel (by L1's own
/// soft-lockup reports, every 26-28 s) before the run counts as a hung
/// L1: the second report. Seen: an L1 CPU stuck in our VMM's main thread
/// for over 1100 s in a soak (its console never silent), and in CI
/// rehearsals after the guest had powered off (the VMM on its way out);
/// none of them ever came back.
pub const L1_STUCK_LIMIT: Duration = Duration::from_secs(50);

/// How long a run that met [`L1_STUCK_LIMIT`] waits for L1's panic (its
/// kernel log printed again, every task's state before it) before it
/// ends; L1 ends itself once it has printed them (`panic=-1`).
const STUCK_DRAIN: Duration = Duration::from_secs(30);

/// L1's last soft-lockup report in `console` if it says a CPU was stuck
/// for at least [`L1_STUCK_LIMIT`]; the report reads
/// `watchdog: BUG: soft lockup - CPU#0 stuck for 1070s! [vmm:430]`.
pub fn l1_stuck(console: &str) -> Option<String> {
    const REPORT: &str = "BUG: soft lockup - CPU#";
    let start = console.rfind(REPORT)?;
    let line = console[start..].lines().next()?.trim_end();
    let after = &line[line.find("stuck for ")? + "stuck for ".len()..];
    let seconds: u64 = after[..after.find('s')?].parse().ok()?;
    (seconds >= L1_STUCK_LIMIT.as_secs()).then(|| {
        // The backtrace: the reporter's marked dmesg lines, or L1's log
        // printed again at its panic, after the report.
        let waits_for_ipi = console
            .lines()
            .filter(|l| l.starts_with(markers::L1_DMESG))
            .chain(console[start..].lines())
            .any(|l| IPI_WAITS.iter().any(|f| l.contains(f)));
        if waits_for_ipi {
            format!(
                "L1's soft lockup report: {line}; its backtrace waits for an IPI another L1 CPU \
                 never answers (a CPU inside an L2 guest answers one by a #VMEXIT): TCG's \
                 SVM fault holding that CPU in L2"
            )
        } else {
            format!("L1's soft lockup report: {line}")
        }
    })
}

/// Kernel functions in which a CPU spins until other CPUs have run an IPI's
/// function (KVM's requests to every vCPU with `KVM_REQUEST_WAIT`, as a
/// TLB flush when the VMM unmaps guest memory, end up there).
const IPI_WAITS: &[&str] = &["smp_call_function_many_cond", "csd_lock_wait"];

fn outcome(
    p: Parsed,
    console: String,
    l1_ready: Option<Duration>,
    total: Duration,
) -> Result<Outcome, TestbedError> {
    if let Some(error) = p.error {
        if let Some(why) = error.strip_prefix(crate::l1::SETUP_FAILED) {
            return Err(TestbedError::Setup(why.trim().to_owned()));
        }
        return Err(TestbedError::InL1(error));
    }
    Ok(Outcome {
        console: p.out.unwrap_or_default(),
        stderr: p.err.unwrap_or_default(),
        status: p.status,
        l1_boot: l1_ready,
        total,
        l1_console: markers::normalize(&console),
    })
}

/// Runs L1 with the user's terminal as its console and `bridges` on its
/// other serial ports; returns the VMM's exit status, which the job script
/// writes to L1's fourth serial port (a file here).
///
/// L1 beats on that port too ([`crate::heartbeat::interactive_loop`]): an
/// L1 that stops beating for a minute (or never starts within
/// [`crate::heartbeat::FIRST_LIMIT`]) is hung, and is ended as Ctrl-A x
/// would end it (QEMU gives the terminal back), as
/// [`TestbedError::NoHeartbeat`], rather than leaving the user before a
/// terminal that answers nothing.
pub fn run_interactive(cmd: Command, bridges: &crate::Bridges) -> Result<i32, TestbedError> {
    run_interactive_watched(cmd, bridges, crate::heartbeat::Limits::default())
}

fn run_interactive_watched(
    mut cmd: Command,
    bridges: &crate::Bridges,
    beat: crate::heartbeat::Limits,
) -> Result<i32, TestbedError> {
    // The stdio chardev puts the terminal in raw mode and passes every key
    // through (signal=off: Ctrl-C reaches the guest, not QEMU).
    cmd.args([
        "-chardev",
        "stdio,id=con,signal=off",
        "-serial",
        "chardev:con",
    ]);
    let status_file = TempFile::new(b"")?;
    cmd.args(interactive_serial_args(bridges, &status_file.0));
    let mut child = cmd.spawn().map_err(|e| TestbedError::Tool(QEMU, e))?;
    let mut watch = crate::heartbeat::Watch::new(beat);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestbedError::Tool(QEMU, e));
            }
        }
        let beats = crate::heartbeat::file_len(&status_file.0);
        if let Some(after) = watch.check(beats, Instant::now()) {
            end_gently(&mut child);
            return Err(TestbedError::NoHeartbeat {
                after,
                beats: watch.beats(),
                console: "(on the terminal, above)".into(),
            });
        }
        std::thread::sleep(HEARTBEAT_LOOK);
    };
    let text = std::fs::read_to_string(&status_file.0).unwrap_or_default();
    vmm_status(&text).ok_or_else(|| {
        TestbedError::InL1(format!(
            "L1 ended (QEMU {status}) without reporting the VMM's exit status"
        ))
    })
}

/// Ends an interactive QEMU with SIGTERM, on which it restores the
/// terminal it put in raw mode; SIGKILL if it is still there after
/// [`TERM_WAIT`].
fn end_gently(child: &mut Child) {
    crate::process::terminate(child);
    let _ = crate::process::wait_until(child, Instant::now(), TERM_WAIT);
}

/// How long an interactive QEMU gets to end after SIGTERM.
const TERM_WAIT: Duration = Duration::from_secs(10);

/// QEMU's arguments for L1's ttyS1..ttyS3 (see [`crate::Bridges`]).
fn interactive_serial_args(bridges: &crate::Bridges, status: &Path) -> Vec<String> {
    let mut a = Vec::new();
    match &bridges.ttys1_socket {
        Some(p) => a.extend([
            "-chardev".into(),
            format!("socket,id=ttys1,path={},server=on,wait=on", p.display()),
        ]),
        None => a.extend(["-chardev".into(), "null,id=ttys1".into()]),
    }
    match &bridges.ttys2_file {
        Some(p) => a.extend([
            "-chardev".into(),
            format!("file,id=ttys2,path={},append=on", p.display()),
        ]),
        None => a.extend(["-chardev".into(), "null,id=ttys2".into()]),
    }
    a.extend([
        "-chardev".into(),
        format!("file,id=ttys3,path={}", status.display()),
    ]);
    for id in ["ttys1", "ttys2", "ttys3"] {
        a.extend(["-serial".into(), format!("chardev:{id}")]);
    }
    a
}

/// The VMM's status as the job script wrote it after L1's heartbeat
/// ("..... 0\n", say): the last number, dots around it dropped (a beat
/// may have left on its way out after the status).
fn vmm_status(text: &str) -> Option<i32> {
    text.split_whitespace()
        .rev()
        .find_map(|t| t.trim_matches('.').parse().ok())
}

#[cfg(test)]
mod tests;
