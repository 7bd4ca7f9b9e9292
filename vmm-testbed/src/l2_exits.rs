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

use std::cell::RefCell;

/// L1's console line: `@@TESTBED-L1-SVM <address of __svm_vcpu_run>`.
pub const SVM_MARKER: &str = "@@TESTBED-L1-SVM";
/// L1's console line: `@@TESTBED-L2-EXITS vcpuN=COUNT,REASON,RIP ...`.
pub const EXITS_MARKER: &str = "@@TESTBED-L2-EXITS";
/// How far past `__svm_vcpu_run` an L2 RIP counts as L1's VMRUN code
/// (the function is about 0x170 bytes in Debian's 6.1 kvm_amd).
pub const SVM_WINDOW: u64 = 0x200;
/// How long the job script samples exits.
pub const SAMPLE_SECONDS: u32 = 2;

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
  echo 0 >$t/tracing_on; echo >$t/trace
  echo 1 >$t/events/kvm/kvm_exit/enable; echo 1 >$t/tracing_on
  sleep {SAMPLE_SECONDS}
  echo 0 >$t/tracing_on; echo 0 >$t/events/kvm/kvm_exit/enable
  echo "{EXITS_MARKER}$(awk '/kvm_exit:/ {{ v = "?"; w = "?"; r = "?"
    for (i = 1; i < NF; i++) {{ if ($i == "vcpu") v = $(i+1); if ($i == "reason") w = $(i+1); if ($i == "rip") r = $(i+1) }}
    n[v]++; last[v] = w "," r }}
    END {{ for (v in n) printf " vcpu%s=%d,%s", v, n[v], last[v] }}' $t/trace)"
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
    marker_lines(console, EXITS_MARKER)
        .map(|rest| rest.split_whitespace().filter_map(vcpu_item).collect())
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

/// This L1's `__svm_vcpu_run`, from its [`SVM_MARKER`] line.
pub fn l1_svm_vcpu_run(console: &str) -> Option<u64> {
    marker_lines(console, SVM_MARKER).find_map(parse_hex)
}

/// TCG's SVM fault, named, when a sample in `console` has an L2 vCPU's
/// last exit at a RIP inside this L1's `__svm_vcpu_run` (L1's own code:
/// no L2 guest runs there); None when there is no sample or no such vCPU.
pub fn named_fault(console: &str) -> Option<String> {
    let svm = l1_svm_vcpu_run(console)?;
    samples(console).into_iter().flatten().find_map(|v| {
        let offset = v.rip.checked_sub(svm).filter(|&o| o < SVM_WINDOW)?;
        Some(format!(
            "TCG's SVM fault: L2 vCPU {} exits ({} in {SAMPLE_SECONDS} s, the last `{}`) at L1's \
             __svm_vcpu_run+{offset:#x}, L1's own code",
            v.vcpu, v.exits, v.reason
        ))
    })
}

/// What the test bed saw of the last nested run on this thread: every
/// sample line, and the fault named, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRun {
    /// The [`EXITS_MARKER`] lines, as printed.
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
