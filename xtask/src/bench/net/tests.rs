use std::fmt::Write as _;

use super::console::*;
use super::*;

fn label(vmm: Vmm, cpus: u32, run: usize) -> Label {
    Label { vmm, cpus, run }
}

#[test]
fn row_lines() {
    let r = parse_row_line(
        "@@NET vmm=qemu cpus=2 run=1 row=tx bytes=536870912 trans=0 us=4000000 cpu_ms=3000.0 guest_ms=1000.0 vcpu_ms=2500.0 helpers=1 other_ms=25\r",
    )
    .unwrap();
    assert_eq!(
        r,
        RowLine {
            label: label(Vmm::Qemu, 2, 1),
            kind: Kind::Tx,
            bytes: 512 << 20,
            trans: 0,
            us: 4e6,
            cpu_ms: Some(3000.0),
            guest_ms: Some(1000.0),
            vcpu_ms: Some(2500.0),
            helpers: 1,
            other_ms: 25.0,
        }
    );
    // 512 MiB in 4 s; 3 s of CPU over half a GiB, 2 s outside guest mode.
    assert_eq!(r.rate(), 128.0);
    assert_eq!(r.cpu_per_gib_s(), Some(6.0));
    assert_eq!(r.vmm_cpu_per_gib_s(), Some(4.0));
    // Its vCPU threads used 2.5 s: 0.5 s was the data path's.
    assert_eq!(r.data_path_cpu_per_gib_s(), Some(1.0));

    let rr = parse_row_line(
        "  @@NET vmm=ours cpus=1 run=0 row=rr bytes=0 trans=5000 us=2000000 cpu_ms=-1.0 guest_ms=-1.0 vcpu_ms=-1.0 helpers=0 other_ms=0",
    )
    .unwrap();
    assert_eq!((rr.kind, rr.rate(), rr.cpu_ms), (Kind::Rr, 2500.0, None));
    assert_eq!((rr.cpu_per_gib_s(), rr.vmm_cpu_per_gib_s()), (None, None));
    assert_eq!((rr.vcpu_ms, rr.data_path_cpu_per_gib_s()), (None, None));
    // Request/response has no bytes to divide by, even with CPU read.
    let rr = parse_row_line(
        "@@NET vmm=ours cpus=1 run=0 row=rr bytes=0 trans=5000 us=2000000 cpu_ms=10 guest_ms=5 vcpu_ms=8 helpers=0 other_ms=0",
    )
    .unwrap();
    assert_eq!(rr.cpu_per_gib_s(), None);
    // More CPU in guest mode than in all (tick rounding): not below 0.
    let x = parse_row_line(
        "@@NET vmm=qemu-vhost cpus=1 run=2 row=rx bytes=1073741824 trans=0 us=1 cpu_ms=10 guest_ms=20 vcpu_ms=30 helpers=0 other_ms=0",
    )
    .unwrap();
    assert_eq!(
        (
            x.label.vmm,
            x.vmm_cpu_per_gib_s(),
            x.data_path_cpu_per_gib_s()
        ),
        (Vmm::QemuVhost, Some(0.0), Some(0.0))
    );

    for bad in [
        // Kernel messages share L1's console: the marker must start the line.
        "noise @@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=xen cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=udp bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=0 trans=7 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=rr bytes=7 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=0 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=nan cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=x run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0 junk",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=-1",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=-1",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=nan",
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms",
        // Without the vCPU threads' time (a net_load older than the parser).
        "@@NET vmm=ours cpus=1 run=0 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 helpers=0 other_ms=0",
        "@@NETRUN vmm=ours cpus=1 run=0 status=0 done=1 errors=0",
    ] {
        assert_eq!(parse_row_line(bad), None, "{bad}");
    }
}

