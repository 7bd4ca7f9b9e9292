//! A socket device under Debian's kernel: virtio-vsock-pci on a Unix
//! socket, with the guest's own vsock core and virtio transport (loaded
//! from the test initramfs), both ways, through Firecracker's protocol.
//! Nested here (the Unix sockets live in L1, beside the VMM); directly
//! on hardware KVM too. The same on `vhost-vsock-pci` (nested only), and
//! a machine with one saved to a file and loaded in a new VMM.

mod common;
mod linux_common;

use linux_common::{
    build_static, debian_job, guest, nested_only, nested_retry, run, test_initrd_with,
};

/// The guest's drivers, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// How many bytes go each way, echoed back and compared byte for byte.
const BYTES: usize = 1 << 20;

/// The guest (CID 3) runs an echo server on vsock port 1234; a host
/// program beside the VMM connects through the device's socket with
/// `CONNECT 1234`, gets `OK <port>`, sends 1 MiB and checks the echo.
/// The other way, a host program listens on `PATH_5678` and echoes; the
/// guest connects to CID 2 port 5678, sends 1 MiB and checks the echo.
/// The guest also reads its CID from the driver, and the socket is gone
/// once the VMM has ended.
#[test]
fn debian_talks_to_the_host_over_vsock_both_ways() {
    let test = "debian_talks_to_the_host_over_vsock_both_ways";
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        for m in MODULES {
            assert!(
                g.module(m).exists(),
                "{test}: no {m}.ko in the guest files (cargo xtask guest refreshes them)"
            );
        }
        let dir = common::TempDir::new(test);
        let probe = build_static(&dir, "vsockprobe");
        let script = format!(
            "for m in {modules}; do insmod /$m.ko; done\n\
             /vsockprobe echo-server 1234 &\n\
             server=$!\n\
             /vsockprobe vsock-client 2 5678 {BYTES}\n\
             wait $server\n\
             echo @@DONE\n\
             poweroff -f",
            modules = MODULES.join(" "),
        );
        let initrd = test_initrd_with(&g, &dir, &script, MODULES, &[("vsockprobe", &probe)]);
        // The VMM's socket (made by the VMM) and the host program's
        // listener for guest port 5678's connections, in L1's /tmp.
        let companion = format!(
            "cd /job\n\
             ./vsockprobe uds-echo /tmp/v.sock_5678 >/tmp/uds-echo.out 2>&1 &\n\
             echo_pid=$!\n\
             i=0; while [ ! -S /tmp/v.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             [ -S /tmp/v.sock ] && echo @@SOCKET_MADE\n\
             ./vsockprobe uds-client /tmp/v.sock 1234 {BYTES}\n\
             wait $echo_pid\n\
             cat /tmp/uds-echo.out\n\
             i=0; while kill -0 $VMM_PID 2>/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done\n\
             [ -e /tmp/v.sock ] || echo @@SOCKET_REMOVED"
        );
        let job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "256M",
                "--device",
                "virtio-vsock-pci,guest-cid=3,uds=/tmp/v.sock",
            ],
        )
        .file("vsockprobe", &probe)
        .companion(&companion)
        .timeout(std::time::Duration::from_secs(420));
        let out = run(test, &g, &job);
        let c = &out.console;
        for l in c.lines().filter(|l| l.trim_start().starts_with("@@")) {
            eprintln!("{test}: {}", l.trim());
        }
        assert!(
            c.contains("@@DONE"),
            "{test}: no @@DONE\n{c}\nstderr:\n{}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{test}: {}", out.stderr);
        assert!(c.contains("@@SOCKET_MADE"), "{test}: the VMM's socket\n{c}");
        assert!(
            c.contains("@@SERVER_LISTENING 1234"),
            "{test}: guest server\n{c}"
        );
        let host_ok = format!("@@HOST_ECHO_OK {BYTES}");
        assert!(c.contains(&host_ok), "{test}: host to guest echo\n{c}");
        assert!(
            c.contains(&format!("@@SERVER_ECHOED 1234 {BYTES}")),
            "{test}: the guest's server saw every byte\n{c}"
        );
        let guest_ok = format!("@@GUEST_ECHO_OK {BYTES}");
        assert!(c.contains(&guest_ok), "{test}: guest to host echo\n{c}");
        assert!(
            c.contains(&format!("@@UDS_ECHOED {BYTES}")),
            "{test}: the host's listener saw every byte\n{c}"
        );
        // The host port the device picked is from 2^30 up.
        let port: u64 = c
            .lines()
            .find_map(|l| l.trim().strip_prefix("@@HOST_CONNECTED OK "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{test}: no OK line\n{c}"));
        assert!(port >= 1 << 30, "{test}: host port {port}");
        assert!(
            c.contains("@@SOCKET_REMOVED"),
            "{test}: socket left at exit\n{c}"
        );
        assert!(!c.contains("_BAD"), "{test}: a probe failed\n{c}");
    });
}

