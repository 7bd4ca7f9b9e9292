//! `cargo xtask bench snapshot`: a 128 MiB guest saved to a file and
//! started again from it, ours beside QEMU, on this host's `/dev/kvm`.
//!
//! Two guests: `counter:1000` counts in memory and prints each count on
//! COM1, a line every few hundred microseconds; `filled-counter:112`
//! first writes 112 MiB of its RAM with a pattern, then counts the same
//! way (what a save writes and a restore brings back grows with it).
//! Per run, guest and VMM:
//!
//! * **save**: the guest running (its first count on the console, then
//!   50 ms), QMP `migrate` to a file, timed from the request to the
//!   `MIGRATION` event saying `completed` (the `events` capability on):
//!   ours with `file:PATH`, QEMU 7.2 (which has no `file:` URI) with
//!   `exec:cat > PATH`; then the file's size (bytes on disk for ours:
//!   pages of zeroes are holes);
//! * **restore**: a new process with the same command line and
//!   `--incoming file:PATH` (QEMU: `-incoming "exec:cat PATH"`), timed
//!   from the spawn to the first byte the restored guest prints; then
//!   the process's RSS (VmRSS);
//! * **save of the restored VM**: the same again, from a process
//!   restored from that file (ours: RAM mapped from it).
//!
//! * **live migration** (of the counting guest, and of
//!   `dirtying-counter:16`, which writes the same 16 MiB again before
//!   each count): a destination started with `--incoming
//!   tcp:127.0.0.1:PORT` (QEMU: `-incoming tcp:...`), the running source
//!   migrated to it with QMP `migrate` over loopback TCP (both with their
//!   defaults: `downtime-limit` 300 ms, `max-bandwidth` 128 MiB/s), and
//!   `query-migrate`'s `total-time` and `downtime` once `completed`.
//!
//! QEMU runs `-M microvm`. Firecracker (restore 14.2 ms, snapshot 171 ms)
//! and Cloud Hypervisor (55.6 ms, 57 ms) were measured on this host
//! before, with their own tools; they are quoted in the notes, not run.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::qmp::{Session, Vmm};
use super::report::{Row, Section, Who};
use super::Ctx;

const MEMORY: &str = "128M";
/// What the filling guest writes before it counts.
const FILLED_MIB: u32 = 112;
/// What the dirtying guest writes again before each count.
const DIRTYING_MIB: u32 = 16;

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The command line of `who` on `guest`, without its QMP or incoming part.
fn base(who: Who, ctx: &Ctx, guest: &Path) -> Vec<String> {
    match who {
        Who::Qemu => vec![
            path(
                ctx.qemu
                    .as_deref()
                    .unwrap_or(Path::new("qemu-system-x86_64")),
            ),
            "-M".into(),
            "microvm".into(),
            "-accel".into(),
            "kvm".into(),
            "-cpu".into(),
            "host,-arch-capabilities".into(),
            "-m".into(),
            MEMORY.into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-kernel".into(),
            path(guest),
        ],
        _ => vec![
            path(&crate::target::vmm()),
            "--kernel".into(),
            path(guest),
            "--memory".into(),
            MEMORY.into(),
        ]
        .into_iter()
        .chain(ctx.vmm_args.iter().cloned())
        .collect(),
    }
}

/// Saves a running guest into `file`; the time to `completed`.
/// `from`: a snapshot the saved VM is restored from first (a restored
/// VM's save).
fn save(who: Who, ctx: &Ctx, guest: &Path, from: Option<&Path>, file: &Path) -> Result<Duration> {
    let socket = ctx.tmp.join(format!("snap-{}.sock", who.name().len()));
    let console = ctx.tmp.join(format!("snap-{}.console", who.name().len()));
    let _ = std::fs::remove_file(&console);
    let mut argv = base(who, ctx, guest);
    match who {
        Who::Qemu => argv.extend([
            "-serial".into(),
            format!("file:{}", console.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", socket.display()),
        ]),
        _ => argv.extend([
            "--serial".into(),
            format!("file:{}", console.display()),
            "--qmp".into(),
            path(&socket),
        ]),
    }
    if let Some(from) = from {
        argv.extend(match who {
            Who::Qemu => ["-incoming".into(), format!("exec:cat {}", from.display())],
            _ => ["--incoming".into(), format!("file:{}", from.display())],
        });
    }
    let vmm = Vmm {
        who,
        name: who.name(),
        argv,
        socket,
    };
    let _ = std::fs::remove_file(file);
    let mut s = Session::start(&vmm)?;
    counting(who, &console)?;
    s.request_json(
        r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}"#,
        None,
    )?;
    let uri = match who {
        Who::Qemu => format!("exec:cat > {}", file.display()),
        _ => format!("file:{}", file.display()),
    };
    let request = serde_json::json!({"execute": "migrate", "arguments": {"uri": uri}});
    let took = s.request_json(&request.to_string(), Some("completed"))?;
    s.quit()?;
    Ok(took)
}

