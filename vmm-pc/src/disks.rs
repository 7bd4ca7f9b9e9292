//! Disks as the command line gives them (QEMU's `-drive`), and the checks
//! an image passes before the machine is built: a missing file, a folder,
//! an empty file, a size that is not a whole number of 512-byte sectors, a
//! qcow2 image (only raw images are served), a file the VMM may not write
//! without `readonly=on`: each a one-line error naming the drive.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The sector size of the block layer.
pub const SECTOR_SIZE: u64 = 512;
/// The first four bytes of a qcow2 image.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

pub use vmm_virtio::blk::{Aio, CacheMode, ErrorAction};

/// One drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Its id (QEMU's `id=`, or `drive0`... for unnamed ones).
    pub id: String,
    /// The raw image.
    pub path: PathBuf,
    /// The guest may not write it.
    pub readonly: bool,
    /// Host cache mode.
    pub cache: CacheMode,
    /// On write errors.
    pub werror: ErrorAction,
    /// On read errors.
    pub rerror: ErrorAction,
    /// The serial the guest reads (`VIRTIO_BLK_T_GET_ID`), at most 20 bytes.
    pub serial: Option<String>,
    /// The PCI slot of its virtio-blk-pci (None: the first free one).
    pub slot: Option<u8>,
    /// How requests reach the image (QEMU's `aio=`).
    pub aio: Aio,
}

/// Why an image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Opening failed.
    #[error("drive {id}: could not open '{path}'")]
    Open {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file or block device.
    #[error("drive {id}: '{path}' is not a regular file or block device")]
    NotAFile {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
    },
    /// Empty, or not whole sectors.
    #[error("drive {id}: '{path}' has {size} bytes, not a positive multiple of 512")]
    Size {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A file marked read-only (no write permission bits) for a drive
    /// the guest may write.
    #[error("drive {id}: '{path}' is read-only; give readonly=on to serve it read-only")]
    ReadOnlyFile {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
    },
    /// A qcow2 image.
    #[error("drive {id}: '{path}' is a qcow2 image; only format=raw is supported (convert it: qemu-img convert -O raw)")]
    Qcow2 {
        /// The drive.
        id: String,
        /// The image.
        path: PathBuf,
    },
}

/// An image, open and checked.
#[derive(Debug)]
pub struct DiskImage {
    /// The file.
    pub file: File,
    /// Its size in bytes (whole sectors).
    pub size: u64,
}

/// Opens `disk`'s image as the drive asks (read-only or not, `O_DIRECT`
/// for `cache=none`) and checks it.
pub fn open_image(disk: &DiskConfig) -> Result<DiskImage, DiskError> {
    let id = || disk.id.clone();
    let path = || disk.path.clone();
    let open_err = |source| DiskError::Open {
        id: id(),
        path: path(),
        source,
    };
    // A file nobody may write is one its owner meant to keep: refused for a
    // writable drive even where the VMM could write it anyway (as root).
    let meta = std::fs::metadata(&disk.path).map_err(open_err)?;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(DiskError::NotAFile {
            id: id(),
            path: path(),
        });
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if !disk.readonly && meta.is_file() && meta.permissions().mode() & 0o222 == 0 {
            return Err(DiskError::ReadOnlyFile {
                id: id(),
                path: path(),
            });
        }
    }
    // Not following a FIFO into a wait: O_NONBLOCK for the open; regular
    // files and block devices ignore it.
    let mut flags = libc::O_NONBLOCK;
    if disk.cache == CacheMode::None {
        flags |= libc::O_DIRECT;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.readonly)
        .custom_flags(flags)
        .open(&disk.path)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    let kind = meta.file_type();
    let size = if kind.is_file() {
        meta.len()
    } else if kind.is_block_device() {
        block_device_size(&file).map_err(open_err)?
    } else {
        return Err(DiskError::NotAFile {
            id: id(),
            path: path(),
        });
    };
    if size == 0 || size % SECTOR_SIZE != 0 {
        return Err(DiskError::Size {
            id: id(),
            path: path(),
            size,
        });
    }
    if is_qcow2(&disk.path) {
        return Err(DiskError::Qcow2 {
            id: id(),
            path: path(),
        });
    }
    Ok(DiskImage { file, size })
}

/// Whether the file at `path` starts with qcow2's magic (read without
/// `O_DIRECT`, whose alignment rules a 4-byte read would break).
fn is_qcow2(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == QCOW2_MAGIC)
}

/// A block device's size (`BLKGETSIZE64`).
fn block_device_size(file: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at a live u64; the fd is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &Path) -> DiskConfig {
        DiskConfig {
            id: "d0".into(),
            path: path.to_owned(),
            readonly: false,
            cache: CacheMode::Writeback,
            werror: ErrorAction::Enospc,
            rerror: ErrorAction::Report,
            serial: None,
            slot: None,
            aio: Aio::Auto,
        }
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-disks-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_raw_image_opens_with_its_size() {
        let p = temp("ok", &[0u8; 4096]);
        let img = open_image(&disk(&p)).unwrap();
        assert_eq!(img.size, 4096);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn bad_images_are_refused_with_the_drive_named() {
        let msg = |d: &DiskConfig| open_image(d).unwrap_err().to_string();
        assert!(msg(&disk(Path::new("/nonexistent.img")))
            .starts_with("drive d0: could not open '/nonexistent.img'"));
        assert!(msg(&disk(&std::env::temp_dir())).contains("is not a regular file"));
        let empty = temp("empty", b"");
        assert!(msg(&disk(&empty)).contains("has 0 bytes"));
        let odd = temp("odd", &[0u8; 1000]);
        assert!(msg(&disk(&odd)).contains("has 1000 bytes, not a positive multiple of 512"));
        let mut q = vec![0u8; 1024];
        q[..4].copy_from_slice(QCOW2_MAGIC);
        let qcow = temp("qcow", &q);
        assert!(msg(&disk(&qcow)).contains("qcow2"));
        for p in [empty, odd, qcow] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn a_read_only_file_needs_readonly_on() {
        use std::os::unix::fs::PermissionsExt;
        let p = temp("ro", &[0u8; 512]);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let mut d = disk(&p);
        assert_eq!(
            open_image(&d).unwrap_err().to_string(),
            format!(
                "drive d0: '{}' is read-only; give readonly=on to serve it read-only",
                p.display()
            )
        );
        d.readonly = true;
        assert_eq!(open_image(&d).unwrap().size, 512);
        let _ = std::fs::remove_file(p);
    }
}
