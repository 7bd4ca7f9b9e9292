//! `aio=io_uring`: many requests in flight per disk.
//!
//! The worker hands reads, writes and flushes to an io_uring
//! (`IORING_OP_READV`/`WRITEV` with iovecs straight into guest memory,
//! `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`) and goes back to the
//! ring for more; the kernel completes them in any order, and the worker
//! hears of each through an eventfd registered with the ring, which it
//! waits on beside the queue's doorbell. What stays synchronous on the
//! worker, as with `aio=threads`: GET_ID, discard and write-zeroes
//! (`fallocate`), requests whose buffers `O_DIRECT` cannot take as they
//! are (they go through the bounce buffer), and requests of more than
//! `IOV_MAX` pieces.
//!
//! The ring is made with the device, at machine build time (on the main
//! thread, before any seccomp filter): a host without io_uring fails
//! there, with a clear error, not when the guest first uses the disk. Its
//! worker thread then only needs `io_uring_enter`. The operations run in
//! the kernel, on its own workers where they block: seccomp sees the
//! `io_uring_enter`, not the reads and writes it starts.
//!
//! At most [`Uring::capacity`] requests are in flight (the ring's size,
//! which is the queue's); the completion ring is twice that, so it never
//! overflows. A request's iovecs and the request itself live in its slot
//! until its completion is read, and the worker never ends a body with
//! anything in flight ([`Uring::drain`]): the kernel writes into guest
//! memory only while the worker still holds it.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::io::{zero_fill, Disk};
use super::request::{Request, RequestKind};
use super::{Operation, SECTOR_SIZE};
use crate::iov::{guest_iovecs, mark_dirty, IOV_MAX};

/// The user data of a test's gate (its completion is not a request's).
#[cfg(test)]
const GATE: u64 = u64::MAX;

/// Why io_uring cannot serve a disk on this host.
pub fn unavailable(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&d| d != 0);
    match (e.raw_os_error(), disabled) {
        (_, Some(d)) => {
            format!("io_uring is disabled on this host (kernel.io_uring_disabled = {d})")
        }
        (Some(libc::ENOSYS), _) => "this host's kernel has no io_uring".to_owned(),
        (Some(libc::EPERM), _) => {
            "io_uring is not permitted here (a seccomp or security policy refuses io_uring_setup)"
                .to_owned()
        }
        _ => format!("cannot set up an io_uring: {e}"),
    }
}

/// What is being done for one request.
enum Op {
    /// A read or write of `total` bytes at `offset`; `done` so far, the
    /// rest described by `iovs[idx..]`.
    Rw {
        write: bool,
        offset: u64,
        total: u64,
        done: u64,
        iovs: Vec<libc::iovec>,
        idx: usize,
    },
    /// `fdatasync`.
    Flush,
}

/// One request in flight.
struct Slot {
    head: u16,
    request: Request,
    op: Op,
    /// A test's injected error: the request went in as a NOP and comes
    /// back with this as its result, each time it is submitted.
    injected: Option<i32>,
    /// How many times the kernel answered "try again" (EAGAIN, EINTR).
    retries: u32,
    #[cfg(test)]
    gate: Option<(std::os::fd::OwnedFd, Box<[u8; 1]>)>,
}

/// A request the kernel is done with.
pub(super) struct Finished {
    /// Its chain's head.
    pub head: u16,
    /// The request.
    pub request: Request,
    /// Whether the host did it.
    pub result: io::Result<()>,
}

/// A disk's io_uring, its eventfd and its requests in flight.
pub struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Completions still to come.
    pending: usize,
    /// A submission failed in a way that may have left entries behind:
    /// the ring is never used again.
    poisoned: bool,
    /// A test's `EAGAIN`s: the next this many entries into the kernel
    /// fail so without trying.
    #[cfg(test)]
    eagain: u32,
}

/// How many times a submission the kernel refuses with `EAGAIN` is tried
/// again, a millisecond apart, when nothing else is in flight, before the
/// ring is given up (the device then needs a reset).
const EAGAIN_TRIES: u32 = if cfg!(test) { 5 } else { 1000 };

