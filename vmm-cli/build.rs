//! Links the release `vmm` so that a start maps less of it.
//!
//! The kernel maps a program's file pages 64 KiB around each page fault
//! (its fault-around), and the peak RSS counts them. Two link options:
//!
//! - **The functions a start runs, side by side.** A start runs about 600
//!   of the binary's 3500 functions, which the compiler scatters over all
//!   2.5 MB of code, so a start used to map nearly all of it.
//!   `startup-order.txt` names them (`cargo xtask startup-order` writes it
//!   by tracing a start), and LLD, Rust's default linker on x86-64 Linux,
//!   puts them first (`--symbol-ordering-file`). The file names symbols as
//!   this toolchain mangles them: names a later build lacks (a rename,
//!   another toolchain) are skipped without a warning, which costs only the
//!   layout, and `cargo xtask bench startup` reports how many it found. A
//!   `NAME.*` stands for the internal copies LTO makes of a function,
//!   `NAME.1`, `NAME.2`...: their numbers move with any change, so LLD gets
//!   the file with each such line written out for every number up to
//!   [`MAX_COPY`] (in `OUT_DIR`).
//! - **Packed relative relocations** (`-z pack-relative-relocs`, DT_RELR):
//!   about 4000 relocations in 1 KiB instead of 97 KiB, all of which the
//!   dynamic loader reads at every start. The binary then needs glibc 2.36
//!   or later (`GLIBC_ABI_DT_RELR`), so only where the build host has it.
//!
//! Only release builds for x86-64 Linux use them, and only through the LLD
//! that rustc ships: glibc's target links with it by default since Rust
//! 1.90; musl's (the static build xtask makes, see `xtask/src/target.rs`)
//! links with the C compiler and GNU ld, so it is pointed at rustc's LLD
//! here (`-fuse-ld=lld` and `-B` at the toolchain's `gcc-ld` folder, what
//! rustc itself passes when it links with LLD), whose static-pie start
//! applies DT_RELR as well (musl 1.2.4 and later). With an older rustc, a
//! linker chosen in Cargo's configuration, or link flags in `RUSTFLAGS`,
//! the link is left as it was: GNU ld does not know
//! `--symbol-ordering-file`. `VMM_RELEASE_LINK=plain` turns both off.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("startup-order.txt");
    println!("cargo::rerun-if-changed={}", order.display());
    println!("cargo::rerun-if-env-changed=VMM_RELEASE_LINK");
    let plain = env::var("VMM_RELEASE_LINK").is_ok_and(|v| v == "plain");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = env::var("TARGET").unwrap_or_default();
    if !release || plain || !linker_left_alone() {
        return;
    }
    match target.as_str() {
        "x86_64-unknown-linux-gnu" if rustc_links_with_lld() => {}
        "x86_64-unknown-linux-musl" => {
            let Some(gcc_ld) = rustc_gcc_ld() else { return };
            println!("cargo::rustc-link-arg-bin=vmm=-fuse-ld=lld");
            println!("cargo::rustc-link-arg-bin=vmm=-B{}", gcc_ld.display());
        }
        _ => return,
    }
    if let Ok(text) = std::fs::read_to_string(&order) {
        let out = Path::new(&env::var("OUT_DIR").expect("cargo sets it")).join("startup-order.txt");
        std::fs::write(&out, expand(&text)).expect("cannot write the order file to OUT_DIR");
        println!(
            "cargo::rustc-link-arg-bin=vmm=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            out.display()
        );
    }
    if target.ends_with("-musl") || glibc_reads_relr() {
        println!("cargo::rustc-link-arg-bin=vmm=-Wl,-z,pack-relative-relocs");
    }
}

/// The highest copy number a `NAME.*` line stands for (xtask's
/// `startup_order::MAX_COPY`; a build numbers its copies up to about 3500).
const MAX_COPY: u32 = 8191;

/// The order file as LLD takes it: each `NAME.*` line as `NAME.1` to
/// `NAME.MAX_COPY` (LLD skips the names the binary lacks), the rest as
/// they are.
fn expand(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.trim().strip_suffix(".*") {
            Some(stem) if !line.trim_start().starts_with('#') => {
                for n in 1..=MAX_COPY {
                    out.push_str(stem);
                    out.push('.');
                    out.push_str(&n.to_string());
                    out.push('\n');
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// No linker chosen in Cargo's configuration, and no `-C link…` flag of
/// any kind in `RUSTFLAGS` (a linker, its flavour, or arguments for it).
fn linker_left_alone() -> bool {
    if env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    !flags.split('\x1f').any(|f| f.contains("link"))
}

/// The folder of rustc's `ld.lld` for the C compiler (`gcc-ld`, beside
/// `rust-lld` in the host's part of the toolchain), when it has one.
fn rustc_gcc_ld() -> Option<std::path::PathBuf> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let host = env::var("HOST").ok()?;
    let dir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}

/// Whether rustc links glibc's target with its own LLD: 1.90 or later.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    version_at_least(text.split_whitespace().nth(1).unwrap_or(""), (1, 90))
}

/// Whether this host's glibc is 2.36 or later (`getconf GNU_LIBC_VERSION`
/// prints `glibc 2.36`); false when that cannot be told.
fn glibc_reads_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().strip_prefix("glibc ").unwrap_or("");
    version_at_least(version, (2, 36))
}

/// Whether `version` ("MAJOR.MINOR[.…]") is at least `least`.
fn version_at_least(version: &str, least: (u32, u32)) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= least,
        _ => false,
    }
}
