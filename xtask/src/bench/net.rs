//! Network: virtio-net-pci on a tap, ours beside QEMU, TCP between a Linux
//! guest and the machine the VMM runs on.
//!
//! **The load.** One static C program, `net_load.c`, built here once, runs
//! on both ends of the tap. In the guest (the default guest's kernel, an
//! initramfs with Debian's `virtio_net` and the program) it is the client
//! at 10.0.2.15/24; beside the VMM it is the host side: it starts the VMM,
//! waits for the tap the VMM makes (`tap0`), gives it 10.0.2.1/24 (as
//! `vmm-cli/tests/linux_net.rs` does), and serves three rows, one TCP
//! connection each, for a fixed time each: a stream guest → host, a
//! stream host → guest (both in 128 KiB writes, the receiver's byte count
//! sent back and checked by the sender), and 1-byte request/response
//! pairs with `TCP_NODELAY` (the pair count checked the same way). The
//! host side times each row on its clock, from the request to the last
//! byte, and reads the VMM's `utime + stime` and `guest_time`
//! (`/proc/PID/stat`, all its threads) at both ends, printing one
//! `@@NET` line per row and one `@@NETRUN` line per boot.
//!
//! **Where.** Only nested (on a PVM host, in one L1 of the test bed, as
//! the `linux` suite; QEMU shipped in with [`vmm_testbed::Job::with_qemu`]):
//! the tap and its address live in L1, which has no other network, so no
//! packet leaves the test bed. Directly on a host the suite would make a
//! tap and address on the host itself, so it does not run there (the
//! section says so).
//!
//! **The VMMs.** Ours: `--netdev tap,id=n0,ifname=tap0,vhost=off --device
//! virtio-net-pci,netdev=n0`, and the same with `vhost=on` when L1 has
//! `/dev/vhost-net`. QEMU: `-M microvm,pcie=on` (as the `blk` suite) with
//! `-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off` and
//! `-device virtio-net-pci,netdev=n0,romfile=` (no option ROM: microvm
//! boots the kernel directly); the same with `vhost=on` when L1 has
//! `/dev/vhost-net` (after loading `vhost_net` and its dependencies from
//! the guest files, when they are there). Ours with vhost=on is reported
//! against QEMU with vhost=on. Same kernel, initramfs, 256 MiB, command
//! line, and vCPUs (1; 2 as well without `--quick`).
//!
//! **vsock.** The same rows over AF_VSOCK ([`vmms`]): the guest (CID 3,
//! Debian's `vmw_vsock_virtio_transport`, its own initramfs) connects to
//! CID 2; ours with `virtio-vsock-pci,uds=` (`net_load` in L1 listens on
//! the Unix socket the device connects such a connection to) and with
//! `vhost-vsock-pci`, QEMU with `vhost-vsock-pci` (`net_load` in L1
//! listens on AF_VSOCK), the vhost ones when L1 has `/dev/vhost-vsock`.
//!
//! **The runs.** One script in L1 boots every run in turn (each VMM once
//! per round, who goes first rotating), no warm-up; at most [`MAX_RUNS`]
//! rounds, one with `--quick` (which also shortens the rows). A boot that
//! fails is printed and counted, never tried again; only an L1 that dies
//! or hangs is followed by one fresh L1 for the boots it did not run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmm_testbed::{initramfs::busybox_initramfs, GuestFiles, HostKvm, Job};

