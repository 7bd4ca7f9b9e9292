//! Live migration of a Linux guest whose network card's rings the host
//! kernel serves (`vhost=on`): while the guest fetches file after file
//! from L1 over TCP, it moves to a second VMM in the same L1, on a second
//! tap, and fetches on there.
//!
//! What the test holds the VMM to: the kernel's vhost-net writes received
//! frames and the used ring into guest RAM behind KVM's dirty log, so the
//! source must log those writes ([`vmm_virtio::vhost::DirtyLog`]) for
//! every pass and read where each ring stopped before the last copy; the
//! destination must hand its own vhost-net the rings from there. Once the
//! migration completes, both VMMs' guest RAM is dumped (QMP `pmemsave`,
//! the destination still `--paused`) and must be the same byte for byte
//! but for the vCPU's kvmclock record, which the destination's KVM
//! rewrites: without the log, thousands of pages differ, the receive
//! buffers the kernel filled during the passes (a TCP stream alone would
//! not show it: the guest drops what fails its checks and TCP sends it
//! again; every fetch passed in such a run).
//!
//! Nested only: the taps live in L1, which has no network device of its
//! own. L1 gives the second tap the first one's MAC address and moves
//! 10.0.2.1 to it once the migration completes (the guest's ARP entry
//! stays right), as an L1 bridge would make unnecessary.

mod common;
mod linux_common;

use linux_common::{
    assert_ticks_go_on, build_static, checked_ticks, completed_migration, debian_job, guest,
    nested_only, nested_retry, print_migration, run, section, test_initrd, NET_MODULES as MODULES,
};

/// L1's modules for the card on vhost-net.
const L1_MODULES: &[&str] = &["tun", "tap", "vhost_iotlb", "vhost", "vhost_net"];

/// Fetches in all: enough for the pre-copy to end (under TCG its first
/// pass alone takes several seconds) with fetches to spare in the
/// destination.
const TICKS: u32 = 60;

/// The card's address, the same on both sides.
const MAC: &str = "52:54:00:ab:cd:05";

/// The guest: its card up at 10.0.2.15, then `TICKS` fetches of 1 MiB
/// from L1's httpd, each checked against the MD5 of what L1 serves
/// (a fetch that fails or takes over 10 s, as while L1 moves its address,
/// is tried again up to 15 times; not with wget's own `-T`, with which
/// Debian's busybox 1.35 crashes; a fetch that never succeeds ends the
/// loop), then a ping to L1 and the end.
fn script() -> String {
    format!(
        "dmesg -n 1\n\
         for m in {modules}; do insmod /$m.ko; done\n\
         sleep 1\n\
         want=$(yes vmm-net-l1 | head -c 1048576 | md5sum)\n\
         ip addr add 10.0.2.15/24 dev eth0\n\
         ip link set eth0 up\n\
         i=0; while [ $i -lt 120 ]; do ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1 && break; i=$((i+1)); done\n\
         echo @@UP\n\
         i=0\n\
         while [ $i -lt {TICKS} ]; do\n\
           i=$((i+1)); ok=BAD; n=0\n\
           while [ $n -lt 15 ]; do\n\
             got=$(timeout 10 wget -q -O - http://10.0.2.1:8080/data | md5sum)\n\
             [ \"$got\" = \"$want\" ] && {{ ok=ok; break; }}\n\
             n=$((n+1)); sleep 0.5\n\
           done\n\
           echo \"@@TICK $i $ok $n\"\n\
           [ $ok = ok ] || break\n\
           sleep 0.2\n\
         done\n\
         ping -c 2 -W 2 10.0.2.1 >/dev/null && echo @@PING\n\
         echo @@DONE\n\
         poweroff -f",
        modules = MODULES.join(" "),
    )
}

