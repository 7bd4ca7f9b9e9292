//! The virtio-vsock worker: packets from the transmit queue to the
//! muxer, packets from the muxer into receive buffers, the listening
//! socket and every connection's socket in its epoll. One per started
//! device, on its own thread.
//!
//! Payloads are not copied by the worker: a connection's socket is read
//! straight into the guest's receive buffers, several of them in one
//! call, and a guest's payload is written to the socket straight from
//! its transmit buffers (only what the socket cannot take at once is
//! copied, to wait in the connection).

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::connection::Payload;
use super::device::Counters;
use super::muxer::{ForGuest, Key, Muxer, Received, FIRST_SOCKET_TOKEN};
use super::packet::{check_tx, Header, HDR_LEN};
use super::{MAX_PKT_LEN, RX_QUEUE, TX_QUEUE};
use crate::blk::request::Buffers;
use crate::device::{QueueHome, VirtioInterrupt};
use crate::iov::{mark_dirty, IoVecs};
use crate::ring::{avail_sane, chain_buffers};
use crate::worker::{Waiter, STOP_TOKEN};
use crate::Memory;

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const LISTENER: u64 = 2;
/// The transmit queue is left alone while this many control packets (RST,
/// RESPONSE, ...) wait for receive buffers: a guest that sends without
/// receiving cannot make the device queue answers without bound.
const MAX_CONTROL: usize = 256;
/// One read of a connection fills at most this many bytes of receive
/// buffers (16 of the 4 KiB ones Linux posts)...
const RX_BATCH_BYTES: usize = 64 * 1024;
/// ... in at most this many chains.
const RX_BATCH_CHAINS: usize = 64;
/// How long the listener goes unwatched after an accept failed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A receive chain popped, in the order popped: its buffers, or None
/// for a malformed one (given back unused in its turn).
#[derive(Debug)]
struct RxChain {
    head: u16,
    buffers: Option<Buffers>,
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
    /// Receive chains popped and not yet used, in order: always the last
    /// ones popped.
    held: VecDeque<RxChain>,
    /// The transmit queue waits for the control packets to drain.
    tx_paused: bool,
    /// Until when the listener is not watched ([`Self::pause_accepting`]).
    accept_paused: Option<Instant>,
    /// An accept has failed (said at `warn` once).
    accept_failed: bool,
    broken: bool,
    /// Where the queues go when the worker ends.
    home: QueueHome,
}

impl<M: Memory> Drop for VsockWorker<M> {
    /// The queues go home, the receive chains popped and not used given
    /// back (they are always the last ones popped).
    fn drop(&mut self) {
        let unused = self.held.len() as u16;
        if unused > 0 {
            let next = self.rx.next_avail().wrapping_sub(unused);
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
            held: VecDeque::new(),
            tx_paused: false,
            accept_paused: None,
            accept_failed: false,
            broken: false,
            home,
        }
    }

