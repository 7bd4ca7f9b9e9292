//! The record of nested tests that failed once and ran again.
//!
//! A nested test that fails runs a second time (see the Linux tests'
//! `nested_retry`); when the second run passes, the test passes and
//! `cargo test` shows nothing of the first (it keeps a passing test's
//! output). So every retry is also written, one line each, to the file
//! [`RETRY_LOG_ENV`] names, and `cargo xtask test` prints that file at its
//! end, passed or failed: a retry costs the run minutes and is a fault of
//! its own, never to go unseen.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

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

/// Appends `line` to the retry record, if [`RETRY_LOG_ENV`] names one.
/// A record that cannot be written is said on stderr, never a failure of
/// the test.
pub fn record(line: &str) {
    let Some(path) = std::env::var_os(RETRY_LOG_ENV) else {
        return;
    };
    if let Err(e) = append(Path::new(&path), line) {
        eprintln!(
            "cannot record the retry in {}: {e}",
            Path::new(&path).display()
        );
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
