//! The virtio-rng worker: fills each available chain from the entropy
//! source within the budget, and waits on the doorbell and, when the
//! budget is spent, on the timer that ends its window.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::device::Shared;
use super::{EntropySource, MAX_REQUEST};
use crate::blk::request::Buffers;
use crate::device::QueueHome;
use crate::device::VirtioInterrupt;
use crate::ring::avail_sane;
use crate::worker::{Waiter, STOP_TOKEN};
use crate::Memory;

const KICK: u64 = 0;
const TIMER: u64 = 1;

/// The worker's state.
pub(super) struct RngWorker<M: Memory> {
    mem: Arc<M>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    source: Arc<dyn EntropySource>,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    /// The timer is armed for the end of a spent window.
    armed: bool,
    broken: bool,
    /// Where the queue goes when the worker ends.
    home: QueueHome,
}

impl<M: Memory> Drop for RngWorker<M> {
    fn drop(&mut self) {
        self.home.put(0, self.queue.state());
    }
}

/// Borrows a raw fd for the epoll set.
struct Fd(i32);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

impl<M: Memory> RngWorker<M> {
    pub(super) fn new(
        mem: Arc<M>,
        queue: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
        source: Arc<dyn EntropySource>,
        shared: Arc<Shared>,
        home: QueueHome,
    ) -> Self {
        Self {
            mem,
            queue,
            interrupt,
            source,
            shared,
            buf: Vec::new(),
            armed: false,
            broken: false,
            home,
        }
    }

    /// The thread's body: until told to stop.
    pub(super) fn run(mut self, waiter: Waiter, kick: EventFd) {
        self.buf = vec![0; MAX_REQUEST];
        let timer_fd = Fd(self.timer().as_raw_fd());
        let added = waiter
            .add(&kick, KICK)
            .and_then(|()| waiter.add(&timer_fd, TIMER));
        if let Err(e) = added {
            log::error!("virtio-rng: cannot wait on the queue: {e}");
            self.interrupt.set_needs_reset();
            return;
        }
        // A window spent before a reset may still be running: arming the
        // timer again for its end (when a request comes) is harmless.
        self.armed = false;
        self.process(&waiter);
        loop {
            let tokens = match waiter.wait() {
                Ok(t) => t,
                Err(e) => {
                    log::error!("virtio-rng: the worker cannot wait: {e}");
                    self.interrupt.set_needs_reset();
                    return;
                }
            };
            if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
                return;
            }
            if tokens.contains(&KICK) {
                let _ = kick.read();
            }
            if tokens.contains(&TIMER) {
                // Readable: it expired (a read of an expired timerfd does
                // not block).
                let _ = self.timer().wait();
                self.armed = false;
            }
            self.process(&waiter);
        }
    }

    fn timer(&self) -> std::sync::MutexGuard<'_, vmm_sys_util::timerfd::TimerFd> {
        self.shared.timer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills available chains until none is left or the budget is spent.
    fn process(&mut self, waiter: &Waiter) {
        if self.broken {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        'ring: loop {
            if !avail_sane(&self.queue, &*mem) || self.queue.disable_notification(&*mem).is_err() {
                self.break_queue();
                break;
            }
            loop {
                if self.spent() {
                    break 'ring;
                }
                let Some(chain) = self.queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                let len = match writable(chain, &*mem, usize::from(self.queue.size())) {
                    Some(buffers) => self.fill(&buffers),
                    None => {
                        log::debug!("virtio-rng: a malformed request returned unused");
                        self.count(|c| &c.bad_chains, 1);
                        0
                    }
                };
                self.count(|c| &c.requests, 1);
                if self.queue.add_used(&*mem, head, len).is_err() {
                    self.break_queue();
                    break 'ring;
                }
                used = true;
                if waiter.stopping() {
                    break 'ring;
                }
            }
            match self.queue.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.break_queue();
                    break;
                }
            }
        }
        if used && !self.broken && self.queue.needs_notification(&*mem).unwrap_or(true) {
            self.interrupt.signal_queue(0);
        }
    }

    /// Whether the budget is spent; if so the timer is armed for the
    /// window's end.
    fn spent(&mut self) -> bool {
        let now = Instant::now();
        let end = self
            .shared
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exhausted(now);
        let Some(end) = end else { return false };
        if !self.armed {
            // At least 1 ns: a zero duration would disarm the timer.
            let wait = end
                .saturating_duration_since(now)
                .max(std::time::Duration::from_nanos(1));
            let armed = self.timer().reset(wait, None);
            match armed {
                Ok(()) => {
                    self.armed = true;
                    self.count(|c| &c.throttled, 1);
                }
                Err(e) => log::warn!("virtio-rng: cannot arm the rate limit's timer: {e}"),
            }
        }
        true
    }

    /// Fills `buffers` (as much as the budget allows, at most
    /// [`MAX_REQUEST`]): the bytes written.
    fn fill(&mut self, buffers: &Buffers) -> u32 {
        let want = buffers.len().min(MAX_REQUEST as u64);
        let n = self
            .shared
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(want, Instant::now()) as usize;
        if n == 0 {
            return 0;
        }
        if let Err(e) = self.source.fill(&mut self.buf[..n]) {
            log::warn!("virtio-rng: the entropy source failed: {e}");
            return 0;
        }
        // Checked to be in guest memory when popped.
        if buffers.write_from(&*self.mem, 0, &self.buf[..n]).is_err() {
            return 0;
        }
        self.count(|c| &c.bytes, n as u64);
        n as u32
    }

    fn count(
        &self,
        which: impl Fn(&super::device::Counters) -> &std::sync::atomic::AtomicU64,
        n: u64,
    ) {
        which(&self.shared.counters).fetch_add(n, Ordering::Relaxed);
    }

    fn break_queue(&mut self) {
        if !self.broken {
            log::warn!("virtio-rng: the driver broke the queue; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }
}

/// A request's buffers: None if a descriptor is device-readable or outside
/// guest memory, or the chain is longer than `max` descriptors.
fn writable<M, I>(descriptors: I, mem: &M, max: usize) -> Option<Buffers>
where
    M: GuestMemory,
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut buffers = Buffers::default();
    for (i, d) in descriptors.into_iter().enumerate() {
        if i >= max || !d.is_write_only() {
            return None;
        }
        if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
            return None;
        }
        buffers.push(d.addr(), d.len());
    }
    Some(buffers)
}
