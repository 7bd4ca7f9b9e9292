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
use vmm_sys_util::eventfd::EventFd;

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

/// Blocks [`SHUTDOWN_SIGNALS`] in this thread and opens a non-blocking
/// signalfd for them.
fn shutdown_signalfd() -> Result<OwnedFd, SignalError> {
    block_shutdown_signals()?;
    let set = shutdown_sigset();
    // SAFETY: -1 asks for a new fd; `set` is valid; the result is checked.
    let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if raw < 0 {
        return Err(SignalError::SignalFd(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reads one signal from a non-blocking signalfd; `None` if none is pending.
fn read_signal(fd: &OwnedFd) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which is that big.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
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

impl<F: FnMut(libc::c_int)> SignalSubscriber<F> {
    /// Blocks [`SHUTDOWN_SIGNALS`] in this thread (see
    /// [`block_shutdown_signals`]) and opens a signalfd for them.
    pub fn new(on_signal: F) -> Result<Self, SignalError> {
        let fd = shutdown_signalfd()?;
        Ok(Self { fd, on_signal })
    }

    fn read_one(&self) -> io::Result<Option<libc::c_int>> {
        read_signal(&self.fd)
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

/// A shutdown signal ended an [`interruptible`] step before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub libc::c_int);

/// Why an [`interruptible`] step did not return its value.
#[derive(Debug, thiserror::Error)]
pub enum InterruptibleError {
    /// A shutdown signal came first.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The signalfd could not be set up.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// The step's thread or its wake-up eventfd could not be set up.
    #[error("cannot set up the {0} step")]
    Setup(&'static str, #[source] io::Error),
    /// The step panicked.
    #[error("the {0} step panicked")]
    Panicked(&'static str),
}

/// Runs `step` on a thread of its own (named `name`) while this thread
/// waits for it or for a shutdown signal, whichever comes first.
///
/// The shutdown signals are blocked everywhere (see
/// [`block_shutdown_signals`]) and reach the VMM through a signalfd that
/// only the main loop reads; outside the main loop nobody would read it, so
/// a step that blocks (an `open` of a FIFO waiting for its other end, a
/// read on a stalled file system) would leave SIGINT, SIGTERM and SIGHUP
/// pending, unanswered, for as long as it blocks. Here the waiting thread
/// reads them: a signal pending before the call or arriving during the step
/// returns [`Interrupted`] at once. The step's thread is then left behind,
/// still blocked or finishing (its result is dropped on it); the caller is
/// expected to end the process, which ends that thread too. A step that
/// finishes returns its value and no signal is consumed.
///
/// Blocks the shutdown signals in the calling thread (idempotent; the step's
/// thread inherits the mask).
pub fn interruptible<T, F>(name: &'static str, step: F) -> Result<T, InterruptibleError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let signals = shutdown_signalfd()?;
    let setup = |e| InterruptibleError::Setup(name, e);
    let done = EventFd::new(libc::EFD_CLOEXEC).map_err(setup)?;
    let done_tx = done.try_clone().map_err(setup)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(1);
    let worker = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Wakes the waiter however the step ends, a panic included.
            let _wake = WakeOnDrop(done_tx);
            let value = step();
            // The receiver is gone if a signal came first: the value is
            // dropped here.
            let _ = tx.send(value);
        })
        .map_err(setup)?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: done.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two initialised pollfds whose
        // fds stay open for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SignalError::SignalFd(e).into());
        }
        // A signal wins a tie: the caller is asked to end.
        if fds[0].revents != 0 {
            if let Some(signo) = read_signal(&signals).map_err(SignalError::SignalFd)? {
                return Err(Interrupted(signo).into());
            }
        }
        if fds[1].revents != 0 {
            let value = rx.recv().map_err(|_| InterruptibleError::Panicked(name));
            // The step is over: its thread is on its way out. Waiting for
            // it leaves no unfiltered thread behind once seccomp goes in
            // (a panic was already reported through the channel).
            let _ = worker.join();
            return value;
        }
    }
}

/// Writes its eventfd when dropped.
struct WakeOnDrop(EventFd);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        let _ = self.0.write(1);
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

    /// Runs `f` on a thread of its own, where the shutdown signals are
    /// blocked, so a signal raised there stays with that thread.
    fn on_own_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            block_shutdown_signals().unwrap();
            f();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_interruptible_step_returns_its_value() {
        on_own_thread(|| {
            assert_eq!(interruptible("sum", || 2 + 2).unwrap(), 4);
        });
    }

    #[test]
    fn a_signal_ends_a_step_that_blocks() {
        on_own_thread(|| {
            // The step blocks reading a pipe nobody writes (as an open of a
            // FIFO waits for a writer).
            let (reader, writer) = std::io::pipe().unwrap();
            let step = move || {
                let mut byte = [0u8; 1];
                std::io::Read::read(&mut &reader, &mut byte).unwrap()
            };
            // SAFETY: sends SIGTERM to this very thread, where it is
            // blocked, so it stays pending for the signalfd and kills nothing.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
            assert_eq!(rc, 0);
            let err = interruptible("blocked", step).unwrap_err();
            assert!(
                matches!(
                    err,
                    InterruptibleError::Interrupted(Interrupted(libc::SIGTERM))
                ),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "interrupted by SIGTERM");
            // The step's thread reads EOF and ends.
            drop(writer);
        });
    }

    #[test]
    fn a_step_that_panics_is_an_error() {
        on_own_thread(|| {
            let err = interruptible("doomed", || -> u8 { panic!("step failed") }).unwrap_err();
            assert!(
                matches!(err, InterruptibleError::Panicked("doomed")),
                "{err:?}"
            );
        });
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(99), "signal 99");
    }
}
