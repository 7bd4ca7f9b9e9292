//! Where a stuck L2 guest is, seen from L1's KVM, so that a failed nested
//! run can be told apart as TCG's SVM fault or not.
//!
//! Every nested hang caught with a vCPU dump had an L2 vCPU holding L1's
//! own registers from the instruction after L1's emulated `VMRUN`
//! (`__svm_vcpu_run` + 0x9c in kvm_amd: docs/nested/README.md), under our
//! VMM and QEMU alike: a fault of TCG's SVM emulation, not of the VMM.
//! The job script (see [`crate::l1`]) prints where this L1 put
//! `__svm_vcpu_run` ([`SVM_MARKER`]) and, when the VMM is still running
//! late (near the job's time limit, or seconds after its companion
//! ended), samples L1's `kvm:kvm_exit` trace event for two seconds and
//! prints each L2 vCPU's exit count and its last exit's reason and RIP
//! ([`EXITS_MARKER`]). [`named_fault`] reads both from L1's console.
//!
//! A guest that resets by a triple fault leaves no registers to read (on
//! AMD, KVM has reset the vCPU by the time the VMM hears of it), so L1
//! also records every L2 exit from the job's start (the trace event stays
//! on for the whole run: turning it on and off while the guest runs would
//! patch L1's code under it, see [`crate::l1_pin`]), with a trigger that
//! stops the recording at the first `shutdown` exit. The job script then
//! prints each vCPU's last exits up to it ([`RESET_MARKER`]), and a reset
//! whose exits were at L1's VMRUN code is named as TCG's fault too.

use std::cell::RefCell;

/// L1's console line: `@@TESTBED-L1-SVM <address of __svm_vcpu_run>`.
pub const SVM_MARKER: &str = "@@TESTBED-L1-SVM";
/// L1's console line: `@@TESTBED-L2-EXITS vcpuN=COUNT,REASON,RIP ...`.
pub const EXITS_MARKER: &str = "@@TESTBED-L2-EXITS";
/// L1's console line: `@@TESTBED-L2-RESET vcpuN=REASON,RIP;REASON,RIP...`,
/// each vCPU's last exits (at most [`RESET_EXITS`], oldest first) up to an
/// L2 triple fault's `shutdown` exit.
pub const RESET_MARKER: &str = "@@TESTBED-L2-RESET";
/// The environment variable that, set to `0`, leaves L1's record of L2
/// exits out (to measure what it costs: a trace event per exit).
pub const RECORD_ENV: &str = "VMM_TESTBED_L2_RECORD";

/// Whether L1 records L2 exits for the whole job (see the module docs).
pub fn record_wanted() -> bool {
    std::env::var(RECORD_ENV).map_or(true, |v| v != "0")
}

/// L1's trace buffer (KiB per CPU) while it records every L2 exit: only
/// the last few exits before a triple fault are read ([`RESET_EXITS`] per
/// vCPU; 32 KiB keeps some 500 a CPU). Every benchmark's guest ends by a
/// triple fault (`reboot=t`), which stops the recording until the
/// watcher, every 15 s, reads the record and starts it again: with the
/// kernel's default 1408 KiB a CPU that read (busybox `grep` and `awk`
/// over some 50 000 lines, under TCG) took 5-9 s of L1's CPU, often
/// inside the next VMM's measured rows.
pub const RECORD_KB: u32 = 32;
/// L1's trace buffer (KiB per CPU) for a [`SAMPLE_SECONDS`] sample of
/// every exit: the kernel's default, so the sample counts them all.
pub const SAMPLE_KB: u32 = 1408;

/// How many of each vCPU's last exits a [`RESET_MARKER`] line shows.
pub const RESET_EXITS: usize = 8;
/// How far past `__svm_vcpu_run` an L2 RIP counts as L1's VMRUN code
/// (the function is about 0x170 bytes in Debian's 6.1 kvm_amd).
pub const SVM_WINDOW: u64 = 0x200;
/// AMD's exit code for a shutdown (a triple fault): what stops L1's
/// recording of L2 exits.
const SVM_EXIT_SHUTDOWN: u32 = 0x7f;
/// How long the job script samples exits.
pub const SAMPLE_SECONDS: u32 = 2;