#[test]
fn run_lines() {
    let r = parse_run_line("@@NETRUN vmm=qemu cpus=1 run=2 status=0 done=1 errors=0").unwrap();
    assert_eq!(r.label, label(Vmm::Qemu, 1, 2));
    assert!(r.ok());
    for bad in [
        "@@NETRUN vmm=ours cpus=1 run=0 status=timeout done=0 errors=0",
        "@@NETRUN vmm=ours cpus=1 run=0 status=0 done=0 errors=0",
        "@@NETRUN vmm=ours cpus=1 run=0 status=0 done=1 errors=1",
        "@@NETRUN vmm=ours cpus=1 run=0 status=signal-9 done=1 errors=0",
    ] {
        assert!(!parse_run_line(bad).unwrap().ok(), "{bad}");
    }
    for broken in [
        "@@NETRUN vmm=ours cpus=1 run=0 done=1 errors=0",
        "@@NETRUN vmm=ours cpus=1 run=0 status=0 errors=0",
        "@@NETRUN vmm=ours cpus=1 run=0 status=0 done=1",
        "@@NETRUN vmm=ours run=0 status=0 done=1 errors=0",
    ] {
        assert_eq!(parse_run_line(broken), None, "{broken}");
    }
}

/// The lines `net_load host` prints for a boot: `mib` MiB per second on
/// each stream, `mib` * 100 pairs per second, 1 s per row, 1 s of CPU of
/// which half in guest mode and three quarters on the vCPU threads per
/// row.
fn boot_output(l: &str, ok: bool, mib: u64) -> String {
    let mut out = String::new();
    for k in KINDS {
        let (bytes, trans) = if k.is_stream() {
            (mib << 20, 0)
        } else {
            (0, mib * 100)
        };
        let _ = writeln!(
            out,
            "@@NET {l} row={} bytes={bytes} trans={trans} us=1000000 cpu_ms=1000.0 guest_ms=500.0 vcpu_ms=750.0 helpers=0 other_ms=0",
            k.key()
        );
    }
    if ok {
        let _ = writeln!(out, "@@NETRUN {l} status=0 done=1 errors=0");
    } else {
        let _ = writeln!(
            out,
            "@@NET-ERROR {l} rx: sent 10, the guest counted 9\n\
             @@NETRUN {l} status=0 done=1 errors=1\n@@LOG-BEGIN\nend of the log\n@@LOG-END"
        );
    }
    out
}

#[test]
fn a_console_keeps_the_good_boots_and_counts_the_failed() {
    let mut console = String::from("[    1.0] kvm: Nested Virtualization enabled\n@@NETVHOST no\n");
    console += &boot_output("vmm=ours cpus=1 run=0", false, 5);
    console += &boot_output("vmm=ours cpus=1 run=1", true, 64);
    console += "[   12.5] kvm: some message\n@@NET vmm=ours cpus=1 run=2 row=t";
    console += "\n";
    console += &boot_output("vmm=qemu cpus=1 run=0", true, 128);
    // A boot that never ended (L1 died): neither good nor failed.
    console +=
        "@@NET vmm=qemu cpus=1 run=1 row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 vcpu_ms=0 helpers=0 other_ms=0\n";
    let p = parse_console(&console);
    assert_eq!(p.vhost, Some(false));
    assert_eq!(p.good.len(), 2 * KINDS.len(), "{:?}", p.good);
    assert!(p
        .good
        .iter()
        .filter(|r| r.label.vmm == Vmm::Ours)
        .all(|r| r.label.run == 1));
    assert_eq!(
        p.ended,
        [
            label(Vmm::Ours, 1, 0),
            label(Vmm::Ours, 1, 1),
            label(Vmm::Qemu, 1, 0)
        ]
    );
    assert_eq!(p.failures.len(), 1);
    let f = &p.failures[0];
    assert_eq!(f.label, label(Vmm::Ours, 1, 0));
    assert_eq!(
        f.what,
        "ours vhost=off, 1 vCPU, run 0: status 0, rx: sent 10, the guest counted 9 (rows L1 \
         measured: tx, rx, rr)"
    );
    assert_eq!(f.log, "end of the log");
    assert_eq!(parse_console("@@NETVHOST yes\n").vhost, Some(true));
    assert_eq!(parse_console("").vhost, None);
    assert_eq!(
        parse_console("@@NETVHOSTVSOCK yes\n").vhost_vsock,
        Some(true)
    );
    assert_eq!(
        parse_console("@@NETVHOSTVSOCK no\n").vhost_vsock,
        Some(false)
    );

    // The report: ours (64 MiB/s) beside QEMU vhost=off (128 MiB/s).
    let s = section(&p.good, 1, Sizes::new(true), vec!["session 1: ok".into()]);
    assert_eq!(s.rows.len(), 9);
    let md = super::super::report::section_markdown(&s);
    for row in [
        "| 1 vCPU: TCP stream guest → L1 (ours vhost=off vs QEMU vhost=off) | MiB/s | **64.0** | 128 | 0.50x | ≥ 1x QEMU **missed** |",
        // 1 s of CPU per 64 MiB = 16 s/GiB; per 128 MiB = 8 s/GiB.
        "| 1 vCPU: host CPU per GiB, TCP stream L1 → guest (ours vhost=off vs QEMU vhost=off) | s/GiB | **16.0** | 8.00 | 2.00x | ≤ 1x QEMU **missed** |",
        "| 1 vCPU: host CPU per GiB outside guest mode, TCP stream guest → L1 (ours vhost=off vs QEMU vhost=off) | s/GiB | **8.00** | 4.00 | 2.00x | ≤ 1x QEMU **missed** |",
        // A quarter of each second's CPU outside the vCPU threads.
        "| 1 vCPU: host CPU per GiB outside the vCPU threads, TCP stream guest → L1 (ours vhost=off vs QEMU vhost=off) | s/GiB | **4.00** | 2.00 | 2.00x | ≤ 1x QEMU **missed** |",
        "| 1 vCPU: TCP request/response, 1 byte (ours vhost=off vs QEMU vhost=off) | trans/s | **6400** | 12800 | 0.50x | ≥ 1x QEMU **missed** |",
    ] {
        assert!(md.contains(row), "{row}\n{md}");
    }
    assert!(md.contains("- session 1: ok"), "{md}");
}

