//! The main loop (QEMU's io thread: `main_loop` → `main_loop_wait`), on
//! `event-manager`'s epoll.
//!
//! Everything the main thread waits for is a file descriptor with a
//! subscriber: the timer alarm (vmm-clock), console input, a `signalfd`
//! ([`SignalSubscriber`]), the vCPUs' request eventfd, device triggers such
//! as the i8042 reset line ([`EventFdSubscriber`]). Subscribers do not decide
//! what happens to the machine: they record a request, and the machine reads
//! its requests after each [`EventLoop::run_once`], in a fixed order, as
//! QEMU's `main_loop_should_exit` does.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

/// A subscriber as the loop holds it: shared, so its owner can reach it too.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors of the main loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// The epoll instance could not be created or waited on.
    #[error("event loop failure")]
    EventManager(#[source] event_manager::Error),
}

/// The main loop.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> Result<Self, EventLoopError> {
        Ok(Self {
            manager: EventManager::new().map_err(EventLoopError::EventManager)?,
        })
    }

    /// Adds a subscriber; its `init` registers the fds it watches.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// Calls `on_event` each time `fd` is written (its counter is read and
    /// reset first).
    pub fn add_eventfd<F>(&mut self, name: &'static str, fd: EventFd, on_event: F)
    where
        F: FnMut(u64) + Send + 'static,
    {
        self.add(Arc::new(Mutex::new(EventFdSubscriber::new(
            name, fd, on_event,
        ))));
    }

    /// Waits for events (at most `timeout_ms`, -1 for no limit) and
    /// dispatches them. Returns how many were dispatched.
    pub fn run_once(&mut self, timeout_ms: i32) -> Result<usize, EventLoopError> {
        self.manager
            .run_with_timeout(timeout_ms)
            .map_err(EventLoopError::EventManager)
    }
}

/// Calls a closure each time an eventfd is written.
pub struct EventFdSubscriber<F> {
    name: &'static str,
    fd: EventFd,
    on_event: F,
}

impl<F> fmt::Debug for EventFdSubscriber<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventFdSubscriber")
            .field("name", &self.name)
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl<F: FnMut(u64)> EventFdSubscriber<F> {
    /// A subscriber for `fd`; `name` appears in logs.
    pub fn new(name: &'static str, fd: EventFd, on_event: F) -> Self {
        Self { name, fd, on_event }
    }
}

impl<F: FnMut(u64)> MutEventSubscriber for EventFdSubscriber<F> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            log::error!("{}: eventfd error, no longer watched", self.name);
            let _ = ops.remove(Events::empty(&self.fd));
            return;
        }
        match self.fd.read() {
            Ok(count) => (self.on_event)(count),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                log::trace!("{}: spurious wake-up", self.name);
            }
            Err(e) => log::error!("{}: cannot read eventfd: {e}", self.name),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("{}: cannot watch eventfd: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn eventfd_subscriber_gets_the_count() {
        let mut el = EventLoop::new().unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let writer = fd.try_clone().unwrap();
        let total = Arc::new(AtomicU64::new(0));
        let t = Arc::clone(&total);
        el.add_eventfd("test", fd, move |n| {
            t.fetch_add(n, Ordering::SeqCst);
        });
        writer.write(2).unwrap();
        writer.write(3).unwrap();
        assert_eq!(el.run_once(1000).unwrap(), 1);
        assert_eq!(total.load(Ordering::SeqCst), 5);
        // Nothing pending: the timeout expires with no dispatch.
        assert_eq!(el.run_once(0).unwrap(), 0);
    }
}
