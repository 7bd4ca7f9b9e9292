//! `cargo xtask startup-order`: writes `vmm-cli/startup-order.txt`, the
//! functions a start of the VMM runs, which the release link puts side by
//! side (see `vmm-cli/build.rs`).
//!
//! The kernel maps a program's code 64 KiB around each page fault, so code
//! that a start runs scattered over the whole binary is all mapped and
//! counted in the peak RSS. The names come from running the release `vmm`
//! under gdb with a one-shot breakpoint on every function (`nm` lists
//! them), booting the benchmarks' minimal guest with one and two vCPUs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{bench, cmd};

/// The order file, relative to the workspace root.
pub const FILE: &str = "vmm-cli/startup-order.txt";

/// The machines traced: the `startup` benchmark's, and one with an
/// application processor (its vCPU thread's start).
const RUNS: [&[&str]; 2] = [
    &["--memory", "128M", "--cpus", "1"],
    &["--memory", "128M", "--cpus", "2"],
];

const HEADER: &str = "\
# The functions a start of the VMM runs, sorted by name: the release
# link of `vmm` puts them first (LLD's --symbol-ordering-file;
# vmm-cli/build.rs). Written by `cargo xtask startup-order`; names this
# build no longer has are skipped, so an old file costs only the layout.
# NAME.* stands for every internal copy LTO made of a function (NAME.1,
# NAME.2, ...: numbers that move with any change to the program).
";

/// The share of the file's names a release build must have for `--check`
/// to pass: below it the file is stale (a dependency added to one of our
/// crates changes that crate's hash in every v0 name under it, which once
/// left 286 of 570 names and a start's peak RSS 1.1 MiB higher).
const MIN_COVERAGE: f64 = 0.95;

/// The line that names the compiler the file was written with: v0 names
/// carry hashes of each crate that another rustc computes differently.
const RUSTC_LINE: &str = "# rustc: ";

/// The highest copy number `NAME.*` stands for (vmm-cli/build.rs writes
/// each; a build's copies are numbered up to about 3500 today).
pub const MAX_COPY: u32 = 8191;

/// The task.
pub fn task(args: &[String]) -> Result<()> {
    match args {
        [] => {}
        [a] if a == "--check" => return check(),
        [a, ..] => bail!("startup-order takes only --check (got `{a}`)"),
    }
    if cmd::which("gdb").is_none() && !cmd::apt_install("gdb") {
        bail!("gdb is not in PATH (apt-get install gdb)");
    }
    let vmm = build()?;
    let symbols = functions(&vmm)?;
    let tmp = bench::TempDir::new("vmm-startup-order")?;
    let guest = tmp.path().join("hello-exit.elf");
    bench::write_test_guest("hello-exit", &guest)?;
    let addresses = tmp.path().join("addresses");
    let mut list: Vec<u64> = symbols.keys().copied().collect();
    list.sort_unstable();
    let text: String = list.iter().map(|a| format!("{a:x}\n")).collect();
    std::fs::write(&addresses, text)?;

    let mut hits = Vec::new();
    for run in RUNS {
        let out = tmp.path().join("hits");
        // A start under gdb takes about 10 s here; a VMM that never ends
        // (a guest that does not exit) is stopped after 5 minutes.
        let mut gdb = Command::new("timeout");
        gdb.args(["300", "gdb", "-q", "-nx", "-batch", "-x"])
            .arg(cmd::root().join("xtask/src/startup_order.py"))
            .arg("--args")
            .arg(&vmm)
            .arg("--kernel")
            .arg(&guest)
            .args(run)
            .env("STARTUP_ORDER_ADDRESSES", &addresses)
            .env("STARTUP_ORDER_OUT", &out);
        eprintln!("xtask: tracing `vmm {}` under gdb", run.join(" "));
        cmd::output(&mut gdb)?;
        let run_hits = parse_hits(&std::fs::read_to_string(&out)?)?;
        eprintln!("xtask:   {} functions ran", run_hits.len());
        hits.extend(run_hits);
    }
    let names = names_of(&hits, &symbols);
    let path = cmd::root().join(FILE);
    let mut text = format!("{HEADER}{RUSTC_LINE}{}\n", rustc_version()?);
    for n in &names {
        text.push_str(n);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "xtask: wrote {} ({} functions)",
        path.display(),
        names.len()
    );

    // Link again with the new order and say how much of it took.
    let vmm = build()?;
    let (found, named) = coverage(&vmm)?;
    eprintln!("xtask: the release vmm has {found} of the {named} functions named");
    Ok(())
}

/// `--check`: fails when a release build has too few of the file's
/// names (a stale file: write it again), unless another compiler is
/// building than the one the file was written with (its names cannot
/// match; that costs only the layout).
fn check() -> Result<()> {
    let vmm = build()?;
    let (found, named) = coverage(&vmm)?;
    let text = std::fs::read_to_string(cmd::root().join(FILE))
        .with_context(|| format!("cannot read {FILE}"))?;
    let written_with = recorded_rustc(&text);
    let verdict = verdict(found, named, written_with, &rustc_version()?)?;
    eprintln!("xtask: {verdict}");
    Ok(())
}

