//! Opening a path only if it is a regular file, and never blocking on
//! anything else: `open(2)` of a FIFO waits for its other end, for ever if
//! none comes, and a character device (a terminal, `/dev/zero`) never
//! ends. So a path is opened with `O_NONBLOCK` (which makes `open` of a
//! FIFO return at once, and is then cleared) and refused unless `fstat`
//! says it is a regular file. The boot images (`--kernel`, `--initrd`),
//! the snapshot files QMP reads and the files `pmemsave` writes go through
//! here: on the main loop, a FIFO would stop the VMM.

use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// For reading.
    Read,
    /// For writing, made if missing (mode 0666 less the umask), not
    /// truncated: the caller truncates once it has looked at the file.
    Write,
}

/// Why a path was not opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// It is there but is not a regular file.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// `open(2)` or `fstat(2)` failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Opens `path` for `access` if it is a regular file, without blocking on
/// anything else.
pub(crate) fn open(path: &Path, access: Access) -> Result<File, OpenError> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Write => options.write(true).create(true),
    };
    let file = match options
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        // A socket cannot be opened at all (ENXIO), nor a FIFO for writing
        // with no reader, nor a directory for writing: say what it is.
        Err(e) => {
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => OpenError::NotRegular(kind(&meta)),
                _ => OpenError::Io(e),
            })
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(OpenError::NotRegular(kind(&meta)));
    }
    clear_nonblocking(&file)?;
    Ok(file)
}

/// What a file that is not a regular file is, for messages.
pub(crate) fn kind(meta: &Metadata) -> &'static str {
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

/// Clears `O_NONBLOCK` (Linux ignores it for a regular file's reads and
/// writes; it is cleared so that nothing depends on that).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    use crate::test_util::TempDir as Dir;

    fn not_regular(path: &Path, access: Access) -> &'static str {
        match open(path, access) {
            Err(OpenError::NotRegular(kind)) => kind,
            other => panic!("{} ({access:?}): {other:?}", path.display()),
        }
    }

    #[test]
    fn writing_makes_a_missing_file_and_keeps_an_existing_ones_bytes() {
        let dir = Dir::new("regular-write");
        let path = dir.0.join("f");
        drop(open(&path, Access::Write).unwrap());
        assert!(path.is_file());
        std::fs::write(&path, b"kept").unwrap();
        let file = open(&path, Access::Write).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4);
        // SAFETY: F_GETFL on an open fd; no memory.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        assert_eq!(flags & libc::O_ACCMODE, libc::O_WRONLY);
    }

    /// A FIFO either way, with nobody at its other end: were `open` to
    /// block, this test would hang instead.
    #[test]
    fn a_fifo_is_refused_without_blocking_either_way() {
        let dir = Dir::new("regular-fifo");
        let path = dir.0.join("fifo");
        crate::test_util::mkfifo(&path);
        assert_eq!(not_regular(&path, Access::Read), "a FIFO");
        assert_eq!(not_regular(&path, Access::Write), "a FIFO");
    }

    #[test]
    fn directories_devices_and_sockets_are_refused_either_way() {
        let dir = Dir::new("regular-others");
        let socket = dir.0.join("sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        for access in [Access::Read, Access::Write] {
            assert_eq!(not_regular(&dir.0, access), "a directory");
            assert_eq!(
                not_regular(Path::new("/dev/null"), access),
                "a character device"
            );
            assert_eq!(not_regular(&socket, access), "a socket");
        }
    }

    #[test]
    fn a_missing_file_to_read_or_folder_to_write_in_is_an_io_error() {
        for access in [Access::Read, Access::Write] {
            let err = open(Path::new("/nonexistent/f"), access).unwrap_err();
            assert!(matches!(err, OpenError::Io(_)), "{err:?}");
        }
    }
}