#[test]
fn medians_over_runs_and_vhost_and_vsock_rows() {
    let mut console = String::from("@@NETVHOST yes\n");
    for (run, mib) in [(0, 10), (1, 30), (2, 20)] {
        console += &boot_output(&format!("vmm=ours cpus=2 run={run}"), true, mib);
        console += &boot_output(&format!("vmm=ours-vhost cpus=2 run={run}"), true, mib * 2);
        console += &boot_output(&format!("vmm=qemu cpus=2 run={run}"), true, 40);
        console += &boot_output(&format!("vmm=qemu-vhost cpus=2 run={run}"), true, 80);
        console += &boot_output(&format!("vmm=vsock-ours cpus=2 run={run}"), true, 5);
        console += &boot_output(&format!("vmm=vsock-qemu cpus=2 run={run}"), true, 50);
    }
    let p = parse_console(&console);
    let s = section(&p.good, 3, Sizes::new(false), Vec::new());
    // No 1-vCPU boots: only the 2-vCPU rows: ours against each QEMU, our
    // uds vsock against QEMU's vhost-vsock, and our vhost-vsock (no boot
    // of it) too, since QEMU's ran.
    assert_eq!(s.rows.len(), 4 * 9);
    let md = super::super::report::section_markdown(&s);
    for row in [
        "| 2 vCPUs: TCP stream L1 → guest (ours vhost=off vs QEMU vhost=off) | MiB/s | **20.0 (10.0–30.0)** | 40.0 (40.0–40.0) | 0.50x |",
        "| 2 vCPUs: TCP stream L1 → guest (ours vhost=on vs QEMU vhost=on) | MiB/s | **40.0 (20.0–60.0)** | 80.0 (80.0–80.0) | 0.50x |",
        "| 2 vCPUs: vsock stream guest → L1 (ours virtio-vsock-pci uds vs QEMU vhost-vsock-pci) | MiB/s | **5.00 (5.00–5.00)** | 50.0 (50.0–50.0) | 0.10x |",
        "| 2 vCPUs: vsock request/response, 1 byte (ours vhost-vsock-pci vs QEMU vhost-vsock-pci) | trans/s |",
    ] {
        assert!(md.contains(row), "{row}\n{md}");
    }
    assert!(!md.contains("1 vCPU:"), "{md}");
    assert!(!md.contains("not measured"), "{md}");
}

