//! `--gdb`: Debian's gdb, in batch mode, against the stub, on a
//! hand-assembled guest ([`test_guests::counter`], two vCPUs, the second
//! never started) on this host's `/dev/kvm` (PVM included): attach (the
//! guest stops, `paused`), the vCPUs as threads, registers, a single step,
//! memory (and an unmapped address), the x87 and SSE registers (read, and
//! written back), a software breakpoint and a continue to it (`debug`),
//! detach (the guest runs on). And the bad `--gdb` addresses, refused at
//! start-up.
//!
//! The gdb script waits at two points (`shell` loops on a file the test
//! creates), so that the test can ask QMP for the run state while gdb
//! holds the guest.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::qmp_client::{spawn, Client};
use common::*;
use vmm_pc::test_guests::{self, LOAD_ADDR};

/// The counter guest's busy delay: a few ms between lines.
const DELAY: u32 = 0x10_0000;

/// Whether gdb is here; when KVM tests must run, it must be.
fn have_gdb() -> bool {
    let found = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os(vmm_core::kvm::REQUIRE_KVM_ENV).is_none(),
            "gdb is not installed (apt-get install gdb; .ci/run does)"
        );
        eprintln!("gdb: skipped, gdb is not installed");
    }
    found
}

/// The counter guest's code: the 0x100 bytes before its hex digits.
fn guest_code(elf: &[u8]) -> Vec<u8> {
    let digits = elf
        .windows(16)
        .position(|w| w == b"0123456789abcdef")
        .expect("the digits");
    elf[digits - 0x100..digits].to_vec()
}

/// A free TCP port on the loopback (closed again for the VMM to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gdb command that waits until the test creates `go`, after touching
/// `here`.
fn handshake(dir: &Path, name: &str) -> String {
    let here = dir.join(format!("{name}.here"));
    let go = dir.join(format!("{name}.go"));
    format!(
        "shell touch '{}'; i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
        here.display(),
        go.display()
    )
}

/// Waits for gdb to reach handshake `name`, checks, then lets it go on.
fn at_handshake(dir: &Path, name: &str, check: impl FnOnce()) {
    let here = dir.join(format!("{name}.here"));
    let start = Instant::now();
    while !here.exists() {
        assert!(start.elapsed() < RUN_LIMIT, "gdb never reached {name}");
        std::thread::sleep(Duration::from_millis(20));
    }
    check();
    std::fs::write(dir.join(format!("{name}.go")), b"").unwrap();
}

/// The values of every `rip` line of `info registers rip`.
fn rips(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("rip"))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        .collect()
}

