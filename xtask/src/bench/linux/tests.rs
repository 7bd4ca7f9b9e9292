use super::*;

#[test]
fn boot_lines() {
    let b = parse_boot_line(
        "@@BOOT vmm=ours cpus=2 console=quiet run=1 to_init_ms=812.250 exit_ms=900.000 status=0\r",
    )
    .unwrap();
    assert_eq!(
        b,
        BootLine {
            vmm: Vmm::Ours,
            cpus: 2,
            quiet: true,
            run: Some(1),
            to_init_ms: Some(812.25),
            exit_ms: Some(900.0),
            status: "0".into(),
        }
    );
    assert!(b.ok());
    let w = parse_boot_line(
        "@@BOOT vmm=qemu cpus=1 console=verbose run=warmup to_init_ms=-1.000 exit_ms=-1.000 status=timeout",
    )
    .unwrap();
    assert_eq!(
        (w.vmm, w.quiet, w.run, w.to_init_ms),
        (Vmm::Qemu, false, None, None)
    );
    assert!(!w.ok());
    for bad in [
        "@@BOOT vmm=xen cpus=1 console=quiet run=0 to_init_ms=1 exit_ms=2 status=0",
        "@@BOOT vmm=ours cpus=one console=quiet run=0 to_init_ms=1 exit_ms=2 status=0",
        "@@BOOT vmm=ours cpus=1 console=loud run=0 to_init_ms=1 exit_ms=2 status=0",
        "@@BOOT vmm=ours cpus=1 console=quiet run=0 to_init_ms=x exit_ms=2 status=0",
        "@@BOOT vmm=ours cpus=1 console=quiet run=0 to_init_ms=1 exit_ms=2",
        "@@BOOT vmm=ours junk",
        "BOOT vmm=ours cpus=1 console=quiet run=0 to_init_ms=1 exit_ms=2 status=0",
    ] {
        assert_eq!(parse_boot_line(bad), None, "{bad}");
    }
}

/// The lines the script's boots would print, all well.
fn console_for(script: &str) -> String {
    let mut out = String::from("vmm 0.1.0\n");
    for (n, line) in script.lines().enumerate() {
        let label = line.split('\'').nth(1).unwrap();
        let _ = writeln!(
            out,
            "@@BOOT {label} to_init_ms={}.5 exit_ms={}.0 status=0",
            100 + n,
            200 + n
        );
    }
    out
}

#[test]
fn plan_takes_turns_and_the_script_runs_it() {
    let runs = 2;
    let p = plan(runs);
    assert_eq!(p.len(), 2 * 4 * runs);
    let who: Vec<&str> = p.iter().map(|b| b.vmm.key()).collect();
    // A B, then B A, per configuration and per round.
    assert_eq!(&who[..6], ["ours", "qemu", "qemu", "ours", "ours", "qemu"]);
    assert_eq!(&who[8..10], ["qemu", "ours"]);
    assert_eq!(p[8].run, Some(1));
    assert_eq!(warm_up().len(), 2);
    assert!(warm_up().iter().all(|b| b.run.is_none()));

    let mut boots = warm_up();
    boots.extend_from_slice(&p);
    let s = script(&boots);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), boots.len());
    assert!(lines[0].starts_with("./spawn_to_marker 'vmm=ours cpus=1 console=quiet run=warmup' '@@L2-INIT-RUNNING' 60 /tmp/l2.log \"$VMM\" "), "{}", lines[0]);
    assert!(lines[0].ends_with(" >>\"$TESTBED_LIVE\""), "{}", lines[0]);
    // The same guest and command line for both, apart from `quiet`.
    for l in &lines {
        assert!(l.contains(&format!("'{APPEND}")), "{l}");
        assert_eq!(l.contains("console=quiet"), l.contains(" quiet'"), "{l}");
        assert!(l.contains("bzImage") && l.contains("initrd"), "{l}");
        assert!(l.contains(&format!("{MEMORY_MIB}M")), "{l}");
    }
    assert!(lines[2].contains("--cpus 1 ") && lines[3].contains("-smp 1 "));
    assert!(lines[3].contains("\"$QEMU\" -M microvm -accel kvm"));
}

#[test]
fn console_to_series() {
    let runs = 2;
    let mut boots = warm_up();
    boots.extend_from_slice(&plan(runs));
    let (good, failures) = parse_console(&console_for(&script(&boots)));
    assert!(failures.is_empty());
    assert_eq!(good.len(), boots.len());
    assert_eq!(good.iter().map(BootLine::boot).collect::<Vec<_>>(), boots);
    let series = series(&good);
    assert_eq!(series.len(), 8);
    assert_eq!(
        (series[0].vmm.as_str(), series[0].cpus, series[0].quiet),
        ("vmm (ours)", 1, true)
    );
    assert_eq!(
        (series[7].vmm.as_str(), series[7].cpus, series[7].quiet),
        ("QEMU microvm", 2, false)
    );
    // Ours, 1 vCPU, quiet: script lines 2 (round 0) and 11 (round 1,
    // where QEMU goes first); the warm-up is left out.
    assert_eq!(series[0].to_init_ms, [102.5, 111.5]);
    assert_eq!(series[0].exit_ms, [202.0, 211.0]);
    assert!(series.iter().all(|s| s.to_init_ms.len() == runs));
    let sections = section(&series, runs, Vec::new());
    let rows = &sections[0].rows;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].metric, "1 vCPU, quiet: spawn to /init");
    assert_eq!(rows[0].values(Who::Ours), Some(&[102.5, 111.5][..]));
    assert!(rows[3].metric.starts_with("2 vCPUs, verbose"));
}

