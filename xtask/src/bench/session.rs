//! One L1 session of a nested suite (`linux`, `blk`, `net`): what it gave
//! and, when L1 failed, what L1 printed last, on the terminal at once.

use anyhow::Result;
use vmm_testbed::{Outcome, TestbedError};

/// L1's console from `run`, session `session` of suite `what`. A line for
/// the report goes to `notes`; an L1 fault (an early end, a time or silence
/// limit, a lockup) is also printed with the last lines of L1's console,
/// where the test bed's report of L1's CPUs and tasks is (its thousand-line
/// panic dump left out). A session that could not start is an error.
pub(super) fn l1_console(
    what: &str,
    session: usize,
    run: Result<Outcome, TestbedError>,
    notes: &mut Vec<String>,
) -> Result<String> {
    let (fault, console) = match run {
        Ok(out) => {
            notes.push(format!(
                "session {session}: L1 ready after {:.1?}, {:.1?} in all",
                out.l1_boot.unwrap_or_default(),
                out.total
            ));
            return Ok(out.console);
        }
        // L1 itself can die (TCG's emulated SVM under load): keep what it
        // reported; the suite runs what is left in a fresh L1.
        Err(TestbedError::L1Ended {
            status,
            qemu_stderr,
            console,
        }) => (
            format!(
                "L1 ended early (QEMU status {status:?}): {}",
                qemu_stderr.trim()
            ),
            console,
        ),
        Err(TestbedError::Timeout { after, console }) => {
            (format!("timed out after {after:?}"), console)
        }
        Err(TestbedError::L1Stuck { what, console }) => (what, console),
        Err(TestbedError::Silent { after, console }) => {
            (format!("L1 hung (silent for {after:?})"), console)
        }
        Err(TestbedError::NoHeartbeat { after, console, .. }) => {
            (format!("L1 hung (no heartbeat for {after:?})"), console)
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!("xtask: {what}, session {session}: {fault}; L1's console ended with:");
    for l in console_tail(&vmm_testbed::l1_panic::without_dump(&console), TAIL_LINES).lines() {
        eprintln!("    {l}");
    }
    notes.push(format!("session {session}: {fault}"));
    Ok(console)
}

/// Lines of L1's console printed after a fault.
const TAIL_LINES: usize = 30;

/// The last `n` non-empty lines of `console`.
pub(super) fn console_tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_non_empty_lines() {
        assert_eq!(console_tail("a\n\nb\r\n  \nc\n", 2), "b\nc");
        assert_eq!(console_tail("a\n", 5), "a");
        assert_eq!(console_tail("", 3), "");
    }

    #[test]
    fn a_good_session_is_a_note_and_no_fault() {
        let mut notes = Vec::new();
        let out = Outcome {
            console: "hello\n".into(),
            l1_boot: Some(std::time::Duration::from_secs(3)),
            total: std::time::Duration::from_secs(10),
            stderr: String::new(),
            status: Some(0),
            l1_console: String::new(),
        };
        let console = l1_console("net", 1, Ok(out), &mut notes).unwrap();
        assert_eq!(console, "hello\n");
        assert_eq!(notes, ["session 1: L1 ready after 3.0s, 10.0s in all"]);
    }

    #[test]
    fn a_timeout_is_a_fault_with_its_console() {
        let mut notes = Vec::new();
        let err = TestbedError::Timeout {
            after: std::time::Duration::from_secs(642),
            console: "one\ntwo\n".into(),
        };
        let console = l1_console("net", 2, Err(err), &mut notes).unwrap();
        assert_eq!(console, "one\ntwo\n");
        assert_eq!(notes, ["session 2: timed out after 642s"]);
    }
}
