//! One QMP connection's protocol state, with no I/O: bytes in, replies and
//! commands to run out (QEMU's `docs/interop/qmp-spec.rst`).
//!
//! - The server speaks first: the greeting ([`greeting`]).
//! - Capabilities negotiation: until `qmp_capabilities` succeeds, every
//!   other command gets `CommandNotFound`; afterwards `qmp_capabilities`
//!   itself does. No capability (`oob`) is offered, so enabling one fails.
//! - A request is an object with `execute` (a string), optional `arguments`
//!   (an object) and optional `id` (any value, echoed in the reply); any
//!   other member is an error.
//! - Every reply and event is one JSON object on one line.

use std::collections::VecDeque;

use serde_json::{json, Map, Value};

use crate::framer::{Frame, Framer};

/// The largest request accepted, in bytes; longer ones get an error and
/// are skipped whole.
pub const MAX_REQUEST: usize = 64 * 1024;

/// QMP error classes (QAPI's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything else.
    GenericError,
    /// No such command (or not in this mode).
    CommandNotFound,
    /// KVM lacks a capability.
    KvmMissingCap,
}

impl ErrorClass {
    /// The class as QMP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GenericError => "GenericError",
            Self::CommandNotFound => "CommandNotFound",
            Self::KvmMissingCap => "KVMMissingCap",
        }
    }
}

/// A command's failure: a class and a human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    /// The class.
    pub class: ErrorClass,
    /// The description.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
}

/// The version the greeting and `query-version` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major, minor, micro.
    pub numbers: (u64, u64, u64),
    /// Free text (QEMU puts its distribution package here).
    pub package: String,
}

impl Version {
    /// The `VersionInfo` object.
    pub fn to_json(&self) -> Value {
        let (major, minor, micro) = self.numbers;
        json!({
            "qemu": {"major": major, "minor": minor, "micro": micro},
            "package": self.package,
        })
    }
}

/// The server's greeting.
pub fn greeting(version: &Version) -> Value {
    json!({"QMP": {"version": version.to_json(), "capabilities": []}})
}

/// A successful reply.
pub fn success(id: Option<&Value>, value: Value) -> Value {
    with_id(json!({ "return": value }), id)
}

/// An error reply.
pub fn failure(id: Option<&Value>, error: &QmpError) -> Value {
    with_id(
        json!({"error": {"class": error.class.as_str(), "desc": error.desc}}),
        id,
    )
}

/// An event, stamped with `timestamp` (Unix time, microseconds).
pub fn event(name: &str, data: Option<Value>, timestamp_us: u64) -> Value {
    let mut e = json!({
        "event": name,
        "timestamp": {
            "seconds": timestamp_us / 1_000_000,
            "microseconds": timestamp_us % 1_000_000,
        },
    });
    if let Some(data) = data {
        e["data"] = data;
    }
    e
}

fn with_id(mut reply: Value, id: Option<&Value>) -> Value {
    if let Some(id) = id {
        reply["id"] = id.clone();
    }
    reply
}

/// What the session asks its owner to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this reply.
    Reply(Value),
    /// Run a command; its reply must carry `id`.
    Execute {
        /// The request's `id`, if any.
        id: Option<Value>,
        /// The command name.
        command: String,
        /// Its arguments (empty if none were given).
        arguments: Map<String, Value>,
    },
}

/// One connection's protocol state.
///
/// Input is taken in two steps, so that its owner can bound the work done
/// at a time: [`Session::push`] keeps received bytes, [`Session::next_action`]
/// handles one request from them.
#[derive(Debug)]
pub struct Session {
    framer: Framer,
    negotiated: bool,
    /// Received bytes not yet given to the framer.
    inbox: Vec<u8>,
    /// How much of `inbox` the framer has taken.
    taken: usize,
    /// Texts the framer completed, not yet handled.
    ready: VecDeque<Frame>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session in capabilities-negotiation mode.
    pub fn new() -> Self {
        Self {
            framer: Framer::new(MAX_REQUEST),
            negotiated: false,
            inbox: Vec::new(),
            taken: 0,
            ready: VecDeque::new(),
        }
    }

    /// Whether negotiation is done (events go out only then).
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Feeds received bytes and handles every request they complete;
    /// `known(name)` says whether the backend has a command. Returns what
    /// to do, in request order.
    pub fn feed(&mut self, bytes: &[u8], known: &dyn Fn(&str) -> bool) -> Vec<Action> {
        self.push(bytes);
        std::iter::from_fn(|| self.next_action(known)).collect()
    }

