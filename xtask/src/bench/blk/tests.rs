use super::*;

fn label(vmm: Vmm, run: usize, attempt: u32) -> Label {
    Label { vmm, run, attempt }
}

#[test]
fn row_lines() {
    let r = parse_row_line(
        "@@BLK vmm=qemu-io_uring run=2 try=1 row=seqread ios=64 bytes=67108864 us=2000000 cpu_ms=120.0 guest_ms=100.0\r",
    )
    .unwrap();
    assert_eq!(
        r,
        RowLine {
            label: label(Vmm::QemuIoUring, 2, 1),
            kind: Kind::SeqRead,
            ios: 64,
            bytes: 64 << 20,
            us: 2e6,
            cpu_ms: Some(120.0),
            guest_ms: Some(100.0),
        }
    );
    assert_eq!(r.rate(), 32.0);
    assert_eq!(r.cpu_per_io_us(), Some(120.0 * 1e3 / 64.0));
    assert_eq!(r.vmm_cpu_per_io_us(), Some(20.0 * 1e3 / 64.0));
    let q = parse_row_line(
        "noise @@BLK vmm=ours run=0 try=2 row=randread32 ios=5000 bytes=20480000 us=500000 cpu_ms=-1.0 guest_ms=-1.0",
    );
    // The line must start with the marker (after blanks); L1's console
    // puts kernel messages on lines of their own.
    assert_eq!(q, None);
    let q = parse_row_line(
        "  @@BLK vmm=ours run=0 try=2 row=randread32 ios=5000 bytes=20480000 us=500000 cpu_ms=-1.0 guest_ms=-1.0",
    )
    .unwrap();
    assert_eq!((q.kind, q.rate(), q.cpu_ms), (Kind::Rand32, 10_000.0, None));
    assert_eq!((q.cpu_per_io_us(), q.vmm_cpu_per_io_us()), (None, None));
    for bad in [
        "@@BLK vmm=xen run=0 try=1 row=seqread ios=1 bytes=1 us=1 cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=0 try=1 row=seqseek ios=1 bytes=1 us=1 cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=0 bytes=1 us=1 cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=1 bytes=1 us=0 cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=1 bytes=1 us=nan cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=1 bytes=1 us=1",
        "@@BLK vmm=ours run=0 row=seqread ios=1 bytes=1 us=1 cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=x try=1 row=seqread ios=1 bytes=1 us=1 cpu_ms=1 guest_ms=0",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=1 bytes=1 us=1 cpu_ms=1 guest_ms=0 junk",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=1 bytes=1 us=1 cpu_ms=1",
        "@@BLK vmm=ours run=0 try=1 row=seqread ios=1 bytes=1 us=1 cpu_ms",
        "@@BLKRUN vmm=ours run=0 try=1 status=0 done=1",
    ] {
        assert_eq!(parse_row_line(bad), None, "{bad}");
    }
}

#[test]
fn run_lines() {
    let r = parse_run_line("@@BLKRUN vmm=qemu-native run=1 try=2 status=0 done=1").unwrap();
    assert_eq!(r.label, label(Vmm::QemuNative, 1, 2));
    assert!(r.ok());
    let bad = parse_run_line("@@BLKRUN vmm=ours run=0 try=1 status=timeout done=0").unwrap();
    assert!(!bad.ok());
    assert!(
        !parse_run_line("@@BLKRUN vmm=ours run=0 try=1 status=0 done=0")
            .unwrap()
            .ok()
    );
    assert_eq!(parse_run_line("@@BLKRUN vmm=ours run=0 try=1 done=1"), None);
    assert_eq!(
        parse_run_line("@@BLKRUN vmm=ours run=0 try=1 status=0"),
        None
    );
}

/// The lines `blk_host` prints for a boot.
fn boot_output(l: &str, ok: bool, rate: u64) -> String {
    let mut out = String::new();
    for k in KINDS {
        let _ = writeln!(
            out,
            "@@BLK {l} row={} ios={rate} bytes={} us=1000000 cpu_ms={}.0 guest_ms={}.0",
            k.key(),
            rate << 20,
            rate,
            rate / 2
        );
    }
    if ok {
        let _ = writeln!(out, "@@BLKRUN {l} status=0 done=1");
    } else {
        let _ = writeln!(
            out,
            "@@BLKRUN {l} status=signal-9 done=0\n@@LOG-BEGIN\nend of the log\n@@LOG-END"
        );
    }
    out
}