/// L1: its httpd, tap0 (the source's) at 10.0.2.1, the destination on
/// tap1 with tap0's MAC (`--paused`), the migration at fetch 3; once it
/// completed, both VMMs' guest RAM into files (`pmemsave`) and compared
/// byte for byte, then the destination's `cont` and 10.0.2.1 moved to
/// tap1; then the guest's end in the destination and both VMMs' ends and
/// what they printed.
fn companion() -> String {
    let netdev = "tap,id=n0,ifname=tap1,vhost=on";
    let dump = |file: &str| {
        format!(
            "{{\"execute\":\"pmemsave\",\"arguments\":{{\"val\":0,\"size\":{},\"filename\":\"{file}\"}}}}",
            128u64 << 20
        )
    };
    let (dump_src, dump_dst) = (dump("src.mem"), dump("dst.mem"));
    format!(
        "mkdir -p /tmp/www; yes vmm-net-l1 | head -c 1048576 > /tmp/www/data; httpd -p 8080 -h /tmp/www\n\
         i=0; while ! ip link show tap0 >/dev/null 2>&1; do sleep 0.2; i=$((i+1)); [ $i -lt 600 ] || break; done\n\
         ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up\n\
         $VMM --kernel kernel --initrd initrd --memory 128M --serial file:dst.log --qmp dst.sock \
           --netdev {netdev} --device virtio-net-pci,netdev=n0,mac={MAC} \
           --incoming unix:mig.sock --paused 2>dst.err &\n\
         dst=$!\n\
         i=0; while ! ip link show tap1 >/dev/null 2>&1; do sleep 0.2; i=$((i+1)); [ $i -lt 600 ] || break; done\n\
         ip link set tap1 address $(cat /sys/class/net/tap0/address); ip link set tap1 up\n\
         ./qmpclient qmp.sock 'file:console.log:@@TICK 3 ' \
           '{{\"execute\":\"migrate-set-capabilities\",\"arguments\":{{\"capabilities\":[{{\"capability\":\"events\",\"state\":true}}]}}}}' \
           '{{\"execute\":\"migrate-set-parameters\",\"arguments\":{{\"downtime-limit\":4000}}}}' \
           '{{\"execute\":\"migrate\",\"arguments\":{{\"uri\":\"unix:mig.sock\"}}}}' \
           'line:\"completed\"' query-migrate query-status > src.qmp 2>&1\n\
         rc=$?; echo \"@@SRCQMPEXIT $rc\"\n\
         ./qmpclient qmp.sock '{dump_src}' > dump.qmp 2>&1\n\
         ./qmpclient dst.sock '{dump_dst}' cont >> dump.qmp 2>&1\n\
         if cmp -s src.mem dst.mem; then echo @@SAME_RAM; else echo @@RAM_DIFFERS; \
           cmp -l src.mem dst.mem | head -200000 | awk '{{o=$1-1; p[int(o/4096)]=1; if (o%4096>=32) b++}} \
             END {{n=0; for (i in p) n++; print \"@@RAMDIFF pages=\" n \" beyond=\" b+0}}'; \
           cmp -l src.mem dst.mem | awk '{{print int(($1-1)/4096)}}' | uniq -c | head -20; \
           echo '@@BYTES (offset from 1, source, destination; octal)'; cmp -l src.mem dst.mem | head -24; fi\n\
         ls -l src.mem dst.mem; rm -f src.mem dst.mem\n\
         ip addr del 10.0.2.1/24 dev tap0; ip addr add 10.0.2.1/24 dev tap1\n\
         i=0; while [ $rc -eq 0 ] && ! grep -q '@@DONE' dst.log 2>/dev/null; do sleep 0.5; i=$((i+1)); [ $i -lt 360 ] || break; done\n\
         [ $rc -eq 0 ] || ./qmpclient dst.sock quit > /dev/null 2>&1\n\
         wait $dst; echo \"@@DSTEXIT $?\"\n\
         ./qmpclient qmp.sock quit > /dev/null 2>&1\n\
         echo @@SRCQMP; cat src.qmp dump.qmp; echo @@DSTERR; cat dst.err\n\
         echo @@SRCLOG; cat console.log; echo @@DSTLOG; cat dst.log; echo @@END"
    )
}