/// The awk statements that take a `kvm_exit` trace line apart: its vCPU
/// (`v`), reason (`w`) and RIP (`r`), `?` where missing.
const KVM_EXIT_FIELDS: &str = r#"v = "?"; w = "?"; r = "?"
    for (i = 1; i < NF; i++) { if ($i == "vcpu") v = $(i+1); if ($i == "reason") w = $(i+1); if ($i == "rip") r = $(i+1) }"#;

/// The shell function `l2_exits` the job script calls (busybox sh, awk).
pub fn sampler() -> String {
    format!(
        r#"l1_svm() {{
  echo "{SVM_MARKER} $(grep -w __svm_vcpu_run /proc/kallsyms | head -1 | cut -d' ' -f1)"
}}
l2_exits() {{
  t=/sys/kernel/tracing
  [ -e $t/events/kvm/kvm_exit/enable ] || mount -t tracefs tracefs $t 2>/dev/null
  if [ ! -e $t/events/kvm/kvm_exit/enable ]; then
    echo "{EXITS_MARKER} none: L1 has no kvm_exit trace event"; return
  fi
  l2_resets
  touch /tmp/l2_sampling
  echo 0 >$t/tracing_on; echo >$t/trace; echo {SAMPLE_KB} >$t/buffer_size_kb
  echo 1 >$t/events/kvm/kvm_exit/enable; echo 1 >$t/tracing_on
  sleep {SAMPLE_SECONDS}
  echo 0 >$t/tracing_on
  echo "{EXITS_MARKER}$(awk '/kvm_exit:/ {{ {KVM_EXIT_FIELDS}
    n[v]++; last[v] = w "," r }}
    END {{ for (v in n) printf " vcpu%s=%d,%s", v, n[v], last[v] }}' $t/trace)"
  echo >$t/trace; echo {RECORD_KB} >$t/buffer_size_kb; echo 1 >$t/tracing_on
  rm -f /tmp/l2_sampling
}}
l2_trace_start() {{
  t=/sys/kernel/tracing
  [ -e $t/events/kvm/kvm_exit/enable ] || mount -t tracefs tracefs $t 2>/dev/null
  [ -e $t/events/kvm/kvm_exit/enable ] || return
  echo 'traceoff if exit_reason == {SVM_EXIT_SHUTDOWN}' >$t/events/kvm/kvm_exit/trigger 2>/dev/null
  echo 0 >$t/tracing_on; echo >$t/trace; echo {RECORD_KB} >$t/buffer_size_kb
  echo 1 >$t/events/kvm/kvm_exit/enable; echo 1 >$t/tracing_on
}}
l2_resets() {{
  t=${{TRACEFS:-/sys/kernel/tracing}}
  [ -e $t/trace ] && [ ! -e /tmp/l2_sampling ] && [ "$(cat $t/tracing_on)" = 0 ] || return 0
  grep -q ' reason shutdown ' $t/trace || return 0
  echo "{RESET_MARKER}$(awk '/kvm_exit:/ {{ {KVM_EXIT_FIELDS}
    last[v, n[v] % {RESET_EXITS}] = w "," r; n[v]++ }}
    END {{ for (v in n) {{ c = n[v] < {RESET_EXITS} ? n[v] : {RESET_EXITS}; printf " vcpu%s=", v
      for (j = n[v] - c; j < n[v]; j++) printf "%s%s", (j > n[v] - c ? ";" : ""), last[v, j % {RESET_EXITS}] }} }}' $t/trace)"
  echo >$t/trace; echo 1 >$t/tracing_on
}}
"#
    )
}

/// The start of the line an interactive L1 prints on its console (the
/// user's terminal) when a sample names TCG's SVM fault.
pub const INTERACTIVE_FAULT: &str = "test bed: TCG's SVM fault";