use super::blk::build_static;
use super::report::{Goal, Row, Section, Who};
use super::{session, Ctx, TempDir};

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 256;
/// The kernel command line of both VMMs.
const APPEND: &str = "console=ttyS0 reboot=t panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp";
/// Rounds at most (each boots every VMM once per vCPU count).
const MAX_RUNS: usize = 3;
/// One boot's time limit inside the script, seconds.
const BOOT_TIMEOUT_S: u32 = 150;
/// L1 sessions at most.
const SESSIONS: usize = 2;
/// The tool's name in the job folder and in the guest.
const TOOL: &str = "net_load";
/// The host side's TCP port.
const PORT: u16 = 7777;
/// The tap both VMMs make, and the addresses on each end.
const TAP: &str = "tap0";
const HOST_ADDR: &str = "10.0.2.1";
const GUEST_ADDR: &str = "10.0.2.15";
/// The guest's drivers, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];
/// The guest's vsock drivers, in dependency order.
const VSOCK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];
/// What L1 needs for `/dev/vhost-net`, in dependency order (shipped when
/// the guest files have them; `tun` is loaded by the test bed).
const VHOST_MODULES: &[&str] = &["vhost_iotlb", "vhost", "tap", "vhost_net"];
/// One GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// The rows' sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sizes {
    /// Seconds per row.
    secs: u32,
    /// The vCPU counts.
    cpus: &'static [u32],
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                secs: 2,
                cpus: &[1],
            }
        } else {
            Self {
                secs: 5,
                cpus: &[1, 2],
            }
        }
    }
}

/// The guest's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tx,
    Rx,
    Rr,
}

const KINDS: [Kind; 3] = [Kind::Tx, Kind::Rx, Kind::Rr];

impl Kind {
    /// The `row=` value `net_load` prints.
    fn key(self) -> &'static str {
        match self {
            Kind::Tx => "tx",
            Kind::Rx => "rx",
            Kind::Rr => "rr",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.key() == key)
    }

    /// The row's name, over vsock or TCP.
    fn label(self, vsock: bool) -> String {
        let over = if vsock { "vsock" } else { "TCP" };
        match self {
            Kind::Tx => format!("{over} stream guest → L1"),
            Kind::Rx => format!("{over} stream L1 → guest"),
            Kind::Rr => format!("{over} request/response, 1 byte"),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Kind::Tx | Kind::Rx => "MiB/s",
            Kind::Rr => "trans/s",
        }
    }

    fn is_stream(self) -> bool {
        self != Kind::Rr
    }
}

/// One boot: which VMM, how many vCPUs, which round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label {
    vmm: Vmm,
    cpus: u32,
    run: usize,
}

impl Label {
    fn describe(&self) -> String {
        format!(
            "{}, {}, run {}",
            self.vmm.name(),
            vcpus(self.cpus),
            self.run
        )
    }
}

fn vcpus(n: u32) -> String {
    format!("{n} vCPU{}", if n == 1 { "" } else { "s" })
}

/// Per vCPU count, `runs` rounds of every VMM in `only` (all when
/// empty), the first one rotating.
fn plan(runs: usize, cpus: &[u32], only: &[Vmm]) -> Vec<Label> {
    let mut v = Vec::new();
    for &c in cpus {
        for run in 0..runs {
            for k in 0..VMMS.len() {
                let vmm = VMMS[(run + k) % VMMS.len()];
                if only.is_empty() || only.contains(&vmm) {
                    v.push(Label { vmm, cpus: c, run });
                }
            }
        }
    }
    v
}

/// The VMMs `BENCH_NET_VMMS` names (comma-separated keys: `ours`,
/// `qemu`, `ours-vhost`, `qemu-vhost`, `vsock-ours`, `vsock-qemu`,
/// `vsock-ours-vhost`), for a shorter run of some rows; empty (all)
/// when it is not set.
fn only_vmms(value: Option<&str>) -> Result<Vec<Vmm>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(|k| {
            Vmm::from_key(k.trim()).with_context(|| {
                let keys: Vec<&str> = VMMS.iter().map(|v| v.key()).collect();
                format!("BENCH_NET_VMMS: no VMM `{k}` (known: {})", keys.join(", "))
            })
        })
        .collect()
}