#[test]
fn a_console_keeps_the_good_boots_only() {
    let mut console = String::from("[    1.0] kvm: Nested Virtualization enabled\n");
    console += &boot_output("vmm=ours run=0 try=1", false, 5);
    console += &boot_output("vmm=ours run=0 try=2", true, 10);
    console += "[   12.5] kvm: some message\n@@BLK vmm=ours run=0 try=2 row=seqr";
    console += "\n";
    console += &boot_output("vmm=qemu-native run=0 try=1", true, 20);
    let (good, failures) = parse_console(&console);
    assert_eq!(good.len(), 8, "{good:?}");
    assert!(good
        .iter()
        .filter(|r| r.label.vmm == Vmm::Ours)
        .all(|r| r.label.attempt == 2 && r.ios == 10));
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].what.contains("vmm (ours), run 0, try 1"),
        "{:?}",
        failures[0]
    );
    assert!(failures[0].what.contains("signal-9"));
    assert_eq!(failures[0].log, "end of the log");

    // The report: ours beside the better QEMU per row, the goal per row.
    let mut both = good.clone();
    let (mut more, _) = parse_console(&boot_output("vmm=qemu-io_uring run=0 try=1", true, 30));
    both.append(&mut more);
    let s = section(&both, 1, Sizes::new(true), vec!["session 1: ok".into()]);
    assert_eq!(s.rows.len(), 3 * KINDS.len());
    let md = super::super::report::section_markdown(&s);
    assert!(
        md.contains(
            "| sequential read, 1 MiB, QD1 (vs QEMU aio=io_uring) | MiB/s | **10.0** | 30.0 | 0.33x | ≥ 1x QEMU **missed** |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| host CPU per I/O, random read, 4 KiB, QD32 (vs QEMU aio=io_uring) | µs | **1000** | 1000 | 1.00x | ≤ 1x QEMU met |"),
        "{md}"
    );
    assert!(
        md.contains("| host CPU per I/O outside guest mode, random read, 4 KiB, QD1 (vs QEMU aio=io_uring) | µs | **500** | 500 | 1.00x | ≤ 1x QEMU met |"),
        "{md}"
    );
    assert!(md.contains("QEMU aio=native: 20.0 MiB/s (median)"), "{md}");
    assert!(md.contains("- session 1: ok"), "{md}");
}

#[test]
fn plan_rotates_and_the_script_runs_it() {
    let p = plan(4);
    assert_eq!(p.len(), 16);
    let firsts: Vec<Vmm> = p.chunks(4).map(|c| c[0].vmm).collect();
    assert_eq!(firsts, VMMS);
    for (run, round) in p.chunks(4).enumerate() {
        assert!(round.iter().all(|b| b.run == run));
        for v in VMMS {
            assert!(round.iter().any(|b| b.vmm == v));
        }
    }
    let s = script(&p[..2], "/dev/vda");
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("for try in 1 2; do ./blk_host \"vmm=ours run=0 try=$try\" "));
    assert!(lines[0].contains("--drive file=/dev/vda,if=virtio,format=raw,cache=none"));
    assert!(lines[1].contains("vmm=qemu-io_uring run=0"));
    assert!(lines[1].contains(
        "-drive file=/dev/vda,if=none,id=d0,format=raw,cache=none,aio=io_uring -device virtio-blk-pci,drive=d0"
    ));
    assert!(lines[1].contains("-M microvm,pcie=on"));
    assert!(Vmm::QemuNative.command("x").contains("aio=native"));
    assert!(Vmm::OursKernelIrqchip
        .command("x")
        .ends_with("cache=none --irqchip kernel"));
    assert!(!Vmm::Ours.command("x").contains("--irqchip"));
    for l in lines {
        assert!(l.ends_with(">>\"$TESTBED_LIVE\" && break; done"), "{l}");
    }
}

#[test]
fn the_guest_runs_the_load_on_vda() {
    let init = init_script(Sizes::new(false));
    assert!(init.contains("/blk_load /dev/vda 128 10 4\n"), "{init}");
    assert!(init.contains("insmod /lib/modules/$m.ko"));
    assert!(init.ends_with("reboot -f\n"));
}

#[test]
fn pci_setup_lines() {
    let stderr = "[2024-01-01T00:00:00.000001Z DEBUG vmm_pc::pci] PCI set-up: root bus, configuration ports and ECAM took 12345 ns\n\
                  [2024-01-01T00:00:00.000002Z DEBUG vmm_pc::pci] PCI set-up: MCFG took 800 ns\n\
                  [2024-01-01T00:00:00.000003Z INFO  vmm] PCI set-up: a sentence took a while\n\
                  PCI set-up: PCI0 in the DSDT took 30000 ns\r\n";
    assert_eq!(
        pci::setup_steps(stderr),
        vec![
            ("root bus, configuration ports and ECAM".to_owned(), 12345),
            ("MCFG".to_owned(), 800),
            ("PCI0 in the DSDT".to_owned(), 30000),
        ]
    );
    assert!(pci::setup_steps("nothing here\n").is_empty());
}

/// Ours on KVM's irqchip stays out of the comparison with QEMU and gives
/// the virtio round trip rows, the split one's goal from the kernel one's.
#[test]
fn the_kernel_irqchip_boots_give_the_virtio_round_trip_rows() {
    let mut console = boot_output("vmm=ours run=0 try=1", true, 100);
    console += &boot_output("vmm=qemu-native run=0 try=1", true, 100);
    console += &boot_output("vmm=ours-kernel-irqchip run=0 try=1", true, 80);
    let (good, failures) = parse_console(&console);
    assert!(failures.is_empty(), "{failures:?}");
    let s = section(&good, 1, Sizes::new(true), Vec::new());
    assert_eq!(s.rows.len(), 3 * KINDS.len() + 2);
    let md = super::super::report::section_markdown(&s);
    // 100 and 80 I/Os in a second: 10 000 and 12 500 µs each.
    assert!(
        md.contains("| virtio round trip (4 KiB read, QD1), split irqchip (ours' default) | µs | **10000** |"),
        "{md}"
    );
    assert!(md.contains("< 13750 µs met"), "{md}");
    assert!(
        md.contains("| virtio round trip (4 KiB read, QD1), KVM's irqchip (--irqchip kernel) | µs | **12500** |"),
        "{md}"
    );
    // The QEMU comparison rows are ours on the split irqchip only.
    assert!(
        md.contains("| random read, 4 KiB, QD1 (vs QEMU aio=native) | IOPS | **100** | 100 |"),
        "{md}"
    );
}