/// The shell function `l2_fault` (after [`sampler`]'s): samples exits and,
/// when an L2 vCPU's last exit is inside this L1's `__svm_vcpu_run`, prints
/// one [`INTERACTIVE_FAULT`] line (CR LF: the VMM holds the terminal raw).
/// Silent otherwise: an interactive run calls it now and then.
pub fn interactive_fault_check() -> String {
    format!(
        r#"l2_fault() {{
  svm=$(grep -w __svm_vcpu_run ${{KALLSYMS:-/proc/kallsyms}} | head -1 | cut -d' ' -f1)
  case $svm in [0-9a-f]*) ;; *) return;; esac
  s=$(l2_exits)
  for it in ${{s#{EXITS_MARKER}}}; do
    rip=${{it##*,}}
    case $rip in 0x[0-9a-f]*) ;; *) continue;; esac
    off=$((rip - 0x$svm))
    if [ $off -ge 0 ] && [ $off -lt {SVM_WINDOW} ]; then
      v=${{it%%=*}}; rest=${{it#*=}}; why=${{rest#*,}}
      printf "{INTERACTIVE_FAULT}: L2 vCPU %s exits (%s in {SAMPLE_SECONDS} s, the last %s) at L1's __svm_vcpu_run+0x%x, L1's own code: the test bed's fault (QEMU/TCG's emulation of AMD SVM), not the VMM's. Ctrl-A x, and run again.\\r\\n" "${{v#vcpu}}" "${{rest%%,*}}" "${{why%%,*}}" $off
      return
    fi
  done
}}
"#
    )
}

/// One L2 vCPU in a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuExits {
    /// Its index (KVM's vCPU id).
    pub vcpu: u32,
    /// Exits in the sample.
    pub exits: u64,
    /// The last exit's reason, as the trace event names it.
    pub reason: String,
    /// The guest RIP at the last exit.
    pub rip: u64,
}

/// `@@TESTBED-L2-EXITS` lines of `console`, each parsed (malformed items
/// are left out).
pub fn samples(console: &str) -> Vec<Vec<VcpuExits>> {
    marker_items(console, EXITS_MARKER, vcpu_item)
}

/// Each `marker` line of `console` as its blank-separated items, each
/// parsed by `item` (the ones it refuses left out).
fn marker_items<T>(console: &str, marker: &str, item: fn(&str) -> Option<T>) -> Vec<Vec<T>> {
    marker_lines(console, marker)
        .map(|rest| rest.split_whitespace().filter_map(item).collect())
        .collect()
}

