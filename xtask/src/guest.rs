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
//!                          virtio_blk; watchdog, wdat_wdt; failover,
//!                          net_failover, virtio_net; tun; virtio-rng;
//!                          vsock, vmw_vsock_virtio_transport_common,
//!                          vmw_vsock_virtio_transport; vhost_iotlb, vhost,
//!                          vhost_vsock; tap, vhost_net (decompressed)
//!   manifest.txt           file, package, version, sha256, source; written last
//!
//!   rootfs.img             with --rootfs: an ext4 root disk (root=/dev/vda)
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
/// The kernel every guest, test and benchmark uses, and its Debian version:
/// pinned, so that a fresh clone runs what the tests were tuned on. Debian
/// publishes a new cloud kernel every few weeks and `linux-image-cloud-amd64`
/// moves with it; with 6.1.0-57 (6.1.192-3) L1 itself panicked under the
/// 2-vCPU live migration test, where this one carries it.
/// `VMM_GUEST_KERNEL=current` takes the metapackage's kernel instead, and
/// `VMM_GUEST_KERNEL=PACKAGE[=VERSION]` another one.
const KERNEL_PIN: (&str, &str) = ("linux-image-6.1.0-48-cloud-amd64", "6.1.172-1");
/// The package that has a static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The kernel modules kept: KVM for the nested test bed; the ACPI power
/// button and the input event interface for guests that handle
/// `system_powerdown`; pvpanic for guests that report their panics; the
/// virtio disk drivers; the watchdog core and `wdat_wdt` (the ACPI WDAT
/// driver that finds `--device i6300esb`), which the Linux watchdog tests
/// load; virtio-net and its dependencies for a guest's network card, and
/// tun for the tap L1 gives the nested VMM; virtio-rng for
/// `--device virtio-rng-pci` (the hw_random core is built in); the vsock
/// core and its virtio transport for a guest's virtio-vsock-pci, and
/// vhost-vsock (with vhost and vhost_iotlb) for L1's `/dev/vhost-vsock`
/// under a vhost-vsock-pci; vhost-net (and tap, which it needs) for L1's `/dev/vhost-net` under a
/// virtio-net-pci with `vhost=on`.
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
    "watchdog",
    "wdat_wdt",
    "failover",
    "net_failover",
    "virtio_net",
    "tun",
    "virtio-rng",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "vhost_iotlb",
    "vhost",
    "vhost_vsock",
    "tap",
    "vhost_net",
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

/// Which kernel package to fetch: `Some((package, version))`, or `None`
/// for the current one [`KERNEL_META`] names.
fn kernel_choice() -> Option<(String, Option<String>)> {
    choose_kernel(std::env::var("VMM_GUEST_KERNEL").ok().as_deref())
}

fn choose_kernel(var: Option<&str>) -> Option<(String, Option<String>)> {
    match var.map(str::trim) {
        None | Some("") => Some((KERNEL_PIN.0.into(), Some(KERNEL_PIN.1.into()))),
        Some("current") => None,
        Some(spec) => Some(match spec.split_once('=') {
            Some((p, v)) => (p.into(), Some(v.into())),
            None => (spec.into(), None),
        }),
    }
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

const USAGE: &str = "usage: guest [--dir DIR] [--refresh] [--rootfs [PATH]] [--size SIZE]";

/// What `cargo xtask guest` was asked for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    dir: PathBuf,
    refresh: bool,
    /// `--rootfs [PATH]`: the root image (None: `rootfs.img` in the guest
    /// folder), with its size in bytes.
    rootfs: Option<(Option<PathBuf>, u64)>,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        dir: default_dir(),
        refresh: false,
        rootfs: None,
    };
    let mut size = None;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => o.dir = PathBuf::from(it.next().context("--dir needs a folder")?),
            "--refresh" => o.refresh = true,
            "--rootfs" => {
                let path = it.next_if(|p| !p.starts_with("--")).map(PathBuf::from);
                o.rootfs = Some((path, 0));
            }
            "--size" => {
                let s = it.next().context("--size needs a size (e.g. 128M)")?;
                size = Some(parse_size(s).with_context(|| format!("--size {s}"))?);
            }
            other => bail!("guest: unknown argument `{other}` ({USAGE})"),
        }
    }
    match (&mut o.rootfs, size) {
        (Some((_, s)), size) => *s = size.unwrap_or(vmm_testbed::rootfs::DEFAULT_SIZE),
        (None, Some(_)) => bail!("guest: --size is the size of --rootfs ({USAGE})"),
        (None, None) => {}
    }
    Ok(o)
}

