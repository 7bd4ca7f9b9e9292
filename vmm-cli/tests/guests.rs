//! The `vmm` binary booting hand-assembled PVH guests on the host's
//! `/dev/kvm` (PVM included): serial output, exit paths and statuses.

mod common;

use std::time::Duration;

use common::*;
use vmm_pc::test_guests;

#[test]
fn hello_on_stdout_and_i8042_reset_ends_with_0() {
    if !kvm("hello_on_stdout") {
        return;
    }
    let dir = TempDir::new("hello");
    let k = dir.file("hello.elf", &test_guests::hello_reset("Hello, PVH\n"));
    let o = run_kernel(&k, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello, PVH\n");
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn serial_to_a_file() {
    if !kvm("serial_to_a_file") {
        return;
    }
    let dir = TempDir::new("file");
    let k = dir.file("hello.elf", &test_guests::hello_reset("to the file\n"));
    let log = dir.0.join("console.log");
    let arg = format!("file:{}", log.display());
    let o = run_kernel(&k, &["--serial", &arg]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to the file\n");
}

/// Issue 15: a guest that prints for ever fills the serial file up to its
/// maxsize and no further; the VMM says so once and goes on.
#[test]
fn serial_file_stops_at_its_maxsize() {
    if !kvm("serial_file_stops_at_its_maxsize") {
        return;
    }
    let dir = TempDir::new("maxsize");
    let k = dir.file("flood.elf", &test_guests::flood());
    let log = dir.0.join("console.log");
    let arg = format!("file:{},maxsize=64K", log.display());
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--serial", &arg])
        .spawn()
        .unwrap();
    // Wait until the file is full (bounded), then a while longer.
    let start = std::time::Instant::now();
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    while size() < 64 * 1024 && start.elapsed() < RUN_LIMIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = wait(child);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(size(), 64 * 1024, "{err}");
    assert_eq!(
        err.matches("reached its maxsize (65536 bytes)").count(),
        1,
        "one warning: {err}"
    );
}

#[test]
fn serial_none_discards() {
    if !kvm("serial_none_discards") {
        return;
    }
    let dir = TempDir::new("none");
    let k = dir.file(
        "hello.elf",
        &test_guests::hello_reset("nobody reads this\n"),
    );
    let o = run_kernel(&k, &["--serial", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn acpi_poweroff_ends_with_0() {
    if !kvm("acpi_poweroff") {
        return;
    }
    let dir = TempDir::new("poweroff");
    let k = dir.file("off.elf", &test_guests::hello_poweroff("bye\n"));
    let o = run_kernel(&k, &["--log-level", "info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bye\n");
    assert!(stderr(&o).contains("guest powered off"), "{}", stderr(&o));
}

#[test]
fn two_vcpus_both_run() {
    if !kvm("two_vcpus_both_run") {
        return;
    }
    let dir = TempDir::new("smp");
    let k = dir.file("smp.elf", &test_guests::two_cpus());
    let o = run_kernel(&k, &["--cpus", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // "A" from CPU 1 (started by INIT/SIPI), then "B" from CPU 0 once it
    // saw CPU 1's flag; "-" would mean CPU 1 never ran.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "AB");
}

/// The boot vCPU's first instructions wake the last of 64 vCPUs with INIT
/// and SIPI, while the others' set-up is still under way (it runs beside
/// the boot vCPU's guest): every vCPU exists before the boot vCPU runs, so
/// the INIT and SIPI wait in the target's local APIC until its set-up is
/// done and it first runs. Several starts, since the set-up's progress
/// differs from one to the next.
#[test]
fn an_ap_woken_at_once_runs_while_the_others_are_set_up() {
    if !kvm("an_ap_woken_at_once_runs_while_the_others_are_set_up") {
        return;
    }
    let dir = TempDir::new("smp64");
    let k = dir.file("smp.elf", &test_guests::wake_cpu(63));
    for start in 0..10 {
        let o = run_kernel(&k, &["--cpus", "64"]);
        assert!(o.status.success(), "start {start}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "AB", "start {start}");
    }
}

#[test]
fn one_vcpu_gives_no_ap() {
    if !kvm("one_vcpu_gives_no_ap") {
        return;
    }
    let dir = TempDir::new("up");
    let k = dir.file("smp.elf", &test_guests::two_cpus());
    let o = run_kernel(&k, &["--cpus", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "-");
}

#[test]
fn unknown_ports_read_all_ones() {
    if !kvm("unknown_ports_read_all_ones") {
        return;
    }
    let dir = TempDir::new("port");
    for port in [0x99u16, 0x2f8, 0xcf8, 0xffff] {
        let k = dir.file("port.elf", &test_guests::read_port(port));
        let o = run_kernel(&k, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(o.stdout, [0xff], "port {port:#x}");
    }
}

#[test]
fn sigterm_stops_a_spinning_guest_cleanly() {
    if !kvm("sigterm_stops") {
        return;
    }
    let dir = TempDir::new("sigterm");
    let k = dir.file("spin.elf", &test_guests::hello_spin("spinning\n"));
    let mut child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--log-level", "info"])
        .spawn()
        .unwrap();
    // Wait until the guest runs (its line is out), then terminate. The
    // read happens on a thread so that a broken VMM fails the test instead
    // of hanging it.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = [0u8; 9];
        let _ = tx.send(std::io::Read::read_exact(&mut stdout, &mut line).map(|()| line));
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(Ok(line)) => assert_eq!(&line, b"spinning\n"),
        other => {
            let _ = child.kill();
            panic!("the guest did not print its line: {other:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("terminating on signal SIGTERM"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unread_stdout_never_stalls_the_vmm() {
    if !kvm("unread_stdout") {
        return;
    }
    let dir = TempDir::new("flood");
    let k = dir.file("flood.elf", &test_guests::flood());
    // stdout is a pipe nobody reads while the guest floods COM1: the pipe
    // fills, yet the VMM must still stop at once on SIGTERM.
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!o.stdout.is_empty() && o.stdout.iter().all(|b| *b == b'x'));
}

/// The same with stdout a socket (as under a service manager or `socat`),
/// which cannot be reopened non-blocking as a pipe is: it is written with
/// `send(MSG_DONTWAIT)`, so a full socket never blocks the vCPU (which
/// once held COM1's lock in its write for good: the VMM could not end).
#[test]
fn an_unread_socket_stdout_never_stalls_the_vmm() {
    if !kvm("unread_socket_stdout") {
        return;
    }
    let dir = TempDir::new("flood-socket");
    let k = dir.file("flood.elf", &test_guests::flood());
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap()])
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = wait(child);
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    ours.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &ours, &mut got);
    assert!(!got.is_empty() && got.iter().all(|b| *b == b'x'));
}

/// A pipe whose reader is gone before the VMM starts: the guest's output
/// meets EPIPE, never SIGPIPE's default (the VMM is `#![no_main]` and
/// ignores SIGPIPE itself, as Rust's own start would; vmm-cli/src/start.rs).
#[test]
fn a_stdout_pipe_without_a_reader_does_not_kill_the_vmm() {
    if !kvm("stdout_without_reader") {
        return;
    }
    let dir = TempDir::new("epipe");
    let k = dir.file(
        "hello.elf",
        &test_guests::hello_reset("nobody reads this\n"),
    );
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap()])
        .stdout(std::process::Stdio::from(writer))
        .spawn()
        .unwrap();
    let o = wait(child);
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
}

/// Descriptors 0, 1 and 2 closed at the start are opened on /dev/null
/// before anything else can take their numbers (else an eventfd becomes
/// stdin and the kernel's file stdout, as seen without it).
#[test]
fn closed_standard_descriptors_are_opened_on_dev_null() {
    if !kvm("closed_standard_descriptors") {
        return;
    }
    let dir = TempDir::new("closedfds");
    let k = dir.file("halt.elf", &test_guests::hello_halt("up\n"));
    let log = dir.0.join("console.log");
    let serial = format!("file:{}", log.display());
    let mut c = vmm();
    c.args(["--kernel", k.to_str().unwrap(), "--serial", &serial]);
    // SAFETY: close is async-signal-safe; the child closes its own copies.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            for fd in 0..3 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    let pid = child.id();
    assert_eq!(wait_for_output(&log, 3), b"up\n");
    let targets: Vec<String> = (0..3)
        .map(
            |fd| match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
                Ok(p) => p.display().to_string(),
                Err(e) => format!("({e})"),
            },
        )
        .collect();
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let o = wait(child);
    assert!(o.status.success(), "{:?}", o.status);
    assert_eq!(targets, ["/dev/null", "/dev/null", "/dev/null"]);
}

/// A pseudo-terminal pair; the slave is the VMM's stdin.
struct Pty {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
}

fn openpty() -> Pty {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the out-pointers; name, termios
    // and window size are optional (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and owned by nothing else.
    unsafe {
        Pty {
            master: std::fs::File::from_raw_fd(master),
            slave: std::os::fd::OwnedFd::from_raw_fd(slave),
        }
    }
}

fn termios(fd: &std::os::fd::OwnedFd) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; tcgetattr fills it and is checked.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out-pointer.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

/// Starts vmm on `kernel` (and `extra` arguments) with a pty as its
/// terminal; returns the child, the pty and a channel of its stdout chunks.
fn vmm_on_pty(
    kernel: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, Pty, std::sync::mpsc::Receiver<Vec<u8>>) {
    let pty = openpty();
    let stdin = pty.slave.try_clone().unwrap();
    let mut child = vmm()
        .args(["--kernel", kernel.to_str().unwrap(), "--log-level", "info"])
        .args(extra)
        .stdin(std::process::Stdio::from(stdin))
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    (child, pty, rx)
}

/// Collects stdout chunks until `want` has appeared (or the limit passes).
fn read_until(rx: &std::sync::mpsc::Receiver<Vec<u8>>, want: &[u8]) -> Vec<u8> {
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    let mut got = Vec::new();
    while !got.windows(want.len()).any(|w| w == want) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => got.extend(chunk),
            Err(_) => panic!(
                "never saw {:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

#[test]
fn console_keys_reach_the_guest_and_the_terminal_is_restored() {
    if !kvm("console_keys") {
        return;
    }
    let dir = TempDir::new("echo");
    let k = dir.file("echo.elf", &test_guests::echo());
    let (child, mut pty, rx) = vmm_on_pty(&k, &[]);
    let before = termios(&pty.slave);
    // Typed keys reach COM1's receiver; the guest echoes them.
    std::io::Write::write_all(&mut pty.master, b"hello").unwrap();
    read_until(&rx, b"hello");
    // Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A h is ours and never reaches it.
    std::io::Write::write_all(&mut pty.master, b"\x01\x01\x01h[").unwrap();
    let got = read_until(&rx, b"[");
    assert!(
        got.ends_with(b"\x01["),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        String::from_utf8_lossy(&got).contains("C-a x"),
        "help printed"
    );
    // The guest ends on 'q' (its i8042 reset): status 0.
    std::io::Write::write_all(&mut pty.master, b"q").unwrap();
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("guest reset"), "{}", stderr(&o));
    let after = termios(&pty.slave);
    assert_eq!(
        (after.c_lflag, after.c_iflag, after.c_oflag),
        (before.c_lflag, before.c_iflag, before.c_oflag),
        "terminal restored"
    );
}

/// Keys typed on the console reach a guest that takes COM1's interrupts
/// from the 8259s alone: on the split irqchip the line, raised on the
/// main loop's thread, goes through our PIC and the vector to the boot
/// vCPU with KVM_INTERRUPT; on KVM's irqchip through its PIC.
#[test]
fn console_keys_interrupt_a_guest_through_the_8259s_in_both_modes() {
    if !kvm("console_keys_pic") {
        return;
    }
    for mode in ["kernel", "split"] {
        let dir = TempDir::new("pic-echo");
        let k = dir.file("pic-echo.elf", &test_guests::pic_interrupts(true));
        let (child, mut pty, rx) = vmm_on_pty(&k, &["--irqchip", mode]);
        read_until(&rx, test_guests::PIC_INTERRUPTS_OUTPUT[2].as_bytes());
        std::io::Write::write_all(&mut pty.master, b"hello").unwrap();
        read_until(&rx, b"hello");
        std::io::Write::write_all(&mut pty.master, b"q").unwrap();
        let o = wait(child);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        assert!(stderr(&o).contains("guest reset"), "{mode}: {}", stderr(&o));
    }
}

#[test]
fn ctrl_a_x_quits_with_0_and_restores_the_terminal() {
    if !kvm("ctrl_a_x") {
        return;
    }
    let dir = TempDir::new("quit");
    let k = dir.file("spin.elf", &test_guests::hello_spin("spinning\n"));
    let (child, mut pty, rx) = vmm_on_pty(&k, &[]);
    let before = termios(&pty.slave);
    read_until(&rx, b"spinning\n");
    // The guest never reads COM1: its FIFO fills, and Ctrl-A x typed after
    // that must still quit.
    std::io::Write::write_all(&mut pty.master, &[b'a'; 200]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    std::io::Write::write_all(&mut pty.master, b"\x01x").unwrap();
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("quit from the console"),
        "{}",
        stderr(&o)
    );
    let after = termios(&pty.slave);
    assert_eq!(after.c_lflag, before.c_lflag, "terminal restored");
}

#[test]
fn memory_above_the_32_bit_hole() {
    if !kvm("memory_above_the_hole") {
        return;
    }
    let dir = TempDir::new("bigmem");
    let k = dir.file("hello.elf", &test_guests::hello_reset("big\n"));
    // 3 GiB fills RAM up to the hole; 5 GiB puts 2 GiB above 4 GiB (a
    // second memory slot). Guest RAM is mapped lazily, so this is cheap.
    for size in ["3G", "5G"] {
        let o = run_kernel(&k, &["--memory", size]);
        assert!(o.status.success(), "{size}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "big\n", "{size}");
    }
}

#[test]
fn ctrl_a_c_monitor_runs_machine_commands() {
    if !kvm("ctrl_a_c_monitor") {
        return;
    }
    let dir = TempDir::new("monitor");
    let k = dir.file("spin.elf", &test_guests::hello_spin("spinning\n"));
    let (child, mut pty, rx) = vmm_on_pty(&k, &[]);
    read_until(&rx, b"spinning\n");
    let mut type_ = |keys: &[u8]| std::io::Write::write_all(&mut pty.master, keys).unwrap();
    type_(b"\x01c");
    read_until(&rx, b"(vmm) ");
    type_(b"info status\r");
    read_until(&rx, b"VM status: running");
    type_(b"stop\r");
    read_until(&rx, b"(vmm) ");
    type_(b"info status\r");
    read_until(&rx, b"VM status: paused");
    type_(b"cont\rbogus\r");
    read_until(&rx, b"unknown command: 'bogus'");
    type_(b"info status\r");
    read_until(&rx, b"VM status: running");
    type_(b"quit\r");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("quit (QMP or the monitor)"),
        "{}",
        stderr(&o)
    );
}

/// On a PVM host, a Linux kernel cannot boot: the VMM says so (and where
/// to go) before the guest starts, and still runs it. Elsewhere it says
/// nothing of the kind. The Debian kernel comes from the default guest
/// (`cargo xtask test` sets its folder).
#[test]
fn a_linux_kernel_on_a_pvm_host_is_warned_about() {
    if !kvm("a_linux_kernel_on_a_pvm_host_is_warned_about") {
        return;
    }
    let guest = match vmm_testbed::GuestFiles::default_location() {
        Ok(g) => g,
        Err(e) => {
            assert!(
                !vmm_core::kvm::required_for_tests(),
                "VMM_REQUIRE_KVM=1 but {e}"
            );
            eprintln!("SKIP a_linux_kernel_on_a_pvm_host_is_warned_about: {e}");
            return;
        }
    };
    let mut child = vmm()
        .arg("--kernel")
        .arg(&guest.bzimage)
        .args(["--serial", "none", "--memory", "256M"])
        .spawn()
        .unwrap();
    let err = child.stderr.take().map(vmm_testbed::process::drain);
    // The warning comes before the guest runs; two seconds is plenty.
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    let err = String::from_utf8_lossy(&err.unwrap().join().unwrap()).into_owned();
    let pvm = vmm_core::kvm::KvmFlavor::detect() == vmm_core::kvm::KvmFlavor::Pvm;
    assert_eq!(err.contains("is PVM (kvm_pvm)"), pvm, "{err}");
    if pvm {
        assert!(err.contains("cargo xtask run"), "{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}
