//! `cargo xtask check-binary`: the release `vmm` calls no function the
//! static link left at address 0.
//!
//! std declares some C library functions weak (`getrandom`,
//! `copy_file_range`, `gettid`, `pidfd_spawnp`...) and checks them before
//! each call. With fat LTO, a crate's ordinary declaration of the same
//! function is merged with std's into one weak reference; a static link
//! does not take a member out of `libc.a` for a weak reference alone, so
//! the symbol stays undefined, its GOT slot 0, and the crate's unchecked
//! call jumps to address 0. Debug builds (no LTO) link it and pass every
//! test: only the release binary shows it (found by the snapshot
//! benchmark: `copy_file_range`; `getrandom` in virtio-rng too; `gettid`
//! earlier). Such a function must be reached with `libc::syscall`.
//!
//! The check reads the binary with binutils' `objdump`: every instruction
//! that reads a GOT slot holding 0 in the file (a `call` or `jmp` through
//! it, or a `mov` of it into a register called later), inside a function
//! defined outside Rust's own library (std reads its slots to test them
//! before the call, which one instruction cannot tell from a call).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cmd, target};

/// The task: builds the release `vmm` for its target and checks it, or
/// checks the binary named.
pub fn task(args: &[String]) -> Result<()> {
    let vmm = match args {
        [] => {
            cmd::run(&mut target::release_build(&[
                "--package",
                "vmm-cli",
                "--bin",
                "vmm",
            ])?)?;
            target::vmm()
        }
        [binary] => binary.into(),
        [_, extra, ..] => bail!("check-binary takes at most one binary (got `{extra}` too)"),
    };
    let found = check(&vmm)?;
    if !found.is_empty() {
        for f in &found {
            eprintln!("xtask: {f}");
        }
        bail!(
            "{} read(s) in {} of a GOT slot the link left at 0 (a weak C library \
             function the static link did not take): call it with libc::syscall instead",
            found.len(),
            vmm.display()
        );
    }
    eprintln!(
        "xtask: {}: no code of ours reads a null GOT slot",
        vmm.display()
    );
    Ok(())
}

/// The calls through a null GOT slot in `binary`, outside Rust's library.
pub fn check(binary: &Path) -> Result<Vec<String>> {
    let got = objdump(binary, &["-s", "-j", ".got"])?;
    let code = objdump(binary, &["-d", "--no-show-raw-insn"])?;
    Ok(null_calls(&got_words(&got), &code))
}

