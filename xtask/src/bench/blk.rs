//! Disks: virtio-blk-pci on the same raw image, ours beside QEMU, from
//! inside a Linux guest, with `O_DIRECT` on both sides; and what the PCI
//! bus adds to our start-up ([`pci`]).
//!
//! **The load.** The guest (the default guest's kernel, an initramfs with
//! the virtio drivers and `blk_load.c` built static here) runs four rows
//! on `/dev/vda` opened `O_DIRECT`: a sequential write and a sequential
//! read in 1 MiB requests at queue depth 1 (the write followed by one
//! `fdatasync`, timed with it), then 4 KiB reads at random aligned offsets
//! over the whole disk at queue depth 1 (`pread`) and 32 (Linux AIO by raw
//! system calls, a completed read replaced at once), for a fixed time
//! each. The guest times each row on its own clock and prints a line
//! before and after it; `blk_host.c`, which runs the VMM, reads the VMM's
//! `utime + stime` and `guest_time` (`/proc/PID/stat`, all its threads)
//! on each of those lines: host CPU per I/O is the `utime + stime`
//! difference over the row's I/O count, reported whole (it includes the
//! vCPU thread's time in guest mode) and without the `guest_time` part
//! (the VMM's own work and the kernel's on its behalf). Only the VMM
//! process counts: work the host kernel does for it in interrupt context
//! or in kernel threads (AIO completions, say) is in neither.
//!
//! **The image.** A 256 MiB raw file on the host, written in full (no
//! holes). On a PVM host both VMMs run in one L1 of the test bed (nested,
//! as the `linux` suite; QEMU shipped in with [`vmm_testbed::Job::with_qemu`])
//! and the file is L1's virtio disk (`Job::l1_disk`): each VMM serves
//! L1's `/dev/vda` itself, opened `O_DIRECT` (`cache=none`), so both read
//! and write the same host file through the same L1 block layer; there is
//! no file system in L1 (L1's root is a ramfs, where `O_DIRECT` fails, and
//! its kernel has no ext4 module in the test bed). On a hardware-KVM host
//! they run directly on the file (kept under `target/`, not a tmpfs).
//!
//! **The VMMs.** Ours: `--drive file=IMG,if=virtio,format=raw,cache=none`.
//! QEMU: `-M microvm,pcie=on` (microvm with its PCIe host bridge: the
//! same kernel loading, no firmware beyond qboot, and a virtio-blk-pci as
//! ours; `pc`/`q35` would need SeaBIOS in L1) with `-drive
//! file=IMG,if=none,id=d0,format=raw,cache=none,aio=io_uring` or
//! `aio=native`, and `-device virtio-blk-pci,drive=d0`. Both aio modes
//! run; each row of the report compares ours with the better of the two
//! on that row (named in the row), the other's figure in the notes. Same
//! kernel, initramfs, 256 MiB, one vCPU and command line.
//!
//! **The runs.** One script in L1 boots every run one after the other
//! (each VMM once per round, who goes first rotating from round to round),
//! no warm-up (the image is in the host's page cache from its writing);
//! at most [`MAX_RUNS`] rounds, one with `--quick` (which also shortens
//! the rows). A failed boot is tried again once, and an L1 that dies or
//! hangs is followed by one fresh L1 for what is left.

mod pci;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmm_testbed::{initramfs::busybox_initramfs, GuestFiles, HostKvm, Job};

use super::linux::log_after;
use super::report::{Goal, Row, Section, Who};
use super::{session, target_dir, Ctx, TempDir};
use crate::cmd;

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 256;
/// The image, MiB.
const IMAGE_MIB: usize = 256;
/// The kernel command line of both VMMs.
const APPEND: &str = "console=ttyS0 reboot=t panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp";
/// Rounds at most (each boots every VMM once).
const MAX_RUNS: usize = 3;
/// One boot's time limit inside the script, seconds.
const BOOT_TIMEOUT_S: u32 = 150;
/// Tries per boot.
const TRIES: usize = 2;
/// L1 sessions at most.
const SESSIONS: usize = 2;
/// The helpers' names in the job folder and in the guest.
const HOST_HELPER: &str = "blk_host";
const LOAD: &str = "blk_load";

