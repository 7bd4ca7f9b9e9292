//! The host side of the device: the listening Unix socket and its
//! `CONNECT` handshake, the connections by (host port, guest port), what
//! each packet from the guest does to them, and which packet goes to the
//! guest next. No guest memory here: the worker moves packets between
//! the queues and the muxer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::ops::Bound;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, Flushed, Payload, State};
use super::device::Counters;
use super::packet::{op, shutdown, Header};
use super::{
    CONNECT_TIMEOUT, FIRST_HOST_PORT, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_PENDING, MAX_UDS_PATH,
};
use crate::iov::IoVecs;
use crate::worker::Waiter;

/// Tokens of the worker's own fds are below this; sockets' above.
pub(super) const FIRST_SOCKET_TOKEN: u64 = 16;

/// A connection: (host port, guest port).
pub(super) type Key = (u32, u32);

/// A host connection waiting for its `CONNECT <port>\n`.
#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connections and what waits for the guest.
#[derive(Debug)]
pub(super) struct Muxer {
    guest_cid: u64,
    listener: Arc<UnixListener>,
    uds: PathBuf,
    conns: BTreeMap<Key, Connection>,
    by_token: HashMap<u64, Key>,
    pending: HashMap<u64, Pending>,
    /// Packets for the guest that carry no payload, in order.
    control: VecDeque<Header>,
    next_token: u64,
    next_port: u32,
    /// The connection served last (the next RW comes from the one after).
    cursor: Key,
    counters: Arc<Counters>,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        listener: Arc<UnixListener>,
        uds: PathBuf,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            guest_cid,
            listener,
            uds,
            conns: BTreeMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_token: FIRST_SOCKET_TOKEN,
            next_port: FIRST_HOST_PORT,
            cursor: (0, 0),
            counters,
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// How many control packets wait for receive buffers.
    pub fn control_len(&self) -> usize {
        self.control.len()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_SOCKET_TOKEN);
        if self.next_token == u64::MAX {
            self.next_token = FIRST_SOCKET_TOKEN;
        }
        t
    }

    fn reset(&mut self, h: Header) {
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
        self.control.push_back(h);
    }

    /// Answers a packet from the guest with RST (never an RST).
    pub fn reset_reply(&mut self, h: &Header) {
        if h.op != op::RST {
            self.reset(h.reset_reply());
        }
    }

    /// Forgets a connection (its socket closes), with an RST to the guest
    /// if `rst`.
    fn remove(&mut self, key: Key, waiter: &Waiter, rst: bool) {
        if let Some(mut c) = self.conns.remove(&key) {
            self.by_token.remove(&c.token);
            let _ = waiter.remove(&c.stream);
            if rst {
                let h = c.header(self.guest_cid, op::RST);
                self.reset(h);
            }
        }
    }

    /// Accepts host connections until none waits; an error (out of
    /// descriptors, say) if one cannot be taken for now, while it still
    /// waits: the caller stops watching the listener for a while, or the
    /// worker would wake for it at once, for ever.
    pub fn accept(&mut self, waiter: &Waiter) -> io::Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.pending.len() >= MAX_PENDING || self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: too many host connections; one closed");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("vsock: a host connection closed: {e}");
                continue;
            }
            let token = self.token();
            if let Err(e) = waiter.add_stream(&stream, token) {
                log::warn!("vsock: cannot watch a host connection: {e}");
                continue;
            }
            self.pending.insert(
                token,
                Pending {
                    stream,
                    line: Vec::new(),
                },
            );
            self.handshake(token, waiter);
        }
    }

    /// Whether a host-initiated connection waits for the guest's answer
    /// (the worker then wakes up now and then for [`Self::expire`]).
    pub fn connecting(&self) -> bool {
        self.conns.values().any(|c| c.state == State::Connecting)
    }

    /// Ends the host-initiated connections the guest has not answered
    /// within [`CONNECT_TIMEOUT`]: an RST to the guest, the socket closed.
    pub fn expire(&mut self, waiter: &Waiter) {
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Connecting && c.made.elapsed() >= CONNECT_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            log::debug!(
                "vsock: guest port {} did not answer; connection dropped",
                key.1
            );
            self.remove(key, waiter, true);
        }
    }

    /// A socket is ready for `events` (edge-triggered: each way it is
    /// ready for is tried until it would block); a hang-up or error says
    /// its peer has shut its side (or it failed).
    pub fn ready(&mut self, token: u64, events: EventSet, waiter: &Waiter) {
        if self.pending.contains_key(&token) {
            self.handshake(token, waiter);
            return;
        }
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        let failed = EventSet::HANG_UP | EventSet::ERROR;
        let hang_up = events.intersects(EventSet::READ_HANG_UP | failed);
        if let Some(c) = self.conns.get_mut(&key) {
            c.readable |= hang_up || events.contains(EventSet::IN);
            c.writable |= events.intersects(EventSet::OUT | failed);
            c.hung_up |= hang_up;
        }
        self.flush(key, waiter);
    }

    /// Reads the `CONNECT` line byte by byte (nothing after it is taken
    /// from the socket); once whole, sends the guest a REQUEST.
    fn handshake(&mut self, token: u64, waiter: &Waiter) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break Err("closed"),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if p.line.len() >= MAX_CONNECT_LINE => break Err("line too long"),
                Ok(_) => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err("read error"),
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let port = done.and_then(|()| parse_connect(&p.line).ok_or("not CONNECT <port>"));
        let port = match port {
            Ok(port) if self.conns.len() < MAX_CONNECTIONS => port,
            Ok(_) | Err(_) => {
                log::debug!("vsock: a host connection closed in its handshake: {port:?}");
                let _ = waiter.remove(&p.stream);
                return;
            }
        };
        let host_port = self.free_port();
        let mut c = Connection::new(p.stream, token, host_port, port, State::Connecting);
        let h = c.header(self.guest_cid, op::REQUEST);
        self.control.push_back(h);
        self.by_token.insert(token, (host_port, port));
        self.conns.insert((host_port, port), c);
    }

    /// A host port no connection uses, from [`FIRST_HOST_PORT`] up.
    fn free_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u32::MAX {
                FIRST_HOST_PORT
            } else {
                p + 1
            };
            if self.conns.range((p, 0)..=(p, u32::MAX)).next().is_none() {
                return p;
            }
        }
    }

    /// What a checked packet from the guest does; `payload` is its RW
    /// bytes.
    pub fn on_guest_packet<P>(&mut self, h: &Header, payload: &P, waiter: &Waiter)
    where
        P: Payload + ?Sized,
    {
        let key = (h.dst_port, h.src_port);
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op == op::REQUEST {
                self.guest_connects(h, waiter);
            } else {
                self.reset_reply(h);
            }
            return;
        };
        c.peer_credit_from(h);
        match (c.state, h.op) {
            (_, op::RST) => self.remove(key, waiter, false),
            (State::Connecting, op::RESPONSE) => {
                c.state = State::Established;
                c.greet();
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.flush(key, waiter);
            }
            (State::Connecting, _) | (_, op::REQUEST | op::RESPONSE) => {
                self.remove(key, waiter, true)
            }
            (_, op::RW) => {
                if c.peer_shut & shutdown::SEND != 0 || !c.take(payload) {
                    log::debug!("vsock: port {}: data past shutdown or credit", c.host_port);
                    self.remove(key, waiter, true);
                } else {
                    self.flush(key, waiter);
                }
            }
            (_, op::SHUTDOWN) => {
                c.peer_shut |= h.flags & shutdown::BOTH;
                if c.peer_shut == shutdown::BOTH {
                    c.state = State::Closing;
                }
                self.flush(key, waiter);
            }
            (_, op::CREDIT_REQUEST) => c.credit_requested = true,
            // CREDIT_UPDATE: the credit is taken from every packet above.
            _ => {}
        }
    }

    /// A guest REQUEST to host port `dst_port`: `UDS_<port>`.
    fn guest_connects(&mut self, h: &Header, waiter: &Waiter) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: too many connections; a guest REQUEST refused");
            return self.reset_reply(h);
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let path = PathBuf::from(path);
        let stream = match connect(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "vsock: guest port {} to {}: {e}",
                    h.src_port,
                    path.display()
                );
                return self.reset_reply(h);
            }
        };
        let token = self.token();
        if let Err(e) = waiter.add_stream(&stream, token) {
            log::warn!("vsock: cannot watch a connection: {e}");
            return self.reset_reply(h);
        }
        let mut c = Connection::new(stream, token, h.dst_port, h.src_port, State::Established);
        c.peer_credit_from(h);
        let response = c.header(self.guest_cid, op::RESPONSE);
        self.control.push_back(response);
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        self.by_token.insert(token, (h.dst_port, h.src_port));
        self.conns.insert((h.dst_port, h.src_port), c);
    }

    /// Writes what waits for a connection's socket; ends it if the socket
    /// failed or both ways are done.
    fn flush(&mut self, key: Key, waiter: &Waiter) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.flush() == Flushed::Failed {
            return self.remove(key, waiter, true);
        }
        if c.drained() && (c.state == State::Closing || c.finished()) {
            return self.remove(key, waiter, true);
        }
        // Room to write is watched only while bytes wait for it.
        let want = !c.writable;
        if want != c.watching_writes {
            if let Err(e) = waiter.watch_writes(&c.stream, c.token, want) {
                log::debug!("vsock: port {}: cannot watch the socket: {e}", c.host_port);
                return self.remove(key, waiter, true);
            }
            c.watching_writes = want;
        }
    }

    /// What goes to the guest next, or None if nothing waits: control
    /// packets first, then credit updates, then a connection's bytes, a
    /// connection at a time in turn.
    pub fn next_for_guest(&mut self) -> Option<ForGuest> {
        if let Some(h) = self.control.pop_front() {
            return Some(ForGuest::Packet(h));
        }
        let cid = self.guest_cid;
        if let Some(c) = self.conns.values_mut().find(|c| c.wants_credit_update()) {
            c.credit_requested = false;
            return Some(ForGuest::Packet(c.header(cid, op::CREDIT_UPDATE)));
        }
        let after = (Bound::Excluded(self.cursor), Bound::Unbounded);
        let key = self
            .conns
            .range(after)
            .chain(self.conns.range(..=self.cursor))
            .find(|(_, c)| c.wants_rx())
            .map(|(k, _)| *k)?;
        self.cursor = key;
        Some(ForGuest::Data(key))
    }

    /// How many bytes connection `key` may send the guest now (its
    /// credit), and how many its last read took (at least 1).
    pub fn read_size(&self, key: Key) -> (usize, usize) {
        self.conns
            .get(&key)
            .map_or((0, 0), |c| (c.peer_credit() as usize, c.last_read.max(1)))
    }

    /// How many bytes of connection `key` were read ahead and wait for
    /// the guest ([`Muxer::take_buffered`]; the socket is read again only
    /// once they are gone).
    pub fn buffered(&self, key: Key) -> usize {
        self.conns.get(&key).map_or(0, Connection::buffered)
    }

    /// The RW packet for at most `room` bytes of connection `key` read
    /// ahead: its header and payload, or None if none can go.
    pub fn take_buffered(&mut self, key: Key, room: usize) -> Option<(Header, &[u8])> {
        let cid = self.guest_cid;
        let c = self.conns.get_mut(&key)?;
        let n = c.sendable(room);
        if n == 0 {
            return None;
        }
        let h = c.rw_header(cid, n);
        Some((h, c.consume(n)))
    }

    /// Reads connection `key`'s socket into `into` (the guest's receive
    /// buffers, within [`Muxer::read_size`]), and on into its own buffer
    /// ([`Muxer::buffered`]).
    pub fn read_for_guest(&mut self, key: Key, into: IoVecs, waiter: &Waiter) -> Received {
        let cid = self.guest_cid;
        let Some(c) = self.conns.get_mut(&key) else {
            return Received::Nothing;
        };
        if into.is_empty() {
            return Received::Nothing;
        }
        match c.recv(into) {
            Ok(0) => {
                c.host_eof = true;
                let h = Header {
                    flags: shutdown::SEND,
                    ..c.header(cid, op::SHUTDOWN)
                };
                if c.finished() {
                    // The RST this queues follows the SHUTDOWN.
                    self.remove(key, waiter, true);
                }
                Received::Packet(h)
            }
            Ok(n) => Received::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Received::Nothing,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Received::Nothing,
            Err(e) => {
                log::debug!("vsock: port {}: cannot read: {e}", c.host_port);
                self.remove(key, waiter, true);
                self.control
                    .pop_front()
                    .map_or(Received::Nothing, Received::Packet)
            }
        }
    }

    /// The RW header of a packet carrying `len` of the bytes just read
    /// from connection `key`.
    pub fn rw_header(&mut self, key: Key, len: usize) -> Option<Header> {
        let cid = self.guest_cid;
        self.conns.get_mut(&key).map(|c| c.rw_header(cid, len))
    }
}