/// The script in L1: `/dev/vhost-net` if it can be had (said on an
/// `@@NETVHOST yes|no` line) and whether there is `/dev/vhost-vsock`
/// (`@@NETVHOSTVSOCK yes|no`), then `boots` in turn (those on a host
/// kernel's device only with it); `net_load`'s lines go to
/// `$TESTBED_LIVE`.
fn script(boots: &[Label]) -> String {
    let mut s = format!(
        "[ -e /dev/vhost-net ] || for m in {}; do [ -e $m.ko ] && insmod $m.ko; done 2>/dev/null\n\
         if [ -e /dev/vhost-net ]; then echo '@@NETVHOST yes'; else echo '@@NETVHOST no'; fi \
         >>\"$TESTBED_LIVE\"\n\
         if [ -e /dev/vhost-vsock ]; then echo '@@NETVHOSTVSOCK yes'; else echo '@@NETVHOSTVSOCK no'; fi \
         >>\"$TESTBED_LIVE\"\n",
        VHOST_MODULES.join(" ")
    );
    for b in boots {
        let mut line = format!(
            "./{TOOL} host \"vmm={} cpus={} run={}\" {BOOT_TIMEOUT_S} /tmp/l2.log {} {} \
             >>\"$TESTBED_LIVE\"",
            b.vmm.key(),
            b.cpus,
            b.run,
            b.vmm.listen(),
            b.vmm.command(b.cpus)
        );
        if b.vmm == Vmm::VsockOurs {
            // The VMM binds the socket itself, and refuses a path in use.
            line = format!("rm -f {UDS}; {line}");
        }
        match b.vmm.needs() {
            Some(dev) => {
                let _ = writeln!(s, "if [ -e {dev} ]; then {line}; fi");
            }
            None => {
                let _ = writeln!(s, "{line}");
            }
        }
    }
    s
}

/// The L2 guest's `/init`: the virtio-net driver and the address (or the
/// vsock driver), the load, its exit status, a reboot (a second later:
/// `reboot -f` drops what the console's driver has not sent yet, the
/// load's last lines with it).
fn init_script(secs: u32, vsock: bool) -> String {
    let (modules, setup, server) = if vsock {
        (VSOCK_MODULES, String::new(), "vsock:2".to_owned())
    } else {
        (
            MODULES,
            format!(
                "i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done\n\
                 ip link set lo up\n\
                 ip addr add {GUEST_ADDR}/24 dev eth0\n\
                 ip link set eth0 up\n"
            ),
            HOST_ADDR.to_owned(),
        )
    };
    format!(
        "#!/bin/sh\n\
         export PATH=/bin:/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         for m in {}; do insmod /lib/modules/$m.ko; done\n\
         {setup}\
         /{TOOL} client {server} {PORT} {secs}\n\
         echo \"@@NET-EXIT $?\"\n\
         sleep 1\n\
         reboot -f\n",
        modules.join(" ")
    )
}

/// The `net` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let runs = if ctx.quick { 1 } else { ctx.runs.min(MAX_RUNS) };
    let sizes = Sizes::new(ctx.quick);
    if HostKvm::detect() != HostKvm::Pvm {
        let mut s = Section::new("net", "Network: virtio-net-pci on a tap");
        s.note(
            "Not run: this suite runs only nested in the test bed (on a PVM host), where the tap \
             and its address live in L1; here they would be this host's.",
        );
        return Ok(vec![s]);
    }
    let (rows, notes) = boots(runs, sizes)?;
    Ok(vec![section(&rows, runs, sizes, notes)])
}

/// Why QEMU's vhost=on rows are missing, if they are: `vhost` is what L1
/// said about `/dev/vhost-net`, `shipped` the modules for it the job
/// brought.
fn vhost_note(vhost: Option<bool>, shipped: &[&str]) -> Option<String> {
    let why = match vhost {
        Some(true) => return None,
        None => "L1 never said whether it had /dev/vhost-net".to_owned(),
        Some(false) if shipped.is_empty() => format!(
            "L1 has no /dev/vhost-net: its kernel has vhost_net as a module, and the guest files \
             carry none of {} (`cargo xtask guest` does not fetch them)",
            VHOST_MODULES.join(", ")
        ),
        Some(false) => format!(
            "L1 has no /dev/vhost-net, even after loading {} from the guest files",
            shipped.join(", ")
        ),
    };
    Some(format!("vhost=on (ours and QEMU's): not measured: {why}."))
}