/// The rows' sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sizes {
    /// Sequential rows: this many MiB ...
    seq_mib: u32,
    /// ... or fewer when this many seconds pass first.
    seq_max_s: u32,
    /// Random rows: seconds each.
    rand_s: u32,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                seq_mib: 32,
                seq_max_s: 5,
                rand_s: 2,
            }
        } else {
            Self {
                seq_mib: 128,
                seq_max_s: 10,
                rand_s: 4,
            }
        }
    }
}

/// The VMMs under test: ours on its default (split) irqchip and again on
/// KVM's, for the cost of the split one to a virtio interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ours,
    QemuIoUring,
    QemuNative,
    OursKernelIrqchip,
}

const VMMS: [Vmm; 4] = [
    Vmm::Ours,
    Vmm::QemuIoUring,
    Vmm::QemuNative,
    Vmm::OursKernelIrqchip,
];

/// The split irqchip's virtio round trip at most this many times the
/// kernel irqchip's (issue goal: at most 10% more).
const SPLIT_OVER_KERNEL: f64 = 1.1;

impl Vmm {
    fn key(self) -> &'static str {
        match self {
            Vmm::Ours => "ours",
            Vmm::QemuIoUring => "qemu-io_uring",
            Vmm::QemuNative => "qemu-native",
            Vmm::OursKernelIrqchip => "ours-kernel-irqchip",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        VMMS.into_iter().find(|v| v.key() == key)
    }

    fn name(self) -> &'static str {
        match self {
            Vmm::Ours => "vmm (ours)",
            Vmm::QemuIoUring => "QEMU aio=io_uring",
            Vmm::QemuNative => "QEMU aio=native",
            Vmm::OursKernelIrqchip => "vmm (ours) --irqchip kernel",
        }
    }

    fn is_qemu(self) -> bool {
        matches!(self, Vmm::QemuIoUring | Vmm::QemuNative)
    }

    /// The shell command running this VMM on `disk` (`$VMM`, `$QEMU` and
    /// `$QEMU_DATA` come from the test bed).
    fn command(self, disk: &str) -> String {
        let ours = format!(
            "\"$VMM\" --kernel bzImage --initrd initrd --memory {MEMORY_MIB}M --cpus 1 \
             --log-level info --append '{APPEND}' \
             --drive file={disk},if=virtio,format=raw,cache=none"
        );
        let qemu = |aio: &str| {
            format!(
                "\"$QEMU\" -M microvm,pcie=on -accel kvm -cpu host,-arch-capabilities -smp 1 \
                 -m {MEMORY_MIB}M -nodefaults -no-user-config -display none -no-reboot \
                 -serial stdio -L \"$QEMU_DATA\" -kernel bzImage -initrd initrd \
                 -append '{APPEND}' \
                 -drive file={disk},if=none,id=d0,format=raw,cache=none,aio={aio} \
                 -device virtio-blk-pci,drive=d0"
            )
        };
        match self {
            Vmm::Ours => ours,
            Vmm::OursKernelIrqchip => format!("{ours} --irqchip kernel"),
            Vmm::QemuIoUring => qemu("io_uring"),
            Vmm::QemuNative => qemu("native"),
        }
    }
}

/// The guest's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SeqWrite,
    SeqRead,
    Rand1,
    Rand32,
}

const KINDS: [Kind; 4] = [Kind::SeqWrite, Kind::SeqRead, Kind::Rand1, Kind::Rand32];