/// A size: bytes, or with a `K`, `M`, `G` suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().context("not a size (e.g. 128M, 1G)")?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|b| *b <= 1 << 40)
        .context("larger than 1 TiB")?;
    anyhow::ensure!(
        bytes >= vmm_testbed::rootfs::MIN_SIZE,
        "smaller than {} MiB",
        vmm_testbed::rootfs::MIN_SIZE >> 20
    );
    Ok(bytes)
}

/// `cargo xtask guest [--dir DIR] [--refresh] [--rootfs [PATH]] [--size SIZE]`.
pub fn task(args: &[String]) -> Result<()> {
    let Options {
        dir,
        refresh,
        rootfs,
    } = options(args)?;
    let start = Instant::now();
    let g = ensure_in(&dir, refresh)?;
    let rootfs = match rootfs {
        Some((path, size)) => {
            let image = path.unwrap_or_else(|| g.paths.dir.join("rootfs.img"));
            vmm_testbed::rootfs::build(&g.paths, &image, size, &[])
                .with_context(|| format!("building {}", image.display()))?;
            Some((image, size))
        }
        None => None,
    };
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
    if let Some((image, size)) = rootfs {
        println!("rootfs:    {} ({} MiB, ext4)", image.display(), size >> 20);
        println!(
            "           boot it: cargo xtask run -- --drive file={},if=virtio,format=raw \
             --append \"console=ttyS0 root=/dev/vda rw\"",
            image.display()
        );
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

    #[test]
    fn the_kernel_is_pinned_unless_the_user_says_otherwise() {
        let pin = Some((KERNEL_PIN.0.to_owned(), Some(KERNEL_PIN.1.to_owned())));
        assert_eq!(choose_kernel(None), pin);
        assert_eq!(choose_kernel(Some(" ")), pin);
        assert_eq!(choose_kernel(Some("current")), None);
        assert_eq!(
            choose_kernel(Some("linux-image-6.1.0-57-cloud-amd64")),
            Some(("linux-image-6.1.0-57-cloud-amd64".into(), None))
        );
        assert_eq!(
            choose_kernel(Some("linux-image-6.1.0-57-cloud-amd64=6.1.192-3")),
            Some((
                "linux-image-6.1.0-57-cloud-amd64".into(),
                Some("6.1.192-3".into())
            ))
        );
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rootfs_options() {
        let o = options(&args(&["--rootfs"])).unwrap();
        assert_eq!(o.rootfs, Some((None, vmm_testbed::rootfs::DEFAULT_SIZE)));
        let o = options(&args(&[
            "--rootfs",
            "/x/r.img",
            "--size",
            "64M",
            "--refresh",
        ]))
        .unwrap();
        assert_eq!(o.rootfs, Some((Some(PathBuf::from("/x/r.img")), 64 << 20)));
        assert!(o.refresh);
        let o = options(&args(&["--size=1G"]));
        assert!(o.is_err());
        let o = options(&args(&["--rootfs", "--size", "1G"])).unwrap();
        assert_eq!(o.rootfs, Some((None, 1 << 30)));
        assert!(options(&args(&["--size", "64M"])).is_err(), "no --rootfs");
        assert!(options(&args(&["--rootfs", "--size"])).is_err());
        for bad in ["", "M", "12X", "1M", "-5M", "99999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("16777216").unwrap(), 16 << 20);
        assert_eq!(parse_size("128m").unwrap(), 128 << 20);
    }

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