/// The report's section: per vCPU count and per QEMU measured, ours beside
/// it on each row (rate; for the streams host CPU per GiB, whole and
/// outside guest mode).
fn section(rows: &[RowLine], runs: usize, sizes: Sizes, notes: Vec<String>) -> Section {
    let mut s = Section::new(
        "net",
        "Network: virtio-net-pci on a tap, TCP between a Linux guest and L1, and vsock (nested: \
         both VMMs in one L1 of the test bed, the tap in L1)",
    );
    s.note(format!(
        "In the guest (net_load.c, Debian's virtio_net, {GUEST_ADDR}/24) against the same program \
         in L1 on the tap ({HOST_ADDR}/24): a TCP stream guest → L1 and one L1 → guest in \
         128 KiB writes, then 1-byte request/response pairs with TCP_NODELAY, {} s each, one \
         connection per row; each row's byte or pair count is sent back by the receiver and \
         checked. Rates are timed in L1 from the request to the last byte. {runs} boot(s) per VMM \
         and vCPU count, taking turns, no warm-up; medians over the boots.",
        sizes.secs
    ));
    s.note(format!(
        "Ours: --netdev tap,id=n0,ifname={TAP},vhost=off|on --device virtio-net-pci,netdev=n0. \
         QEMU: -M microvm,pcie=on -netdev tap,id=n0,ifname={TAP},script=no,downscript=no,\
         vhost=off|on -device virtio-net-pci,netdev=n0,romfile=. Each vhost=on row set compares \
         ours with vhost=on against QEMU with vhost=on. Both: the default guest's kernel, \
         {MEMORY_MIB} MiB, the same command line."
    ));
    s.note(format!(
        "vsock rows: the same rows over AF_VSOCK, the guest (Debian's \
         vmw_vsock_virtio_transport, CID {GUEST_CID}) connecting to CID 2 port {PORT}: ours with \
         --device virtio-vsock-pci,guest-cid={GUEST_CID},uds={UDS} (net_load in L1 listening on \
         {UDS}_{PORT}) and with --device vhost-vsock-pci,guest-cid={GUEST_CID} (net_load \
         listening on AF_VSOCK port {PORT} in L1), each against QEMU's -device \
         vhost-vsock-pci,guest-cid={GUEST_CID}."
    ));
    s.note(
        "Host CPU per GiB: the VMM process's utime + stime (/proc/PID/stat in L1, all threads, \
         10 ms ticks) from the row's start to its end, in CPU seconds per GiB (2^30 bytes) moved; \
         it includes the vCPUs' time in guest mode (the guest's own TCP work); \"outside guest \
         mode\" subtracts the process's guest_time; \"outside the vCPU threads\" subtracts the \
         whole CPU time of the VMM's vCPU threads (found by name in /proc/PID/task: ours \
         \"vcpu N\", QEMU's \"CPU N/KVM\"), leaving the data path and the main loop (ours: the \
         device's worker thread; QEMU vhost=off: its main loop; with vhost: the kernel's vhost \
         worker). With vhost (vhost=on, vhost-vsock-pci) the \
         data path runs on the kernel's vhost worker, which L1's kernel (before 6.4) runs as a \
         thread outside the process, named vhost-PID after its owner: its utime + stime is \
         added to the VMM's (found by name at each row's start). Other kernel work outside the \
         process (the tap's softirqs) is in neither. Throughput and request/response: more is \
         better; CPU per GiB: less is better (the goal column states parity with QEMU).",
    );
    s.note(helpers_note(rows));
    s.note(others_note(rows));
    s.note(
        "Nested, every exit of L2 goes through L1's TCG-emulated SVM and L1's own network stack \
         runs under TCG: compare the two VMMs with each other, not with hardware figures.",
    );
    for &cpus in sizes.cpus {
        let measured = |vmm: Option<Vmm>| {
            rows.iter()
                .any(|r| r.label.cpus == cpus && vmm.is_none_or(|v| r.label.vmm == v))
        };
        if !measured(None) {
            continue;
        }
        for (ours, q) in [
            (Vmm::Ours, Vmm::Qemu),
            (Vmm::OursVhost, Vmm::QemuVhost),
            (Vmm::VsockOurs, Vmm::VsockQemu),
            (Vmm::VsockOursVhost, Vmm::VsockQemu),
        ] {
            // The vhost and vsock pairs only where a boot of either ran.
            if ours == Vmm::Ours || measured(Some(ours)) || measured(Some(q)) {
                s.rows.extend(rows_for(rows, cpus, ours, q));
            }
        }
    }
    for n in notes {
        s.note(n);
    }
    s
}

