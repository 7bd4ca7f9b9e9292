//! `cargo xtask bench qmp`: how long `stop` and `cont` take, from the
//! request leaving the client to the `STOP` / `RESUME` event arriving, on
//! our VMM and on QEMU's `microvm` (its own QMP), in the same run, with the
//! same spinning PVH guest and 64 MiB. The two take turns in rounds.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::report::{Row, Section, Who};
use super::Ctx;

/// Rounds, each with this many stop/cont pairs per VMM (and with
/// `--quick`).
const ROUNDS: usize = 3;
const PAIRS: usize = 100;
const QUICK_ROUNDS: usize = 1;
const QUICK_PAIRS: usize = 20;

pub(super) struct Vmm {
    pub(super) who: Who,
    pub(super) name: &'static str,
    pub(super) argv: Vec<String>,
    pub(super) socket: PathBuf,
}

pub(super) struct Session {
    child: Child,
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Session {
    pub(super) fn start(vmm: &Vmm) -> Result<Self> {
        Self::spawn(vmm, Stdio::null())
    }

    /// As [`Session::start`], with the VMM's standard output (its serial
    /// console) piped to the returned reader.
    pub(super) fn start_with_console(vmm: &Vmm) -> Result<(Self, ChildStdout)> {
        let mut s = Self::spawn(vmm, Stdio::piped())?;
        let console = s.child.stdout.take().context("no console pipe")?;
        Ok((s, console))
    }

    fn spawn(vmm: &Vmm, stdout: Stdio) -> Result<Self> {
        let _ = std::fs::remove_file(&vmm.socket);
        let child = Command::new(&vmm.argv[0])
            .args(&vmm.argv[1..])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", vmm.name))?;
        let start = Instant::now();
        let w = loop {
            match UnixStream::connect(&vmm.socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    bail!("{}: no QMP socket: {e}", vmm.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        w.set_read_timeout(Some(Duration::from_secs(10)))?;
        let r = BufReader::new(w.try_clone()?);
        let mut s = Self { child, w, r };
        s.line()?;
        s.request("qmp_capabilities", None)?;
        Ok(s)
    }

    pub(super) fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        self.r.read_line(&mut l)?;
        if l.is_empty() {
            bail!("QMP connection closed");
        }
        Ok(l)
    }

    /// Sends the request `json` (one line) without waiting for anything,
    /// with its newline in the same `write`: the VMM runs a complete
    /// object at once, and after `quit` the newline alone would meet a
    /// closed socket.
    pub(super) fn send(&mut self, json: &str) -> Result<()> {
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json.as_bytes());
        line.push(b'\n');
        self.w.write_all(&line)?;
        Ok(())
    }

    /// Sends `command`; returns the time until `event` (if any) and the
    /// reply have both arrived: the time to the event.
    pub(super) fn request(&mut self, command: &str, event: Option<&str>) -> Result<Duration> {
        self.request_json(&format!("{{\"execute\":\"{command}\"}}"), event)
    }

    /// Sends the request `json` (one line); as [`Session::request`],
    /// `event` being a text the event's line holds.
    pub(super) fn request_json(&mut self, json: &str, event: Option<&str>) -> Result<Duration> {
        let command = json;
        let t0 = Instant::now();
        self.send(json)?;
        let (mut at_event, mut replied) = (event.is_none().then(|| t0.elapsed()), false);
        while at_event.is_none() || !replied {
            let l = self.line()?;
            if l.contains("\"return\"") {
                replied = true;
            } else if l.contains("\"error\"") {
                bail!("{command}: {l}");
            } else if let Some(e) = event {
                let seen = l.contains(&format!("\"event\":\"{e}\""))
                    || l.contains(&format!("\"event\": \"{e}\""))
                    || (l.contains("\"event\"") && l.contains(e));
                if at_event.is_none() && seen {
                    at_event = Some(t0.elapsed());
                }
            }
        }
        Ok(at_event.unwrap_or_default())
    }

    /// Sends the request `json` (one line) and returns its `return`
    /// (events meanwhile are skipped).
    pub(super) fn ask(&mut self, json: &str) -> Result<serde_json::Value> {
        self.send(json)?;
        loop {
            let l = self.line()?;
            let v: serde_json::Value = serde_json::from_str(&l)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if v.get("error").is_some() {
                bail!("{json}: {l}");
            }
        }
    }

    pub(super) fn quit(mut self) -> Result<()> {
        let _ = self.send(r#"{"execute":"quit"}"#);
        let _ = self.child.wait();
        Ok(())
    }
}

/// Our VMM's command line on `guest` with a QMP socket, `extra` and the
/// `--vmm-arg`s.
pub(super) fn ours_argv(
    ctx: &Ctx,
    memory: &str,
    guest: &Path,
    socket: &Path,
    extra: &[&str],
) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    [
        path(&crate::target::vmm()),
        "--kernel".into(),
        path(guest),
        "--memory".into(),
        memory.into(),
        "--qmp".into(),
        path(socket),
    ]
    .into_iter()
    .chain(extra.iter().map(|a| (*a).to_owned()))
    .chain(ctx.vmm_args.iter().cloned())
    .collect()
}

/// QEMU's command line on `guest` with KVM and a QMP server on `socket`,
/// nothing else but `extra`.
pub(super) fn qemu_argv(
    qemu: &Path,
    machine: &str,
    memory: &str,
    guest: &Path,
    socket: &Path,
    extra: &[&str],
) -> Vec<String> {
    let (qemu, guest) = (qemu.to_string_lossy(), guest.to_string_lossy());
    let qmp = format!("unix:{},server=on,wait=off", socket.display());
    let mut argv: Vec<String> = [
        &qemu,
        "-M",
        machine,
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        memory,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        &guest,
        "-qmp",
        &qmp,
    ]
    .map(String::from)
    .into();
    argv.extend(extra.iter().map(|a| (*a).to_owned()));
    argv
}

/// The `qmp` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let (rounds, pairs) = if ctx.quick {
        (QUICK_ROUNDS, QUICK_PAIRS)
    } else {
        (ROUNDS, PAIRS)
    };
    let guest = ctx.guest("spin")?;
    let ours_sock = ctx.tmp.join("ours.sock");
    let qemu_sock = ctx.tmp.join("qemu.sock");
    let mut vmms = vec![Vmm {
        who: Who::Ours,
        name: "vmm (ours)",
        argv: ours_argv(ctx, "64M", &guest, &ours_sock, &["--serial", "none"]),
        socket: ours_sock,
    }];
    if let Some(qemu) = &ctx.qemu {
        vmms.push(Vmm {
            who: Who::Qemu,
            name: "QEMU microvm",
            argv: qemu_argv(qemu, "microvm", "64M", &guest, &qemu_sock, &[]),
            socket: qemu_sock,
        });
    }
    let mut stop = Row::new("stop → STOP event", "µs");
    let mut cont = Row::new("cont → RESUME event", "µs");
    for _ in 0..rounds {
        for vmm in &vmms {
            let mut s = Session::start(vmm)?;
            std::thread::sleep(Duration::from_millis(100));
            for _ in 0..pairs {
                stop.push(
                    vmm.who,
                    s.request("stop", Some("STOP"))?.as_secs_f64() * 1e6,
                );
                cont.push(
                    vmm.who,
                    s.request("cont", Some("RESUME"))?.as_secs_f64() * 1e6,
                );
            }
            s.quit()?;
        }
    }
    let mut s = Section::new(
        "qmp",
        "QMP latency: request leaving the client to the event arriving",
    );
    s.note(format!(
        "A spinning PVH guest, 64 MiB; {rounds} round(s) of {pairs} stop/cont pairs per VMM, the VMMs taking turns; one QMP client on the Unix socket, after qmp_capabilities."
    ));
    s.note("Both VMMs read (on stop) and set (on cont) the kvmclock.");
    s.rows = vec![stop, cont];
    Ok(vec![s])
}