    /// The thread's body: until told to stop. Connections end with it
    /// (their sockets close).
    pub fn run(mut self, waiter: Waiter, rx_kick: EventFd, tx_kick: EventFd) {
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
            // Unanswered REQUESTs are checked on twice a second; a paused
            // listener is watched again after ACCEPT_PAUSE.
            let mut limit = if self.muxer.connecting() { 500 } else { -1 };
            if let Some(at) = self.accept_paused {
                let left = at.saturating_duration_since(Instant::now());
                let left = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                limit = if limit < 0 { left } else { limit.min(left) };
            }
            let events = match waiter.wait_events(limit) {
                Ok(t) => t,
                Err(e) => {
                    log::error!("virtio-vsock: the worker cannot wait: {e}");
                    self.interrupt.set_needs_reset();
                    return;
                }
            };
            if events.iter().any(|&(t, _)| t == STOP_TOKEN) || waiter.stopping() {
                return;
            }
            for &(t, ready) in &events {
                match t {
                    RX_KICK => {
                        let _ = rx_kick.read();
                    }
                    TX_KICK => {
                        let _ = tx_kick.read();
                        self.process_tx(&waiter);
                    }
                    LISTENER => {
                        if let Err(e) = self.muxer.accept(&waiter) {
                            self.pause_accepting(&waiter, &e);
                        }
                    }
                    t if t >= FIRST_SOCKET_TOKEN => self.muxer.ready(t, ready, &waiter),
                    _ => {}
                }
            }
            if self.accept_paused.is_some_and(|at| Instant::now() >= at) {
                self.accept_paused = None;
                if let Err(e) = waiter.add(self.muxer.listener(), LISTENER) {
                    log::error!("virtio-vsock: cannot watch the listening socket again: {e}");
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

    /// A host connection waits but cannot be accepted for now (out of
    /// descriptors, say): the listener is not watched for [`ACCEPT_PAUSE`]
    /// (it would stay readable, and the worker spin on it). Said once at
    /// `warn`.
    fn pause_accepting(&mut self, waiter: &Waiter, e: &io::Error) {
        let level = crate::once_then_debug(&mut self.accept_failed);
        log::log!(
            level,
            "virtio-vsock: cannot accept a host connection ({e}); trying again in {} ms",
            ACCEPT_PAUSE.as_millis()
        );
        if let Err(e) = waiter.remove(self.muxer.listener()) {
            log::error!("virtio-vsock: cannot stop watching the listening socket: {e}");
            return;
        }
        self.accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
    }

    /// Fills receive buffers with what the muxer has for the guest.
    fn process_rx(&mut self, waiter: &Waiter) {
        let mem = Arc::clone(&self.mem);
        let mut used = false;
        while !self.broken {
            // A malformed chain goes back unused in its turn.
            match self.front_ok() {
                None => break,
                Some(false) => {
                    if let Some(c) = self.held.pop_front() {
                        used |= self.use_rx(c.head, 0);
                    }
                    // A driver may add malformed chains as fast as they go
                    // back: the worker must still hear that it is to stop.
                    if waiter.stopping() {
                        break;
                    }
                    continue;
                }
                Some(true) => {}
            }
            let sent = match self.muxer.next_for_guest() {
                None => break,
                Some(ForGuest::Packet(h)) => self.send_packet(&*mem, &h),
                Some(ForGuest::Data(key)) => match self.send_data(&*mem, key, waiter) {
                    Some(sent) => sent,
                    None => break,
                },
            };
            used |= sent;
        }
        if used && !self.broken && self.rx.needs_notification(&*mem).unwrap_or(true) {
            self.interrupt.signal_queue(RX_QUEUE);
        }
    }

    /// Whether the first held receive chain is well formed (popping one
    /// if none is held), or None when the driver has given none.
    fn front_ok(&mut self) -> Option<bool> {
        if self.held.is_empty() {
            let c = self.pop_rx()?;
            self.held.push_back(c);
        }
        self.held.front().map(|c| c.buffers.is_some())
    }

    /// Puts a payload-less packet in the first held chain (well formed).
    fn send_packet(&mut self, mem: &M, h: &Header) -> bool {
        let Some(RxChain {
            head,
            buffers: Some(b),
        }) = self.held.pop_front()
        else {
            return false;
        };
        // Checked to be in guest memory when popped.
        let _ = b.write_from(mem, 0, &h.to_bytes());
        self.use_rx(head, HDR_LEN as u32)
    }

    /// Sends the guest bytes of connection `key`: those read ahead, or
    /// else read from its socket straight into the well-formed chains at
    /// the front (popping more, up to a batch and the guest's credit),
    /// one RW packet per chain filled, or the packet reading it gave
    /// instead (SHUTDOWN, RST). Whether a chain was used; None when no
    /// chain at the front has room for a payload.
    fn send_data(&mut self, mem: &M, key: Key, waiter: &Waiter) -> Option<bool> {
        if self.muxer.buffered(key) > 0 {
            return self.send_buffered(mem, key);
        }
        // As many chains as the last read would have filled (one for a
        // byte at a time); what comes past them is read ahead.
        let (mut left, mut want) = self.muxer.read_size(key);
        left = left.min(RX_BATCH_BYTES);
        let mut into = IoVecs::default();
        let mut takes: SmallVec<[Buffers; 4]> = SmallVec::new();
        let mut i = 0;
        while left > 0 && want > 0 && i < RX_BATCH_CHAINS {
            if i == self.held.len() {
                match self.pop_rx() {
                    Some(c) => self.held.push_back(c),
                    None => break,
                }
            }
            let Some(b) = &self.held[i].buffers else {
                break;
            };
            let take = (b.len() as usize - HDR_LEN).min(MAX_PKT_LEN).min(left);
            if take == 0 {
                break;
            }
            let payload = b.window(HDR_LEN as u64, take as u64);
            if into.push_guest(mem, &payload, false).is_err() {
                break;
            }
            takes.push(payload);
            left -= take;
            want = want.saturating_sub(take);
            i += 1;
        }
        if into.is_empty() {
            return None;
        }
        match self.muxer.read_for_guest(key, into, waiter) {
            Received::Nothing => Some(false),
            Received::Packet(h) => Some(self.send_packet(mem, &h)),
            Received::Bytes(mut n) => {
                let mut used = false;
                for payload in takes {
                    if n == 0 || self.broken {
                        break;
                    }
                    let k = (payload.len() as usize).min(n);
                    n -= k;
                    let (Some(h), Some(c)) = (self.muxer.rw_header(key, k), self.held.pop_front())
                    else {
                        break;
                    };
                    if let Some(b) = c.buffers {
                        let _ = b.write_from(mem, 0, &h.to_bytes());
                    }
                    mark_dirty(mem, &payload, k as u64);
                    used |= self.use_rx(c.head, (HDR_LEN + k) as u32);
                }
                Some(used)
            }
        }
    }

    /// An RW packet of bytes connection `key` read ahead, into the first
    /// held chain (well formed): whether it was used; None if it has no
    /// room for a payload.
    fn send_buffered(&mut self, mem: &M, key: Key) -> Option<bool> {
        let room = match self.held.front() {
            Some(RxChain {
                buffers: Some(b), ..
            }) => (b.len() as usize - HDR_LEN).min(MAX_PKT_LEN),
            _ => 0,
        };
        let (h, payload) = self.muxer.take_buffered(key, room)?;
        let c = self.held.pop_front()?;
        if let Some(b) = &c.buffers {
            // Checked to be in guest memory when popped.
            let _ = b.write_from(mem, 0, &h.to_bytes());
            let _ = b.write_from(mem, HDR_LEN as u64, payload);
        }
        Some(self.use_rx(c.head, HDR_LEN as u32 + h.len))
    }

    /// Returns a receive chain to the driver with `len` bytes in it.
    fn use_rx(&mut self, head: u16, len: u32) -> bool {
        if self.rx.add_used(&*self.mem, head, len).is_err() {
            self.break_queue();
            return false;
        }
        if len > 0 {
            self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// The next receive chain (None for its buffers if malformed), or
    /// None when the driver has given none.
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
            let max = usize::from(self.rx.size());
            let buffers =
                chain_buffers(chain, &*mem, max, true).filter(|b| b.len() >= HDR_LEN as u64);
            if buffers.is_none() {
                log::debug!("virtio-vsock: a malformed receive chain returned unused");
            }
            return Some(RxChain { head, buffers });
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
                match chain_buffers(chain, &*mem, max, false) {
                    Some(data) => self.packet(&*mem, data, waiter),
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

    /// One transmit chain's packet: the header read, the payload left in
    /// the guest's buffers for the muxer to write out.
    fn packet(&mut self, mem: &M, data: Buffers, waiter: &Waiter) {
        let mut header = [0u8; HDR_LEN];
        let n = (data.len() as usize).min(HDR_LEN);
        // Checked to be in guest memory when popped.
        let _ = data.read_into(mem, 0, &mut header[..n]);
        let have = data.len() as usize - n;
        match check_tx(&header[..n], have, self.guest_cid) {
            Ok(h) => {
                let payload = GuestPayload {
                    mem,
                    data: data.window(HDR_LEN as u64, u64::from(h.len)),
                };
                self.muxer.on_guest_packet(&h, &payload, waiter);
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

/// An RW payload still in the guest's transmit buffers.
struct GuestPayload<'a, M> {
    mem: &'a M,
    data: Buffers,
}

impl<M: GuestMemory> Payload for GuestPayload<'_, M> {
    fn len(&self) -> usize {
        self.data.len() as usize
    }

    fn send(&self, stream: &UnixStream) -> io::Result<usize> {
        let mut from = IoVecs::default();
        from.push_guest(self.mem, &self.data, true)?;
        from.send(stream)
    }

    fn append(&self, from: usize, out: &mut VecDeque<u8>) {
        let mut rest = vec![0; self.len().saturating_sub(from)];
        // Checked to be in guest memory when popped.
        let _ = self.data.read_into(self.mem, from as u64, &mut rest);
        out.extend(rest);
    }
}