/// Which VMMs had the kernel's vhost workers counted in their CPU time,
/// and how many: a row whose VMM uses vhost should name one per device.
fn helpers_note(rows: &[RowLine]) -> String {
    let mut seen: Vec<(Vmm, u32, u32)> = Vec::new();
    for r in rows {
        match seen.iter_mut().find(|(v, ..)| *v == r.label.vmm) {
            Some((_, lo, hi)) => (*lo, *hi) = ((*lo).min(r.helpers), (*hi).max(r.helpers)),
            None => seen.push((r.label.vmm, r.helpers, r.helpers)),
        }
    }
    let counts: Vec<String> = seen
        .iter()
        .map(|&(v, lo, hi)| match lo == hi {
            true => format!("{} {lo}", v.name()),
            false => format!("{} {lo}-{hi}", v.name()),
        })
        .collect();
    format!(
        "Kernel vhost workers counted per row: {}.",
        if counts.is_empty() {
            "no rows".to_owned()
        } else {
            counts.join(", ")
        }
    )
}

/// How much other work L1 did during the rows: the median and the
/// largest of [`RowLine::other_ms`], and which row that was.
fn others_note(rows: &[RowLine]) -> String {
    let mut ms: Vec<f64> = rows.iter().map(|r| r.other_ms).collect();
    ms.sort_by(f64::total_cmp);
    let Some(worst) = rows.iter().max_by(|a, b| a.other_ms.total_cmp(&b.other_ms)) else {
        return "Other work in L1 during the rows: no rows.".to_owned();
    };
    format!(
        "Other work in L1 during the rows (the CPU time of every task but the VMM, its vhost \
         workers and net_load, from /proc in L1): median {:.0} ms a row, the most {:.0} ms \
         ({}, {}: {:.0}% of one CPU over the row).",
        ms[ms.len() / 2],
        worst.other_ms,
        worst.label.describe(),
        worst.kind.label(worst.label.vmm.is_vsock()),
        worst.other_ms / (worst.us / 1e3) * 100.0
    )
}

/// The rows of `ours` beside QEMU `q` with `cpus` vCPUs.
fn rows_for(rows: &[RowLine], cpus: u32, ours: Vmm, q: Vmm) -> Vec<Row> {
    let mut out = Vec::new();
    let prefix = vcpus(cpus);
    let vs = format!(" ({} vs {})", ours.name(), q.name());
    let pick = |kind: Kind| {
        rows.iter().filter(move |r| {
            r.label.cpus == cpus && r.kind == kind && (r.label.vmm == ours || r.label.vmm == q)
        })
    };
    let who = |r: &RowLine| {
        if r.label.vmm.is_ours() {
            Who::Ours
        } else {
            Who::Qemu
        }
    };
    let vsock = ours.is_vsock();
    for kind in KINDS {
        let mut rate = Row::new(format!("{prefix}: {}{vs}", kind.label(vsock)), kind.unit())
            .goal(Goal::AtLeastQemu(1.0));
        for r in pick(kind) {
            rate.push(who(r), r.rate());
        }
        out.push(rate);
        if !kind.is_stream() {
            continue;
        }
        let cpu_row = |which: &str| {
            Row::new(
                format!(
                    "{prefix}: host CPU per GiB{which}, {}{vs}",
                    kind.label(vsock)
                ),
                "s/GiB",
            )
            .goal(Goal::QemuRatio(1.0))
        };
        let mut cpu = cpu_row("");
        let mut own = cpu_row(" outside guest mode");
        let mut path = cpu_row(" outside the vCPU threads");
        for r in pick(kind) {
            if let Some(c) = r.cpu_per_gib_s() {
                cpu.push(who(r), c);
            }
            if let Some(c) = r.vmm_cpu_per_gib_s() {
                own.push(who(r), c);
            }
            if let Some(c) = r.data_path_cpu_per_gib_s() {
                path.push(who(r), c);
            }
        }
        out.extend([cpu, own, path]);
    }
    out
}

