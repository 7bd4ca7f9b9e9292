//! Snapshots and live migration of a Linux guest with a virtio-blk disk:
//! Debian's kernel mounts an ext4 image and, tick after tick, writes
//! 256 KiB of random bytes to one of eight files with `fsync`, drops its
//! caches and checks a 1 MiB reference file read back from the disk,
//! printing the tick and the check; after its last tick it unmounts the
//! file system and powers off. The host then runs `e2fsck -n` on the
//! image: the file system must be clean.
//!
//! - A snapshot (`stop`, `snapshot-save`, the image copied, `cont`) taken
//!   while it writes; the guest writes on; then `stop`, the image copied
//!   back, `snapshot-load`, `cont`: the guest carries on from the snapshot's
//!   tick to its end. (The image is not in the snapshot, as with QEMU and a
//!   raw file: it must hold what it held at the save, hence the copy.)
//! - A live migration over a Unix socket to a second VMM in the same L1
//!   on the same image (shared storage): the guest carries on in the
//!   destination, ticks neither lost nor repeated.
//!
//! Nested in the test bed on PVM hosts (L1 gets the image as a virtio disk
//! of its own); directly on hardware KVM.

use std::path::Path;
use std::process::Command;

use vmm_testbed::{HostKvm, Job};

mod common;
mod linux_common;

use linux_common::{
    assert_ticks_go_on, build_static, checked_ticks as ticks, completed_migration, debian_job,
    guest, nested_retry, print_migration, run, section, test_initrd, SOURCE_STATE_ON_FAILURE,
};

/// The guest's drivers, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// The guest's loop: `ticks` ticks, then unmount and power off.
fn script(ticks: u32) -> String {
    format!(
        "dmesg -n 1\n\
         for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do insmod /$m.ko; done\n\
         sleep 1\n\
         mkdir -p /mnt\n\
         mount /dev/vda /mnt || echo @@NOMOUNT\n\
         yes vmm-snapshot | head -c 1048576 > /mnt/ref\n\
         sync\n\
         want=$(md5sum < /mnt/ref)\n\
         echo @@READY\n\
         i=0\n\
         while [ $i -lt {ticks} ]; do\n\
           i=$((i+1))\n\
           dd if=/dev/urandom of=/mnt/f$((i % 8)) bs=65536 count=4 conv=fsync 2>/dev/null\n\
           echo 3 > /proc/sys/vm/drop_caches\n\
           ok=BAD; [ \"$(md5sum < /mnt/ref)\" = \"$want\" ] && ok=ok\n\
           echo \"@@TICK $i $ok\"\n\
           sleep 0.2\n\
         done\n\
         umount /mnt && echo @@UMOUNTED\n\
         echo @@DONE\n\
         poweroff -f"
    )
}

