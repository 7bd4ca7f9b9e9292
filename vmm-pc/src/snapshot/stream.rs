//! The live-migration stream (`migrate` over `tcp:`, `unix:`, `exec:`):
//! the snapshot file's framing ([`super::format`]: named sections, each
//! with its length and CRC-32) under another magic, sent in the order the
//! pre-copy produces it:
//!
//! ```text
//! "VMMMIGR\0"   8 bytes, the magic
//! version       u32 little-endian (STREAM_VERSION)
//! shape         the section a snapshot starts with (format::Shape)
//! pages*        RAM pages, any number of sections, each up to
//!               MAX_CHUNK_PAGES records: guest address u64 LE, kind u8
//!               (0: a page of zeroes, 1: 4096 bytes follow)
//! vcpus irqchip kvm-pit clocks devices [runstate]
//!               the machine's state, once each, after the last pages
//!               (the same sections as a snapshot file's); `runstate`
//!               only from a machine whose guest is in S3
//!               ([`super::runstate`])
//! end           name length 0
//! ```
//!
//! A page may come several times (sent again after the guest dirtied
//! it): the last copy wins. The reader treats the stream as untrusted:
//! every section's length is bounded before it is read, its checksum
//! checked, every page address must be a whole page inside this
//! machine's RAM, the state comes once and only after the pages, and a
//! cut, damaged or foreign stream is an error naming what is wrong.

use std::io::{self, Read, Write};

use super::format::{self, FormatError, Section, Shape, PAGE};
use super::runstate;

/// The stream's first bytes.
pub const MAGIC: [u8; 8] = *b"VMMMIGR\0";
/// The layout this build sends and takes.
///
/// 2 (2026-12-05 evening): the shape holds the vCPUs' CPUID (as the
/// snapshot file's version 3).
pub const STREAM_VERSION: u32 = 2;
/// Pages in one `pages` section at most.
pub const MAX_CHUNK_PAGES: usize = 256;
/// One page record's header: address and kind.
const RECORD_HEADER: usize = 9;
/// The largest `pages` section.
const MAX_CHUNK_BYTES: u64 = (MAX_CHUNK_PAGES * (RECORD_HEADER + PAGE)) as u64;
/// The largest state section (vCPUs, devices: JSON well under this).
const MAX_STATE_BYTES: u64 = 16 << 20;
/// The state sections, in the order they are sent.
pub const STATE_SECTIONS: [&str; 5] = ["vcpus", "irqchip", "kvm-pit", "clocks", "devices"];

