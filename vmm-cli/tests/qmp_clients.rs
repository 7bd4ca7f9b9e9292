//! QMP end to end, continued: clients that do not read or sit idle, the
//! socket path, the human monitor through QMP, the PCI bus and disks as QMP
//! reports them, and what 1000 resets and pauses leave behind.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::qmp_client::{quit, spawn, Client};
use common::*;
use serde_json::{json, Value};
use vmm_pc::test_guests;

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
        c.send(&request);
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
    let qtree = hmp("info qtree")["return"].as_str().unwrap().to_owned();
    for dev in [
        "dev: isa-serial, id \"serial0\"",
        "dev: mc146818rtc, id \"rtc\"",
        "dev: i8042, id \"i8042\"",
        "dev: pcie-host-bridge, id \"pci.0\"",
    ] {
        assert!(qtree.contains(dev), "{dev} in {qtree}");
    }
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
    quit(&mut c, child);
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
    quit(&mut c, child);
}

/// A virtio-vsock-pci is on the bus as QEMU shows one: 1af4:1053, a
/// communication controller (0x0780), in the slot asked for.
#[test]
fn query_pci_lists_a_vsock_device() {
    if !kvm("query_pci_vsock") {
        return;
    }
    let dir = TempDir::new("qmp-pci-vsock");
    let device = format!(
        "virtio-vsock-pci,guest-cid=7,uds={},addr=5",
        dir.0.join("v.sock").display()
    );
    let (child, sock) = spawn(
        &dir,
        &test_guests::hello_spin("spin\n"),
        &["--serial", "none", "--device", &device],
    );
    let mut c = Client::connect(&sock);
    let pci = c.execute("query-pci")["return"].clone();
    let vsock = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["slot"] == 5)
        .unwrap_or_else(|| panic!("no slot 5: {pci}"));
    assert_eq!(vsock["id"]["vendor"], 0x1af4, "{vsock}");
    assert_eq!(vsock["id"]["device"], 0x1053, "{vsock}");
    assert_eq!(vsock["class_info"]["class"], 0x0780, "{vsock}");
    quit(&mut c, child);
    assert!(!dir.0.join("v.sock").exists());
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
    quit(&mut c, child);
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
    quit(&mut c, child);
}