/// An empty ext4 image of `size` (e2fsprogs' mkfs.ext4).
fn ext4_image(dir: &common::TempDir, size: &str) -> std::path::PathBuf {
    let image = dir.0.join("disk.img");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
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

/// `e2fsck -f -n` on the host's image: clean.
fn assert_clean(test: &str, image: &Path, report: &str) {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{test}: e2fsck: {}{}\n{report}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

const JOB_ARGS: &str =
    "\"arguments\":{\"job-id\":\"JOB\",\"tag\":\"t\",\"vmstate\":\"vm.snap\",\"devices\":[]}";

fn snapshot_step(kind: &str, job: &str) -> String {
    format!(
        "{{\"execute\":\"{kind}\",{}}}",
        JOB_ARGS.replace("JOB", job)
    )
}

/// What L1 runs beside the VMM for the snapshot test: at tick 4 the
/// snapshot (with the image copied while the guest is stopped), at tick 10
/// the image put back and the snapshot loaded, then the guest's end.
fn snapshot_companion(disk: &str) -> String {
    format!(
        "./qmpclient qmp.sock 'file:console.log:@@TICK 4 ' stop '{save}' query-jobs > src.qmp 2>&1\n\
         echo \"@@SAVEQMP $?\"\n\
         dd if={disk} of=disk.copy bs=1M 2>/dev/null; echo \"@@COPIED $?\"\n\
         ./qmpclient qmp.sock cont 'file:console.log:@@TICK 10 ' stop >> src.qmp 2>&1\n\
         dd if=disk.copy of={disk} bs=1M conv=fsync 2>/dev/null; echo \"@@RESTORED $?\"\n\
         ./qmpclient qmp.sock '{load}' query-jobs cont query-status >> src.qmp 2>&1\n\
         echo \"@@LOADQMP $?\"\n\
         i=0; while ! grep -q '@@DONE' console.log 2>/dev/null; do sleep 0.5; i=$((i+1)); [ $i -lt 240 ] || break; done\n\
         sleep 2\n\
         echo @@SRCQMP; cat src.qmp; echo @@SRCLOG; cat console.log; echo @@END",
        save = snapshot_step("snapshot-save", "s"),
        load = snapshot_step("snapshot-load", "l"),
    )
}

#[test]
fn debian_disk_snapshot_mid_write_loads_back_and_fsck_is_clean() {
    let test = "debian_disk_snapshot_mid_write_loads_back_and_fsck_is_clean";
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new(test);
        let image = ext4_image(&dir, "32M");
        let initrd = test_initrd(&g, &dir, &script(24), MODULES, false);
        let client = build_static(&dir, "qmpclient");
        let mut job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "256M",
                "--qmp",
                "qmp.sock",
                "--serial",
                "file:console.log",
            ],
        )
        .file("qmpclient", &client)
        .timeout(std::time::Duration::from_secs(420));
        let disk = drive_file(&mut job, &image);
        job.args.extend([
            "--drive".to_owned(),
            format!("file={disk},if=virtio,format=raw"),
        ]);
        let job = job.companion(&snapshot_companion(&disk));
        let out = run(test, &g, &job);
        let c = &out.console;
        assert!(
            c.contains("@@END"),
            "{test}: the companion did not finish:\n{c}\n{}",
            out.stderr
        );
        let qmp = section(c, "@@SRCQMP");
        let log = section(c, "@@SRCLOG");
        let report = format!("QMP:\n{qmp}\nconsole:\n{log}\nvmm stderr:\n{}", out.stderr);
        for step in ["@@SAVEQMP 0", "@@COPIED 0", "@@RESTORED 0", "@@LOADQMP 0"] {
            assert!(c.contains(step), "{test}: {step}\n{report}");
        }
        assert!(
            !qmp.contains("\"error\""),
            "{test}: a job or command failed\n{report}"
        );
        assert_eq!(out.status, Some(0), "{test}: the VMM's exit\n{report}");
        // Ticks 1..10 (at least; the last may be cut short), then back to
        // the snapshot's, then on to the end without a gap.
        let t = ticks(log);
        let back = t
            .windows(2)
            .position(|w| w[1].0 <= w[0].0)
            .unwrap_or_else(|| panic!("{test}: the guest never went back\n{report}"));
        let (before, after) = t.split_at(back + 1);
        // The stop at tick 10 may cut its line short.
        assert!(before.last().unwrap().0 >= 9, "{test}: ticks\n{report}");
        assert!(
            (4..=6).contains(&after[0].0),
            "{test}: the guest went back to tick {}, the snapshot was at 4\n{report}",
            after[0].0
        );
        for w in after.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "{test}: ticks after the load\n{report}");
        }
        assert_eq!(
            after.last().unwrap().0,
            24,
            "{test}: the last tick\n{report}"
        );
        assert!(
            t.iter().all(|(_, ok)| ok == "ok"),
            "{test}: the reference changed\n{report}"
        );
        assert!(log.contains("@@UMOUNTED"), "{test}: unmount\n{report}");
        assert_clean(test, &image, &report);
    });
}

/// The migration test's ticks: enough for the pre-copy to end (under TCG
/// its first pass alone takes 10-25 s) with ticks to spare in the
/// destination.
const MIGRATION_TICKS: u32 = 80;

