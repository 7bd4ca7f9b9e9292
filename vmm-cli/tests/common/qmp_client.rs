//! A small QMP client for the tests that run the `vmm` binary with
//! `--qmp`, and the way they start it.

use crate::common::Running;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{vmm, TempDir, RUN_LIMIT};

/// A negotiated QMP connection; events read while waiting for a reply are
/// kept in `events`.
pub struct Client {
    pub w: UnixStream,
    pub r: BufReader<UnixStream>,
    pub events: Vec<Value>,
}

impl Client {
    /// Connects once the socket exists, reads the greeting, negotiates.
    pub fn connect(path: &Path) -> Self {
        let start = Instant::now();
        let w = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > RUN_LIMIT => panic!("no QMP socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        w.set_read_timeout(Some(RUN_LIMIT)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut c = Self {
            w,
            r,
            events: Vec::new(),
        };
        let greeting = c.line();
        assert!(greeting["QMP"]["version"]["qemu"].is_object(), "{greeting}");
        assert_eq!(c.execute("qmp_capabilities"), json!({"return": {}}));
        c
    }

    pub fn line(&mut self) -> Value {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        assert!(!s.is_empty(), "QMP connection closed");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
    }

    /// Sends `request` and its newline in one `write`. A request split
    /// over several writes (`writeln!` with arguments writes piece by
    /// piece) races the VMM: it runs a complete object at once, and after
    /// `quit` it may have closed the socket before the newline goes, which
    /// then fails with EPIPE (the source of `live_migration_over_tcp`'s
    /// "Broken pipe" under load).
    pub fn send(&mut self, request: &Value) {
        send_line(&mut self.w, &request.to_string());
    }

    /// Runs `command`; events that come first are kept.
    pub fn execute(&mut self, command: &str) -> Value {
        self.send(&json!({ "execute": command }));
        loop {
            let v = self.line();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    /// Runs `command` with `arguments`; events that come first are kept.
    pub fn execute_with(&mut self, command: &str, arguments: Value) -> Value {
        self.send(&json!({"execute": command, "arguments": arguments}));
        loop {
            let v = self.line();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    /// The next event named `name` (kept or still to come).
    pub fn event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let v = self.line();
            if v["event"] == name {
                return v;
            }
            assert!(v.get("event").is_some(), "expected {name}, got {v}");
            self.events.push(v);
        }
    }

    pub fn status(&mut self) -> Value {
        self.execute("query-status")["return"].clone()
    }
}

/// Writes `line` and a newline to `w` in one `write` (see
/// [`Client::send`]).
pub fn send_line(w: &mut impl Write, line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    w.write_all(&bytes).unwrap();
}

/// Starts a vmm with `--qmp`; it is killed if the test fails before
/// waiting for it (its guest may spin).
pub fn spawn(dir: &TempDir, kernel: &[u8], extra: &[&str]) -> (Running, PathBuf) {
    let k = dir.file("guest.elf", kernel);
    let sock = dir.0.join("qmp.sock");
    let log = dir.0.join("vmm.stderr");
    let err = std::fs::File::create(&log).unwrap();
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--memory", "64M"])
        .args(["--qmp", sock.to_str().unwrap()])
        .args(extra)
        .stderr(err)
        .spawn()
        .unwrap();
    (Running::with_log(child, log), sock)
}

/// Ends the VMM with QMP's `quit` and checks that it exited with status 0.
pub fn quit(c: &mut Client, vmm: Running) {
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let o = super::wait(vmm);
    assert!(o.status.success(), "{}", super::stderr(&o));
}

/// Runs `script` (Python, with QEMU's own client `qemu.qmp` from PyPI) as
/// `python3 script args...` in `dir`; returns its output lines once it
/// exits 0. `qemu.qmp` must be installed (`cargo xtask test` and
/// `.ci/run` install it): never skipped.
pub fn run_qemu_qmp_script(dir: &TempDir, script: &str, args: &[&std::ffi::OsStr]) -> Vec<String> {
    let have = std::process::Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "python3 with qemu.qmp is needed (`pip install qemu.qmp`; cargo xtask test and .ci/run install it)"
    );
    let py = dir.file("qmp_script.py", script.as_bytes());
    let out = std::process::Command::new("python3")
        .arg(&py)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_owned).collect()
}
