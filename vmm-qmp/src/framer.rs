//! Splits a byte stream into JSON texts, as QEMU's JSON streamer does: by
//! bracket depth, outside strings, so requests may arrive back to back,
//! without newlines, or a byte at a time.
//!
//! A text is complete when its outermost `{…}` or `[…]` closes; a scalar at
//! the top level (`42`, `nul`, stray bytes) ends at whitespace or at the next
//! bracket. A text longer than the limit is not kept: its bytes are counted
//! and dropped until it ends, then it is reported as [`Frame::TooLong`], so
//! the stream stays in step and nothing grows without bound.

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete JSON text (not yet parsed).
    Text(Vec<u8>),
    /// A text that went past the limit; its length in bytes.
    TooLong(usize),
}

/// Stream-to-texts splitter with a size limit per text.
#[derive(Debug)]
pub struct Framer {
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of the current text, kept or not.
    len: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// A top-level scalar is being read.
    scalar: bool,
}

impl Framer {
    /// A framer that refuses texts longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            buf: Vec::new(),
            len: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            scalar: false,
        }
    }

    /// Whether part of a text is pending.
    pub fn is_partial(&self) -> bool {
        self.len > 0
    }

    fn push(&mut self, byte: u8) {
        self.len += 1;
        if self.len <= self.limit {
            self.buf.push(byte);
        } else {
            // Past the limit: free what was kept, count the rest.
            self.buf = Vec::new();
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        let frame = if self.len > self.limit {
            Frame::TooLong(self.len)
        } else {
            Frame::Text(std::mem::take(&mut self.buf))
        };
        out.push(frame);
        self.len = 0;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        self.scalar = false;
    }

    /// Feeds `bytes`; returns the texts they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in bytes {
            self.byte(b, &mut out);
        }
        out
    }

    /// Feeds `bytes` only up to the first byte that completes a text, so
    /// that the rest may wait: returns the texts that byte completed (one,
    /// or two when a bracket ends a scalar and is a stray text itself) and
    /// how many bytes were taken. No text: every byte was taken.
    pub fn feed_until_text(&mut self, bytes: &[u8]) -> (Vec<Frame>, usize) {
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            self.byte(b, &mut out);
            if !out.is_empty() {
                return (out, i + 1);
            }
        }
        (out, bytes.len())
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.in_string {
            self.push(b);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.scalar && self.depth == 0 {
                    // A top-level string ends with its quote.
                    self.finish(out);
                }
            }
            return;
        }
        if self.scalar {
            if b.is_ascii_whitespace() {
                self.finish(out);
                return;
            }
            if matches!(b, b'{' | b'[' | b'}' | b']') {
                self.finish(out);
                // Fall through: the bracket starts or is a new text.
            } else {
                self.push(b);
                return;
            }
        }
        match b {
            b'{' | b'[' => {
                self.push(b);
                self.depth += 1;
            }
            b'}' | b']' => {
                self.push(b);
                if self.depth <= 1 {
                    // Closes the text (or is stray at the top level).
                    self.finish(out);
                } else {
                    self.depth -= 1;
                }
            }
            b'"' => {
                self.push(b);
                self.in_string = true;
                if self.depth == 0 {
                    self.scalar = true;
                }
            }
            _ if b.is_ascii_whitespace() => {
                if self.depth > 0 {
                    self.push(b);
                }
            }
            _ => {
                self.push(b);
                if self.depth == 0 {
                    self.scalar = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(frames: Vec<Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Text(t) => String::from_utf8(t).unwrap(),
                Frame::TooLong(n) => format!("<{n}>"),
            })
            .collect()
    }

    #[test]
    fn back_to_back_objects_without_newlines() {
        let mut f = Framer::new(1024);
        let got = texts(f.feed(br#"{"execute":"a"}{"execute":"b","id":[1,{"x":"}"}]}"#));
        assert_eq!(
            got,
            [
                r#"{"execute":"a"}"#,
                r#"{"execute":"b","id":[1,{"x":"}"}]}"#
            ]
        );
        assert!(!f.is_partial());
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut f = Framer::new(1024);
        let input = br#" {"a": "b\"}{", "c": [1, 2]}  {"d":{}}"#;
        let mut got = Vec::new();
        for b in input {
            got.extend(texts(f.feed(&[*b])));
        }
        assert_eq!(got, [r#"{"a": "b\"}{", "c": [1, 2]}"#, r#"{"d":{}}"#]);
    }

    #[test]
    fn scalars_and_stray_brackets_are_texts_of_their_own() {
        let mut f = Framer::new(1024);
        let got = texts(f.feed(b"42 nul\n\"str\"} ] {\"ok\":1}"));
        assert_eq!(got, ["42", "nul", "\"str\"", "}", "]", r#"{"ok":1}"#]);
        let got = texts(f.feed(b"abc{\"x\":1}"));
        assert_eq!(got, ["abc", r#"{"x":1}"#]);
    }

    #[test]
    fn a_text_past_the_limit_is_counted_not_kept_and_the_stream_recovers() {
        let mut f = Framer::new(64);
        let mut big = br#"{"execute":"x","arguments":{"pad":""#.to_vec();
        big.extend(std::iter::repeat_n(b'a', 1 << 20));
        big.extend_from_slice(br#""}}{"execute":"next"}"#);
        let frames = f.feed(&big);
        assert_eq!(frames.len(), 2);
        assert!(matches!(frames[0], Frame::TooLong(n) if n > 1 << 20));
        assert_eq!(frames[1], Frame::Text(br#"{"execute":"next"}"#.to_vec()));
        assert!(f.buf.capacity() < 1024, "nothing big kept");
    }

    #[test]
    fn partial_input_waits() {
        let mut f = Framer::new(1024);
        assert!(f.feed(br#"{"execute": "qmp_cap"#).is_empty());
        assert!(f.is_partial());
        assert_eq!(
            texts(f.feed(br#"abilities"}"#)),
            [r#"{"execute": "qmp_capabilities"}"#]
        );
    }

    #[test]
    fn feeding_until_a_text_leaves_the_rest() {
        let mut f = Framer::new(1024);
        let input = br#"{"a":1} {"b":2}abc}"#;
        let (got, used) = f.feed_until_text(input);
        assert_eq!(texts(got), [r#"{"a":1}"#]);
        assert_eq!(used, 7);
        let (got, used2) = f.feed_until_text(&input[used..]);
        assert_eq!(texts(got), [r#"{"b":2}"#]);
        let rest = &input[used + used2..];
        assert_eq!(rest, b"abc}");
        // A bracket that ends a scalar and is stray itself: two at once.
        let (got, used3) = f.feed_until_text(rest);
        assert_eq!(texts(got), ["abc", "}"]);
        assert_eq!(used3, rest.len());
        let (got, used4) = f.feed_until_text(br#"{"c""#);
        assert!(got.is_empty());
        assert_eq!(used4, 4);
        assert!(f.is_partial());
    }
}
