//! Live migration of a Linux guest: Debian's kernel keeps a 32 MiB
//! reference file in its tmpfs and, tick after tick, overwrites 2 MiB of
//! other memory with random bytes and checks the reference's MD5, printing
//! the tick, its uptime and the check. Our VMM (the job's, the source)
//! migrates it over a Unix socket to a second VMM started with `--incoming
//! unix:` (both in L1, driven by the static QMP client there) while it
//! runs; the guest must carry on in the destination: its ticks go on from
//! where the source's console stopped with none lost or repeated, its
//! uptime never runs backwards, the reference is intact after the move.
//! On 1 and 2 vCPUs. Nested in the test bed on PVM hosts; directly on
//! hardware KVM.

mod common;
mod linux_common;

use linux_common::{
    build_static, completed_migration, debian_job, guest, nested_retry, print_migration, run,
    section, test_initrd, QUIET_APPEND, SOURCE_STATE_ON_FAILURE,
};

/// The guest's loop.
const SCRIPT: &str = "\
mkdir -p /tmp/m
yes vmm-migration | head -c 33554432 > /tmp/m/ref
want=$(md5sum < /tmp/m/ref)
echo @@READY
i=0
while true; do
  i=$((i+1))
  dd if=/dev/urandom of=/tmp/m/churn bs=1M count=2 2>/dev/null
  ok=BAD; [ \"$(md5sum < /tmp/m/ref)\" = \"$want\" ] && ok=ok
  echo \"@@TICK $i $(cut -d' ' -f1 /proc/uptime) $ok\"
  sleep 0.3
done";

/// What L1 runs beside the source: the destination, then the migration,
/// then both VMMs' ends, then everything they printed. A source that never
/// gets to migrate is asked for its vCPUs' registers and local APIC
/// (`human-monitor-command`), and the destination is not waited for.
///
/// The destination runs until tick k+5 begins, k the tick lines in the
/// source's log: the stop can cut the source's last line before its
/// "@@TICK" (not counted), so the destination may start with the rest of
/// tick k+1; k+2..k+4 are then the three whole ticks the test asks for.
/// (Waiting for k+3 left two in a CI run whose stop cut "@@TI".)
fn companion(cpus: u32) -> String {
    format!(
        "$VMM --kernel kernel --initrd initrd --cpus {cpus} --memory 256M --serial file:dst.log \
           --qmp dst.sock --incoming unix:mig.sock 2>dst.err &\n\
         dst=$!\n\
         ./qmpclient qmp.sock 'file:console.log:@@TICK 3 ' \
           '{{\"execute\":\"migrate-set-capabilities\",\"arguments\":{{\"capabilities\":[{{\"capability\":\"events\",\"state\":true}}]}}}}' \
           '{{\"execute\":\"migrate\",\"arguments\":{{\"uri\":\"unix:mig.sock\"}}}}' \
           'line:\"completed\"' query-migrate query-status > src.qmp 2>&1\n\
         rc=$?; echo \"@@SRCQMPEXIT $rc\"\n\
         {SOURCE_STATE_ON_FAILURE}\
         k=$(grep -c '@@TICK' console.log)\n\
         i=0; while [ $rc -eq 0 ] && ! grep -q \"@@TICK $((k+5)) \" dst.log 2>/dev/null; do sleep 0.5; i=$((i+1)); [ $i -lt 240 ] || break; done\n\
         ./qmpclient dst.sock query-status query-migrate quit > dst.qmp 2>&1\n\
         wait $dst; echo \"@@DSTEXIT $?\"\n\
         ./qmpclient qmp.sock quit > /dev/null 2>&1\n\
         echo @@SRCQMP; cat src.qmp; echo @@DSTQMP; cat dst.qmp; echo @@DSTERR; cat dst.err\n\
         echo @@SRCSTATE; cat src.state 2>/dev/null\n\
         echo @@SRCLOG; cat console.log; echo @@DSTLOG; cat dst.log; echo @@END"
    )
}

/// (tick, uptime, check) of each whole tick line.
fn ticks(log: &str) -> Vec<(u64, f64, String)> {
    log.lines()
        .filter_map(|l| {
            let l = &l[l.find("@@TICK ")? + 7..];
            // A kernel message can land inside the line, before its
            // newline ("ok[   33.01] ..."): the serial console's printk
            // does not wait for the tty's queued output.
            let l = kernel_message(l).map_or(l, |i| &l[..i]);
            let mut f = l.split_whitespace();
            let n = f.next()?.parse().ok()?;
            let t = f.next()?.parse().ok()?;
            let ok = f.next()?.to_owned();
            Some((n, t, ok))
        })
        .collect()
}

/// Where a kernel message (`[ SECONDS] text`) starts in `line`.
fn kernel_message(line: &str) -> Option<usize> {
    let start = line.find('[')?;
    let stamp = &line[start + 1..start + line[start..].find(']')?];
    stamp.trim().parse::<f64>().ok().map(|_| start)
}

/// The kernel messages in a guest's console log, each from its time stamp.
fn kernel_messages(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| Some(&l[kernel_message(l)?..]))
        .collect()
}