/// The serial log's length, waiting until it grows past `more_than`.
fn wait_output(log: &Path, more_than: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = std::fs::read(log).map(|v| v.len()).unwrap_or(0);
        if n > more_than {
            return n;
        }
        assert!(start.elapsed() < RUN_LIMIT, "the guest prints nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gdb_attaches_steps_breaks_and_detaches() {
    if !kvm("gdb") || !have_gdb() {
        return;
    }
    let dir = TempDir::new("gdb");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let elf = test_guests::counter(DELAY);
    let code = guest_code(&elf);
    // The loop's top (`inc dword [edi]`): the breakpoint.
    let top = code.windows(2).position(|w| w == [0xff, 0x07]).unwrap() as u64;
    let port = free_port();
    let gdb_addr = format!("tcp:127.0.0.1:{port}");
    let (child, sock) = spawn(
        &dir,
        &elf,
        &["--cpus", "2", "--serial", &serial, "--gdb", &gdb_addr],
    );
    let mut c = Client::connect(&sock);
    wait_output(&log, 0);
    assert_eq!(c.status()["status"], "running");

    let bp = LOAD_ADDR + top;
    let script = [
        "set pagination off".to_owned(),
        "set confirm off".to_owned(),
        format!("target remote 127.0.0.1:{port}"),
        handshake(&dir.0, "attached"),
        "info threads".to_owned(),
        "info registers rip".to_owned(),
        "stepi".to_owned(),
        "info registers rip".to_owned(),
        "x/4bx $rip".to_owned(),
        "x/4bx 0x10000000000".to_owned(),
        // x87 and SSE, as reset left them (FNINIT's FCW, MXCSR's
        // default), then an XMM register written and read back.
        "info registers fctrl fstat ftag mxcsr".to_owned(),
        "set $xmm1.v2_int64[0] = 0x0123456789abcdef".to_owned(),
        "set $xmm1.v2_int64[1] = 0x7edcba9876543210".to_owned(),
        "set $mxcsr = 0x1fa0".to_owned(),
        "maintenance flush register-cache".to_owned(),
        "p/x $xmm1.v2_int64".to_owned(),
        "p/x $mxcsr".to_owned(),
        format!("break *{bp:#x}"),
        "continue".to_owned(),
        handshake(&dir.0, "break"),
        "info registers rip".to_owned(),
        "delete".to_owned(),
        "detach".to_owned(),
    ];
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"]);
    for line in &script {
        gdb.args(["-ex", line]);
    }
    let gdb = gdb
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gdb_guard = Running::new(gdb);

    // Attached: the guest stopped, as QEMU's stub stops it.
    at_handshake(&dir.0, "attached", || {
        c.event("STOP");
        assert_eq!(c.status()["status"], "paused");
        let n = wait_output(&log, 0);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wait_output(&log, 0), n, "a stopped guest printed");
    });
    // At the breakpoint: the run state is debug.
    at_handshake(&dir.0, "break", || {
        assert_eq!(c.status()["status"], "debug");
    });
    let o = gdb_guard.wait_within(RUN_LIMIT);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("gdb stdout:\n{out}\ngdb stderr:\n{err}");
    assert!(o.status.success(), "gdb failed");

    // Two vCPUs, two threads.
    assert!(
        out.contains("Thread 1.1 ") && out.contains("Thread 1.2 "),
        "{out}"
    );
    let r = rips(&out);
    assert_eq!(r.len(), 3, "{out}");
    let code_range = LOAD_ADDR..LOAD_ADDR + code.len() as u64;
    assert!(code_range.contains(&r[0]), "{:#x} outside the code", r[0]);
    assert!(code_range.contains(&r[1]), "{:#x} outside the code", r[1]);
    assert_ne!(r[0], r[1], "stepi did not move rip");
    // Memory at rip is the guest's code.
    let at = (r[1] - LOAD_ADDR) as usize;
    let want: String = code[at..at + 4]
        .iter()
        .map(|b| format!("\t{b:#04x}"))
        .collect();
    assert!(
        out.contains(&format!("{:#x}:{want}", r[1])),
        "{want} in {out}"
    );
    // The x87 and SSE registers: reset's values, and what was written
    // read back (after gdb dropped its cache).
    // (A line may start with what the failed `x` left unended.)
    let reg = |name: &str| {
        out.lines()
            .find_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let at = words.iter().position(|w| *w == name)?;
                words.get(at + 1).map(|v| v.to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert_eq!(reg("fctrl"), "0x37f", "{out}");
    assert_eq!(reg("ftag"), "0xffff", "{out}");
    assert_eq!(reg("mxcsr"), "0x1f80", "{out}");
    assert!(
        out.contains("= {0x123456789abcdef, 0x7edcba9876543210}"),
        "xmm1 read back: {out}"
    );
    assert!(out.contains("= 0x1fa0"), "mxcsr read back: {out}");
    // Outside RAM: an error, and gdb goes on.
    assert!(
        err.contains("Cannot access memory at address 0x10000000000"),
        "{err}"
    );
    // The breakpoint hit, at its address.
    assert!(
        out.contains(&format!("hit Breakpoint 1, {bp:#018x}")),
        "{out}"
    );
    assert_eq!(r[2], bp, "{out}");

    // Detached: running again, and printing.
    c.event("RESUME");
    assert_eq!(c.status()["status"], "running");
    let n = std::fs::read(&log).unwrap().len();
    wait_output(&log, n);

    assert_eq!(c.execute("quit"), serde_json::json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_gdb_addresses_are_refused_at_start() {
    for bad in ["tcp::99999", "udp::1234", "tcp:1234", "unix:"] {
        let o = run(&["--kernel", "/nonexistent", "--gdb", bad]);
        assert!(!o.status.success(), "{bad}");
        let err = stderr(&o);
        assert!(err.contains("bad gdb address"), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A port in use.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = run(&[
        "--kernel",
        "/nonexistent",
        "--gdb",
        &format!("tcp:127.0.0.1:{port}"),
    ]);
    assert_one_line_error(
        &o,
        &format!("cannot listen for gdb on tcp:127.0.0.1:{port}"),
    );
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    // A Unix socket path that exists.
    let dir = TempDir::new("gdb-bad");
    let file = dir.file("exists", b"");
    let o = run(&[
        "--kernel",
        "/nonexistent",
        "--gdb",
        &format!("unix:{}", file.display()),
    ]);
    assert_one_line_error(&o, "cannot listen for gdb on unix:");
}
