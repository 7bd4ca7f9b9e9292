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
//!   layout, and `cargo xtask bench startup` reports how many it found.
//! - **Packed relative relocations** (`-z pack-relative-relocs`, DT_RELR):
//!   about 4000 relocations in 1 KiB instead of 97 KiB, all of which the
//!   dynamic loader reads at every start. The binary then needs glibc 2.36
//!   or later (`GLIBC_ABI_DT_RELR`), so only where the build host has it.
//!
//! Only release builds for x86-64 Linux use them; `VMM_RELEASE_LINK=plain`
//! turns both off (a linker other than LLD does not know the first).

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
    if !release || plain || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    if order.exists() {
        println!(
            "cargo::rustc-link-arg-bin=vmm=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
    if glibc_reads_relr() {
        println!("cargo::rustc-link-arg-bin=vmm=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this host's glibc is 2.36 or later (`getconf GNU_LIBC_VERSION`
/// prints `glibc 2.36`); false when that cannot be told.
fn glibc_reads_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 36),
        _ => false,
    }
}
