//! The virtio-blk worker: pops chains, parses them, does their I/O,
//! completes them, and applies the error policy. One per started device,
//! on its own thread.
//!
//! With `aio=threads` each request is done before the next is popped.
//! With `aio=io_uring` reads, writes and flushes go to the disk's io_uring
//! ([`super::uring`]), up to the queue's size at once, and are completed
//! in the order the host finishes them (virtio allows any order). A host
//! error under `stop` holds its request; from then on no new chain is
//! popped, the others in flight finish (and may be held too), and a retry
//! (`cont`) starts the held ones again, oldest first, before the queue is
//! looked at again.

use std::io;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::device::Shared;
use super::io::Disk;
use super::request::{self, Limits, Rejected, Request, RequestKind};
use super::uring::Uring;
use super::{ErrorOutcome, IoErrorEvent, Operation, ID_BYTES, SECTOR_SIZE};
use crate::device::{QueueHome, VirtioInterrupt};
use crate::worker::{StopFlag, Waiter, STOP_TOKEN};
use crate::Memory;

const KICK: u64 = 0;
const RETRY: u64 = 1;
const DONE: u64 = 2;

/// A request popped and not completed.
struct Held {
    head: u16,
    request: Request,
}

/// Where a disk's io_uring waits between activations (`aio=io_uring`):
/// a body takes it when it starts and puts it back, drained, when it ends.
pub type UringHome = Arc<Mutex<Option<Uring>>>;

/// The worker's state.
pub struct BlkWorker<M: Memory> {
    pub mem: Arc<M>,
    pub queue: Queue,
    pub index: u16,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub disk: Arc<Disk>,
    pub limits: Limits,
    pub id: [u8; ID_BYTES],
    pub shared: Arc<Shared>,
    /// Requests held after a host error under `stop`, oldest first.
    held: Vec<Held>,
    /// With `aio=io_uring`: the ring, for this body.
    uring: Option<Uring>,
    broken: bool,
    /// Where the queue goes when the worker ends.
    home: QueueHome,
}

impl<M: Memory> Drop for BlkWorker<M> {
    fn drop(&mut self) {
        self.home.put(self.index, self.queue.state());
    }
}

/// A failed host operation, with what it was about.
struct HostError {
    operation: Operation,
    error: io::Error,
    sector: u64,
    sectors: u64,
}

impl HostError {
    /// A failed read, write or flush (what io_uring does).
    fn of(kind: &RequestKind, error: io::Error) -> Self {
        let (operation, sector, sectors) = match kind {
            RequestKind::Read { sector, data } => {
                (Operation::Read, *sector, data.len() / SECTOR_SIZE)
            }
            RequestKind::Write { sector, data } => {
                (Operation::Write, *sector, data.len() / SECTOR_SIZE)
            }
            _ => (Operation::Flush, 0, 0),
        };
        Self {
            operation,
            error,
            sector,
            sectors,
        }
    }
}

