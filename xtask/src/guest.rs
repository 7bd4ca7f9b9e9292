//! `cargo xtask guest`: the default guest, a Debian cloud kernel and a
//! busybox initramfs, fetched and built into one cache folder.
//!
//! ```text
//! target/guest/            (or --dir DIR, or $VMM_GUEST_DIR)
//!   bzImage                boot/vmlinuz-* of linux-image-<release>
//!   vmlinux                the ELF kernel, decompressed from the bzImage
//!   busybox                bin/busybox of busybox-static
//!   initramfs.cpio         newc archive: busybox, its links, /dev nodes, /init
//!   modules/*.ko           kvm, kvm-amd, kvm-intel, irqbypass; evdev, button;
//!                          pvpanic, pvpanic-mmio; virtio, virtio_pci...,
//!                          virtio_blk; failover, net_failover, virtio_net;
//!                          tun (decompressed)
//!   manifest.txt           file, package, version, sha256, source; written last
//! ```
//!
//! The cache is reused when the manifest's files are all there and sound;
//! the initramfs is rebuilt from the cached busybox whenever [`DEFAULT_INIT`]
//! changes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use vmm_testbed::initramfs::DEFAULT_INIT;

mod apt;
mod bzimage;
mod cache;
mod fetch;
mod lz4;

/// The metapackage that names the current Debian cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// The package that has a static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The kernel modules kept: KVM for the nested test bed; the ACPI power
/// button and the input event interface for guests that handle
/// `system_powerdown`; pvpanic for guests that report their panics;
/// virtio-net and its dependencies for a guest's network card, and tun for
/// the tap L1 gives the nested VMM.
const MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "kvm-intel",
    "kvm-amd",
    "evdev",
    "button",
    "pvpanic",
    "pvpanic-mmio",
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "tun",
];
const MANIFEST: &str = "manifest.txt";

/// The files of the default guest, all inside `dir`.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    /// The files (bzImage, vmlinux, initramfs, busybox, modules folder).
    pub paths: vmm_testbed::GuestFiles,
    /// The kept modules (`*.ko`, uncompressed), in load order.
    pub modules: Vec<PathBuf>,
    /// The versioned kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub kernel_package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// The version of `busybox-static`.
    pub busybox_version: String,
}

/// The cache folder: `$VMM_GUEST_DIR` if set, else `target/guest` in the
/// workspace root.
pub fn default_dir() -> PathBuf {
    vmm_testbed::default_guest_dir()
}

/// The default guest in [`default_dir`], fetched and built if missing.
pub fn ensure() -> Result<GuestFiles> {
    ensure_in(&default_dir(), false)
}

/// The default guest in `dir`, fetched and built if missing or if `refresh`.
pub fn ensure_in(dir: &Path, refresh: bool) -> Result<GuestFiles> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !refresh {
        match cache::cached(dir) {
            Ok(files) => {
                eprintln!("guest: using the cached guest in {}", dir.display());
                refresh_initramfs(&files)?;
                return Ok(files);
            }
            Err(why) if dir.join(MANIFEST).exists() => {
                eprintln!("guest: rebuilding the cache in {}: {why:#}", dir.display());
            }
            Err(_) => {}
        }
    }
    fetch::build(dir)
}

/// `cargo xtask guest [--dir DIR] [--refresh]`.
pub fn task(args: &[String]) -> Result<()> {
    let mut dir = default_dir();
    let mut refresh = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(it.next().context("--dir needs a folder")?),
            "--refresh" => refresh = true,
            other => {
                bail!("guest: unknown argument `{other}` (usage: guest [--dir DIR] [--refresh])")
            }
        }
    }
    let start = Instant::now();
    let g = ensure_in(&dir, refresh)?;
    eprintln!("guest: ready in {:.1} s", start.elapsed().as_secs_f64());
    println!("cache:     {}", g.paths.dir.display());
    println!("kernel:    {} {}", g.kernel_package, g.kernel_version);
    println!("busybox:   {} {}", BUSYBOX_PACKAGE, g.busybox_version);
    println!("bzImage:   {}", g.paths.bzimage.display());
    println!("vmlinux:   {}", g.paths.vmlinux.display());
    println!("initramfs: {}", g.paths.initramfs.display());
    println!("busybox:   {}", g.paths.busybox.display());
    println!("modules:   {}", g.paths.modules_dir.display());
    for m in &g.modules {
        println!("           {}", m.display());
    }
    Ok(())
}

/// A newc initramfs: the usual folders, `/dev/console` and `/dev/null`,
/// `/bin/busybox` (read from `busybox`) with links for the common applets,
/// `/init` = `init_script` (mode 0755), then `extra_files` as
/// (guest path, contents, permission bits); their parent folders are made.
pub fn initramfs(
    busybox: &Path,
    init_script: &str,
    extra_files: &[(String, Vec<u8>, u32)],
) -> Result<Vec<u8>> {
    let bin = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    Ok(vmm_testbed::initramfs::busybox_initramfs(
        &bin,
        init_script,
        extra_files,
    )?)
}

/// The default initramfs's modules from `modules_dir`, as initramfs files.
pub fn guest_modules(modules_dir: &Path) -> Result<Vec<(String, Vec<u8>, u32)>> {
    vmm_testbed::initramfs::guest_modules()
        .map(|m| {
            let path = modules_dir.join(format!("{m}.ko"));
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((format!("lib/modules/{m}.ko"), data, 0o644))
        })
        .collect()
}

/// Rewrites the cached initramfs if [`DEFAULT_INIT`] or the layout changed.
fn refresh_initramfs(g: &GuestFiles) -> Result<()> {
    let want = initramfs(
        &g.paths.busybox,
        DEFAULT_INIT,
        &guest_modules(&g.paths.modules_dir)?,
    )?;
    if std::fs::read(&g.paths.initramfs).ok().as_deref() != Some(&want[..]) {
        eprintln!(
            "guest: rewriting {} (its contents changed)",
            g.paths.initramfs.display()
        );
        cache::write_atomic(&g.paths.initramfs, &want)?;
        cache::update_sha256(&g.paths.dir, "initramfs.cpio")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_testbed::cpio::read::parse;

    /// Fetches the real guest (Debian hosts only): `cargo test -p xtask -- --ignored`.
    #[test]
    #[ignore = "downloads ~30 MB with apt-get"]
    fn real_guest() {
        let g = ensure().unwrap();
        let elf = std::fs::read(&g.paths.vmlinux).unwrap();
        bzimage::check_vmlinux(&elf).unwrap();
        let e = parse(&std::fs::read(&g.paths.initramfs).unwrap());
        assert!(e
            .iter()
            .any(|e| e.name == "bin/busybox" && e.data.len() > 100_000));
        assert_eq!(g.modules.len(), MODULES.len());
    }
}