fn vcpu_item(item: &str) -> Option<VcpuExits> {
    let (name, value) = item.split_once('=')?;
    let vcpu = name.strip_prefix("vcpu")?.parse().ok()?;
    let mut parts = value.split(',');
    let exits = parts.next()?.parse().ok()?;
    let reason = parts.next()?.to_owned();
    let rip = parse_hex(parts.next()?)?;
    Some(VcpuExits {
        vcpu,
        exits,
        reason,
        rip,
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The rest of each line of `console` that starts with `marker`.
fn marker_lines<'a>(console: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> {
    console
        .lines()
        .filter_map(move |l| l.trim_end_matches('\r').strip_prefix(marker))
}

/// One L2 vCPU's last exits before a triple fault, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetExits {
    /// Its index (KVM's vCPU id).
    pub vcpu: u32,
    /// (reason, RIP) of each exit.
    pub exits: Vec<(String, u64)>,
}

/// `@@TESTBED-L2-RESET` lines of `console`, each parsed (malformed items
/// and exits are left out).
pub fn resets(console: &str) -> Vec<Vec<ResetExits>> {
    marker_items(console, RESET_MARKER, reset_item)
}

fn reset_item(item: &str) -> Option<ResetExits> {
    let (name, value) = item.split_once('=')?;
    let vcpu = name.strip_prefix("vcpu")?.parse().ok()?;
    let exits = value
        .split(';')
        .filter_map(|e| {
            let (reason, rip) = e.split_once(',')?;
            Some((reason.to_owned(), parse_hex(rip)?))
        })
        .collect();
    Some(ResetExits { vcpu, exits })
}

/// This L1's `__svm_vcpu_run`, from its [`SVM_MARKER`] line.
pub fn l1_svm_vcpu_run(console: &str) -> Option<u64> {
    marker_lines(console, SVM_MARKER).find_map(parse_hex)
}

/// TCG's SVM fault, named, when a sample in `console` has an L2 vCPU's
/// last exit at a RIP inside this L1's `__svm_vcpu_run` (L1's own code:
/// no L2 guest runs there); None when there is no sample or no such vCPU.
/// A reset ([`RESET_MARKER`]) whose vCPU exited at such a RIP in its
/// last exits before the triple fault is named the same way.
pub fn named_fault(console: &str) -> Option<String> {
    let svm = l1_svm_vcpu_run(console)?;
    let at_vmrun = |rip: u64| rip.checked_sub(svm).filter(|&o| o < SVM_WINDOW);
    let sampled = samples(console).into_iter().flatten().find_map(|v| {
        let offset = at_vmrun(v.rip)?;
        Some(format!(
            "TCG's SVM fault: L2 vCPU {} exits ({} in {SAMPLE_SECONDS} s, the last `{}`) at L1's \
             __svm_vcpu_run+{offset:#x}, L1's own code",
            v.vcpu, v.exits, v.reason
        ))
    });
    sampled.or_else(|| {
        resets(console).into_iter().flatten().find_map(|v| {
            let (reason, offset) = v
                .exits
                .iter()
                .find_map(|(reason, rip)| Some((reason, at_vmrun(*rip)?)))?;
            Some(format!(
                "TCG's SVM fault: the guest reset by a triple fault after L2 vCPU {} exited \
                 (`{reason}`) at L1's __svm_vcpu_run+{offset:#x}, L1's own code",
                v.vcpu
            ))
        })
    })
}

/// What the test bed saw of the last nested run on this thread: every
/// sample line, and the fault named, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRun {
    /// The [`EXITS_MARKER`] and [`RESET_MARKER`] lines, as printed.
    pub samples: Vec<String>,
    /// [`named_fault`] of its console.
    pub named: Option<String>,
}

thread_local! {
    static LAST: RefCell<LastRun> = RefCell::new(LastRun::default());
}

/// Records what `console` (a whole nested run's) says, for [`take_last_run`].
pub(crate) fn record(console: &str) {
    let run = LastRun {
        samples: marker_lines(console, EXITS_MARKER)
            .map(|l| format!("{EXITS_MARKER}{l}"))
            .chain(marker_lines(console, RESET_MARKER).map(|l| format!("{RESET_MARKER}{l}")))
            .collect(),
        named: named_fault(console),
    };
    LAST.with(|l| *l.borrow_mut() = run);
}

