//! The host's QEMU shipped into L1, so that a job can run QEMU (its
//! `microvm` machine, say) on L1's KVM beside our VMM: the binary, the
//! shared libraries it links and the firmware `microvm` loads go into the
//! L1 initramfs under `/qemu` (see [`crate::Job::with_qemu`]).

use std::path::{Path, PathBuf};

use crate::TestbedError;

/// Where QEMU lives in L1.
pub const L1_QEMU: &str = "/qemu/bin/qemu-system-x86_64";
/// Its firmware folder in L1 (QEMU's `-L`; also where the binary looks by
/// itself, `../share/qemu` from its own folder).
pub const L1_QEMU_DATA: &str = "/qemu/share/qemu";
/// Firmware `-M microvm` loads to boot a Linux kernel with `-kernel`
/// (QEMU 7.2: `bios-microvm.bin`, which Debian links to `qboot.rom`, and
/// the option ROM `linuxboot_dma.bin`).
pub const MICROVM_FIRMWARE: &[&str] = &["bios-microvm.bin", "linuxboot_dma.bin"];
/// Firmware shipped as well when the host has it (other ways of loading a
/// kernel: PVH ELF, without fw_cfg DMA, multiboot).
pub const OPTIONAL_FIRMWARE: &[&str] = &["pvh.bin", "linuxboot.bin", "multiboot_dma.bin"];

/// The host's QEMU as the test bed uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostQemu {
    /// The binary, symlinks resolved.
    pub binary: PathBuf,
    /// Its firmware folder.
    pub data_dir: PathBuf,
}

impl HostQemu {
    /// `qemu-system-x86_64` found in `PATH`, its firmware in
    /// `../share/qemu` from the binary's folder (`/usr/share/qemu`).
    pub fn find() -> Result<Self, TestbedError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path)
            .map(|d| d.join(crate::qemu::QEMU))
            .find(|p| p.is_file())
            .ok_or(TestbedError::NoQemu)?;
        let binary =
            std::fs::canonicalize(&found).map_err(|e| TestbedError::Read(found.clone(), e))?;
        let data_dir = data_dir_of(&binary);
        Ok(Self { binary, data_dir })
    }

    /// The files to put into L1's initramfs, as (path in L1 without the
    /// leading `/`, host path): the binary and the firmware. Firmware
    /// symlinks are followed when read (Debian's `bios-microvm.bin` links
    /// to `qboot.rom`). The shared libraries come from
    /// [`crate::l1::shared_libraries`].
    pub fn l1_files(&self) -> Result<Vec<(String, PathBuf)>, TestbedError> {
        let mut files = vec![(
            L1_QEMU.trim_start_matches('/').to_owned(),
            self.binary.clone(),
        )];
        let data = L1_QEMU_DATA.trim_start_matches('/');
        for f in MICROVM_FIRMWARE {
            let p = self.data_dir.join(f);
            if !p.is_file() {
                return Err(TestbedError::MissingQemuFile(p));
            }
            files.push((format!("{data}/{f}"), p));
        }
        for f in OPTIONAL_FIRMWARE {
            let p = self.data_dir.join(f);
            if p.is_file() {
                files.push((format!("{data}/{f}"), p));
            }
        }
        Ok(files)
    }
}

/// `<binary's folder>/../share/qemu`, the way QEMU finds its data.
pub fn data_dir_of(binary: &Path) -> PathBuf {
    let bin_dir = binary.parent().unwrap_or(Path::new("/"));
    let prefix = bin_dir.parent().unwrap_or(Path::new("/"));
    prefix.join("share").join("qemu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_next_to_the_binary() {
        assert_eq!(
            data_dir_of(Path::new("/usr/bin/qemu-system-x86_64")),
            Path::new("/usr/share/qemu")
        );
        assert_eq!(
            data_dir_of(Path::new("/opt/q/bin/qemu-system-x86_64")),
            Path::new("/opt/q/share/qemu")
        );
        // In L1 the same rule finds L1_QEMU_DATA.
        assert_eq!(data_dir_of(Path::new(L1_QEMU)), Path::new(L1_QEMU_DATA));
    }

    #[test]
    fn l1_files_of_a_fake_install() {
        let root = std::env::temp_dir().join(format!("vmm-testbed-l1qemu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let share = root.join("share/qemu");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let binary = root.join("bin/qemu-system-x86_64");
        std::fs::write(&binary, b"ELF").unwrap();
        std::fs::write(share.join("qboot.rom"), b"BIOS").unwrap();
        std::os::unix::fs::symlink("qboot.rom", share.join("bios-microvm.bin")).unwrap();
        let q = HostQemu {
            binary: binary.clone(),
            data_dir: data_dir_of(&binary),
        };
        // linuxboot_dma.bin missing: an error naming it.
        match q.l1_files() {
            Err(TestbedError::MissingQemuFile(p)) => assert!(p.ends_with("linuxboot_dma.bin")),
            other => panic!("{other:?}"),
        }
        std::fs::write(share.join("linuxboot_dma.bin"), b"ROM").unwrap();
        std::fs::write(share.join("pvh.bin"), b"PVH").unwrap();
        let files = q.l1_files().unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "qemu/bin/qemu-system-x86_64",
                "qemu/share/qemu/bios-microvm.bin",
                "qemu/share/qemu/linuxboot_dma.bin",
                "qemu/share/qemu/pvh.bin"
            ]
        );
        // The symlink is read through.
        assert_eq!(std::fs::read(&files[1].1).unwrap(), b"BIOS");
        let _ = std::fs::remove_dir_all(&root);
    }
}