impl<M: Memory> BlkWorker<M> {
    /// A worker for `queue` (index `index`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: Arc<M>,
        queue: Queue,
        index: u16,
        interrupt: Arc<dyn VirtioInterrupt>,
        disk: Arc<Disk>,
        limits: Limits,
        id: [u8; ID_BYTES],
        shared: Arc<Shared>,
        home: QueueHome,
    ) -> Self {
        Self {
            mem,
            queue,
            index,
            interrupt,
            disk,
            limits,
            id,
            shared,
            held: Vec::new(),
            uring: None,
            broken: false,
            home,
        }
    }

    /// The thread's body: wait for notifications, completions and retries
    /// until told to stop. With `home`, requests go through its io_uring.
    pub fn run(mut self, waiter: Waiter, kick: EventFd, retry: EventFd, home: Option<UringHome>) {
        // A retry left from before the last reset is not this activation's.
        let _ = retry.read();
        if let Some(home) = &home {
            let ring = home.lock().unwrap_or_else(|e| e.into_inner()).take();
            match ring {
                Some(ring) if !ring.poisoned() => self.uring = Some(ring),
                _ => {
                    log::error!("virtio-blk: the disk's io_uring is unusable; device needs reset");
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        self.serve(&waiter, &kick, &retry);
        if self.shared.quiescing.load(Ordering::Acquire) {
            self.finish_in_flight();
        }
        if let (Some(mut ring), Some(home)) = (self.uring.take(), home) {
            ring.drain();
            *home.lock().unwrap_or_else(|e| e.into_inner()) = Some(ring);
        }
    }

    fn serve(&mut self, waiter: &Waiter, kick: &EventFd, retry: &EventFd) {
        let mut added = waiter
            .add(kick, KICK)
            .and_then(|()| waiter.add(retry, RETRY));
        if let Some(ring) = &self.uring {
            let _ = ring.eventfd().read();
            added = added.and_then(|()| waiter.add(ring.eventfd(), DONE));
        }
        if let Err(e) = added {
            log::error!("virtio-blk: cannot wait on the queue: {e}");
            self.interrupt.set_needs_reset();
            return;
        }
        // Notifications sent before the worker started are in the ring.
        self.process(waiter.stop_flag());
        loop {
            let tokens = match waiter.wait() {
                Ok(t) => t,
                Err(e) => {
                    log::error!("virtio-blk: the worker cannot wait: {e}");
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
            let retried = tokens.contains(&RETRY);
            if retried {
                let _ = retry.read();
            }
            if tokens.contains(&DONE) {
                self.reap();
            }
            if self.broken {
                continue;
            }
            if retried {
                self.retry_held();
            }
            if self.held.is_empty() {
                self.process(waiter.stop_flag());
            }
        }
    }

    /// For a snapshot: completes every request the io_uring still has (no
    /// new one is popped), so that the queue's indices say all there is.
    fn finish_in_flight(&mut self) {
        while self.uring.as_ref().is_some_and(|r| r.in_flight() > 0) && !self.broken {
            let waited = self.uring.as_mut().map_or(Ok(()), Uring::wait_one);
            if let Err(e) = waited {
                log::error!("virtio-blk: cannot wait for io_uring completions: {e}");
                self.broken = true;
                self.interrupt.set_needs_reset();
                return;
            }
            self.reap();
        }
    }

    /// Runs the held requests again (they may be held again).
    fn retry_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        self.shared.held.store(0, Ordering::Release);
        let mut used = false;
        for h in held {
            used |= self.start(h.head, h.request);
        }
        self.submit();
        if used {
            self.notify();
        }
    }

    /// Whether another request may start: always without io_uring (each
    /// is done before the next); with it, while fewer than the ring's
    /// capacity and the queue's size are in flight.
    fn has_room(&self) -> bool {
        self.uring
            .as_ref()
            .is_none_or(|r| r.in_flight() < r.capacity().min(usize::from(self.queue.size())))
    }

    /// Starts the parsed request at `head`: on the io_uring if it can take
    /// it, else done now. Whether it was completed now.
    fn start(&mut self, head: u16, request: Request) -> bool {
        let request = match self.uring.as_mut() {
            Some(ring) => match ring.queue(&*self.mem, &self.disk, head, request) {
                Ok(()) => return false,
                Err(request) => request,
            },
            None => request,
        };
        let result = self.io(&request.kind);
        match self.finish(head, request, result) {
            Some(len) => {
                self.complete(head, len);
                true
            }
            None => false,
        }
    }

    /// Hands what was queued on the io_uring to the kernel.
    fn submit(&mut self) {
        if let Some(ring) = self.uring.as_mut() {
            if let Err(e) = ring.submit() {
                log::error!("virtio-blk: io_uring submission failed: {e}; device needs reset");
                self.broken = true;
                self.interrupt.set_needs_reset();
            }
        }
    }

    /// Completes what the io_uring finished, in the order it did.
    fn reap(&mut self) {
        let Some(ring) = self.uring.as_mut() else {
            return;
        };
        let mem = Arc::clone(&self.mem);
        let finished = ring.reap(&*mem, &self.disk);
        let poisoned = ring.poisoned();
        let mut used = false;
        for f in finished {
            let result = match f.result {
                Ok(()) => Ok(match &f.request.kind {
                    RequestKind::Read { data, .. } => data.len() as u32,
                    _ => 0,
                }),
                Err(e) => Err(HostError::of(&f.request.kind, e)),
            };
            if let Some(len) = self.finish(f.head, f.request, result) {
                self.complete(f.head, len);
                used = true;
            }
        }
        if poisoned && !self.broken {
            log::error!("virtio-blk: the io_uring failed; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
        if used {
            self.notify();
        }
    }

    /// Handles available chains until the ring is empty, a request is
    /// held, as many are in flight as may be, or the worker is told to
    /// stop.
    fn process(&mut self, stop: &StopFlag) {
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        'ring: loop {
            if !self.avail_sane() || self.queue.disable_notification(&*mem).is_err() {
                self.break_queue();
                break;
            }
            while self.has_room() {
                let Some(chain) = self.queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                used |= match request::parse(chain, &*mem, &self.limits) {
                    Ok(request) => self.start(head, request),
                    Err(rejected) => {
                        let len = self.refuse(rejected);
                        self.complete(head, len);
                        true
                    }
                };
                if !self.held.is_empty() || stop.is_set() || self.broken {
                    break 'ring;
                }
            }
            if !self.has_room() {
                // Completions bring the worker back for the rest.
                break;
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
        self.submit();
        if used {
            self.notify();
        }
    }

    /// The driver's available index is at most a ring ahead of ours (a
    /// driver that says otherwise would make us spin on entries that are
    /// not there).
    fn avail_sane(&self) -> bool {
        self.queue
            .avail_idx(&*self.mem, Ordering::Acquire)
            .is_ok_and(|idx| (idx - Wrapping(self.queue.next_avail())).0 <= self.queue.size())
    }

    fn break_queue(&mut self) {
        if !self.broken {
            log::warn!("virtio-blk: the driver broke the queue; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }

    fn hold(&mut self, head: u16, request: Request) {
        self.held.push(Held { head, request });
        self.shared
            .held
            .store(self.held.len() as u64, Ordering::Release);
    }

    fn complete(&mut self, head: u16, len: u32) {
        if self.broken {
            return;
        }
        if self.queue.add_used(&*self.mem, head, len).is_err() {
            self.break_queue();
        }
    }

    fn notify(&mut self) {
        if self.queue.needs_notification(&*self.mem).unwrap_or(true) {
            self.interrupt.signal_queue(self.index);
        }
    }

    fn set_status(&self, at: GuestAddress, status: u32) {
        // The address was checked when the request was parsed.
        let _ = self.mem.write_obj(status as u8, at);
    }

    /// Completes a refused chain: its used length.
    fn refuse(&mut self, rejected: Rejected) -> u32 {
        log::debug!("virtio-blk: request refused: {}", rejected.error);
        self.shared.stats.invalid.fetch_add(1, Ordering::Relaxed);
        match rejected.status {
            Some(at) => {
                self.set_status(at, rejected.error.status().into());
                1
            }
            None => 0,
        }
    }

    /// Does the request's I/O; bytes written into the guest's buffers, or
    /// what failed.
    fn io(&self, kind: &RequestKind) -> Result<u32, HostError> {
        let mem = &*self.mem;
        let fail = |operation, sector, sectors| {
            move |error| HostError {
                operation,
                error,
                sector,
                sectors,
            }
        };
        match kind {
            RequestKind::Read { sector, data } => {
                let sectors = data.len() / SECTOR_SIZE;
                self.disk
                    .read(mem, sector * SECTOR_SIZE, data)
                    .map_err(fail(Operation::Read, *sector, sectors))?;
                Ok(data.len() as u32)
            }
            RequestKind::Write { sector, data } => {
                let sectors = data.len() / SECTOR_SIZE;
                self.disk
                    .write(mem, sector * SECTOR_SIZE, data)
                    .map_err(fail(Operation::Write, *sector, sectors))?;
                Ok(0)
            }
            RequestKind::Flush => {
                self.disk.flush().map_err(fail(Operation::Flush, 0, 0))?;
                Ok(0)
            }
            RequestKind::GetId { data } => {
                let n = (data.len() as usize).min(ID_BYTES);
                // Checked to be in memory when parsed.
                let _ = data.write_from(mem, 0, &self.id[..n]);
                Ok(n as u32)
            }
            RequestKind::Discard(ranges) | RequestKind::WriteZeroes(ranges) => {
                let discard = matches!(kind, RequestKind::Discard(_));
                for r in ranges {
                    let (offset, len) =
                        (r.sector * SECTOR_SIZE, u64::from(r.sectors) * SECTOR_SIZE);
                    let done = if discard {
                        self.disk.discard(offset, len)
                    } else {
                        self.disk.write_zeroes(offset, len, r.unmap)
                    };
                    let op = if discard {
                        Operation::Discard
                    } else {
                        Operation::WriteZeroes
                    };
                    done.map_err(fail(op, r.sector, r.sectors.into()))?;
                }
                Ok(0)
            }
        }
    }

    fn count(&self, kind: &RequestKind) {
        let s = &self.shared.stats;
        match kind {
            RequestKind::Read { data, .. } => {
                s.reads.fetch_add(1, Ordering::Relaxed);
                s.read_bytes.fetch_add(data.len(), Ordering::Relaxed);
            }
            RequestKind::Write { data, .. } => {
                s.writes.fetch_add(1, Ordering::Relaxed);
                s.written_bytes.fetch_add(data.len(), Ordering::Relaxed);
            }
            RequestKind::Flush => {
                s.flushes.fetch_add(1, Ordering::Relaxed);
            }
            RequestKind::Discard(_) | RequestKind::WriteZeroes(_) => {
                s.discards.fetch_add(1, Ordering::Relaxed);
            }
            RequestKind::GetId { .. } => {}
        }
    }

    /// Ends the request at `head` whose I/O gave `result`: its used
    /// length, or None when it is held (host error under `stop`). The held
    /// state is set before the machine hears of the error, so that what it
    /// sees is already true.
    fn finish(
        &mut self,
        head: u16,
        request: Request,
        result: Result<u32, HostError>,
    ) -> Option<u32> {
        match result {
            Ok(bytes) => {
                self.count(&request.kind);
                self.set_status(request.status, VIRTIO_BLK_S_OK);
                Some(bytes + 1)
            }
            Err(e) => {
                self.shared
                    .stats
                    .host_errors
                    .fetch_add(1, Ordering::Relaxed);
                let errno = e.error.raw_os_error().unwrap_or(libc::EIO);
                let action = if e.operation.is_read() {
                    self.shared.policy.read
                } else {
                    self.shared.policy.write
                };
                let outcome = action.outcome(errno);
                log::warn!(
                    "virtio-blk: {:?} of sectors {}+{} failed: {} ({outcome:?})",
                    e.operation,
                    e.sector,
                    e.sectors,
                    e.error
                );
                let event = IoErrorEvent {
                    operation: e.operation,
                    errno,
                    nospace: errno == libc::ENOSPC,
                    outcome,
                    sector: e.sector,
                    sectors: e.sectors,
                };
                let done = match outcome {
                    ErrorOutcome::Reported => {
                        self.set_status(request.status, VIRTIO_BLK_S_IOERR);
                        Some(1)
                    }
                    ErrorOutcome::Ignored => {
                        self.set_status(request.status, VIRTIO_BLK_S_OK);
                        Some(1)
                    }
                    ErrorOutcome::Stopped => {
                        self.hold(head, request);
                        None
                    }
                };
                self.shared.events.io_error(&event);
                done
            }
        }
    }
}
