//! The virtio-vsock worker: packets from the transmit queue to the
//! muxer, packets from the muxer into receive buffers, the listening
//! socket and every connection's socket in its epoll. One per started
//! device, on its own thread.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::device::Counters;
use super::muxer::{Muxer, FIRST_SOCKET_TOKEN};
use super::packet::{parse_tx, HDR_LEN};
use super::{MAX_PKT_LEN, RX_QUEUE, TX_QUEUE};
use crate::blk::request::Buffers;
use crate::device::{QueueHome, VirtioInterrupt};
use crate::worker::{Waiter, STOP_TOKEN};
use crate::Memory;

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const LISTENER: u64 = 2;
/// The transmit queue is left alone while this many control packets (RST,
/// RESPONSE, ...) wait for receive buffers: a guest that sends without
/// receiving cannot make the device queue answers without bound.
const MAX_CONTROL: usize = 256;

/// A receive chain popped and checked, waiting for a packet.
#[derive(Debug)]
struct RxChain {
    head: u16,
    buffers: Buffers,
}

/// The worker's state.
pub struct VsockWorker<M: Memory> {
    mem: Arc<M>,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    muxer: Muxer,
    counters: Arc<Counters>,
    guest_cid: u64,
    held: Option<RxChain>,
    /// The transmit queue waits for the control packets to drain.
    tx_paused: bool,
    /// A packet's bytes, both ways.
    buf: Vec<u8>,
    broken: bool,
    /// Where the queues go when the worker ends.
    home: QueueHome,
}

impl<M: Memory> Drop for VsockWorker<M> {
    /// The queues go home, a receive chain popped and not filled given
    /// back (it is always the last one popped).
    fn drop(&mut self) {
        if self.held.take().is_some() {
            let next = self.rx.next_avail().wrapping_sub(1);
            self.rx.set_next_avail(next);
        }
        self.home.put(RX_QUEUE, self.rx.state());
        self.home.put(TX_QUEUE, self.tx.state());
    }
}

