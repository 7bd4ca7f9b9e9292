//! The QMP server in the main loop (an event-manager subscriber): a Unix
//! socket with up to [`MAX_CLIENTS`] clients at once, or, given a character
//! device (a serial port, as QEMU's `-chardev serial`), one permanent client
//! on it, in raw mode: the greeting goes out as soon as the VMM starts.
//!
//! Several clients at once, not QEMU's one: QEMU's monitor on a socket
//! chardev serves one client and leaves the next in the listen backlog
//! until the first goes, so an idle client (a forgotten `qmp-shell`, a
//! tool that waits for events) locks every other tool out; QEMU's users
//! get around it with one `-qmp` socket per tool. We have one socket, so
//! it takes several clients, each with its own session and negotiation;
//! replies go to the client that asked, events to every client that has
//! negotiated. No client is timed out: waiting idle for events is a
//! legitimate use. Past [`MAX_CLIENTS`] a new connection is closed at once,
//! with a log line, so that a local user cannot run the VMM out of fds.
//!
//! The main loop never waits on a client:
//! - Writes never block (see [`crate::outbox`]): output waits in the
//!   client's buffer, written on `EPOLLOUT`; a socket client with more than
//!   [`crate::OUTPUT_LIMIT`] bytes unread is dropped.
//! - Input is handled [`REQUESTS_PER_WAKE`] requests at a time: one read
//!   of at most [`READ_CHUNK`] bytes, and no more reads until what it
//!   brought is handled; with requests left over, the server wakes itself
//!   again through the outbox's eventfd and returns to the loop, which
//!   serves timers, signals and other clients between.
//!
//! Commands go to a [`Backend`] with a [`Responder`] for the reply, which
//! may come at once or later (the machine runs commands from its main
//! loop). A reply for a client that has gone is dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::{Map, Value};

use crate::endpoint::{self, SocketPath};
use crate::outbox::{Kind, Need, Outbox, Responder};
use crate::session::{self, Action, Session, Version};

/// The most clients connected at once.
pub const MAX_CLIENTS: usize = 16;

/// The most requests one client gets handled per wake-up of the loop.
pub const REQUESTS_PER_WAKE: usize = 32;

/// The most bytes read from one client per wake-up.
pub const READ_CHUNK: usize = 16 * 1024;