    /// Keeps received bytes for [`Session::next_action`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.taken == self.inbox.len() {
            self.inbox.clear();
            self.taken = 0;
        }
        self.inbox.extend_from_slice(bytes);
    }

    /// Whether received bytes or complete requests are waiting (more may
    /// be needed to complete a request even so).
    pub fn has_input(&self) -> bool {
        !self.ready.is_empty() || self.taken < self.inbox.len()
    }

    /// Handles the next complete request; `None` once the bytes received
    /// so far hold no more (a partial one stays in the framer).
    pub fn next_action(&mut self, known: &dyn Fn(&str) -> bool) -> Option<Action> {
        while self.ready.is_empty() && self.taken < self.inbox.len() {
            let (frames, used) = self.framer.feed_until_text(&self.inbox[self.taken..]);
            self.taken += used;
            self.ready.extend(frames);
        }
        if self.taken == self.inbox.len() {
            self.inbox.clear();
            self.taken = 0;
        }
        let frame = self.ready.pop_front()?;
        Some(self.request(frame, known))
    }

    fn request(&mut self, frame: Frame, known: &dyn Fn(&str) -> bool) -> Action {
        let text = match frame {
            Frame::Text(t) => t,
            Frame::TooLong(n) => {
                return Action::Reply(failure(
                    None,
                    &QmpError::generic(format!(
                        "JSON parse error, request of {n} bytes is larger than {MAX_REQUEST}"
                    )),
                ))
            }
        };
        let value: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => {
                return Action::Reply(failure(
                    None,
                    &QmpError::generic(format!("JSON parse error, {e}")),
                ))
            }
        };
        let Value::Object(mut request) = value else {
            return Action::Reply(failure(
                None,
                &QmpError::generic("QMP input must be a JSON object"),
            ));
        };
        let id = request.remove("id");
        let reply_err =
            |desc: String| Action::Reply(failure(id.as_ref(), &QmpError::generic(desc)));
        let command = match request.remove("execute") {
            Some(Value::String(c)) => c,
            Some(_) => return reply_err("QMP input member 'execute' must be a string".into()),
            None => return reply_err("QMP input lacks member 'execute'".into()),
        };
        let arguments = match request.remove("arguments") {
            None => Map::new(),
            Some(Value::Object(a)) => a,
            Some(_) => return reply_err("QMP input member 'arguments' must be an object".into()),
        };
        if let Some(extra) = request.keys().next() {
            return reply_err(format!("QMP input member '{extra}' is unexpected"));
        }
        let not_found = |desc: String| {
            Action::Reply(failure(
                id.as_ref(),
                &QmpError {
                    class: ErrorClass::CommandNotFound,
                    desc,
                },
            ))
        };
        if command == "qmp_capabilities" {
            if self.negotiated {
                return not_found(
                    "Capabilities negotiation is already complete, command ignored".into(),
                );
            }
            return match arguments.get("enable") {
                Some(Value::Array(caps)) if !caps.is_empty() => reply_err(format!(
                    "Capability '{}' not available",
                    caps[0].as_str().unwrap_or("?")
                )),
                Some(Value::Array(_)) | None if arguments.len() <= 1 => {
                    self.negotiated = true;
                    Action::Reply(success(id.as_ref(), json!({})))
                }
                _ => reply_err("Invalid arguments for qmp_capabilities".into()),
            };
        }
        if !self.negotiated {
            return not_found("Expecting capabilities negotiation with 'qmp_capabilities'".into());
        }
        if !known(&command) {
            return not_found(format!("The command {command} has not been found"));
        }
        Action::Execute {
            id,
            command,
            arguments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(c: &str) -> bool {
        matches!(c, "query-status" | "stop")
    }

    fn one(s: &mut Session, input: &str) -> Action {
        let mut actions = s.feed(input.as_bytes(), &known);
        assert_eq!(actions.len(), 1, "{actions:?}");
        actions.remove(0)
    }

    fn reply(s: &mut Session, input: &str) -> Value {
        match one(s, input) {
            Action::Reply(v) => v,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn class(v: &Value) -> &str {
        v["error"]["class"].as_str().unwrap()
    }

    #[test]
    fn greeting_has_version_and_no_capabilities() {
        let v = Version {
            numbers: (0, 1, 0),
            package: "vmm".into(),
        };
        let g = greeting(&v);
        assert_eq!(g["QMP"]["version"]["qemu"]["minor"], 1);
        assert_eq!(g["QMP"]["capabilities"], json!([]));
    }

    #[test]
    fn commands_before_negotiation_are_not_found() {
        let mut s = Session::new();
        let r = reply(&mut s, r#"{"execute":"query-status","id":"a"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert_eq!(r["id"], "a");
        assert!(r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("qmp_capabilities"));
        let r = reply(&mut s, r#"{"execute":"qmp_capabilities","id":1}"#);
        assert_eq!(r, json!({"return": {}, "id": 1}));
        assert!(s.negotiated());
        let r = reply(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert!(r.get("id").is_none());
    }

    #[test]
    fn ids_are_echoed_exactly() {
        let mut s = Session::new();
        reply(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        for id in [r#"{"a":[1,2,{"b":null}]}"#, "-1.5", r#""x""#, "null"] {
            let a = one(&mut s, &format!(r#"{{"execute":"stop","id":{id}}}"#));
            let want: Value = serde_json::from_str(id).unwrap();
            assert_eq!(
                a,
                Action::Execute {
                    id: Some(want),
                    command: "stop".into(),
                    arguments: Map::new()
                }
            );
        }
    }

    #[test]
    fn malformed_requests_get_errors_and_the_session_goes_on() {
        let mut s = Session::new();
        reply(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        let cases = [
            ("[1,2]", "must be a JSON object"),
            ("{\"execute\": 3}", "must be a string"),
            ("{\"id\": 5}", "lacks member 'execute'"),
            (
                "{\"execute\":\"stop\",\"arguments\":[]}",
                "must be an object",
            ),
            ("{\"execute\":\"stop\",\"foo\":1}", "'foo' is unexpected"),
            ("{\"execute\":\"stop\",}", "JSON parse error"),
            ("nonsense\n", "JSON parse error"),
            ("}", "JSON parse error"),
        ];
        for (input, desc) in cases {
            let r = reply(&mut s, input);
            assert_eq!(class(&r), "GenericError", "{input}");
            assert!(
                r["error"]["desc"].as_str().unwrap().contains(desc),
                "{input}: {r}"
            );
        }
        let r = reply(&mut s, r#"{"execute":"nope","id":7}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert_eq!(r["error"]["desc"], "The command nope has not been found");
        assert!(matches!(
            one(&mut s, r#"{"execute":"stop"}"#),
            Action::Execute { .. }
        ));
    }

    #[test]
    fn a_one_mebibyte_request_is_refused_whole() {
        let mut s = Session::new();
        reply(&mut s, r#"{"execute":"qmp_capabilities"}"#);
        let big = format!(
            r#"{{"execute":"stop","arguments":{{"pad":"{}"}}}}{{"execute":"stop","id":2}}"#,
            "x".repeat(1 << 20)
        );
        let actions = s.feed(big.as_bytes(), &known);
        assert_eq!(actions.len(), 2);
        let Action::Reply(r) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert!(r["error"]["desc"].as_str().unwrap().contains("larger than"));
        assert!(matches!(&actions[1], Action::Execute { id: Some(id), .. } if *id == 2));
    }

    #[test]
    fn capabilities_cannot_enable_oob() {
        let mut s = Session::new();
        let r = reply(
            &mut s,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
        );
        assert_eq!(class(&r), "GenericError");
        assert!(!s.negotiated());
        let r = reply(
            &mut s,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":[]}}"#,
        );
        assert_eq!(r, json!({"return": {}}));
    }

    #[test]
    fn events_carry_timestamps() {
        let e = event("STOP", None, 1_700_000_000_123_456);
        assert_eq!(
            e,
            json!({"event":"STOP","timestamp":{"seconds":1_700_000_000u64,"microseconds":123_456}})
        );
        let e = event("SHUTDOWN", Some(json!({"guest": false})), 0);
        assert_eq!(e["data"]["guest"], false);
    }

    #[test]
    fn requests_are_handled_one_at_a_time_on_demand() {
        let mut s = Session::new();
        s.push(br#"{"execute":"qmp_capabilities"}{"execute":"stop","id":1}}{"exec"#);
        assert!(s.has_input());
        assert!(matches!(s.next_action(&known), Some(Action::Reply(_))));
        assert!(s.negotiated());
        assert!(matches!(
            s.next_action(&known),
            Some(Action::Execute { id: Some(_), .. })
        ));
        assert!(s.has_input(), "the stray bracket waits");
        let Some(Action::Reply(r)) = s.next_action(&known) else {
            panic!("the stray bracket is an error")
        };
        assert_eq!(class(&r), "GenericError");
        assert_eq!(s.next_action(&known), None, "a partial request waits");
        assert!(!s.has_input());
        s.push(br#"ute":"stop"}"#);
        assert!(matches!(
            s.next_action(&known),
            Some(Action::Execute { id: None, .. })
        ));
        assert_eq!(s.next_action(&known), None);
    }

    /// Found by the `qmp_session` fuzz target: a number `id` with more
    /// significant digits than an `f64` holds came back as a different
    /// number (serde_json's fast float parsing is off by one unit in the
    /// last place for some inputs), so a client could not match the reply
    /// to its request. The request's bytes, from the reproducer.
    #[test]
    fn fuzz_long_number_id_echoed_as_another_number() {
        let digits = "1".repeat(144);
        let request = format!(r#"{{"execute":"!system_reset","id":{{"x":[{digits},2]}}}}"#);
        let mut s = Session::new();
        let r = reply(&mut s, &request);
        // The number the client meant (std's parser rounds correctly).
        let meant: f64 = digits.parse().unwrap();
        assert_eq!(r["id"]["x"][0].as_f64(), Some(meant));
        // What goes on the wire parses back to the same number.
        let wire = serde_json::to_string(&r).unwrap();
        let back: Value = serde_json::from_str(&wire).unwrap();
        assert_eq!(back["id"]["x"][0].as_f64(), Some(meant), "{wire}");
        assert_eq!(back, r);
    }
}
