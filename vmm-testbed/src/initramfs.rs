//! Initramfs images built around a static busybox: the default guest's and
//! the variants tests need (an `/init` that reports and reboots, …).

use crate::cpio::{CpioError, Writer};

/// Busybox applets linked in `/bin` of the initramfs (`/init` installs the
/// rest at boot with `busybox --install -s`).
pub const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "setsid", "cttyhack", "poweroff", "reboot", "echo", "cat", "grep",
    "dmesg", "nproc", "uname", "ls", "ps", "mkdir", "sleep", "insmod", "rmmod", "lsmod", "head",
    "free",
];
/// Modules the default initramfs loads from `/lib/modules` so that the ACPI
/// power button reaches userspace as an input event.
pub const POWER_BUTTON_MODULES: &[&str] = &["evdev", "button"];

/// The virtio PCI and block drivers, in load order (Debian's cloud kernel
/// builds them as modules): what the guest needs for `--drive …,if=virtio`.
pub const VIRTIO_BLOCK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// Every module the default initramfs carries in `/lib/modules`, in load
/// order.
pub fn guest_modules() -> impl Iterator<Item = &'static str> {
    POWER_BUTTON_MODULES
        .iter()
        .chain(VIRTIO_BLOCK_MODULES)
        .copied()
}

/// The `/init` of the default initramfs: mounts, the modules of
/// [`guest_modules`] (in `/lib/modules` when present), a watcher
/// that powers off on their input event, a banner, then a shell on the
/// console with job control; powers off when the shell exits. With
/// `root=/dev/...` on the kernel command line it mounts that disk instead
/// (read-write unless `ro`) and `switch_root`s to its `/sbin/init` (see
/// [`crate::rootfs`]); if that fails it says so and carries on as without.
pub const DEFAULT_INIT: &str = r#"#!/bin/sh
# /init of the default vmm guest (written by cargo xtask guest).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
# The ACPI power button (QMP system_powerdown) powers the guest off; the
# virtio PCI and block drivers find the VMM's disks.
for m in evdev button virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  [ -e /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
# root=/dev/... on the command line: that disk (e.g. one of cargo xtask
# guest --rootfs) becomes / and its /sbin/init runs (read-write unless
# `ro`); without root= this initramfs stays the root.
root= mode=rw fstype=
for a in $(cat /proc/cmdline); do
  case "$a" in
    root=/dev/*) root=${a#root=} ;;
    rootfstype=*) fstype=${a#rootfstype=} ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
  esac
done
if [ -n "$root" ]; then
  i=0
  while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  mkdir -p /newroot
  if mount ${fstype:+-t "$fstype"} -o "$mode" "$root" /newroot; then
    if [ -x /newroot/sbin/init ]; then
      mount --move /dev /newroot/dev && mount --move /sys /newroot/sys &&
        mount --move /proc /newroot/proc &&
        exec switch_root /newroot /sbin/init
      echo "vmm guest: cannot move /dev, /sys, /proc to $root"
    else
      echo "vmm guest: $root has no /sbin/init"
    fi
    umount /newroot
  else
    echo "vmm guest: cannot mount $root ($mode)"
  fi
  echo "vmm guest: staying in the initramfs"
fi
for e in /dev/input/event*; do
  [ -e "$e" ] || continue
  (dd if="$e" bs=24 count=1 of=/dev/null 2>/dev/null
   echo "vmm guest: power button pressed, powering off"; poweroff -f) &
done
echo "vmm guest: Linux $(uname -r), $(nproc) CPU(s); exit the shell to power off"
# cttyhack opens the real console (e.g. /dev/ttyS0) as the controlling
# terminal of the new session, so that Ctrl-C and job control work.
setsid cttyhack sh
poweroff -f
"#;

/// A newc initramfs: the usual folders, `/dev/console` and `/dev/null`,
/// `/bin/busybox` with links for [`APPLETS`], `/init` = `init_script`
/// (mode 0755), then `extra_files` as (guest path, contents, permission
/// bits); their parent folders are made. An extra file that clashes with a
/// built-in path is refused.
pub fn busybox_initramfs(
    busybox: &[u8],
    init_script: &str,
    extra_files: &[(String, Vec<u8>, u32)],
) -> Result<Vec<u8>, CpioError> {
    let mut w = Writer::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc",
    ] {
        w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", busybox, 0o755)?;
    for a in APPLETS {
        w.symlink(&format!("bin/{a}"), "busybox")?;
    }
    w.file("init", init_script.as_bytes(), 0o755)?;
    for (path, data, mode) in extra_files {
        w.file(path, data, *mode)?;
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read::parse;

    #[test]
    fn default_initramfs_layout() {
        let buf = busybox_initramfs(b"BB", DEFAULT_INIT, &[]).unwrap();
        let e = parse(&buf);
        let get = |n: &str| {
            e.iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(
            (get("bin/busybox").mode, get("bin/busybox").data.as_slice()),
            (0o100_755, &b"BB"[..])
        );
        assert_eq!(get("init").mode, 0o100_755);
        assert!(get("init").data.starts_with(b"#!/bin/sh\n"));
        assert_eq!(
            (get("dev/console").mode, get("dev/console").rdev),
            (0o020_600, (5, 1))
        );
        assert_eq!(
            (get("dev/null").mode, get("dev/null").rdev),
            (0o020_666, (1, 3))
        );
        assert_eq!(get("tmp").mode, 0o041_777);
        for a in APPLETS {
            let l = get(&format!("bin/{a}"));
            assert_eq!((l.mode, l.data.as_slice()), (0o120_777, &b"busybox"[..]));
        }
        // /init loads every module it carries, in their order.
        let init = DEFAULT_INIT.replace('\n', " ");
        let order: Vec<&str> = guest_modules().collect();
        assert!(
            init.contains(&format!("for m in {}; do", order.join(" "))),
            "{init}"
        );
        // root=/dev/...: the disk is mounted and switched to; without it,
        // or if that fails, the shell of the initramfs.
        assert!(DEFAULT_INIT.contains("root=/dev/*) root=${a#root=} ;;"));
        assert!(DEFAULT_INIT.contains("exec switch_root /newroot /sbin/init"));
        assert!(
            DEFAULT_INIT.find("exec switch_root").unwrap()
                < DEFAULT_INIT.find("setsid cttyhack sh").unwrap()
        );
        // Every applet /init runs before `busybox --install` is linked.
        for a in [
            "mount", "echo", "uname", "nproc", "setsid", "cttyhack", "sh", "poweroff",
        ] {
            assert!(APPLETS.contains(&a), "{a}");
        }
    }

    #[test]
    fn variant_initramfs() {
        let init = "#!/bin/sh\nnproc\ngrep MemTotal /proc/meminfo\ndmesg | grep ttyS0\nreboot -f\n";
        let extra = vec![("/etc/test/data.txt".to_owned(), b"42\n".to_vec(), 0o644)];
        let e = parse(&busybox_initramfs(b"BB", init, &extra).unwrap());
        let get = |n: &str| e.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").data, init.as_bytes());
        assert_eq!(
            (get("etc/test").mode, get("etc/test/data.txt").mode),
            (0o040_755, 0o100_644)
        );
        // An extra file clashing with a built-in one is refused.
        let clash = vec![("/init".to_owned(), Vec::new(), 0o755)];
        assert!(busybox_initramfs(b"BB", init, &clash).is_err());
    }
}
