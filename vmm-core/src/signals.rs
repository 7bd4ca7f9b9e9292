//! SIGINT, SIGTERM and SIGHUP as events of the main loop, through a
//! `signalfd` (the seed's signal thread, `sigwaitinfo`, made an fd).
//!
//! [`block_shutdown_signals`] blocks the signals in the calling thread;
//! call it on the main thread before any other thread starts, so that every
//! thread inherits the mask and the signals reach only the signalfd.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

/// The signals the VMM turns into a clean shutdown.
pub const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Errors setting up the signalfd.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Blocking the signals failed.
    #[error("cannot block signals")]
    Block(#[source] io::Error),
    /// `signalfd` failed.
    #[error("cannot create the signalfd")]
    SignalFd(#[source] io::Error),
}

/// Calls a closure with the number of each shutdown signal received.
pub struct SignalSubscriber<F> {
    fd: OwnedFd,
    on_signal: F,
}

impl<F> fmt::Debug for SignalSubscriber<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalSubscriber")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully and
    // sigaddset only sets bits for valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SHUTDOWN_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks [`SHUTDOWN_SIGNALS`] in the calling thread, and so in every
/// thread it starts afterwards. A binary calls this first thing in `main`:
/// a thread started before it (a logger, an output writer) would otherwise
/// take the signal's default action and kill the process.
pub fn block_shutdown_signals() -> Result<(), SignalError> {
    let set = shutdown_sigset();
    // SAFETY: `set` is a valid, initialised sigset; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SignalError::Block(io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

impl<F: FnMut(libc::c_int)> SignalSubscriber<F> {
    /// Blocks [`SHUTDOWN_SIGNALS`] in this thread (see
    /// [`block_shutdown_signals`]) and opens a signalfd for them.
    pub fn new(on_signal: F) -> Result<Self, SignalError> {
        block_shutdown_signals()?;
        let set = shutdown_sigset();
        // SAFETY: -1 asks for a new fd; `set` is valid; the result is checked.
        let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if raw < 0 {
            return Err(SignalError::SignalFd(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, on_signal })
    }

    fn read_one(&self) -> io::Result<Option<libc::c_int>> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that big.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if usize::try_from(n).ok() != Some(size) {
            return Ok(None);
        }
        Ok(libc::c_int::try_from(info.ssi_signo).ok())
    }
}

impl<F: FnMut(libc::c_int)> MutEventSubscriber for SignalSubscriber<F> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            log::error!("signalfd error: no longer watched");
            let _ = ops.remove(Events::empty(&self.fd));
            return;
        }
        loop {
            match self.read_one() {
                Ok(Some(signo)) => (self.on_signal)(signo),
                Ok(None) => break,
                Err(e) => {
                    log::error!("cannot read the signalfd: {e}");
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch the signalfd: {e}");
        }
    }
}

/// The name of a signal, for messages ("terminating on signal SIGTERM").
pub fn signal_name(signo: libc::c_int) -> String {
    match signo {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::event_loop::EventLoop;

    #[test]
    fn a_raised_signal_arrives_through_the_loop() {
        // Runs in its own thread so the blocked mask stays with it.
        std::thread::spawn(|| {
            let got = Arc::new(Mutex::new(Vec::new()));
            let g = Arc::clone(&got);
            let sub = SignalSubscriber::new(move |s| g.lock().unwrap().push(s)).unwrap();
            let mut el = EventLoop::new().unwrap();
            el.add(Arc::new(Mutex::new(sub)));
            // SAFETY: sends SIGHUP to this very thread, where it is blocked,
            // so it stays pending for the signalfd and kills nothing.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
            assert_eq!(rc, 0);
            el.run_once(2000).unwrap();
            assert_eq!(*got.lock().unwrap(), [libc::SIGHUP]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(99), "signal 99");
    }
}
