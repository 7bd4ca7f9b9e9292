//! Disks under Debian's kernel: virtio-blk-pci on raw images, from the
//! guest's side (its own virtio_pci and virtio_blk drivers, loaded from
//! the test initramfs) and from the host's (the images after the VMM
//! exits). Nested in the test bed on PVM hosts (L1 gets the images as
//! virtio disks of its own, so the VMM's writes land in the host files);
//! directly on hardware KVM.

use std::path::Path;
use std::process::Command;

use vmm_testbed::{HostKvm, Job};

mod common;
mod linux_common;

use linux_common::{debian_job, guest, nested_retry, run, test_initrd, QUIET_APPEND};

/// The guest's drivers, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// An ext4 image of `size` holding `files` (name, contents), by mkfs.ext4's
/// `-d` (e2fsprogs).
fn ext4_image(
    dir: &common::TempDir,
    name: &str,
    size: &str,
    files: &[(&str, &str)],
) -> std::path::PathBuf {
    let root = dir.0.join(format!("{name}.d"));
    std::fs::create_dir_all(&root).unwrap();
    for (f, text) in files {
        std::fs::write(root.join(f), text).unwrap();
    }
    let image = dir.0.join(name);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg(size)
        .status()
        .expect("cannot run mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed");
    image
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

/// Two disks on 2 vCPUs: an ext4 one given read-only (its file is read,
/// a write to it refused), a raw one with a serial that the guest writes
/// 1 MiB to and reads back with four readers at once; the host then finds
/// the bytes in the image and the ext4 image untouched and clean (e2fsck
/// -n). Requests served one at a time per disk (`aio=threads`).
#[test]
fn debian_reads_and_writes_virtio_disks() {
    reads_and_writes("debian_reads_and_writes_virtio_disks", "threads");
}

/// The same with `aio=io_uring` (several requests in flight per disk).
#[test]
fn debian_reads_and_writes_virtio_disks_io_uring() {
    reads_and_writes("debian_reads_and_writes_virtio_disks_io_uring", "io_uring");
}

fn reads_and_writes(test: &'static str, aio: &'static str) {
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new(test);
        let ro = ext4_image(
            &dir,
            "ro.img",
            "16M",
            &[("hello.txt", "hello from the host\n")],
        );
        let raw = dir.0.join("raw.img");
        std::fs::write(&raw, vec![0u8; 8 << 20]).unwrap();
        let before = std::fs::read(&ro).unwrap();
        let script = "\
            for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do insmod /$m.ko; done\n\
            sleep 1\n\
            echo \"@@SIZES $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)\"\n\
            echo \"@@RO $(cat /sys/block/vda/ro) $(cat /sys/block/vdb/ro)\"\n\
            echo \"@@SERIAL $(cat /sys/block/vdb/serial)\"\n\
            mkdir -p /mnt\n\
            mount -o ro /dev/vda /mnt && echo \"@@READ $(cat /mnt/hello.txt)\"\n\
            umount /mnt\n\
            if dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; then echo @@ROWRITE ok; else echo @@ROWRITE refused; fi\n\
            yes vmm-disk-test | head -c 1048576 > /tmp/pattern\n\
            dd if=/tmp/pattern of=/dev/vdb bs=65536 seek=16 conv=fsync 2>/dev/null && echo @@WROTE\n\
            sync; echo 3 > /proc/sys/vm/drop_caches\n\
            for i in 0 1 2 3; do dd if=/dev/vdb of=/tmp/back$i bs=65536 skip=$((16 + 4 * i)) count=4 2>/dev/null & done; wait\n\
            cat /tmp/back0 /tmp/back1 /tmp/back2 /tmp/back3 | cmp - /tmp/pattern && echo @@READBACK\n\
            echo @@DONE\n\
            poweroff -f";
        let initrd = test_initrd(&g, &dir, script, MODULES, false);
        let mut job = debian_job(
            &g,
            &initrd,
            ["--cpus", "2", "--memory", "512M", "--append", QUIET_APPEND],
        )
        .timeout(std::time::Duration::from_secs(240));
        let ro_file = drive_file(&mut job, &ro);
        let raw_file = drive_file(&mut job, &raw);
        job.args.extend([
            "--drive".to_owned(),
            format!("file={ro_file},if=virtio,format=raw,readonly=on,aio={aio}"),
            "--drive".to_owned(),
            format!("file={raw_file},if=none,id=data,cache=none,aio={aio}"),
            "--device".to_owned(),
            "virtio-blk-pci,drive=data,serial=VMM-TEST-0001".to_owned(),
        ]);
        let out = run(test, &g, &job);
        let c = &out.console;
        assert!(
            c.contains("@@DONE"),
            "{test}: no @@DONE\n{c}\nstderr:\n{}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{test}: {}", out.stderr);
        assert!(c.contains("@@SIZES 32768 16384"), "{test}: sizes\n{c}");
        assert!(c.contains("@@RO 1 0"), "{test}: read-only flags\n{c}");
        assert!(c.contains("@@SERIAL VMM-TEST-0001"), "{test}: serial\n{c}");
        assert!(
            c.contains("@@READ hello from the host"),
            "{test}: ext4 read\n{c}"
        );
        assert!(
            c.contains("@@ROWRITE refused"),
            "{test}: a write to the read-only disk\n{c}"
        );
        assert!(c.contains("@@WROTE"), "{test}: the write\n{c}");
        assert!(c.contains("@@READBACK"), "{test}: the read back\n{c}");
        let image = std::fs::read(&raw).unwrap();
        let expect: Vec<u8> = b"vmm-disk-test\n"
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        assert_eq!(
            &image[1 << 20..2 << 20],
            &expect[..],
            "the guest's bytes in the image"
        );
        assert!(
            image[..1 << 20].iter().all(|&b| b == 0),
            "nothing before them"
        );
        assert_eq!(
            std::fs::read(&ro).unwrap(),
            before,
            "the read-only image is untouched"
        );
        let fsck = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&ro)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    });
}
