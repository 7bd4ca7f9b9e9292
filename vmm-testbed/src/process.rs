//! Child processes of the test bed: they die with the test, their pipes
//! are read while they run, and their run has a time limit.

use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Makes `cmd`'s process die with the process that started it, so that a
/// test killed midway leaves no QEMU or VMM running.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec and only
    // calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reads `r` to its end on a thread; the handle gives what was read.
pub fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Asks `child` to end (SIGTERM): QEMU and our VMM then end cleanly, QEMU
/// giving back a terminal it put in raw mode.
pub fn terminate(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) takes no pointers; `pid` is our own child, not yet
    // reaped (the caller holds it), so the number names no other process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Waits for `child` until `limit` has passed since `start`; past that,
/// kills and reaps it and returns `None`.
pub fn wait_until(child: &mut Child, start: Instant, limit: Duration) -> Option<ExitStatus> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
