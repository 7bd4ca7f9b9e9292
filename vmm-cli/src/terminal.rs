//! Raw mode for the controlling terminal, and putting it back.

use std::io;
use std::os::fd::RawFd;

/// The terminal's mode before we changed it.
#[derive(Clone, Copy)]
pub struct SavedMode {
    fd: RawFd,
    termios: libc::termios,
}

impl std::fmt::Debug for SavedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedMode").field("fd", &self.fd).finish()
    }
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the fd number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Puts terminal `fd` in raw mode (no echo, no line editing, no signal
/// keys: Ctrl-C goes to the guest) and returns the old mode.
pub fn enter_raw_mode(fd: RawFd) -> io::Result<SavedMode> {
    // SAFETY: termios is plain data; tcgetattr fills it and is checked.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `termios` is a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let saved = SavedMode { fd, termios };
    let mut raw = termios;
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so the host's "\n" still returns the
    // carriage for our own messages; guest output passes through as is.
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    // SAFETY: `raw` is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(saved)
}

impl SavedMode {
    /// The terminal and the mode to put back, for code that cannot hold a
    /// `SavedMode` (the SIGSYS handler).
    pub fn parts(&self) -> (RawFd, libc::termios) {
        (self.fd, self.termios)
    }

    /// Puts the terminal back as it was.
    pub fn restore(&self) {
        // SAFETY: `self.termios` came from tcgetattr on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.termios) };
    }
}
