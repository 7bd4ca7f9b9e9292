//! The virtio-blk worker: pops chains, parses them, does their I/O,
//! completes them, and applies the error policy. One per started device,
//! on its own thread.

use std::io;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::device::Shared;
use super::io::Disk;
use super::request::{self, Limits, Rejected, Request, RequestKind};
use super::{ErrorOutcome, IoErrorEvent, Operation, ID_BYTES, SECTOR_SIZE};
use crate::device::VirtioInterrupt;
use crate::worker::{StopFlag, Waiter, STOP_TOKEN};
use crate::Memory;

const KICK: u64 = 0;
const RETRY: u64 = 1;

/// A request popped and not completed.
struct Held {
    head: u16,
    request: Request,
}

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
    held: Option<Held>,
    broken: bool,
}

/// A failed host operation, with what it was about.
struct HostError {
    operation: Operation,
    error: io::Error,
    sector: u64,
    sectors: u64,
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
            held: None,
            broken: false,
        }
    }

    /// The thread's body: wait for notifications and retries until told
    /// to stop.
    pub fn run(mut self, waiter: Waiter, kick: EventFd, retry: EventFd) {
        // A retry left from before the last reset is not this activation's.
        let _ = retry.read();
        if let Err(e) = waiter
            .add(&kick, KICK)
            .and_then(|()| waiter.add(&retry, RETRY))
        {
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
            if self.broken || (self.held.is_some() && !retried) {
                continue;
            }
            if self.retry_held() {
                self.process(waiter.stop_flag());
            }
        }
    }

    /// Runs the held request again; whether it is gone (done, or there was
    /// none).
    fn retry_held(&mut self) -> bool {
        let Some(held) = self.held.take() else {
            return true;
        };
        self.shared.held.store(false, Ordering::Release);
        match self.execute(held.head, held.request) {
            Some(len) => {
                self.complete(held.head, len);
                self.notify();
                true
            }
            None => false,
        }
    }

    /// Handles every available chain until the ring is empty, a request is
    /// held, or the worker is told to stop.
    fn process(&mut self, stop: &StopFlag) {
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        'ring: loop {
            if !self.avail_sane() || self.queue.disable_notification(&*mem).is_err() {
                self.break_queue();
                break;
            }
            while let Some(chain) = self.queue.pop_descriptor_chain(&*mem) {
                let head = chain.head_index();
                let done = match request::parse(chain, &*mem, &self.limits) {
                    Ok(request) => self.execute(head, request),
                    Err(rejected) => Some(self.refuse(rejected)),
                };
                let Some(len) = done else {
                    break 'ring;
                };
                self.complete(head, len);
                used = true;
                if stop.is_set() || self.broken {
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
        self.held = Some(Held { head, request });
        self.shared.held.store(true, Ordering::Release);
    }

    fn complete(&mut self, head: u16, len: u32) {
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

    /// Runs the parsed request at `head`: its used length, or None when it
    /// is held (host error under `stop`). The held state is set before the
    /// machine hears of the error, so that what it sees is already true.
    fn execute(&mut self, head: u16, request: Request) -> Option<u32> {
        match self.io(&request.kind) {
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