/// What goes to the guest next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForGuest {
    /// A packet without payload.
    Packet(Header),
    /// Bytes of a connection, to be read straight into receive buffers
    /// ([`Muxer::read_for_guest`]).
    Data(Key),
}

/// What reading a connection for the guest gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    /// This many bytes, in the buffers.
    Bytes(usize),
    /// No bytes but a packet: SHUTDOWN at end of file, RST after a
    /// failed read.
    Packet(Header),
    /// Nothing for now (the socket is seen as empty).
    Nothing,
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// A non-blocking stream connected to the Unix socket at `path`; fails
/// at once if nobody listens or the listener's backlog is full.
fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_UDS_PATH || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor socket(2) just returned, owned by nothing
    // else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un whose first `len` bytes hold the
    // family and a NUL-terminated path (checked shorter than sun_path).
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 1234\r"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 1",
            b"CONNECT 1 2",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connecting_to_nothing_fails_at_once() {
        let dir = std::env::temp_dir().join(format!("vmm-vsock-mux-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s_5");
        assert!(connect(&path).is_err());
        let listener = UnixListener::bind(&path).unwrap();
        let s = connect(&path).unwrap();
        let (peer, _) = listener.accept().unwrap();
        drop(s);
        let mut b = [0u8; 1];
        assert_eq!((&peer).read(&mut b).unwrap(), 0);
        let long = dir.join("x".repeat(120));
        assert_eq!(
            connect(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
