//! A device's worker thread: waits on eventfds with `epoll`, and stops when
//! told (a stop eventfd and a flag that long loops check), then is joined.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The token [`Waiter::wait`] gives for the stop eventfd.
pub const STOP_TOKEN: u64 = u64::MAX;

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

    /// Blocks until something is ready; returns the tokens (the stop
    /// eventfd as [`STOP_TOKEN`]). Interrupted waits are retried.
    pub fn wait(&self) -> io::Result<Vec<u64>> {
        let mut events = [EpollEvent::default(); 8];
        loop {
            match self.epoll.wait(-1, &mut events) {
                Ok(n) => return Ok(events[..n].iter().map(EpollEvent::data).collect()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
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

/// A running worker thread, stopped and joined on [`Worker::stop`] or drop.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    flag: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name` running `body` with a [`Waiter`] that already
    /// watches the stop eventfd.
    pub fn spawn<F>(name: &str, body: F) -> io::Result<Self>
    where
        F: FnOnce(Waiter) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let flag = Arc::new(AtomicBool::new(false));
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        // The stop eventfd stays open in `Worker` for as long as the thread
        // runs (it is joined before the fd closes), so its epoll entry
        // stays valid.
        let waiter = Waiter {
            epoll,
            flag: StopFlag(Arc::clone(&flag)),
        };
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(waiter))?;
        Ok(Self {
            stop,
            flag,
            thread: Some(thread),
        })
    }

    /// Tells the worker to stop and waits for it. A worker that panicked
    /// is logged, not propagated.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.flag.store(true, Ordering::Release);
        if let Err(e) = self.stop.write(1) {
            log::error!("virtio: cannot wake a worker to stop it: {e}");
        }
        if thread.join().is_err() {
            log::error!("virtio: a device worker panicked");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
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
        let mut w = Worker::spawn("test worker", move |waiter| {
            waiter.add(&theirs, 7).unwrap();
            loop {
                let tokens = waiter.wait().unwrap();
                if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
                    tx.send(None).unwrap();
                    return;
                }
                let _ = theirs.read();
                tx.send(Some(tokens)).unwrap();
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
}