/// What the last nested run on this thread left (see [`LastRun`]), and
/// forgets it: a test that failed asks whether TCG's fault was seen.
pub fn take_last_run() -> LastRun {
    LAST.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVM: &str = "@@TESTBED-L1-SVM ffffffffc0377d30\r\n";

    #[test]
    fn a_vcpu_at_l1s_vmrun_is_named() {
        let console = format!(
            "{SVM}guest line\r\n@@TESTBED-L2-EXITS vcpu1=812,hlt,0xffffffff81c3e0c4 \
             vcpu0=4031,intr,0xffffffffc0377dcc\r\nmore\r\n"
        );
        let named = named_fault(&console).expect("named");
        assert!(
            named.contains("vCPU 0") && named.contains("+0x9c"),
            "{named}"
        );
        assert!(
            named.contains("4031") && named.contains("`intr`"),
            "{named}"
        );
        assert_eq!(samples(&console)[0].len(), 2);
        record(&console);
        let last = take_last_run();
        assert_eq!(last.named, Some(named));
        assert_eq!(last.samples.len(), 1);
        assert_eq!(take_last_run(), LastRun::default(), "taken once");
    }

    #[test]
    fn guest_rips_and_missing_lines_name_nothing() {
        // The guest's own kernel, below and just past the window.
        let below = format!("{SVM}@@TESTBED-L2-EXITS vcpu0=5,io,0xffffffffc0377d2f\n");
        assert_eq!(named_fault(&below), None);
        let past = format!("{SVM}@@TESTBED-L2-EXITS vcpu0=5,io,0xffffffffc0377f30\n");
        assert_eq!(named_fault(&past), None);
        // No sample, no symbol, or L1 without the trace event.
        assert_eq!(named_fault(SVM), None);
        assert_eq!(
            named_fault("@@TESTBED-L2-EXITS vcpu0=5,io,0xffffffffc0377dcc\n"),
            None
        );
        let none = format!("{SVM}@@TESTBED-L2-EXITS none: L1 has no kvm_exit trace event\n");
        assert_eq!(named_fault(&none), None);
        assert!(samples(&none)[0].is_empty());
    }

    /// Runs `l2_fault` under bash (L1 runs busybox sh; both do 64-bit
    /// arithmetic, which dash does not) with a fake `l2_exits` printing
    /// `sample` and a fake kallsyms.
    fn interactive_check(sample: &str) -> String {
        let kallsyms = std::env::temp_dir().join(format!(
            "vmm-testbed-kallsyms-{}-{}",
            std::process::id(),
            sample.len()
        ));
        std::fs::write(
            &kallsyms,
            "ffffffffc0377c00 t svm_vcpu_free\t[kvm_amd]\n\
             ffffffffc0377d30 T __svm_vcpu_run\t[kvm_amd]\n",
        )
        .unwrap();
        let script = format!(
            "{}l2_exits() {{ echo '{sample}'; }}\nl2_fault\n",
            interactive_fault_check()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("KALLSYMS", &kallsyms)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&kallsyms);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn an_interactive_l1_names_the_fault_and_is_otherwise_silent() {
        let named = interactive_check(
            "@@TESTBED-L2-EXITS vcpu1=812,hlt,0xffffffff81c3e0c4 vcpu0=4031,intr,0xffffffffc0377dcc",
        );
        assert!(named.starts_with(INTERACTIVE_FAULT), "{named}");
        assert!(
            named.contains(
                "L2 vCPU 0 exits (4031 in 2 s, the last intr) at L1's __svm_vcpu_run+0x9c"
            ),
            "{named}"
        );
        assert!(
            named.ends_with("run again.\r\n") && named.lines().count() == 1,
            "{named}"
        );
        // The guest's own code, just below and just past the window; no
        // trace event; a malformed RIP.
        for quiet in [
            "@@TESTBED-L2-EXITS vcpu0=5,io,0xffffffffc0377d2f vcpu1=5,io,0xffffffffc0377f30",
            "@@TESTBED-L2-EXITS none: L1 has no kvm_exit trace event",
            "@@TESTBED-L2-EXITS vcpu0=5,io,? vcpu1=5,io,0xzz",
        ] {
            assert_eq!(interactive_check(quiet), "", "{quiet}");
        }
    }

    #[test]
    fn a_reset_after_exits_at_l1s_vmrun_is_named() {
        let console = format!(
            "{SVM}@@TESTBED-L2-RESET vcpu1=hlt,0xffffffff81c3e0c4 \
             vcpu0=npf,0xffffffffc0377dcc;npf,0xffffffffc0377dcc;shutdown,0xffffffffc0377dcc\r\n"
        );
        let r = resets(&console);
        assert_eq!(r[0].len(), 2);
        assert_eq!(r[0][1].exits.len(), 3);
        assert_eq!(
            r[0][1].exits[2],
            ("shutdown".to_owned(), 0xffff_ffff_c037_7dcc)
        );
        let named = named_fault(&console).expect("named");
        assert!(
            named.contains("triple fault") && named.contains("vCPU 0") && named.contains("+0x9c"),
            "{named}"
        );
        record(&console);
        assert_eq!(take_last_run().samples.len(), 1, "the reset line is kept");
        // A guest that faulted in its own code: kept, not named.
        let own = format!(
            "{SVM}@@TESTBED-L2-RESET vcpu0=io,0xffffffff81000000;shutdown,0xffffffff81c3e0c4\n"
        );
        assert_eq!(named_fault(&own), None);
        assert_eq!(resets(&own)[0][0].exits.len(), 2);
    }

    /// `l2_resets` under bash (see [`interactive_check`]) on a fake trace
    /// folder: `trace` holds `trace`, tracing is off as L1's trigger
    /// leaves it.
    fn resets_from_trace(trace: &str, tracing_on: &str) -> (String, String, String) {
        let dir = std::env::temp_dir().join(format!(
            "vmm-testbed-tracefs-{}-{}",
            std::process::id(),
            trace.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trace"), trace).unwrap();
        std::fs::write(dir.join("tracing_on"), tracing_on).unwrap();
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("{}l2_resets\n", sampler())])
            .env("TRACEFS", &dir)
            .output()
            .unwrap();
        let left = std::fs::read_to_string(dir.join("trace")).unwrap();
        let on = std::fs::read_to_string(dir.join("tracing_on")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{out:?}");
        (String::from_utf8(out.stdout).unwrap(), left, on)
    }

    #[test]
    fn l1_prints_each_vcpus_last_exits_up_to_a_shutdown() {
        let line = |cpu: u32, reason: &str, rip: &str| {
            format!(
                "        vcpu {cpu}-120 [001] d.... 12.5: kvm_exit: vcpu {cpu} reason {reason} \
                 rip {rip} info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
            )
        };
        let mut trace = String::from("# tracer: nop\n");
        for i in 0..10 {
            trace.push_str(&line(0, "io", &format!("0xffffffff8100000{i}")));
        }
        trace.push_str(&line(1, "hlt", "0xffffffff81c3e0c4"));
        trace.push_str(&line(0, "shutdown", "0xffffffffc0377dcc"));
        let (out, left, on) = resets_from_trace(&trace, "0\n");
        let r = resets(&out);
        assert_eq!(r.len(), 1, "{out}");
        let vcpu0 = r[0].iter().find(|v| v.vcpu == 0).expect("vCPU 0");
        assert_eq!(vcpu0.exits.len(), RESET_EXITS, "{out}");
        assert_eq!(
            vcpu0.exits[0].1, 0xffff_ffff_8100_0003,
            "oldest kept: {out}"
        );
        assert_eq!(vcpu0.exits[7].0, "shutdown", "{out}");
        let vcpu1 = r[0].iter().find(|v| v.vcpu == 1).expect("vCPU 1");
        assert_eq!(vcpu1.exits, [("hlt".to_owned(), 0xffff_ffff_81c3_e0c4)]);
        // The record is cleared and recording goes on, for a next reset.
        assert!(!left.contains("kvm_exit"), "{left}");
        assert_eq!(on.trim(), "1");
        // Recording still on, or off with no shutdown in it: nothing.
        assert_eq!(resets_from_trace(&trace, "1\n").0, "");
        assert_eq!(resets_from_trace(&line(0, "io", "0x1"), "0\n").0, "");
    }

    #[test]
    fn malformed_items_are_left_out() {
        let s = samples(
            "@@TESTBED-L2-EXITS vcpu?=3,io,0x1 vcpu0=x,io,0x1 vcpu1=3,io vcpu2=3,io,zz \
             vcpu3=7,npf,0x10 =,, vcpu",
        );
        assert_eq!(
            s[0],
            [VcpuExits {
                vcpu: 3,
                exits: 7,
                reason: "npf".into(),
                rip: 0x10
            }]
        );
        // A guest line that only contains the marker is not a sample.
        assert!(samples("guest: @@TESTBED-L2-EXITS vcpu0=1,io,0x1").is_empty());
    }
}
