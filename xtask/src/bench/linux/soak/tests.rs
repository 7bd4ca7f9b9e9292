//! The soak's tests: options, console parsing, the report.

use super::*;

#[test]
fn vmm_log_lines_are_told_from_the_guest_s() {
    assert!(is_vmm_log_line(
        "[2026-12-03T23:02:30.487651Z INFO  vmm_qmp::server] QMP: client 1 left"
    ));
    assert!(!is_vmm_log_line("[    3.821626] ACPI: Using IOAPIC"));
    assert!(!is_vmm_log_line("[    0.031005]   node   0: [mem 0x1000"));
    assert!(!is_vmm_log_line(""));
}

#[test]
fn options() {
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        Options::parse(&args(&["--rounds", "3", "--busy"])).unwrap(),
        Options {
            rounds: 3,
            busy: true,
            cpus: None,
            quiet: None,
            only: None,
            vmm_args: vec![],
            per_l1: None,
            boot_limit: BOOT_TIMEOUT_S,
        }
    );
    assert_eq!(
        Options::parse(&args(&["--boot-limit", "180"]))
            .unwrap()
            .boot_limit,
        180
    );
    for bad in ["9", "601", "x"] {
        assert!(
            Options::parse(&args(&["--boot-limit", bad])).is_err(),
            "{bad}"
        );
    }
    assert!(Options::parse(&args(&["--boot-limit"])).is_err());
    let o = Options::parse(&args(&[
        "--vmm",
        "ours",
        "--vmm-arg=--irqchip=kernel",
        "--vmm-arg",
        "--seccomp=off",
    ]))
    .unwrap();
    assert_eq!(o.only, Some(Vmm::Ours));
    assert_eq!(o.vmm_args, ["--irqchip=kernel", "--seccomp=off"]);
    assert!(Options::parse(&args(&["--vmm", "firecracker"])).is_err());
    assert!(Options::parse(&args(&["--vmm-arg"])).is_err());
    let o = Options::parse(&args(&["--cpus", "2", "--console", "verbose"])).unwrap();
    assert_eq!((o.cpus, o.quiet), (Some(2), Some(false)));
    assert!(o.wants(Config {
        cpus: 2,
        quiet: false
    }));
    assert!(!o.wants(Config {
        cpus: 1,
        quiet: false
    }));
    assert!(!o.wants(Config {
        cpus: 2,
        quiet: true
    }));
    assert!(Options::parse(&args(&["--cpus", "3"])).is_err());
    assert!(Options::parse(&args(&["--console", "loud"])).is_err());
    assert_eq!(Options::parse(&[]).unwrap().rounds, 10);
    assert!(Options::parse(&args(&["--rounds", "0"])).is_err());
    assert!(Options::parse(&args(&["--rounds"])).is_err());
    assert!(Options::parse(&args(&["--fast"])).is_err());
    assert_eq!(
        Options::parse(&args(&["--per-l1", "1"])).unwrap().per_l1,
        Some(1)
    );
    assert_eq!(Options::parse(&[]).unwrap().per_l1, None);
    assert!(Options::parse(&args(&["--per-l1", "0"])).is_err());
    assert!(Options::parse(&args(&["--per-l1"])).is_err());
}

