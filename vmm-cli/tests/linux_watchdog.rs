//! The i6300esb under Debian's kernel with no driver for the chip: the
//! guest's generic `wdat_wdt` finds the watchdog through the ACPI WDAT and
//! serves it as `/dev/watchdog` (the watchdog core and `wdat_wdt` loaded
//! from the test initramfs). Nested in the test bed on PVM hosts; directly
//! on hardware KVM. The guest files must have the two modules
//! (`cargo xtask guest --refresh` fetches them).

mod common;
mod linux_common;

use linux_common::{debian_job, guest, nested_retry, run, test_initrd};

/// The guest's modules, in load order.
const MODULES: &[&str] = &["watchdog", "wdat_wdt"];

/// What every script starts with: the modules, then what the guest sees.
const PROLOGUE: &str = "\
    insmod /watchdog.ko\n\
    insmod /wdat_wdt.ko $WDAT_ARGS\n\
    [ -c /dev/watchdog ] && echo @@DEV\n\
    echo \"@@ID $(cat /sys/class/watchdog/watchdog0/identity)\"\n\
    echo \"@@TIMEOUT $(cat /sys/class/watchdog/watchdog0/timeout)\"\n\
    dmesg | grep -i -E 'wdat|watchdog|25ab'\n";

/// Boots the guest with `--device i6300esb --action watchdog=ACTION` and
/// `script` after the prologue; `wdat_args` are `wdat_wdt`'s parameters;
/// the VMM logs at `log_level`.
fn boot(
    test: &str,
    action: &str,
    wdat_args: &str,
    log_level: &str,
    script: &str,
) -> Option<vmm_testbed::Outcome> {
    let g = guest(test)?;
    for m in MODULES {
        assert!(
            g.module(m).exists(),
            "{test}: the guest files lack {m}.ko (cargo xtask guest --refresh)"
        );
    }
    let dir = common::TempDir::new(test);
    let script = format!("WDAT_ARGS='{wdat_args}'\n{PROLOGUE}{script}");
    let initrd = test_initrd(&g, &dir, &script, MODULES, false);
    let job = debian_job(
        &g,
        &initrd,
        [
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--log-level",
            log_level,
            "--device",
            "i6300esb",
            "--action",
            &format!("watchdog={action}"),
        ],
    )
    .timeout(std::time::Duration::from_secs(300));
    Some(run(test, &g, &job))
}

fn assert_found(test: &str, out: &vmm_testbed::Outcome) {
    let c = &out.console;
    assert!(c.contains("@@DEV"), "{test}: no /dev/watchdog\n{c}");
    assert!(c.contains("@@ID wdat_wdt"), "{test}: not wdat_wdt\n{c}");
}

/// Opened, written once, then left alone: with `poweroff` the VMM ends
/// with status 0 and the watchdog's message, the guest still asleep.
#[test]
fn debian_wdat_watchdog_fires_when_left_alone() {
    let test = "debian_wdat_watchdog_fires_when_left_alone";
    nested_retry(test, || {
        let script = "\
            echo \"@@ARMED $(cut -d' ' -f1 /proc/uptime)\"\n\
            exec 3>/dev/watchdog\n\
            echo x >&3\n\
            sleep 120\n\
            echo @@SURVIVED\n\
            poweroff -f";
        let Some(out) = boot(test, "poweroff", "", "info", script) else {
            return;
        };
        let c = &out.console;
        assert_found(test, &out);
        assert!(c.contains("@@TIMEOUT 30"), "{test}: default timeout\n{c}");
        assert!(c.contains("@@ARMED"), "{test}: never armed\n{c}");
        assert!(!c.contains("@@SURVIVED"), "{test}: it did not fire\n{c}");
        assert_eq!(out.status, Some(0), "{test}: {}", out.stderr);
        assert!(
            out.stderr.contains("the watchdog fired (action poweroff)"),
            "{test}: vmm stderr:\n{}\nconsole:\n{c}\nL1:\n{}",
            out.stderr,
            out.l1_console
        );
    });
}