/// The L2 initramfs: busybox, the virtio-net (or vsock) modules,
/// `net_load`, `/init`.
fn guest_initrd(
    guest: &GuestFiles,
    dir: &Path,
    tool: &Path,
    secs: u32,
    vsock: bool,
) -> Result<PathBuf> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut extra = vec![(TOOL.to_owned(), read(tool)?, 0o755)];
    for m in if vsock { VSOCK_MODULES } else { MODULES } {
        extra.push((
            format!("lib/modules/{m}.ko"),
            read(&guest.module(m))?,
            0o644,
        ));
    }
    let initrd = dir.join(if vsock {
        "initrd-vsock.cpio"
    } else {
        "initrd.cpio"
    });
    let image = busybox_initramfs(&read(&guest.busybox)?, &init_script(secs, vsock), &extra)?;
    std::fs::write(&initrd, image).with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(initrd)
}

/// `BENCH_NET_CONSOLE=PATH` keeps each L1 session's console in `PATH.N`
/// (session N): every marker line, those no report shows too (the tasks
/// that used L1's CPU beside a row's VMM, `@@NETOTHER`).
fn keep_console(session: usize, console: &str) {
    if let Some(path) = std::env::var_os("BENCH_NET_CONSOLE") {
        let mut path = std::path::PathBuf::from(path).into_os_string();
        path.push(format!(".{session}"));
        if let Err(e) = std::fs::write(&path, console) {
            eprintln!("xtask: BENCH_NET_CONSOLE: {}: {e}", path.to_string_lossy());
        }
    }
}