impl<M: Memory> VsockWorker<M> {
    /// A worker for the receive and transmit queues.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: Arc<M>,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
        muxer: Muxer,
        counters: Arc<Counters>,
        guest_cid: u64,
        home: QueueHome,
    ) -> Self {
        Self {
            mem,
            rx,
            tx,
            interrupt,
            muxer,
            counters,
            guest_cid,
            held: None,
            tx_paused: false,
            buf: Vec::new(),
            broken: false,
            home,
        }
    }

    /// The thread's body: until told to stop. Connections end with it
    /// (their sockets close).
    pub fn run(mut self, waiter: Waiter, rx_kick: EventFd, tx_kick: EventFd) {
        self.buf = vec![0; HDR_LEN + MAX_PKT_LEN];
        let added = waiter
            .add(&rx_kick, RX_KICK)
            .and_then(|()| waiter.add(&tx_kick, TX_KICK))
            .and_then(|()| waiter.add(self.muxer.listener(), LISTENER));
        if let Err(e) = added {
            log::error!("virtio-vsock: cannot wait on the queues: {e}");
            self.interrupt.set_needs_reset();
            return;
        }
        self.process_tx(&waiter);
        self.process_rx(&waiter);
        loop {
            // Unanswered REQUESTs are checked on twice a second.
            let limit = if self.muxer.connecting() { 500 } else { -1 };
            let tokens = match waiter.wait_timeout(limit) {
                Ok(t) => t,
                Err(e) => {
                    log::error!("virtio-vsock: the worker cannot wait: {e}");
                    self.interrupt.set_needs_reset();
                    return;
                }
            };
            if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
                return;
            }
            for &t in &tokens {
                match t {
                    RX_KICK => {
                        let _ = rx_kick.read();
                    }
                    TX_KICK => {
                        let _ = tx_kick.read();
                        self.process_tx(&waiter);
                    }
                    LISTENER => self.muxer.accept(&waiter),
                    t if t >= FIRST_SOCKET_TOKEN => self.muxer.ready(t, &waiter),
                    _ => {}
                }
            }
            self.muxer.expire(&waiter);
            self.process_rx(&waiter);
            if self.tx_paused && self.muxer.control_len() < MAX_CONTROL {
                self.process_tx(&waiter);
                self.process_rx(&waiter);
            }
        }
    }

    /// Fills receive buffers with what the muxer has for the guest.
    fn process_rx(&mut self, waiter: &Waiter) {
        if self.broken {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        loop {
            let chain = match self.held.take() {
                Some(c) => c,
                None => match self.pop_rx() {
                    Some(c) => c,
                    None => break,
                },
            };
            let room = (chain.buffers.len() as usize).saturating_sub(HDR_LEN);
            let Some((h, payload)) = self.muxer.next_for_guest(room, waiter) else {
                self.held = Some(chain);
                break;
            };
            let n = payload.len();
            // Checked to be in guest memory when popped; the payload goes
            // from the connection's buffer to the guest's, no copy between.
            let _ = chain.buffers.write_from(&*mem, 0, &h.to_bytes());
            let _ = chain.buffers.write_from(&*mem, HDR_LEN as u64, payload);
            if self
                .rx
                .add_used(&*mem, chain.head, (HDR_LEN + n) as u32)
                .is_err()
            {
                self.break_queue();
                return;
            }
            used = true;
            self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        }
        if used && !self.broken && self.rx.needs_notification(&*mem).unwrap_or(true) {
            self.interrupt.signal_queue(RX_QUEUE);
        }
    }

    /// The next well-formed receive chain (malformed ones are returned
    /// unused), or None when the driver has given none.
    fn pop_rx(&mut self) -> Option<RxChain> {
        let mem = Arc::clone(&self.mem);
        loop {
            if !avail_sane(&self.rx, &*mem) {
                self.break_queue();
                return None;
            }
            let Some(chain) = self.rx.pop_descriptor_chain(&*mem) else {
                match self.rx.enable_notification(&*mem) {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(_) => {
                        self.break_queue();
                        return None;
                    }
                }
            };
            let head = chain.head_index();
            match rx_buffers(chain, &*mem, usize::from(self.rx.size())) {
                Some(buffers) => return Some(RxChain { head, buffers }),
                None => {
                    log::debug!("virtio-vsock: a malformed receive chain returned unused");
                    if self.rx.add_used(&*mem, head, 0).is_err() {
                        self.break_queue();
                        return None;
                    }
                }
            }
        }
    }

    /// Takes every available transmit chain to the muxer (until too many
    /// answers wait).
    fn process_tx(&mut self, waiter: &Waiter) {
        if self.broken {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        self.tx_paused = false;
        'ring: loop {
            if !avail_sane(&self.tx, &*mem) || self.tx.disable_notification(&*mem).is_err() {
                self.break_queue();
                break;
            }
            while self.muxer.control_len() < MAX_CONTROL {
                let Some(chain) = self.tx.pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                let max = usize::from(self.tx.size());
                self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                match gather(chain, &*mem, max, &mut self.buf) {
                    Some(len) => self.packet(len, waiter),
                    None => {
                        log::debug!("virtio-vsock: a malformed transmit chain dropped");
                        self.counters.tx_malformed.fetch_add(1, Ordering::Relaxed);
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
            if self.muxer.control_len() >= MAX_CONTROL {
                self.tx_paused = true;
                break;
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

    /// One gathered packet of `len` bytes in `buf`.
    fn packet(&mut self, len: usize, waiter: &Waiter) {
        match parse_tx(&self.buf[..len], self.guest_cid) {
            Ok(h) => {
                let payload = &self.buf[HDR_LEN..HDR_LEN + h.len as usize];
                self.muxer.on_guest_packet(&h, payload, waiter);
            }
            Err((h, e)) => {
                log::debug!("virtio-vsock: a packet refused: {e}");
                self.counters.tx_malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = h.filter(|_| e.answered()) {
                    self.muxer.reset_reply(&h);
                }
            }
        }
    }

    fn break_queue(&mut self) {
        if !self.broken {
            log::warn!("virtio-vsock: the driver broke a queue; device needs reset");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }
}

/// The driver's available index is at most a ring ahead of ours.
fn avail_sane<M: GuestMemory>(q: &Queue, mem: &M) -> bool {
    q.avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(q.next_avail())).0 <= q.size())
}

/// A receive chain's buffers: None if a descriptor is device-readable or
/// outside guest memory, the chain is longer than `max` descriptors, or
/// it has no room for a header.
fn rx_buffers<M, I>(descriptors: I, mem: &M, max: usize) -> Option<Buffers>
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
    (buffers.len() >= HDR_LEN as u64).then_some(buffers)
}

/// Copies a transmit chain into `buf`, at most `buf.len()` bytes (the
/// header's `len` is checked against what was copied): the length
/// copied, or None for a device-writable descriptor, a chain of more
/// than `max` descriptors or one outside guest memory.
fn gather<M, I>(descriptors: I, mem: &M, max: usize, buf: &mut [u8]) -> Option<usize>
where
    M: GuestMemory,
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut len = 0usize;
    for (i, d) in descriptors.into_iter().enumerate() {
        if i >= max || d.is_write_only() {
            return None;
        }
        let n = (d.len() as usize).min(buf.len() - len);
        mem.read_slice(&mut buf[len..len + n], d.addr()).ok()?;
        len += n;
    }
    Some(len)
}
