//! A root disk for the default guest: a small ext4 image made with
//! `mkfs.ext4 -d` (e2fsprogs) from the guest's static busybox, its applet
//! links, `/etc`, the kernel modules and an `/sbin/init` script. The
//! default initramfs's `/init` mounts it and switches to it when the kernel
//! command line says `root=/dev/vdX` (see [`crate::initramfs::DEFAULT_INIT`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::initramfs::{busybox_initramfs, guest_modules, DEFAULT_INIT};
use crate::{GuestFiles, TestbedError};

/// `/sbin/init` of the root disk: the mounts the initramfs did not move
/// over, `/` read-write, the modules not loaded yet, the power button
/// watcher, `/etc/rc.local` if executable, a shell on the console; when the
/// shell exits, `/sbin/vmm-poweroff` (sync, `/` read-only, power off).
pub const ROOTFS_INIT: &str = r#"#!/bin/sh
# /sbin/init of the vmm root disk (written by cargo xtask guest --rootfs).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
[ -e /proc/self ] || mount -t proc proc /proc
grep -q '^sysfs /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -o remount,rw / || echo "vmm guest: / stays read-only"
mount -t tmpfs -o mode=0755 tmpfs /run
hostname -F /etc/hostname
# Booted by the default initramfs these are loaded already.
for m in evdev button virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  grep -q "^$m " /proc/modules || insmod /lib/modules/$m.ko 2>/dev/null
done
for e in /dev/input/event*; do
  [ -e "$e" ] || continue
  (dd if="$e" bs=24 count=1 of=/dev/null 2>/dev/null
   echo "vmm guest: power button pressed, powering off"; /sbin/vmm-poweroff) &
done
echo "vmm guest: root on $(grep -m1 ' / ' /proc/mounts | cut -d' ' -f1,3,4); Linux $(uname -r), $(nproc) CPU(s); exit the shell to power off"
[ -x /etc/rc.local ] && /etc/rc.local
# cttyhack opens the real console (e.g. /dev/ttyS0) as the controlling
# terminal of the new session, so that Ctrl-C and job control work.
setsid cttyhack sh
/sbin/vmm-poweroff
"#;

/// `/sbin/vmm-poweroff`: writes everything out, leaves `/` clean
/// (read-only) and powers off at once.
pub const ROOTFS_POWEROFF: &str = r#"#!/bin/sh
# Power off with / clean (written by cargo xtask guest --rootfs).
echo "vmm guest: syncing, / read-only, powering off"
sync
mount -o remount,ro / || echo "vmm guest: / is busy and stays read-write (synced)"
poweroff -f
"#;

/// The image's `/etc` files (path, contents).
const ETC: &[(&str, &str)] = &[
    (
        "etc/fstab",
        "/dev/root / ext4 rw 0 1\nproc /proc proc defaults 0 0\nsysfs /sys sysfs defaults 0 0\n\
         devtmpfs /dev devtmpfs defaults 0 0\n",
    ),
    ("etc/passwd", "root::0:0:root:/root:/bin/sh\n"),
    ("etc/group", "root:x:0:\n"),
    ("etc/hostname", "vmm-guest\n"),
    ("etc/profile", "export PATH=/bin:/sbin:/usr/bin:/usr/sbin\n"),
];

/// The folders of the image, with their permission bits.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
    ("mnt", 0o755),
];

/// One entry of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A folder with these permission bits.
    Dir(u32),
    /// A file: contents and permission bits.
    File(Vec<u8>, u32),
    /// A symbolic link to this target.
    Symlink(String),
}

/// The smallest image [`build`] makes (room for busybox, the modules and
/// ext4's own metadata).
pub const MIN_SIZE: u64 = 16 << 20;
/// The default size of `cargo xtask guest --rootfs`.
pub const DEFAULT_SIZE: u64 = 128 << 20;