/// Boots every VMM `runs` times per vCPU count (see the module docs);
/// returns the rows of the good boots and the notes (sessions, vhost-net,
/// failures).
fn boots(runs: usize, sizes: Sizes) -> Result<(Vec<RowLine>, Vec<String>)> {
    let guest = GuestFiles::default_location()?;
    for m in MODULES.iter().chain(VSOCK_MODULES).chain(&["tun"]) {
        if !guest.module(m).exists() {
            bail!("no {m}.ko in the guest files (cargo xtask guest refreshes them)");
        }
    }
    let vmm = crate::target::vmm();
    let tmp = TempDir::new("vmm-bench-net")?;
    let tool = build_static(&tmp.0, "net_load.c", TOOL)?;
    let initrd = guest_initrd(&guest, &tmp.0, &tool, sizes.secs, false)?;
    let initrd_vsock = guest_initrd(&guest, &tmp.0, &tool, sizes.secs, true)?;

    let only = only_vmms(std::env::var("BENCH_NET_VMMS").ok().as_deref())?;
    let mut pending = plan(runs, sizes.cpus, &only);
    let mut good: Vec<RowLine> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut notes = Vec::new();
    if !only.is_empty() {
        let names: Vec<&str> = only.iter().map(|v| v.name()).collect();
        notes.push(format!(
            "Only some VMMs booted (BENCH_NET_VMMS): {}.",
            names.join(", ")
        ));
    }
    let mut vhost = None;
    let mut vhost_vsock = None;
    let shipped: Vec<&str> = VHOST_MODULES
        .iter()
        .copied()
        .filter(|m| guest.module(m).exists())
        .collect();
    for session in 1..=SESSIONS {
        let mut job = Job::new(["--version"])
            .file("bzImage", &guest.bzimage)
            .file("initrd", &initrd)
            .file("initrd-vsock", &initrd_vsock)
            .file(TOOL, &tool)
            .with_qemu();
        for m in &shipped {
            job = job.file(&format!("{m}.ko"), &guest.module(m));
        }
        // A boot: some 20-40 s nested, plus its rows.
        let per_boot = 60 + 3 * u64::from(sizes.secs);
        let job = job
            .companion(&script(&pending))
            .silence_limit(Duration::from_secs(u64::from(BOOT_TIMEOUT_S) + 30))
            .timeout(Duration::from_secs(180 + pending.len() as u64 * per_boot));
        eprintln!("xtask: network, session {session}: {} boots", pending.len());
        let run = vmm_testbed::run_linux(&guest, &vmm, &job);
        let console = session::l1_console("network", session, run, &mut notes)?;
        keep_console(session, &console);
        let p = parse_console(&console);
        for r in &p.good {
            eprintln!(
                "xtask: {}: {}: {:.1} {}, CPU {:.1} ms",
                r.label.describe(),
                r.kind.label(r.label.vmm.is_vsock()),
                r.rate(),
                r.kind.unit(),
                r.cpu_ms.unwrap_or(f64::NAN)
            );
        }
        for x in &p.failures {
            eprintln!("xtask: FAILED {}; its last lines:", x.what);
            for l in x.log.lines().rev().take(8).collect::<Vec<_>>().iter().rev() {
                eprintln!("    {l}");
            }
        }
        vhost = vhost.or(p.vhost);
        vhost_vsock = vhost_vsock.or(p.vhost_vsock);
        // Failed boots are not tried again: only those that never ran.
        let skipped = |b: &Label| match b.vmm.needs() {
            Some("/dev/vhost-net") => p.vhost == Some(false),
            Some(_) => p.vhost_vsock == Some(false),
            None => false,
        };
        pending.retain(|b| !(p.ended.contains(b) || skipped(b)));
        good.extend(p.good);
        failures.extend(p.failures);
        if pending.is_empty() {
            break;
        }
    }
    notes.extend(vhost_note(vhost, &shipped));
    if vhost_vsock == Some(false) {
        notes.push(
            "vhost-vsock-pci (ours and QEMU's): not measured: L1 has no /dev/vhost-vsock.".into(),
        );
    }
    let failed: Vec<String> = VMMS
        .iter()
        .map(|&v| {
            let n = failures.iter().filter(|f| f.label.vmm == v).count();
            format!("{} {n}", v.name())
        })
        .collect();
    notes.push(format!(
        "failed boots (not retried, left out of the figures): {}",
        failed.join(", ")
    ));
    for f in &failures {
        notes.push(format!("failed: {}", f.what));
    }
    if !pending.is_empty() {
        let missing: Vec<String> = pending.iter().map(Label::describe).collect();
        notes.push(format!(
            "not measured after {SESSIONS} L1 sessions: {}",
            missing.join("; ")
        ));
    }
    // A benchmark that measures neither our VMM nor QEMU (of those it
    // boots) is broken, not unlucky.
    let (ours, qemu) = match only.first() {
        Some(&first) => (
            only.iter().copied().find(|v| v.is_ours()).unwrap_or(first),
            only.iter().copied().find(|v| !v.is_ours()).unwrap_or(first),
        ),
        None => (Vmm::Ours, Vmm::Qemu),
    };
    for vmm in [ours, qemu] {
        if !good.iter().any(|r| r.label.vmm == vmm) {
            let mut why = String::new();
            for f in &failures {
                let _ = write!(
                    why,
                    "\n{}; end of its console and stderr:\n{}\n",
                    f.what, f.log
                );
            }
            bail!(
                "the network benchmark measured no boot of {} ({})\nfailed boots:{why}",
                vmm.name(),
                notes.join("; ")
            );
        }
    }
    Ok((good, notes))
}

mod console;
#[cfg(test)]
mod tests;
mod vmms;

use console::{parse_console, Failure, RowLine};
use vmms::{Vmm, GUEST_CID, UDS, VMMS};