/// The source boots quiet ([`QUIET_APPEND`]): its 2-vCPU runs lost tries
/// to TCG's fault during the verbose boot, the console cut mid-line just
/// after the second CPU came up.
fn migrate(test: &str, cpus: u32) {
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        let dir = common::TempDir::new(test);
        let initrd = test_initrd(&g, &dir, SCRIPT, &[], false);
        let client = build_static(&dir, "qmpclient");
        let cpus_arg = cpus.to_string();
        let job = debian_job(
            &g,
            &initrd,
            [
                "--cpus",
                &cpus_arg,
                "--memory",
                "256M",
                "--qmp",
                "qmp.sock",
                "--serial",
                "file:console.log",
                "--append",
                QUIET_APPEND,
            ],
        )
        .file("qmpclient", &client)
        .companion(&companion(cpus))
        // Two VMMs at once, the source's guest writing memory: two L1
        // CPUs whatever the guest's vCPUs.
        .l1_cpus(2)
        .timeout(std::time::Duration::from_secs(480));
        let out = run(test, &g, &job);
        let c = &out.console;
        assert!(
            c.contains("@@END"),
            "{test}: the companion did not finish:\n{c}\n{}",
            out.stderr
        );
        let src_qmp = section(c, "@@SRCQMP");
        let dst_qmp = section(c, "@@DSTQMP");
        let src = ticks(section(c, "@@SRCLOG"));
        let dst = ticks(section(c, "@@DSTLOG"));
        // What the guest's kernel said once it ran on the destination.
        let dst_kernel = kernel_messages(section(c, "@@DSTLOG")).join("\n");
        eprintln!("{test}: the guest's kernel messages on the destination:\n{dst_kernel}");
        // Where the source's guest got to (its last lines), for a boot
        // that never reached its ticks.
        let src_log = section(c, "@@SRCLOG");
        let src_tail: Vec<&str> = src_log.lines().rev().take(40).collect();
        let src_tail = src_tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        let report = format!(
            "source QMP:\n{src_qmp}\ndestination QMP:\n{dst_qmp}\ndestination stderr:\n{}\n\
             source ticks {src:?}\ndestination ticks {dst:?}\n\
             the source's console, last lines:\n{src_tail}\n\
             the source's vCPUs (asked over QMP when its step failed):\n{}\n\
             destination kernel messages:\n{dst_kernel}\nvmm stderr:\n{}",
            section(c, "@@DSTERR"),
            section(c, "@@SRCSTATE"),
            out.stderr
        );
        assert!(
            c.contains("@@SRCQMPEXIT 0"),
            "{test}: the migration did not complete\n{report}"
        );
        assert!(
            src_qmp.contains("\"status\": \"postmigrate\"")
                || src_qmp.contains("\"status\":\"postmigrate\""),
            "{test}: the source is not in postmigrate\n{report}"
        );
        let r = completed_migration(src_qmp)
            .unwrap_or_else(|| panic!("{test}: no completed query-migrate\n{report}"));
        print_migration(test, &r);
        assert!(
            dst_qmp.contains("\"running\""),
            "{test}: the destination is not running\n{report}"
        );
        assert!(
            c.contains("@@DSTEXIT 0"),
            "{test}: the destination's exit\n{report}"
        );
        assert_eq!(out.status, Some(0), "{test}: the source's exit\n{report}");
        // The guest went on: ticks continue without a gap or a repeat
        // (the line cut by the stop may be split across the two logs), its
        // clock never ran backwards, its reference file stayed intact.
        assert!(src.len() >= 3 && dst.len() >= 3, "{test}: ticks\n{report}");
        let all: Vec<_> = src.iter().chain(&dst).collect();
        let last_src = src.last().unwrap().0;
        let first_dst = dst[0].0;
        assert!(
            first_dst == last_src + 1 || first_dst == last_src + 2,
            "{test}: the destination went on from tick {first_dst}, the source stopped at {last_src}\n{report}"
        );
        for w in dst.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0 + 1,
                "{test}: ticks in the destination\n{report}"
            );
        }
        for w in all.windows(2) {
            assert!(w[1].1 >= w[0].1, "{test}: uptime ran backwards\n{report}");
        }
        assert!(
            all.iter().all(|t| t.2 == "ok"),
            "{test}: the reference changed\n{report}"
        );
    });
}

#[test]
fn debian_live_migrates_on_1_cpu_and_carries_on() {
    migrate("debian_live_migrates_on_1_cpu_and_carries_on", 1);
}

/// With Debian's 6.1.0-57 kernel in L1, L1 itself panicked under this test
/// in both tries of a CI rehearsal ("BUG: TASK stack guard page was hit" in
/// `exc_page_fault` on our VMM's vCPU thread), a fault of L1's kernel under
/// TCG's SVM emulation; the guest kernel is pinned to 6.1.0-48, under which
/// it passed every time it ran (three).
#[test]
fn debian_live_migrates_on_2_cpus_and_carries_on() {
    migrate("debian_live_migrates_on_2_cpus_and_carries_on", 2);
}

#[test]
fn kernel_messages_inside_tick_lines() {
    let log = "@@TICK 17 31.72 ok\n@@TICK 18 32.87 ok[   33.01] clocksource: x\n\
               [   34.5] rcu: y\n@@TICK 19 34.25 BAD\nsh: [ 1: bad\n";
    assert_eq!(
        ticks(log),
        [
            (17, 31.72, "ok".to_owned()),
            (18, 32.87, "ok".to_owned()),
            (19, 34.25, "BAD".to_owned())
        ]
    );
    assert_eq!(
        kernel_messages(log),
        ["[   33.01] clocksource: x", "[   34.5] rcu: y"]
    );
}
