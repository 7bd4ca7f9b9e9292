//! Debian on a root disk (`cargo xtask guest --rootfs`'s image, made by
//! `vmm_testbed::rootfs`): the default initramfs switches to `root=/dev/vda`,
//! files written there survive the VMM's exit, several hundred MiB reach
//! the image intact and leave ext4 clean; and a host disk that fills up
//! stops the VM in `io-error` until space is freed and `cont` finishes the
//! guest's write. Nested in the test bed on PVM hosts (the images are L1's
//! virtio disks; the full disk is a small tmpfs inside L1), directly on
//! hardware KVM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmm_testbed::{rootfs, GuestFiles, HostKvm, Job};

mod common;
mod linux_common;

use linux_common::{build_static, debian_job, guest, nested_retry, run, test_initrd};

/// The guest's virtio drivers, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// The end of a test's `/etc/rc.local`: once the console's shell is up,
/// it is killed as if its user had typed `exit`, so that the root disk's
/// init powers off its own way (sync, `/` read-only, poweroff).
const EXIT_SHELL: &str =
    "(while ! pidof sh >/dev/null; do sleep 0.2; done; sleep 1; kill -9 $(pidof sh)) &\n";

/// The default initramfs of this tree (its `/init` switches to `root=`),
/// and a root image of `size` bytes with `rc_local` as `/etc/rc.local`.
fn root_disk(
    g: &GuestFiles,
    dir: &common::TempDir,
    size: u64,
    rc_local: &str,
) -> (PathBuf, PathBuf) {
    let initrd = dir.file("initramfs.cpio", &rootfs::default_initramfs(g).unwrap());
    let image = dir.0.join("rootfs.img");
    let rc = format!("#!/bin/sh\n{rc_local}\n{EXIT_SHELL}");
    rootfs::build(
        g,
        &image,
        size,
        &[("etc/rc.local".into(), rc.into_bytes(), 0o755)],
    )
    .unwrap();
    (initrd, image)
}

/// The file or block device a job names for `image`: nested, L1's disk
/// for it; directly, the host path.
fn drive_file(job: &mut Job, image: &Path) -> String {
    if HostKvm::detect() == HostKvm::Pvm {
        job.l1_disk(image)
    } else {
        image.display().to_string()
    }
}

/// A job booting `kernel` and `initrd` with `/dev/vda` = `image` as root.
fn root_job(g: &GuestFiles, initrd: &Path, image: &Path) -> Job {
    let mut job = debian_job(
        g,
        initrd,
        [
            "--memory",
            "512M",
            "--append",
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
        ],
    )
    .timeout(Duration::from_secs(480));
    let file = drive_file(&mut job, image);
    job.args.extend([
        "--drive".to_owned(),
        format!("file={file},if=virtio,format=raw"),
    ]);
    job
}

/// `e2fsck -fn` on `image`: clean, or the test fails with its report.
fn assert_clean(test: &str, image: &Path) {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(image)
        .output()
        .expect("cannot run e2fsck (apt-get install e2fsprogs)");
    assert!(
        fsck.status.success(),
        "{test}: e2fsck -fn: status {:?}\n{}{}",
        fsck.status.code(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// A file of the ext4 `image`, read with debugfs.
fn read_from_image(image: &Path, path: &str, out: &Path) -> Vec<u8> {
    let st = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", out.display()))
        .arg(image)
        .output()
        .expect("cannot run debugfs (apt-get install e2fsprogs)");
    assert!(st.status.success(), "debugfs dump {path}");
    std::fs::read(out).unwrap_or_else(|e| panic!("{path} is not in the image: {e}"))
}

/// The value after `@@NAME ` on the console (the first such line).
fn value<'a>(c: &'a str, name: &str) -> Option<&'a str> {
    let tag = format!("@@{name} ");
    c.lines().find_map(|l| l.trim().strip_prefix(tag.as_str()))
}

/// A one-word value (a status, a size, a checksum) of a `@@NAME value`
/// line: its leading letters and digits, so that a kernel message the
/// console put between the word and its line's end (`@@SYNC 0[ 7.83]
/// clocksource: ...`, seen in a CI rehearsal) is not taken for it.
fn word<'a>(c: &'a str, name: &str) -> Option<&'a str> {
    let v = value(c, name)?;
    let end = v
        .find(|ch: char| !ch.is_ascii_alphanumeric())
        .unwrap_or(v.len());
    Some(&v[..end])
}