/// Waits until the guest has printed its first count on `console` (a
/// filling or dirtying guest counts once it has written its RAM), and a
/// little more.
fn counting(who: Who, console: &Path) -> Result<()> {
    let waiting = Instant::now();
    while std::fs::metadata(console).map_or(0, |m| m.len()) == 0 {
        if waiting.elapsed() > Duration::from_secs(30) {
            bail!("{}: the guest printed nothing in 30 s", who.name());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    Ok(())
}

/// What one live migration measured.
struct Live {
    /// `query-migrate`'s total time, ms.
    total_ms: f64,
    /// Its downtime, ms.
    downtime_ms: f64,
    /// With `timed`: the guest's counts per second before the migration
    /// (one over the time between its first two count lines).
    counts_per_s: Option<f64>,
}

/// One count line: eight hex digits and a newline.
const COUNT_LINE: u64 = 9;

/// The time from the end of the guest's first count line on `console` to
/// the end of its second (a dirtying guest's period: it rewrites its MiB
/// before each count).
fn count_period(who: Who, console: &Path) -> Result<Duration> {
    let printed = || std::fs::metadata(console).map_or(0, |m| m.len());
    let waiting = Instant::now();
    let mut first = None;
    loop {
        let n = printed();
        if n >= 2 * COUNT_LINE {
            if let Some(t) = first {
                return Ok(Instant::now().duration_since(t));
            }
            bail!("{}: two count lines at once: no period to time", who.name());
        }
        if n >= COUNT_LINE && first.is_none() {
            first = Some(Instant::now());
        }
        if waiting.elapsed() > Duration::from_secs(30) {
            bail!("{}: the guest printed no second count in 30 s", who.name());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Migrates a running guest live over loopback TCP to a new process;
/// with `timed`, times the guest's count period first.
fn live(who: Who, ctx: &Ctx, guest: &Path, timed: bool) -> Result<Live> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let console = ctx.tmp.join(format!("live-{}.console", who.name().len()));
    let _ = std::fs::remove_file(&console);
    let session = |tag: &str, incoming: Option<&str>| -> Result<Session> {
        let socket = ctx
            .tmp
            .join(format!("live-{tag}-{}.sock", who.name().len()));
        // The source's console goes to a file (to see it count).
        let serial = match incoming {
            Some(_) => "none".to_owned(),
            None => format!("file:{}", console.display()),
        };
        let mut argv = base(who, ctx, guest);
        match who {
            Who::Qemu => {
                argv.extend([
                    "-serial".into(),
                    serial,
                    "-qmp".into(),
                    format!("unix:{},server=on,wait=off", socket.display()),
                ]);
                if let Some(i) = incoming {
                    argv.extend(["-incoming".into(), i.to_owned()]);
                }
            }
            _ => {
                argv.extend(["--serial".into(), serial, "--qmp".into(), path(&socket)]);
                if let Some(i) = incoming {
                    argv.extend(["--incoming".into(), i.to_owned()]);
                }
            }
        }
        Session::start(&Vmm {
            who,
            name: who.name(),
            argv,
            socket,
        })
    };
    let dst = session("dst", Some(&uri))?;
    let mut src = session("src", None)?;
    let counts_per_s = if timed {
        Some(1.0 / count_period(who, &console)?.as_secs_f64())
    } else {
        counting(who, &console)?;
        None
    };
    src.request_json(
        r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}"#,
        None,
    )?;
    let request = serde_json::json!({"execute": "migrate", "arguments": {"uri": uri}});
    src.request_json(&request.to_string(), Some("completed"))?;
    let info = src.ask(r#"{"execute":"query-migrate"}"#)?;
    src.quit()?;
    dst.quit()?;
    let field = |name: &str| {
        info[name]
            .as_f64()
            .with_context(|| format!("{}: no {name} in {info}", who.name()))
    };
    Ok(Live {
        total_ms: field("total-time")?,
        downtime_ms: field("downtime")?,
        counts_per_s,
    })
}

/// Starts a guest from `file`; the time to its first byte, and its RSS
/// then (KiB).
fn restore(who: Who, ctx: &Ctx, guest: &Path, file: &Path) -> Result<(Duration, u64)> {
    let mut argv = base(who, ctx, guest);
    match who {
        Who::Qemu => argv.extend([
            "-serial".into(),
            "stdio".into(),
            "-incoming".into(),
            format!("exec:cat {}", file.display()),
        ]),
        _ => argv.extend([
            "--serial".into(),
            "stdio".into(),
            "--incoming".into(),
            format!("file:{}", file.display()),
        ]),
    }
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", who.name()))?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut byte = [0u8];
    let got = out.read(&mut byte);
    let first = start.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    match got {
        Ok(1) => Ok((first, rss)),
        _ => bail!("{}: the restored guest printed nothing", who.name()),
    }
}

/// The `snapshot` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let runs = if ctx.quick {
        ctx.runs
    } else {
        ctx.runs.min(10)
    };
    // The counting guest, and the same after writing most of its RAM.
    let guests = [
        (ctx.guest("counter:1000")?, ""),
        (
            ctx.guest(&format!("filled-counter:{FILLED_MIB}"))?,
            " (guest wrote 112 MiB)",
        ),
    ];
    let mut who = vec![Who::Ours];
    if ctx.qemu.is_some() {
        who.push(Who::Qemu);
    }
    let mut rows = Vec::new();
    for (guest, label) in &guests {
        let mut save_row = Row::new(format!("snapshot of 128 MiB{label}"), "ms");
        let mut size_row = Row::new(format!("snapshot file size{label}"), "MiB");
        let mut restore_row = Row::new(
            format!("restore: spawn to the guest's first byte{label}"),
            "ms",
        );
        let mut rss_row = Row::new(format!("RSS after restore{label}"), "MiB");
        let mut resave_row = Row::new(format!("snapshot of the restored VM{label}"), "ms");
        for round in 0..runs {
            for i in 0..who.len() {
                let w = who[(i + round) % who.len()];
                let file = ctx.tmp.join(format!("snap-{}.bin", w.name().len()));
                let took = save(w, ctx, guest, None, &file)?;
                save_row.push(w, took.as_secs_f64() * 1e3);
                // On disk: a hole costs nothing.
                let size = std::fs::metadata(&file)
                    .map(|m| m.blocks() * 512)
                    .unwrap_or(0);
                size_row.push(w, size as f64 / (1 << 20) as f64);
                let (first, rss) = restore(w, ctx, guest, &file)?;
                restore_row.push(w, first.as_secs_f64() * 1e3);
                rss_row.push(w, rss as f64 / 1024.0);
                let again = file.with_extension("again");
                let took = save(w, ctx, guest, Some(&file), &again)?;
                resave_row.push(w, took.as_secs_f64() * 1e3);
                let _ = std::fs::remove_file(&file);
                let _ = std::fs::remove_file(&again);
            }
        }
        rows.extend([save_row, size_row, restore_row, rss_row, resave_row]);
    }
    // Live: the counting guest, and one that rewrites 16 MiB as fast as
    // it can (more than the default 128 MiB/s can follow).
    let dirtying = ctx.guest(&format!("dirtying-counter:{DIRTYING_MIB}"))?;
    for (guest, label) in [(&guests[0].0, ""), (&dirtying, " (guest rewriting 16 MiB)")] {
        let mut live_row = Row::new(
            format!("live migration over loopback tcp: total time{label}"),
            "ms",
        );
        let mut downtime_row = Row::new(format!("live migration: downtime{label}"), "ms");
        let dirtying_guest = !label.is_empty();
        let mut rate_row = Row::new(
            "live migration: dirty rate of the guest rewriting 16 MiB, before it".to_owned(),
            "MiB/s",
        );
        for round in 0..runs {
            for i in 0..who.len() {
                let w = who[(i + round) % who.len()];
                let m = live(w, ctx, guest, dirtying_guest)?;
                live_row.push(w, m.total_ms);
                downtime_row.push(w, m.downtime_ms);
                if let Some(rate) = m.counts_per_s {
                    rate_row.push(w, rate * f64::from(DIRTYING_MIB));
                }
            }
        }
        rows.extend([live_row, downtime_row]);
        if dirtying_guest {
            rows.push(rate_row);
        }
    }
    let mut s = Section::new(
        "snapshot",
        format!(
            "Snapshot and restore: a counting PVH guest, {MEMORY}, 1 vCPU, this host's /dev/kvm"
        ),
    );
    s.note(
        "Save: QMP migrate while the guest runs, request to the MIGRATION event 'completed' \
         (ours: file:PATH; QEMU 7.2: exec:cat > PATH). Restore: a new process with the same \
         command line and --incoming file:PATH (QEMU: -incoming exec:cat PATH), spawn to the \
         restored guest's first byte on the console; RSS (VmRSS) at that moment. Then a \
         process restored from the file the same way is saved again (ours: its RAM mapped \
         from the file).",
    );
    s.note(
        "Targets from the issue, measured on this host with the peers' own tools (not run \
         here): restore Firecracker 14.2 ms, Cloud Hypervisor 55.6 ms, goal under 5 ms; \
         snapshot Firecracker 171 ms, Cloud Hypervisor 57 ms, goal under 50 ms.",
    );
    s.note(
        "Ours writes RAM as page-aligned images (zero pages as holes) and syncs the file \
         (fsync) before 'completed'; a restore maps the images private (pages come from the \
         file as the guest touches them). QEMU's exec: pipe is not synced, and its restore \
         reads the whole stream.",
    );
    s.note(
        "Live migration: a destination with --incoming tcp:127.0.0.1:PORT (QEMU: -incoming \
         tcp:...), QMP migrate from the running source over loopback, both with their default \
         downtime-limit (300 ms) and max-bandwidth (128 MiB/s); query-migrate's total-time \
         and downtime once completed. The dirtying guest's rate: the 16 MiB it rewrites per \
         count over the time between its first two count lines (the migration starts after \
         the second).",
    );
    s.rows = rows;
    Ok(vec![s])
}