/// Whether the companion found the two RAM dumps the same, or differing
/// only in the first 32 bytes (a `pvclock_vcpu_time_info`) of one page.
fn same_ram_but_the_kvmclock(c: &str) -> bool {
    if c.contains("@@SAME_RAM") {
        return true;
    }
    let Some(line) = c.lines().find_map(|l| l.trim().strip_prefix("@@RAMDIFF ")) else {
        return false;
    };
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.parse::<u64>().ok())
    };
    field("pages=") == Some(1) && field("beyond=") == Some(0)
}

#[test]
fn the_ram_check_allows_only_one_kvmclock_record() {
    assert!(same_ram_but_the_kvmclock("x\n@@SAME_RAM\n"));
    assert!(same_ram_but_the_kvmclock(
        "@@RAM_DIFFERS\n@@RAMDIFF pages=1 beyond=0\n"
    ));
    assert!(!same_ram_but_the_kvmclock("@@RAMDIFF pages=2 beyond=0\n"));
    assert!(!same_ram_but_the_kvmclock("@@RAMDIFF pages=1 beyond=3\n"));
    assert!(!same_ram_but_the_kvmclock(
        "@@RAMDIFF pages=5000 beyond=900000\n"
    ));
    assert!(!same_ram_but_the_kvmclock("nothing"));
}

#[test]
fn debian_on_vhost_net_live_migrates_while_it_fetches_over_tcp() {
    let test = "debian_on_vhost_net_live_migrates_while_it_fetches_over_tcp";
    if !nested_only(test, "the taps must live in L1") {
        return;
    }
    nested_retry(test, || {
        let Some(g) = guest(test) else { return };
        for m in MODULES.iter().chain(L1_MODULES) {
            assert!(
                g.module(m).exists(),
                "{test}: no {m}.ko in the guest files (cargo xtask guest refreshes them)"
            );
        }
        let dir = common::TempDir::new(test);
        let initrd = test_initrd(&g, &dir, &script(), MODULES, false);
        let client = build_static(&dir, "qmpclient");
        let device = format!("virtio-net-pci,netdev=n0,mac={MAC}");
        let job = debian_job(
            &g,
            &initrd,
            [
                "--memory",
                "128M",
                "--qmp",
                "qmp.sock",
                "--serial",
                "file:console.log",
                "--netdev",
                "tap,id=n0,ifname=tap0,vhost=on",
                "--device",
                &device,
            ],
        )
        .file("qmpclient", &client)
        .timeout(std::time::Duration::from_secs(480))
        // Two VMMs at once: two L1 CPUs.
        .companion(&companion())
        .l1_cpus(2);
        let out = run(test, &g, &job);
        let c = &out.console;
        assert!(
            c.contains("@@END"),
            "{test}: the companion did not finish:\n{c}\n{}",
            out.stderr
        );
        let src_qmp = section(c, "@@SRCQMP");
        let src_log = section(c, "@@SRCLOG");
        let dst_log = section(c, "@@DSTLOG");
        let report = format!(
            "source QMP:\n{src_qmp}\ndestination stderr:\n{}\nsource log:\n{src_log}\n\
             destination log:\n{dst_log}\nvmm stderr:\n{}",
            section(c, "@@DSTERR"),
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
        let (src, dst) = (checked_ticks(src_log), checked_ticks(dst_log));
        assert!(
            src.len() >= 3 && !dst.is_empty(),
            "{test}: fetches\n{report}"
        );
        assert_ticks_go_on(test, &src, &dst, TICKS, &report);
        assert!(dst_log.contains("@@PING"), "{test}: ping after\n{report}");
        // The decisive check: at the stop, the destination's RAM is the
        // source's, the pages the kernel's vhost-net wrote included
        // (without its log, thousands of pages differ: the receive
        // buffers it filled during the passes; TCP would only retransmit
        // what they lost). One thing may differ: the first bytes of one
        // page, the vCPU's kvmclock record (version and TSC stamp), which
        // the destination's KVM rewrites for itself (seen with
        // `vhost=off` too, in the same record).
        assert!(
            same_ram_but_the_kvmclock(c),
            "{test}: the two VMMs' guest RAM differ after the migration\n{c}\n{report}"
        );
    });
}