/// Root on `/dev/vda`: the default initramfs mounts it read-write and
/// switches to it, its init runs `/etc/rc.local` and a shell on the
/// console (its prompt shows); the shell's exit powers off with `/`
/// clean. A file written on the first boot is there on the second, a new
/// VMM on the same image, and on the host afterwards.
#[test]
fn debian_root_disk_keeps_files_across_boots() {
    nested_retry("debian_root_disk_keeps_files_across_boots", || {
        let test = "debian_root_disk_keeps_files_across_boots";
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new("rootfs-boots");
        let rc = "if [ -e /root/note.txt ]; then echo \"@@FOUND $(cat /root/note.txt)\"; \
                  else echo \"written on boot 1 ($(cat /proc/sys/kernel/random/uuid))\" >/root/note.txt; \
                  echo \"@@WROTE $(cat /root/note.txt)\"; fi\n\
                  echo \"@@ROOT $(grep -m1 ' / ' /proc/mounts | cut -d' ' -f1,3,4)\"";
        let (initrd, image) = root_disk(&g, &dir, rootfs::DEFAULT_SIZE, rc);
        let job = root_job(&g, &initrd, &image);
        let mut wrote = String::new();
        for boot in 1..=2 {
            let out = run(test, &g, &job);
            let c = &out.console;
            eprintln!("{test}: boot {boot}: whole run {:?}", out.total);
            assert_eq!(
                out.status,
                Some(0),
                "{test}: boot {boot}: {}\n{c}",
                out.stderr
            );
            let root =
                value(c, "ROOT").unwrap_or_else(|| panic!("{test}: boot {boot}: no @@ROOT\n{c}"));
            assert!(
                root.starts_with("/dev/vda ext4 rw"),
                "{test}: boot {boot}: / is {root}\n{c}"
            );
            // The console's shell came up (its prompt after rc.local's
            // lines), and its exit powered off through vmm-poweroff.
            let after = &c[c.find("@@ROOT").unwrap()..];
            assert!(
                after.contains("/ # "),
                "{test}: boot {boot}: no shell prompt\n{c}"
            );
            assert!(
                after.contains("vmm guest: syncing, / read-only, powering off"),
                "{test}: boot {boot}: no clean poweroff\n{c}"
            );
            assert!(
                !after.contains("stays read-write"),
                "{test}: boot {boot}:\n{c}"
            );
            if boot == 1 {
                wrote = value(c, "WROTE")
                    .unwrap_or_else(|| panic!("{test}: boot 1 wrote nothing\n{c}"))
                    .to_owned();
                assert!(
                    value(c, "FOUND").is_none(),
                    "{test}: a fresh image has the note\n{c}"
                );
            } else {
                assert_eq!(
                    value(c, "FOUND"),
                    Some(wrote.as_str()),
                    "{test}: boot 2\n{c}"
                );
            }
            assert_clean(test, &image);
        }
        let note = read_from_image(&image, "/root/note.txt", &dir.0.join("note.txt"));
        assert_eq!(
            String::from_utf8_lossy(&note).trim_end(),
            wrote,
            "{test}: on the host"
        );
    });
}

