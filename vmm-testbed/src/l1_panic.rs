//! What a panicking L1 says about itself, in a few lines.
//!
//! L1 panics on its own soft lockup and on the test bed's NMI
//! ([`crate::qemu::L1_CMDLINE`], [`crate::l1_monitor`]) and then prints
//! every CPU's backtrace and every task's stack: a few thousand lines, of
//! which the retry record keeps the first and the last. [`summary`] keeps
//! what tells a hang apart, one line each, added at the end of L1's
//! console: where each CPU was (`@@TESTBED-L1-PANIC cpu1 idle at
//! native_safe_halt+0xb/0x10`, or the task and the kernel frames it ran)
//! and where each user-space task sleeps (`@@TESTBED-L1-PANIC task vmm
//! pid 107 S: do_epoll_wait < __x64_sys_epoll_wait`): the VMM's main
//! thread, its vCPU threads, the job's shell.

/// The prefix of each summary line.
pub const PANIC_MARKER: &str = "@@TESTBED-L1-PANIC";

/// Frames kept per CPU or task.
const FRAMES: usize = 4;

/// The summary lines for `console` (one per CPU, then one per user-space
/// task, each told once), or nothing when L1 printed no backtrace.
pub fn summary(console: &str) -> Vec<String> {
    let lines: Vec<&str> = console.lines().map(strip_time).collect();
    let (mut cpus, mut tasks) = (Vec::new(), Vec::new());
    let mut cpus_seen = Vec::new();
    let mut pids_seen = Vec::new();
    let mut asked = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("Sending NMI from CPU ") {
            if let Some((_, list)) = rest.split_once(" to CPUs ") {
                asked.extend(cpu_list(list.trim_end_matches(':')));
            }
        } else if let Some(rest) = line.strip_prefix("NMI backtrace for cpu ") {
            let cpu: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if cpu.is_empty() || cpus_seen.contains(&cpu) {
                continue;
            }
            let text = match rest.split_once("skipped: idling at ") {
                Some((_, at)) => format!("idle at {}", at.trim()),
                None => cpu_block(&lines[i + 1..]),
            };
            cpus.push(format!("{PANIC_MARKER} cpu{cpu} {text}"));
            cpus_seen.push(cpu);
        } else if let Some(rest) = line.strip_prefix("task:") {
            let Some(task) = Task::parse(rest) else {
                continue;
            };
            // Kernel threads are children of kthreadd (pid 2).
            if task.ppid == "2" || task.pid == "2" || pids_seen.contains(&task.pid) {
                continue;
            }
            let frames = frames(&lines[i + 1..]);
            tasks.push(format!(
                "{PANIC_MARKER} task {} pid {} {}: {}",
                task.name,
                task.pid,
                task.state,
                if frames.is_empty() {
                    "no frames".to_owned()
                } else {
                    frames.join(" < ")
                }
            ));
            pids_seen.push(task.pid);
        }
    }
    // A CPU asked for its backtrace that never gave one did not take the
    // NMI (held in L2 by TCG, or spinning with NMIs blocked).
    for cpu in asked {
        let cpu = cpu.to_string();
        if !cpus_seen.contains(&cpu) {
            cpus.push(format!(
                "{PANIC_MARKER} cpu{cpu} gave no backtrace: it did not take the NMI"
            ));
            cpus_seen.push(cpu);
        }
    }
    cpus.extend(tasks);
    cpus
}

/// The kernel's CPU list (`1`, `1-3`, `0,2-3`); what does not parse is
/// left out.
fn cpu_list(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    // At most 64 CPUs from one range (L1 has a few).
                    out.extend((a..=b).take(64));
                }
            }
            None => out.extend(part.trim().parse::<u32>().ok()),
        }
    }
    out
}

