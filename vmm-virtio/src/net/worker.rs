//! The virtio-net worker: frames from the backend into receive buffers,
//! frames from transmit chains to the backend. One per started device,
//! on its own thread.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::chains::{rx_buffers, tx_buffers};
use super::device::Counters;
use super::{offload_flags, NetBackend, HDR_LEN, MAX_TX_LEN, NUM_BUFFERS_AT, RX_QUEUE, TX_QUEUE};
use crate::blk::request::Buffers;
use crate::device::{QueueHome, VirtioInterrupt};
use crate::iov::IoVecs;
use crate::ring::avail_sane;
use crate::worker::{Waiter, STOP_TOKEN};
use crate::Memory;

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const BACKEND: u64 = 2;
/// Frames taken from the backend per wake-up before the doorbells get a
/// look (the backend stays readable, so the worker comes back).
const RX_BURST: usize = 64;
/// The receive frame buffer: the longest frame a tap gives with TSO on
/// (64 KiB of IP behind an Ethernet header, with room to spare) and its
/// header. A longer one would be cut short by the backend.
const RX_BUF_LEN: usize = MAX_TX_LEN + 4096;

/// A receive chain popped and checked, waiting for a frame.
#[derive(Debug)]
struct RxBuffer {
    head: u16,
    buffers: Buffers,
}

/// What became of a received frame.
enum Placed {
    /// In the guest's buffers.
    Delivered,
    /// Dropped: no buffer could ever hold it.
    Dropped,
    /// Waiting: not enough buffers yet.
    NoRoom,
    /// The ring is broken.
    Broken,
}

/// The worker's state.
pub struct NetWorker<M: Memory> {
    mem: Arc<M>,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: Arc<dyn NetBackend>,
    features: u64,
    counters: Arc<Counters>,
    /// The frame read from the backend and not yet given to the guest.
    frame: Vec<u8>,
    pending: Option<usize>,
    /// Receive chains popped, checked, not yet used.
    ready: VecDeque<RxBuffer>,
    /// Whether the backend is in the epoll set.
    watching: bool,
    broken: bool,
    /// A malformed receive chain was returned while others waited in
    /// `ready`: those are no longer the last ones popped.
    tangled: bool,
    /// Where the queues go when the worker ends.
    home: QueueHome,
}

impl<M: Memory> Drop for NetWorker<M> {
    /// The queues go home with the receive chains popped and not used
    /// given back (the next worker pops them again): a frame that waited
    /// for them is dropped, as a wire may.
    fn drop(&mut self) {
        let unused = self.ready.len() as u16;
        if unused > 0 && !self.tangled {
            let next = self.rx.next_avail().wrapping_sub(unused);
            self.rx.set_next_avail(next);
        } else if unused > 0 {
            log::warn!("virtio-net: {unused} receive buffers are lost to the guest at a stop");
        }
        self.home.put(RX_QUEUE, self.rx.state());
        self.home.put(TX_QUEUE, self.tx.state());
    }
}