/// The guest writes 300 MiB of random bytes to a file on its ext4 root
/// (a 512 MiB sparse image), syncs, reads it back past its page cache
/// (md5sum), and powers off; on the host the image is clean (`e2fsck
/// -fn`) and the file has the size and the checksum the guest printed.
#[test]
fn debian_root_disk_writes_300_mib() {
    nested_retry("debian_root_disk_writes_300_mib", || {
        let test = "debian_root_disk_writes_300_mib";
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new("rootfs-300m");
        let rc =
            "dd if=/dev/urandom of=/root/big.bin bs=1M count=300 iflag=fullblock 2>/tmp/dd.err; \
                  echo \"@@DD $?\"\n\
                  sync; echo \"@@SYNC $?\"\n\
                  echo 3 >/proc/sys/vm/drop_caches\n\
                  echo \"@@SIZE $(stat -c %s /root/big.bin)\"\n\
                  echo \"@@MD5 $(md5sum /root/big.bin | cut -d' ' -f1)\"\n\
                  cat /tmp/dd.err";
        let (initrd, image) = root_disk(&g, &dir, 512 << 20, rc);
        let out = run(test, &g, &root_job(&g, &initrd, &image));
        let c = &out.console;
        eprintln!("{test}: whole run {:?}", out.total);
        assert_eq!(out.status, Some(0), "{test}: {}\n{c}", out.stderr);
        assert_eq!(word(c, "DD"), Some("0"), "{test}: dd\n{c}");
        assert_eq!(word(c, "SYNC"), Some("0"), "{test}: sync\n{c}");
        assert_eq!(
            word(c, "SIZE"),
            Some("314572800"),
            "{test}: size in the guest\n{c}"
        );
        let guest_md5 = word(c, "MD5").unwrap_or_else(|| panic!("{test}: no @@MD5\n{c}"));
        assert!(
            c.contains("vmm guest: syncing, / read-only, powering off")
                && !c.contains("stays read-write"),
            "{test}: no clean poweroff\n{c}"
        );
        assert_clean(test, &image);
        let dumped = dir.0.join("big.bin");
        let data = read_from_image(&image, "/root/big.bin", &dumped);
        assert_eq!(data.len(), 300 << 20, "{test}: size on the host");
        drop(data);
        let md5 = Command::new("md5sum").arg(&dumped).output().unwrap();
        let host_md5 = String::from_utf8_lossy(&md5.stdout);
        assert_eq!(
            host_md5.split_whitespace().next(),
            Some(guest_md5),
            "{test}: checksum"
        );
        // Sparse: the image holds about what was written, not its 512 MiB.
        use std::os::unix::fs::MetadataExt;
        let used = std::fs::metadata(&image).unwrap().blocks() * 512;
        eprintln!("{test}: image uses {} MiB of its 512", used >> 20);
    });
}

