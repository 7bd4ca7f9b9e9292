//! QMP end to end: the `vmm` binary with `--qmp`, driven by a small Rust
//! client over the Unix socket and by QEMU's own Python client library
//! (`qemu.qmp`), on hand-assembled guests that run on this host's
//! `/dev/kvm` (PVM included).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use vmm_pc::test_guests;

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Client {
    /// Connects once the socket exists, reads the greeting, negotiates.
    fn connect(path: &Path) -> Self {
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

    fn line(&mut self) -> Value {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        assert!(!s.is_empty(), "QMP connection closed");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
    }

    /// Runs `command`; events that come first are kept.
    fn execute(&mut self, command: &str) -> Value {
        writeln!(self.w, "{}", json!({ "execute": command })).unwrap();
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
    fn event(&mut self, name: &str) -> Value {
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

    fn status(&mut self) -> Value {
        self.execute("query-status")["return"].clone()
    }
}

fn spawn(dir: &TempDir, kernel: &[u8], extra: &[&str]) -> (Child, PathBuf) {
    let k = dir.file("guest.elf", kernel);
    let sock = dir.0.join("qmp.sock");
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--memory", "64M"])
        .args(["--qmp", sock.to_str().unwrap()])
        .args(extra)
        .spawn()
        .unwrap();
    (child, sock)
}

#[test]
fn stop_cont_query_and_quit() {
    if !kvm("qmp_stop_cont") {
        return;
    }
    let dir = TempDir::new("qmp-basic");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let pid = child.id();
    let mut c = Client::connect(&sock);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    assert_eq!(
        c.status(),
        json!({"running": true, "singlestep": false, "status": "running"})
    );
    assert_eq!(c.execute("stop"), json!({"return": {}}));
    let stop = c.event("STOP");
    assert!(stop["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(c.status()["status"], "paused");
    assert_eq!(c.status()["running"], false);
    // stop again: nothing happens, no event.
    assert_eq!(c.execute("stop"), json!({"return": {}}));
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("RESUME");
    assert!(c.events.is_empty(), "{:?}", c.events);
    assert_eq!(c.status()["status"], "running");
    // Real vCPU threads of the vmm process.
    let cpus = c.execute("query-cpus-fast")["return"].clone();
    assert_eq!(cpus.as_array().unwrap().len(), 1);
    let tid = cpus[0]["thread-id"].as_i64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists());
    assert_ne!(i64::from(pid), tid);
    let names = c.execute("query-commands")["return"].clone();
    assert!(names.as_array().unwrap().contains(&json!({"name": "cont"})));
    assert_eq!(c.execute("query-kvm")["return"]["enabled"], true);
    assert_eq!(c.execute("nonsense")["error"]["class"], "CommandNotFound");
    writeln!(c.w, r#"{{"execute":"stop","arguments":{{"x":1}},"id":9}}"#).unwrap();
    let bad = c.line();
    assert_eq!(bad["id"], 9);
    assert_eq!(bad["error"]["class"], "GenericError");
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!sock.exists(), "socket removed");
}

#[test]
fn paused_start_waits_in_prelaunch_with_the_clock_stopped() {
    if !kvm("qmp_paused") {
        return;
    }
    let dir = TempDir::new("qmp-paused");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_reset("hi\n"),
        &["--paused", "--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    assert_eq!(
        c.status(),
        json!({"running": false, "singlestep": false, "status": "prelaunch"})
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::read(&log).unwrap_or_default(),
        b"",
        "no guest code ran"
    );
    // stop in prelaunch changes nothing.
    assert_eq!(c.execute("stop"), json!({"return": {}}));
    assert_eq!(c.status()["status"], "prelaunch");
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("RESUME");
    // The guest prints and resets: the VMM ends, as QEMU with -no-reboot.
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-reset"})
    );
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&log).unwrap(), b"hi\n");
    assert!(!sock.exists());
}

#[test]
fn sigterm_in_prelaunch_running_and_paused() {
    if !kvm("qmp_sigterm") {
        return;
    }
    for state in ["prelaunch", "running", "paused"] {
        let dir = TempDir::new(&format!("qmp-term-{state}"));
        let extra: &[&str] = if state == "prelaunch" {
            &["--serial", "none", "--paused"]
        } else {
            &["--serial", "none"]
        };
        let (child, sock) = spawn(&dir, &test_guests::hello_spin("spin\n"), extra);
        let mut c = Client::connect(&sock);
        if state == "paused" {
            c.execute("stop");
            c.event("STOP");
        }
        assert_eq!(c.status()["status"], state);
        // SAFETY: sends SIGTERM to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let shutdown = c.event("SHUTDOWN");
        assert_eq!(
            shutdown["data"],
            json!({"guest": false, "reason": "host-signal"}),
            "{state}"
        );
        let o = wait(child);
        assert!(o.status.success(), "{state}: {}", stderr(&o));
        assert!(!sock.exists(), "{state}: socket removed");
    }
}

#[test]
fn a_taken_socket_path_is_a_clear_error() {
    if !kvm("qmp_taken") {
        return;
    }
    let dir = TempDir::new("qmp-taken");
    let k = dir.file("guest.elf", &test_guests::hello_spin("x\n"));
    let taken = dir.file("qmp.sock", b"not a socket");
    let o = run(&[
        "--kernel",
        k.to_str().unwrap(),
        "--qmp",
        taken.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "the path exists");
    assert_eq!(
        std::fs::read(&taken).unwrap(),
        b"not a socket",
        "left alone"
    );
}

/// QEMU's own Python client (`qemu.qmp` from PyPI) drives the VMM.
#[test]
fn qemu_python_client_drives_the_vmm() {
    if !kvm("qmp_python") {
        return;
    }
    let have = std::process::Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "python3 with qemu.qmp is needed (`pip install qemu.qmp`; cargo xtask test and .ci/run install it)"
    );
    let dir = TempDir::new("qmp-python");
    let disk = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let drive = format!("file={},if=virtio,format=raw,id=d0", disk.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none", "--drive", &drive],
    );
    let script = r#"
import asyncio, sys
from qemu.qmp import QMPClient

async def main(path):
    qmp = QMPClient('vmm')
    for _ in range(300):
        try:
            await qmp.connect(path)
            break
        except Exception:
            await asyncio.sleep(0.01)
    st = await qmp.execute('query-status')
    print('status', st['status'], st['running'])
    pci = await qmp.execute('query-pci')
    for d in pci[0]['devices']:
        print('pci', d['slot'], hex(d['id']['vendor']), hex(d['id']['device']), d['class_info'].get('desc'))
    for b in await qmp.execute('query-block'):
        print('block', b['device'], b['inserted']['drv'], b['inserted']['image']['virtual-size'], b['io-status'])
    with qmp.listener() as listener:
        await qmp.execute('stop')
        async for ev in listener:
            if ev['event'] == 'STOP':
                print('event STOP')
                break
        st = await qmp.execute('query-status')
        print('status', st['status'], st['running'])
        await qmp.execute('cont')
        async for ev in listener:
            if ev['event'] == 'RESUME':
                print('event RESUME')
                break
        try:
            await qmp.execute('no-such-command')
        except Exception as e:
            print('error', type(e).__name__)
        await qmp.execute('quit')
        async for ev in listener:
            if ev['event'] == 'SHUTDOWN':
                print('event SHUTDOWN', ev['data']['reason'])
                break
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the VMM quit and closed the socket first, as QEMU does

asyncio.run(main(sys.argv[1]))
"#;
    let py = dir.file("drive.py", script.as_bytes());
    let out = std::process::Command::new("python3")
        .arg(&py)
        .arg(&sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "status running True",
            "pci 0 0x1b36 0x8 Host bridge",
            "pci 1 0x1af4 0x1042 SCSI controller",
            "block d0 raw 1048576 ok",
            "event STOP",
            "status paused False",
            "event RESUME",
            "error ExecuteError",
            "event SHUTDOWN host-qmp-quit",
        ]
    );
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Waits until `path` holds at least `n` bytes; returns its contents.
fn wait_for_output(path: &Path, n: usize) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        if bytes.len() >= n {
            return bytes;
        }
        assert!(
            start.elapsed() < RUN_LIMIT,
            "only {:?} on the serial port",
            String::from_utf8_lossy(&bytes)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn serial_file(dir: &TempDir) -> (PathBuf, String) {
    let log = dir.0.join("serial.log");
    let arg = format!("file:{}", log.display());
    (log, arg)
}

#[test]
fn system_reset_boots_the_guest_again_in_place() {
    if !kvm("qmp_system_reset") {
        return;
    }
    let dir = TempDir::new("qmp-reset");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", &serial],
    );
    let mut c = Client::connect(&sock);
    wait_for_output(&log, 5);
    for boot in 2..=3 {
        assert_eq!(c.execute("system_reset"), json!({"return": {}}));
        let reset = c.event("RESET");
        assert_eq!(
            reset["data"],
            json!({"guest": false, "reason": "host-qmp-system-reset"})
        );
        let out = wait_for_output(&log, 5 * boot);
        assert_eq!(out, "spin\n".repeat(boot).as_bytes());
        assert_eq!(c.status()["status"], "running");
    }
    // Reset while paused: prelaunch until cont, as QEMU.
    c.execute("stop");
    c.event("STOP");
    assert_eq!(c.execute("system_reset"), json!({"return": {}}));
    c.event("RESET");
    assert_eq!(c.status()["status"], "prelaunch");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read(&log).unwrap().len(), 15, "no code ran");
    c.execute("cont");
    c.event("RESUME");
    assert_eq!(wait_for_output(&log, 20), "spin\n".repeat(4).as_bytes());
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn reboot_reset_restarts_both_vcpus_in_place() {
    if !kvm("reboot_reset_smp") {
        return;
    }
    let dir = TempDir::new("reboot-reset");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(
        &dir,
        &test_guests::two_cpus(),
        &["--serial", &serial, "--cpus", "2", "--reboot", "reset"],
    );
    let mut c = Client::connect(&sock);
    // Each boot: CPU 1 comes up through INIT/SIPI ("A"), CPU 0 sees it
    // ("B") and resets through the i8042; the VMM resets in place.
    for _ in 0..3 {
        let reset = c.event("RESET");
        assert_eq!(
            reset["data"],
            json!({"guest": true, "reason": "guest-reset"})
        );
    }
    let out = wait_for_output(&log, 6);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("ABABAB"), "{text:?}");
    assert!(!text.contains('-'), "CPU 1 missed a boot: {text:?}");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn internal_error_stops_in_a_queryable_state_that_only_a_reset_leaves() {
    if !kvm("qmp_internal_error") {
        return;
    }
    let dir = TempDir::new("qmp-interr");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_internal_error("bad\n"),
        &["--serial", &serial, "--paused"],
    );
    // Started paused, so that the client is there for the events.
    let mut c = Client::connect(&sock);
    c.execute("cont");
    c.event("RESUME");
    c.event("STOP");
    assert_eq!(
        c.status(),
        json!({"running": false, "singlestep": false, "status": "internal-error"})
    );
    let refused = c.execute("cont");
    assert_eq!(refused["error"]["class"], "GenericError");
    assert_eq!(
        refused["error"]["desc"],
        "Resetting the Virtual Machine is required"
    );
    assert_eq!(c.execute("system_reset"), json!({"return": {}}));
    c.event("RESET");
    assert_eq!(c.status()["status"], "prelaunch");
    c.execute("cont");
    c.event("RESUME");
    // It runs (and fails) again.
    c.event("STOP");
    assert_eq!(wait_for_output(&log, 8), b"bad\nbad\n");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn without_qmp_an_internal_error_ends_the_vmm_with_status_1() {
    if !kvm("interr_exit") {
        return;
    }
    let dir = TempDir::new("interr-exit");
    let k = dir.file("bad.elf", &test_guests::hello_internal_error("bad\n"));
    let o = run_kernel(&k, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(o.stdout, b"bad\n");
}

#[test]
fn system_powerdown_presses_the_acpi_power_button() {
    if !kvm("qmp_powerdown") {
        return;
    }
    let dir = TempDir::new("qmp-powerdown");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(&dir, &test_guests::power_button(), &["--serial", &serial]);
    let mut c = Client::connect(&sock);
    let message = b"waiting for the power button\n";
    assert_eq!(wait_for_output(&log, message.len()), message);
    assert_eq!(c.execute("system_powerdown"), json!({"return": {}}));
    c.event("POWERDOWN");
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn pvpanic_stops_in_guest_panicked() {
    if !kvm("qmp_pvpanic") {
        return;
    }
    let dir = TempDir::new("qmp-panic");
    let (log, serial) = serial_file(&dir);
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_panic("oops\n"),
        &["--serial", &serial, "--paused"],
    );
    let mut c = Client::connect(&sock);
    c.execute("cont");
    let panicked = c.event("GUEST_PANICKED");
    assert_eq!(panicked["data"], json!({"action": "pause"}));
    c.event("STOP");
    assert_eq!(c.status()["status"], "guest-panicked");
    assert_eq!(wait_for_output(&log, 5), b"oops\n");
    // As today's QEMU: cont is allowed after a panic; a reset boots again.
    assert_eq!(c.execute("system_reset"), json!({"return": {}}));
    assert_eq!(c.status()["status"], "prelaunch");
    c.execute("cont");
    c.event("GUEST_PANICKED");
    assert_eq!(wait_for_output(&log, 10), b"oops\noops\n");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn without_qmp_a_guest_panic_ends_the_vmm_with_status_1() {
    if !kvm("pvpanic_exit") {
        return;
    }
    let dir = TempDir::new("panic-exit");
    let k = dir.file("panic.elf", &test_guests::hello_panic("oops\n"));
    let o = run_kernel(&k, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the guest panicked"), "{}", stderr(&o));
    assert_eq!(o.stdout, b"oops\n");
}

#[test]
fn the_guest_setting_its_rtc_is_an_rtc_change_event() {
    if !kvm("qmp_rtc_change") {
        return;
    }
    let dir = TempDir::new("qmp-rtc");
    let (child, sock) = spawn(
        &dir,
        &test_guests::set_rtc("set\n"),
        &["--serial", "none", "--paused"],
    );
    let mut c = Client::connect(&sock);
    c.execute("cont");
    let change = c.event("RTC_CHANGE");
    // The guest moved its clock to 2030: years ahead of the host.
    let offset = change["data"]["offset"].as_i64().unwrap();
    assert!(offset > 3 * 365 * 86_400, "{change}");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `n` query-status requests with ids `{tag}{pad}{i}` (long, so that
/// their replies are too), in one string.
fn long_requests(tag: &str, n: usize) -> String {
    let pad = "x".repeat(1000);
    (0..n)
        .map(|i| json!({"execute": "query-status", "id": format!("{tag}{pad}{i}")}).to_string())
        .collect()
}

/// Clients that ask and do not read never stall the VMM: another client is
/// served, events flow, SIGTERM ends it at once; one past the output limit
/// (1 MiB unread) is dropped with a log line, one below it stays.
#[test]
fn a_client_that_does_not_read_never_stalls_the_vmm() {
    if !kvm("qmp_slow_reader") {
        return;
    }
    let dir = TempDir::new("qmp-slow");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let child = Running::new(child);
    let mut c = Client::connect(&sock);
    // About 550 KB of replies, then a stop: once its STOP event reaches
    // the other client, every reply waits for this one (in its socket and
    // in its buffer), below the limit.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled.set_write_timeout(Some(RUN_LIMIT)).unwrap();
    let mut text = json!({"execute": "qmp_capabilities"}).to_string();
    text += &long_requests("s", 500);
    text += &json!({"execute": "stop"}).to_string();
    stalled.write_all(text.as_bytes()).unwrap();
    c.event("STOP");
    assert_eq!(c.status()["status"], "paused");
    assert_eq!(c.execute("cont"), json!({"return": {}}));
    c.event("RESUME");
    // About 3 MB of replies: dropped past the limit (its socket closed:
    // what it holds, then end of file).
    let dropped = UnixStream::connect(&sock).unwrap();
    dropped.set_read_timeout(Some(RUN_LIMIT)).unwrap();
    dropped.set_write_timeout(Some(RUN_LIMIT)).unwrap();
    let mut writer = dropped.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let text = json!({"execute": "qmp_capabilities"}).to_string() + &long_requests("d", 3000);
        // Fails once the VMM has closed it.
        let _ = writer.write_all(text.as_bytes());
    });
    // It reads only once the flood is over (written, or cut off).
    flood.join().unwrap();
    let got = read_all(&dropped);
    assert!(
        got.len() < 3000 * 1000,
        "{} bytes before the end",
        got.len()
    );
    // The VMM carries on, and a signal ends it at once.
    assert_eq!(c.status()["status"], "running");
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(shutdown["data"]["reason"], "host-signal");
    let o = child.wait_within(Duration::from_secs(10));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("QMP: dropping client").count(),
        1,
        "only the one past the limit: {err}"
    );
    assert!(err.contains("bytes of replies and events unread"), "{err}");
    // The stalled one was kept: what it reads now (what its socket held
    // at exit) is its replies, whole and in order.
    stalled.set_read_timeout(Some(RUN_LIMIT)).unwrap();
    let got = read_all(&stalled);
    let end = got.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines: Vec<Value> = got[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(lines.len() > 10, "{} lines", lines.len());
    assert!(lines[0]["QMP"].is_object());
    assert_eq!(lines[1], json!({"return": {}}));
    let pad = "x".repeat(1000);
    for (i, reply) in lines[2..].iter().enumerate() {
        assert_eq!(reply["id"], format!("s{pad}{i}"));
        assert_eq!(reply["return"]["status"], "running");
    }
}

/// QEMU's monitor serves one socket client at a time; ours serves several
/// (up to 16), so that a client that sits idle locks nobody out. Events go
/// to every client that has negotiated.
#[test]
fn an_idle_client_does_not_lock_others_out() {
    if !kvm("qmp_idle_client") {
        return;
    }
    let dir = TempDir::new("qmp-idle");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let child = Running::new(child);
    let mut idle = Client::connect(&sock);
    let mut busy = Client::connect(&sock);
    assert_eq!(busy.status()["status"], "running");
    assert_eq!(busy.execute("stop"), json!({"return": {}}));
    busy.event("STOP");
    idle.event("STOP");
    // Up to the limit; past it a connection is closed at once.
    let rest: Vec<UnixStream> = (2..16)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let extra = UnixStream::connect(&sock).unwrap();
    extra.set_read_timeout(Some(RUN_LIMIT)).unwrap();
    let refused = read_all(&extra);
    // The 16 were accepted before it (connections are taken in order).
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));
    assert_eq!(busy.execute("quit"), json!({"return": {}}));
    busy.event("SHUTDOWN");
    idle.event("SHUTDOWN");
    drop(rest);
    let o = child.wait_within(RUN_LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("16 clients connected already"),
        "{}",
        stderr(&o)
    );
}

/// A file put at the socket's path while the VMM runs is not the VMM's to
/// remove at exit.
#[test]
fn a_file_put_at_the_socket_path_stays_after_exit() {
    if !kvm("qmp_path_replaced") {
        return;
    }
    let dir = TempDir::new("qmp-replaced");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let child = Running::new(child);
    let mut c = Client::connect(&sock);
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"mine").unwrap();
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let o = child.wait_within(RUN_LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&sock).unwrap(), b"mine");
}

