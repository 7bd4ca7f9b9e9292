//! virtio-rng-pci under Debian's kernel: its `virtio-rng` driver (loaded
//! from the test initramfs; the hw_random core is built in) finds the
//! device, makes it the current hardware RNG, and `/dev/hwrng` gives
//! bytes from the host's `getrandom`, no faster than the device's rate
//! limit allows. Nested in the test bed on PVM hosts; directly on hardware
//! KVM. The guest files must have `virtio-rng.ko` (`cargo xtask guest
//! --refresh` fetches it).

mod common;
mod linux_common;

use linux_common::{debian_job, guest, nested_retry, run, test_initrd};

/// The guest's modules, in load order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio-rng",
];

/// Bytes per window and the window (ms) the test's device allows.
const MAX_BYTES: u32 = 1024;
const PERIOD_MS: u32 = 1000;
/// Bytes read to time the limit: at least three more windows.
const TIMED: u32 = 4 * MAX_BYTES;

#[test]
fn debian_reads_the_hosts_random_bytes_through_virtio_rng() {
    let test = "debian_reads_the_hosts_random_bytes_through_virtio_rng";
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        for m in MODULES {
            assert!(
                g.module(m).exists(),
                "{test}: the guest files lack {m}.ko (cargo xtask guest --refresh)"
            );
        }
        let dir = common::TempDir::new(test);
        let script = format!(
            "for m in {modules}; do insmod /$m.ko; done\n\
             echo \"@@AVAILABLE $(cat /sys/class/misc/hw_random/rng_available)\"\n\
             echo \"@@CURRENT $(cat /sys/class/misc/hw_random/rng_current)\"\n\
             sum() {{ head -c 1024 $1 | md5sum | cut -d' ' -f1; }}\n\
             echo \"@@SUMS $(sum /dev/hwrng) $(sum /dev/hwrng) $(sum /dev/zero)\"\n\
             t0=$(cut -d' ' -f1 /proc/uptime)\n\
             n=$(head -c {TIMED} /dev/hwrng | wc -c)\n\
             t1=$(cut -d' ' -f1 /proc/uptime)\n\
             echo \"@@TIMED $n $t0 $t1\"\n\
             poweroff -f",
            modules = MODULES.join(" ")
        );
        let initrd = test_initrd(&g, &dir, &script, MODULES, false);
        let device = format!("virtio-rng-pci,max-bytes={MAX_BYTES},period={PERIOD_MS}");
        let job = debian_job(
            &g,
            &initrd,
            ["--cpus", "1", "--memory", "256M", "--device", &device],
        )
        .timeout(std::time::Duration::from_secs(300));
        let out = run(test, &g, &job);
        let c = &out.console;
        assert_eq!(
            out.status,
            Some(0),
            "{test}: vmm stderr:\n{}\n{c}",
            out.stderr
        );
        let line = |tag: &str| -> Vec<String> {
            c.lines()
                .find_map(|l| l.trim().strip_prefix(tag))
                .unwrap_or_else(|| panic!("{test}: no {tag} line:\n{c}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert!(
            line("@@AVAILABLE").contains(&"virtio_rng.0".to_owned()),
            "{test}:\n{c}"
        );
        assert_eq!(line("@@CURRENT"), ["virtio_rng.0"], "{test}:\n{c}");
        let sums = line("@@SUMS");
        assert_eq!(sums.len(), 3, "{test}:\n{c}");
        assert_ne!(sums[0], sums[1], "{test}: two reads gave the same bytes");
        assert_ne!(sums[0], sums[2], "{test}: zeros from /dev/hwrng");
        let timed = line("@@TIMED");
        let n: u32 = timed[0].parse().unwrap();
        let (t0, t1): (f64, f64) = (timed[1].parse().unwrap(), timed[2].parse().unwrap());
        assert_eq!(n, TIMED, "{test}: a short read:\n{c}");
        // The limit: no more than MAX_BYTES per PERIOD_MS, so reading four
        // windows' worth spans at least three window ends (the guest's
        // clock; the guest reads from hwrng in the background too, which
        // only makes it slower).
        let seconds = t1 - t0;
        eprintln!("{test}: {TIMED} bytes in {seconds:.2} s of guest time");
        assert!(
            seconds >= 3.0 * f64::from(PERIOD_MS) / 1000.0 - 0.1,
            "{test}: {TIMED} bytes in {seconds:.2} s: faster than the limit"
        );
    });
}
