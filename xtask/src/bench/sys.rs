//! The few libc calls the boot benchmark needs and std does not offer:
//! `waitid(WNOWAIT)` (see a child exit without reaping it), `wait4` (reap
//! it with its resource usage), `kill`; and the host's available memory.

use std::io;
use std::os::raw::c_int;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use libc::{rusage, siginfo_t, timeval, P_PID, WEXITED, WNOWAIT};

/// What `wait4` reports about a reaped child.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// How it ended.
    pub status: ExitStatus,
    /// User plus system CPU time, all its threads.
    pub cpu: Duration,
    /// Peak resident set size, KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

fn duration(tv: timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

fn pid_arg(pid: u32) -> io::Result<c_int> {
    c_int::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))
}

/// Blocks until child `pid` has exited, leaving it unreaped (a zombie), so
/// that its pid cannot be reused before [`reap`].
pub fn wait_exited(pid: u32) -> io::Result<()> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a writable siginfo_t-sized buffer that outlives
        // the call; waitid writes nothing else.
        let r = unsafe { libc::waitid(P_PID, pid, &mut info, WEXITED | WNOWAIT) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps child `pid` (which must have exited, see [`wait_exited`]) and
/// returns its status and resource usage.
pub fn reap(pid: u32) -> io::Result<Usage> {
    let pid = pid_arg(pid)?;
    let mut status: c_int = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are writable, correctly sized and
        // outlive the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if r >= 0 || e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(Usage {
        status: ExitStatus::from_raw(status),
        cpu: duration(ru.ru_utime) + duration(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    })
}

/// Sends `signal` to child `pid`. Only for a child not reaped yet.
pub fn signal_child(pid: u32, signal: c_int) {
    if let Ok(pid) = pid_arg(pid) {
        // SAFETY: kill takes no pointers; `pid` is our unreaped child, so
        // it cannot name another process.
        unsafe { libc::kill(pid, signal) };
    }
}

/// `MemAvailable` of /proc/meminfo, KiB.
pub fn mem_available_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