fn objdump(binary: &Path, args: &[&str]) -> Result<String> {
    if cmd::which("objdump").is_none() && !cmd::apt_install("binutils") {
        bail!("objdump is not in PATH (apt-get install binutils)");
    }
    let out = cmd::output(Command::new("objdump").args(args).arg(binary))
        .with_context(|| format!("objdump {} {}", args.join(" "), binary.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The GOT's 8-byte words by address, from `objdump -s -j .got`
/// (` ADDR WWWWWWWW WWWWWWWW ...  text`, 16 bytes a line).
fn got_words(dump: &str) -> HashMap<u64, u64> {
    let mut words = HashMap::new();
    for line in dump.lines() {
        let mut fields = line.split_whitespace();
        let Some(addr) = line
            .strip_prefix(' ')
            .and(fields.next())
            .and_then(|a| u64::from_str_radix(a, 16).ok())
        else {
            continue;
        };
        let hex: String = fields
            .take(4)
            .take_while(|f| f.len() == 8 && f.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        for (i, word) in hex.as_bytes().chunks_exact(16).enumerate() {
            let bytes: Vec<u8> = word
                .chunks_exact(2)
                .filter_map(|b| u8::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok())
                .collect();
            if let Ok(b) = <[u8; 8]>::try_from(bytes.as_slice()) {
                words.insert(addr + 8 * i as u64, u64::from_le_bytes(b));
            }
        }
    }
    words
}

/// The lines of `code` (`objdump -d`) that read a GOT slot (objdump's
/// `# ADDR` comment on a `(%rip)` operand) holding 0, in functions Rust's
/// library does not define; each as "FUNCTION: INSTRUCTION".
fn null_calls(got: &HashMap<u64, u64>, code: &str) -> Vec<String> {
    let mut function = "";
    let mut found = Vec::new();
    for line in code.lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once('<')) {
            function = name.1;
            continue;
        }
        let Some((_, insn)) = line.split_once(":\t") else {
            continue;
        };
        if !insn.contains("(%rip)") {
            continue;
        }
        let slot = insn
            .split_once("# ")
            .and_then(|(_, c)| c.split_whitespace().next())
            .and_then(|a| u64::from_str_radix(a, 16).ok());
        if slot.is_some_and(|s| got.get(&s) == Some(&0)) && !in_rust_library(function) {
            found.push(format!("{function}: {}", insn.trim()));
        }
    }
    found
}

/// Whether a (v0-mangled) function is defined by Rust's own library, or
/// is not Rust at all: the first crate root in a v0 path (`C`, an
/// optional disambiguator `s..._`, then the crate's length-prefixed name)
/// is the crate that defines it, generic instantiations and closures
/// included.
fn in_rust_library(function: &str) -> bool {
    let Some(path) = function.strip_prefix("_R") else {
        return true;
    };
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'C' {
            let mut j = i + 1;
            if bytes.get(j) == Some(&b's') {
                while j < bytes.len() && bytes[j] != b'_' {
                    j += 1;
                }
                j += 1;
            }
            let digits = bytes[j.min(bytes.len())..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 {
                let len: usize = path[j..j + digits].parse().unwrap_or(0);
                let name = path.get(j + digits..j + digits + len).unwrap_or("");
                return matches!(
                    name,
                    "std" | "core" | "alloc" | "std_detect" | "panic_abort" | "panic_unwind"
                );
            }
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOT: &str = "\n/tmp/vmm:     file format elf64-x86-64\n\nContents of section .got:\n \
                       355a00 a8583500 00000000 00000000 00000000  .X5.............\n";

    #[test]
    fn our_reads_of_a_null_slot_are_found_and_std_s_are_not() {
        let got = got_words(GOT);
        assert_eq!(got.get(&0x355a00), Some(&0x3558a8));
        assert_eq!(got.get(&0x355a08), Some(&0));
        let code = "\
0000000000001000 <_RNvNtNtCshW8RZWD1FMl_6vmm_pc8snapshot5image4copy>:
    2816bd:\tcall   *0xd477d(%rip)        # 355a08 <_DYNAMIC+0x598>
    2816c5:\tcall   *0xd477d(%rip)        # 355a00 <_DYNAMIC+0x590>
0000000000001800 <_RNvXNtCsiYAp4zsMRjh_10vmm_virtio3rngNtB2_10HostRandomNtB2_13EntropySource4fill>:
    32ae80:\tmov    0x2af41(%rip),%r14        # 355a08 <_DYNAMIC+0x520>
0000000000002000 <_RNvNtNtNtCsaz6eC2DG7lh_3std3sys6random5linux19hashmap_random_keys>:
    103b90:\tcmpq   $0x0,0x252230(%rip)        # 355a08 <_DYNAMIC+0x520>
    103bc4:\tcall   *0x2521fe(%rip)        # 355a08 <_DYNAMIC+0x520>
0000000000003000 <__do_global_dtors_aux>:
    103bd0:\tjmp    *0x2521fe(%rip)        # 355a08 <_DYNAMIC+0x520>
";
        let found = null_calls(&got, code);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("_RNvNtNtCshW8RZWD1FMl_6vmm_pc"),
            "{found:?}"
        );
        assert!(found[1].contains("10vmm_virtio3rng"), "{found:?}");
    }

    #[test]
    fn the_defining_crate_is_the_first_crate_root() {
        // A std closure instantiated with one of our types is std's.
        assert!(in_rust_library(
            "_RNCINvNtNtCsaz6eC2DG7lh_3std6thread7current17with_current_nameNCNCNvNtB8_9panicking12default_hook00uE0B8_"
        ));
        assert!(!in_rust_library(
            "_RNCNvMNtNtCshW8RZWD1FMl_6vmm_pc7machine8snapshotNtB6_9PcMachine14write_snapshots0_0B8_"
        ));
        assert!(in_rust_library("__do_global_dtors_aux"));
    }
}
