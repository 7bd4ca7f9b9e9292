//! QMP's stream framer: a byte stream, cut into reads at fuzzer-chosen
//! places, with a small or the real size limit. Checks that the texts do
//! not depend on where the reads were cut (the same as one framer fed the
//! whole stream at once), that no kept text passes the limit and every
//! too-long one does, and that the texts never hold more bytes than came
//! in.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_fuzz::Input;
use vmm_qmp::framer::{Frame, Framer};
use vmm_qmp::session::MAX_REQUEST;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let limit = match input.u8() {
        0 => MAX_REQUEST,
        n => usize::from(n),
    };
    let mut chunked = Framer::new(limit);
    let mut frames = Vec::new();
    let mut stream = Vec::new();
    while !input.is_empty() {
        let len = usize::from(input.u8());
        let chunk = input.bytes(len);
        stream.extend_from_slice(chunk);
        frames.extend(chunked.feed(chunk));
    }
    let whole = Framer::new(limit).feed(&stream);
    assert_eq!(frames, whole, "the texts depend on how the stream was cut");
    let mut total = 0;
    for frame in &frames {
        match frame {
            Frame::Text(t) => {
                assert!(!t.is_empty(), "an empty text");
                assert!(
                    t.len() <= limit,
                    "a text of {} bytes kept, limit {limit}",
                    t.len()
                );
                total += t.len();
            }
            Frame::TooLong(n) => {
                assert!(*n > limit, "{n} bytes reported too long, limit {limit}");
                total += n;
            }
        }
    }
    assert!(
        total <= stream.len(),
        "{total} bytes of texts from {}",
        stream.len()
    );
});
