//! The QMP server: a Unix socket in the main loop (an event-manager
//! subscriber), one client at a time as QEMU's monitor chardev, others
//! waiting in the listen backlog until it leaves. Or, given a character
//! device (a serial port, as QEMU's `-chardev serial`), one permanent client
//! on it, in raw mode: the greeting goes out as soon as the VMM starts.
//!
//! Commands go to a [`Backend`] with a [`Responder`] for the reply, which may
//! come at once or later (the machine runs commands from its main loop).
//! A reply for a client that has gone is dropped. Writes are blocking with a
//! [`WRITE_TIMEOUT`]: a client that stops reading is disconnected rather than
//! let stall the VMM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::{Map, Value};

use crate::session::{self, Action, QmpError, Session, Version};

/// How long one write to a client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors setting up the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The path is taken (QEMU refuses too; remove a stale socket first).
    #[error("cannot create the QMP socket {0}: the path exists")]
    Exists(PathBuf),
    /// `bind`/`listen` failed.
    #[error("cannot create the QMP socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// What runs the commands.
pub trait Backend: Send {
    /// The commands it knows (`qmp_capabilities` is the session's own).
    fn commands(&self) -> Vec<String>;
    /// Runs `command`; answers through `responder`, now or later.
    fn execute(&mut self, command: &str, arguments: &Map<String, Value>, responder: Responder);
}

#[derive(Debug, Default)]
struct OutboxInner {
    stream: Option<File>,
    generation: u64,
    negotiated: bool,
}

/// Where replies and events go: the current client, if any.
#[derive(Debug, Clone, Default)]
pub struct Outbox(Arc<Mutex<OutboxInner>>);

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one line to the client of `generation`; a failed write drops
    /// the client (the server notices at its next wake-up).
    fn send(&self, generation: u64, value: &Value) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let Some(stream) = inner.stream.as_mut() else {
            return;
        };
        let mut line = value.to_string();
        line.push('\n');
        if let Err(e) = stream.write_all(line.as_bytes()) {
            log::warn!("QMP: dropping the client: {e}");
            if let Some(s) = inner.stream.take() {
                // Wakes the reading side (EOF) so the server drops the
                // client; not a socket (a serial port): nothing to do.
                // SAFETY: shutdown on an fd we own; no memory involved.
                unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }

    /// Sends event `name` to the client, once it has negotiated.
    pub fn event(&self, name: &str, data: Option<Value>) {
        let generation = {
            let inner = self.lock();
            if !inner.negotiated {
                return;
            }
            inner.generation
        };
        self.send(generation, &session::event(name, data, now_us()));
    }
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
    generation: u64,
    id: Option<Value>,
}

impl Responder {
    /// Replies with `value`.
    pub fn ok(self, value: Value) {
        self.outbox
            .send(self.generation, &session::success(self.id.as_ref(), value));
    }

    /// Replies with an error.
    pub fn err(self, error: &QmpError) {
        self.outbox
            .send(self.generation, &session::failure(self.id.as_ref(), error));
    }
}

struct Client {
    stream: File,
    session: Session,
    generation: u64,
}

/// The QMP server.
pub struct QmpServer<B: Backend> {
    /// The socket; `None` on a character device.
    listener: Option<UnixListener>,
    path: PathBuf,
    client: Option<Client>,
    outbox: Outbox,
    version: Version,
    backend: B,
}

