//! One QMP connection's protocol (vmm-qmp's `Session`, no I/O): a byte
//! stream cut into reads at fuzzer-chosen places. Checks that the actions
//! do not depend on where the reads were cut, that every reply is one JSON
//! object on one line with exactly one of `return` and `error` (and a known
//! error class), and that commands reach the backend only after
//! negotiation and only when it knows them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vmm_fuzz::Input;
use vmm_qmp::session::{Action, Session};

fn known(command: &str) -> bool {
    matches!(
        command,
        "query-status" | "stop" | "cont" | "system_reset" | "quit" | "query-version"
    )
}

fn check_reply(reply: &Value) {
    let Value::Object(members) = reply else {
        panic!("a reply that is not an object: {reply}");
    };
    let text = serde_json::to_string(reply).expect("replies serialize");
    assert!(!text.contains('\n'), "a reply over two lines: {text}");
    let back: Value = serde_json::from_str(&text).expect("replies parse back");
    assert_eq!(&back, reply);
    match (members.get("return"), members.get("error")) {
        (Some(_), None) => {}
        (None, Some(error)) => {
            let class = error["class"].as_str().expect("an error class");
            assert!(
                matches!(class, "GenericError" | "CommandNotFound" | "KVMMissingCap"),
                "class {class}"
            );
            assert!(error["desc"].is_string(), "an error without desc");
        }
        _ => panic!("a reply with neither or both of return and error: {reply}"),
    }
    assert!(
        members
            .keys()
            .all(|k| matches!(k.as_str(), "return" | "error" | "id")),
        "a reply with other members: {reply}"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut chunked = Session::new();
    let mut actions = Vec::new();
    let mut stream = Vec::new();
    while !input.is_empty() {
        let len = usize::from(input.u8());
        let chunk = input.bytes(len);
        stream.extend_from_slice(chunk);
        for action in chunked.feed(chunk, &known) {
            match &action {
                Action::Reply(reply) => check_reply(reply),
                Action::Execute { command, .. } => {
                    assert!(chunked.negotiated(), "{command} ran before negotiation");
                    assert!(known(command), "{command} is not the backend's");
                }
            }
            actions.push(action);
        }
    }
    let whole = Session::new().feed(&stream, &known);
    assert_eq!(
        actions, whole,
        "the actions depend on how the stream was cut"
    );
});
