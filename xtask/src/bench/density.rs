//! `density`: how many VMs of the minimal guest (128 MiB, prints a line and
//! halts, so it costs no CPU once up) run at once on this machine, and how
//! fast they start when many are started together.
//!
//! * Capacity: VMs are started one after another, each counted once its
//!   line is read, until a cap, a failure, or the host's `MemAvailable`
//!   falling under a reserve; the drop in `MemAvailable` over the count is
//!   the host memory one VM costs, and `MemAvailable` at the start over
//!   that cost projects how many would fit.
//! * Start rate: a batch is spawned at once; from the first spawn to the
//!   last line read gives VMs per second.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::report::{Row, Section};
use super::{contains, sys, Ctx, Program, MESSAGE};

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 128;
/// The capacity test stops at this many VMs (per program), or `--quick`'s.
const CAP: usize = 250;
const QUICK_CAP: usize = 10;
/// ... or when `MemAvailable` falls under this, KiB.
const RESERVE_KIB: u64 = 2 << 20;
/// VMs started at once for the start rate, or `--quick`'s.
const BATCH: usize = 50;
const QUICK_BATCH: usize = 10;
/// The most one VM may take to print its line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Running VMs, stopped (SIGTERM, then SIGKILL after 5 s) on drop.
struct Fleet {
    children: Vec<Child>,
    seen: mpsc::Receiver<Instant>,
    tx: mpsc::Sender<Instant>,
}

impl Fleet {
    fn new() -> Self {
        let (tx, seen) = mpsc::channel();
        Self {
            children: Vec::new(),
            seen,
            tx,
        }
    }

    /// Starts one VM; a thread reports when its line has been read.
    fn spawn(&mut self, p: &Program) -> Result<()> {
        let mut child = Command::new(&p.program)
            .args(&p.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", p.program.display()))?;
        let Some(mut out) = child.stdout.take() else {
            bail!("no stdout pipe");
        };
        self.children.push(child);
        let tx = self.tx.clone();
        thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let mut all = Vec::new();
                let mut buf = [0u8; 512];
                let mut told = false;
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                    if !told && contains(&all, MESSAGE.as_bytes()) {
                        told = true;
                        let _ = tx.send(Instant::now());
                    }
                }
            })
            .context("cannot start a reader thread")?;
        Ok(())
    }

    /// Waits until `n` more VMs have printed their line.
    fn wait_lines(&self, n: usize) -> Result<Instant> {
        let mut last = Instant::now();
        for _ in 0..n {
            last = self
                .seen
                .recv_timeout(START_TIMEOUT)
                .context("a VM did not print its line in time")?;
        }
        Ok(last)
    }

    /// Stops every VM and waits for them.
    fn stop(&mut self) {
        for c in &self.children {
            sys::signal_child(c.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if !matches!(c.try_wait(), Ok(None)) {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `density` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let guest = ctx.guest("halt")?;
    let mut programs = vec![
        Program::floor(&guest, MEMORY_MIB),
        Program::ours(ctx, &guest, MEMORY_MIB),
    ];
    if let Some(q) = &ctx.qemu {
        programs.push(Program::qemu(q, "microvm", &guest, MEMORY_MIB));
    }
    let (cap, batch) = if ctx.quick {
        (QUICK_CAP, QUICK_BATCH)
    } else {
        (CAP, BATCH)
    };

    let mut started = Row::new(format!("VMs running at once (stopped at {cap})"), "VMs");
    let mut per_vm = Row::new("host memory per VM (MemAvailable drop)", "MiB");
    let mut projected = Row::new("VMs that fit in MemAvailable (projected)", "VMs");
    let mut rate = Row::new(format!("start rate, {batch} started at once"), "VMs/s");
    let mut all_up = Row::new(
        format!("{batch} started at once: until the last line"),
        "ms",
    );
    let mut notes = Vec::new();

    for p in &programs {
        // Capacity.
        let mut fleet = Fleet::new();
        let avail0 = sys::mem_available_kib().context("no MemAvailable in /proc/meminfo")?;
        let mut stopped_by = format!("the cap of {cap}");
        let mut avail = avail0;
        while fleet.children.len() < cap {
            if let Err(e) = fleet.spawn(p).and_then(|()| fleet.wait_lines(1)) {
                stopped_by = format!("a failed start ({e:#})");
                break;
            }
            avail = sys::mem_available_kib().unwrap_or(0);
            if avail < RESERVE_KIB {
                stopped_by = "MemAvailable reaching the reserve".into();
                break;
            }
        }
        let n = fleet.children.len();
        fleet.stop();
        if n == 0 {
            bail!("{}: not one VM started: {stopped_by}", p.who.name());
        }
        let kib = avail0.saturating_sub(avail) as f64 / n as f64;
        started.push(p.who, n as f64);
        per_vm.push(p.who, kib / 1024.0);
        if kib > 0.0 {
            projected.push(p.who, (avail0 as f64 / kib).floor());
        }
        notes.push(format!(
            "{}: {n} VMs, stopped by {stopped_by}.",
            p.who.name()
        ));

        // Start rate, a few times.
        for _ in 0..ctx.runs.min(3) {
            let mut fleet = Fleet::new();
            let t0 = Instant::now();
            for _ in 0..batch {
                fleet.spawn(p)?;
            }
            let last = fleet.wait_lines(batch)?;
            let secs = last.duration_since(t0).as_secs_f64();
            fleet.stop();
            rate.push(p.who, batch as f64 / secs);
            all_up.push(p.who, secs * 1e3);
        }
    }

    let mut s = Section::new(
        "density",
        format!("Density: minimal PVH guests of {MEMORY_MIB} MiB, 1 vCPU, halted once up"),
    );
    s.note(
        "Capacity: VMs started one after another, each counted when its line is read, until the \
         cap, a failed start, or MemAvailable under 2 GiB; host memory per VM is the drop in \
         MemAvailable over the count (guest RAM is touched only where the guest and its tables \
         are).",
    );
    s.note(format!(
        "Start rate: {batch} spawned at once, from the first spawn to the last line read; \
         {} times per program.",
        ctx.runs.min(3)
    ));
    for n in notes {
        s.note(n);
    }
    s.rows = vec![started, per_vm, projected, rate, all_up];
    Ok(vec![s])
}
