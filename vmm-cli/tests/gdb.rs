//! `--gdb`: Debian's gdb, in batch mode, against the stub, on a
//! hand-assembled guest ([`test_guests::counter`], two vCPUs, the second
//! never started) on this host's `/dev/kvm` (PVM included): attach (the
//! guest stops, `paused`), the vCPUs as threads, registers, a single step,
//! memory (and an unmapped address), the x87 and SSE registers (read, and
//! written back), a software breakpoint and a continue to it (`debug`),
//! a hardware breakpoint (DR0) on the same instruction and a continue to
//! it, detach (the guest runs on). And the bad `--gdb` addresses, refused at
//! start-up.
//!
//! The gdb script waits at two points (`shell` loops on a file the test
//! creates), so that the test can ask QMP for the run state while gdb
//! holds the guest.

mod common;

use std::io::{Read, Write};
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
        // The same address as a hardware breakpoint (DR0), hit on the
        // loop's next round.
        format!("hbreak *{bp:#x}"),
        "continue".to_owned(),
        handshake(&dir.0, "hbreak"),
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
    // At the hardware breakpoint: debug again, after a resume.
    at_handshake(&dir.0, "hbreak", || {
        c.event("RESUME");
        c.event("STOP");
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
    assert_eq!(r.len(), 4, "{out}");
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
    // The hardware breakpoint hit, at the same address.
    assert!(out.contains("Hardware assisted breakpoint 2"), "{out}");
    assert!(
        out.contains(&format!("hit Breakpoint 2, {bp:#018x}")),
        "{out}"
    );
    assert_eq!(r[3], bp, "{out}");

    // Detached: running again, and printing.
    c.event("RESUME");
    assert_eq!(c.status()["status"], "running");
    let n = std::fs::read(&log).unwrap().len();
    wait_output(&log, n);

    assert_eq!(c.execute("quit"), serde_json::json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// gdb's `kill` over a Unix socket ends the VMM as QEMU's `k` does: with
/// status 0 and the socket removed. (The stub's thread once dropped its
/// listener itself, and its seccomp list has no `unlink`: status 159.)
#[test]
fn kill_over_a_unix_socket_ends_the_vmm_cleanly() {
    if !kvm("gdb_kill") || !have_gdb() {
        return;
    }
    let dir = TempDir::new("gdb-kill");
    let sock = dir.0.join("gdb.sock");
    let (child, qmp) = spawn(
        &dir,
        &test_guests::counter(DELAY),
        &[
            "--serial",
            "none",
            "--gdb",
            &format!("unix:{}", sock.display()),
        ],
    );
    let mut c = Client::connect(&qmp);
    assert_eq!(c.status()["status"], "running");
    let out = Command::new("gdb")
        .args(["-q", "-batch", "-nx", "-ex"])
        .arg(format!("target remote {}", sock.display()))
        .args(["-ex", "kill"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = wait(child);
    assert!(
        o.status.success(),
        "{:?}: {}\ngdb: {}{}",
        o.status,
        stderr(&o),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stderr(&o).contains("seccomp"), "{}", stderr(&o));
    assert!(!sock.exists(), "the socket is removed");
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

/// A pseudo-terminal pair: the master (ours) and the slave's path.
fn open_pty() -> (std::fs::File, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt takes flags only and returns a new descriptor
    // or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is the master just opened, owned by nothing else.
    let master = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: grantpt and unlockpt act on the valid master descriptor.
    assert_eq!(unsafe { libc::grantpt(fd) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(fd) }, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is a valid buffer of the given length.
    let named = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    assert_eq!(named, 0);
    // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    (master, path.to_string_lossy().into_owned())
}

/// `--gdb /dev/pts/N`: gdb reaches the stub through a terminal (here a
/// pseudo-terminal whose master end the test relays to a Unix socket, as
/// the test bed relays L1's serial port), twice (a step, a breakpoint and
/// a continue to it): the second session starts at its first packet, the
/// first one's leftovers dropped.
#[test]
fn gdb_over_a_terminal() {
    if !kvm("gdb_over_a_terminal") || !have_gdb() {
        return;
    }
    let dir = TempDir::new("gdb-tty");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let elf = test_guests::counter(DELAY);
    let (master, slave) = open_pty();
    let (child, sock) = spawn(&dir, &elf, &["--serial", &serial, "--gdb", &slave]);
    let mut c = Client::connect(&sock);
    wait_output(&log, 0);

    // The relay: each gdb that connects gets the terminal's master end.
    let gdb_sock = dir.0.join("gdb.sock");
    let listener = std::os::unix::net::UnixListener::bind(&gdb_sock).unwrap();
    let master = std::sync::Arc::new(master);
    let relay_master = std::sync::Arc::clone(&master);
    std::thread::spawn(move || {
        let reader = std::sync::Arc::clone(&relay_master);
        let current: std::sync::Arc<std::sync::Mutex<Option<std::os::unix::net::UnixStream>>> =
            Default::default();
        let to_gdb = std::sync::Arc::clone(&current);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match (&*reader).read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(s) = to_gdb.lock().unwrap().as_mut() {
                    let _ = s.write_all(&buf[..n]);
                }
            }
        });
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            *current.lock().unwrap() = Some(s.try_clone().unwrap());
            let _ = std::io::copy(&mut s, &mut &*relay_master);
        }
    });

    let code = guest_code(&elf);
    let top = code.windows(2).position(|w| w == [0xff, 0x07]).unwrap() as u64;
    let bp = LOAD_ADDR + top;
    for round in 0..2 {
        let o = Command::new("gdb")
            .args(["-batch", "-nx"])
            .args(["-ex", &format!("target remote {}", gdb_sock.display())])
            .args(["-ex", "info registers rip", "-ex", "stepi"])
            .args(["-ex", "info registers rip"])
            .args(["-ex", &format!("break *{bp:#x}"), "-ex", "continue"])
            .args(["-ex", "info registers rip", "-ex", "delete"])
            .args(["-ex", "detach"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let o = wait_within(o, RUN_LIMIT);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        eprintln!("round {round}: gdb stdout:\n{out}\ngdb stderr:\n{err}");
        assert!(o.status.success(), "round {round}: gdb failed");
        let r = rips(&out);
        assert_eq!(r.len(), 3, "round {round}: {out}");
        assert_ne!(r[0], r[1], "round {round}: stepi did not move rip");
        assert_eq!(r[2], bp, "round {round}: not at the breakpoint: {out}");
        assert!(out.contains("detached"), "round {round}: {out}");
        // Detached: the guest runs again.
        c.event("RESUME");
        assert_eq!(c.status()["status"], "running");
        let n = std::fs::read(&log).unwrap().len();
        wait_output(&log, n);
    }
    assert_eq!(c.execute("quit"), serde_json::json!({"return": {}}));
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}
