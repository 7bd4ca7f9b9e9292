//! Where the server listens: a Unix socket it creates (and removes again,
//! only that one) or a character device it is given.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The socket file the server created, known by its device and inode, so
/// that what is removed at exit is that socket and nothing else: a file
/// someone put at the path meanwhile stays. Cloned freely.
#[derive(Debug, Clone)]
pub struct SocketPath(Arc<SocketFile>);

#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    removed: AtomicBool,
}

impl SocketPath {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Removes the socket if the path still names the one created (the
    /// same device and inode, still a socket), once. Returns whether it
    /// did. (Between the check and the unlink someone could swap the
    /// path again; no system call removes a name only if it is a given
    /// inode.)
    pub fn remove(&self) -> bool {
        let f = &self.0;
        let ours = std::fs::symlink_metadata(&f.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == f.dev && m.ino() == f.ino);
        if !ours || f.removed.swap(true, Ordering::SeqCst) {
            return false;
        }
        std::fs::remove_file(&f.path).is_ok()
    }
}

/// Creates a listening socket at `path`, mode 0600, non-blocking. The
/// path must not exist. (QMP's, and the VMM's other sockets: a vsock
/// device's.)
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketPath)> {
    // The socket is created 0600 (no window in which others may connect).
    // SAFETY: umask only swaps the process's file-creation mask; no memory
    // is involved. Other threads creating files meanwhile would get the
    // stricter mask, which is harmless.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    let made = std::fs::symlink_metadata(path).and_then(|meta| {
        listener.set_nonblocking(true)?;
        Ok(meta)
    });
    let meta = match made {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    let socket = SocketPath(Arc::new(SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
        removed: AtomicBool::new(false),
    }));
    Ok((listener, socket))
}

/// Whether `path` is a character device (then it is served, not bound).
pub(crate) fn is_device(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.file_type().is_char_device())
}

/// Opens a character device for QMP: read-write, non-blocking (so that a
/// device nobody reads cannot block the main loop; nor does opening wait
/// for a modem's carrier), not our controlling terminal, in raw mode.
pub(crate) fn open_device(path: &Path) -> std::io::Result<File> {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    make_raw(&device)?;
    Ok(device)
}

/// Puts a terminal device in raw mode: bytes through unchanged, no echo,
/// no line editing or CR/LF translation.
pub(crate) fn make_raw(device: &File) -> std::io::Result<()> {
    let fd = device.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open fd and a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: a valid open fd and a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("vmm-qmp-ep-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    #[test]
    fn only_our_socket_is_removed() {
        let d = dir("ours");
        let path = d.0.join("qmp.sock");
        let (listener, socket) = bind(&path).unwrap();
        assert!(socket.remove());
        assert!(!path.exists());
        assert!(!socket.remove(), "once");
        drop(listener);

        // A regular file put in its place stays.
        let (_listener, socket) = bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"mine").unwrap();
        assert!(!socket.remove());
        assert_eq!(std::fs::read(&path).unwrap(), b"mine");
        std::fs::remove_file(&path).unwrap();

        // So does another socket (another inode).
        let (_first, socket) = bind(&path).unwrap();
        let moved = d.0.join("moved.sock");
        std::fs::rename(&path, &moved).unwrap();
        let (_second, other) = bind(&path).unwrap();
        assert!(!socket.remove());
        assert!(path.exists());
        assert!(other.remove());
        assert!(!path.exists());
        assert!(moved.exists(), "a renamed socket is not chased either");
    }
}
