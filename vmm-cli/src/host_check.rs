//! What the VMM tells a user about this host before the guest starts: on a
//! PVM host (`kvm_pvm`, a software hypervisor) unmodified Linux kernels
//! cannot boot under any VMM, and a Linux guest would only spin there.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use vmm_core::kvm::KvmFlavor;

/// The warning for booting `kernel` on a `/dev/kvm` of this flavor, if any.
pub fn linux_on_pvm(flavor: KvmFlavor, kernel: &Path) -> Option<String> {
    if flavor.runs_linux() || !is_linux(kernel) {
        return None;
    }
    Some(format!(
        "this host's /dev/kvm is PVM (kvm_pvm), a software hypervisor on which unmodified \
         Linux kernels cannot boot under any VMM: {} is a Linux kernel, so the guest will \
         spin without output. Small hand-written guests run here; for Linux use a host with \
         kvm_intel or kvm_amd, or `cargo xtask run -- ARGS` from the source tree, which runs \
         this VMM nested in its test bed on such hosts.",
        kernel.display()
    ))
}

/// Whether `path` is a Linux kernel: a bzImage (`HdrS` at 0x202) or an ELF
/// vmlinux (a note named `Linux`, which every vmlinux carries and our
/// hand-written PVH test guests do not).
pub fn is_linux(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 0x206];
    if f.read_exact(&mut head).is_ok() && &head[0x202..0x206] == b"HdrS" {
        return true;
    }
    elf_has_linux_note(&mut f).unwrap_or(false)
}

fn elf_has_linux_note(f: &mut std::fs::File) -> std::io::Result<bool> {
    let mut eh = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut eh)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 {
        return Ok(false);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    let (phoff, phentsize, phnum) = (u64_at(&eh, 0x20), u16_at(&eh, 0x36), u16_at(&eh, 0x38));
    if phentsize < 56 {
        return Ok(false);
    }
    for i in 0..u64::from(phnum.min(64)) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(
            phoff.saturating_add(i * u64::from(phentsize)),
        ))?;
        f.read_exact(&mut ph)?;
        const PT_NOTE: u32 = 4;
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(64 * 1024));
        let mut notes = vec![0u8; usize::try_from(size).unwrap_or(0)];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut notes)?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let namesz = usize::try_from(u32_at(&notes, at)).unwrap_or(usize::MAX);
            let descsz = usize::try_from(u32_at(&notes, at + 4)).unwrap_or(usize::MAX);
            let name = notes.get(at + 12..at.saturating_add(12).saturating_add(namesz));
            if name == Some(b"Linux\0") {
                return Ok(true);
            }
            let pad = |n: usize| n.saturating_add(3) & !3;
            at = at
                .saturating_add(12)
                .saturating_add(pad(namesz))
                .saturating_add(pad(descsz));
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-host-check-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// An ELF64 file with one PT_NOTE segment holding a note named `name`.
    fn elf_with_note(name: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut note = Vec::new();
        note.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&0u32.to_le_bytes());
        note.extend_from_slice(name);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&[1, 2, 3, 4]);
        let off = u64::try_from(f.len()).unwrap();
        f[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        f[64 + 8..64 + 16].copy_from_slice(&off.to_le_bytes());
        f[64 + 32..64 + 40].copy_from_slice(&u64::try_from(note.len()).unwrap().to_le_bytes());
        f.extend_from_slice(&note);
        f
    }

    #[test]
    fn linux_kernels_are_told_from_small_guests() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(is_linux(&temp("bz", &bz)));
        assert!(is_linux(&temp("vmlinux", &elf_with_note(b"Linux\0"))));
        // Our PVH test guests carry only the Xen note.
        assert!(!is_linux(&temp("pvh", &elf_with_note(b"Xen\0"))));
        let guest = vmm_pc::test_guests::pvh_elf(&[(0x10_0000, &[0xf4])], 0x10_0000);
        assert!(!is_linux(&temp("guest", &guest)));
        assert!(!is_linux(&temp("short", b"MZ")));
        assert!(!is_linux(Path::new("/nonexistent")));
        // A note table that lies about its sizes ends the search.
        let mut bad = elf_with_note(b"Linux\0");
        let n = bad.len() - 24;
        bad[n..n + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!is_linux(&temp("bad", &bad)));
    }

    #[test]
    fn only_pvm_hosts_warn() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = temp("bz2", &bz);
        let w = linux_on_pvm(KvmFlavor::Pvm, &bz).unwrap();
        assert!(w.contains("PVM") && w.contains("cargo xtask run"), "{w}");
        assert!(linux_on_pvm(KvmFlavor::Intel, &bz).is_none());
        assert!(linux_on_pvm(KvmFlavor::Amd, &bz).is_none());
        let guest = vmm_pc::test_guests::pvh_elf(&[(0x10_0000, &[0xf4])], 0x10_0000);
        assert!(linux_on_pvm(KvmFlavor::Pvm, &temp("guest2", &guest)).is_none());
    }
}
