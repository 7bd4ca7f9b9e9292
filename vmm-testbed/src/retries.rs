//! When a nested test runs again ([`verdict`]), and the record of the
//! tests that failed a try and ran again.
//!
//! A nested test whose try fails for a named fault of the test bed runs
//! again (see the Linux tests' `nested_retry`); when the next run passes,
//! the test passes and `cargo test` shows nothing of the first (it keeps a
//! passing test's output). So every retry is also written, one line each, to the file
//! [`RETRY_LOG_ENV`] names, with the start and end of the failed try's message in a
//! details file beside it ([`details_path`]), and `cargo xtask test`
//! prints both at its end, passed or failed: a retry costs the run minutes
//! and is a fault of its own, never to go unseen.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How the failure of a try that L1 itself failed starts (L1 ended, went
/// silent, stopped its heartbeat, reported a CPU stuck, or ran no exit
/// sample before the time limit).
pub const L1_FAULT: &str = "L1 FAULT: ";

/// The most tries a nested test gets.
pub const MAX_TRIES: u32 = 3;

/// What a nested test does after its try `attempt` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It runs again: the test bed's own fault, named.
    Retry {
        /// The fault, for the retry's line.
        fault: String,
    },
    /// It fails: a named fault of the test bed, but no try left.
    OutOfTries {
        /// The fault.
        fault: String,
    },
    /// It fails: nothing names the test bed, so the nested guest's failure
    /// may be ours, and a retry would hide it.
    Unnamed,
}

/// The verdict on try `attempt` (from 1) that failed with `why` (its
/// panic message), `named` being TCG's SVM fault as the test bed's exit
/// samples named it ([`crate::l2_exits::named_fault`]), if they did. Only
/// L1's own fault ([`L1_FAULT`]) and TCG's named fault earn another try,
/// [`MAX_TRIES`] at most.
pub fn verdict(attempt: u32, why: &str, named: Option<&str>) -> Verdict {
    let fault = if why.starts_with(L1_FAULT) {
        "L1 itself failed".to_owned()
    } else if let Some(named) = named {
        format!("L1's fault, {named}")
    } else {
        return Verdict::Unnamed;
    };
    if attempt >= MAX_TRIES {
        Verdict::OutOfTries { fault }
    } else {
        Verdict::Retry { fault }
    }
}

/// The environment variable naming the file retries are appended to
/// (`cargo xtask test` sets it to `target/nested-retries.log`).
pub const RETRY_LOG_ENV: &str = "VMM_NESTED_RETRY_LOG";

/// One retry as a line: the test, how long its failed try took, the
/// fault, and the first line of the failure.
pub fn retry_line(test: &str, took: Duration, fault: &str, why: &str) -> String {
    let first = why.lines().next().unwrap_or("").trim();
    let first: String = first.chars().take(300).collect();
    format!(
        "{test}: failed try of {:.0} s: {fault}: {first}\n",
        took.as_secs_f64()
    )
}

/// Records one retry, if [`RETRY_LOG_ENV`] names a record: its
/// [`retry_line`] in the record and its [`detail_block`] in the details
/// file beside it ([`details_path`]). A record that cannot be written is
/// said on stderr, never a failure of the test.
pub fn record(test: &str, took: Duration, fault: &str, why: &str) {
    let Some(path) = std::env::var_os(RETRY_LOG_ENV) else {
        return;
    };
    let path = Path::new(&path);
    write_or_say(path, &retry_line(test, took, fault, why));
    write_or_say(&details_path(path), &detail_block(test, why));
}

/// How many of a failed try's last lines [`record`] keeps: the
/// end of the guest's console and the VMM's stderr, where the fault shows.
pub const DETAIL_LINES: usize = 80;
/// How many of its first lines it keeps too: the failed assertion and
/// what it printed first (a test's message often starts with the VMM's
/// stderr, then the whole console).
pub const DETAIL_HEAD_LINES: usize = 30;

/// The start of each block in the details file.
pub const DETAIL_HEADER: &str = "=== failed try: ";

/// The file beside the record (`PATH.details`) that keeps the end of each
/// failed try's message, which the one-line record cannot.
pub fn details_path(record: &Path) -> std::path::PathBuf {
    let mut name = record.as_os_str().to_owned();
    name.push(".details");
    name.into()
}

