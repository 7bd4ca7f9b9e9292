//! The incoming stream, on the migration thread: one source accepted, the
//! stream checked as it comes ([`crate::snapshot::stream`]), each page
//! written into the guest's RAM (no vCPU has run: the machine waits in
//! `inmigrate`), and the state sections handed to the main loop, which
//! puts them on the machine and starts it.

use std::io::BufReader;

use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;

use super::transport::{self, Listener};
use super::MigrationUri;
use crate::snapshot::format::{Section, Shape, PAGE};
use crate::snapshot::stream::{self, Item, StreamReader};

/// Where the stream comes from.
#[derive(Debug)]
pub enum From {
    /// Set up already (`--incoming`, at start-up).
    Ready(Listener),
    /// To listen at first (`migrate-incoming`): the URI, whether `exec:`
    /// may start its command, and where to say whether the listening (or
    /// the command's start) worked, before anything is received: the main
    /// thread answers `migrate-incoming` with it, as QEMU does, so that a
    /// port in use is the command's error and the machine waits on.
    Uri(
        MigrationUri,
        bool,
        std::sync::mpsc::SyncSender<Result<(), String>>,
    ),
}

/// An incoming migration.
#[derive(Debug)]
pub struct RecvJob {
    /// Where from.
    pub from: From,
    /// The guest's RAM.
    pub memory: GuestRam,
    /// This machine's shape, which the stream's must match.
    pub shape: Shape,
}

/// Receives the stream: its RAM into the guest, its state sections back;
/// `None` when [`From::Uri`]'s listening failed (already reported there).
pub fn run(job: RecvJob) -> Option<Result<Vec<Section>, String>> {
    let listener = match job.from {
        From::Ready(l) => l,
        From::Uri(uri, spawn_allowed, listening) => match transport::listen(&uri, spawn_allowed) {
            Ok(l) => {
                let _ = listening.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = listening.send(Err(e));
                return None;
            }
        },
    };
    Some(receive(listener, &job.memory, &job.shape))
}

fn receive(listener: Listener, memory: &GuestRam, shape: &Shape) -> Result<Vec<Section>, String> {
    let source = listener.accept()?;
    let result = read(source.input, memory, shape);
    if let Some(mut child) = source.child {
        match child.wait() {
            Ok(status) if !status.success() => {
                log::warn!("the incoming exec: command ended with {status}")
            }
            Ok(_) => {}
            Err(e) => log::warn!("the incoming exec: command: {e}"),
        }
    }
    result
}

fn read(
    input: Box<dyn std::io::Read + Send>,
    memory: &GuestRam,
    shape: &Shape,
) -> Result<Vec<Section>, String> {
    let text = |e: stream::StreamError| e.to_string();
    let mut r =
        StreamReader::open(BufReader::with_capacity(1 << 20, input), shape).map_err(text)?;
    let zeroes = [0u8; PAGE];
    let mut page = [0u8; PAGE];
    let ram_error = |e: vm_memory::GuestMemoryError| format!("guest RAM: {e}");
    loop {
        match r.next_item().map_err(text)? {
            Item::Pages(data) => {
                for (gpa, bytes) in stream::pages(&data, &shape.ram).map_err(text)? {
                    let at = GuestAddress(gpa);
                    match bytes {
                        Some(bytes) => memory.write_slice(bytes, at).map_err(ram_error)?,
                        // Zeroes: written only where the page holds
                        // something (an earlier copy of it).
                        None => {
                            memory.read_slice(&mut page, at).map_err(ram_error)?;
                            if page != zeroes {
                                memory.write_slice(&zeroes, at).map_err(ram_error)?;
                            }
                        }
                    }
                }
            }
            Item::State(sections) => return Ok(sections),
        }
    }
}