impl<B: Backend> std::fmt::Debug for QmpServer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpServer")
            .field("path", &self.path)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> QmpServer<B> {
    /// Creates the socket at `path`, mode 0600; or, if `path` is a
    /// character device (a serial port), serves one client on it.
    pub fn bind(path: &Path, version: Version, backend: B) -> Result<Self, ServerError> {
        if let Ok(meta) = path.metadata() {
            if meta.file_type().is_char_device() {
                return Self::on_device(path, version, backend);
            }
        }
        if path.symlink_metadata().is_ok() {
            return Err(ServerError::Exists(path.to_owned()));
        }
        // The socket is created 0600 (no window in which others may connect).
        // SAFETY: umask only swaps the process's file-creation mask; no memory
        // is involved. Other threads creating files meanwhile would get the
        // stricter mask, which is harmless.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|e| ServerError::Bind(path.to_owned(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::Bind(path.to_owned(), e))?;
        Ok(Self {
            listener: Some(listener),
            path: path.to_owned(),
            client: None,
            outbox: Outbox::default(),
            version,
            backend,
        })
    }

    fn on_device(path: &Path, version: Version, backend: B) -> Result<Self, ServerError> {
        let err = |e| ServerError::Bind(path.to_owned(), e);
        // O_NONBLOCK: opening a serial port otherwise waits for its carrier
        // (for ever, on a port with nothing attached), with the shutdown
        // signals blocked. Cleared once open.
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        set_blocking(&device).map_err(err)?;
        make_raw(&device).map_err(err)?;
        let writer = device.try_clone().map_err(err)?;
        let mut server = Self {
            listener: None,
            path: path.to_owned(),
            client: None,
            outbox: Outbox::default(),
            version,
            backend,
        };
        server.connect(device, writer);
        Ok(server)
    }

    /// Makes `stream` the client and greets it.
    fn connect(&mut self, stream: File, writer: File) {
        let generation = {
            let mut out = self.outbox.lock();
            out.generation += 1;
            out.stream = Some(writer);
            out.negotiated = false;
            out.generation
        };
        self.client = Some(Client {
            stream,
            session: Session::new(),
            generation,
        });
        self.outbox
            .send(generation, &session::greeting(&self.version));
        log::info!("QMP: client connected");
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle events are sent through.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let Some(listener) = &self.listener else {
            return;
        };
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("QMP: accept failed: {e}");
                return;
            }
        };
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
            .and_then(|()| stream.try_clone());
        let writer = match setup {
            Ok(w) => w,
            Err(e) => {
                log::warn!("QMP: cannot set up the client: {e}");
                return;
            }
        };
        if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
            log::warn!("QMP: cannot watch the client: {e}");
            return;
        }
        // One client at a time: the next waits in the backlog.
        let _ = ops.remove(Events::empty(listener));
        self.connect(
            File::from(OwnedFd::from(stream)),
            File::from(OwnedFd::from(writer)),
        );
    }

    fn disconnect(&mut self, ops: &mut EventOps) {
        if let Some(client) = self.client.take() {
            let _ = ops.remove(Events::empty(&client.stream));
            let mut out = self.outbox.lock();
            if out.generation == client.generation {
                out.stream = None;
                out.negotiated = false;
            }
            log::info!("QMP: client left");
        }
        if let Some(listener) = &self.listener {
            if let Err(e) = ops.add(Events::new(listener, EventSet::IN)) {
                log::error!("QMP: cannot watch the socket again: {e}");
            }
        }
    }

    fn serve(&mut self, ops: &mut EventOps) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        // Readable per epoll: one read returns what is there.
        let n = match client.stream.read(&mut buf) {
            Ok(0) => return self.disconnect(ops),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::warn!("QMP: read failed: {e}");
                return self.disconnect(ops);
            }
        };
        let commands = self.backend.commands();
        let known = |c: &str| commands.iter().any(|k| k == c);
        let actions = client.session.feed(&buf[..n], &known);
        let generation = client.generation;
        self.outbox.lock().negotiated = client.session.negotiated();
        for action in actions {
            match action {
                Action::Reply(v) => self.outbox.send(generation, &v),
                Action::Execute {
                    id,
                    command,
                    arguments,
                } => {
                    let responder = Responder {
                        outbox: self.outbox.clone(),
                        generation,
                        id,
                    };
                    self.backend.execute(&command, &arguments, responder);
                }
            }
        }
        // A write that failed dropped the stream from the outbox.
        if self.outbox.lock().stream.is_none() {
            self.disconnect(ops);
        }
    }
}

