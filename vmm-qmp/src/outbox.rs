//! Where replies and events go: one output buffer per client, written
//! without ever blocking.
//!
//! A line is written at once as far as the client's socket takes it; the
//! rest waits in the client's buffer, and the server asks epoll for
//! `EPOLLOUT` on that client (only while something waits) to write more.
//! The [`Outbox`] may be used from any thread: when output starts to wait,
//! or a client must go, it writes an eventfd that wakes the server in the
//! main loop, which then arms `EPOLLOUT` or drops the client.
//!
//! A buffer holds at most [`OUTPUT_LIMIT`] bytes, events and replies alike.
//! A socket client whose buffer would go past it has stopped reading (or
//! reads far slower than it asks): it is dropped, with a log line. The
//! client on a character device is permanent: past the limit whole lines
//! are dropped instead (with a log line), until its buffer drains.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::session::{self, QmpError};

/// The most output a client may have waiting, in bytes (1 MiB: thousands
/// of replies and events, far more than a client that reads ever has
/// waiting, yet little memory even for [`crate::MAX_CLIENTS`] clients).
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// What a client is connected through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An accepted socket connection: dropped when it stops reading.
    Socket,
    /// A character device: permanent, drops output instead.
    Device,
}

/// What the server has to do for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Watch for `EPOLLOUT`: output waits.
    Arm,
    /// Stop watching for `EPOLLOUT`: all written.
    Disarm,
    /// Drop the client, for this reason.
    Drop(String),
}

#[derive(Debug)]
struct Conn {
    file: Arc<File>,
    kind: Kind,
    /// Bytes still to write (a ring: written bytes leave its front
    /// without moving the rest).
    out: VecDeque<u8>,
    negotiated: bool,
    /// `EPOLLOUT` is watched (as far as the server was told).
    armed: bool,
    /// Why the client must go, once it must.
    failed: Option<String>,
    /// Lines dropped since a device's buffer filled up.
    dropped: u64,
}

impl Conn {
    /// Queues `line`; returns whether the server must act (arm, drop).
    fn queue(&mut self, line: &[u8]) -> bool {
        if self.failed.is_some() {
            return false;
        }
        if self.out.len() + line.len() > OUTPUT_LIMIT {
            if self.kind == Kind::Device {
                if self.dropped == 0 {
                    log::warn!(
                        "QMP: more than {OUTPUT_LIMIT} bytes of output unread on the device: \
                         dropping replies and events until it drains"
                    );
                }
                self.dropped += 1;
                return false;
            }
            self.out = VecDeque::new();
            self.failed = Some(format!(
                "more than {OUTPUT_LIMIT} bytes of replies and events unread"
            ));
            return true;
        }
        self.out.extend(line);
        if self.armed {
            // EPOLLOUT comes when the client reads.
            return false;
        }
        self.write_out();
        self.failed.is_some() || !self.out.is_empty()
    }

    /// Writes what the client takes now, never waiting.
    fn write_out(&mut self) {
        while !self.out.is_empty() {
            let (front, _) = self.out.as_slices();
            match write_nonblocking(&self.file, self.kind, front) {
                Ok(0) => {
                    self.failed = Some("write returned 0".into());
                    break;
                }
                Ok(n) => drop(self.out.drain(..n)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.failed = Some(format!("write failed: {e}"));
                    break;
                }
            }
        }
        if self.out.is_empty() && self.dropped > 0 {
            log::warn!(
                "QMP: the device reads again; {} replies and events were dropped",
                self.dropped
            );
            self.dropped = 0;
        }
    }
}

