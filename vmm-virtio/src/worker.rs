//! A device's worker thread: waits on eventfds with `epoll`, and stops when
//! told (a stop eventfd and a flag that long loops check), then is joined.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use smallvec::SmallVec;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The token [`Waiter::wait`] gives for the stop eventfd.
pub const STOP_TOKEN: u64 = u64::MAX;

/// The most events one wait reports.
const MAX_EVENTS: usize = 8;

/// What one wait found ready: held in place, so a wake-up allocates
/// nothing.
pub type Ready<T> = SmallVec<[T; MAX_EVENTS]>;

/// What a worker checks to know it should end.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether the owner asked the worker to stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Waits on a set of eventfds, each with a token, and the stop eventfd.
#[derive(Debug)]
pub struct Waiter {
    epoll: Epoll,
    flag: StopFlag,
}

impl Waiter {
    /// Adds `fd` with `token`.
    pub fn add(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Adds a socket with `token`, edge-triggered, for reading (and the
    /// peer's hang-up): after each event the owner reads until it would
    /// block. Room to write is not watched until asked for
    /// ([`Waiter::watch_writes`]): a socket with room would wake the
    /// worker every time its peer reads.
    pub fn add_stream(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(Self::stream_events(false), token),
        )
    }

    /// Whether a socket added with [`Waiter::add_stream`] also wakes the
    /// worker when it has room to write (edge-triggered; for a socket
    /// that has just refused a write, with bytes waiting for it). Room
    /// already there when it is asked for is reported too.
    pub fn watch_writes(&self, fd: &impl AsRawFd, token: u64, on: bool) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd.as_raw_fd(),
            EpollEvent::new(Self::stream_events(on), token),
        )
    }

    fn stream_events(writes: bool) -> EventSet {
        let read = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if writes {
            read | EventSet::OUT
        } else {
            read
        }
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        )
    }

    /// Blocks until something is ready; returns the tokens (the stop
    /// eventfd as [`STOP_TOKEN`]). Interrupted waits are retried.
    pub fn wait(&self) -> io::Result<Ready<u64>> {
        self.wait_timeout(-1)
    }

    /// As [`Waiter::wait`], but for at most `ms` milliseconds (-1: no
    /// limit): no tokens when the time ran out.
    pub fn wait_timeout(&self, ms: i32) -> io::Result<Ready<u64>> {
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        let n = self.wait_into(ms, &mut events)?;
        Ok(events[..n].iter().map(EpollEvent::data).collect())
    }

    /// As [`Waiter::wait_timeout`], with what each is ready for (a
    /// socket's peer hang-up, say).
    pub fn wait_events(&self, ms: i32) -> io::Result<Ready<(u64, EventSet)>> {
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        let n = self.wait_into(ms, &mut events)?;
        Ok(events[..n]
            .iter()
            .map(|e| (e.data(), e.event_set()))
            .collect())
    }

    /// One `epoll_wait` into `events` (retried when interrupted): how
    /// many are ready.
    fn wait_into(&self, ms: i32, events: &mut [EpollEvent]) -> io::Result<usize> {
        loop {
            match self.epoll.wait(ms, events) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// The flag that says the owner wants the worker gone.
    pub fn stop_flag(&self) -> &StopFlag {
        &self.flag
    }

    /// Whether the owner wants the worker gone.
    pub fn stopping(&self) -> bool {
        self.flag.is_set()
    }
}

/// What a worker thread runs first, once, before any device work (the
/// VMM installs the thread's seccomp filter here).
pub type ThreadStart = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

type Body = Box<dyn FnOnce(Waiter) + Send>;

/// A device's worker thread. It is made with the device, at machine
/// build time, and waits parked until the device is activated: so that
/// activation, which happens on a vCPU thread (the guest's DRIVER_OK
/// write), creates no thread and no file descriptor there, and the thread
/// can take its own seccomp filter before the guest runs. [`Worker::start`]
/// hands it a body; [`Worker::stop`] ends that body (the thread parks
/// again); dropping the worker ends the thread.
pub struct Worker {
    jobs: Option<mpsc::Sender<Body>>,
    done: mpsc::Receiver<()>,
    stop: Arc<EventFd>,
    flag: Arc<AtomicBool>,
    running: bool,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts thread `name`, parked; it runs `start` first.
    pub fn new(name: &str, start: Option<ThreadStart>) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let flag = Arc::new(AtomicBool::new(false));
        let (jobs, job_rx) = mpsc::channel::<Body>();
        let (done_tx, done) = mpsc::channel();
        let (thread_stop, thread_flag) = (Arc::clone(&stop), Arc::clone(&flag));
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Some(start) = start {
                    if let Err(e) = start() {
                        log::error!("virtio: a device thread cannot start: {e}");
                        return;
                    }
                }
                while let Ok(body) = job_rx.recv() {
                    match Self::waiter(&thread_stop, &thread_flag) {
                        Ok(waiter) => body(waiter),
                        Err(e) => log::error!("virtio: a device thread cannot wait: {e}"),
                    }
                    // The stop request that ended this body is spent here,
                    // on this thread, so the next body starts clean (and
                    // starting one reads nothing on the caller's thread).
                    let _ = thread_stop.read();
                    if done_tx.send(()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            stop,
            flag,
            running: false,
            thread: Some(thread),
        })
    }

    /// A fresh waiter for one body (made on the worker's own thread).
    fn waiter(stop: &EventFd, flag: &Arc<AtomicBool>) -> io::Result<Waiter> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(Waiter {
            epoll,
            flag: StopFlag(Arc::clone(flag)),
        })
    }

    /// Runs `body` on the worker's thread with a [`Waiter`] that already
    /// watches the stop eventfd. One body at a time: stop the last first.
    pub fn start<F>(&mut self, body: F) -> io::Result<()>
    where
        F: FnOnce(Waiter) + Send + 'static,
    {
        if self.running {
            return Err(io::Error::other("the worker is busy"));
        }
        self.flag.store(false, Ordering::Release);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the worker is gone"))?;
        jobs.send(Box::new(body))
            .map_err(|_| io::Error::other("the worker thread has ended"))?;
        self.running = true;
        Ok(())
    }

    /// Whether a body runs.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Tells the body to stop and waits until it has.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        self.flag.store(true, Ordering::Release);
        if let Err(e) = self.stop.write(1) {
            log::error!("virtio: cannot wake a worker to stop it: {e}");
        }
        if self.done.recv().is_err() {
            log::error!("virtio: a device worker ended (panicked?)");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
        // No more bodies: the thread leaves its loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("virtio: a device worker panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_worker_sees_its_events_and_stops_when_told() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let theirs = evt.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut w = Worker::new("test worker", None).unwrap();
        w.start(move |waiter| {
            waiter.add(&theirs, 7).unwrap();
            loop {
                let tokens = waiter.wait().unwrap();
                if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
                    tx.send(None).unwrap();
                    return;
                }
                let _ = theirs.read();
                tx.send(Some(tokens.to_vec())).unwrap();
            }
        })
        .unwrap();
        evt.write(1).unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(),
            Some(vec![7])
        );
        w.stop();
        assert_eq!(rx.recv().unwrap(), None);
        w.stop();
    }

    #[test]
    fn a_stream_wakes_for_room_to_write_only_when_asked() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let waiter = Worker::waiter(&stop, &Arc::new(AtomicBool::new(false))).unwrap();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut b = [0u8; 4];
        let sets = |w: &Waiter| -> Vec<(u64, EventSet)> { w.wait_events(0).unwrap().to_vec() };
        waiter.add_stream(&ours, 5).unwrap();
        assert_eq!(sets(&waiter), vec![], "room to write is not news");
        // The peer reading our bytes frees room: that wakes nobody...
        (&ours).write_all(b"ping").unwrap();
        peer.read_exact(&mut b).unwrap();
        assert_eq!(sets(&waiter), vec![]);
        // ... the peer's bytes do.
        peer.write_all(b"pong").unwrap();
        assert_eq!(sets(&waiter), vec![(5, EventSet::IN)]);
        assert_eq!(sets(&waiter), vec![], "edge-triggered");
        (&ours).read_exact(&mut b).unwrap();
        // Asked for, room already there is reported at once, and room
        // freed again later.
        waiter.watch_writes(&ours, 5, true).unwrap();
        assert_eq!(sets(&waiter), vec![(5, EventSet::OUT)]);
        (&ours).write_all(b"x").unwrap();
        peer.read_exact(&mut b[..1]).unwrap();
        let after = sets(&waiter);
        assert_eq!(after.len(), 1);
        assert!(after[0].1.contains(EventSet::OUT), "{after:?}");
        waiter.watch_writes(&ours, 5, false).unwrap();
        (&ours).write_all(b"y").unwrap();
        peer.read_exact(&mut b[..1]).unwrap();
        assert_eq!(sets(&waiter), vec![]);
    }

    #[test]
    fn the_thread_starts_once_and_runs_body_after_body() {
        let (tx, rx) = mpsc::channel();
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = Arc::clone(&starts);
        let start: ThreadStart = Arc::new(move || {
            s.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let mut w = Worker::new("test worker", Some(start)).unwrap();
        for round in 0..3 {
            let tx = tx.clone();
            w.start(move |waiter| {
                tx.send(round).unwrap();
                while !waiter.stopping() {
                    let _ = waiter.wait();
                }
            })
            .unwrap();
            assert!(w.is_running());
            assert!(w.start(|_| {}).is_err(), "one body at a time");
            assert_eq!(
                rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(),
                round
            );
            w.stop();
            assert!(!w.is_running());
        }
        drop(w);
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }
}