impl Kind {
    /// The `row=` value `blk_load` prints.
    fn key(self) -> &'static str {
        match self {
            Kind::SeqWrite => "seqwrite",
            Kind::SeqRead => "seqread",
            Kind::Rand1 => "randread1",
            Kind::Rand32 => "randread32",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.key() == key)
    }

    fn label(self) -> &'static str {
        match self {
            Kind::SeqWrite => "sequential write, 1 MiB, QD1",
            Kind::SeqRead => "sequential read, 1 MiB, QD1",
            Kind::Rand1 => "random read, 4 KiB, QD1",
            Kind::Rand32 => "random read, 4 KiB, QD32",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Kind::SeqWrite | Kind::SeqRead => "MiB/s",
            Kind::Rand1 | Kind::Rand32 => "IOPS",
        }
    }
}

/// One boot: which VMM, which round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Boot {
    vmm: Vmm,
    run: usize,
}

impl Boot {
    fn describe(&self) -> String {
        format!("{}, run {}", self.vmm.name(), self.run)
    }
}

/// `runs` rounds of every VMM, the first one rotating.
fn plan(runs: usize) -> Vec<Boot> {
    let mut v = Vec::new();
    for run in 0..runs {
        for k in 0..VMMS.len() {
            let vmm = VMMS[(run + k) % VMMS.len()];
            v.push(Boot { vmm, run });
        }
    }
    v
}

/// The script booting `boots` in turn on `disk`, each tried up to
/// [`TRIES`] times; `blk_host`'s lines go to `$TESTBED_LIVE`.
fn script(boots: &[Boot], disk: &str) -> String {
    let tries = (1..=TRIES).fold(String::new(), |acc, t| format!("{acc} {t}"));
    let mut s = String::new();
    for b in boots {
        let _ = writeln!(
            s,
            "for try in{tries}; do ./{HOST_HELPER} \"vmm={} run={} try=$try\" {BOOT_TIMEOUT_S} \
             /tmp/l2.log {} >>\"$TESTBED_LIVE\" && break; done",
            b.vmm.key(),
            b.run,
            b.vmm.command(disk)
        );
    }
    s
}

/// The L2 guest's `/init`: the virtio drivers, the load, a reboot.
fn init_script(sizes: Sizes) -> String {
    let modules = vmm_testbed::initramfs::VIRTIO_BLOCK_MODULES.join(" ");
    format!(
        "#!/bin/sh\n\
         export PATH=/bin:/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         for m in {modules}; do insmod /lib/modules/$m.ko; done\n\
         i=0; while [ ! -b /dev/vda ] && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done\n\
         /{LOAD} /dev/vda {} {} {}\n\
         reboot -f\n",
        sizes.seq_mib, sizes.seq_max_s, sizes.rand_s
    )
}

/// Who printed a line: the VMM, the round and the try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label {
    vmm: Vmm,
    run: usize,
    attempt: u32,
}

/// One `@@BLK` line: a row's result.
#[derive(Debug, Clone, PartialEq)]
struct RowLine {
    label: Label,
    kind: Kind,
    ios: u64,
    bytes: u64,
    us: f64,
    /// The VMM's CPU time over the row; None when it could not be read.
    cpu_ms: Option<f64>,
    /// The part of it its vCPUs spent in guest mode.
    guest_ms: Option<f64>,
}

impl RowLine {
    /// MiB/s for the sequential rows, IOPS for the random ones.
    fn rate(&self) -> f64 {
        let s = self.us / 1e6;
        match self.kind {
            Kind::SeqWrite | Kind::SeqRead => self.bytes as f64 / f64::from(1 << 20) / s,
            Kind::Rand1 | Kind::Rand32 => self.ios as f64 / s,
        }
    }

    /// Host CPU per I/O, µs.
    fn cpu_per_io_us(&self) -> Option<f64> {
        Some(self.cpu_ms? * 1e3 / self.ios as f64)
    }

    /// Host CPU per I/O outside guest mode (the VMM's own work and the
    /// kernel's on its behalf), µs.
    fn vmm_cpu_per_io_us(&self) -> Option<f64> {
        Some((self.cpu_ms? - self.guest_ms?).max(0.0) * 1e3 / self.ios as f64)
    }
}