/// One write that does not block: the fd is non-blocking, and a socket
/// whose peer has gone gives `EPIPE`, never `SIGPIPE`.
fn write_nonblocking(file: &File, kind: Kind, bytes: &[u8]) -> std::io::Result<usize> {
    match kind {
        Kind::Device => (&*file).write(bytes),
        Kind::Socket => {
            // SAFETY: `bytes` is valid for its length; the fd is open (we
            // hold the file).
            let n = unsafe {
                libc::send(
                    file.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
}

/// Where replies and events go: every connected client's output buffer.
/// Cloned freely; usable from any thread.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Mutex<Inner>>,
    /// Written when the server has something to do (see [`Need`]).
    wake: Arc<EventFd>,
}

impl Outbox {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::default(),
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd the server watches.
    pub(crate) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Asks the server to come back (output waits, a client must go,
    /// input waits).
    pub(crate) fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            // Only fails when the counter is full: a wake-up is due anyway.
            log::debug!("QMP: wake-up: {e}");
        }
    }

    /// A new client writing to `file`; returns its id (never reused).
    pub(crate) fn add(&self, file: Arc<File>, kind: Kind) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.conns.insert(
            id,
            Conn {
                file,
                kind,
                out: VecDeque::new(),
                negotiated: false,
                armed: false,
                failed: None,
                dropped: 0,
            },
        );
        id
    }

    /// The client is gone: its output is dropped.
    pub(crate) fn remove(&self, id: u64) {
        self.lock().conns.remove(&id);
    }

    /// Every client is gone (the server is): a last try to write what
    /// waits, then their files are closed.
    pub(crate) fn close_all(&self) {
        let conns = std::mem::take(&mut self.lock().conns);
        for (_, mut conn) in conns {
            if conn.failed.is_none() {
                conn.write_out();
            }
        }
    }

    /// Events go to the client from now on (or no more).
    pub(crate) fn set_negotiated(&self, id: u64, negotiated: bool) {
        if let Some(conn) = self.lock().conns.get_mut(&id) {
            conn.negotiated = negotiated;
        }
    }

    /// Writes one line to client `id`, if it is still there.
    pub(crate) fn send(&self, id: u64, value: &Value) {
        let line = to_line(value);
        let act = self
            .lock()
            .conns
            .get_mut(&id)
            .is_some_and(|conn| conn.queue(&line));
        if act {
            self.wake();
        }
    }

    /// Sends event `name` to every client that has negotiated.
    pub fn event(&self, name: &str, data: Option<Value>) {
        let line = to_line(&session::event(name, data, now_us()));
        let mut act = false;
        for conn in self.lock().conns.values_mut() {
            if conn.negotiated {
                act |= conn.queue(&line);
            }
        }
        if act {
            self.wake();
        }
    }

    /// Writes what client `id` takes now (it is writable).
    pub(crate) fn flush(&self, id: u64) {
        if let Some(conn) = self.lock().conns.get_mut(&id) {
            if conn.failed.is_none() {
                conn.write_out();
            }
        }
    }

    /// What the server has to do, client by client; arming and disarming
    /// are taken as done.
    pub(crate) fn needs(&self) -> Vec<(u64, Need)> {
        let mut needs = Vec::new();
        for (&id, conn) in &mut self.lock().conns {
            if let Some(why) = &conn.failed {
                needs.push((id, Need::Drop(why.clone())));
            } else if conn.out.is_empty() == conn.armed {
                conn.armed = !conn.armed;
                needs.push((id, if conn.armed { Need::Arm } else { Need::Disarm }));
            }
        }
        needs
    }

    /// Bytes waiting for client `id` (for tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self, id: u64) -> Option<usize> {
        self.lock().conns.get(&id).map(|c| c.out.len())
    }
}