/// How many times a request whose completion says "try again" (`EAGAIN`,
/// `EINTR`) is submitted again before it fails with that error (the
/// disk's error policy then applies, as for any host error).
const RESUBMITS: u32 = 100;

// SAFETY: the only thing that is not Send is the iovecs' raw pointers,
// into guest memory, which is shared between threads by design (`Memory`
// is Send + Sync); the iovecs are only touched by whichever thread owns
// the ring (one at a time: it moves between activations under a mutex).
unsafe impl Send for Uring {}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("capacity", &self.slots.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Uring {
    /// A ring for `entries` requests in flight (a power of two), with an
    /// eventfd the kernel signals on each completion.
    pub fn new(entries: u16) -> io::Result<Self> {
        let ring = IoUring::new(u32::from(entries))?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let n = usize::from(entries);
        Ok(Self {
            ring,
            eventfd,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            pending: 0,
            poisoned: false,
            #[cfg(test)]
            eagain: 0,
        })
    }

    /// The eventfd to wait on for completions.
    pub(super) fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    /// The most requests in flight.
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether a failed submission made the ring unusable.
    pub(super) fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Queues `request` (chain `head`) if the ring can do it and has room;
    /// gives it back for the synchronous path otherwise. Queued entries go
    /// to the kernel with [`Uring::submit`].
    pub(super) fn queue<M: GuestMemory>(
        &mut self,
        mem: &M,
        disk: &Disk,
        head: u16,
        request: Request,
    ) -> Result<(), Request> {
        let (operation, op) = match &request.kind {
            RequestKind::Read { sector, data } | RequestKind::Write { sector, data } => {
                let write = matches!(request.kind, RequestKind::Write { .. });
                let offset = sector * SECTOR_SIZE;
                if !disk.direct_ok(mem, offset, data) {
                    return Err(request);
                }
                let iovs = match guest_iovecs(mem, data, write) {
                    Ok(iovs) if iovs.len() <= IOV_MAX => iovs,
                    _ => return Err(request),
                };
                let operation = if write {
                    Operation::Write
                } else {
                    Operation::Read
                };
                let op = Op::Rw {
                    write,
                    offset,
                    total: data.len(),
                    done: 0,
                    iovs,
                    idx: 0,
                };
                (operation, op)
            }
            RequestKind::Flush => (Operation::Flush, Op::Flush),
            _ => return Err(request),
        };
        let Some(index) = self.free.pop() else {
            return Err(request);
        };
        let injected = disk
            .fault(operation)
            .err()
            .map(|e| e.raw_os_error().unwrap_or(libc::EIO));
        self.slots[index] = Some(Slot {
            head,
            request,
            op,
            injected,
            retries: 0,
            #[cfg(test)]
            gate: disk.gate(operation).map(|fd| (fd, Box::new([0u8]))),
        });
        self.push_slot(disk, index);
        Ok(())
    }

    /// Pushes the submission entry (entries) for slot `index`.
    fn push_slot(&mut self, disk: &Disk, index: usize) {
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        let fd = types::Fd(disk.raw_fd());
        let entry = if slot.injected.is_some() {
            opcode::Nop::new().build()
        } else {
            match &slot.op {
                Op::Rw {
                    write,
                    offset,
                    done,
                    iovs,
                    idx,
                    ..
                } => {
                    let rest = &iovs[*idx..];
                    // `rest` has at most IOV_MAX entries.
                    let n = rest.len() as u32;
                    if *write {
                        opcode::Writev::new(fd, rest.as_ptr(), n)
                            .offset(offset + done)
                            .build()
                    } else {
                        opcode::Readv::new(fd, rest.as_ptr(), n)
                            .offset(offset + done)
                            .build()
                    }
                }
                Op::Flush => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
        };
        // A test's gate goes first, linked: the request waits for it.
        #[cfg(test)]
        let gate = slot.gate.as_mut().map(|(gate, byte)| {
            opcode::Read::new(types::Fd(gate.as_raw_fd()), byte.as_mut_ptr(), 1)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(GATE)
        });
        #[cfg(not(test))]
        let gate: Option<squeue::Entry> = None;
        let entry = entry.user_data(index as u64);
        if let Some(gate) = gate {
            self.push(&gate);
        }
        self.push(&entry);
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: what the entry points at (the slot's iovecs, and
            // through them guest memory; a test's gate byte) stays where it
            // is until the entry's completion is read: slots are neither
            // moved nor reused before that, and the worker holds guest
            // memory and never ends with requests in flight.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.pending += 1;
                return;
            }
            // Full (only with a test's gates, two entries a request): hand
            // what is there to the kernel first, waiting for it to take
            // them (a completion to come would not free the queue).
            if self.hand_over(true).is_err() {
                return;
            }
        }
    }

    /// Hands the queued entries to the kernel.
    pub(super) fn submit(&mut self) -> io::Result<()> {
        self.hand_over(false)
    }

    /// `io_uring_enter` for what is queued. `EAGAIN` (the kernel short of
    /// memory for requests, for now) leaves it queued: while other
    /// requests are in flight, and unless `now`, their completions bring
    /// the worker back to [`Uring::reap`], which tries again; with none,
    /// nothing would (the worker waits for a completion or the guest's
    /// next kick), so it tries again here a millisecond later, up to
    /// [`EAGAIN_TRIES`] times, then fails.
    fn hand_over(&mut self, now: bool) -> io::Result<()> {
        let mut tries = 0;
        loop {
            match self.enter() {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    let queued = self.ring.submission().len();
                    if queued == 0 || (!now && self.pending > queued) {
                        return Ok(());
                    }
                    tries += 1;
                    if tries >= EAGAIN_TRIES {
                        self.poisoned = true;
                        return Err(e);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => {
                    self.poisoned = true;
                    return Err(e);
                }
            }
        }
    }

    fn enter(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.eagain > 0 {
            self.eagain -= 1;
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        self.ring.submit().map(drop)
    }

    /// The requests that completed, in the order they did; resubmits the
    /// rest of short transfers.
    pub(super) fn reap<M: GuestMemory>(&mut self, mem: &M, disk: &Disk) -> Vec<Finished> {
        let _ = self.eventfd.read();
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut finished = Vec::new();
        for (user_data, res) in cqes {
            self.pending = self.pending.saturating_sub(1);
            #[cfg(test)]
            if user_data == GATE {
                continue;
            }
            let index = user_data as usize;
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let res = slot.injected.map_or(res, |errno| -errno);
            let result = match &mut slot.op {
                // Tried again, a bounded number of times: a file system
                // that answers EAGAIN for good (a FUSE server can) would
                // otherwise have the worker resubmit for ever, and a
                // snapshot's drain wait for it.
                _ if (res == -libc::EINTR || res == -libc::EAGAIN) && slot.retries < RESUBMITS => {
                    slot.retries += 1;
                    self.push_slot(disk, index);
                    continue;
                }
                _ if res < 0 => Err(io::Error::from_raw_os_error(-res)),
                Op::Flush => Ok(()),
                Op::Rw {
                    write,
                    total,
                    done,
                    iovs,
                    idx,
                    ..
                } => {
                    let n = res as u64;
                    *done += n;
                    if *done >= *total {
                        Ok(())
                    } else if n == 0 && *write {
                        Err(io::Error::from(io::ErrorKind::WriteZero))
                    } else if n == 0 {
                        // Past the end of the file (it shrank): zeroes.
                        Self::read_data(&slot.request)
                            .map_or(Ok(()), |data| zero_fill(mem, data, *done))
                    } else {
                        advance(iovs, idx, n as usize);
                        self.push_slot(disk, index);
                        continue;
                    }
                }
            };
            if let Some(slot) = self.slots[index].take() {
                self.free.push(index);
                // Marked whatever the outcome: a failed or short read
                // may have filled some of the buffers all the same.
                if let Some(data) = Self::read_data(&slot.request) {
                    mark_dirty(mem, data, data.len());
                }
                finished.push(Finished {
                    head: slot.head,
                    request: slot.request,
                    result,
                });
            }
        }
        if let Err(e) = self.submit() {
            log::error!("virtio-blk: io_uring submission failed: {e}");
        }
        finished
    }

    fn read_data(request: &Request) -> Option<&super::request::Buffers> {
        match &request.kind {
            RequestKind::Read { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Blocks until at least one request in flight completes (for
    /// [`Uring::reap`] to take).
    pub(super) fn wait_one(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e);
                }
            }
        }
    }

    /// Waits for everything in flight and drops it (a device reset, or
    /// the worker stopping): nothing is left that could still write into
    /// guest memory.
    pub(super) fn drain(&mut self) {
        while self.pending > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    log::error!("virtio-blk: cannot wait for io_uring completions: {e}");
                    self.poisoned = true;
                    return;
                }
            }
            let n = self.ring.completion().count();
            self.pending = self.pending.saturating_sub(n);
        }
        let _ = self.eventfd.read();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.take().is_some() {
                self.free.push(i);
            }
        }
    }
}

