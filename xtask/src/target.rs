//! What the release `vmm` is built for: a static binary on musl
//! (`x86_64-unknown-linux-musl`), as Firecracker and Cloud Hypervisor ship
//! theirs, wherever that target's standard library is installed or rustup
//! can add it; else the host's target (glibc), with one line saying so.
//! `VMM_TARGET=host` chooses the host's target, `VMM_TARGET=musl` insists
//! on musl. `cargo xtask run`, `test`, `bench`, `soak` and `startup-order`
//! all build for it, so the binary the tests pass is the one the
//! benchmarks measure.
//!
//! Why musl: glibc's start probes the CPU and its caches with `CPUID`
//! before `main`, about 0.6 ms of every start on a host that is itself a
//! virtual machine (each `CPUID` traps to its hypervisor); musl's start
//! does not (see the README's "Where the time goes").

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Result};

use crate::{bench, cmd};

/// musl's target triple.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// The variable that chooses (`host` or `musl`).
pub const ENV: &str = "VMM_TARGET";

/// The triple the VMM is built for, `None` for the host's; decided once
/// per xtask run (rustup asked at most once).
pub fn triple() -> Result<Option<&'static str>> {
    static CHOICE: OnceLock<Result<Option<&'static str>, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| choose().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn choose() -> Result<Option<&'static str>> {
    let wanted = std::env::var(ENV).unwrap_or_default();
    decide(&wanted, installed, || {
        if cmd::which("rustup").is_none() {
            return false;
        }
        eprintln!("xtask: adding the {MUSL} target with rustup (the VMM is a static musl binary)");
        Command::new("rustup")
            .args(["target", "add", MUSL])
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The choice for `VMM_TARGET=wanted`, given whether musl's standard
/// library is `installed` and a way to `add` it.
fn decide(
    wanted: &str,
    installed: impl Fn() -> bool,
    add: impl FnOnce() -> bool,
) -> Result<Option<&'static str>> {
    match wanted {
        "host" | "gnu" => return Ok(None),
        "" | "musl" => {}
        other => bail!("{ENV}={other}: expected `host` or `musl`"),
    }
    if installed() || (add() && installed()) {
        return Ok(Some(MUSL));
    }
    if wanted == "musl" {
        bail!("{ENV}=musl, and the {MUSL} target is not installed (rustup target add {MUSL})");
    }
    eprintln!(
        "xtask: the {MUSL} target is not installed and rustup could not add it: building the VMM \
         for the host's target (glibc), whose start costs more (rustup target add {MUSL})"
    );
    Ok(None)
}

/// Whether this toolchain has musl's standard library.
fn installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", MUSL])
        .output()
    else {
        return false;
    };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
}

/// `--target TRIPLE` for cargo, or nothing for the host's target.
pub fn cargo_args() -> Result<Vec<String>> {
    Ok(match triple()? {
        Some(t) => vec!["--target".into(), t.into()],
        None => Vec::new(),
    })
}

/// `cargo build --release` of `packages` for the VMM's target (each a
/// package, or `--bin`/`--package` and their values as cargo takes them).
pub fn release_build(args: &[&str]) -> Result<Command> {
    let mut c = cmd::cargo(["build", "--release"]);
    c.args(cargo_args()?).args(args);
    Ok(c)
}

/// Where the release binaries of the VMM's target land.
pub fn release_dir() -> PathBuf {
    let base = bench::target_dir();
    match triple() {
        Ok(Some(t)) => base.join(t).join("release"),
        _ => base.join("release"),
    }
}

/// The release `vmm`.
pub fn vmm() -> PathBuf {
    release_dir().join("vmm")
}

/// A line for reports: what the binaries were built for.
pub fn describe() -> String {
    match triple() {
        Ok(Some(t)) => format!("{t} (static)"),
        _ => "the host's target (glibc, dynamic)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn musl_unless_the_host_is_asked_for_or_musl_cannot_be_had() {
        let never = || -> bool { panic!("not asked") };
        assert_eq!(decide("host", never, never).unwrap(), None);
        assert_eq!(decide("", || true, never).unwrap(), Some(MUSL));
        assert_eq!(decide("musl", || true, never).unwrap(), Some(MUSL));
        // Added when missing...
        let added = std::cell::Cell::new(false);
        let got = decide(
            "",
            || added.get(),
            || {
                added.set(true);
                true
            },
        );
        assert_eq!(got.unwrap(), Some(MUSL));
        // ...else the host's, unless musl was asked for.
        assert_eq!(decide("", || false, || false).unwrap(), None);
        let e = decide("musl", || false, || false).unwrap_err().to_string();
        assert!(e.contains("rustup target add"), "{e}");
        let e = decide("risc", never, never).unwrap_err().to_string();
        assert!(e.contains("expected `host` or `musl`"), "{e}");
    }
}
