//! A Linux tap as a [`NetBackend`]: `/dev/net/tun` opened non-blocking,
//! attached to interface `NAME` (made if it does not exist, as QEMU does
//! with `script=no`: the user gives it an address), `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, with a 12-byte virtio header on every frame.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{NetBackend, HDR_LEN};

/// Where the tun driver lives.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = 15;

// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
// _IOW('T', 208, unsigned int)
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
// _IOW('T', 216, int)
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// The ioctl number of `TUNSETOFFLOAD`, for the seccomp filter of the
/// thread that calls [`NetBackend::set_offload`].
pub const TUNSETOFFLOAD_IOCTL: u64 = 0x4004_54d0;

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, then the
/// flags in the union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a tap could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a name Linux takes for an interface.
    #[error("tap name '{0}' is not a valid interface name (1-15 bytes, no '/', ':' or spaces)")]
    Name(String),
    /// No tun driver.
    #[error("cannot open {} (is the tun module loaded?)", .path.display())]
    NoTun {
        /// The device path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The tun device may not be opened by this user.
    #[error("cannot open {}: permission denied (the VMM needs read and write access to it)", .path.display())]
    TunPermission {
        /// The device path.
        path: PathBuf,
    },
    /// The tun device exists but cannot be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF refused: no permission to make or attach the interface.
    #[error("tap {name}: permission denied (needs CAP_NET_ADMIN, or a tap made for this user with 'ip tuntap add {name} mode tap user USER')")]
    Permission {
        /// The interface.
        name: String,
    },
    /// TUNSETIFF refused for another reason (in use, not a tap...).
    #[error("tap {name}: cannot attach")]
    Attach {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ refused.
    #[error("tap {name}: cannot set the virtio header size")]
    VnetHeader {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Checks `name` as Linux's `dev_valid_name` does.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(TapError::Name(name.to_owned()));
    }
    Ok(())
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or makes) tap `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::open_at(Path::new(TUN_PATH), name)
    }

    /// [`Tap::open`] through the tun device at `path` (tests point it
    /// elsewhere).
    pub fn open_at(path: &Path, name: &str) -> Result<Self, TapError> {
        check_name(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| {
                let path = path.to_owned();
                if source.kind() == io::ErrorKind::NotFound {
                    TapError::NoTun { path, source }
                } else if source.kind() == io::ErrorKind::PermissionDenied {
                    TapError::TunPermission { path }
                } else {
                    TapError::Open { path, source }
                }
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
        // (40 bytes, the name NUL-terminated: at most 15 bytes were copied
        // into 16 zeroed ones) and lives across the call; the fd is open.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if r < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_owned();
            return Err(if source.raw_os_error() == Some(libc::EPERM) {
                TapError::Permission { name }
            } else {
                TapError::Attach { name, source }
            });
        }
        let size: libc::c_int = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live int; the fd is open.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) };
        if r < 0 {
            return Err(TapError::VnetHeader {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        Ok(Self {
            file,
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
        })
    }

    /// Checks `name` as [`Tap::open`] will ([`check_name`]).
    pub fn check_name_str(name: &str) -> Result<(), TapError> {
        check_name(name)
    }

    /// The interface's name, as the kernel gave it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no pointer);
        // the fd is open.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_linux_does() {
        for ok in ["tap0", "a", "123456789012345", "vmm-net.1"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "1234567890123456", "a/b", "a:b", "a b", ".", ".."] {
            assert!(
                matches!(check_name(bad), Err(TapError::Name(_))),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            check_name("0123456789abcdefg").unwrap_err().to_string(),
            "tap name '0123456789abcdefg' is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
        );
    }

    #[test]
    fn a_missing_tun_device_says_so() {
        let e = Tap::open_at(Path::new("/nonexistent/net/tun"), "tap0").unwrap_err();
        assert!(matches!(e, TapError::NoTun { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot open /nonexistent/net/tun (is the tun module loaded?)"
        );
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert_eq!(source, "No such file or directory (os error 2)");
    }

    #[test]
    fn a_file_that_is_not_tun_cannot_attach() {
        // /dev/null opens but knows no TUNSETIFF.
        let e = Tap::open_at(Path::new("/dev/null"), "tap0").unwrap_err();
        assert!(matches!(e, TapError::Attach { .. }), "{e:?}");
        assert_eq!(e.to_string(), "tap tap0: cannot attach");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn the_ifreq_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
