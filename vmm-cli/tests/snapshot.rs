//! Snapshots end to end (QMP `snapshot-save` / `snapshot-load` with the VM
//! state in a file, `query-jobs`, `job-dismiss`, `JOB_STATUS_CHANGE`) on a
//! hand-assembled guest that counts in memory and prints each count on
//! COM1, on this host's `/dev/kvm` (PVM included).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::qmp_client::{spawn, Client};
use common::*;
use serde_json::json;
use vmm_pc::test_guests;

/// Busy-loop turns between two counts.
const DELAY: u32 = 100_000;

/// The counts printed so far, complete lines only.
fn counts(log: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter_map(|l| u32::from_str_radix(l.trim(), 16).ok())
        .collect()
}

/// Waits until at least `n` counts are printed.
fn wait_counts(log: &Path, n: usize) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let c = counts(log);
        if c.len() >= n {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {} counts: {:?}",
            c.len(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn statuses(c: &mut Client, job: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let e = c.event("JOB_STATUS_CHANGE");
        assert_eq!(e["data"]["id"], job, "{e}");
        let status = e["data"]["status"].as_str().unwrap().to_owned();
        seen.push(status.clone());
        if status == "concluded" {
            return seen;
        }
    }
}

#[test]
fn snapshot_load_goes_back_in_time_and_the_guest_counts_on() {
    if !kvm("snapshot_save_load") {
        return;
    }
    let dir = TempDir::new("snapshot");
    let log = dir.0.join("serial.log");
    let serial = format!("file:{}", log.display());
    let file = dir.0.join("vm.snap");
    let (child, sock) = spawn(&dir, &test_guests::counter(DELAY), &["--serial", &serial]);
    let mut c = Client::connect(&sock);
    wait_counts(&log, 5);

    let r = c.execute_with(
        "snapshot-save",
        json!({"job-id": "save0", "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(
        statuses(&mut c, "save0"),
        ["created", "running", "waiting", "pending", "concluded"]
    );
    // A running guest stopped for the save and runs on.
    c.event("STOP");
    c.event("RESUME");
    assert_eq!(c.status()["status"], "running");
    let at_save = counts(&log);
    let saved = *at_save.last().unwrap();
    let jobs = c.execute("query-jobs");
    assert_eq!(jobs["return"][0]["status"], "concluded", "{jobs}");
    assert_eq!(jobs["return"][0]["type"], "snapshot-save");
    assert_eq!(
        c.execute_with("job-dismiss", json!({"id": "save0"})),
        json!({"return": {}})
    );
    assert_eq!(c.event("JOB_STATUS_CHANGE")["data"]["status"], "null");

    // The guest counts on, well past the save...
    let later = wait_counts(&log, at_save.len() + 10);
    let before_load = later.len();
    let r = c.execute_with(
        "snapshot-load",
        json!({"job-id": "load0", "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(statuses(&mut c, "load0").last().unwrap(), "concluded");
    assert_eq!(c.status()["status"], "running");
    // ...and after the load it prints from where it was saved: the count
    // goes back to the saved one (or the one after, had the save caught it
    // between two lines) and counts on from there.
    let start = Instant::now();
    let back = loop {
        let after = counts(&log);
        let resumed = &after[before_load.min(after.len())..];
        if let Some(w) = resumed
            .windows(2)
            .find(|w| w[1] == w[0] + 1 && w[0] <= saved + 1)
        {
            break w[0];
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "saved at {saved:#x}, then printed {resumed:x?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        back >= saved.saturating_sub(1),
        "back to {back:#x}, saved {saved:#x}"
    );
    assert!(back < *later.last().unwrap(), "back in time");

    // The loaded RAM is mapped from the file: `pmemsave` may not cut it
    // short under the guest (the pages it has not written would be lost,
    // the VMM ended by SIGBUS). Refused, the file unchanged, the guest
    // counting on.
    let len = std::fs::metadata(&file).unwrap().len();
    let r = c.execute_with(
        "pmemsave",
        json!({"val": 0, "size": 4096, "filename": file.to_str().unwrap()}),
    );
    assert_eq!(
        r["error"]["desc"],
        format!(
            "Could not open '{}': it holds the guest's RAM (the snapshot the machine was \
             loaded from)",
            file.display()
        )
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    let now = counts(&log).len();
    wait_counts(&log, now + 3);
    // A FIFO to load from (nobody writing it) would block the main loop:
    // the job fails at once.
    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let e = job(&mut c, "snapshot-load", "fifo", &fifo);
    assert_eq!(
        e,
        format!(
            "cannot open {}: not a regular file (a FIFO)",
            fifo.display()
        ),
        "{e}"
    );
    assert_eq!(c.status()["status"], "running");

    // A damaged file is refused, the job says why, and the guest runs on:
    // a checksummed section's byte flipped (the last section's last byte,
    // before the end mark), then a file cut inside its RAM image (a page
    // past the end would end the VMM when the guest touched it).
    let bytes = std::fs::read(&file).unwrap();
    let (_, _, end) =
        vmm_pc::snapshot::format::read_counted(&mut bytes.as_slice(), 1 << 30).unwrap();
    let mut flipped = bytes.clone();
    flipped[end as usize - 3] ^= 0xff;
    let images_at = vmm_pc::snapshot::format::images_at(end) as usize;
    let cut = &bytes[..images_at + 4096];
    for (id, damaged, expected) in [
        ("bad", &flipped[..], "damaged (CRC-32 mismatch)"),
        (
            "cut",
            cut,
            "the snapshot is cut short (the image of 'ram@0')",
        ),
    ] {
        let bad = dir.0.join(format!("{id}.snap"));
        std::fs::write(&bad, damaged).unwrap();
        let r = c.execute_with(
            "snapshot-load",
            json!({"job-id": id, "tag": "t", "vmstate": bad.to_str().unwrap(), "devices": []}),
        );
        assert_eq!(r, json!({"return": {}}));
        assert_eq!(
            statuses(&mut c, id),
            ["created", "running", "aborting", "concluded"]
        );
        let jobs = c.execute("query-jobs");
        let bad_job = jobs["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .unwrap_or_else(|| panic!("{jobs}"));
        assert_eq!(bad_job["status"], "concluded");
        let error = bad_job["error"].as_str().unwrap().to_owned();
        assert!(error.contains(expected), "{error}");
    }
    assert_eq!(c.status()["status"], "running");
    let n = counts(&log).len();
    wait_counts(&log, n + 3);
    // The same job id twice is refused while the first is kept.
    let r = c.execute_with(
        "snapshot-save",
        json!({"job-id": "bad", "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(r["error"]["desc"], "Job ID 'bad' already in use", "{r}");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_snapshot_of_another_machine_shape_is_refused_with_the_difference() {
    if !kvm("snapshot_shape") {
        return;
    }
    let dir = TempDir::new("snapshot-shape");
    let file = dir.0.join("vm.snap");
    let (one, sock) = spawn(&dir, &test_guests::counter(DELAY), &["--serial", "none"]);
    let mut c = Client::connect(&sock);
    let r = c.execute_with(
        "snapshot-save",
        json!({"job-id": "s", "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(r, json!({"return": {}}));
    c.execute("quit");
    wait(one);

    let dir2 = TempDir::new("snapshot-shape-2");
    let (two, sock) = spawn(
        &dir2,
        &test_guests::counter(DELAY),
        &["--serial", "none", "--cpus", "2"],
    );
    let mut c = Client::connect(&sock);
    let r = c.execute_with(
        "snapshot-load",
        json!({"job-id": "l", "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(statuses(&mut c, "l").last().unwrap(), "concluded");
    let jobs = c.execute("query-jobs");
    assert_eq!(
        jobs["return"][0]["error"], "the snapshot has 1 vCPUs, this machine 2",
        "{jobs}"
    );
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    let o = wait(two);
    assert!(o.status.success(), "{}", stderr(&o));

    // The same file as if saved on a CPU without SSE3 (CPUID leaf 1, ECX
    // bit 0): a machine of the same shape on this host refuses it, by
    // `snapshot-load` and by `--incoming`, naming the leaf.
    let other_cpu = dir.0.join("other-cpu.snap");
    std::fs::write(&other_cpu, with_cpuid_changed(&file, 1, |l| l.ecx ^= 1)).unwrap();
    let dir3 = TempDir::new("snapshot-shape-3");
    let (three, sock) = spawn(&dir3, &test_guests::counter(DELAY), &["--serial", "none"]);
    let mut c = Client::connect(&sock);
    let r = c.execute_with(
        "snapshot-load",
        json!({"job-id": "l", "tag": "t", "vmstate": other_cpu.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(statuses(&mut c, "l").last().unwrap(), "concluded");
    let jobs = c.execute("query-jobs");
    let error = jobs["return"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.starts_with("the snapshot's vCPUs saw another CPU (CPUID leaf 0x1 subleaf 0: ECX ")
            && error.ends_with("here): it needs a host with the same CPU and KVM"),
        "{jobs}"
    );
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    let o = wait(three);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vmm()
        .args(["--kernel", dir.0.join("guest.elf").to_str().unwrap()])
        .args(["--memory", "64M", "--serial", "none"])
        .args(["--incoming", &format!("file:{}", other_cpu.display())])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the snapshot's vCPUs saw another CPU (CPUID leaf 0x1 subleaf 0"),
        "{}",
        stderr(&o)
    );
    // The file as saved loads on the same machine.
    let dir4 = TempDir::new("snapshot-shape-4");
    let (four, sock) = spawn(&dir4, &test_guests::counter(DELAY), &["--serial", "none"]);
    let mut c = Client::connect(&sock);
    assert_eq!(
        job(&mut c, "snapshot-load", "l", &file),
        serde_json::Value::Null
    );
    c.execute("quit");
    let o = wait(four);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The snapshot at `path` rewritten with `change` applied to vCPU 0's
/// CPUID leaf `function` in its shape (sections and RAM images as saved).
fn with_cpuid_changed(
    path: &Path,
    function: u32,
    change: impl Fn(&mut vmm_pc::snapshot::format::CpuidLeaf),
) -> Vec<u8> {
    use vmm_pc::snapshot::format;
    let bytes = std::fs::read(path).unwrap();
    let (mut shape, sections, end) = format::read_counted(&mut bytes.as_slice(), 1 << 30).unwrap();
    let leaf = shape
        .cpuid
        .iter_mut()
        .find(|l| l.function == function && l.index == 0)
        .unwrap_or_else(|| panic!("no CPUID leaf {function:#x} in the snapshot"));
    change(leaf);
    let mut out = Vec::new();
    format::write_start(&mut out, &shape).unwrap();
    for s in &sections {
        format::write_section(&mut out, &s.name, &s.data).unwrap();
    }
    format::write_end(&mut out).unwrap();
    out.resize(format::images_at(out.len() as u64) as usize, 0);
    out.extend_from_slice(&bytes[format::images_at(end) as usize..]);
    out
}

/// A snapshot-save and snapshot-load (the job's error, or none).
fn job(c: &mut Client, kind: &str, id: &str, file: &Path) -> serde_json::Value {
    c.execute_with(
        kind,
        json!({"job-id": id, "tag": "t", "vmstate": file.to_str().unwrap(), "devices": []}),
    );
    assert_eq!(statuses(c, id).last().unwrap(), "concluded");
    let jobs = c.execute("query-jobs");
    let me = jobs["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no job {id}: {jobs}"));
    me["error"].clone()
}

#[test]
fn a_machine_with_a_disk_snapshots_and_only_loads_onto_the_same_disk() {
    if !kvm("snapshot_disk") {
        return;
    }
    let dir = TempDir::new("snapshot-disk");
    let image = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let other = dir.file("other.img", &vec![0u8; 1 << 20]);
    let drive = |p: &Path| format!("file={},if=virtio,format=raw", p.display());
    let file = dir.0.join("vm.snap");
    let (child, sock) = spawn(
        &dir,
        &test_guests::counter(DELAY),
        &["--serial", "none", "--drive", &drive(&image)],
    );
    let mut c = Client::connect(&sock);
    assert_eq!(
        job(&mut c, "snapshot-save", "s", &file),
        serde_json::Value::Null
    );
    assert!(file.exists());
    assert_eq!(c.status()["status"], "running");
    assert_eq!(
        job(&mut c, "snapshot-load", "l", &file),
        serde_json::Value::Null
    );
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));

    // Another image at the same place on the bus: refused before anything
    // changes, both named.
    let (child, sock) = spawn(
        &dir,
        &test_guests::counter(DELAY),
        &["--serial", "none", "--drive", &drive(&other)],
    );
    let mut c = Client::connect(&sock);
    let e = job(&mut c, "snapshot-load", "l", &file);
    let e = e.as_str().unwrap_or_default();
    assert!(
        e.contains(&format!("backed by {}", image.display()))
            && e.contains(&format!("this machine's by {}", other.display())),
        "{e}"
    );
    assert_eq!(c.status()["status"], "running", "refused before any change");
    c.execute("quit");
    wait(child);

    // No disk at all: refused by the shape, the disk named.
    let (child, sock) = spawn(&dir, &test_guests::counter(DELAY), &["--serial", "none"]);
    let mut c = Client::connect(&sock);
    let e = job(&mut c, "snapshot-load", "l", &file);
    let e = e.as_str().unwrap_or_default();
    assert!(
        e.contains("(virtio-blk-pci) where this machine has nothing"),
        "{e}"
    );
    assert_eq!(c.status()["status"], "running");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_machine_with_a_vsock_device_snapshots_and_its_socket_goes_at_exit() {
    if !kvm("snapshot_vsock") {
        return;
    }
    let dir = TempDir::new("snapshot-vsock");
    let uds = dir.0.join("v.sock");
    let device = format!("virtio-vsock-pci,guest-cid=3,uds={}", uds.display());
    let (child, sock) = spawn(
        &dir,
        &test_guests::counter(DELAY),
        &["--serial", "none", "--device", &device],
    );
    let mut c = Client::connect(&sock);
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(&uds).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let file = dir.0.join("vm.snap");
    assert_eq!(
        job(&mut c, "snapshot-save", "s", &file),
        serde_json::Value::Null
    );
    assert!(file.exists());
    assert_eq!(
        job(&mut c, "snapshot-load", "l", &file),
        serde_json::Value::Null
    );
    assert_eq!(c.status()["status"], "running");
    assert!(uds.exists(), "the listening socket stays");
    c.execute("quit");
    let o = wait(child);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!uds.exists(), "the socket is removed at exit");
}
