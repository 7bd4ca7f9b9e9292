//! `--seccomp on`: a forbidden system call traps (`SECCOMP_RET_TRAP`, a
//! SIGSYS on the calling thread) and this handler ends the VMM with one
//! clear line on stderr:
//!
//! ```text
//! vmm: seccomp: forbidden system call 110 (getppid) on thread vcpu 0 (tid 4242)
//! ```
//!
//! Why a trap and not `SECCOMP_RET_KILL_PROCESS`: a kill leaves nothing but
//! "Bad system call" from the shell (and a core dump of guest RAM), and the
//! syscall's number only in the audit log, which a user may not be able to
//! read; a filter bug would look like a random crash. The trap cannot be
//! used to go on: the handler never returns, and a thread cannot disarm it
//! (`rt_sigaction` is on no list; blocking SIGSYS does not help either, as
//! the kernel then takes the default action, a kill).
//!
//! The handler is async-signal-safe: it formats into a stack buffer, makes
//! one `write(2)` to stderr, puts the terminal back if the console had put
//! it in raw mode (`tcsetattr`, on the POSIX list of safe calls), and calls
//! `_exit` (`exit_group`) with [`EXIT_STATUS`]. Every thread's list allows
//! those calls (and `gettid`).

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

use super::names::NAMES;

/// The status a forbidden system call ends the VMM with: 128 + SIGSYS, what
/// a shell shows for a process killed by SIGSYS.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

/// `AUDIT_ARCH_X86_64`: the numbering the name table is for (seccompiler's
/// filters kill any other architecture's calls before they could trap).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The head of `siginfo_t` for SIGSYS on x86-64 (Linux's `_sigsys` member
/// of the union, which starts at offset 16 there).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    _call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

thread_local! {
    /// This thread's name for the line, set when its filter goes in.
    /// Constant-initialised and without a destructor: reading it in the
    /// handler is a plain thread-local load.
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// The terminal's mode before the console set raw mode, if it did.
static TERMINAL: OnceLock<(RawFd, libc::termios)> = OnceLock::new();

/// Records the calling thread's name for the SIGSYS line.
pub(super) fn note_thread(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(buf.len());
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|t| t.set(buf));
}

/// Has the handler put terminal `fd` back to `termios` before exiting.
pub fn restore_terminal_on_trap(fd: RawFd, termios: libc::termios) {
    let _ = TERMINAL.set((fd, termios));
}

/// Installs the SIGSYS handler for the whole process (once, before any
/// filter).
pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty mask/flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: a valid action for SIGSYS; the handler is async-signal-safe.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A line built without allocating.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Self {
            buf: [0; 192],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The name of x86-64 system call `nr`, if the table has it.
fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u16::try_from(nr).ok()?;
    NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| NAMES[i].1)
}

/// The line for system call `nr` (`None`: a SIGSYS not from seccomp) on
/// thread `name`, `tid`; `x86_64`: whether `nr` is in x86-64 numbering.
fn message(nr: Option<i64>, x86_64: bool, name: &[u8], tid: i64) -> Line {
    let mut line = Line::new();
    match nr {
        Some(nr) => {
            line.push(b"vmm: seccomp: forbidden system call ");
            line.push_num(nr.unsigned_abs());
            if let Some(name) = syscall_name(nr).filter(|_| x86_64) {
                line.push(b" (");
                line.push(name.as_bytes());
                line.push(b")");
            }
        }
        None => line.push(b"vmm: SIGSYS (not from seccomp)"),
    }
    line.push(b" on thread ");
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    line.push(if end == 0 { b"?" } else { &name[..end] });
    line.push(b" (tid ");
    line.push_num(tid.unsigned_abs());
    line.push(b")\n");
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO), whose head
    // has SigsysInfo's layout on x86-64.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let nr = (info.code == SYS_SECCOMP).then_some(i64::from(info.syscall));
    let name = THREAD_NAME.with(Cell::get);
    // SAFETY: gettid has no arguments; a raw syscall is async-signal-safe.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let line = message(nr, info.arch == AUDIT_ARCH_X86_64, &name, tid);
    // SAFETY: writes our own stack buffer to stderr.
    unsafe { libc::write(libc::STDERR_FILENO, line.bytes().as_ptr().cast(), line.len) };
    if let Some((fd, termios)) = TERMINAL.get() {
        // SAFETY: the mode saved from tcgetattr on the same fd.
        unsafe { libc::tcsetattr(*fd, libc::TCSANOW, termios) };
    }
    // SAFETY: ends the process at once, running nothing else.
    unsafe { libc::_exit(EXIT_STATUS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(l: &Line) -> &str {
        std::str::from_utf8(l.bytes()).unwrap()
    }

    #[test]
    fn names_known_calls() {
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
        assert_eq!(syscall_name(libc::SYS_getppid), Some("getppid"));
        assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
        assert_eq!(syscall_name(100_000), None);
        assert_eq!(syscall_name(-1), None);
        assert!(NAMES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }

    #[test]
    fn the_line() {
        let mut name = [0u8; 16];
        name[..6].copy_from_slice(b"vcpu 1");
        assert_eq!(
            text(&message(Some(libc::SYS_getppid), true, &name, 4242)),
            "vmm: seccomp: forbidden system call 110 (getppid) on thread vcpu 1 (tid 4242)\n"
        );
        assert_eq!(
            text(&message(Some(9999), true, &[0; 16], 7)),
            "vmm: seccomp: forbidden system call 9999 on thread ? (tid 7)\n"
        );
        assert_eq!(
            text(&message(None, true, b"main\0\0\0\0\0\0\0\0\0\0\0\0", 1)),
            "vmm: SIGSYS (not from seccomp) on thread main (tid 1)\n"
        );
        assert_eq!(
            text(&message(Some(0), false, &name, 1)),
            "vmm: seccomp: forbidden system call 0 on thread vcpu 1 (tid 1)\n"
        );
        // A full 16-byte name has no terminating zero.
        assert!(
            text(&message(Some(0), true, b"0123456789abcdef", 1)).contains("0123456789abcdef (tid")
        );
    }

    #[test]
    fn numbers() {
        let mut l = Line::new();
        l.push_num(0);
        l.push(b",");
        l.push_num(u64::MAX);
        assert_eq!(text(&l), "0,18446744073709551615");
    }

    #[test]
    fn a_long_line_is_cut_not_overrun() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.push(b"abcdef");
        }
        assert_eq!(l.bytes().len(), 192);
    }
}
