//! One connection between a guest port and a host Unix socket: its state,
//! its credit both ways, and the bytes from the guest waiting for the
//! socket.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{op, shutdown, Header};
use super::{CONN_BUF_ALLOC, CREDIT_LOW};
use crate::iov::IoVecs;

/// How much of the socket one read takes for the guest at most, into
/// the guest's receive buffers first and the rest into the connection's
/// own buffer.
const READ_AHEAD: usize = 64 * 1024;

/// A packet's payload from the guest, wherever its bytes are: still in
/// the guest's buffers (the worker's) or in hand.
pub(super) trait Payload {
    /// Its length.
    fn len(&self) -> usize;
    /// Writes what the socket takes now, from the start, in one call.
    fn send(&self, stream: &UnixStream) -> io::Result<usize>;
    /// Appends its bytes from `from` on to `out`.
    fn append(&self, from: usize, out: &mut VecDeque<u8>);
}

/// A payload in hand (the tests').
#[cfg(test)]
impl Payload for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn send(&self, mut stream: &UnixStream) -> io::Result<usize> {
        stream.write(self)
    }

    fn append(&self, from: usize, out: &mut VecDeque<u8>) {
        out.extend(&self[from..]);
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: the REQUEST is sent, the guest's answer awaited.
    Connecting,
    /// Bytes flow.
    Established,
    /// The guest shut both ways: the bytes it sent are written out, then
    /// the device sends RST and forgets the connection.
    Closing,
}

/// What became of a write to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flushed {
    /// Everything written (or the socket is full for now).
    Ok,
    /// The socket failed: the connection must go (RST).
    Failed,
}

/// A connection, by (host port, guest port).
#[derive(Debug)]
pub(super) struct Connection {
    pub stream: UnixStream,
    pub token: u64,
    pub host_port: u32,
    pub guest_port: u32,
    pub state: State,
    /// Bytes the guest sent, ever.
    rx_cnt: Wrapping<u32>,
    /// Of those, the bytes the socket took.
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard.
    fwd_cnt_told: Wrapping<u32>,
    /// Bytes sent to the guest, ever.
    tx_cnt: Wrapping<u32>,
    /// The guest's receive buffer and what it has consumed of it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// From the guest, not yet written to the socket.
    out: VecDeque<u8>,
    /// Read from the socket past the guest's receive buffers of the time
    /// (so that a read takes up to [`READ_AHEAD`] bytes however few
    /// buffers the guest had given), `ahead[ahead_at..ahead_end]` not yet
    /// sent; allocated (and zeroed) once, when first needed.
    ahead: Vec<u8>,
    ahead_at: usize,
    ahead_end: usize,
    /// How many bytes the last read took.
    pub last_read: usize,
    /// `OK <port>\n`, written before anything else.
    greeting: Vec<u8>,
    /// Edge-triggered readiness, as last seen.
    pub readable: bool,
    pub writable: bool,
    /// Whether the worker's epoll reports room to write on the socket:
    /// only while bytes wait for it (`!writable`).
    pub watching_writes: bool,
    /// The socket's peer shut its side (or the socket failed): once read
    /// empty, the socket says so, and no later event will.
    pub hung_up: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shut: u32,
    /// The socket said end of file (the guest was told SHUTDOWN SEND).
    pub host_eof: bool,
    /// The socket's write side is shut (after the guest's SHUTDOWN SEND).
    write_shut: bool,
    /// The guest asked for our credit.
    pub credit_requested: bool,
    /// When it was made (a host-initiated one waits for the guest's
    /// answer from then).
    pub made: std::time::Instant,
}

impl Connection {
    pub fn new(
        stream: UnixStream,
        token: u64,
        host_port: u32,
        guest_port: u32,
        state: State,
    ) -> Self {
        Self {
            stream,
            token,
            host_port,
            guest_port,
            state,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            out: VecDeque::new(),
            ahead: Vec::new(),
            ahead_at: 0,
            ahead_end: 0,
            last_read: READ_AHEAD,
            greeting: Vec::new(),
            readable: true,
            writable: true,
            watching_writes: false,
            hung_up: false,
            peer_shut: 0,
            host_eof: false,
            write_shut: false,
            credit_requested: false,
            made: std::time::Instant::now(),
        }
    }