#[test]
fn why_vhost_is_missing() {
    assert_eq!(vhost_note(Some(true), &[]), None);
    let none = vhost_note(Some(false), &[]).unwrap();
    assert!(
        none.starts_with("vhost=on (ours and QEMU's): not measured: L1 has no /dev/vhost-net: ")
            && none.contains("vhost_iotlb, vhost, tap, vhost_net"),
        "{none}"
    );
    assert_eq!(
        vhost_note(Some(false), &["vhost", "vhost_net"]).unwrap(),
        "vhost=on (ours and QEMU's): not measured: L1 has no /dev/vhost-net, even after loading \
         vhost, vhost_net from the guest files."
    );
    assert!(vhost_note(None, &[]).unwrap().contains("never said"));
}

#[test]
fn bench_net_vmms_picks_some() {
    assert_eq!(only_vmms(None).unwrap(), []);
    assert_eq!(only_vmms(Some("")).unwrap(), []);
    let only = only_vmms(Some("vsock-ours, vsock-qemu")).unwrap();
    assert_eq!(only, [Vmm::VsockOurs, Vmm::VsockQemu]);
    let p = plan(2, &[1, 2], &only);
    assert_eq!(p.len(), 2 * 2 * 2);
    assert!(p.iter().all(|b| only.contains(&b.vmm)));
    let e = only_vmms(Some("vsock,qemu")).unwrap_err().to_string();
    assert!(
        e.contains("no VMM `vsock`") && e.contains("vsock-ours-vhost"),
        "{e}"
    );
}

#[test]
fn plan_rotates_and_the_script_runs_it() {
    let n = VMMS.len();
    let p = plan(3, &[1, 2], &[]);
    assert_eq!(p.len(), 3 * 2 * n);
    let firsts: Vec<Vmm> = p.chunks(n).take(3).map(|c| c[0].vmm).collect();
    assert_eq!(firsts, VMMS[..3]);
    for (i, round) in p.chunks(n).enumerate() {
        assert!(round
            .iter()
            .all(|b| b.run == i % 3 && b.cpus == [1, 2][i / 3]));
        for v in VMMS {
            assert!(round.iter().any(|b| b.vmm == v));
        }
    }
    let s = script(&p[..n]);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 3 + n, "{s}");
    assert!(lines[0].contains("insmod $m.ko") && lines[0].contains("vhost_net"));
    assert!(lines[1].contains("@@NETVHOST yes") && lines[1].contains("@@NETVHOST no"));
    assert!(
        lines[2].contains("@@NETVHOSTVSOCK yes") && lines[2].contains("[ -e /dev/vhost-vsock ]")
    );
    let boot = |key: &str| {
        let tag = format!("\"vmm={key} cpus=1 run=0\"");
        *lines
            .iter()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no {key}\n{s}"))
    };
    let ours = boot("ours");
    assert!(ours.starts_with(
        "./net_load host \"vmm=ours cpus=1 run=0\" 150 /tmp/l2.log 7777 tap0 10.0.2.1/24 \"$VMM\" "
    ));
    assert!(ours.contains("--cpus 1 ") && ours.contains("--initrd initrd "));
    assert!(
        ours.contains("--netdev tap,id=n0,ifname=tap0,vhost=off --device virtio-net-pci,netdev=n0")
    );
    let qemu = boot("qemu");
    assert!(qemu.contains("-M microvm,pcie=on") && qemu.contains("-smp 1 "));
    assert!(qemu.contains(
        "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off -device virtio-net-pci,netdev=n0,romfile="
    ));
    // vhost=on only when L1 has /dev/vhost-net, ours and QEMU's.
    for key in ["qemu-vhost", "ours-vhost"] {
        let l = boot(key);
        assert!(
            l.starts_with(&format!(
                "if [ -e /dev/vhost-net ]; then ./net_load host \"vmm={key} "
            )),
            "{l}"
        );
        assert!(l.contains(",vhost=on "), "{l}");
    }
    // vsock: our uds device (its socket removed first), vhost-vsock-pci
    // only with /dev/vhost-vsock, all on the vsock initramfs.
    let uds = boot("vsock-ours");
    assert!(uds.starts_with(
        "rm -f /tmp/vsock.sock; ./net_load host \"vmm=vsock-ours cpus=1 run=0\" 150 /tmp/l2.log unix:/tmp/vsock.sock_7777 - - \"$VMM\" "
    ), "{uds}");
    assert!(uds.contains("--device virtio-vsock-pci,guest-cid=3,uds=/tmp/vsock.sock"));
    for key in ["vsock-ours-vhost", "vsock-qemu"] {
        let l = boot(key);
        assert!(
            l.starts_with("if [ -e /dev/vhost-vsock ]; then ./net_load host ")
                && l.contains(" vsock:7777 - - ")
                && l.contains("vhost-vsock-pci,guest-cid=3"),
            "{l}"
        );
    }
    for key in ["vsock-ours", "vsock-ours-vhost", "vsock-qemu"] {
        assert!(boot(key).contains(" initrd-vsock "), "{key}");
    }
    for l in &lines[3..] {
        assert!(l.contains(">>\"$TESTBED_LIVE\""), "{l}");
    }
    assert!(Vmm::Ours.command(2).contains("--cpus 2 "));
}

