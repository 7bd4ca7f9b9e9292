//! Links the release `vmm` with its start-up functions side by side.
//!
//! A start of the VMM runs about 600 of its 3500 functions, scattered over
//! the whole 2.5 MB of code; the kernel maps a binary's code 64 KiB around
//! each page fault (its `fault_around_bytes`), so a start maps almost all of
//! it and the peak RSS carries it. `startup-order.txt` names the functions a
//! start runs (`cargo xtask startup-order` writes it by tracing one), and
//! LLD, Rust's default linker on x86-64 Linux, puts them first.
//!
//! Only release builds of `vmm` for x86-64 Linux use it. The file names
//! symbols as this toolchain mangles them: after a toolchain change or a
//! rename the names it misses are skipped (no warning), which costs only
//! the layout, and `cargo xtask bench startup` reports how many it found.
//! A linker other than LLD does not know the option: build with
//! `VMM_STARTUP_ORDER=off` there.

use std::env;
use std::path::Path;

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("startup-order.txt");
    println!("cargo::rerun-if-changed={}", order.display());
    println!("cargo::rerun-if-env-changed=VMM_STARTUP_ORDER");
    let off = env::var("VMM_STARTUP_ORDER").is_ok_and(|v| v == "off");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = env::var("TARGET").unwrap_or_default();
    if release && !off && target == "x86_64-unknown-linux-gnu" && order.exists() {
        println!(
            "cargo::rustc-link-arg-bin=vmm=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}
