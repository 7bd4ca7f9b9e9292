//! The guest's boot images: the kernel and initrd files, opened once and
//! kept open so that a reset loads the same kernel and initrd again (as
//! QEMU's fw_cfg keeps its copies).
//!
//! Only regular files are taken, and opening never blocks: `open(2)` of a
//! FIFO waits for a writer, for ever if none comes, and a character device
//! (a terminal, `/dev/zero`) never ends. So a path is opened with
//! `O_NONBLOCK` (which makes `open` of a FIFO return at once, and is then
//! cleared) and refused unless `fstat` says it is a regular file.

use std::fs::{File, OpenOptions};
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::boot::{self, KernelEntry, LoadedKernel};
use crate::cpu::BootEntry;
use crate::layout;
use crate::machine::PcError;
use crate::{acpi, memory, mptable};

/// Opens `path` for reading if it is a regular file, without blocking on
/// anything else; `what` ("kernel", "initrd") names it in errors.
pub(crate) fn open_regular(what: &'static str, path: &Path) -> Result<File, PcError> {
    let not_regular = |meta: &std::fs::Metadata| PcError::NotRegular {
        what,
        path: path.to_owned(),
        kind: file_kind(meta),
    };
    let open_error = |source| PcError::Open {
        what,
        path: path.to_owned(),
        source,
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => {
            // A socket cannot be opened at all (ENXIO): say what it is.
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => not_regular(&meta),
                _ => open_error(e),
            });
        }
    };
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    clear_nonblocking(&file).map_err(open_error)?;
    Ok(file)
}

/// What a file that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Clears `O_NONBLOCK` (Linux ignores it for a regular file's reads; it is
/// cleared so that nothing depends on that).
fn clear_nonblocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on an fd this function borrows open; no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with flags just read, minus one bit; no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The files and settings the guest is loaded from.
pub(crate) struct BootImages {
    pub(crate) kernel: File,
    pub(crate) initrd: Option<File>,
    pub(crate) cmdline: String,
    pub(crate) memory: u64,
    pub(crate) cpus: u32,
    /// Add the ACPI WDAT (the machine has an i6300esb).
    pub(crate) wdat: bool,
}

impl BootImages {
    /// Loads kernel, initrd and command line into `mem` and writes the
    /// e820 map, ACPI and MP tables and boot parameters; returns where the
    /// boot CPU starts.
    pub(crate) fn load(&mut self, mem: &vmm_core::ram::GuestRam) -> Result<BootEntry, PcError> {
        let rewind = |f: &mut File| f.rewind().map_err(|e| PcError::Reload(e.to_string()));
        rewind(&mut self.kernel)?;
        let kernel = boot::load_kernel(mem, &mut self.kernel)?;
        let initrd = match self.initrd.as_mut() {
            Some(f) => {
                rewind(f)?;
                Some(boot::load_initrd(mem, f, &kernel, self.memory)?)
            }
            None => None,
        };
        let cmdline = boot::load_cmdline(mem, &self.cmdline, kernel.cmdline_max_size())?;
        let e820 = memory::e820_map(self.memory);
        let rsdp = acpi::create_acpi_tables(mem, self.cpus, self.memory, self.wdat)?;
        mptable::setup_mptable(mem, self.cpus)?;
        let entry = boot_entry(&kernel);
        match entry {
            BootEntry::Pvh { .. } => {
                boot::write_pvh_start_info(mem, cmdline.0, initrd, &e820, Some(rsdp))?;
            }
            _ => boot::write_boot_params(mem, &kernel, cmdline, initrd, &e820, Some(rsdp))?,
        }
        Ok(entry)
    }

    /// [`load`](Self::load) for a reset, on the main loop's thread. The
    /// images are regular files (anything else is refused at start), so the
    /// reads do not wait on another process; a thread of its own here
    /// would need thread creation and a signalfd on the main thread's
    /// seccomp list.
    pub(crate) fn reload(&mut self, mem: &vmm_core::ram::GuestRam) -> Result<BootEntry, PcError> {
        self.load(mem)
    }
}

fn boot_entry(kernel: &LoadedKernel) -> BootEntry {
    match kernel.entry {
        KernelEntry::Pvh(addr) => BootEntry::Pvh {
            entry: addr.0,
            start_info: layout::PVH_INFO_START,
        },
        KernelEntry::Linux64(addr) => BootEntry::Linux64 {
            entry: addr.0,
            zero_page: layout::ZERO_PAGE_START,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "vmm-pc-images-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refused(path: &Path) -> String {
        match open_regular("kernel", path) {
            Err(e @ PcError::NotRegular { .. }) => e.to_string(),
            other => panic!("{}: {other:?}", path.display()),
        }
    }

    #[test]
    fn a_regular_file_opens_blocking() {
        let dir = Dir::new("regular");
        let path = dir.0.join("k");
        std::fs::write(&path, b"kernel").unwrap();
        let file = open_regular("kernel", &path).unwrap();
        // SAFETY: F_GETFL on an open fd; no memory.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }

    /// Issue 15: a FIFO as --kernel or --initrd blocked `open` for ever.
    /// Here it is refused at once: were `open` to block, this test would
    /// hang instead.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = Dir::new("fifo");
        let path = dir.0.join("fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let msg = refused(&path);
        assert_eq!(
            msg,
            format!("kernel {} is not a regular file (a FIFO)", path.display())
        );
    }

    #[test]
    fn directories_devices_and_sockets_are_refused() {
        let dir = Dir::new("others");
        assert!(refused(&dir.0).ends_with("is not a regular file (a directory)"));
        assert!(refused(Path::new("/dev/null")).ends_with("(a character device)"));
        let socket = dir.0.join("sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        assert!(refused(&socket).ends_with("(a socket)"));
    }

    #[test]
    fn a_missing_file_is_an_open_error() {
        let err = open_regular("initrd", Path::new("/nonexistent/initrd")).unwrap_err();
        assert!(
            matches!(err, PcError::Open { what: "initrd", .. }),
            "{err:?}"
        );
    }
}
