//! The L1 image: a Debian kernel and an initramfs that loads KVM, then
//! runs our VMM on one job.
//!
//! The initramfs holds busybox, the kernel's KVM modules, the VMM binary and
//! the shared libraries it links, the job's files under `/job`, and
//! `/job/run.sh`, which `/init` runs after loading KVM. Output travels back
//! on L1's serial console between markers (see [`crate::markers`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::initramfs::busybox_initramfs;
use crate::{l2_exits, markers, GuestFiles, Job, TestbedError};

/// `/init` of L1: mount, load KVM (AMD first: QEMU's `-cpu max` emulates
/// SVM), run the job, power off.
const L1_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
insmod /modules/irqbypass.ko
insmod /modules/kvm.ko
insmod /modules/kvm-amd.ko 2>/dev/null || insmod /modules/kvm-intel.ko 2>/dev/null
# Taps for the VMM's network cards (--netdev tap): /dev/net/tun.
[ -e /modules/tun.ko ] && insmod /modules/tun.ko
# /dev/vhost-vsock for the VMM's vhost-vsock-pci (and AF_VSOCK in L1),
# /dev/vhost-net for its virtio-net-pci with vhost=on.
for m in vsock vmw_vsock_virtio_transport_common vhost_iotlb vhost vhost_vsock tap vhost_net; do
  [ -e /modules/$m.ko ] && insmod /modules/$m.ko
done
# Disks the job brought (Job::l1_disks) appear as /dev/vda...
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  [ -e /modules/$m.ko ] && insmod /modules/$m.ko
done
@PIN@sh /job/run.sh
poweroff -f
"#;

