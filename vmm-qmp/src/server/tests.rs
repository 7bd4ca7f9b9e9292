use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use serde_json::json;

use super::*;
use crate::OUTPUT_LIMIT;

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

impl Rig {
    /// Runs the loop until nothing is ready: every request that arrived
    /// handled, every byte a client takes written.
    fn settle(&mut self) {
        while self.manager.run_with_timeout(0).unwrap() > 0 {}
    }
}

struct Peer {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Peer {
    /// Connects and reads the greeting.
    fn connect(rig: &mut Rig) -> Self {
        let w = UnixStream::connect(&rig.path).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut p = Self { w, r };
        rig.settle();
        let g = p.line();
        assert!(g["QMP"]["version"].is_object(), "{g}");
        p
    }

    /// Connects, reads the greeting and negotiates.
    fn negotiated(rig: &mut Rig) -> Self {
        let mut p = Self::connect(rig);
        p.send(rig, r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(p.line(), json!({"return": {}}));
        p
    }

    fn send(&mut self, rig: &mut Rig, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
        rig.settle();
    }

    fn line(&mut self) -> Value {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
    }
}

/// Reads what `stream` (non-blocking) has now; and whether it ended.
fn read_now(mut stream: &UnixStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (out, false),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The complete lines in `bytes`, parsed.
fn lines(bytes: &[u8]) -> Vec<Value> {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).unwrap_or_else(|e| {
                panic!("{e}: {:?}", String::from_utf8_lossy(&l[..l.len().min(200)]))
            })
        })
        .collect()
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
fn a_file_put_at_the_socket_path_is_left_alone() {
    let rig = rig("replaced");
    let path = rig.path.clone();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not ours").unwrap();
    drop(rig.manager);
    assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
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
    rig.settle();
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
fn an_idle_client_does_not_keep_others_out_and_events_go_to_all() {
    let mut rig = rig("idle");
    let mut idle = Peer::negotiated(&mut rig);
    let mut fresh = Peer::connect(&mut rig);
    let mut busy = Peer::negotiated(&mut rig);
    busy.send(&mut rig, r#"{"execute":"ping","id":"b"}"#);
    assert_eq!(busy.line(), json!({"return": {"args": 0}, "id": "b"}));
    rig.outbox.event("STOP", None);
    assert_eq!(idle.line()["event"], "STOP");
    assert_eq!(busy.line()["event"], "STOP");
    // Replies go to the client that asked; events only once negotiated.
    fresh.send(&mut rig, r#"{"execute":"qmp_capabilities","id":"f"}"#);
    assert_eq!(fresh.line(), json!({"return": {}, "id": "f"}));
    rig.outbox.event("RESUME", None);
    for p in [&mut idle, &mut fresh, &mut busy] {
        assert_eq!(p.line()["event"], "RESUME");
    }
}

#[test]
fn past_the_client_limit_a_connection_is_closed_at_once() {
    let mut rig = rig("limit");
    let mut peers: Vec<Peer> = (0..MAX_CLIENTS).map(|_| Peer::connect(&mut rig)).collect();
    let extra = UnixStream::connect(&rig.path).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    rig.settle();
    let mut got = Vec::new();
    (&extra).read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "closed without a greeting: {got:?}");
    // The others carry on, and a place that frees up is taken again.
    peers[3].send(&mut rig, r#"{"execute":"ping","id":3}"#);
    assert_eq!(peers[3].line()["error"]["class"], "CommandNotFound");
    peers.pop();
    rig.settle();
    let mut again = Peer::negotiated(&mut rig);
    again.send(&mut rig, r#"{"execute":"ping","id":4}"#);
    assert_eq!(again.line(), json!({"return": {"args": 0}, "id": 4}));
}

#[test]
fn requests_are_handled_a_bounded_number_per_wake_up() {
    let mut rig = rig("bounded");
    let mut p = Peer::negotiated(&mut rig);
    let n = 3 * REQUESTS_PER_WAKE + 5;
    let requests: String = (0..n)
        .map(|i| format!(r#"{{"execute":"ping","id":{i}}}"#))
        .collect();
    p.w.write_all(requests.as_bytes()).unwrap();
    p.w.set_nonblocking(true).unwrap();
    // One dispatch: one batch; the rest waits for the next wake-ups.
    rig.manager.run_with_timeout(1000).unwrap();
    let (first, _) = read_now(&p.w);
    assert_eq!(lines(&first).len(), REQUESTS_PER_WAKE);
    rig.settle();
    let (rest, _) = read_now(&p.w);
    let ids: Vec<Value> = lines(&first)
        .into_iter()
        .chain(lines(&rest))
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, (0..n).map(|i| json!(i)).collect::<Vec<_>>());
}

/// A client that asks and does not read: its replies wait in its buffer
/// (never blocking the loop, which serves another client meanwhile) and
/// all arrive once it reads; past the limit it is dropped.
#[test]
fn a_slow_reader_waits_in_its_buffer_then_is_dropped_past_the_limit() {
    let mut rig = rig("slow");
    let slow = Peer::negotiated(&mut rig);
    let mut other = Peer::negotiated(&mut rig);
    slow.w.set_nonblocking(true).unwrap();
    let pad = "p".repeat(2000);
    let request = |i: usize| format!(r#"{{"execute":"ping","id":"{pad}{i}"}}"#);
    let reply_len = json!({"return": {"args": 0}, "id": format!("{pad}0")})
        .to_string()
        .len();
    // Sends requests without reading until `n` are handled.
    let mut sent = 0;
    let mut unsent: Vec<u8> = Vec::new();
    let mut send_until = |rig: &mut Rig, slow: &Peer, n: usize| {
        while sent < n || !unsent.is_empty() {
            if unsent.is_empty() {
                unsent = request(sent).into_bytes();
                sent += 1;
            }
            match (&slow.w).write(&unsent) {
                Ok(k) => drop(unsent.drain(..k)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Dropped: its socket is closed.
                Err(_) => return false,
            }
            rig.settle();
        }
        true
    };
    // Half the limit: far past what the socket holds, all kept.
    let half = OUTPUT_LIMIT / 2 / reply_len;
    assert!(send_until(&mut rig, &slow, half));
    let waiting = rig.outbox.waiting(1).expect("still connected");
    assert!(waiting > OUTPUT_LIMIT / 4, "{waiting}");
    // The loop is not stuck on it: another client is served at once.
    other.send(&mut rig, r#"{"execute":"ping","id":"o"}"#);
    assert_eq!(other.line(), json!({"return": {"args": 0}, "id": "o"}));
    rig.outbox.event("STOP", None);
    assert_eq!(other.line()["event"], "STOP");
    // It reads: every reply, in order, and the event after them.
    let mut got = Vec::new();
    while lines(&got).len() < half + 1 {
        let (bytes, eof) = read_now(&slow.w);
        assert!(!eof);
        got.extend(bytes);
        rig.settle();
    }
    let got = lines(&got);
    for (i, reply) in got[..half].iter().enumerate() {
        assert_eq!(reply["id"], format!("{pad}{i}"));
    }
    assert_eq!(got[half]["event"], "STOP");
    assert_eq!(rig.outbox.waiting(1), Some(0));
    // It stops reading for good: dropped once past the limit.
    let more = half + 3 * OUTPUT_LIMIT / reply_len;
    send_until(&mut rig, &slow, more);
    assert!(rig.outbox.waiting(1).is_none(), "never dropped");
    let mut tail = Vec::new();
    loop {
        let (bytes, eof) = read_now(&slow.w);
        tail.extend(bytes);
        if eof {
            break;
        }
    }
    assert!(tail.len() < OUTPUT_LIMIT, "what its socket held, then EOF");
    other.send(&mut rig, r#"{"execute":"ping","id":"p"}"#);
    assert_eq!(other.line(), json!({"return": {"args": 0}, "id": "p"}));
}

fn pty() -> (File, OwnedFd, PathBuf) {
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
    // The test's end raw as well: no canonical line buffer of its own.
    crate::endpoint::make_raw(&master).unwrap();
    (master, slave, path)
}

fn device_manager(path: &Path) -> (Manager, Outbox) {
    let server = QmpServer::bind(
        path,
        Version {
            numbers: (0, 1, 0),
            package: "test".into(),
        },
        Fake {
            later: Arc::default(),
        },
    )
    .unwrap();
    let outbox = server.outbox();
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(Arc::new(Mutex::new(server)));
    (manager, outbox)
}

#[test]
fn a_serial_device_is_one_permanent_raw_client() {
    let (master, slave, path) = pty();
    let (mut manager, _outbox) = device_manager(&path);
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

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Reads `master` (non-blocking), running the loop, until `enough` says
/// the lines read so far (kept in `got`, parsed) are; returns them.
fn read_device(
    master: &File,
    manager: &mut Manager,
    got: &mut (Vec<u8>, Vec<Value>),
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut buf = vec![0; 1 << 16];
    loop {
        let end = got.0.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        got.1.extend(lines(&got.0[..end]));
        got.0.drain(..end);
        if enough(&got.1) {
            return got.1.clone();
        }
        match (&*master).read(&mut buf) {
            Ok(n) if n > 0 => got.0.extend_from_slice(&buf[..n]),
            // The loop writes more, and the pty hands bytes on
            // asynchronously: wait for them.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                while manager.run_with_timeout(0).unwrap() > 0 {}
                let mut fd = libc::pollfd {
                    fd: master.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut fd, 1, 100) };
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Nobody reads the device: the loop goes on, whole lines are dropped past
/// the limit (never half a line), and output flows again once it is read.
#[test]
fn a_serial_device_nobody_reads_never_blocks_the_loop() {
    let (master, _slave, path) = pty();
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let (mut manager, outbox) = device_manager(&path);
    let settle = |m: &mut Manager| while m.run_with_timeout(0).unwrap() > 0 {};
    (&master)
        .write_all(br#"{"execute":"qmp_capabilities"}"#)
        .unwrap();
    let mut got = Default::default();
    let greeted = read_device(&master, &mut manager, &mut got, |l| l.len() == 2);
    got.1.clear();
    assert!(greeted[0]["QMP"].is_object());
    assert_eq!(greeted[1], json!({"return": {}}));
    let pad = "e".repeat(1000);
    let sent = 2 * OUTPUT_LIMIT / pad.len();
    for i in 0..sent {
        outbox.event("E", Some(json!({ "i": i, "pad": pad })));
        settle(&mut manager);
    }
    let waiting = outbox.waiting(1).expect("the device client stays");
    assert!(waiting > OUTPUT_LIMIT - 2 * pad.len() && waiting <= OUTPUT_LIMIT);
    // Now it is read: events in order, with a gap where they were dropped;
    // whole lines.
    read_device(&master, &mut manager, &mut got, |_| {
        outbox.waiting(1) == Some(0)
    });
    // What the pty still holds comes with the reply to a request sent now.
    (&master)
        .write_all(br#"{"execute":"ping","id":9}"#)
        .unwrap();
    let mut events = read_device(&master, &mut manager, &mut got, |l| {
        l.last().is_some_and(|v| v.get("return").is_some())
    });
    assert_eq!(
        events.pop(),
        Some(json!({"return": {"args": 0}, "id": 9})),
        "output flows again"
    );
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["i"].as_u64().unwrap())
        .collect();
    assert!(numbers.len() < sent, "some were dropped");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(numbers[0], 0);
}