/// What L1 runs beside the source for the migration test: the
/// destination on the same image, the migration at tick 2, the guest's
/// end in the destination, then both VMMs' ends and what they printed. A
/// source that never migrates (its guest gone) leaves the destination
/// listening: it is told to quit rather than waited for until the limit.
fn migration_companion(drive: &str) -> String {
    format!(
        "$VMM --kernel kernel --initrd initrd --memory 128M --serial file:dst.log \
           --qmp dst.sock --drive {drive} --incoming unix:mig.sock 2>dst.err &\n\
         dst=$!\n\
         ./qmpclient qmp.sock 'file:console.log:@@TICK 2 ' \
           '{{\"execute\":\"migrate-set-capabilities\",\"arguments\":{{\"capabilities\":[{{\"capability\":\"events\",\"state\":true}}]}}}}' \
           '{{\"execute\":\"migrate-set-parameters\",\"arguments\":{{\"downtime-limit\":4000}}}}' \
           '{{\"execute\":\"migrate\",\"arguments\":{{\"uri\":\"unix:mig.sock\"}}}}' \
           'line:\"completed\"' query-migrate query-status > src.qmp 2>&1\n\
         rc=$?; echo \"@@SRCQMPEXIT $rc\"\n\
         {SOURCE_STATE_ON_FAILURE}\
         i=0; while [ $rc -eq 0 ] && ! grep -q '@@DONE' dst.log 2>/dev/null; do sleep 0.5; i=$((i+1)); [ $i -lt 240 ] || break; done\n\
         [ $rc -eq 0 ] || ./qmpclient dst.sock quit > /dev/null 2>&1\n\
         wait $dst; echo \"@@DSTEXIT $?\"\n\
         ./qmpclient qmp.sock quit > /dev/null 2>&1\n\
         echo @@SRCQMP; cat src.qmp; echo @@DSTERR; cat dst.err\n\
         echo @@SRCSTATE; cat src.state 2>/dev/null\n\
         echo @@SRCLOG; cat console.log; echo @@DSTLOG; cat dst.log; echo @@END"
    )
}

#[test]
fn debian_with_a_disk_live_migrates_over_unix_and_fsck_is_clean() {
    let test = "debian_with_a_disk_live_migrates_over_unix_and_fsck_is_clean";
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new(test);
        let image = ext4_image(&dir, "32M");
        let initrd = test_initrd(&g, &dir, &script(MIGRATION_TICKS), MODULES, false);
        let client = build_static(&dir, "qmpclient");
        let mut job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "128M",
                "--qmp",
                "qmp.sock",
                "--serial",
                "file:console.log",
            ],
        )
        .file("qmpclient", &client)
        .timeout(std::time::Duration::from_secs(420));
        let drive = format!("file={},if=virtio,format=raw", drive_file(&mut job, &image));
        job.args.extend(["--drive".to_owned(), drive.clone()]);
        // Two VMMs at once: two L1 CPUs whatever the guest's vCPUs.
        let job = job.companion(&migration_companion(&drive)).l1_cpus(2);
        let out = run(test, &g, &job);
        let c = &out.console;
        assert!(
            c.contains("@@END"),
            "{test}: the companion did not finish:\n{c}\n{}",
            out.stderr
        );
        let src_qmp = section(c, "@@SRCQMP");
        let src = ticks(section(c, "@@SRCLOG"));
        let dst_log = section(c, "@@DSTLOG");
        let dst = ticks(dst_log);
        let report = format!(
            "source QMP:\n{src_qmp}\ndestination stderr:\n{}\nsource log:\n{}\n\
             the source's vCPUs (asked over QMP when its step failed):\n{}\n\
             destination log:\n{dst_log}\nvmm stderr:\n{}",
            section(c, "@@DSTERR"),
            section(c, "@@SRCLOG"),
            section(c, "@@SRCSTATE"),
            out.stderr
        );
        assert!(
            c.contains("@@SRCQMPEXIT 0"),
            "{test}: the migration did not complete\n{report}"
        );
        if let Some(r) = completed_migration(src_qmp) {
            print_migration(test, &r);
        }
        assert!(
            c.contains("@@DSTEXIT 0"),
            "{test}: the destination's exit\n{report}"
        );
        assert_eq!(out.status, Some(0), "{test}: the source's exit\n{report}");
        assert_ticks_go_on(test, &src, &dst, MIGRATION_TICKS, &report);
        assert!(dst_log.contains("@@UMOUNTED"), "{test}: unmount\n{report}");
        assert_clean(test, &image, &report);
    });
}