#[test]
fn the_guest_runs_the_client() {
    let init = init_script(5, false);
    assert!(
        init.contains("ip addr add 10.0.2.15/24 dev eth0\n"),
        "{init}"
    );
    assert!(
        init.contains("/net_load client 10.0.2.1 7777 5\n"),
        "{init}"
    );
    assert!(
        init.contains("virtio_pci failover net_failover virtio_net;"),
        "{init}"
    );
    assert!(
        init.ends_with("echo \"@@NET-EXIT $?\"\nsleep 1\nreboot -f\n"),
        "{init}"
    );
    let vsock = init_script(5, true);
    assert!(
        vsock.contains("/net_load client vsock:2 7777 5\n"),
        "{vsock}"
    );
    assert!(
        vsock.contains("vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport;"),
        "{vsock}"
    );
    assert!(!vsock.contains("eth0"), "{vsock}");
    assert_eq!(Sizes::new(true).cpus, &[1]);
    assert_eq!(Sizes::new(false).cpus, &[1, 2]);
}

#[test]
fn the_vhost_workers_counted_are_named_per_vmm() {
    let line = |vmm: &str, run: usize, helpers: u32| {
        parse_row_line(&format!(
            "@@NET vmm={vmm} cpus=1 run={run} row=tx bytes=1 trans=0 us=1 cpu_ms=1 guest_ms=0 \
             vcpu_ms=0 helpers={helpers} other_ms=0"
        ))
        .unwrap()
    };
    let rows = [
        line("vsock-ours", 0, 0),
        line("vsock-qemu", 0, 1),
        line("vsock-ours", 1, 0),
        line("vsock-qemu", 1, 0),
    ];
    let note = helpers_note(&rows);
    assert!(
        note.starts_with("Kernel vhost workers counted per row: "),
        "{note}"
    );
    assert!(
        note.contains(&format!("{} 0,", Vmm::VsockOurs.name())),
        "{note}"
    );
    assert!(
        note.ends_with(&format!("{} 0-1.", Vmm::VsockQemu.name())),
        "{note}"
    );
    assert_eq!(
        helpers_note(&[]),
        "Kernel vhost workers counted per row: no rows."
    );
}

#[test]
fn the_other_work_in_l1_is_summed_up_with_its_worst_row() {
    let line = |vmm: &str, row: &str, other: u32| {
        parse_row_line(&format!(
            "@@NET vmm={vmm} cpus=2 run=0 row={row} bytes=1 trans=1 us=5000000 cpu_ms=1 \
             guest_ms=0 vcpu_ms=0 helpers=0 other_ms={other}"
        ))
        .unwrap()
    };
    let rows = [
        line("vsock-ours", "tx", 10),
        line("vsock-qemu", "rx", 4000),
        line("vsock-ours", "rr", 30),
    ];
    let note = others_note(&rows);
    assert!(
        note.contains("median 30 ms a row, the most 4000 ms"),
        "{note}"
    );
    assert!(note.contains(Vmm::VsockQemu.name()), "{note}");
    assert!(note.ends_with(": 80% of one CPU over the row)."), "{note}");
    assert_eq!(
        others_note(&[]),
        "Other work in L1 during the rows: no rows."
    );
}