/// Whether a build that has `found` of the `named` names needs the file
/// written again (under [`MIN_COVERAGE`]).
pub fn is_stale(found: usize, named: usize) -> bool {
    named == 0 || (found as f64) < MIN_COVERAGE * named as f64
}

/// Whether `found` of `named` names is enough, given the compiler the
/// file names and the one building now: a line to print, or the error.
fn verdict(found: usize, named: usize, written_with: Option<&str>, now: &str) -> Result<String> {
    let summary = format!("the release vmm has {found} of the {named} functions {FILE} names");
    if written_with != Some(now) {
        return Ok(format!(
            "{summary}; not checked: the file was written with {}, this is {now} \
             (`cargo xtask startup-order` writes it for this one)",
            written_with.unwrap_or("an unnamed rustc")
        ));
    }
    ensure!(
        !is_stale(found, named),
        "{summary}, under {:.0}%: the file is stale (a dependency added to one of our crates \
         changes the hash in its functions' names). Run `cargo xtask startup-order` and \
         commit {FILE}",
        MIN_COVERAGE * 100.0
    );
    Ok(summary)
}

/// The compiler's version line (`rustc 1.95.0 (59807616e 2026-04-14)`),
/// as Cargo in this workspace runs it.
fn rustc_version() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = cmd::output(
        Command::new(rustc)
            .arg("--version")
            .current_dir(cmd::root()),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The compiler the order file names, if it names one.
fn recorded_rustc(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix(RUSTC_LINE))
        .map(str::trim)
}

/// Builds the release `vmm`; its path.
fn build() -> Result<PathBuf> {
    cmd::run(&mut crate::target::release_build(&[
        "--package",
        "vmm-cli",
        "--bin",
        "vmm",
    ])?)?;
    Ok(crate::target::vmm())
}

/// How many of the functions the order file names `binary` has (a
/// `NAME.*` when it has a copy up to [`MAX_COPY`]), and how many it names.
pub fn coverage(binary: &Path) -> Result<(usize, usize)> {
    let text = std::fs::read_to_string(cmd::root().join(FILE))
        .with_context(|| format!("cannot read {FILE}"))?;
    let named = parse_order(&text);
    let have: HashSet<String> = functions(binary)?.into_values().flatten().collect();
    let copies: HashSet<&str> = have
        .iter()
        .filter_map(|n| copy_of(n))
        .filter(|(_, number)| *number <= MAX_COPY)
        .map(|(stem, _)| stem)
        .collect();
    let found = named
        .iter()
        .filter(|n| match n.strip_suffix(".*") {
            Some(stem) => copies.contains(stem),
            None => have.contains(**n),
        })
        .count();
    Ok((found, named.len()))
}

/// A copy LTO made of a function: `NAME.N` as (NAME, N).
fn copy_of(name: &str) -> Option<(&str, u32)> {
    let (stem, number) = name.rsplit_once('.')?;
    if stem.is_empty() || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem, number.parse().ok()?))
}

/// `binary`'s functions by address (several names may share one).
fn functions(binary: &Path) -> Result<HashMap<u64, Vec<String>>> {
    let out = cmd::output(Command::new("nm").arg("--defined-only").arg(binary))?;
    Ok(parse_nm(&String::from_utf8_lossy(&out.stdout)))
}

/// The code symbols of `nm --defined-only` output.
fn parse_nm(text: &str) -> HashMap<u64, Vec<String>> {
    let mut map: HashMap<u64, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "W" | "w") {
            continue;
        }
        if let Ok(a) = u64::from_str_radix(addr, 16) {
            map.entry(a).or_default().push(name.to_owned());
        }
    }
    map
}

/// The gdb script's output: hit addresses, then `exit 0`.
fn parse_hits(text: &str) -> Result<Vec<u64>> {
    let mut hits = Vec::new();
    for line in text.lines() {
        if let Some(code) = line.strip_prefix("exit ") {
            ensure!(
                code == "0",
                "the traced VMM did not exit with status 0 (exit {code})"
            );
            return Ok(hits);
        }
        hits.push(
            u64::from_str_radix(line.trim(), 16).with_context(|| format!("bad hit `{line}`"))?,
        );
    }
    bail!("the trace has no exit line (gdb stopped early?)")
}

/// The names of `hits`' functions, each once, sorted: the threads of a
/// start reach them in an order that varies from run to run, and the order
/// within the block hardly matters (a start maps all of it), so a sorted
/// file changes only where the set does.
///
/// A copy LTO made (`NAME.N`) is written `NAME.*`, once for all of them.
fn names_of(hits: &[u64], symbols: &HashMap<u64, Vec<String>>) -> Vec<String> {
    let names: BTreeSet<String> = hits
        .iter()
        .filter_map(|a| symbols.get(a))
        .flatten()
        .map(|n| match copy_of(n) {
            Some((stem, _)) => format!("{stem}.*"),
            None => n.clone(),
        })
        .collect();
    names.into_iter().collect()
}