    /// A packet to the guest on this connection, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
            ..Header::to_guest(guest_cid, self.host_port, self.guest_port, op)
        }
    }

    /// The guest's credit, as its latest packet gives it.
    pub fn peer_credit_from(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the device should read the socket for the guest now.
    pub fn wants_rx(&self) -> bool {
        self.state == State::Established
            && (self.readable || self.ahead_at < self.ahead_end)
            && !self.host_eof
            && self.peer_shut & shutdown::RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the guest should hear our credit: it asked, or it believes
    /// less than [`CREDIT_LOW`] is free while more is.
    pub fn wants_credit_update(&self) -> bool {
        if self.state == State::Connecting {
            return false;
        }
        let believed_free = CONN_BUF_ALLOC.saturating_sub((self.rx_cnt - self.fwd_cnt_told).0);
        self.credit_requested || (believed_free < CREDIT_LOW && self.fwd_cnt != self.fwd_cnt_told)
    }

    /// Takes a payload from the guest; false if it is beyond the credit
    /// we gave (the guest broke the protocol).
    pub fn take<P: Payload + ?Sized>(&mut self, data: &P) -> bool {
        let len = data.len();
        let buffered = (self.rx_cnt - self.fwd_cnt).0 as usize;
        if buffered + len > CONN_BUF_ALLOC as usize {
            return false;
        }
        self.rx_cnt += Wrapping(len as u32);
        // Straight to the socket when nothing waits before it (from the
        // guest's buffers: no copy of ours); what it does not take now
        // is copied to wait. A failure shows again at the next flush,
        // which ends the connection.
        let mut sent = 0;
        if len > 0 && self.writable && self.drained() {
            match data.send(&self.stream) {
                Ok(n) => {
                    sent = n.min(len);
                    self.fwd_cnt += Wrapping(sent as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(_) => {}
            }
        }
        if sent < len {
            data.append(sent, &mut self.out);
        }
        true
    }

    /// Queues `OK <port>\n` for the host side.
    pub fn greet(&mut self) {
        self.greeting = format!("OK {}\n", self.host_port).into_bytes();
    }

    /// Writes what waits to the socket, as much as it takes; then, if the
    /// guest will send no more and all is written, shuts the socket's
    /// write side.
    pub fn flush(&mut self) -> Flushed {
        while self.writable && !(self.greeting.is_empty() && self.out.is_empty()) {
            let written = if self.greeting.is_empty() {
                let (a, _) = self.out.as_slices();
                self.stream.write(a)
            } else {
                self.stream.write(&self.greeting)
            };
            match written {
                Ok(0) => return Flushed::Failed,
                Ok(n) if !self.greeting.is_empty() => {
                    self.greeting.drain(..n.min(self.greeting.len()));
                }
                Ok(n) => {
                    self.out.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: port {}: cannot write: {e}", self.host_port);
                    return Flushed::Failed;
                }
            }
        }
        if self.drained() && self.peer_shut & shutdown::SEND != 0 && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Flushed::Ok
    }

    /// Whether nothing waits for the socket.
    pub fn drained(&self) -> bool {
        self.greeting.is_empty() && self.out.is_empty()
    }

    /// Whether both ways are done: the guest sends no more and everything
    /// it sent is written, and the host side said end of file (or the
    /// guest receives no more).
    pub fn finished(&self) -> bool {
        self.drained()
            && self.peer_shut & shutdown::SEND != 0
            && (self.host_eof || self.peer_shut & shutdown::RCV != 0)
    }

    /// How many bytes read ahead wait for the guest (sent before the
    /// socket is read again).
    pub fn buffered(&self) -> usize {
        self.ahead_end - self.ahead_at
    }

    /// How many of the bytes read ahead can go in a packet of at most
    /// `max` now (within the guest's credit).
    pub fn sendable(&self, max: usize) -> usize {
        max.min(self.buffered()).min(self.peer_credit() as usize)
    }

    /// The next `n` bytes read ahead (at most [`Connection::sendable`]),
    /// counted as sent to the guest.
    pub fn consume(&mut self, n: usize) -> &[u8] {
        let n = self.sendable(n);
        let start = self.ahead_at;
        self.ahead_at += n;
        self.tx_cnt += Wrapping(n as u32);
        &self.ahead[start..start + n]
    }

    /// Reads the socket straight into `into` (the guest's receive
    /// buffers, within its credit; none may be read ahead), and on into
    /// the connection's own buffer up to [`READ_AHEAD`] bytes in all and
    /// the guest's credit: the bytes that went into `into` (0 at end of
    /// file), `WouldBlock` when none waits. A read that empties the socket
    /// (fewer bytes than asked) marks it unreadable with no second try:
    /// its next byte, or its peer's hang-up, brings an edge-triggered
    /// event. (After a hang-up, the next read says end of file.)
    pub fn recv<'a>(&'a mut self, mut into: IoVecs<'a>) -> io::Result<usize> {
        let direct = into.len();
        let extra = (self.peer_credit() as usize)
            .saturating_sub(direct)
            .min(READ_AHEAD.saturating_sub(direct));
        if extra > 0 && self.ahead.is_empty() {
            self.ahead = vec![0; READ_AHEAD];
        }
        (self.ahead_at, self.ahead_end) = (0, 0);
        into.push_buf(&mut self.ahead[..extra]);
        let asked = into.len();
        match into.recv(&self.stream) {
            Ok(n) => {
                if n > 0 && n < asked && !self.hung_up {
                    self.readable = false;
                }
                let d = n.min(direct);
                self.ahead_end = n - d;
                self.last_read = n;
                self.tx_cnt += Wrapping(d as u32);
                Ok(d)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.readable = false;
                }
                Err(e)
            }
        }
    }

    /// [`Connection::recv`] into `buf` within the guest's credit, or what
    /// was read ahead: the bytes, 0 at end of file.
    #[cfg(test)]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.buffered() > 0 {
            let got = self.consume(buf.len());
            buf[..got.len()].copy_from_slice(got);
            return Ok(got.len());
        }
        let n = buf.len().min(self.peer_credit() as usize);
        if n == 0 {
            return Ok(0);
        }
        let mut into = IoVecs::default();
        into.push_buf(&mut buf[..n]);
        self.recv(into)
    }

    /// The RW header for `len` of the bytes just read.
    pub fn rw_header(&mut self, guest_cid: u64, len: usize) -> Header {
        Header {
            len: len as u32,
            ..self.header(guest_cid, op::RW)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 9, 5000, 1234, State::Established), b)
    }

    #[test]
    fn the_guests_credit_bounds_what_is_read() {
        let (mut c, mut peer) = conn();
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_rx(), "no credit before the guest gives some");
        c.peer_credit_from(&Header {
            buf_alloc: 10,
            fwd_cnt: 0,
            ..Header::default()
        });
        peer.write_all(&[1; 32]).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf).unwrap(), 10);
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_rx());
        c.peer_credit_from(&Header {
            buf_alloc: 10,
            fwd_cnt: 4,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 4);
        assert_eq!(c.read(&mut buf).unwrap(), 4);
    }

    #[test]
    fn a_read_takes_up_to_64_kib_and_keeps_what_the_guests_buffers_could_not() {
        let (mut c, mut peer) = conn();
        c.peer_credit_from(&Header {
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
            ..Header::default()
        });
        let sent: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(c.read(&mut buf).unwrap(), 4096);
        assert_eq!(c.buffered(), READ_AHEAD - 4096, "one read, 64 KiB in all");
        assert_eq!(
            c.peer_credit(),
            256 * 1024 - 4096,
            "sent: only what the guest has"
        );
        let mut got = buf.to_vec();
        c.readable = false;
        while c.buffered() > 0 {
            assert!(c.wants_rx(), "what was read ahead goes first");
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, sent[..READ_AHEAD]);
        assert!(!c.wants_rx());
        c.readable = true;
        while got.len() < sent.len() {
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, sent);
        // Never more than the guest's credit, ahead or not.
        let (mut c, mut peer) = conn();
        c.peer_credit_from(&Header {
            buf_alloc: 10_000,
            fwd_cnt: 0,
            ..Header::default()
        });
        peer.write_all(&sent[..20_000]).unwrap();
        assert_eq!(c.read(&mut buf).unwrap(), 4096);
        assert_eq!(c.buffered(), 10_000 - 4096);
        let mut n = 4096;
        while c.buffered() > 0 {
            n += c.read(&mut buf).unwrap();
        }
        assert_eq!((n, c.peer_credit()), (10_000, 0));
        assert!(!c.wants_rx());
    }

    #[test]
    fn a_read_that_empties_the_socket_needs_no_second_try() {
        let (mut c, mut peer) = conn();
        c.peer_credit_from(&Header {
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
            ..Header::default()
        });
        peer.write_all(&[5; 6000]).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(c.read(&mut buf).unwrap(), 4096);
        assert!(c.wants_rx(), "a full read: more may wait");
        assert_eq!(c.read(&mut buf).unwrap(), 6000 - 4096);
        assert!(!c.wants_rx(), "a short read emptied the socket");
        assert_eq!(c.peer_credit(), 256 * 1024 - 6000);
        // Its next byte comes with an event, which marks it readable.
        peer.write_all(b"x").unwrap();
        c.readable = true;
        assert_eq!(c.read(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'x');
        // Bytes then a hang-up, both before the read (one event): the
        // read that empties the socket leaves it readable, for the end of
        // file.
        peer.write_all(b"yz").unwrap();
        drop(peer);
        c.readable = true;
        c.hung_up = true;
        assert_eq!(c.read(&mut buf).unwrap(), 2);
        assert!(c.readable, "the end of file is still to be read");
        assert_eq!(c.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn our_credit_bounds_what_the_guest_may_send_and_updates_follow_writes() {
        let (mut c, mut peer) = conn();
        // A socket that takes nothing for now (as after a WouldBlock).
        c.writable = false;
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..4 {
            assert!(c.take(&chunk[..]));
        }
        assert!(!c.take(&[1u8][..]), "past buf_alloc");
        assert!(!c.wants_credit_update(), "nothing written yet");
        // The socket takes some: the guest, which believes nothing is
        // free, hears of it.
        c.writable = true;
        assert_eq!(c.flush(), Flushed::Ok);
        let mut got = vec![0u8; 300 * 1024];
        peer.set_nonblocking(true).unwrap();
        let n = peer.read(&mut got).unwrap();
        assert!(n > 0);
        let _ = c.flush();
        assert!(c.wants_credit_update());
        let h = c.header(3, op::CREDIT_UPDATE);
        assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
        assert!(h.fwd_cnt > 0);
        assert!(!c.wants_credit_update(), "told");
        assert!(c.take(&[1u8; 100][..]), "room again");
    }

    #[test]
    fn a_payload_goes_straight_to_a_socket_with_nothing_waiting() {
        let (mut c, mut peer) = conn();
        assert!(c.take(&b"abc"[..]));
        assert!(c.drained(), "written at once");
        assert_eq!(c.header(3, op::CREDIT_UPDATE).fwd_cnt, 3);
        // Behind bytes that wait, a payload waits too, in order.
        c.writable = false;
        assert!(c.take(&b"de"[..]));
        c.writable = true;
        assert!(c.take(&b"f"[..]));
        assert!(!c.drained());
        assert_eq!(c.flush(), Flushed::Ok);
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcdef");
    }

    #[test]
    fn the_greeting_goes_first_and_shutdown_follows_the_last_byte() {
        let (mut c, mut peer) = conn();
        c.greet();
        assert!(c.take(&b"hi"[..]));
        c.peer_shut = shutdown::SEND;
        assert_eq!(c.flush(), Flushed::Ok);
        let mut s = String::new();
        peer.read_to_string(&mut s).unwrap();
        assert_eq!(s, "OK 5000\nhi", "then end of file");
        assert!(!c.finished(), "the host side has not said end of file");
        c.host_eof = true;
        assert!(c.finished());
    }
}