#[test]
fn every_end_is_classified_with_its_log_and_dump() {
    let console = "\
@@BOOT vmm=ours cpus=1 console=quiet run=0 to_init_ms=900.0 exit_ms=950.0 status=0
@@DUMP-BEGIN
(vmm) info registers -a
CPU#0
RIP=ffffffff81000000
@@DUMP-END
@@BOOT vmm=ours cpus=2 console=verbose run=0 to_init_ms=-1 exit_ms=-1 status=timeout
@@LOG-BEGIN
[    2.100000] HugeTLB: registered 2.00 MiB page size
@@LOG-END
@@BOOT vmm=qemu cpus=2 console=verbose run=0 to_init_ms=-1 exit_ms=3000 status=0
@@LOG-BEGIN
[    2.517000] thermal_sys: Registered thermal governor 'bang_ban
@@LOG-END
@@BOOT vmm=qemu cpus=1 console=quiet run=0 to_init_ms=-1 exit_ms=10 status=1
";
    let v = parse(console);
    let ends: Vec<End> = v.iter().map(|e| e.end).collect();
    assert_eq!(ends, [End::Ok, End::Hang, End::Reset, End::Error]);
    assert!(v[1].dump.contains("RIP=ffffffff81000000"), "{:?}", v[1]);
    assert!(v[0].dump.is_empty() && v[2].dump.is_empty());
    assert_eq!(last_guest_time(&v[1].log), Some(2.1));
    assert_eq!(last_guest_time(&v[2].log), Some(2.517));
    assert_eq!(last_guest_time("no stamps"), None);
    let o = Options {
        rounds: 1,
        boot_limit: 180,
        ..Options::default()
    };
    let l1 = L1 {
        host: "L1's QEMU: QEMU emulator version 7.2.22; load 0.1".into(),
        sessions: 1,
        faults: vec![],
        symbols: vec!["session 1: ffffffffc0377d30 t __svm_vcpu_run [kvm_amd]".into()],
    };
    let r = report(&o, &v, &[], &l1, Duration::from_secs(1));
    assert!(r.contains("__svm_vcpu_run"), "{r}");
    assert!(r.contains("L1's QEMU: QEMU emulator version 7.2.22"), "{r}");
    assert!(
        r.contains("| vmm (ours) | 2 | verbose | 1 | 0 | 1 | 0 | 0 | - |"),
        "{r}"
    );
    assert!(
        r.contains("| QEMU microvm | 2 | verbose | 1 | 0 | 0 | 1 | 0 | - |"),
        "{r}"
    );
    assert!(r.contains("last guest time: 2.100 s"), "{r}");
    assert!(r.contains("vCPUs at the time limit"), "{r}");
    assert!(r.contains("after 180 s counts as a hang"), "{r}");
}

#[test]
fn boot_times_median_and_max() {
    assert_eq!(median_and_max_s([].into_iter()), "-");
    assert_eq!(median_and_max_s([9000.0].into_iter()), "9.0 / 9.0");
    assert_eq!(
        median_and_max_s([30000.0, 10000.0, 20000.0].into_iter()),
        "20.0 / 30.0"
    );
    assert_eq!(
        median_and_max_s([12000.0, 10000.0, 40000.0, 14000.0].into_iter()),
        "13.0 / 40.0"
    );
}

#[test]
fn each_reset_gets_the_next_record_of_exits() {
    let console = "\
@@BOOT vmm=ours cpus=2 console=verbose run=0 to_init_ms=-1 exit_ms=3000 status=0
@@BOOT vmm=ours cpus=2 console=verbose run=1 to_init_ms=900.0 exit_ms=950.0 status=0
@@TESTBED-L2-RESET vcpu1=io,0xffffffff9fcbc754;shutdown,0xffffffff9fcbc755
@@BOOT vmm=ours cpus=2 console=verbose run=2 to_init_ms=-1 exit_ms=3000 status=0
@@BOOT vmm=ours cpus=2 console=verbose run=3 to_init_ms=-1 exit_ms=3000 status=0
  @@TESTBED-L2-RESET vcpu0=shutdown,0xffffffff81000000
";
    let v = parse(console);
    let ends: Vec<End> = v.iter().map(|e| e.end).collect();
    assert_eq!(ends, [End::Reset, End::Ok, End::Reset, End::Reset]);
    assert!(v[0].dump.contains("vcpu1=io"), "{:?}", v[0]);
    assert!(v[1].dump.is_empty(), "{:?}", v[1]);
    assert!(v[2].dump.contains("vcpu0=shutdown"), "{:?}", v[2]);
    assert!(v[3].dump.is_empty(), "one record, one reset: {:?}", v[3]);
}

#[test]
fn each_boot_serves_qmp_for_the_dump() {
    let boot = plan(1)[0];
    let line = boot_line(&boot, &["--irqchip=kernel".to_owned()], 75);
    assert!(line.contains("SPAWN_QMP=l2.qmp"), "{line}");
    assert!(line.contains(" 75 /tmp/l2.log "), "{line}");
    assert!(line.contains("info lapic 0"), "{line}");
    match boot.vmm {
        Vmm::Ours => assert!(line.contains("--qmp l2.qmp '--irqchip=kernel'"), "{line}"),
        Vmm::Qemu => assert!(
            line.contains("-qmp unix:l2.qmp,server=on,wait=off"),
            "{line}"
        ),
    }
}