/// QEMU's `human-monitor-command`: monitor lines through QMP, their output
/// as the reply's string.
#[test]
fn human_monitor_command_runs_monitor_lines() {
    if !kvm("human_monitor_command") {
        return;
    }
    let dir = TempDir::new("qmp-hmp");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let mut c = Client::connect(&sock);
    let mut hmp = |line: &str| {
        let request = json!({"execute": "human-monitor-command",
                             "arguments": {"command-line": line}});
        writeln!(c.w, "{request}").unwrap();
        loop {
            let v = c.line();
            if v.get("event").is_none() {
                return v;
            }
        }
    };
    assert_eq!(hmp("info status")["return"], "VM status: running\r\n");
    let pci = hmp("info pci")["return"].as_str().unwrap().to_owned();
    assert!(pci.contains("Host bridge: PCI device 1b36:0008"), "{pci}");
    assert_eq!(hmp("stop")["return"], "");
    assert_eq!(hmp("info status")["return"], "VM status: paused\r\n");
    let cpus = hmp("info cpus")["return"].as_str().unwrap().to_owned();
    assert!(cpus.starts_with("* CPU #0: thread_id="), "{cpus}");
    assert!(hmp("help")["return"]
        .as_str()
        .unwrap()
        .contains("info cpus"));
    assert_eq!(
        hmp("frobnicate")["return"],
        "unknown command: 'frobnicate' (try help)\r\n"
    );
    writeln!(
        c.w,
        r#"{{"execute":"human-monitor-command","arguments":{{}}}}"#
    )
    .unwrap();
    assert_eq!(c.line()["error"]["class"], "GenericError");
    writeln!(
        c.w,
        r#"{{"execute":"human-monitor-command","arguments":{{"command-line":5}}}}"#
    )
    .unwrap();
    assert_eq!(c.line()["error"]["class"], "GenericError");
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// QEMU's `query-pci`: the bus and its functions (the host bridge at
/// 00:00.0), in QEMU's shape, as QEMU's clients read it.
#[test]
fn query_pci_lists_the_host_bridge() {
    if !kvm("query_pci") {
        return;
    }
    let dir = TempDir::new("qmp-pci");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let mut c = Client::connect(&sock);
    let pci = c.execute("query-pci")["return"].clone();
    assert_eq!(pci[0]["bus"], 0);
    let bridge = &pci[0]["devices"][0];
    assert_eq!(bridge["slot"], 0);
    assert_eq!(bridge["function"], 0);
    assert_eq!(
        bridge["class_info"],
        json!({"class": 0x0600, "desc": "Host bridge"})
    );
    assert_eq!(bridge["id"]["vendor"], 0x1b36);
    assert_eq!(bridge["id"]["device"], 0x0008);
    assert_eq!(bridge["regions"], json!([]));
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 1000 resets and 1000 stop/cont pairs leave no file descriptor or
/// memory behind: the fd count is the same after as before, and resident
/// memory grows by less than 1 MiB (allocator noise, not a leak per cycle).
#[test]
fn a_thousand_resets_and_pauses_leak_nothing() {
    if !kvm("qmp_leaks") {
        return;
    }
    let dir = TempDir::new("qmp-leaks");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none"],
    );
    let pid = child.id();
    let mut c = Client::connect(&sock);
    // One of each first, so that lazily made things exist already.
    c.execute("system_reset");
    c.execute("stop");
    c.execute("cont");
    c.events.clear();
    let (fds, rss) = (fd_count(pid), rss_kib(pid));
    for _ in 0..1000 {
        assert_eq!(c.execute("system_reset"), json!({"return": {}}));
        assert_eq!(c.execute("stop"), json!({"return": {}}));
        assert_eq!(c.execute("cont"), json!({"return": {}}));
        c.events.clear();
    }
    assert_eq!(c.status()["status"], "running");
    assert_eq!(fd_count(pid), fds, "file descriptors after 1000 cycles");
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(grown < 1024, "RSS grew by {grown} KiB over 1000 cycles");
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A disk on the bus as QMP reports it before any guest driver touched
/// it: `query-pci` lists the virtio-blk-pci (its BARs not yet decoding),
/// `query-block` the drive, `query-blockstats` zero counters.
#[test]
fn a_disk_in_query_pci_and_query_block() {
    if !kvm("query_block") {
        return;
    }
    let dir = TempDir::new("qmp-block");
    let disk = dir.file("disk.img", &vec![0u8; 2 << 20]);
    let drive = format!(
        "file={},if=none,id=data,readonly=on,cache=none",
        disk.display()
    );
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &[
            "--serial",
            "none",
            "--drive",
            &drive,
            "--device",
            "virtio-blk-pci,drive=data,serial=S1,addr=0x5",
        ],
    );
    let mut c = Client::connect(&sock);
    let pci = c.execute("query-pci")["return"].clone();
    let dev = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["slot"] == 5)
        .cloned()
        .unwrap();
    assert_eq!(dev["id"]["vendor"], 0x1af4);
    assert_eq!(dev["id"]["device"], 0x1042);
    assert_eq!(dev["class_info"]["class"], 0x0100);
    assert_eq!(dev["irq_pin"], 1);
    let regions = dev["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{dev}");
    assert!(
        regions.iter().all(|r| r["address"] == u64::MAX),
        "not decoding yet: {dev}"
    );
    let block = c.execute("query-block")["return"].clone();
    assert_eq!(block[0]["device"], "data");
    assert_eq!(block[0]["inserted"]["ro"], true);
    assert_eq!(block[0]["inserted"]["cache"]["direct"], true);
    assert_eq!(block[0]["inserted"]["image"]["virtual-size"], 2 << 20);
    let stats = c.execute("query-blockstats")["return"].clone();
    assert_eq!(stats[0]["stats"]["rd_operations"], 0);
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}