/// One `@@BLKRUN` line: how a boot ended.
#[derive(Debug, Clone, PartialEq)]
struct RunLine {
    label: Label,
    status: String,
    done: bool,
}

impl RunLine {
    fn ok(&self) -> bool {
        self.status == "0" && self.done
    }
}

/// The `key=value` fields after `prefix` on `line`, the label's parsed.
fn fields<'a>(line: &'a str, prefix: &str) -> Option<(Label, Vec<(&'a str, &'a str)>)> {
    let rest = line.trim().strip_prefix(prefix)?;
    let mut vmm = None;
    let mut run = None;
    let mut attempt = None;
    let mut other = Vec::new();
    for field in rest.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "vmm" => vmm = Some(Vmm::from_key(v)?),
            "run" => run = Some(v.parse().ok()?),
            "try" => attempt = Some(v.parse().ok()?),
            _ => other.push((k, v)),
        }
    }
    let label = Label {
        vmm: vmm?,
        run: run?,
        attempt: attempt?,
    };
    Some((label, other))
}

fn get<'a>(f: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Parses `@@BLK vmm=ours run=0 try=1 row=seqread ios=64 bytes=67108864
/// us=812345 cpu_ms=120.0 guest_ms=80.0` (negative times: not read).
fn parse_row_line(line: &str) -> Option<RowLine> {
    let (label, f) = fields(line, "@@BLK ")?;
    let us: f64 = get(&f, "us")?.parse().ok()?;
    let ios: u64 = get(&f, "ios")?.parse().ok()?;
    let time = |key: &str| -> Option<Option<f64>> {
        let t: f64 = get(&f, key)?.parse().ok()?;
        Some((t.is_finite() && t >= 0.0).then_some(t))
    };
    if !(us.is_finite() && us > 0.0) || ios == 0 {
        return None;
    }
    Some(RowLine {
        label,
        kind: Kind::from_key(get(&f, "row")?)?,
        ios,
        bytes: get(&f, "bytes")?.parse().ok()?,
        us,
        cpu_ms: time("cpu_ms")?,
        guest_ms: time("guest_ms")?,
    })
}

/// Parses `@@BLKRUN vmm=ours run=0 try=1 status=0 done=1`.
fn parse_run_line(line: &str) -> Option<RunLine> {
    let (label, f) = fields(line, "@@BLKRUN ")?;
    Some(RunLine {
        label,
        status: get(&f, "status")?.to_owned(),
        done: get(&f, "done")? == "1",
    })
}

/// A boot that failed: what, and the end of its console and stderr.
#[derive(Debug, Clone)]
struct Failure {
    what: String,
    log: String,
}

/// The rows of the good boots (those whose `@@BLKRUN` says status 0 and
/// the load done; rows of failed tries are dropped), and the failures.
/// Lines that do not parse are ignored (L1's console can cut a line).
fn parse_console(console: &str) -> (Vec<RowLine>, Vec<Failure>) {
    let lines: Vec<&str> = console.lines().collect();
    let rows: Vec<RowLine> = lines.iter().filter_map(|l| parse_row_line(l)).collect();
    let mut good = Vec::new();
    let mut failures = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(r) = parse_run_line(line) else {
            continue;
        };
        if r.ok() {
            good.extend(rows.iter().filter(|x| x.label == r.label).cloned());
        } else {
            failures.push(Failure {
                what: format!(
                    "{}, try {}: status {}{}",
                    Boot {
                        vmm: r.label.vmm,
                        run: r.label.run
                    }
                    .describe(),
                    r.label.attempt,
                    r.status,
                    if r.done { "" } else { ", the load not done" }
                ),
                log: log_after(&lines, i),
            });
        }
    }
    (good, failures)
}

/// The `blk` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let runs = if ctx.quick { 1 } else { ctx.runs.min(MAX_RUNS) };
    let sizes = Sizes::new(ctx.quick);
    let (rows, notes) = boots(runs, sizes)?;
    let mut sections = vec![section(&rows, runs, sizes, notes)];
    sections.push(pci::run(ctx)?);
    Ok(sections)
}