impl<B: Backend> Drop for QmpServer<B> {
    fn drop(&mut self) {
        // Only the socket we made; never a device we were given.
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Clears `O_NONBLOCK`.
fn set_blocking(device: &File) -> std::io::Result<()> {
    let fd = device.as_raw_fd();
    // SAFETY: F_GETFL on a valid open fd; no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: F_SETFL on a valid open fd with the flags just read, minus one.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Puts a terminal device in raw mode: bytes through unchanged, no echo,
/// no line editing or CR/LF translation.
fn make_raw(device: &File) -> std::io::Result<()> {
    let fd = device.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open fd and a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: a valid open fd and a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl<B: Backend> MutEventSubscriber for QmpServer<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self
            .listener
            .as_ref()
            .is_some_and(|l| events.fd() == l.as_raw_fd())
        {
            self.accept(ops);
            return;
        }
        let hung_up = events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP | EventSet::READ_HANG_UP);
        if events.event_set().contains(EventSet::IN) {
            self.serve(ops);
        } else if hung_up {
            self.disconnect(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let watched = match (&self.listener, &self.client) {
            (Some(listener), _) => ops.add(Events::new(listener, EventSet::IN)),
            (None, Some(client)) => ops.add(Events::new(&client.stream, EventSet::IN)),
            (None, None) => Ok(()),
        };
        if let Err(e) = watched {
            log::error!("QMP: cannot watch {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use std::os::unix::net::UnixStream;

    use event_manager::{EventManager, SubscriberOps};
    use serde_json::json;

    use super::*;

    /// Answers `ping` at once and keeps `later` responders for the test.
    struct Fake {
        later: Arc<Mutex<Vec<Responder>>>,
    }

    impl Backend for Fake {
        fn commands(&self) -> Vec<String> {
            vec!["ping".into(), "later".into()]
        }

        fn execute(&mut self, command: &str, arguments: &Map<String, Value>, r: Responder) {
            match command {
                "ping" => r.ok(json!({"args": arguments.len()})),
                _ => self.later.lock().unwrap().push(r),
            }
        }
    }

    struct Rig {
        manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
        path: PathBuf,
        later: Arc<Mutex<Vec<Responder>>>,
        outbox: Outbox,
        _dir: TempDir,
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rig(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("vmm-qmp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let later = Arc::new(Mutex::new(Vec::new()));
        let version = Version {
            numbers: (0, 1, 0),
            package: "test".into(),
        };
        let server = QmpServer::bind(
            &path,
            version,
            Fake {
                later: later.clone(),
            },
        )
        .unwrap();
        let outbox = server.outbox();
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(server)));
        Rig {
            manager,
            path,
            later,
            outbox,
            _dir: TempDir(dir),
        }
    }

    struct Peer {
        w: UnixStream,
        r: BufReader<UnixStream>,
    }

    impl Peer {
        fn connect(rig: &mut Rig) -> Self {
            let w = UnixStream::connect(&rig.path).unwrap();
            w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let r = BufReader::new(w.try_clone().unwrap());
            let mut p = Self { w, r };
            rig.manager.run_with_timeout(1000).unwrap();
            let g = p.line();
            assert!(g["QMP"]["version"].is_object(), "{g}");
            p
        }

        fn send(&mut self, rig: &mut Rig, text: &str) {
            self.w.write_all(text.as_bytes()).unwrap();
            rig.manager.run_with_timeout(1000).unwrap();
        }

        fn line(&mut self) -> Value {
            let mut s = String::new();
            self.r.read_line(&mut s).unwrap();
            serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
        }
    }

    #[test]
    fn socket_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let rig = rig("mode");
        let mode = std::fs::metadata(&rig.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = rig.path.clone();
        drop(rig);
        assert!(!path.exists());
    }

    #[test]
    fn an_existing_path_is_refused() {
        let rig = rig("exists");
        let again = QmpServer::bind(
            &rig.path,
            Version {
                numbers: (0, 0, 0),
                package: String::new(),
            },
            Fake {
                later: Arc::default(),
            },
        );
        assert!(matches!(again, Err(ServerError::Exists(_))));
    }

    #[test]
    fn a_conversation_with_late_replies_and_events() {
        let mut rig = rig("talk");
        let mut p = Peer::connect(&mut rig);
        rig.outbox.event("EARLY", None);
        p.send(
            &mut rig,
            r#"{"execute":"qmp_capabilities"}{"execute":"ping","id":1,"arguments":{"a":1}}"#,
        );
        assert_eq!(p.line(), json!({"return": {}}));
        assert_eq!(p.line(), json!({"return": {"args": 1}, "id": 1}));
        p.send(&mut rig, r#"{"execute":"later","id":"x"}"#);
        rig.outbox.event("STOP", None);
        let e = p.line();
        assert_eq!(
            e["event"], "STOP",
            "the EARLY event was not sent before negotiation"
        );
        rig.later.lock().unwrap().pop().unwrap().ok(json!({}));
        assert_eq!(p.line(), json!({"return": {}, "id": "x"}));
    }

    #[test]
    fn clients_one_after_another_and_one_that_vanishes_mid_command() {
        let mut rig = rig("clients");
        let mut first = Peer::connect(&mut rig);
        first.send(
            &mut rig,
            r#"{"execute":"qmp_capabilities"}{"execute":"later","id":1}"#,
        );
        first.line();
        drop(first);
        rig.manager.run_with_timeout(1000).unwrap();
        // The reply for the vanished client goes nowhere, harmlessly.
        rig.later.lock().unwrap().pop().unwrap().ok(json!({}));
        let mut second = Peer::connect(&mut rig);
        second.send(&mut rig, r#"{"execute":"ping","id":2}"#);
        assert_eq!(second.line()["error"]["class"], "CommandNotFound");
        second.send(
            &mut rig,
            "{\"execute\":\"qmp_capabilities\"}{\"execute\":\"ping\",",
        );
        assert_eq!(second.line(), json!({"return": {}}));
        second.send(&mut rig, "\"id\":3}");
        assert_eq!(second.line(), json!({"return": {"args": 0}, "id": 3}));
    }

    #[test]
    fn a_serial_device_is_one_permanent_raw_client() {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds into the out-pointers; the rest may
        // be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: fresh fds owned by nothing else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
        let later = Arc::new(Mutex::new(Vec::new()));
        let server = QmpServer::bind(
            &path,
            Version {
                numbers: (0, 1, 0),
                package: "test".into(),
            },
            Fake { later },
        )
        .unwrap();
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(server)));
        let mut r = BufReader::new(master.try_clone().unwrap());
        let mut w = master;
        let mut line = || {
            let mut s = String::new();
            r.read_line(&mut s).unwrap();
            serde_json::from_str::<Value>(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
        };
        assert!(line()["QMP"].is_object(), "greeted at once");
        w.write_all(br#"{"execute":"qmp_capabilities"}{"execute":"ping","id":1}"#)
            .unwrap();
        manager.run_with_timeout(1000).unwrap();
        assert_eq!(line(), json!({"return": {}}));
        assert_eq!(
            line(),
            json!({"return": {"args": 0}, "id": 1}),
            "raw: no echo"
        );
        drop(slave);
        assert!(path.exists() || !path.starts_with("/dev/pts"));
    }
}