#[test]
fn quick_boots_the_quiet_rows_once_without_a_warm_up() {
    let (warm_ups, full) = schedule(1, false);
    assert_eq!((warm_ups.len(), full.len()), (2, 8));
    let (warm_ups, quick) = schedule(1, true);
    assert!(warm_ups.is_empty());
    assert_eq!(quick.len(), 4);
    assert!(quick.iter().all(|b| b.config.quiet && b.run == Some(0)));
    for vmm in [Vmm::Ours, Vmm::Qemu] {
        for cpus in CPUS {
            assert!(quick.iter().any(|b| b.vmm == vmm && b.config.cpus == cpus));
        }
    }
    // The report has the rows it measured, and none for the verbose
    // console it did not boot.
    let (good, _) = parse_console(&console_for(&script(&quick)));
    let sections = section(&series(&good), 1, Vec::new());
    let rows: Vec<&str> = sections[0].rows.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(
        rows,
        [
            "1 vCPU, quiet: spawn to /init",
            "2 vCPUs, quiet: spawn to /init"
        ]
    );
}

#[test]
fn quiet_boots_share_an_l1_of_two_cpus_and_verbose_ones_an_l1_of_one() {
    let (_, full) = schedule(2, false);
    let groups = by_l1(&full);
    assert_eq!(groups.len(), 2);
    let (quiet_cpus, quiet) = &groups[0];
    let (verbose_cpus, verbose) = &groups[1];
    assert_eq!(
        (*quiet_cpus, *verbose_cpus),
        (vmm_testbed::qemu::L1_CPUS, 1)
    );
    assert!(quiet.iter().all(|b| b.config.quiet));
    assert!(verbose.iter().all(|b| !b.config.quiet));
    // Nothing lost, nothing reordered within an L1: both VMMs, both
    // vCPU counts and both rounds in each, turns as planned.
    assert_eq!(quiet.len() + verbose.len(), full.len());
    let kept = |g: &[Boot]| {
        let from_plan: Vec<Boot> = full.iter().filter(|b| g.contains(b)).copied().collect();
        from_plan == g
    };
    assert!(kept(quiet) && kept(verbose));
    for g in [quiet, verbose] {
        for vmm in [Vmm::Ours, Vmm::Qemu] {
            for cpus in CPUS {
                let n = g
                    .iter()
                    .filter(|b| b.vmm == vmm && b.config.cpus == cpus)
                    .count();
                assert_eq!(n, 2, "{vmm:?} {cpus} vCPU(s)");
            }
        }
    }
    // `--quick` boots only quiet ones: one L1.
    let (_, quick) = schedule(1, true);
    assert_eq!(by_l1(&quick).len(), 1);
}

#[test]
fn failed_tries_are_reported_with_their_log() {
    let console = "@@BOOT vmm=qemu cpus=1 console=quiet run=warmup to_init_ms=-1.000 \
                   exit_ms=12.000 status=1\r\n@@LOG-BEGIN\nqemu: no kvm\n@@LOG-END\n\
                   [ 8.1] kvm [98]: vcpu0, guest rIP: 0xffffffffb0273744 Unhandled WRMSR\n\
                   @@BOOT vmm=qemu cpus=1 console=quiet run=warmup to_init_ms=90.000 \
                   exit_ms=120.000 status=0\n\
                   @@BOOT vmm=ours cpus=2 console=verbose run=0 to_init_ms=-1.000 \
                   exit_ms=12.000 status=0\n@@LOG-BEGIN\n[ 0.05] On node 0\n@@LOG-END\n\
                   @@BOOT vmm=ours cpus=2 console=verbose run=0 to_init_ms=30";
    let (good, failures) = parse_console(console);
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].to_init_ms, Some(90.0));
    assert_eq!(failures.len(), 2);
    assert_eq!(
        failures[0].what,
        "QEMU microvm with 1 vCPU(s), quiet console, run warm-up: no /init marker (status 1)"
    );
    assert_eq!(failures[0].log, "qemu: no kvm");
    assert_eq!(
        failures[1].what,
        "vmm (ours) with 2 vCPU(s), verbose console, run 0: no /init marker (status 0)"
    );
    assert_eq!(failures[1].log, "[ 0.05] On node 0");
    // The series only hold measured good boots.
    assert!(series(&good).iter().all(|s| s.to_init_ms.is_empty()));
}

/// The whole benchmark, for real (KVM, the guest files, QEMU; nested,
/// several minutes): `VMM_GUEST_DIR=... BENCH_LINUX_RUNS=1 cargo test
/// -p xtask -- --ignored --nocapture linux_end_to_end` (with
/// `VMM_TESTBED_ECHO=1`, L1's console is shown as it comes); it uses the
/// release `vmm`, so `cargo build --release -p vmm-cli` first.
#[test]
#[ignore = "boots Linux many times: minutes"]
fn linux_end_to_end() {
    let runs = std::env::var("BENCH_LINUX_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (series, _) = boots(runs, false).unwrap_or_else(|e| panic!("{e:#}"));
    print!(
        "{}",
        super::super::report::section_markdown(&section(&series, runs, Vec::new())[0])
    );
}
