//! The process's entry point: the C `main` the C library calls (the crate is
//! `#![no_main]`), doing what Rust's own start does before `main`, less
//! the part a VMM's start pays for and does not need.
//!
//! Rust's start (`std::rt::lang_start`) installs a handler that names a
//! thread whose stack overflowed. For the main thread it first finds the
//! thread's stack with glibc's `pthread_getattr_np`, which reads and
//! `sscanf`s `/proc/self/maps`; then it gives every thread std starts a
//! signal stack of its own (an `mmap`, an `mprotect`, two `sigaltstack`s,
//! and a `munmap` when the thread ends). Measured on this machine with 40
//! alternating starts of the `startup` benchmark's guest (a static
//! harness that forks, execs and reads `wait4`'s usage): a start's peak
//! RSS 2.83 MiB instead of 3.13 (libc's stdio and scanf code and std's
//! own start no longer mapped: 236 KiB of libc, 76 KiB of ours), 0.05 to
//! 0.09 ms less CPU, 0.1 ms sooner to the exit; about 28 system calls
//! fewer before the guest's first instruction (249 -> 221 under strace,
//! medians of five).
//!
//! What stays: the three standard descriptors are made to exist (closed
//! ones opened on `/dev/null`, so that `/dev/kvm` or a socket never
//! becomes "stdin"), `SIGPIPE` is ignored (a write to a closed pipe or
//! socket fails with `EPIPE`, which the serial output and QMP handle),
//! and stdout's buffer is written out at the end. What goes: std's
//! message for a stack overflow (a thread that overflows its stack still
//! hits its guard page and the process still ends, by `SIGSEGV`), and the
//! main thread's name in a panic's message (`'<unnamed>'`; the panic hook
//! and the abort are unchanged).

use std::ffi::{CStr, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

/// What the C library calls after its own start: the VMM's status.
#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // From here, not `std::env::args`: glibc hands std the arguments
    // through its `.init_array` call, musl does not (std takes them in
    // its own start, which this one replaces).
    // SAFETY: the C runtime passes `argc` and an `argv` of that many
    // NUL-terminated strings that live as long as the process.
    let argv = unsafe { arguments(argc, argv) };
    if !standard_fds() {
        // Nowhere to say it (as Rust's start, which aborts too).
        // SAFETY: abort takes no arguments and does not return.
        unsafe { libc::abort() };
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE; no handler
    // runs, so nothing here has to be async-signal-safe.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
        eprintln!(
            "vmm: cannot ignore SIGPIPE: {}",
            std::io::Error::last_os_error()
        );
        return libc::EXIT_FAILURE;
    }
    let status = crate::vmm_main(argv);
    // What Rust's exit does (`std::process::exit` does it too).
    let _ = std::io::stdout().flush();
    status
}

/// The command line `main` was given, as owned strings.
///
/// # Safety
///
/// `argv` must point at `argc` pointers, each to a NUL-terminated string
/// (the C runtime's `main` arguments); a null one ends the list early.
unsafe fn arguments(argc: libc::c_int, argv: *const *const libc::c_char) -> Vec<OsString> {
    let count = usize::try_from(argc).unwrap_or(0);
    let mut args = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: i < argc, so within the caller's array.
        let arg = unsafe { *argv.add(i) };
        if arg.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated string of the C runtime's.
        let bytes = unsafe { CStr::from_ptr(arg) }.to_bytes();
        args.push(OsStr::from_bytes(bytes).to_owned());
    }
    args
}

/// Opens `/dev/null` on each of descriptors 0, 1 and 2 that is closed;
/// false when one stays closed.
fn standard_fds() -> bool {
    (0..3).all(|fd| {
        // SAFETY: F_GETFD only reads the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            return true;
        }
        // SAFETY: a NUL-terminated path. The lowest free descriptor is
        // the closed one (those below it are open): the result says.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) == fd }
    })
}
