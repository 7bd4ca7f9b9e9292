//! `cargo xtask fuzz [TARGET...] [--seconds N] [--sanitizer S]`: builds the
//! libFuzzer targets in `fuzz/` with cargo-fuzz and runs each for N
//! seconds, one at a time.
//!
//! cargo-fuzz passes nightly-only flags (`-Zsanitizer=address`, the
//! sanitizer-coverage passes) to rustc; `RUSTC_BOOTSTRAP=1` lets the
//! machine's stable toolchain take them, so no nightly is needed.
//!
//! The builds go to `target/fuzz/<sanitizer>/`. Each target reads its
//! seeds from `fuzz/corpus/<target>/` (in the tree, never written) and keeps
//! what it finds in `target/fuzz/corpus/<target>/` (kept between runs on
//! one machine); its log is `target/fuzz/logs/<target>.log`. A crash or a timeout fails the task
//! and names the reproducer under `target/fuzz/artifacts/<target>/`; its
//! bytes belong in a regression test of the crate concerned.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::cmd;

/// Seconds per target unless `--seconds` says otherwise.
const DEFAULT_SECONDS: u64 = 60;
/// One input running longer than this is a hang (libFuzzer's `-timeout`).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// The parsed command line.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    targets: Vec<String>,
    seconds: u64,
    sanitizer: String,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut out = Args {
        targets: Vec::new(),
        seconds: DEFAULT_SECONDS,
        sanitizer: "address".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let n = it.next().context("--seconds needs a number")?;
                out.seconds = n
                    .parse()
                    .with_context(|| format!("--seconds: `{n}` is not a whole number"))?;
                ensure!(out.seconds > 0, "--seconds must be at least 1");
            }
            "--sanitizer" => {
                let s = it.next().context("--sanitizer needs a name")?;
                ensure!(
                    matches!(s.as_str(), "address" | "none"),
                    "--sanitizer: `{s}` is neither address nor none"
                );
                out.sanitizer.clone_from(s);
            }
            flag if flag.starts_with('-') => bail!(
                "fuzz: unknown argument `{flag}` (usage: fuzz [TARGET...] [--seconds N] [--sanitizer address|none])"
            ),
            target => out.targets.push(target.to_string()),
        }
    }
    Ok(out)
}

/// What libFuzzer's output says of one run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    /// `stat::number_of_executed_units`.
    execs: Option<u64>,
    /// `stat::average_exec_per_sec`.
    execs_per_sec: Option<u64>,
    /// Edges covered (`cov:`) on the last status line.
    cov: Option<u64>,
    /// Features (`ft:`) on the last status line.
    ft: Option<u64>,
    /// Corpus size (`corp: N/...`) on the last status line.
    corpus: Option<u64>,
    /// The input libFuzzer wrote for a crash, timeout or leak.
    reproducer: Option<String>,
    /// libFuzzer's name for what went wrong (`deadly signal`, `timeout`...).
    failure: Option<String>,
}

/// The number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn parse_stats(log: &str) -> Stats {
    let mut s = Stats::default();
    for line in log.lines() {
        if let Some(n) = number_after(line, "stat::number_of_executed_units:") {
            s.execs = Some(n);
        }
        if let Some(n) = number_after(line, "stat::average_exec_per_sec:") {
            s.execs_per_sec = Some(n);
        }
        // Status lines: "#1234\tNEW    cov: 56 ft: 78 corp: 9/10b ...".
        if line.starts_with('#') && line.contains(" cov: ") {
            s.cov = number_after(line, " cov: ");
            s.ft = number_after(line, " ft: ");
            s.corpus = number_after(line, " corp: ");
        }
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            s.reproducer = Some(path.trim().to_string());
        }
        // "==1== ERROR: libFuzzer: deadly signal",
        // "==1==ERROR: AddressSanitizer: heap-buffer-overflow on ...".
        if let Some(what) = line.split("ERROR: ").nth(1) {
            let what = what.strip_prefix("libFuzzer: ").unwrap_or(what);
            s.failure.get_or_insert_with(|| what.trim().to_string());
        }
    }
    s
}