/// Every entry of the root image, parents before children: the folders,
/// `/bin/busybox` and a link for each of `applets` (paths as
/// `busybox --list-full` prints them; those clashing with a file of ours,
/// `sbin/init`, are left out), `/etc`, the init scripts, `modules` as
/// `/lib/modules/NAME.ko`, then `extra` (path, contents, mode), which
/// replace an entry of the same path.
pub fn entries(
    busybox: &[u8],
    applets: &[String],
    modules: &[(String, Vec<u8>)],
    extra: &[(String, Vec<u8>, u32)],
) -> Vec<(String, Entry)> {
    let mut out: Vec<(String, Entry)> = DIRS
        .iter()
        .map(|(d, mode)| ((*d).to_owned(), Entry::Dir(*mode)))
        .collect();
    out.push(("bin/busybox".into(), Entry::File(busybox.to_vec(), 0o755)));
    let ours = ["sbin/init", "sbin/vmm-poweroff", "bin/busybox"];
    for a in applets {
        let a = a.trim().trim_start_matches('/');
        // Only plain relative paths into the folders made above.
        let sane = !a.is_empty()
            && !a.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            && DIRS
                .iter()
                .any(|(d, _)| a.rsplit_once('/').is_some_and(|(parent, _)| parent == *d));
        if sane && !ours.contains(&a) && !out.iter().any(|(p, _)| p == a) {
            out.push((a.to_owned(), Entry::Symlink("/bin/busybox".into())));
        }
    }
    for (path, text) in ETC {
        out.push((
            (*path).to_owned(),
            Entry::File(text.as_bytes().to_vec(), 0o644),
        ));
    }
    out.push((
        "sbin/init".into(),
        Entry::File(ROOTFS_INIT.as_bytes().to_vec(), 0o755),
    ));
    out.push((
        "sbin/vmm-poweroff".into(),
        Entry::File(ROOTFS_POWEROFF.as_bytes().to_vec(), 0o755),
    ));
    for (name, data) in modules {
        out.push((
            format!("lib/modules/{name}.ko"),
            Entry::File(data.clone(), 0o644),
        ));
    }
    for (path, data, mode) in extra {
        let path = path.trim_start_matches('/').to_owned();
        out.retain(|(p, _)| *p != path);
        out.push((path, Entry::File(data.clone(), *mode)));
    }
    out
}