/// Written with `V` and closed (magic close): it stops, and the VMM's
/// exit is the guest's own poweroff after sleeping past the timeout.
#[test]
fn debian_wdat_magic_close_stops_the_watchdog() {
    let test = "debian_wdat_magic_close_stops_the_watchdog";
    nested_retry(test, || {
        let script = "\
            exec 3>/dev/watchdog\n\
            echo x >&3\n\
            printf V >&3\n\
            exec 3>&-\n\
            echo @@CLOSED\n\
            sleep 8\n\
            echo @@SURVIVED\n\
            poweroff -f";
        // A 3 s timeout, outlived more than twice over.
        let Some(out) = boot(test, "poweroff", "timeout=3", "info", script) else {
            return;
        };
        let c = &out.console;
        assert_found(test, &out);
        assert!(c.contains("@@CLOSED"), "{test}\n{c}");
        assert!(
            c.contains("@@SURVIVED"),
            "{test}: the guest did not outlive the timeout\n{c}\n{}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{test}: {}", out.stderr);
        assert!(
            !out.stderr.contains("watchdog fired"),
            "{test}: {}",
            out.stderr
        );
    });
}

/// Three rounds of: arm with a 3 s timeout, leave it, the watchdog's NMI
/// (`--action watchdog=inject-nmi`), magic close. Each round fires once;
/// the time from arming to the NMI, on the guest's kernel log clock, is
/// printed (a measurement, not asserted).
#[test]
fn debian_wdat_firing_times() {
    let test = "debian_wdat_firing_times";
    nested_retry(test, || {
        let script = "\
            for i in 1 2 3; do\n\
              echo \"@@ARM $i\" > /dev/kmsg\n\
              exec 3>/dev/watchdog\n\
              echo x >&3\n\
              sleep 5\n\
              printf V >&3\n\
              exec 3>&-\n\
            done\n\
            dmesg | grep -E '@@ARM|NMI received'\n\
            echo @@DONE\n\
            poweroff -f";
        let Some(out) = boot(test, "inject-nmi", "timeout=3", "debug", script) else {
            return;
        };
        let c = &out.console;
        assert_found(test, &out);
        assert!(c.contains("@@TIMEOUT 3"), "{test}: timeout=3\n{c}");
        assert!(c.contains("@@DONE"), "{test}: no @@DONE\n{c}");
        // The guest's side: its kernel log's clock, from the line before
        // opening to the NMI (the console shows each line twice: as the
        // kernel prints it, and in dmesg's output).
        let stamp = |line: &str| -> Option<f64> {
            let l = line.trim_start_matches(|ch| ch != '[');
            l.strip_prefix('[')?.split(']').next()?.trim().parse().ok()
        };
        let mut seen = std::collections::HashSet::new();
        let mut armed = None;
        let mut guest = Vec::new();
        for line in c.lines().filter(|l| seen.insert(*l)) {
            if line.contains("] @@ARM ") {
                armed = stamp(line);
            } else if line.contains("NMI received") {
                let (Some(a), Some(f)) = (armed.take(), stamp(line)) else {
                    panic!("{test}: an NMI with no arming before it: {line}\n{c}");
                };
                guest.push(f - a);
            }
        }
        assert_eq!(guest.len(), 3, "{test}: one NMI per round\n{c}");
        // The VMM's side: its log's clock, from the chip's last arming
        // (the open's start, then the write's ping) to stage 2's end.
        let clock = |line: &str| -> Option<f64> {
            let t = line.split('T').nth(1)?.split('Z').next()?;
            let mut p = t.split(':');
            let (h, m, s) = (p.next()?, p.next()?, p.next()?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        };
        let mut armed = None;
        let mut host = Vec::new();
        for line in out.stderr.lines() {
            if line.contains("i6300esb: armed") {
                armed = clock(line);
            } else if line.contains("i6300esb: stage 2 expired") {
                let (Some(a), Some(f)) = (armed.take(), clock(line)) else {
                    panic!("{test}: an expiry with no arming: {line}\n{}", out.stderr);
                };
                host.push(f - a);
            }
        }
        assert_eq!(
            host.len(),
            3,
            "{test}: one expiry per round\n{}",
            out.stderr
        );
        let show = |what: &str, times: &[f64]| {
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let min = times.iter().copied().fold(f64::MAX, f64::min);
            let max = times.iter().copied().fold(f64::MIN, f64::max);
            let all: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
            eprintln!(
                "{test}: {what}: {} s; mean {mean:.4} s, min {min:.4} s, max {max:.4} s",
                all.join(" ")
            );
        };
        eprintln!(
            "{test}: programmed 3 s (1500 counts of 2 ms); the chip's ticks: \
             2 x 1500 x 0.99297 ms = 2.9789 s"
        );
        show("VMM, armed to fired", &host);
        show("guest, before open to NMI", &guest);
    });
}