fn to_line(value: &Value) -> Vec<u8> {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The way back for one command's reply.
#[derive(Debug)]
pub struct Responder {
    outbox: Outbox,
    client: u64,
    id: Option<Value>,
}

impl Responder {
    pub(crate) fn new(outbox: Outbox, client: u64, id: Option<Value>) -> Self {
        Self { outbox, client, id }
    }

    /// Replies with `value`.
    pub fn ok(self, value: Value) {
        self.outbox
            .send(self.client, &session::success(self.id.as_ref(), value));
    }

    /// Replies with an error.
    pub fn err(self, error: &QmpError) {
        self.outbox
            .send(self.client, &session::failure(self.id.as_ref(), error));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use serde_json::json;

    use super::*;

    fn pair() -> (Arc<File>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Arc::new(File::from(OwnedFd::from(ours))), theirs)
    }

    #[test]
    fn a_line_goes_out_at_once_while_the_client_keeps_up() {
        let outbox = Outbox::new().unwrap();
        let (file, peer) = pair();
        let id = outbox.add(file, Kind::Socket);
        outbox.send(id, &json!({"return": {}}));
        outbox.event("STOP", None);
        outbox.set_negotiated(id, true);
        outbox.event("RESUME", None);
        assert_eq!(outbox.waiting(id), Some(0));
        assert!(outbox.needs().is_empty());
        assert!(outbox.wake_fd().read().is_err(), "no wake-up needed");
        let mut r = BufReader::new(peer);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"return\":{}}\n");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(
            line.contains("RESUME"),
            "STOP came before negotiation: {line}"
        );
    }

    #[test]
    fn output_waits_then_the_client_is_dropped_past_the_limit() {
        let outbox = Outbox::new().unwrap();
        let (file, mut peer) = pair();
        let id = outbox.add(file, Kind::Socket);
        outbox.set_negotiated(id, true);
        let pad = "x".repeat(1000);
        let mut sent = 0;
        // Fill the socket until output waits.
        while outbox.waiting(id) == Some(0) {
            outbox.event("E", Some(json!({ "pad": pad })));
            sent += 1;
        }
        assert_eq!(outbox.wake_fd().read().unwrap(), 1, "the server is woken");
        assert_eq!(outbox.needs(), [(id, Need::Arm)]);
        assert!(outbox.needs().is_empty(), "armed once");
        // Armed: nothing more is written until EPOLLOUT, all is kept.
        let more = OUTPUT_LIMIT / 1100;
        for _ in 0..more {
            outbox.event("E", Some(json!({ "pad": pad })));
        }
        assert!(outbox.waiting(id).unwrap() > OUTPUT_LIMIT / 2);
        assert!(outbox.needs().is_empty());
        // The client reads it all, with flushes between.
        let mut got = 0;
        let mut buf = vec![0; 1 << 16];
        while got < sent + more {
            let n = peer.read(&mut buf).unwrap();
            got += buf[..n].iter().filter(|&&b| b == b'\n').count();
            outbox.flush(id);
        }
        assert_eq!(got, sent + more, "every event, none lost");
        assert_eq!(outbox.needs(), [(id, Need::Disarm)]);
        // Now it stops reading: past the limit it must go.
        while outbox.needs().is_empty() {
            outbox.event("E", Some(json!({ "pad": pad })));
        }
        let _ = outbox.needs();
        for _ in 0..OUTPUT_LIMIT / 1000 + 1 {
            outbox.event("E", Some(json!({ "pad": pad })));
        }
        let needs = outbox.needs();
        assert!(
            matches!(&needs[..], [(i, Need::Drop(why))] if *i == id && why.contains("unread")),
            "{needs:?}"
        );
        outbox.remove(id);
        outbox.event("E", None);
        assert!(outbox.needs().is_empty());
    }

    #[test]
    fn a_peer_that_closed_is_dropped_without_sigpipe() {
        let outbox = Outbox::new().unwrap();
        let (file, peer) = pair();
        let id = outbox.add(file, Kind::Socket);
        drop(peer);
        outbox.send(id, &json!({"return": {}}));
        let needs = outbox.needs();
        assert!(
            matches!(&needs[..], [(_, Need::Drop(why))] if why.contains("write failed")),
            "{needs:?}"
        );
    }

    #[test]
    fn events_go_to_every_negotiated_client() {
        let outbox = Outbox::new().unwrap();
        let (a, pa) = pair();
        let (b, pb) = pair();
        let (c, pc) = pair();
        let ids = [a, b, c].map(|f| outbox.add(f, Kind::Socket));
        outbox.set_negotiated(ids[0], true);
        outbox.set_negotiated(ids[2], true);
        outbox.event("STOP", None);
        for p in [&pa, &pb, &pc] {
            p.set_nonblocking(true).unwrap();
        }
        let mut buf = [0; 256];
        assert!((&pa).read(&mut buf).unwrap() > 0);
        assert!((&pb).read(&mut buf).is_err(), "not negotiated: nothing");
        assert!((&pc).read(&mut buf).unwrap() > 0);
    }
}
