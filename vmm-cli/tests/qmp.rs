//! QMP end to end: the `vmm` binary with `--qmp`, driven by a small Rust
//! client over the Unix socket and by QEMU's own Python client library
//! (`qemu.qmp`), on hand-assembled guests that run on this host's
//! `/dev/kvm` (PVM included).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;
use vmm_pc::test_guests;

use common::qmp_client::{run_qemu_qmp_script, spawn, Client};

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
    assert_eq!(
        run_qemu_qmp_script(&dir, script, &[sock.as_os_str()]),
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

/// `pmemsave` as QEMU's: guest physical memory into a file (here the
/// guest's own code and message where it was loaded, and the whole of
/// RAM; a longer file cut to the dump), QEMU's words for a range past RAM
/// and for a file that cannot be made, a FIFO refused (it would block the
/// main loop), and the VMM (its seccomp filters on) carries on.
#[test]
fn pmemsave_writes_guest_memory_to_a_file() {
    if !kvm("qmp_pmemsave") {
        return;
    }
    let dir = TempDir::new("qmp-pmemsave");
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("pmem-marker\n"),
        &["--serial", "none"],
    );
    let mut c = Client::connect(&sock);
    let at = test_guests::LOAD_ADDR;
    let code = dir.0.join("code.bin");
    let r = c.execute_with(
        "pmemsave",
        json!({"val": at, "size": 4096, "filename": code.to_str().unwrap()}),
    );
    assert_eq!(r, json!({"return": {}}));
    let bytes = std::fs::read(&code).unwrap();
    assert_eq!(bytes.len(), 4096);
    assert!(
        bytes.windows(11).any(|w| w == b"pmem-marker"),
        "the guest's message is not where its code was loaded"
    );
    let all = dir.0.join("ram.bin");
    let r = c.execute_with(
        "pmemsave",
        json!({"val": 0, "size": 64u64 << 20, "filename": all.to_str().unwrap()}),
    );
    assert_eq!(r, json!({"return": {}}));
    let ram = std::fs::read(&all).unwrap();
    assert_eq!(ram.len(), 64 << 20);
    assert_eq!(&ram[at as usize..at as usize + 4096], &bytes[..]);
    // Over a longer file: it ends up the dump's size, as QEMU's.
    let r = c.execute_with(
        "pmemsave",
        json!({"val": at, "size": 4096, "filename": all.to_str().unwrap()}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(std::fs::read(&all).unwrap(), bytes);
    // A FIFO (nobody reading it) would block the main loop: refused.
    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let r = c.execute_with(
        "pmemsave",
        json!({"val": 0, "size": 1, "filename": fifo.to_str().unwrap()}),
    );
    assert_eq!(
        r["error"]["desc"],
        format!(
            "Could not open '{}': not a regular file (a FIFO)",
            fifo.display()
        )
    );
    let r = c.execute_with(
        "pmemsave",
        json!({"val": 64u64 << 20, "size": 1, "filename": all.to_str().unwrap()}),
    );
    assert_eq!(
        r["error"]["desc"],
        "Invalid addr 0x0000000004000000/size 1 specified"
    );
    let r = c.execute_with(
        "pmemsave",
        json!({"val": 0, "size": 1, "filename": "/nonexistent/dir/m.bin"}),
    );
    assert_eq!(
        r["error"]["desc"],
        "Could not open '/nonexistent/dir/m.bin': No such file or directory"
    );
    assert_eq!(c.status()["status"], "running");
    common::qmp_client::quit(&mut c, child);
}