/// The same exchange on `vhost-vsock-pci`: the host kernel's vhost-vsock
/// moves the packets, and the host side is L1's own AF_VSOCK sockets: a
/// program in L1 connects to CID 3 port 1234, and L1 listens on port 5678
/// for the guest's connection to CID 2. Nested only: L1 has
/// `/dev/vhost-vsock` (this host has none, and on another host CID 3
/// might be taken).
#[test]
fn debian_talks_to_l1_over_vhost_vsock() {
    let test = "debian_talks_to_l1_over_vhost_vsock";
    if !nested_only(test, "it needs L1's /dev/vhost-vsock") {
        return;
    }
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        for m in MODULES
            .iter()
            .chain(&["vhost_iotlb", "vhost", "vhost_vsock"])
        {
            assert!(
                g.module(m).exists(),
                "{test}: no {m}.ko in the guest files (cargo xtask guest refreshes them)"
            );
        }
        let dir = common::TempDir::new(test);
        let probe = build_static(&dir, "vsockprobe");
        let script = format!(
            "for m in {modules}; do insmod /$m.ko; done\n\
             /vsockprobe echo-server 1234 &\n\
             server=$!\n\
             /vsockprobe vsock-client 2 5678 {BYTES}\n\
             wait $server\n\
             echo @@DONE\n\
             poweroff -f",
            modules = MODULES.join(" "),
        );
        let initrd = test_initrd_with(&g, &dir, &script, MODULES, &[("vsockprobe", &probe)]);
        let companion = format!(
            "cd /job\n\
             [ -c /dev/vhost-vsock ] && echo @@L1_VHOST_VSOCK\n\
             ./vsockprobe echo-server 5678 >/tmp/l1-echo.out 2>&1 &\n\
             echo_pid=$!\n\
             ./vsockprobe vsock-client 3 1234 {BYTES}\n\
             wait $echo_pid\n\
             cat /tmp/l1-echo.out\n\
             i=0; while kill -0 $VMM_PID 2>/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done"
        );
        let job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "256M",
                "--device",
                "vhost-vsock-pci,guest-cid=3",
            ],
        )
        .file("vsockprobe", &probe)
        .companion(&companion)
        .timeout(std::time::Duration::from_secs(420));
        let out = run(test, &g, &job);
        let c = &out.console;
        for l in c.lines().filter(|l| l.trim_start().starts_with("@@")) {
            eprintln!("{test}: {}", l.trim());
        }
        assert!(
            c.contains("@@L1_VHOST_VSOCK"),
            "{test}: L1 has no /dev/vhost-vsock\n{c}"
        );
        assert!(
            c.contains("@@DONE"),
            "{test}: no @@DONE\n{c}\nstderr:\n{}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{test}: {}", out.stderr);
        for want in [
            format!("@@HOST_ECHO_OK {BYTES}"),
            format!("@@SERVER_ECHOED 1234 {BYTES}"),
            format!("@@GUEST_ECHO_OK {BYTES}"),
            format!("@@SERVER_ECHOED 5678 {BYTES}"),
        ] {
            assert!(c.contains(&want), "{test}: no {want}\n{c}");
        }
        assert!(!c.contains("_BAD"), "{test}: a probe failed\n{c}");
    });
}