/// `console` without L1's panic dump: everything up to the panic's first
/// line (kept), then only the test bed's own lines after it (`@@TESTBED-`:
/// L1's CPUs, the NMI, the [`summary`]). A report's tail of it shows what L1
/// printed before it went quiet and the summary, not the dump's last
/// thousand lines.
pub fn without_dump(console: &str) -> String {
    let Some(at) = console.find("Kernel panic - not syncing") else {
        return console.to_owned();
    };
    let cut = console[at..]
        .find('\n')
        .map_or(console.len(), |e| at + e + 1);
    let mut out = console[..cut].to_owned();
    for line in console[cut..]
        .lines()
        .filter(|l| l.starts_with("@@TESTBED-"))
    {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A kernel log line without its `[    1.234567] ` time stamp.
fn strip_time(line: &str) -> &str {
    let t = line.trim_start();
    match t.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => t,
    }
}

/// One CPU's backtrace block: its task and where its kernel code was.
fn cpu_block(block: &[&str]) -> String {
    let end = block
        .iter()
        .position(|l| l.starts_with("NMI backtrace for cpu ") || l.starts_with("Sending NMI"))
        .unwrap_or(block.len());
    let block = &block[..end];
    let who = block
        .iter()
        .find_map(|l| l.strip_prefix("CPU: "))
        .and_then(|l| {
            let (_, rest) = l.split_once(" PID: ")?;
            let (pid, rest) = rest.split_once(" Comm: ")?;
            let comm = rest
                .split(" Not tainted")
                .next()?
                .split(" Tainted")
                .next()?;
            Some(format!("pid {} `{}`", pid.trim(), comm.trim()))
        })
        .unwrap_or_else(|| "pid ?".to_owned());
    let rip = block
        .iter()
        .find_map(|l| l.strip_prefix("RIP: 0010:"))
        .map(|r| format!("at {}", r.trim()))
        .unwrap_or_else(|| "in user space or no kernel RIP".to_owned());
    let task_frames = block
        .iter()
        .position(|l| l.trim() == "<TASK>")
        .map(|at| frames(&block[at..]))
        .unwrap_or_default();
    if task_frames.is_empty() {
        format!("{who} {rip}")
    } else {
        format!("{who} {rip}; {}", task_frames.join(" < "))
    }
}

/// The first [`FRAMES`] sure frames of a call trace (the `?` guesses and
/// the scheduler's own frames left out), up to its end.
fn frames(block: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for l in block {
        let f = l.trim();
        if f == "</TASK>" || f.starts_with("task:") || f.starts_with("RIP: 0033") {
            break;
        }
        if f.starts_with('<')
            || f.starts_with('?')
            || f.starts_with("Call Trace")
            || f.contains(':')
            || f.starts_with("__schedule+")
            || f.starts_with("schedule+")
        {
            continue;
        }
        let name = f.split('/').next().unwrap_or(f);
        if name.contains('+') {
            out.push(name.to_owned());
        }
        if out.len() == FRAMES {
            break;
        }
    }
    out
}

/// A `task:` line of the kernel's task dump.
struct Task {
    name: String,
    state: String,
    pid: String,
    ppid: String,
}

impl Task {
    /// `rest`: the line after `task:` (`NAME state:S stack:0 pid:107
    /// ppid:100 flags:0x2`; NAME may hold spaces: `vcpu 0`).
    fn parse(rest: &str) -> Option<Self> {
        let (name, after) = rest.split_once(" state:")?;
        let field = |key: &str| {
            let at = after.find(key)? + key.len();
            Some(after[at..].split_whitespace().next()?.to_owned())
        };
        Some(Self {
            name: name.trim().to_owned(),
            state: after.split_whitespace().next()?.to_owned(),
            pid: field(" pid:")?,
            ppid: field(" ppid:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut from a real L1 panic on the test bed's NMI (2026-12-04).
    const PANIC: &str = "\
[   38.925359] Kernel panic - not syncing: NMI: Not continuing
[   38.925359] NMI backtrace for cpu 0
[   38.925359] CPU: 0 PID: 116 Comm: vcpu 0 Not tainted 6.1.0-48-cloud-amd64 #1  Debian 6.1.172-1
[   38.925359] Call Trace:
[   38.925359]  <NMI>
[   38.925359]  dump_stack_lvl+0x44/0x5c
[   38.925359]  exc_nmi+0x11e/0x150
[   38.925359] RIP: 0010:svm_vcpu_run+0x240/0x6b0 [kvm_amd]
[   38.925359] RSP: 0018:ff7e5ab800393cb8 EFLAGS: 00000046
[   38.925359]  ? svm_vcpu_run+0x240/0x6b0 [kvm_amd]
[   38.925359]  </NMI>
[   38.925359]  <TASK>
[   38.925359]  kvm_arch_vcpu_ioctl_run+0x8ac/0x1720 [kvm]
[   38.925359]  kvm_vcpu_ioctl+0x247/0x6f0 [kvm]
[   38.925359]  ? __seccomp_filter+0xe6/0x4d0
[   38.925359]  __x64_sys_ioctl+0x8d/0xd0
[   38.925359]  do_syscall_64+0x55/0x80
[   38.925359]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   38.925359] RIP: 0033:0x7f273a863d6b
[   38.925359]  </TASK>
[   38.925359] Sending NMI from CPU 0 to CPUs 1:
[   38.917695] NMI backtrace for cpu 1 skipped: idling at native_safe_halt+0xb/0x10
[   38.925359] task:kthreadd        state:S stack:0     pid:2     ppid:0      flags:0x00004000
[   38.925359] Call Trace:
[   38.925359]  <TASK>
[   38.925359]  __schedule+0x34d/0x9e0
[   38.925359]  kthreadd+0x2d6/0x300
[   38.925359]  </TASK>
[   38.925359] task:kworker/0:0     state:I stack:0     pid:7     ppid:2      flags:0x00004000
[   38.925359] Call Trace:
[   38.925359]  <TASK>
[   38.925359]  worker_thread+0xb5/0x3a0
[   38.925359]  </TASK>
[   38.925359] task:vmm             state:S stack:0     pid:107   ppid:100    flags:0x00000002
[   38.925359] Call Trace:
[   38.925359]  <TASK>
[   38.925359]  __schedule+0x34d/0x9e0
[   38.925359]  schedule+0x5a/0xd0
[   38.925359]  schedule_hrtimeout_range_clock+0x112/0x120
[   38.925359]  do_epoll_wait+0x698/0x7d0
[   38.925359]  ? ep_get_upwards_depth_proc.isra.0+0xa0/0xa0
[   38.925359]  __x64_sys_epoll_wait+0x6f/0x110
[   38.925359]  do_syscall_64+0x55/0x80
[   38.925359]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   38.925359] RIP: 0033:0x7f273a86ef36
[   38.925359]  </TASK>
[   38.925359] task:vcpu 0          state:R  running task     stack:0     pid:116   ppid:100    flags:0x00000000
[   38.925359] Call Trace:
[   38.925359]  <TASK>
[   38.925359]  </TASK>
[   40.000000] task:vmm             state:S stack:0     pid:107   ppid:100    flags:0x00000002
";

    #[test]
    fn each_cpu_and_each_user_task_once() {
        assert_eq!(
            summary(PANIC),
            [
                "@@TESTBED-L1-PANIC cpu0 pid 116 `vcpu 0` at svm_vcpu_run+0x240/0x6b0 \
                 [kvm_amd]; kvm_arch_vcpu_ioctl_run+0x8ac < kvm_vcpu_ioctl+0x247 < \
                 __x64_sys_ioctl+0x8d < do_syscall_64+0x55",
                "@@TESTBED-L1-PANIC cpu1 idle at native_safe_halt+0xb/0x10",
                "@@TESTBED-L1-PANIC task vmm pid 107 S: schedule_hrtimeout_range_clock+0x112 < \
                 do_epoll_wait+0x698 < __x64_sys_epoll_wait+0x6f < do_syscall_64+0x55",
                "@@TESTBED-L1-PANIC task vcpu 0 pid 116 R: no frames",
            ]
        );
    }

    #[test]
    fn a_cpu_that_never_answered_the_nmi_is_named() {
        let console = "NMI backtrace for cpu 0\nCPU: 0 PID: 9 Comm: vmm Not tainted\n\
                       Sending NMI from CPU 0 to CPUs 1-2,5:\n\
                       NMI backtrace for cpu 2 skipped: idling at default_idle+0x1/0x2\n";
        assert_eq!(
            summary(console),
            [
                "@@TESTBED-L1-PANIC cpu0 pid 9 `vmm` in user space or no kernel RIP",
                "@@TESTBED-L1-PANIC cpu2 idle at default_idle+0x1/0x2",
                "@@TESTBED-L1-PANIC cpu1 gave no backtrace: it did not take the NMI",
                "@@TESTBED-L1-PANIC cpu5 gave no backtrace: it did not take the NMI",
            ]
        );
        assert_eq!(cpu_list("0,2-3"), [0, 2, 3]);
        assert_eq!(cpu_list("x,7-,9"), [9]);
        assert_eq!(cpu_list("0-4294967295").len(), 64);
    }

    #[test]
    fn a_report_leaves_the_dump_out() {
        let console = format!(
            "@@TESTBED-OUT-BEGIN\nlast line\n{PANIC}@@TESTBED-L1-NMI sent\n{}\n",
            summary(PANIC).join("\n")
        );
        let short = without_dump(&console);
        assert!(short.starts_with(
            "@@TESTBED-OUT-BEGIN\nlast line\n[   38.925359] Kernel panic - not syncing: NMI"
        ));
        assert!(!short.contains("kthreadd"), "{short}");
        assert!(short.contains("@@TESTBED-L1-NMI sent\n@@TESTBED-L1-PANIC cpu0 "));
        assert_eq!(short.lines().count(), 3 + 1 + 4);
        assert_eq!(without_dump("no panic\n"), "no panic\n");
        assert_eq!(
            without_dump("Kernel panic - not syncing"),
            "Kernel panic - not syncing"
        );
    }

    #[test]
    fn no_panic_no_lines_and_odd_input_is_no_panic() {
        assert!(summary("@@TESTBED-L1-READY 2.1\nhello\n").is_empty());
        // Cut short, garbled or empty: never a panic, at most a "?".
        for odd in [
            "NMI backtrace for cpu ",
            "NMI backtrace for cpu 3",
            "task:",
            "task:x state:",
            "task:x state:S pid:",
            "[ 1.0] task:y state:D stack:0 pid:9 ppid:",
            "[",
            "[ x] CPU: 0 PID:",
        ] {
            let _ = summary(odd);
        }
        assert_eq!(
            summary("NMI backtrace for cpu 3\nCPU: 3 PID: 9"),
            ["@@TESTBED-L1-PANIC cpu3 pid ? in user space or no kernel RIP"]
        );
    }
}