/// A block for the details file: a header naming `test`, then the first
/// [`DETAIL_HEAD_LINES`] and the last [`DETAIL_LINES`] lines of `why`,
/// each indented, with how many were left out between them.
pub fn detail_block(test: &str, why: &str) -> String {
    let lines: Vec<&str> = why.lines().collect();
    let keep = DETAIL_HEAD_LINES + DETAIL_LINES;
    let left_out = lines.len().saturating_sub(keep);
    let mut out = format!("{DETAIL_HEADER}{test}");
    if left_out > 0 {
        out.push_str(&format!(
            " (its first {DETAIL_HEAD_LINES} and last {DETAIL_LINES} of {} lines)",
            lines.len()
        ));
    }
    out.push('\n');
    let indent = |out: &mut String, l: &str| {
        out.push_str("    ");
        out.push_str(l);
        out.push('\n');
    };
    if left_out == 0 {
        lines.iter().for_each(|l| indent(&mut out, l));
        return out;
    }
    lines[..DETAIL_HEAD_LINES]
        .iter()
        .for_each(|l| indent(&mut out, l));
    out.push_str(&format!("    [... {left_out} lines left out ...]\n"));
    lines[lines.len() - DETAIL_LINES..]
        .iter()
        .for_each(|l| indent(&mut out, l));
    out
}

fn write_or_say(path: &Path, text: &str) {
    if let Err(e) = append(path, text) {
        eprintln!("cannot record the retry in {}: {e}", path.display());
    }
}

/// One `write` of the whole line in append mode, so that test threads
/// and processes writing at once do not interleave within a line.
fn append(path: &Path, line: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_named_fault_of_the_test_bed_earns_another_try() {
        let l1 = format!("{L1_FAULT}t: L1 hung (no heartbeat for 60 s)");
        let tcg = "TCG's SVM fault: L2 vCPU 0 exits at L1's __svm_vcpu_run+0x9c";
        let retry = |fault: &str| Verdict::Retry {
            fault: fault.to_owned(),
        };
        assert_eq!(verdict(1, &l1, None), retry("L1 itself failed"));
        assert_eq!(verdict(2, &l1, Some(tcg)), retry("L1 itself failed"));
        assert_eq!(
            verdict(1, "t: guest reset", Some(tcg)),
            retry(&format!("L1's fault, {tcg}"))
        );
        // A guest's hang, reset or wrong answer that nothing names: never
        // again, on any try.
        for attempt in 1..=MAX_TRIES {
            assert_eq!(
                verdict(attempt, "t: no @@DONE in 300 s", None),
                Verdict::Unnamed
            );
        }
        // L1_FAULT only counts at the start of the message.
        assert_eq!(
            verdict(1, &format!("t: {L1_FAULT}"), None),
            Verdict::Unnamed
        );
        assert_eq!(
            verdict(MAX_TRIES, &l1, None),
            Verdict::OutOfTries {
                fault: "L1 itself failed".to_owned()
            }
        );
    }

    #[test]
    fn a_line_names_the_test_time_fault_and_first_line() {
        let l = retry_line(
            "linux_boots",
            Duration::from_millis(61_400),
            "L1 itself failed",
            "L1 FAULT: silent for 90 s\nmore\n",
        );
        assert_eq!(
            l,
            "linux_boots: failed try of 61 s: L1 itself failed: L1 FAULT: silent for 90 s\n"
        );
        assert!(retry_line("t", Duration::ZERO, "f", "").ends_with("f: \n"));
        let long = "x".repeat(1000);
        assert!(retry_line("t", Duration::ZERO, "f", &long).len() < 400);
    }

    #[test]
    fn a_detail_block_keeps_the_end_of_the_failure() {
        let short = detail_block("t", "a\nb");
        assert_eq!(short, format!("{DETAIL_HEADER}t\n    a\n    b\n"));
        let why: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let long = detail_block("t", &why);
        assert!(long.starts_with(&format!(
            "{DETAIL_HEADER}t (its first 30 and last 80 of 200 lines)\n    line 0\n"
        )));
        assert!(long.ends_with("    line 199\n"));
        assert!(long.contains("    line 29\n    [... 90 lines left out ...]\n    line 120\n"));
        assert!(!long.contains("line 30\n") && !long.contains("line 119\n"));
        // 110 lines fit whole.
        let why: String = (0..110).map(|i| format!("line {i}\n")).collect();
        let whole = detail_block("t", &why);
        assert_eq!(whole.lines().count(), 111);
        assert!(!whole.contains("left out"));
        assert_eq!(
            details_path(Path::new("/x/nested-retries.log")),
            Path::new("/x/nested-retries.log.details")
        );
    }

    #[test]
    fn lines_append_to_the_file() {
        let dir = std::env::temp_dir().join(format!("retries-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        append(&path, "a\n").unwrap();
        append(&path, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