/// Why an incoming stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The framing: magic, version, a cut, a checksum, a length.
    #[error("{0}")]
    Format(#[from] FormatError),
    /// The stream is for a machine of another shape.
    #[error("{0}")]
    Shape(String),
    /// A section this build does not know.
    #[error("unknown section '{0}'")]
    Unknown(String),
    /// A state section twice.
    #[error("section '{0}' appears twice")]
    Duplicate(String),
    /// RAM pages after the state.
    #[error("RAM pages after the machine's state")]
    PagesAfterState,
    /// A `pages` section that does not decode.
    #[error("a pages section is malformed ({0})")]
    Pages(&'static str),
    /// A page that is not a whole page of this machine's RAM.
    #[error("page address {0:#x} is not a page of this machine's RAM")]
    OutsideRam(u64),
    /// The stream ended without a state section.
    #[error("the stream ended without the '{0}' section")]
    Missing(&'static str),
}

/// Builds `pages` sections: page records up to [`MAX_CHUNK_PAGES`].
#[derive(Debug, Default)]
pub struct PageChunk {
    buf: Vec<u8>,
    pages: usize,
}

impl PageChunk {
    /// Adds the page at `gpa` holding `data` (4096 bytes); a page of
    /// zeroes costs its header only. Returns whether it was all zeroes.
    pub fn push(&mut self, gpa: u64, data: &[u8]) -> bool {
        self.buf.extend_from_slice(&gpa.to_le_bytes());
        let zero = data.iter().all(|&b| b == 0);
        if zero {
            self.buf.push(0);
        } else {
            self.buf.push(1);
            self.buf.extend_from_slice(data);
        }
        self.pages += 1;
        zero
    }

    /// Whether another page would not fit.
    pub fn is_full(&self) -> bool {
        self.pages >= MAX_CHUNK_PAGES
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Writes the chunk as a `pages` section and empties it; returns the
    /// bytes written.
    pub fn flush(&mut self, w: &mut impl Write) -> io::Result<u64> {
        if self.pages == 0 {
            return Ok(0);
        }
        format::write_section(w, "pages", &self.buf)?;
        let n = self.buf.len() as u64 + 8 + 2 + 5 + 4;
        self.buf.clear();
        self.pages = 0;
        Ok(n)
    }
}

/// Writes the stream's start: the magic, the version, `shape`.
pub fn write_start(w: &mut impl Write, shape: &Shape) -> io::Result<()> {
    w.write_all(&MAGIC)?;
    w.write_all(&STREAM_VERSION.to_le_bytes())?;
    let shape = serde_json::to_vec(shape).map_err(io::Error::other)?;
    format::write_section(w, "shape", &shape)
}

/// Writes the machine's state sections and the end mark.
pub fn write_state(w: &mut impl Write, state: &[(&'static str, Vec<u8>)]) -> io::Result<()> {
    for (name, data) in state {
        format::write_section(w, name, data)?;
    }
    format::write_end(w)
}

/// A page from the stream: its guest address and bytes (`None`: zeroes).
pub type Page<'a> = (u64, Option<&'a [u8]>);

/// What [`StreamReader::next_item`] read.
#[derive(Debug)]
pub enum Item {
    /// A `pages` section, checked: decode it with [`pages`].
    Pages(Vec<u8>),
    /// The end: the state sections, each once, in any order.
    State(Vec<Section>),
}

/// Reads a stream for a machine of shape `ours`.
#[derive(Debug)]
pub struct StreamReader<R> {
    r: R,
    ram: Vec<(u64, u64)>,
}

impl<R: Read> StreamReader<R> {
    /// Reads the header and the shape, and checks it against `ours`.
    pub fn open(mut r: R, ours: &Shape) -> Result<Self, StreamError> {
        format::read_header(&mut r, &MAGIC, STREAM_VERSION)?;
        let first = format::read_section(&mut r, |_| MAX_STATE_BYTES)?;
        let shape = format::decode_shape(first.as_ref())?;
        if let Some(why) = shape.difference(ours) {
            return Err(StreamError::Shape(why));
        }
        Ok(Self {
            r,
            ram: ours.ram.clone(),
        })
    }

    /// The next `pages` section, or the state at the end.
    pub fn next_item(&mut self) -> Result<Item, StreamError> {
        let limit = |name: &str| match name {
            "pages" => MAX_CHUNK_BYTES,
            runstate::SECTION => runstate::MAX_BYTES as u64,
            _ => MAX_STATE_BYTES,
        };
        let mut state: Vec<Section> = Vec::new();
        loop {
            let Some(section) = format::read_section(&mut self.r, limit)? else {
                if state.is_empty() {
                    return Err(StreamError::Missing(STATE_SECTIONS[0]));
                }
                if let Some(missing) = STATE_SECTIONS
                    .iter()
                    .find(|n| !state.iter().any(|s| s.name == **n))
                {
                    return Err(StreamError::Missing(missing));
                }
                return Ok(Item::State(state));
            };
            if section.name == "pages" {
                if !state.is_empty() {
                    return Err(StreamError::PagesAfterState);
                }
                pages(&section.data, &self.ram)?;
                return Ok(Item::Pages(section.data));
            }
            if !is_state_section(&section.name) {
                return Err(StreamError::Unknown(section.name));
            }
            if state.iter().any(|s| s.name == section.name) {
                return Err(StreamError::Duplicate(section.name));
            }
            state.push(section);
        }
    }
}

/// Whether `name` is one of the machine's state sections: the
/// [`STATE_SECTIONS`] every stream and snapshot file has, or the optional
/// [`runstate::SECTION`].
pub fn is_state_section(name: &str) -> bool {
    STATE_SECTIONS.contains(&name) || name == runstate::SECTION
}

/// Decodes a `pages` section for a machine whose RAM is `ram` (guest
/// address, bytes): every record checked.
pub fn pages<'a>(data: &'a [u8], ram: &[(u64, u64)]) -> Result<Vec<Page<'a>>, StreamError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if out.len() >= MAX_CHUNK_PAGES {
            return Err(StreamError::Pages("too many pages"));
        }
        let (head, tail) = rest
            .split_at_checked(RECORD_HEADER)
            .ok_or(StreamError::Pages("a record cut short"))?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&head[..8]);
        let gpa = u64::from_le_bytes(word);
        let inside = gpa % PAGE as u64 == 0
            && ram.iter().any(|&(start, len)| {
                gpa >= start
                    && gpa
                        .checked_add(PAGE as u64)
                        .is_some_and(|e| e <= start + len)
            });
        if !inside {
            return Err(StreamError::OutsideRam(gpa));
        }
        match head[8] {
            0 => {
                out.push((gpa, None));
                rest = tail;
            }
            1 => {
                let (page, tail) = tail
                    .split_at_checked(PAGE)
                    .ok_or(StreamError::Pages("a page cut short"))?;
                out.push((gpa, Some(page)));
                rest = tail;
            }
            _ => return Err(StreamError::Pages("a record of unknown kind")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            cpus: 1,
            ram: vec![(0, 16 * PAGE as u64)],
            kvm_pit: false,
            devices: vec![],
            cpuid: vec![],
        }
    }

    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        write_start(&mut out, &shape()).unwrap();
        let mut chunk = PageChunk::default();
        assert!(!chunk.push(0x1000, &[7u8; PAGE]));
        assert!(chunk.push(0x2000, &[0u8; PAGE]));
        chunk.flush(&mut out).unwrap();
        let state: Vec<(&'static str, Vec<u8>)> = STATE_SECTIONS
            .iter()
            .map(|n| (*n, b"{}".to_vec()))
            .collect();
        write_state(&mut out, &state).unwrap();
        out
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<Page<'static>>, usize), StreamError> {
        let mut r = StreamReader::open(bytes, &shape())?;
        let mut got = Vec::new();
        loop {
            match r.next_item()? {
                Item::Pages(data) => {
                    let data: &'static [u8] = Box::leak(data.into_boxed_slice());
                    got.extend(pages(data, &shape().ram)?);
                }
                Item::State(s) => return Ok((got, s.len())),
            }
        }
    }

    #[test]
    fn a_stream_reads_back() {
        let (pages, state) = read_all(&stream()).unwrap();
        assert_eq!(state, 5);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].0, 0x1000);
        assert_eq!(pages[0].1.unwrap(), &[7u8; PAGE][..]);
        assert_eq!(pages[1], (0x2000, None));
    }

    #[test]
    fn the_runstate_section_is_taken_once_and_bounded() {
        let with = |extra: &[(&'static str, Vec<u8>)]| {
            let mut out = Vec::new();
            write_start(&mut out, &shape()).unwrap();
            let mut state: Vec<(&'static str, Vec<u8>)> = STATE_SECTIONS
                .iter()
                .map(|n| (*n, b"{}".to_vec()))
                .collect();
            state.extend_from_slice(extra);
            write_state(&mut out, &state).unwrap();
            out
        };
        let suspended = runstate::SavedRunState::Suspended.encode();
        let (_, n) = read_all(&with(&[(runstate::SECTION, suspended.clone())])).unwrap();
        assert_eq!(n, 6);
        let twice = with(&[
            (runstate::SECTION, suspended.clone()),
            (runstate::SECTION, suspended),
        ]);
        assert!(matches!(read_all(&twice), Err(StreamError::Duplicate(_))));
        let big = with(&[(runstate::SECTION, vec![b' '; runstate::MAX_BYTES + 1])]);
        let e = read_all(&big).unwrap_err().to_string();
        assert!(e.contains("more than the"), "{e}");
        // Alone, it is not the state.
        let mut alone = Vec::new();
        write_start(&mut alone, &shape()).unwrap();
        write_state(&mut alone, &[(runstate::SECTION, b"{}".to_vec())]).unwrap();
        assert!(matches!(
            read_all(&alone),
            Err(StreamError::Missing("vcpus"))
        ));
    }

    #[test]
    fn truncated_corrupted_and_foreign_streams_are_errors() {
        let good = stream();
        for cut in 0..good.len() {
            assert!(read_all(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        let at = good.len() / 2;
        flipped[at] ^= 0x40;
        let e = read_all(&flipped).unwrap_err().to_string();
        assert!(e.contains("CRC-32") || e.contains("malformed"), "{e}");
        for other in [1u8, 3] {
            let mut v = good.clone();
            v[8] = other;
            assert_eq!(
                read_all(&v).unwrap_err().to_string(),
                format!("format version {other}, this build reads 2")
            );
        }
        let mut snap = good.clone();
        snap[..8].copy_from_slice(&format::MAGIC);
        assert!(read_all(&snap).unwrap_err().to_string().contains("magic"));
        let other = Shape { cpus: 2, ..shape() };
        let e = StreamReader::open(&good[..], &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 vCPUs") || e.contains("1 vCPUs"), "{e}");
    }

    #[test]
    fn pages_outside_ram_or_malformed_are_refused() {
        let ram = shape().ram;
        let rec = |gpa: u64, kind: u8| {
            let mut v = gpa.to_le_bytes().to_vec();
            v.push(kind);
            v
        };
        assert!(matches!(
            pages(&rec(16 * PAGE as u64, 0), &ram),
            Err(StreamError::OutsideRam(_))
        ));
        assert!(matches!(
            pages(&rec(0x1001, 0), &ram),
            Err(StreamError::OutsideRam(_))
        ));
        assert!(matches!(
            pages(&rec(!0xfff, 0), &ram),
            Err(StreamError::OutsideRam(_))
        ));
        assert!(pages(&rec(0, 9), &ram).is_err());
        assert!(pages(&rec(0, 1), &ram).is_err());
        assert!(pages(&rec(0, 0)[..5], &ram).is_err());
        // A section bigger than a chunk is refused before it is read.
        let mut big = Vec::new();
        write_start(&mut big, &shape()).unwrap();
        big.extend_from_slice(&5u16.to_le_bytes());
        big.extend_from_slice(b"pages");
        big.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = read_all(&big).unwrap_err().to_string();
        assert!(e.contains("more than the"), "{e}");
        // State twice, pages after the state, an unknown section.
        let mut twice = Vec::new();
        write_start(&mut twice, &shape()).unwrap();
        format::write_section(&mut twice, "vcpus", b"1").unwrap();
        format::write_section(&mut twice, "vcpus", b"1").unwrap();
        assert!(read_all(&twice).unwrap_err().to_string().contains("twice"));
        let mut late = Vec::new();
        write_start(&mut late, &shape()).unwrap();
        format::write_section(&mut late, "clocks", b"1").unwrap();
        format::write_section(&mut late, "pages", &rec(0, 0)).unwrap();
        assert!(matches!(read_all(&late), Err(StreamError::PagesAfterState)));
        let mut unknown = Vec::new();
        write_start(&mut unknown, &shape()).unwrap();
        format::write_section(&mut unknown, "ram@0", b"1").unwrap();
        assert!(matches!(read_all(&unknown), Err(StreamError::Unknown(_))));
        let mut partial = Vec::new();
        write_start(&mut partial, &shape()).unwrap();
        format::write_section(&mut partial, "vcpus", b"1").unwrap();
        format::write_end(&mut partial).unwrap();
        assert!(matches!(
            read_all(&partial),
            Err(StreamError::Missing("irqchip"))
        ));
    }
}