/// L1's init: [`L1_INIT`] with the pin started before the job when
/// wanted ([`crate::l1_pin`]).
fn l1_init() -> String {
    let pin = if crate::l1_pin::wanted() {
        format!(
            "# A paused VM for the whole session keeps KVM's static keys still\n\
             # (vmm_testbed::l1_pin).\n{}",
            crate::l1_pin::init_line()
        )
    } else {
        String::new()
    };
    L1_INIT.replace("@PIN@", &pin)
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The line an interactive L1 prints when it is up, before the VMM starts
/// (followed by L1's uptime): a nested `cargo xtask run` that shows no such
/// line never got past L1's own boot.
pub const L1_UP_INTERACTIVE: &str = "test bed: L1 up after";

/// A batch job's watcher of L1's own kernel: L1's console prints only the
/// first line of a soft-lockup report (its console log level hides the
/// rest), so once `dmesg` has one, the report's next lines (the stuck
/// CPU's registers and backtrace) are printed too, marked, once, and the
/// end of the VMM's standard error so far (a vCPU that did not answer the
/// VMM's pause at its exit, say: the run will not get to print it).
/// Every 15 s it also prints the L2 exits up to a guest's triple fault, if
/// there was one (`l2_resets`, [`l2_exits::RESET_MARKER`]).
const LOCKUP_REPORTER: &str = "( while sleep 15; do l2_resets; \
     if dmesg | grep -q 'soft lockup'; then \
     dmesg | grep -A 40 'soft lockup' | head -45 | sed 's/^/@@TESTBED-L1-DMESG /'; \
     tail -n 20 /tmp/vmm.err 2>/dev/null | sed 's/^/@@TESTBED-L1-DMESG vmm stderr: /'; break; fi; \
     done ) &\nlockup_pid=$!\n";

/// An interactive job's watcher, in the background while the VMM runs: at
/// 60 s, 150 s and every 10 min it samples L2's exits for TCG's SVM fault
/// ([`l2_exits::interactive_fault_check`]), silent unless it finds it. (A
/// soft lockup of L1's own kernel needs no watcher: L1 reports it, panics
/// and prints its log on this console itself, see `qemu::L1_CMDLINE`.)
const INTERACTIVE_WATCHER: &str = "( n=0\n\
     while sleep 30; do n=$((n+1))\n\
     if [ $n = 2 ] || [ $n = 5 ] || [ $((n % 20)) = 0 ]; then l2_fault; fi\n\
     done ) &\n\
     watcher_pid=$!\n";

/// A batch L1's line about its own clock: the clock event device, the
/// clock source and whether its tick is periodic (`qemu::L1_CMDLINE`
/// asks for one: a one-shot timer lost under TCG leaves L1 asleep).
const L1_CLOCK_REPORT: &str = "echo \"@@TESTBED-L1-CLOCK \
     $(cat /sys/devices/system/clockevents/clockevent0/current_device) \
     $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) \
     tick=$(awk '/Tick Device: mode/ { print ($4 == 0 ? \"periodic\" : \"oneshot\"); exit }' \
     /proc/timer_list)\"";

/// The job script: batch (markers, output captured) or interactive (the
/// VMM gets L1's console as its terminal).
pub fn job_script(job: &Job, interactive: bool) -> String {
    let args: Vec<String> = job.args.iter().map(|a| shell_quote(a)).collect();
    let cmd = format!("/bin/vmm {}", args.join(" "));
    let ready = markers::L1_READY;
    if interactive {
        // No marker lines: the user reads this console, and one line says
        // that L1 is up ([`L1_UP_INTERACTIVE`]: until it comes, a silent
        // console is L1's boot, not the VMM's). The VMM's status leaves L1
        // on ttyS3 (see crate::Bridges), after L1's heartbeat there, which
        // stops first; ttyS2, a file on the host, carries guest output
        // byte for byte (raw).
        format!(
            "{heartbeat}\
             cd /job\n\
             echo \"{L1_UP_INTERACTIVE} $(cut -d' ' -f1 /proc/uptime) s; starting the VMM\"\n\
             [ -e /dev/kvm ] || echo 'test bed: L1 has no /dev/kvm'\n\
             {setup}\
             stty -F {serial_file} raw -echo 2>/dev/null\n\
             {sampler}{fault_check}{watcher}\
             {cmd}\n\
             st=$?\n\
             kill $watcher_pid $heartbeat_pid 2>/dev/null\n\
             [ $st = 0 ] || echo \"test bed: vmm exited with status $st\"\n\
             echo \" $st\" >{status_tty}\n",
            heartbeat = crate::heartbeat::interactive_loop(),
            status_tty = crate::heartbeat::INTERACTIVE_TTY,
            serial_file = crate::L1_SERIAL_FILE_TTY,
            setup = setup_step(job),
            sampler = l2_exits::sampler(),
            fault_check = l2_exits::interactive_fault_check(),
            watcher = INTERACTIVE_WATCHER,
        )
    } else {
        // Sampled 45 s before the time limit (L1's boot, a few seconds,
        // counts in the limit too), or at 10 s for short jobs.
        let watch_at = job.timeout.as_secs().saturating_sub(45).max(10);
        let watch = format!(
            "( sleep {watch_at}; kill -0 $vmm_pid 2>/dev/null && l2_exits ) &\n\
             watch_pid=$!\n"
        );
        format!(
            "{heartbeat}\
             cd /job\n\
             {sampler}\
             echo \"{ready} $(cut -d' ' -f1 /proc/uptime)\"\n\
             {clock}\n\
             l1_svm\n\
             {record}\
             {lockups}\
             if [ ! -e /dev/kvm ]; then echo '{err} L1 has no /dev/kvm'; exit; fi\n\
             {setup}\
             echo {out_begin}\n\
             {run}\n\
             kill $lockup_pid 2>/dev/null\n\
             l2_resets\n\
             echo\n\
             echo \"{out_end} $st\"\n\
             echo {err_begin}\n\
             cat /tmp/vmm.err\n\
             echo {err_end}\n",
            err = markers::ERROR,
            heartbeat = crate::heartbeat::l1_loop(),
            clock = L1_CLOCK_REPORT,
            sampler = l2_exits::sampler(),
            lockups = LOCKUP_REPORTER,
            record = if l2_exits::record_wanted() {
                "l2_trace_start\n"
            } else {
                ""
            },
            setup = setup_step(job),
            out_begin = markers::OUT_BEGIN,
            out_end = markers::OUT_END,
            err_begin = markers::ERR_BEGIN,
            err_end = markers::ERR_END,
            // The VMM runs in the background, watched: still running near
            // the job's time limit, L1's KVM exits of its vCPUs are
            // sampled (crate::l2_exits).
            run = match &job.companion {
                None => format!(
                    "{cmd} </dev/null 2>/tmp/vmm.err &\n\
                     vmm_pid=$!\n\
                     {watch}\
                     wait $vmm_pid\n\
                     st=$?\n\
                     kill $watch_pid 2>/dev/null"
                ),
                // The companion beside the VMM; a VMM still running 10 s
                // after the companion is done gets SIGTERM (a failed
                // companion must not leave the job waiting for its time
                // limit), and at 5 s its exits are sampled (a companion
                // that gave up on a stuck guest, say); then both outputs.
                Some(script) => format!(
                    "{env}\n\
                     {cmd} </dev/null >/tmp/vmm.out 2>/tmp/vmm.err &\n\
                     vmm_pid=$!\n\
                     export VMM_PID=$vmm_pid\n\
                     {watch}\
                     ( {script} ) >/tmp/companion.out 2>&1\n\
                     i=0\n\
                     while kill -0 $vmm_pid 2>/dev/null && [ $i -lt 100 ]; do \
                     sleep 0.1; i=$((i+1)); \
                     if [ $i = 50 ] && kill -0 $vmm_pid 2>/dev/null; then l2_exits; fi; done\n\
                     kill -TERM $vmm_pid 2>/dev/null\n\
                     wait $vmm_pid\n\
                     st=$?\n\
                     kill $watch_pid 2>/dev/null\n\
                     cat /tmp/vmm.out /tmp/companion.out",
                    env = companion_env(job),
                ),
            },
        )
    }
}

/// The job's set-up script ([`Job::setup`]) in L1, before the VMM: on
/// failure the test bed's error line with its output, and no VMM.
fn setup_step(job: &Job) -> String {
    match &job.setup {
        None => String::new(),
        Some(script) => format!(
            "if ! ( {script}\n ) >/tmp/setup.out 2>&1; then \
             echo \"{err} {failed} $(tr '\\n' ' ' </tmp/setup.out)\"; exit; fi\n",
            err = markers::ERROR,
            failed = SETUP_FAILED,
        ),
    }
}

/// How L1 reports a failed [`Job::setup`] on the test bed's error line.
pub const SETUP_FAILED: &str = "job setup failed:";

/// The companion's environment in L1 (see [`Job::companion`]).
fn companion_env(job: &Job) -> String {
    let mut env = String::from("export VMM=/bin/vmm TESTBED_LIVE=/dev/console");
    if job.qemu {
        env.push_str(&format!(
            " QEMU={} QEMU_DATA={}",
            crate::l1_qemu::L1_QEMU,
            crate::l1_qemu::L1_QEMU_DATA
        ));
    }
    env
}

/// The shared libraries `binary` needs, as `ldd` lists them.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, TestbedError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| TestbedError::Tool("ldd", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable".
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// Paths in `ldd` output: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6
/// (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)".
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TestbedError> {
    std::fs::read(path).map_err(|e| TestbedError::Read(path.to_owned(), e))
}

/// The whole L1 initramfs for `job`.
pub fn l1_initramfs(
    guest: &GuestFiles,
    vmm: &Path,
    job: &Job,
    interactive: bool,
) -> Result<Vec<u8>, TestbedError> {
    let mut extra: Vec<(String, Vec<u8>, u32)> = Vec::new();
    // tun (when the guest files have it) for the VMM's taps.
    // vhost-vsock (when the guest files have it) for vhost-vsock-pci,
    // vhost-net (and tap, which it needs) for virtio-net-pci with vhost=on.
    let kvm = [
        "irqbypass",
        "kvm",
        "kvm-amd",
        "kvm-intel",
        "tun",
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vhost_iotlb",
        "vhost",
        "vhost_vsock",
        "tap",
        "vhost_net",
    ];
    let virtio = crate::initramfs::VIRTIO_BLOCK_MODULES;
    let wanted: Vec<&str> = if job.l1_disks.is_empty() {
        kvm.to_vec()
    } else {
        kvm.iter().chain(virtio).copied().collect()
    };
    for m in wanted {
        let path = guest.module(m);
        if path.exists() {
            extra.push((format!("modules/{m}.ko"), read(&path)?, 0o644));
        }
    }
    extra.push(("bin/vmm".into(), read(vmm)?, 0o755));
    if crate::l1_pin::wanted() {
        extra.push((
            crate::l1_pin::PIN_KERNEL.into(),
            crate::l1_pin::pin_kernel(),
            0o644,
        ));
    }
    // The libraries of the VMM and of QEMU, each once.
    let mut libs = std::collections::BTreeSet::new();
    libs.extend(shared_libraries(vmm)?);
    if job.qemu {
        let qemu = crate::l1_qemu::HostQemu::find()?;
        libs.extend(shared_libraries(&qemu.binary)?);
        for (name, path) in qemu.l1_files()? {
            extra.push((name, read(&path)?, 0o755));
        }
    }
    for lib in libs {
        let name = lib.to_string_lossy().trim_start_matches('/').to_owned();
        extra.push((name, read(&lib)?, 0o755));
    }
    for (name, path) in &job.files {
        // Executables (a companion's tools) stay executable.
        use std::os::unix::fs::PermissionsExt;
        let host_mode = std::fs::metadata(path)
            .map_err(|e| TestbedError::Read(path.clone(), e))?
            .permissions()
            .mode();
        let mode = if host_mode & 0o111 != 0 { 0o755 } else { 0o644 };
        extra.push((format!("job/{name}"), read(path)?, mode));
    }
    extra.push((
        "job/run.sh".into(),
        job_script(job, interactive).into_bytes(),
        0o755,
    ));
    let busybox = read(&guest.busybox)?;
    Ok(busybox_initramfs(&busybox, &l1_init(), &extra)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn batch_script_quotes_args_and_marks_output() {
        let job = Job::new(["--kernel", "bzImage", "--append", "console=ttyS0 it's"]);
        let s = job_script(&job, false);
        assert!(s.contains("/bin/vmm '--kernel' 'bzImage' '--append' 'console=ttyS0 it'\\''s'"));
        assert!(s.contains(markers::OUT_BEGIN) && s.contains(markers::OUT_END));
        assert!(s.contains("</dev/null"));
        assert!(!s.contains("export VMM"), "no companion, no environment");
        let i = job_script(&job, true);
        assert!(!i.contains("</dev/null") && !i.contains(markers::OUT_BEGIN));
        // Interactive: no marker lines on the user's console; the status
        // leaves on ttyS3.
        assert!(!i.contains(markers::L1_READY), "{i}");
        // Batch: soft-lockup reports marked, the reporter ended after.
        assert!(LOCKUP_REPORTER.contains(markers::L1_DMESG));
        let reporter = s.find("lockup_pid=$!").expect(&s);
        assert!(reporter < s.find("/bin/vmm").unwrap(), "{s}");
        assert!(s.contains("kill $lockup_pid"), "{s}");
        // Batch: L1 records L2's exits from before the VMM starts, and
        // looks for a triple fault's while it runs and after it ended.
        if l2_exits::record_wanted() {
            let trace = s.find("l2_trace_start\n").expect(&s);
            assert!(trace < s.find("/bin/vmm").unwrap(), "{s}");
        }
        assert!(
            s.rfind("l2_resets\n").unwrap() > s.find("/bin/vmm").unwrap(),
            "{s}"
        );
        assert!(LOCKUP_REPORTER.contains("l2_resets;"));
        let parsed = Command::new("bash")
            .args(["-n", "-c", &s])
            .status()
            .unwrap();
        assert!(parsed.success(), "{s}");
        let up = i.find(L1_UP_INTERACTIVE).expect(&i);
        assert!(up < i.find("/bin/vmm").unwrap(), "{i}");
        // The beat on ttyS3 from the start, stopped before the status goes
        // there.
        let beat = i.find("printf . >&3").expect(&i);
        assert!(beat < up, "{i}");
        assert!(i.contains("exec 3>/dev/ttyS3"), "{i}");
        let stop = i.find("kill $watcher_pid $heartbeat_pid").expect(&i);
        assert!(stop < i.find("echo \" $st\" >/dev/ttyS3").expect(&i), "{i}");
        // Interactive: the watcher (lockups, TCG's fault) runs beside the
        // VMM and is ended after it; the script parses.
        let watcher = i.find("watcher_pid=$!").expect(&i);
        assert!(watcher < i.find("/bin/vmm").unwrap(), "{i}");
        assert!(i.contains("kill $watcher_pid"), "{i}");
        assert!(i.contains("l2_fault() {"), "{i}");
        let parsed = Command::new("bash")
            .args(["-n", "-c", &i])
            .status()
            .unwrap();
        assert!(parsed.success(), "{i}");
    }

    #[test]
    fn setup_runs_before_the_vmm() {
        let job = Job::new(["--version"]).setup("mount -t tmpfs -o size=1m t small");
        let s = job_script(&job, false);
        let setup = s.find("( mount -t tmpfs -o size=1m t small\n )").expect(&s);
        assert!(setup < s.find(markers::OUT_BEGIN).unwrap(), "{s}");
        assert!(
            s.contains(&format!("{} {SETUP_FAILED} ", markers::ERROR)),
            "{s}"
        );
        let i = job_script(&job, true);
        assert!(
            i.find("small").unwrap() < i.find("/bin/vmm").unwrap(),
            "{i}"
        );
        assert!(!job_script(&Job::new(["x"]), false).contains("setup"));
    }

    #[test]
    fn companion_environment() {
        let job = Job::new(["--version"]).companion("\"$VMM\" --help");
        let s = job_script(&job, false);
        assert!(
            s.contains("export VMM=/bin/vmm TESTBED_LIVE=/dev/console\n"),
            "{s}"
        );
        assert!(!s.contains("QEMU="));
        let s = job_script(&job.with_qemu(), false);
        assert!(
            s.contains(
                "export VMM=/bin/vmm TESTBED_LIVE=/dev/console QEMU=/qemu/bin/qemu-system-x86_64 \
                 QEMU_DATA=/qemu/share/qemu\n"
            ),
            "{s}"
        );
    }
}