/// Makes sure `cargo fuzz` works, installing cargo-fuzz if it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = || {
        cmd::cargo(["fuzz", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    cmd::run(&mut cmd::cargo(["install", "cargo-fuzz", "--locked"]))?;
    ensure!(
        works(),
        "`cargo fuzz` still fails after installing cargo-fuzz"
    );
    Ok(())
}

/// A `cargo fuzz` command on the machine's stable toolchain.
fn cargo_fuzz<const N: usize>(args: [&str; N]) -> Command {
    let mut c = cmd::cargo(["fuzz"]);
    c.args(args).env("RUSTC_BOOTSTRAP", "1");
    c
}

/// The target names `cargo fuzz list` reports.
fn all_targets() -> Result<Vec<String>> {
    let out = cmd::output(&mut cargo_fuzz(["list", "--fuzz-dir", "fuzz"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect())
}

/// The host's target triple (cargo-fuzz builds for it by default).
fn host_triple() -> Result<String> {
    let out = cmd::output(Command::new("rustc").arg("-vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// `cargo xtask fuzz`.
pub fn task(args: &[String]) -> Result<()> {
    let args = parse_args(args)?;
    ensure_cargo_fuzz()?;
    let known = all_targets()?;
    let targets = if args.targets.is_empty() {
        known.clone()
    } else {
        for t in &args.targets {
            ensure!(
                known.contains(t),
                "fuzz: no target `{t}` (targets: {})",
                known.join(", ")
            );
        }
        args.targets.clone()
    };
    let root = cmd::root();
    let out = root.join("target/fuzz");

    let start = Instant::now();
    // One build folder per sanitizer, so that switching does not rebuild.
    let build_dir = out.join(&args.sanitizer);
    let mut build = cargo_fuzz([
        "build",
        "--fuzz-dir",
        "fuzz",
        "--sanitizer",
        &args.sanitizer,
    ]);
    build.arg("--target-dir").arg(&build_dir);
    if targets.len() == 1 {
        build.arg(&targets[0]);
    }
    cmd::run(&mut build)?;
    eprintln!(
        "xtask fuzz: built in {:.1} s (sanitizer: {})",
        start.elapsed().as_secs_f64(),
        args.sanitizer
    );
    let bin_dir = build_dir.join(host_triple()?).join("release");

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for target in &targets {
        eprintln!("xtask fuzz: {target} for {} s", args.seconds);
        let stats = run_target(&root, &out, &bin_dir, target, args.seconds)?;
        if stats.failure.is_some() {
            failures.push((target.clone(), stats.reproducer.clone()));
        }
        rows.push((target.clone(), stats));
    }
    print!("{}", table(&rows, args.seconds));
    if !failures.is_empty() {
        let mut msg = String::new();
        for (target, reproducer) in &failures {
            match reproducer {
                Some(path) => {
                    let _ = writeln!(
                        msg,
                        "  {target}: reproducer {path}\n    replay: {} {path}",
                        bin_dir.join(target).display()
                    );
                }
                None => {
                    let _ = writeln!(msg, "  {target}: failed without a reproducer (see its log)");
                }
            }
        }
        bail!(
            "{} fuzz target(s) failed; make each reproducer a regression test in the crate \
             concerned:\n{msg}",
            failures.len()
        );
    }
    Ok(())
}

/// Runs one target's binary for `seconds`; its log goes to
/// `target/fuzz/logs/<target>.log`, and its tail to stderr when it fails.
fn run_target(
    root: &Path,
    out: &Path,
    bin_dir: &Path,
    target: &str,
    seconds: u64,
) -> Result<Stats> {
    let work = out.join("corpus").join(target);
    let artifacts = out.join("artifacts").join(target);
    let logs = out.join("logs");
    for dir in [&work, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let seeds = root.join("fuzz/corpus").join(target);
    let dict = root.join("fuzz/dict").join(format!("{target}.dict"));
    let bin = bin_dir.join(target);
    let mut c = Command::new(&bin);
    // New inputs go to the first folder; the seeds are only read.
    c.arg(&work);
    if seeds.is_dir() {
        c.arg(&seeds);
    }
    c.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if dict.is_file() {
        c.arg(format!("-dict={}", dict.display()));
    }
    c.current_dir(root)
        .stdin(Stdio::null())
        .env("RUST_BACKTRACE", "1");
    let output = c
        .output()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stdout));
    let log_path: PathBuf = logs.join(format!("{target}.log"));
    fs::write(&log_path, &log).with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut stats = parse_stats(&log);
    if !output.status.success() && stats.failure.is_none() {
        stats.failure = Some(format!("exited with {}", output.status));
    }
    if stats.execs.is_none() && stats.failure.is_none() {
        stats.failure = Some("no final statistics from libFuzzer".into());
    }
    if stats.failure.is_some() {
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!(
            "xtask fuzz: {target} failed; the end of {}:\n{}",
            log_path.display(),
            tail.join("\n")
        );
    }
    Ok(stats)
}

fn cell(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

/// The results as a Markdown table.
fn table(rows: &[(String, Stats)], seconds: u64) -> String {
    let mut t = format!(
        "\n| target ({seconds} s each) | execs | execs/s | cov (edges) | ft (features) | corpus | result |\n\
         |---|---:|---:|---:|---:|---:|---|\n"
    );
    for (target, s) in rows {
        let result = s.failure.as_deref().unwrap_or("ok");
        let _ = writeln!(
            t,
            "| {target} | {} | {} | {} | {} | {} | {result} |",
            cell(s.execs),
            cell(s.execs_per_sec),
            cell(s.cov),
            cell(s.ft),
            cell(s.corpus)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let a = parse_args(&strings(&["rtc", "pit", "--seconds", "5"])).unwrap();
        assert_eq!(a.targets, ["rtc", "pit"]);
        assert_eq!(a.seconds, 5);
        assert_eq!(a.sanitizer, "address");
        let a = parse_args(&strings(&["--sanitizer", "none"])).unwrap();
        assert!(a.targets.is_empty());
        assert_eq!((a.seconds, a.sanitizer.as_str()), (DEFAULT_SECONDS, "none"));
        assert!(parse_args(&strings(&["--seconds"])).is_err());
        assert!(parse_args(&strings(&["--seconds", "0"])).is_err());
        assert!(parse_args(&strings(&["--seconds", "x"])).is_err());
        assert!(parse_args(&strings(&["--sanitizer", "memory"])).is_err());
        assert!(parse_args(&strings(&["--jobs", "2"])).is_err());
    }

    #[test]
    fn stats_of_a_clean_run() {
        let log = "INFO: Seed: 1\n\
            #2\tINITED cov: 12 ft: 13 corp: 1/1b exec/s: 0 rss: 30Mb\n\
            #4096\tpulse  cov: 240 ft: 1100 corp: 400/19Kb lim: 43 exec/s: 2048 rss: 150Mb\n\
            #126397\tDONE   cov: 243 ft: 1221 corp: 445/20Kb lim: 277 exec/s: 14044 rss: 156Mb\n\
            Done 126397 runs in 9 second(s)\n\
            stat::number_of_executed_units: 126397\n\
            stat::average_exec_per_sec:     14044\n\
            stat::new_units_added:          830\n";
        let s = parse_stats(log);
        assert_eq!(
            s,
            Stats {
                execs: Some(126_397),
                execs_per_sec: Some(14_044),
                cov: Some(243),
                ft: Some(1221),
                corpus: Some(445),
                reproducer: None,
                failure: None,
            }
        );
    }

    #[test]
    fn stats_of_a_crash_and_of_a_timeout() {
        let crash = "#1000\tNEW    cov: 50 ft: 60 corp: 7/70b lim: 4 exec/s: 0 rss: 40Mb L: 3/4\n\
            thread '<unnamed>' panicked at src/lib.rs:199:25:\n\
            ==29996== ERROR: libFuzzer: deadly signal\n\
            SUMMARY: libFuzzer: deadly signal\n\
            MS: 1 ChangeBit-; base unit: 0000\n\
            artifact_prefix='/t/a/serial/'; Test unit written to /t/a/serial/crash-ec15\n\
            stat::number_of_executed_units: 11\n";
        let s = parse_stats(crash);
        assert_eq!(s.failure.as_deref(), Some("deadly signal"));
        assert_eq!(s.reproducer.as_deref(), Some("/t/a/serial/crash-ec15"));
        assert_eq!((s.execs, s.cov, s.ft), (Some(11), Some(50), Some(60)));

        let timeout = "ALARM: working on the last Unit for 11 seconds\n\
            ==1== ERROR: libFuzzer: timeout after 11 seconds\n\
            artifact_prefix='a/'; Test unit written to a/timeout-42\n";
        let s = parse_stats(timeout);
        assert_eq!(s.failure.as_deref(), Some("timeout after 11 seconds"));
        assert_eq!(s.reproducer.as_deref(), Some("a/timeout-42"));
        assert_eq!(s.execs, None);

        let asan = "==7==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x1\n";
        let s = parse_stats(asan);
        assert_eq!(
            s.failure.as_deref(),
            Some("AddressSanitizer: heap-buffer-overflow on address 0x1")
        );
    }

    #[test]
    fn table_has_a_row_per_target() {
        let rows = vec![
            (
                "serial".to_string(),
                parse_stats("stat::number_of_executed_units: 5\n"),
            ),
            (
                "rtc".to_string(),
                Stats {
                    failure: Some("timeout".into()),
                    ..Stats::default()
                },
            ),
        ];
        let t = table(&rows, 5);
        assert!(t.contains("| serial | 5 | - | - | - | - | ok |"), "{t}");
        assert!(t.contains("| rtc | - | - | - | - | - | timeout |"), "{t}");
    }
}
