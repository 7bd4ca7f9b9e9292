//! The marker lines L1 and the guest print for `bench net` (`@@NET` rows,
//! `@@NETRUN` runs, failures), read back from a session's console.

use std::fmt::Write as _;

use super::super::linux::log_after;
use super::{Kind, Label, Vmm, GIB};

/// One `@@NET` line: a row's result.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RowLine {
    pub(super) label: Label,
    pub(super) kind: Kind,
    pub(super) bytes: u64,
    pub(super) trans: u64,
    pub(super) us: f64,
    /// The VMM's CPU time over the row; None when it could not be read.
    pub(super) cpu_ms: Option<f64>,
    /// The part of it its vCPUs spent in guest mode.
    pub(super) guest_ms: Option<f64>,
    /// The part of it its vCPU threads used, in guest mode or not (None
    /// when none was found by name).
    pub(super) vcpu_ms: Option<f64>,
    /// The kernel's vhost worker threads found serving the VMM, whose
    /// time is in `cpu_ms` (kernels before 6.4 run them outside the
    /// process).
    pub(super) helpers: u32,
    /// The CPU time every other task in L1 used over the row (L1's
    /// work that competed with the VMM: none of the VMM's, its vhost
    /// workers' or the load's own).
    pub(super) other_ms: f64,
}

impl RowLine {
    /// MiB/s for the streams, transactions per second for request/response.
    pub(super) fn rate(&self) -> f64 {
        let s = self.us / 1e6;
        if self.kind.is_stream() {
            self.bytes as f64 / f64::from(1 << 20) / s
        } else {
            self.trans as f64 / s
        }
    }

    /// The VMM's CPU seconds per GiB moved (streams only).
    pub(super) fn cpu_per_gib_s(&self) -> Option<f64> {
        self.per_gib(self.cpu_ms?)
    }

    /// The same outside guest mode (the VMM's own work and the kernel's
    /// on its behalf).
    pub(super) fn vmm_cpu_per_gib_s(&self) -> Option<f64> {
        self.per_gib((self.cpu_ms? - self.guest_ms?).max(0.0))
    }

    /// The same outside the vCPU threads: the data path (the device's
    /// worker threads, or the kernel's vhost worker) and the main loop.
    pub(super) fn data_path_cpu_per_gib_s(&self) -> Option<f64> {
        self.per_gib((self.cpu_ms? - self.vcpu_ms?).max(0.0))
    }

    pub(super) fn per_gib(&self, ms: f64) -> Option<f64> {
        (self.kind.is_stream() && self.bytes > 0).then(|| ms / 1e3 / (self.bytes as f64 / GIB))
    }
}

/// One `@@NETRUN` line: how a boot ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RunLine {
    pub(super) label: Label,
    pub(super) status: String,
    pub(super) done: bool,
    pub(super) errors: u32,
}

impl RunLine {
    pub(super) fn ok(&self) -> bool {
        self.status == "0" && self.done && self.errors == 0
    }
}

/// The `key=value` fields after `prefix` on `line` (which must start
/// with it, after blanks), the label's parsed.
pub(super) fn fields<'a>(line: &'a str, prefix: &str) -> Option<(Label, Vec<(&'a str, &'a str)>)> {
    let rest = line.trim().strip_prefix(prefix)?;
    let (mut vmm, mut cpus, mut run) = (None, None, None);
    let mut other = Vec::new();
    for field in rest.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "vmm" => vmm = Some(Vmm::from_key(v)?),
            "cpus" => cpus = Some(v.parse().ok()?),
            "run" => run = Some(v.parse().ok()?),
            _ => other.push((k, v)),
        }
    }
    Some((
        Label {
            vmm: vmm?,
            cpus: cpus?,
            run: run?,
        },
        other,
    ))
}