/// A disk whose host file system fills up (QEMU's default `werror=enospc`):
/// the image is a sparse file on a 24 MiB tmpfs half taken by a filler
/// (nested: inside L1, where the VMM runs; directly: in a private mount
/// namespace, as root). The guest's 20 MiB write stops the VM in
/// `io-error` with `BLOCK_IO_ERROR` (write, stop, nospace) and
/// `query-status` says so; the filler is removed, `cont` retries the held
/// requests, and the guest's dd and sync end with status 0; the image then
/// holds the guest's bytes (its checksum in L1 equals the guest's).
#[test]
fn debian_disk_full_stops_in_io_error_and_cont_completes() {
    nested_retry(
        "debian_disk_full_stops_in_io_error_and_cont_completes",
        || {
            let test = "debian_disk_full_stops_in_io_error_and_cont_completes";
            let Some(g) = guest(test) else { return };
            if HostKvm::detect() == HostKvm::Hardware
                && !Command::new("unshare")
                    .args(["--mount", "true"])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                eprintln!(
                    "SKIP {test}: a small tmpfs for the image needs a private mount namespace \
                 (unshare --mount, as root), which this host refuses"
                );
                return;
            }
            let dir = common::TempDir::new("rootfs-enospc");
            let script = "\
            for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do insmod /$m.ko; done\n\
            i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
            yes vmm-io-error-test | head -c 20971520 >/tmp/pattern\n\
            echo \"@@GUEST-MD5 $(md5sum /tmp/pattern | cut -d' ' -f1)\"\n\
            echo @@WRITING\n\
            dd if=/tmp/pattern of=/dev/vda bs=1M conv=fsync 2>/tmp/dd.err; echo \"@@DD $?\"\n\
            sync; echo \"@@SYNC $?\"\n\
            cat /tmp/dd.err\n\
            echo @@GUEST-DONE\n\
            poweroff -f";
            let initrd = test_initrd(&g, &dir, script, MODULES, false);
            let client = build_static(&dir, "qmpclient");
            let setup = "mkdir small && mount -t tmpfs -o size=24m vmm-small small && \
                     dd if=/dev/zero of=small/filler bs=1M count=12 2>/dev/null && \
                     truncate -s 32M small/disk.img";
            let companion = "./qmpclient qmp.sock event:BLOCK_IO_ERROR event:STOP query-status; \
            echo \"@@FREE-BEFORE $(df -k small | tail -n 1)\"; \
            rm small/filler; \
            ./qmpclient qmp.sock cont 'file:console.log:@@GUEST-DONE' query-status; \
            i=0; while [ -e qmp.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
            echo \"@@L1-MD5 $(head -c 20971520 small/disk.img | md5sum | cut -d' ' -f1)\"; \
            echo @@CONSOLE; cat console.log";
            let job = debian_job(
                &g,
                &initrd,
                [
                    "--memory",
                    "512M",
                    "--drive",
                    "file=small/disk.img,if=virtio,format=raw",
                    "--qmp",
                    "qmp.sock",
                    "--serial",
                    "file:console.log",
                ],
            )
            .file("qmpclient", &client)
            .setup(setup)
            .companion(companion)
            .timeout(Duration::from_secs(480));
            let out = run(test, &g, &job);
            let c = &out.console;
            eprintln!("{test}: whole run {:?}", out.total);
            assert!(
                !c.contains("@@QMPFAIL"),
                "{test}: a QMP step failed:\n{c}\n{}",
                out.stderr
            );
            assert_eq!(
                out.status,
                Some(0),
                "{test}: vmm stderr:\n{}\n{c}",
                out.stderr
            );
            let qmp: Vec<serde_json::Value> = c
                .lines()
                .filter_map(|l| serde_json::from_str(l.trim().strip_prefix("@@QMP ")?).ok())
                .collect();
            let errors: Vec<&serde_json::Value> = qmp
                .iter()
                .filter(|v| v["event"] == "BLOCK_IO_ERROR")
                .collect();
            assert!(!errors.is_empty(), "{test}: no BLOCK_IO_ERROR\n{c}");
            eprintln!(
                "{test}: {} BLOCK_IO_ERROR event(s), the first: {}",
                errors.len(),
                errors[0]
            );
            for e in &errors {
                let d = &e["data"];
                assert_eq!(
                    (&d["operation"], &d["action"], &d["nospace"]),
                    (&"write".into(), &"stop".into(), &true.into()),
                    "{test}: {e}"
                );
            }
            let statuses: Vec<(&str, bool)> = qmp
                .iter()
                .filter_map(|v| {
                    Some((
                        v["return"]["status"].as_str()?,
                        v["return"]["running"].as_bool()?,
                    ))
                })
                .collect();
            eprintln!("{test}: query-status: {statuses:?}");
            assert_eq!(
                statuses.first(),
                Some(&("io-error", false)),
                "{test}: query-status while stopped\n{c}"
            );
            assert_eq!(
                statuses.get(1).map(|s| s.0),
                Some("running"),
                "{test}: after cont\n{c}"
            );
            assert!(
                qmp.iter().any(|v| v["event"] == "RESUME"),
                "{test}: no RESUME\n{c}"
            );
            // The guest never saw an error: its dd and sync carried on.
            assert_eq!(word(c, "DD"), Some("0"), "{test}: dd\n{c}");
            assert_eq!(word(c, "SYNC"), Some("0"), "{test}: sync\n{c}");
            assert!(
                !c.contains("I/O error") && !c.contains("critical space allocation error"),
                "{test}: the guest saw an error\n{c}"
            );
            let guest_md5 =
                word(c, "GUEST-MD5").unwrap_or_else(|| panic!("{test}: no @@GUEST-MD5\n{c}"));
            assert_eq!(
                value(c, "L1-MD5"),
                Some(guest_md5),
                "{test}: the image's bytes\n{c}"
            );
            // The tmpfs was full when the VM stopped.
            let df = value(c, "FREE-BEFORE").unwrap_or_default();
            eprintln!("{test}: df of the tmpfs at the stop: {df}");
            assert_eq!(
                df.split_whitespace().nth(3),
                Some("0"),
                "{test}: the tmpfs had room left: {df}"
            );
        },
    );
}

#[test]
fn a_word_ends_where_a_kernel_message_cut_in() {
    let c = "@@SYNC 0[    7.832405] clocksource: timekeeping watchdog\n@@MD5 1a4b24c1  -\n";
    assert_eq!(word(c, "SYNC"), Some("0"));
    assert_eq!(word(c, "MD5"), Some("1a4b24c1"));
    assert_eq!(word(c, "DD"), None);
}