/// The applets of the static busybox at `busybox`, as paths
/// (`bin/ls`, `sbin/switch_root`, …): it runs on the host
/// (`busybox --list-full`).
pub fn applets(busybox: &Path) -> Result<Vec<String>, TestbedError> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| TestbedError::HostTool("busybox --list-full", "busybox-static", e))?;
    if !out.status.success() {
        return Err(TestbedError::Rootfs(format!(
            "{} --list-full failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The default guest's modules ([`guest_modules`]) as (name, contents).
fn read_modules(guest: &GuestFiles) -> Result<Vec<(String, Vec<u8>)>, TestbedError> {
    guest_modules()
        .map(|m| {
            let path = guest.module(m);
            let data = std::fs::read(&path).map_err(|e| TestbedError::Read(path, e))?;
            Ok((m.to_owned(), data))
        })
        .collect()
}

/// The default initramfs built from `guest`'s busybox and modules, with
/// this crate's [`DEFAULT_INIT`] (what `cargo xtask guest` writes to
/// `initramfs.cpio`; tests use it so that they run the `/init` of the
/// code under test, not a cached one).
pub fn default_initramfs(guest: &GuestFiles) -> Result<Vec<u8>, TestbedError> {
    let busybox =
        std::fs::read(&guest.busybox).map_err(|e| TestbedError::Read(guest.busybox.clone(), e))?;
    let modules: Vec<(String, Vec<u8>, u32)> = read_modules(guest)?
        .into_iter()
        .map(|(m, data)| (format!("lib/modules/{m}.ko"), data, 0o644))
        .collect();
    Ok(busybox_initramfs(&busybox, DEFAULT_INIT, &modules)?)
}

/// Writes the root image of `guest` to `image` (replaced if there), a
/// sparse ext4 file system of `size` bytes (at least [`MIN_SIZE`]), with
/// `extra` files (see [`entries`]).
pub fn build(
    guest: &GuestFiles,
    image: &Path,
    size: u64,
    extra: &[(String, Vec<u8>, u32)],
) -> Result<(), TestbedError> {
    if size < MIN_SIZE {
        return Err(TestbedError::Rootfs(format!(
            "a root image of {size} bytes is too small (at least {} MiB)",
            MIN_SIZE >> 20
        )));
    }
    let busybox =
        std::fs::read(&guest.busybox).map_err(|e| TestbedError::Read(guest.busybox.clone(), e))?;
    let all = entries(
        &busybox,
        &applets(&guest.busybox)?,
        &read_modules(guest)?,
        extra,
    );
    let name = image
        .file_name()
        .map_or_else(|| "rootfs".to_owned(), |n| n.to_string_lossy().into_owned());
    let parent = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TestbedError::Write(parent.to_owned(), e))?;
    let staging = parent.join(format!(".{name}.staging"));
    let partial = parent.join(format!(".{name}.partial"));
    let result = stage(&staging, &all).and_then(|()| mkfs(&staging, &partial, size));
    let _ = std::fs::remove_dir_all(&staging);
    match result {
        Ok(()) => {
            std::fs::rename(&partial, image).map_err(|e| TestbedError::Write(image.into(), e))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Writes `all` under `dir` (made afresh).
fn stage(dir: &Path, all: &[(String, Entry)]) -> Result<(), TestbedError> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    let w = |p: PathBuf, e| TestbedError::Write(p, e);
    std::fs::create_dir_all(dir).map_err(|e| w(dir.to_owned(), e))?;
    for (path, entry) in all {
        let at = dir.join(path);
        if let Some(p) = at.parent() {
            std::fs::create_dir_all(p).map_err(|e| w(p.to_owned(), e))?;
        }
        let mode = match entry {
            Entry::Dir(mode) => {
                std::fs::create_dir_all(&at).map_err(|e| w(at.clone(), e))?;
                *mode
            }
            Entry::File(data, mode) => {
                std::fs::write(&at, data).map_err(|e| w(at.clone(), e))?;
                *mode
            }
            Entry::Symlink(target) => {
                std::os::unix::fs::symlink(target, &at).map_err(|e| w(at.clone(), e))?;
                continue;
            }
        };
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
            .map_err(|e| w(at.clone(), e))?;
    }
    Ok(())
}

/// `mkfs.ext4 -d staging image SIZE`: a fresh sparse file.
fn mkfs(staging: &Path, image: &Path, size: u64) -> Result<(), TestbedError> {
    let _ = std::fs::remove_file(image);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "vmm-root", "-E", "root_owner=0:0", "-d"])
        .arg(staging)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .output()
        .map_err(|e| TestbedError::HostTool("mkfs.ext4", "e2fsprogs", e))?;
    if !out.status.success() {
        return Err(TestbedError::Rootfs(format!(
            "mkfs.ext4 failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(all: &'a [(String, Entry)], p: &str) -> &'a Entry {
        &all.iter()
            .find(|(q, _)| q == p)
            .unwrap_or_else(|| panic!("no {p}"))
            .1
    }

    #[test]
    fn layout() {
        let applets: Vec<String> = [
            "bin/sh",
            "sbin/init",
            "sbin/switch_root",
            "usr/bin/md5sum",
            "bin/../etc/passwd",
            "/bin/ls",
            "opt/x",
            "",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let modules = vec![("virtio_blk".to_owned(), b"KO".to_vec())];
        let extra = vec![("/etc/rc.local".to_owned(), b"#!/bin/sh\n".to_vec(), 0o755)];
        let all = entries(b"BB", &applets, &modules, &extra);
        assert_eq!(
            *find(&all, "bin/busybox"),
            Entry::File(b"BB".to_vec(), 0o755)
        );
        for l in ["bin/sh", "sbin/switch_root", "usr/bin/md5sum", "bin/ls"] {
            assert_eq!(*find(&all, l), Entry::Symlink("/bin/busybox".into()), "{l}");
        }
        // Our init, not busybox's; odd paths are left out.
        assert_eq!(
            *find(&all, "sbin/init"),
            Entry::File(ROOTFS_INIT.as_bytes().to_vec(), 0o755)
        );
        assert!(!all
            .iter()
            .any(|(p, _)| p.contains("..") || p == "opt/x" || p.is_empty()));
        assert_eq!(*find(&all, "tmp"), Entry::Dir(0o1777));
        for d in ["proc", "sys", "dev", "root", "run"] {
            assert!(matches!(find(&all, d), Entry::Dir(_)), "{d}");
        }
        assert!(
            matches!(find(&all, "etc/passwd"), Entry::File(t, 0o644) if t.starts_with(b"root::0:0:"))
        );
        assert_eq!(
            *find(&all, "lib/modules/virtio_blk.ko"),
            Entry::File(b"KO".to_vec(), 0o644)
        );
        assert_eq!(
            *find(&all, "etc/rc.local"),
            Entry::File(b"#!/bin/sh\n".to_vec(), 0o755)
        );
        // Parents come before their children, each path once.
        for (i, (p, _)) in all.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                let at = all.iter().position(|(q, _)| q == parent).unwrap();
                assert!(at < i, "{parent} after {p}");
            }
            assert_eq!(all.iter().filter(|(q, _)| q == p).count(), 1, "{p}");
        }
        // The init powers off through vmm-poweroff, which leaves / clean.
        assert!(ROOTFS_INIT.ends_with("setsid cttyhack sh\n/sbin/vmm-poweroff\n"));
        assert!(ROOTFS_POWEROFF.contains("sync\nmount -o remount,ro /"));
    }

    #[test]
    fn too_small_is_refused() {
        let g = GuestFiles::layout(Path::new("/nonexistent"));
        let e = build(&g, Path::new("/nonexistent/x.img"), 1 << 20, &[]).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }
}
