//! The migration thread: made with the machine (before any seccomp filter
//! of the main thread, with its own list from the thread-start hook), it
//! waits for a job, sends ([`super::send`]) or receives
//! ([`super::recv`]) one stream at a time, and tells the main loop what
//! happens through a [`Mailbox`] (a queue and the main loop's wake-up
//! eventfd). The main loop never waits for it: it reads the mailbox after
//! each wake-up, and it alone stops and starts the vCPUs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::transport::Canceller;
use super::{Params, RamStats};
use crate::snapshot::format::Section;

/// Run first thing on the migration thread (the binary's seccomp list).
pub type ThreadStart = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The machine's state sections, or why they could not be had.
pub type StateReply = Result<Vec<(&'static str, Vec<u8>)>, String>;

/// What the migration thread tells the main loop.
#[derive(Debug)]
pub enum ToMain {
    /// The outgoing stream is open and RAM is going (`active`).
    Active,
    /// A dirty-log sync: pass `n` begins (`MIGRATION_PASS`).
    Pass(u64),
    /// The rest fits the downtime: stop the guest and send back its state.
    WantStop(mpsc::Sender<StateReply>),
    /// The outgoing migration ended.
    Sent(Result<(), String>),
    /// The incoming stream ended: its state sections (its RAM is in
    /// place), or why it was refused.
    Received(Result<Vec<Section>, String>),
}

/// The thread's messages to the main loop.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<ToMain>>,
    wake: Arc<EventFd>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mailbox {
    /// A mailbox that wakes the main loop through `wake`.
    pub fn new(wake: Arc<EventFd>) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            wake,
        }
    }

    /// Queues `message` and wakes the main loop.
    pub fn post(&self, message: ToMain) {
        lock(&self.queue).push_back(message);
        let _ = self.wake.write(1);
    }

    /// The next message, if any.
    pub fn take(&self) -> Option<ToMain> {
        lock(&self.queue).pop_front()
    }
}

/// What the main loop and an outgoing migration's thread share.
#[derive(Debug)]
pub struct Shared {
    /// `migrate_cancel`.
    pub cancel: Arc<AtomicBool>,
    /// `max-bandwidth`, bytes/s.
    pub max_bandwidth: Arc<AtomicU64>,
    /// `downtime-limit`, ms.
    pub downtime_limit_ms: AtomicU64,
    /// The VMM itself rewrote guest RAM wholesale (a reset reloads the
    /// kernel and firmware tables): every page is sent again. (Devices'
    /// and gdb's writes are in guest RAM's dirty bitmap instead.)
    pub resend_all: AtomicBool,
    /// The figures so far.
    pub stats: Mutex<RamStats>,
    /// The last expected downtime, ms.
    pub expected_downtime_ms: AtomicU64,
    /// Set-up (connect to the stream's start), ms.
    pub setup_time_ms: AtomicU64,
    /// The socket's second handle, for a cancel.
    pub canceller: Mutex<Option<Canceller>>,
}

impl Shared {
    /// For a migration of `total` bytes of RAM with `params`.
    pub fn new(params: Params, total: u64) -> Self {
        Self {
            cancel: Arc::new(AtomicBool::new(false)),
            max_bandwidth: Arc::new(AtomicU64::new(params.max_bandwidth)),
            downtime_limit_ms: AtomicU64::new(params.downtime_limit_ms),
            resend_all: AtomicBool::new(false),
            stats: Mutex::new(RamStats {
                total,
                remaining: total,
                ..RamStats::default()
            }),
            expected_downtime_ms: AtomicU64::new(0),
            setup_time_ms: AtomicU64::new(0),
            canceller: Mutex::new(None),
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> RamStats {
        lock(&self.stats).clone()
    }

    /// Updates the figures.
    pub fn update(&self, f: impl FnOnce(&mut RamStats)) {
        f(&mut lock(&self.stats));
    }

    /// Cancels: the thread stops at its next write, or at once if it is
    /// blocked on the socket.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(c) = lock(&self.canceller).as_ref() {
            c.cancel();
        }
    }

    /// Whether a cancel came.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// A job for the thread.
#[derive(Debug)]
pub enum Job {
    /// Send the machine.
    Send(super::send::SendJob),
    /// Receive one.
    Receive(super::recv::RecvJob),
}

/// The migration thread's handle.
#[derive(Debug)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    /// The outcome of the thread's `start`, until [`Worker::started`]
    /// takes it.
    started: Option<mpsc::Receiver<std::io::Result<()>>>,
}

impl Worker {
    /// Starts the thread; it runs `start` first and then waits for jobs
    /// until the handle is dropped. Returns at once: `start` (a seccomp
    /// filter, about 0.15 ms to install) runs beside the caller's own
    /// set-up, and [`Worker::started`] waits for its outcome.
    pub fn spawn(start: Option<ThreadStart>, mailbox: Arc<Mailbox>) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (started_tx, started) = mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                let ready = start.map_or(Ok(()), |start| start());
                let failed = ready.is_err();
                let _ = started_tx.send(ready);
                if failed {
                    return;
                }
                for job in rx {
                    match job {
                        Job::Send(job) => {
                            let result = super::send::run(job, &mailbox);
                            mailbox.post(ToMain::Sent(result));
                        }
                        Job::Receive(job) => {
                            if let Some(result) = super::recv::run(job) {
                                mailbox.post(ToMain::Received(result));
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            jobs,
            started: Some(started),
        })
    }

    /// Waits for the thread's `start` (see [`Worker::spawn`]) and returns
    /// its outcome; later calls return `Ok`.
    pub fn started(&mut self) -> std::io::Result<()> {
        match self.started.take() {
            Some(rx) => rx
                .recv()
                .map_err(|_| std::io::Error::other("the migration thread ended at its start"))?,
            None => Ok(()),
        }
    }

    /// Hands `job` to the thread.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.jobs
            .send(job)
            .map_err(|_| "the migration thread is gone".to_owned())
    }
}