/// Errors setting up the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The path is taken (QEMU refuses too; remove a stale socket first).
    #[error("cannot create the QMP socket {0}: the path exists")]
    Exists(PathBuf),
    /// `bind`/`listen` failed.
    #[error("cannot create the QMP socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// The character device could not be opened or set to raw mode.
    #[error("cannot serve QMP on the device {0}")]
    Device(PathBuf, #[source] std::io::Error),
    /// The server's wake-up eventfd could not be created.
    #[error("cannot create the QMP server's eventfd")]
    EventFd(#[source] std::io::Error),
}

/// What runs the commands.
pub trait Backend: Send {
    /// The commands it knows (`qmp_capabilities` is the session's own).
    fn commands(&self) -> Vec<String>;
    /// Runs `command`; answers through `responder`, now or later.
    fn execute(&mut self, command: &str, arguments: &Map<String, Value>, responder: Responder);
}

struct Client {
    file: Arc<File>,
    session: Session,
}

/// The QMP server.
pub struct QmpServer<B: Backend> {
    /// The socket; `None` on a character device.
    listener: Option<UnixListener>,
    /// The socket's file, removed on drop.
    socket: Option<SocketPath>,
    path: PathBuf,
    clients: BTreeMap<u64, Client>,
    outbox: Outbox,
    version: Version,
    backend: B,
    buf: Vec<u8>,
}

impl<B: Backend> std::fmt::Debug for QmpServer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpServer")
            .field("path", &self.path)
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> QmpServer<B> {
    /// Creates the socket at `path`, mode 0600; or, if `path` is a
    /// character device (a serial port), serves one client on it.
    pub fn bind(path: &Path, version: Version, backend: B) -> Result<Self, ServerError> {
        let mut server = Self {
            listener: None,
            socket: None,
            path: path.to_owned(),
            clients: BTreeMap::new(),
            outbox: Outbox::new().map_err(ServerError::EventFd)?,
            version,
            backend,
            buf: vec![0; READ_CHUNK],
        };
        if endpoint::is_device(path) {
            let device =
                endpoint::open_device(path).map_err(|e| ServerError::Device(path.to_owned(), e))?;
            server.connect(Arc::new(device), Kind::Device);
            return Ok(server);
        }
        if path.symlink_metadata().is_ok() {
            return Err(ServerError::Exists(path.to_owned()));
        }
        let (listener, socket) =
            endpoint::bind(path).map_err(|e| ServerError::Bind(path.to_owned(), e))?;
        server.listener = Some(listener);
        server.socket = Some(socket);
        Ok(server)
    }

    /// The socket's path (or the device's).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket file this server created, to remove on an exit path
    /// that skips the server's drop; `None` on a character device.
    pub fn socket(&self) -> Option<SocketPath> {
        self.socket.clone()
    }

    /// The handle events are sent through.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// Takes `file` as a client and greets it; returns its id.
    fn connect(&mut self, file: Arc<File>, kind: Kind) -> u64 {
        let id = self.outbox.add(file.clone(), kind);
        self.clients.insert(
            id,
            Client {
                file,
                session: Session::new(),
            },
        );
        self.outbox.send(id, &session::greeting(&self.version));
        log::info!(
            "QMP: client {id} connected ({} connected)",
            self.clients.len()
        );
        id
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let Some(listener) = &self.listener else {
            return;
        };
        // One per wake-up: the socket stays readable while more wait.
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("QMP: accept failed: {e}");
                return;
            }
        };
        if self.clients.len() >= MAX_CLIENTS {
            log::warn!("QMP: {MAX_CLIENTS} clients connected already: refusing a connection");
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("QMP: cannot set up the client: {e}");
            return;
        }
        let file = Arc::new(File::from(OwnedFd::from(stream)));
        if let Err(e) = ops.add(Events::new(&*file, EventSet::IN)) {
            log::warn!("QMP: cannot watch the client: {e}");
            return;
        }
        self.connect(file, Kind::Socket);
    }

    fn disconnect(&mut self, id: u64, ops: &mut EventOps) {
        if let Some(client) = self.clients.remove(&id) {
            let _ = ops.remove(Events::empty(&*client.file));
            self.outbox.remove(id);
            log::info!("QMP: client {id} left ({} connected)", self.clients.len());
        }
    }

    fn client_by_fd(&self, fd: i32) -> Option<u64> {
        self.clients
            .iter()
            .find(|(_, c)| c.file.as_raw_fd() == fd)
            .map(|(&id, _)| id)
    }

    /// Handles up to [`REQUESTS_PER_WAKE`] of client `id`'s requests,
    /// reading at most once, when what was read before is all handled.
    fn serve(&mut self, id: u64, ops: &mut EventOps) {
        let commands = self.backend.commands();
        let known = |c: &str| commands.iter().any(|k| k == c);
        let mut handled = 0;
        let mut read = false;
        loop {
            let Some(client) = self.clients.get_mut(&id) else {
                return;
            };
            if handled == REQUESTS_PER_WAKE {
                if client.session.has_input() {
                    // Back to the loop; the eventfd brings us here again.
                    self.outbox.wake();
                }
                return;
            }
            if let Some(action) = client.session.next_action(&known) {
                handled += 1;
                let negotiated = client.session.negotiated();
                match action {
                    Action::Reply(v) => self.outbox.send(id, &v),
                    Action::Execute {
                        id: request,
                        command,
                        arguments,
                    } => {
                        let responder = Responder::new(self.outbox.clone(), id, request);
                        self.backend.execute(&command, &arguments, responder);
                    }
                }
                // After the reply to qmp_capabilities: events from now on.
                self.outbox.set_negotiated(id, negotiated);
                continue;
            }
            if read {
                return;
            }
            read = true;
            match (&*client.file).read(&mut self.buf) {
                Ok(0) => return self.disconnect(id, ops),
                Ok(n) => client.session.push(&self.buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    return
                }
                Err(e) => {
                    log::warn!("QMP: client {id}: read failed: {e}");
                    return self.disconnect(id, ops);
                }
            }
        }
    }

    /// Arms or disarms `EPOLLOUT` and drops clients, as the outbox asks.
    fn sync(&mut self, ops: &mut EventOps) {
        for (id, need) in self.outbox.needs() {
            let set = match need {
                Need::Arm => EventSet::IN | EventSet::OUT,
                Need::Disarm => EventSet::IN,
                Need::Drop(why) => {
                    log::warn!("QMP: dropping client {id}: {why}");
                    self.disconnect(id, ops);
                    continue;
                }
            };
            let Some(client) = self.clients.get(&id) else {
                continue;
            };
            if let Err(e) = ops.modify(Events::new(&*client.file, set)) {
                log::warn!("QMP: dropping client {id}: cannot watch it: {e}");
                self.disconnect(id, ops);
            }
        }
    }
}

impl<B: Backend> Drop for QmpServer<B> {
    fn drop(&mut self) {
        // What can still go out does (the SHUTDOWN event), then the
        // clients are closed.
        self.outbox.close_all();
        // Only the socket we made; never a device we were given, nor
        // anything put at the path since.
        if let Some(socket) = &self.socket {
            socket.remove();
        }
    }
}

impl<B: Backend> MutEventSubscriber for QmpServer<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if self.listener.as_ref().is_some_and(|l| fd == l.as_raw_fd()) {
            self.accept(ops);
        } else if fd == self.outbox.wake_fd().as_raw_fd() {
            let _ = self.outbox.wake_fd().read();
            let waiting: Vec<u64> = self
                .clients
                .iter()
                .filter(|(_, c)| c.session.has_input())
                .map(|(&id, _)| id)
                .collect();
            for id in waiting {
                self.serve(id, ops);
            }
        } else if let Some(id) = self.client_by_fd(fd) {
            if set.contains(EventSet::OUT) {
                self.outbox.flush(id);
            }
            if set.contains(EventSet::IN) {
                self.serve(id, ops);
            } else if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                self.disconnect(id, ops);
            }
        }
        self.sync(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut watch = |fd: i32| {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("QMP: cannot watch {}: {e}", self.path.display());
            }
        };
        watch(self.outbox.wake_fd().as_raw_fd());
        if let Some(listener) = &self.listener {
            watch(listener.as_raw_fd());
        }
        for client in self.clients.values() {
            watch(client.file.as_raw_fd());
        }
        self.sync(ops);
    }
}

#[cfg(test)]
mod tests;