/// The median rate of `vmm` on `kind`, if measured.
fn median_rate(rows: &[RowLine], vmm: Vmm, kind: Kind) -> Option<f64> {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.label.vmm == vmm && r.kind == kind)
        .map(RowLine::rate)
        .collect();
    (!v.is_empty()).then(|| super::quantile(&v, 0.5))
}

/// The report's section: per kind, ours beside the better QEMU on it
/// (rate, then host CPU per I/O of the same QEMU).
fn section(rows: &[RowLine], runs: usize, sizes: Sizes, notes: Vec<String>) -> Section {
    let nested = HostKvm::detect() == HostKvm::Pvm;
    let mut s = Section::new(
        "blk",
        format!(
            "Disks: virtio-blk-pci on a {IMAGE_MIB} MiB raw image, O_DIRECT, from a Linux guest ({})",
            if nested {
                "nested: both VMMs in one L1 of the test bed, the image L1's virtio disk"
            } else {
                "directly on this host, the image a file under target/"
            }
        ),
    );
    s.note(format!(
        "In the guest (blk_load.c, O_DIRECT on /dev/vda): a {} MiB sequential write (then \
         fdatasync) and read in 1 MiB requests at QD1 (capped at {} s), then 4 KiB random reads \
         over the whole disk for {} s at QD1 (pread) and QD32 (Linux AIO); rates on the guest's \
         clock. {runs} boot(s) per VMM, taking turns, no warm-up.",
        sizes.seq_mib, sizes.seq_max_s, sizes.rand_s
    ));
    s.note(format!(
        "Ours: --drive file=IMG,if=virtio,format=raw,cache=none. QEMU: -M microvm,pcie=on -drive \
         file=IMG,if=none,id=d0,format=raw,cache=none,aio=io_uring|native -device \
         virtio-blk-pci,drive=d0. Both: the default guest's kernel, {MEMORY_MIB} MiB, 1 vCPU."
    ));
    s.note(
        "Host CPU per I/O: the VMM process's utime + stime (/proc/PID/stat, all threads, 10 ms \
         ticks) over the row, divided by the row's I/Os; it includes the vCPU's time in guest \
         mode (the guest's own work and its idling before the halt exits); \"outside guest mode\" \
         subtracts the process's guest_time. Kernel work outside the process (interrupts, kernel \
         threads) is in neither.",
    );
    if nested {
        s.note(
            "Nested, every exit of L2 and every I/O of L1's disk goes through QEMU/TCG: compare \
             the two VMMs with each other, not with hardware figures.",
        );
    }
    for kind in KINDS {
        let best = [Vmm::QemuIoUring, Vmm::QemuNative]
            .into_iter()
            .filter_map(|q| median_rate(rows, q, kind).map(|m| (q, m)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let best_vmm = best.map(|(q, _)| q);
        let suffix = best_vmm.map_or(String::new(), |q| format!(" (vs {})", q.name()));
        let mut rate =
            Row::new(format!("{}{suffix}", kind.label()), kind.unit()).goal(Goal::AtLeastQemu(1.0));
        let mut cpu = Row::new(format!("host CPU per I/O, {}{suffix}", kind.label()), "µs")
            .goal(Goal::QemuRatio(1.0));
        let mut own = Row::new(
            format!(
                "host CPU per I/O outside guest mode, {}{suffix}",
                kind.label()
            ),
            "µs",
        )
        .goal(Goal::QemuRatio(1.0));
        for r in rows.iter().filter(|r| r.kind == kind) {
            let who = if r.label.vmm == Vmm::Ours {
                Who::Ours
            } else if Some(r.label.vmm) == best_vmm {
                Who::Qemu
            } else {
                continue;
            };
            rate.push(who, r.rate());
            if let Some(c) = r.cpu_per_io_us() {
                cpu.push(who, c);
            }
            if let Some(c) = r.vmm_cpu_per_io_us() {
                own.push(who, c);
            }
        }
        s.rows.extend([rate, cpu, own]);
        let others: Vec<String> = [Vmm::QemuIoUring, Vmm::QemuNative]
            .into_iter()
            .filter(|q| Some(*q) != best_vmm)
            .filter_map(|q| {
                median_rate(rows, q, kind)
                    .map(|m| format!("{}: {m:.1} {} (median)", q.name(), kind.unit()))
            })
            .collect();
        if !others.is_empty() {
            s.note(format!("{}: {}.", kind.label(), others.join("; ")));
        }
    }
    msi_rows(&mut s, rows);
    for n in notes {
        s.note(n);
    }
    s
}

/// The QD1 random read as a virtio interrupt's round trip (the guest's
/// notify, the worker's read, the MSI through an irqfd, the guest's
/// handler; one I/O at a time), ours on each irqchip from the same rounds:
/// µs per I/O, the split row's goal at most [`SPLIT_OVER_KERNEL`] times the
/// kernel row's. Both irqchips deliver MSIs through KVM's routes (only the
/// IO-APIC and the PICs move to user space), so any difference is what
/// the split one adds elsewhere.
fn msi_rows(s: &mut Section, rows: &[RowLine]) {
    let per_io = |vmm: Vmm| {
        let mut row = Row::new(
            format!(
                "virtio round trip (4 KiB read, QD1), {}",
                if vmm == Vmm::Ours {
                    "split irqchip (ours' default)"
                } else {
                    "KVM's irqchip (--irqchip kernel)"
                }
            ),
            "µs",
        );
        for r in rows
            .iter()
            .filter(|r| r.kind == Kind::Rand1 && r.label.vmm == vmm && r.ios > 0)
        {
            row.push(Who::Ours, r.us / r.ios as f64);
        }
        row
    };
    let split = per_io(Vmm::Ours);
    let kernel = per_io(Vmm::OursKernelIrqchip);
    let Some(k) = kernel.median(Who::Ours) else {
        return;
    };
    s.note(format!(
        "The virtio round trip rows: the QD1 random read's time per I/O, ours with its default \
         split irqchip and again with --irqchip kernel in the same rounds; goal of the split \
         row: at most {SPLIT_OVER_KERNEL}x the kernel row ({:.1} µs).",
        k * SPLIT_OVER_KERNEL
    ));
    s.rows
        .extend([split.goal(Goal::Below(k * SPLIT_OVER_KERNEL)), kernel]);
}

/// A raw image of [`IMAGE_MIB`] in `dir`, every byte written (no holes).
fn make_image(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("blk.img");
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut data = Vec::with_capacity(IMAGE_MIB << 20);
    for _ in 0..IMAGE_MIB {
        data.extend_from_slice(&chunk);
    }
    std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Builds the C file `src` (in xtask/src/bench/) static into `dir`.
pub(super) fn build_static(dir: &Path, src: &str, name: &str) -> Result<PathBuf> {
    let out = dir.join(name);
    let mut cc = std::process::Command::new("cc");
    cc.args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(cmd::root().join("xtask/src/bench").join(src));
    cmd::run(&mut cc).with_context(|| format!("building {src} (gcc and libc6-dev)"))?;
    Ok(out)
}

/// The L2 initramfs: busybox, the virtio modules, `blk_load`, `/init`.
fn guest_initrd(guest: &GuestFiles, dir: &Path, load: &Path, sizes: Sizes) -> Result<PathBuf> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut extra = vec![(LOAD.to_owned(), read(load)?, 0o755)];
    for m in vmm_testbed::initramfs::VIRTIO_BLOCK_MODULES {
        extra.push((
            format!("lib/modules/{m}.ko"),
            read(&guest.module(m))?,
            0o644,
        ));
    }
    let initrd = dir.join("initrd.cpio");
    let image = busybox_initramfs(&read(&guest.busybox)?, &init_script(sizes), &extra)?;
    std::fs::write(&initrd, image).with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(initrd)
}

/// Boots every VMM `runs` times on the image (see the module docs);
/// returns the rows of the good boots and a note per L1 session.
fn boots(runs: usize, sizes: Sizes) -> Result<(Vec<RowLine>, Vec<String>)> {
    let guest = GuestFiles::default_location()?;
    let vmm = crate::target::vmm();
    // Under target/: O_DIRECT fails on a tmpfs, which /tmp can be.
    let tmp = TempDir::new_in(&target_dir(), "bench-blk")?;
    let host_helper = build_static(&tmp.0, "blk_host.c", HOST_HELPER)?;
    let load = build_static(&tmp.0, "blk_load.c", LOAD)?;
    let initrd = guest_initrd(&guest, &tmp.0, &load, sizes)?;
    let image = make_image(&tmp.0)?;

    let mut pending = plan(runs);
    let mut good: Vec<RowLine> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut notes = Vec::new();
    for session in 1..=SESSIONS {
        let mut job = Job::new(["--version"])
            .file("bzImage", &guest.bzimage)
            .file("initrd", &initrd)
            .file(HOST_HELPER, &host_helper)
            .with_qemu();
        let disk = if HostKvm::detect() == HostKvm::Pvm {
            job.l1_disk(&image)
        } else {
            image.display().to_string()
        };
        let job = job
            .companion(&script(&pending, &disk))
            .silence_limit(Duration::from_secs(u64::from(BOOT_TIMEOUT_S) + 30))
            .timeout(Duration::from_secs(
                180 + (pending.len() * TRIES) as u64 * u64::from(BOOT_TIMEOUT_S),
            ));
        eprintln!(
            "xtask: disks, session {session}: {} boots on {disk}",
            pending.len()
        );
        let run = vmm_testbed::run_linux(&guest, &vmm, &job);
        let console = session::l1_console("disks", session, run, &mut notes)?;
        let (g, f) = parse_console(&console);
        for r in &g {
            eprintln!(
                "xtask: {}: {}: {:.1} {}, CPU {:.1} ms",
                Boot {
                    vmm: r.label.vmm,
                    run: r.label.run
                }
                .describe(),
                r.kind.label(),
                r.rate(),
                r.kind.unit(),
                r.cpu_ms.unwrap_or(f64::NAN)
            );
        }
        for x in &f {
            eprintln!("xtask: FAILED {}; its last lines:", x.what);
            for l in x.log.lines().rev().take(8).collect::<Vec<_>>().iter().rev() {
                eprintln!("    {l}");
            }
        }
        pending.retain(|p| {
            !g.iter()
                .any(|r| r.label.vmm == p.vmm && r.label.run == p.run)
        });
        good.extend(g);
        failures.extend(f);
        if pending.is_empty() {
            break;
        }
    }
    notes.push(format!("failed tries (retried): {}", failures.len()));
    if !pending.is_empty() {
        let missing: Vec<String> = pending.iter().map(Boot::describe).collect();
        notes.push(format!("not measured: {}", missing.join("; ")));
    }
    // A benchmark that runs our VMM or QEMU in neither aio mode is
    // broken, not unlucky.
    let missing = if !good.iter().any(|r| r.label.vmm == Vmm::Ours) {
        Some(Vmm::Ours.name())
    } else if !good.iter().any(|r| r.label.vmm.is_qemu()) {
        Some("QEMU")
    } else {
        None
    };
    if let Some(who) = missing {
        let mut why = String::new();
        for f in &failures {
            let _ = write!(
                why,
                "\n{}; end of its console and stderr:\n{}\n",
                f.what, f.log
            );
        }
        bail!(
            "the disk benchmark measured no boot of {who} ({})\nfailed tries:{why}",
            notes.join("; ")
        );
    }
    Ok((good, notes))
}

#[cfg(test)]
mod tests;
