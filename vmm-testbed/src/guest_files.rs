//! The guest files `cargo xtask guest` leaves in its cache folder.

use std::path::{Path, PathBuf};

use crate::TestbedError;

/// The environment variable naming the guest cache folder.
pub const GUEST_DIR_ENV: &str = "VMM_GUEST_DIR";

/// The guest cache folder: `$VMM_GUEST_DIR`, else `target/guest` in the
/// workspace.
pub fn default_guest_dir() -> PathBuf {
    match std::env::var_os(GUEST_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .join("target")
            .join("guest"),
    }
}

/// The default guest: a Debian cloud kernel (as bzImage and ELF vmlinux),
/// its KVM modules, a static busybox and the default initramfs.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    /// The folder.
    pub dir: PathBuf,
    /// The kernel, bzImage.
    pub bzimage: PathBuf,
    /// The same kernel, ELF.
    pub vmlinux: PathBuf,
    /// The default initramfs (a shell on the console).
    pub initramfs: PathBuf,
    /// Static busybox.
    pub busybox: PathBuf,
    /// The kernel's KVM modules (`irqbypass.ko`, `kvm.ko`, `kvm-amd.ko`,
    /// `kvm-intel.ko`).
    pub modules_dir: PathBuf,
}

impl GuestFiles {
    /// Where each file lives in a cache folder `dir` (nothing is checked).
    pub fn layout(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
            busybox: dir.join("busybox"),
            modules_dir: dir.join("modules"),
        }
    }

    /// The files in `dir`; an error names the first one missing or empty
    /// and says how to make them.
    pub fn in_dir(dir: &Path) -> Result<Self, TestbedError> {
        let files = Self::layout(dir);
        for f in [
            &files.bzimage,
            &files.vmlinux,
            &files.initramfs,
            &files.busybox,
            &files.module("kvm"),
        ] {
            let ok = std::fs::metadata(f).map(|m| m.len() > 0).unwrap_or(false);
            if !ok {
                return Err(TestbedError::MissingGuest(f.clone()));
            }
        }
        Ok(files)
    }

    /// The guest in [`default_guest_dir`].
    pub fn default_location() -> Result<Self, TestbedError> {
        Self::in_dir(&default_guest_dir())
    }

    /// The path of kernel module `name` (without `.ko`).
    pub fn module(&self, name: &str) -> PathBuf {
        self.modules_dir.join(format!("{name}.ko"))
    }
}