/// A machine with a `vhost-vsock-pci` goes to a file and comes back in a
/// new VMM: the guest's echo server (restarted after each connection)
/// answers L1 before the save, and again after the load (the driver got
/// a transport reset and dropped the connections the new VMM's kernel
/// device never had; its listener stays). The destination also saves
/// itself while it runs (`snapshot-save`: the kernel's device stops and
/// starts again, its connections kept) and answers a third time. A live
/// migration of the source is refused first, with the reason.
#[test]
fn debian_on_vhost_vsock_goes_to_a_file_and_answers_in_a_new_vmm() {
    let test = "debian_on_vhost_vsock_goes_to_a_file_and_answers_in_a_new_vmm";
    if !nested_only(test, "it needs L1's /dev/vhost-vsock") {
        return;
    }
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new(test);
        let probe = build_static(&dir, "vsockprobe");
        let client = build_static(&dir, "qmpclient");
        let script = format!(
            "for m in {modules}; do insmod /$m.ko; done\n\
             (while :; do /vsockprobe echo-server 1234; done) &\n\
             sleep 1; echo @@READY\n\
             i=0; while :; do i=$((i+1)); echo \"@@TICK $i\"; sleep 1; done",
            modules = MODULES.join(" "),
        );
        let initrd = test_initrd_with(&g, &dir, &script, MODULES, &[("vsockprobe", &probe)]);
        let save = "{\"execute\":\"snapshot-save\",\"arguments\":{\"job-id\":\"s\",\"tag\":\"t\",\"vmstate\":\"v\",\"devices\":[]}}";
        // An exchange: L1 connects to the guest's port 1234, tried again
        // while the guest's driver and server come back.
        let exchange = |tag: &str| {
            format!(
                "n=0; until ./vsockprobe vsock-client 3 1234 {BYTES} > x.out 2>&1; do n=$((n+1)); [ $n -lt 30 ] || break; sleep 1; done\n\
                 grep -q '@@HOST_ECHO_OK {BYTES}' x.out && echo @@{tag}_OK; cat x.out"
            )
        };
        let companion = format!(
            "cd /job\n\
             i=0; while ! grep -q @@READY console.log 2>/dev/null; do sleep 0.5; i=$((i+1)); [ $i -lt 600 ] || break; done\n\
             {before}\n\
             ./qmpclient qmp.sock '{{\"execute\":\"migrate\",\"arguments\":{{\"uri\":\"unix:/tmp/nobody.sock\"}}}}' > live.qmp 2>&1\n\
             echo @@LIVE; cat live.qmp\n\
             ./qmpclient qmp.sock '{{\"execute\":\"migrate\",\"arguments\":{{\"uri\":\"file:/tmp/vm.snap\"}}}}' query-migrate quit > src.qmp 2>&1\n\
             echo \"@@SRCQMPEXIT $?\"\n\
             i=0; while kill -0 $VMM_PID 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
             $VMM --kernel kernel --initrd initrd --memory 256M --device vhost-vsock-pci,guest-cid=3 \
               --serial file:dst.log --qmp dst.sock --incoming file:/tmp/vm.snap 2>dst.err &\n\
             dst=$!\n\
             {after}\n\
             ./qmpclient dst.sock '{save}' query-jobs > dst.qmp 2>&1; echo \"@@DSTSAVE $?\"\n\
             {saved}\n\
             ./qmpclient dst.sock quit >> dst.qmp 2>&1\n\
             wait $dst; echo \"@@DSTEXIT $?\"\n\
             echo @@QMP; cat src.qmp dst.qmp; echo @@DSTERR; cat dst.err; echo @@DSTLOG; tail -3 dst.log; echo @@END",
            before = exchange("BEFORE"),
            after = exchange("AFTER_LOAD"),
            saved = exchange("AFTER_SAVE"),
        );
        let job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "256M",
                "--device",
                "vhost-vsock-pci,guest-cid=3",
                "--qmp",
                "qmp.sock",
                "--serial",
                "file:console.log",
            ],
        )
        .file("vsockprobe", &probe)
        .file("qmpclient", &client)
        .companion(&companion)
        .timeout(std::time::Duration::from_secs(420));
        let out = run(test, &g, &job);
        let c = &out.console;
        let report = format!("{c}\nvmm stderr:\n{}", out.stderr);
        assert!(
            c.contains("@@END"),
            "{test}: the companion did not finish\n{report}"
        );
        assert_eq!(out.status, Some(0), "{test}: the source's exit\n{report}");
        for want in [
            "@@BEFORE_OK",
            "@@SRCQMPEXIT 0",
            "@@AFTER_LOAD_OK",
            "@@DSTSAVE 0",
            "@@AFTER_SAVE_OK",
            "@@DSTEXIT 0",
        ] {
            assert!(c.contains(want), "{test}: no {want}\n{report}");
        }
        // A live migration is refused, with the reason, before anything.
        let live = &c[c.find("@@LIVE").unwrap_or(0)..c.find("@@SRCQMPEXIT").unwrap_or(c.len())];
        assert!(
            live.contains("vhost-vsock does not log the guest memory it writes"),
            "{test}: the live migration's refusal\n{report}"
        );
        let qmp = &c[c.find("@@QMP\n").unwrap_or(0)..c.find("@@DSTERR").unwrap_or(c.len())];
        assert!(
            !qmp.contains("\"error\""),
            "{test}: a command failed\n{report}"
        );
        assert!(qmp.contains("\"completed\""), "{test}: the save\n{report}");
    });
}