impl<M: Memory> NetWorker<M> {
    /// A worker for the receive and transmit queues.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: Arc<M>,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: Arc<dyn NetBackend>,
        features: u64,
        counters: Arc<Counters>,
        home: QueueHome,
    ) -> Self {
        Self {
            mem,
            rx,
            tx,
            interrupt,
            backend,
            features,
            counters,
            frame: Vec::new(),
            pending: None,
            ready: VecDeque::new(),
            watching: false,
            broken: false,
            tangled: false,
            home,
        }
    }

    fn mergeable(&self) -> bool {
        self.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// The thread's body: until told to stop.
    pub fn run(mut self, waiter: Waiter, rx_kick: EventFd, tx_kick: EventFd) {
        self.frame = vec![0; RX_BUF_LEN];
        let flags = offload_flags(self.features);
        if let Err(e) = self.backend.set_offload(flags) {
            // The backend keeps handing over plain frames, which every
            // driver takes.
            log::warn!("virtio-net: cannot set offloads {flags:#x} on the backend: {e}");
            let _ = self.backend.set_offload(0);
        }
        let added = waiter
            .add(&rx_kick, RX_KICK)
            .and_then(|()| waiter.add(&tx_kick, TX_KICK))
            .and_then(|()| waiter.add(&self.backend.fd(), BACKEND));
        if let Err(e) = added {
            log::error!("virtio-net: cannot wait on the queues: {e}");
            self.interrupt.set_needs_reset();
            return;
        }
        self.watching = true;
        // Chains made available before the worker started are in the rings.
        self.process_tx(&waiter);
        self.process_rx(&waiter);
        loop {
            let tokens = match waiter.wait() {
                Ok(t) => t,
                Err(e) => {
                    log::error!("virtio-net: the worker cannot wait: {e}");
                    self.interrupt.set_needs_reset();
                    return;
                }
            };
            if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
                return;
            }
            if tokens.contains(&TX_KICK) {
                let _ = tx_kick.read();
                self.process_tx(&waiter);
            }
            if tokens.contains(&RX_KICK) {
                let _ = rx_kick.read();
            }
            if tokens.contains(&RX_KICK) || tokens.contains(&BACKEND) {
                self.process_rx(&waiter);
            }
        }
    }

    /// Watches the backend or not.
    fn watch(&mut self, waiter: &Waiter, on: bool) {
        if self.watching == on {
            return;
        }
        let fd = self.backend.fd();
        let done = if on {
            waiter.add(&fd, BACKEND)
        } else {
            waiter.remove(&fd)
        };
        match done {
            Ok(()) => self.watching = on,
            Err(e) => log::warn!("virtio-net: cannot change the backend's watch: {e}"),
        }
    }

    /// Moves frames from the backend into receive buffers: until the
    /// backend has none, a frame waits for buffers, or [`RX_BURST`].
    fn process_rx(&mut self, waiter: &Waiter) {
        if self.broken {
            // The backend is read no more: not watched either, or a frame
            // waiting in it would wake the worker at once, for ever.
            self.watch(waiter, false);
            return;
        }
        let mem = Arc::clone(&self.mem);
        let old = self.rx.next_used();
        if self.rx.disable_notification(&*mem).is_err() {
            self.break_queue();
            return;
        }
        let mut stalled = false;
        for _ in 0..RX_BURST {
            let len = match self.pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.frame) {
                    Ok(len) if len < HDR_LEN => {
                        log::debug!("virtio-net: a {len}-byte frame from the backend dropped");
                        self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(len) => {
                        self.pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Not read again until the guest adds buffers: a
                        // lasting error must not spin the worker.
                        log::warn!("virtio-net: cannot read from the backend: {e}");
                        stalled = true;
                        break;
                    }
                },
            };
            match self.place(len, waiter) {
                Placed::Delivered | Placed::Dropped => self.pending = None,
                Placed::NoRoom => match self.rx.enable_notification(&*mem) {
                    // Buffers came meanwhile.
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) => {
                        self.break_queue();
                        break;
                    }
                },
                Placed::Broken => break,
            }
        }
        // A held frame waits for the receive doorbell, not the backend.
        let watch = self.pending.is_none() && !stalled && !self.broken;
        self.watch(waiter, watch);
        self.notify_rx(old);
    }

    /// Puts the pending frame of `len` bytes into receive buffers.
    fn place(&mut self, len: usize, waiter: &Waiter) -> Placed {
        let mergeable = self.mergeable();
        let needed = len as u64;
        loop {
            let have: u64 = if mergeable {
                self.ready.iter().map(|b| b.buffers.len()).sum()
            } else {
                self.ready.front().map_or(0, |b| b.buffers.len())
            };
            if have >= needed {
                break;
            }
            if (!mergeable && !self.ready.is_empty())
                || self.ready.len() >= usize::from(self.rx.size())
            {
                // It will never fit: the buffers wait for the next one.
                log::debug!("virtio-net: a {len}-byte frame is too long for the receive buffers");
                self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                return Placed::Dropped;
            }
            if !avail_sane(&self.rx, &*self.mem) {
                self.break_queue();
                return Placed::Broken;
            }
            let mem = Arc::clone(&self.mem);
            let Some(chain) = self.rx.pop_descriptor_chain(&*mem) else {
                return Placed::NoRoom;
            };
            let head = chain.head_index();
            match rx_buffers(chain, &*mem, usize::from(self.rx.size())) {
                Some(buffers) => self.ready.push_back(RxBuffer { head, buffers }),
                None => {
                    log::debug!("virtio-net: a malformed receive chain returned unused");
                    self.counters.rx_bad_buffers.fetch_add(1, Ordering::Relaxed);
                    self.tangled |= !self.ready.is_empty();
                    if !self.publish(&[(head, 0)]) {
                        return Placed::Broken;
                    }
                    // A driver may add malformed chains as fast as they go
                    // back: the worker must still hear that it is to stop.
                    if waiter.stopping() {
                        return Placed::NoRoom;
                    }
                }
            }
        }
        let count = if mergeable {
            let mut have = 0;
            self.ready
                .iter()
                .take_while(|b| {
                    let more = have < needed;
                    have += b.buffers.len();
                    more
                })
                .count()
        } else {
            1
        };
        self.frame[NUM_BUFFERS_AT..HDR_LEN].copy_from_slice(&(count as u16).to_le_bytes());
        let mut used = Vec::with_capacity(count);
        let mut at = 0usize;
        for b in self.ready.drain(..count) {
            let n = (b.buffers.len() as usize).min(len - at);
            // Checked to be in guest memory when popped.
            let _ = b.buffers.write_from(&*self.mem, 0, &self.frame[at..at + n]);
            used.push((b.head, n as u32));
            at += n;
        }
        if !self.publish(&used) {
            return Placed::Broken;
        }
        self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rx_bytes
            .fetch_add((len - HDR_LEN) as u64, Ordering::Relaxed);
        Placed::Delivered
    }

    /// Adds `used` to the receive queue's used ring, its index moved once
    /// for all of them (a driver must never see part of a merged frame).
    fn publish(&mut self, used: &[(u16, u32)]) -> bool {
        let Some((&(last_head, last_len), first)) = used.split_last() else {
            return true;
        };
        let start = self.rx.next_used();
        let size = self.rx.size();
        for (i, &(head, len)) in first.iter().enumerate() {
            let slot = start.wrapping_add(i as u16) % size;
            let at = self.rx.used_ring() + 4 + 8 * u64::from(slot);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            if self.mem.write_slice(&elem, GuestAddress(at)).is_err() {
                self.break_queue();
                return false;
            }
        }
        self.rx
            .set_next_used(start.wrapping_add(first.len() as u16));
        if self.rx.add_used(&*self.mem, last_head, last_len).is_err() {
            self.break_queue();
            return false;
        }
        true
    }

    /// The receive interrupt, if the driver wants one for the entries
    /// after `old` (with EVENT_IDX, counted here: [`Self::publish`] moves
    /// the index by several at once).
    fn notify_rx(&mut self, old: u16) {
        let new = self.rx.next_used();
        if new == old || self.broken {
            return;
        }
        let says = self.rx.needs_notification(&*self.mem).unwrap_or(true);
        let wanted = if self.rx.event_idx_enabled() {
            let at = self.rx.avail_ring() + 4 + 2 * u64::from(self.rx.size());
            match self.mem.read_obj::<u16>(GuestAddress(at)) {
                Ok(event) => {
                    let event = u16::from_le(event);
                    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
                }
                Err(_) => true,
            }
        } else {
            says
        };
        if wanted {
            self.interrupt.signal_queue(RX_QUEUE);
        }
    }

    /// Sends every available transmit chain.
    fn process_tx(&mut self, waiter: &Waiter) {
        if self.broken {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        'ring: loop {
            if !avail_sane(&self.tx, &*mem) || self.tx.disable_notification(&*mem).is_err() {
                self.break_queue();
                break;
            }
            while let Some(chain) = self.tx.pop_descriptor_chain(&*mem) {
                let head = chain.head_index();
                let max = usize::from(self.tx.size());
                match tx_buffers(chain, &*mem, max, MAX_TX_LEN) {
                    Ok(frame) => self.send(&*mem, &frame),
                    Err(e) => {
                        log::debug!("virtio-net: a transmit chain dropped: {e}");
                        self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if self.tx.add_used(&*mem, head, 0).is_err() {
                    self.break_queue();
                    break 'ring;
                }
                used = true;
                if waiter.stopping() {
                    break 'ring;
                }
            }
            match self.tx.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.break_queue();
                    break;
                }
            }
        }
        if used && !self.broken && self.tx.needs_notification(&*mem).unwrap_or(true) {
            self.interrupt.signal_queue(TX_QUEUE);
        }
    }

    /// Writes a transmit chain's frame to the backend straight from the
    /// guest's buffers: one `writev` (header first, all of it or nothing;
    /// the kernel copies it once, as it would from a buffer of ours).
    fn send(&mut self, mem: &M, frame: &Buffers) {
        let len = frame.len() as usize;
        let mut iovs = IoVecs::default();
        let written = iovs
            .push_guest(mem, frame, true)
            .and_then(|()| iovs.write(&self.backend.fd()))
            .and_then(|n| {
                if n == len {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("it took {n} of {len} bytes")))
                }
            });
        match written {
            Ok(()) => {
                self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tx_bytes
                    .fetch_add((len - HDR_LEN) as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // A full or refusing backend drops the frame, as a wire
                // would; the guest's protocols resend.
                log::debug!("virtio-net: the backend refused a {len}-byte frame: {e}");
                self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn break_queue(&mut self) {
        if !self.broken {
            log::warn!("virtio-net: the driver broke a queue; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }
}