pub(super) fn get<'a>(f: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Parses `@@NET vmm=ours cpus=1 run=0 row=tx bytes=B trans=N us=T
/// cpu_ms=C guest_ms=G vcpu_ms=V helpers=H other_ms=O` (negative times:
/// not read).
pub(super) fn parse_row_line(line: &str) -> Option<RowLine> {
    let (label, f) = fields(line, "@@NET ")?;
    let us: f64 = get(&f, "us")?.parse().ok()?;
    let kind = Kind::from_key(get(&f, "row")?)?;
    let bytes: u64 = get(&f, "bytes")?.parse().ok()?;
    let trans: u64 = get(&f, "trans")?.parse().ok()?;
    let time = |key: &str| -> Option<Option<f64>> {
        let t: f64 = get(&f, key)?.parse().ok()?;
        Some((t.is_finite() && t >= 0.0).then_some(t))
    };
    let moved = if kind.is_stream() { bytes } else { trans };
    if !(us.is_finite() && us > 0.0) || moved == 0 {
        return None;
    }
    Some(RowLine {
        label,
        kind,
        bytes,
        trans,
        us,
        cpu_ms: time("cpu_ms")?,
        guest_ms: time("guest_ms")?,
        vcpu_ms: time("vcpu_ms")?,
        helpers: get(&f, "helpers")?.parse().ok()?,
        other_ms: get(&f, "other_ms")?
            .parse()
            .ok()
            .filter(|t: &f64| t.is_finite() && *t >= 0.0)?,
    })
}

/// Parses `@@NETRUN vmm=ours cpus=1 run=0 status=0 done=1 errors=0`.
pub(super) fn parse_run_line(line: &str) -> Option<RunLine> {
    let (label, f) = fields(line, "@@NETRUN ")?;
    Some(RunLine {
        label,
        status: get(&f, "status")?.to_owned(),
        done: get(&f, "done")? == "1",
        errors: get(&f, "errors")?.parse().ok()?,
    })
}

/// A boot that failed: what, its error lines, and the end of its console
/// and stderr.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) label: Label,
    pub(super) what: String,
    pub(super) log: String,
}

/// What one L1 session's console says.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    /// The rows of the good boots (`@@NETRUN` says status 0, the load
    /// done, no error on the host side).
    pub(super) good: Vec<RowLine>,
    pub(super) failures: Vec<Failure>,
    /// Every boot that ended (good or not).
    pub(super) ended: Vec<Label>,
    /// Whether L1 had `/dev/vhost-net` (None: not said).
    pub(super) vhost: Option<bool>,
    /// Whether L1 had `/dev/vhost-vsock` (None: not said).
    pub(super) vhost_vsock: Option<bool>,
}

/// Parses one session's console. Lines that do not parse are ignored
/// (L1's console can cut a line).
pub(super) fn parse_console(console: &str) -> Parsed {
    let lines: Vec<&str> = console.lines().collect();
    let rows: Vec<RowLine> = lines.iter().filter_map(|l| parse_row_line(l)).collect();
    let mut p = Parsed::default();
    for (i, line) in lines.iter().enumerate() {
        match line.trim() {
            "@@NETVHOST yes" => p.vhost = Some(true),
            "@@NETVHOST no" => p.vhost = Some(false),
            "@@NETVHOSTVSOCK yes" => p.vhost_vsock = Some(true),
            "@@NETVHOSTVSOCK no" => p.vhost_vsock = Some(false),
            _ => {}
        }
        let Some(r) = parse_run_line(line) else {
            continue;
        };
        p.ended.push(r.label);
        if r.ok() {
            p.good
                .extend(rows.iter().filter(|x| x.label == r.label).cloned());
            continue;
        }
        // The host side's own error lines for this boot.
        let tag = format!(
            "vmm={} cpus={} run={} ",
            r.label.vmm.key(),
            r.label.cpus,
            r.label.run
        );
        let errors: Vec<&str> = lines[..i]
            .iter()
            .filter_map(|l| l.trim().strip_prefix("@@NET-ERROR "))
            .filter_map(|l| l.strip_prefix(&tag))
            .collect();
        let mut what = format!("{}: status {}", r.label.describe(), r.status);
        if !r.done {
            what.push_str(", the load not done");
        }
        if !errors.is_empty() {
            let _ = write!(what, ", {}", errors.join("; "));
        }
        let seen: Vec<&str> = rows
            .iter()
            .filter(|x| x.label == r.label)
            .map(|x| x.kind.key())
            .collect();
        let _ = write!(
            what,
            " (rows L1 measured: {})",
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        );
        p.failures.push(Failure {
            label: r.label,
            what,
            log: log_after(&lines, i),
        });
    }
    p
}
