//! The QMP bridge of a nested `cargo xtask run -- --qmp PATH`: the VMM in L1
//! serves QMP on L1's second serial port (`--qmp /dev/ttyS1`), QEMU serves
//! that port as a Unix socket, and this bridge connects to it and listens
//! at the user's PATH, so that QEMU's own clients (`qmp-shell`, `qemu.qmp`)
//! on the host reach the VMM as if it ran here.
//!
//! A serial line has no notion of a client coming and going: the VMM greets
//! once and negotiates once. So the bridge keeps the greeting and gives it to
//! every client, answers a repeated `qmp_capabilities` itself, and tags each
//! command it forwards with an id of its own, so that a reply reaches the
//! client that asked (a reply to a client gone since is dropped). Events go
//! to the client connected at the time. One client at a time, as QEMU's QMP
//! on a socket chardev; the next one waits in the listen backlog.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// What the two sides share.
#[derive(Debug, Default)]
struct State {
    /// The VMM's greeting, once it came.
    greeting: Option<Value>,
    /// Whether `qmp_capabilities` went to the VMM already.
    negotiated: bool,
    /// The connected client (its generation and a stream to write to).
    client: Option<(u64, UnixStream)>,
    /// Forwarded commands: our id -> (client generation, the client's id).
    pending: HashMap<u64, (u64, Option<Value>)>,
    next_id: u64,
}

/// The host end of the bridge; removes its socket when dropped.
#[derive(Debug)]
pub struct QmpBridge {
    path: PathBuf,
}

impl QmpBridge {
    /// Listens at `user_path` (mode 0600; an existing path is refused, as
    /// the VMM refuses it) and connects to QEMU's socket at `l1_socket` once
    /// it is there, in threads of their own.
    pub fn start(user_path: &Path, l1_socket: &Path) -> Result<Self> {
        if user_path.symlink_metadata().is_ok() {
            bail!(
                "--qmp {}: the path exists (remove it, or choose another)",
                user_path.display()
            );
        }
        let listener = UnixListener::bind(user_path)
            .with_context(|| format!("cannot listen at {}", user_path.display()))?;
        std::fs::set_permissions(user_path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set the mode of {}", user_path.display()))?;
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let l1_socket = l1_socket.to_owned();
        let (l1_tx, l1_rx) = std::sync::mpsc::channel::<UnixStream>();
        {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                // QEMU creates its socket soon after it starts, and waits
                // for us before it starts L1.
                let stream = loop {
                    match UnixStream::connect(&l1_socket) {
                        Ok(s) => break s,
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                let Ok(writer) = stream.try_clone() else {
                    return;
                };
                let _ = l1_tx.send(writer);
                from_vmm(stream, &state);
            });
        }
        std::thread::spawn(move || {
            let Ok(to_vmm) = l1_rx.recv() else {
                return;
            };
            let to_vmm = Mutex::new(to_vmm);
            for (generation, stream) in (1u64..).zip(listener.incoming()) {
                if let Ok(stream) = stream {
                    serve_client(generation, stream, &state, &to_vmm);
                }
            }
        });
        Ok(Self {
            path: user_path.to_owned(),
        })
    }
}

impl Drop for QmpBridge {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(stream: &mut UnixStream, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push_str("\r\n");
    stream.write_all(line.as_bytes())
}

/// Reads the VMM's lines: the greeting is kept, replies go back to the
/// client that asked, events to the one connected.
fn from_vmm(stream: UnixStream, state: &(Mutex<State>, Condvar)) {
    let (state, greeted) = state;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Ok(mut msg) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        let mut st = lock(state);
        if msg.get("QMP").is_some() {
            st.greeting = Some(msg);
            greeted.notify_all();
            continue;
        }
        let target = match msg.get("id").and_then(Value::as_u64) {
            Some(ours) if msg.get("event").is_none() => match st.pending.remove(&ours) {
                Some((generation, theirs)) => {
                    restore_id(&mut msg, theirs);
                    Some(generation)
                }
                None => continue,
            },
            // An event, or a reply without our id (the VMM's answer to
            // bad input it could not take an id from).
            _ => st.client.as_ref().map(|(g, _)| *g),
        };
        if let Some((generation, client)) = st.client.as_mut() {
            if Some(*generation) == target && send(client, &msg).is_err() {
                st.client = None;
            }
        }
    }
}

fn restore_id(msg: &mut Value, theirs: Option<Value>) {
    if let Some(obj) = msg.as_object_mut() {
        match theirs {
            Some(id) => obj.insert("id".into(), id),
            None => obj.remove("id"),
        };
    }
}

/// One client, until it goes.
fn serve_client(
    generation: u64,
    mut stream: UnixStream,
    state: &(Mutex<State>, Condvar),
    to_vmm: &Mutex<UnixStream>,
) {
    let (lock_state, greeted) = state;
    let greeting = {
        let mut st = lock(lock_state);
        while st.greeting.is_none() {
            st = greeted.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.greeting.clone().unwrap_or(Value::Null)
    };
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    if send(&mut stream, &greeting).is_err() {
        return;
    }
    lock(lock_state).client = Some((generation, writer));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(msg)) => {
                    used = it.byte_offset();
                    forward(generation, msg, &mut stream, lock_state, to_vmm);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // As QEMU: an error for what cannot be parsed, the rest
                    // of the input dropped.
                    let _ = send(
                        &mut stream,
                        &json!({"error": {"class": "GenericError", "desc": "JSON parse error"}}),
                    );
                    used = buf.len();
                    break;
                }
                None => {
                    used = buf.len();
                    break;
                }
            }
        }
        buf.drain(..used);
    }
    let mut st = lock(lock_state);
    if st.client.as_ref().is_some_and(|(g, _)| *g == generation) {
        st.client = None;
    }
}