/// The names an order file lists (LLD skips `#` comments and blank lines).
fn parse_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_output_gives_code_symbols_by_address() {
        let nm = "\
0000000000080f10 T _start
0000000000091000 t _ZN3vmm4main17h0cd9e0f4e8680c45E
0000000000091000 t alias_of_main
00000000002fdc50 d some_data
0000000000002000 r a_constant
                 U ioctl@GLIBC_2.2.5
0000000000092000 W weak_fn
garbage line here
";
        let m = parse_nm(nm);
        assert_eq!(m.len(), 3);
        assert_eq!(m[&0x80f10], ["_start"]);
        assert_eq!(
            m[&0x91000],
            ["_ZN3vmm4main17h0cd9e0f4e8680c45E", "alias_of_main"]
        );
        assert_eq!(m[&0x92000], ["weak_fn"]);
    }

    #[test]
    fn hits_need_the_exit_line_and_status_0() {
        assert_eq!(
            parse_hits("80f10\n91000\nexit 0\n").unwrap(),
            [0x80f10, 0x91000]
        );
        assert!(parse_hits("80f10\nexit 1\n").is_err());
        assert!(parse_hits("80f10\nexit none\n").is_err());
        assert!(parse_hits("80f10\n").is_err());
        assert!(parse_hits("zz\nexit 0\n").is_err());
    }

    #[test]
    fn names_are_each_hit_once_with_every_alias_sorted_without_unknown_addresses() {
        let m = parse_nm("10 t d\n20 t b\n20 t b_alias\n30 t c\n40 t d\n50 t e\n");
        let names = names_of(&[0x20, 0x10, 0x20, 0x99, 0x30, 0x10, 0x40], &m);
        assert_eq!(names, ["b", "b_alias", "c", "d"]);
    }

    /// vmm-cli/build.rs writes `NAME.*` out up to its own copy of the
    /// bound (a build script cannot use this crate): the two must agree.
    #[test]
    fn build_rs_expands_copies_as_far_as_this_counts_them() {
        let build = std::fs::read_to_string(cmd::root().join("vmm-cli/build.rs")).unwrap();
        assert!(
            build.contains(&format!("const MAX_COPY: u32 = {MAX_COPY};")),
            "vmm-cli/build.rs's MAX_COPY is not {MAX_COPY}"
        );
    }

    #[test]
    fn copies_lto_made_are_named_once_for_all() {
        let m = parse_nm("10 t f.2764\n20 t f.2880\n30 t g\n40 t v1.2.x\n50 t h.\n");
        let names = names_of(&[0x10, 0x20, 0x30, 0x40, 0x50], &m);
        assert_eq!(names, ["f.*", "g", "h.", "v1.2.x"]);
        assert_eq!(copy_of("a.b.12"), Some(("a.b", 12)));
        for not_a_copy in ["f", "f.", ".12", "f.1x", "f.99999999999"] {
            assert_eq!(copy_of(not_a_copy), None, "{not_a_copy}");
        }
    }

    #[test]
    fn the_order_file_skips_comments_and_blank_lines() {
        let text = "# header\n\nfoo\n  bar  \nbaz # note\n#\n";
        assert_eq!(parse_order(text), ["foo", "bar", "baz"]);
    }

    #[test]
    fn a_stale_file_fails_the_check_only_under_its_own_compiler() {
        let rustc = "rustc 1.95.0 (59807616e 2026-04-14)";
        assert!(verdict(577, 577, Some(rustc), rustc).is_ok());
        assert!(verdict(549, 577, Some(rustc), rustc).is_ok());
        let stale = verdict(286, 570, Some(rustc), rustc).unwrap_err();
        assert!(
            format!("{stale}").contains("cargo xtask startup-order"),
            "{stale}"
        );
        assert!(verdict(0, 0, Some(rustc), rustc).is_err());
        assert!(!is_stale(549, 577) && is_stale(548, 577) && is_stale(0, 0));
        // Another compiler's hashes cannot match: said, not failed.
        let other = verdict(3, 577, Some(rustc), "rustc 1.96.0 (a 2026-06-01)").unwrap();
        assert!(other.contains("not checked"), "{other}");
        assert!(verdict(3, 577, None, rustc).unwrap().contains("unnamed"));
    }

    #[test]
    fn the_committed_order_file_is_well_formed() {
        let text = std::fs::read_to_string(cmd::root().join(FILE)).unwrap();
        assert!(text.starts_with(HEADER), "{FILE} lost its header");
        let rustc = recorded_rustc(&text).unwrap_or_default();
        assert!(rustc.starts_with("rustc "), "{FILE} names no compiler");
        let names = parse_order(&text);
        assert!(
            names.len() > 100,
            "{FILE} names only {} functions",
            names.len()
        );
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{FILE} names a function twice");
        // Copies are named by their stem, once (`cargo xtask startup-order`
        // writes them so).
        assert!(
            names.iter().all(|n| copy_of(n).is_none()),
            "{FILE} names a numbered copy; write it NAME.*"
        );
    }
}