/// Moves `iovs[*idx..]` past `n` bytes.
fn advance(iovs: &mut [libc::iovec], idx: &mut usize, mut n: usize) {
    while n > 0 && *idx < iovs.len() {
        let iov = &mut iovs[*idx];
        if n >= iov.iov_len {
            n -= iov.iov_len;
            *idx += 1;
        } else {
            // SAFETY: advancing inside the same iovec's buffer.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
            iov.iov_len -= n;
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_a_host_has_no_io_uring_is_said_plainly() {
        let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .is_ok_and(|s| s.trim() != "0");
        let enosys = unavailable(&io::Error::from_raw_os_error(libc::ENOSYS));
        let eperm = unavailable(&io::Error::from_raw_os_error(libc::EPERM));
        if disabled {
            assert!(enosys.contains("io_uring_disabled"), "{enosys}");
        } else {
            assert_eq!(enosys, "this host's kernel has no io_uring");
            assert!(eperm.contains("not permitted"), "{eperm}");
        }
        let other = unavailable(&io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(other.starts_with("cannot set up an io_uring"), "{other}");
    }

    /// A ring with `n` no-op entries queued (as a test's gates: their
    /// completions are nobody's request).
    fn ring_with_queued(n: usize) -> Uring {
        let mut ring = Uring::new(8).unwrap();
        for _ in 0..n {
            ring.push(&opcode::Nop::new().build().user_data(GATE));
        }
        ring
    }

    #[test]
    fn a_submission_refused_for_now_with_nothing_in_flight_is_tried_again() {
        let mut ring = ring_with_queued(1);
        ring.eagain = 3;
        ring.submit().unwrap();
        // Handed over (nothing else would have made the worker try again).
        assert_eq!((ring.eagain, ring.ring.submission().len()), (0, 0));
        ring.wait_one().unwrap();
        assert_eq!(ring.ring.completion().len(), 1);
    }

    #[test]
    fn a_submission_refused_for_now_behind_requests_in_flight_waits_for_them() {
        let mut ring = ring_with_queued(1);
        ring.submit().unwrap();
        ring.push(&opcode::Nop::new().build().user_data(GATE));
        ring.eagain = 1;
        ring.submit().unwrap();
        // Left queued at once: the first one's completion brings the
        // worker to reap, which submits it.
        assert_eq!(ring.ring.submission().len(), 1);
        ring.submit().unwrap();
        assert_eq!(ring.ring.submission().len(), 0);
        assert!(!ring.poisoned());
    }

    #[test]
    fn a_kernel_that_keeps_refusing_gives_the_ring_up() {
        let mut ring = ring_with_queued(1);
        ring.eagain = u32::MAX;
        let e = ring.submit().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        assert!(ring.poisoned());
        assert_eq!(ring.eagain, u32::MAX - EAGAIN_TRIES);
    }

    #[test]
    fn short_transfers_resume_inside_an_iovec() {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let mut iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 8,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 8,
            },
        ];
        let mut idx = 0;
        advance(&mut iovs, &mut idx, 11);
        assert_eq!((idx, iovs[1].iov_len), (1, 5));
        assert_eq!(iovs[1].iov_base as usize, b.as_ptr() as usize + 3);
        advance(&mut iovs, &mut idx, 5);
        assert_eq!(idx, 2);
    }
}