/// One message from a client: a repeated negotiation answered here, the
/// rest to the VMM under an id of ours.
fn forward(
    generation: u64,
    mut msg: Value,
    client: &mut UnixStream,
    state: &Mutex<State>,
    to_vmm: &Mutex<UnixStream>,
) {
    let theirs = msg.get("id").cloned();
    let mut st = lock(state);
    if msg.get("execute").and_then(Value::as_str) == Some("qmp_capabilities") {
        if st.negotiated {
            let mut reply = json!({"return": {}});
            restore_id(&mut reply, theirs);
            drop(st);
            let _ = send(client, &reply);
            return;
        }
        st.negotiated = true;
    }
    let ours = st.next_id;
    st.next_id += 1;
    st.pending.insert(ours, (generation, theirs));
    drop(st);
    if let Some(obj) = msg.as_object_mut() {
        obj.insert("id".into(), json!(ours));
    }
    let mut vmm = to_vmm.lock().unwrap_or_else(|e| e.into_inner());
    let _ = send(&mut vmm, &msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake VMM on the far side: greets, then answers every command with
    /// its name and id, and sends an event after `stop`.
    fn fake_vmm(listener: UnixListener) {
        let (stream, _) = listener.accept().unwrap();
        let mut w = stream.try_clone().unwrap();
        send(&mut w, &json!({"QMP": {"version": {}, "capabilities": []}})).unwrap();
        for line in BufReader::new(stream).lines() {
            let msg: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let reply = json!({"return": {"did": msg["execute"]}, "id": msg["id"]});
            send(&mut w, &reply).unwrap();
            if msg["execute"] == "stop" {
                send(&mut w, &json!({"event": "STOP"})).unwrap();
            }
        }
    }

    fn client(path: &Path) -> (BufReader<UnixStream>, UnixStream) {
        let s = UnixStream::connect(path).unwrap();
        (BufReader::new(s.try_clone().unwrap()), s)
    }

    fn line(r: &mut BufReader<UnixStream>) -> Value {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    #[test]
    fn two_clients_one_after_another_through_one_serial_line() {
        let dir = std::env::temp_dir().join(format!("xtask-qmp-bridge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l1 = dir.join("l1.sock");
        let user = dir.join("user.sock");
        let vmm = UnixListener::bind(&l1).unwrap();
        std::thread::spawn(move || fake_vmm(vmm));
        let bridge = QmpBridge::start(&user, &l1).unwrap();
        assert!(QmpBridge::start(&user, &l1).is_err(), "an existing path");

        let (mut r, mut w) = client(&user);
        assert!(line(&mut r).get("QMP").is_some());
        w.write_all(br#"{"execute":"qmp_capabilities","id":"a"}"#)
            .unwrap();
        assert_eq!(
            line(&mut r),
            json!({"return": {"did": "qmp_capabilities"}, "id": "a"})
        );
        // Split anywhere, no id of its own: the reply has none either.
        w.write_all(br#"{"execute":"#).unwrap();
        w.write_all(b"\"stop\"}\n").unwrap();
        assert_eq!(line(&mut r), json!({"return": {"did": "stop"}}));
        assert_eq!(line(&mut r), json!({"event": "STOP"}));
        w.write_all(b"{nonsense}").unwrap();
        assert_eq!(line(&mut r)["error"]["class"], "GenericError");
        drop((r, w));

        // The next client is greeted too, and its negotiation is answered
        // by the bridge (the VMM's session is negotiated already).
        let (mut r, mut w) = client(&user);
        assert!(line(&mut r).get("QMP").is_some());
        w.write_all(br#"{"execute":"qmp_capabilities","id":7}"#)
            .unwrap();
        assert_eq!(line(&mut r), json!({"return": {}, "id": 7}));
        w.write_all(br#"{"execute":"query-status","id":[1]}"#)
            .unwrap();
        assert_eq!(
            line(&mut r),
            json!({"return": {"did": "query-status"}, "id": [1]})
        );
        drop(bridge);
        assert!(!user.exists(), "the socket goes with the bridge");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
