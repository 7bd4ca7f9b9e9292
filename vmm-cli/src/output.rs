//! Guest serial output, never blocking a vCPU for long, with no thread of
//! its own.
//!
//! COM1's output is written on a vCPU thread, under the device's lock. If
//! that write blocked (a full pipe whose reader stopped reading, a paused
//! terminal), the vCPU would stall inside `write`, where no kick reaches
//! it, and with it the whole VMM. So, as QEMU's vCPU threads write their
//! character devices and leave what would block to the main loop:
//!
//! - Where the output is a pipe, FIFO or terminal, the vCPU side writes
//!   each byte at once through a descriptor of its own opened non-blocking
//!   ([`nonblocking_twin`]). A full pipe or terminal makes it wait for
//!   room, up to [`BACKPRESSURE`], so a guest prints no faster than its
//!   reader reads, as behind a real UART; what still would block is
//!   appended to a bounded buffer, which the main loop writes out as the
//!   output takes more ([`Drain`], watching the descriptor for room). That
//!   wait holds COM1's lock (and this module's), so while a reader is
//!   stalled, a key typed into the console or a pause can wait as long: a
//!   kick that lands during the wait ends it, one that lands just before
//!   it does not (the bound is what keeps both short).
//! - While the buffer holds anything, newer output goes behind it, so the
//!   order is kept; once the main loop has written it all, the vCPU side
//!   writes directly again. When the buffer is full, newer output is
//!   dropped and counted (as a real UART loses characters nobody takes),
//!   never waited for.
//! - A socket (stdout under a service manager, `socat`) cannot be opened
//!   again: it is written with `send(MSG_DONTWAIT)` instead ([`SocketOut`]),
//!   which does not block whatever its description's flags, and is
//!   otherwise handled as a pipe.
//! - A regular file takes its bytes at once (a write never waits for a
//!   reader): the vCPU side writes it directly, as QEMU does.
//!
//! Nested (the test bed: L1's KVM under QEMU's TCG), a writer thread woken
//! for each burst of a verbose boot went with L2 boots under our VMM that
//! hung or reset far more often than QEMU's, and writing on the vCPU
//! thread did not (docs/nested/); a thread also cost every start its
//! creation and its seccomp filter. A direct write is one system call on a
//! thread that has exited to the VMM anyway.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How much guest output may wait for its reader.
pub const CAPACITY: usize = 1 << 20;
/// How long one direct write of the vCPU side waits at most for a full
/// pipe or terminal to take more, before the rest waits in the buffer.
pub const BACKPRESSURE: Duration = Duration::from_millis(50);

/// Where COM1's output goes.
pub struct Target {
    out: Box<dyn Write + Send>,
    /// `out`'s descriptor where `out` is non-blocking (it may answer "would
    /// block"): what the vCPU side and the main loop wait on for room.
    room: Option<RawFd>,
}

impl Target {
    /// Nowhere (`--serial none`).
    pub fn discard() -> Self {
        Self {
            out: Box::new(io::sink()),
            room: None,
        }
    }

    /// An output whose writes never wait for a reader (a regular file), or
    /// one that has no non-blocking twin (see [`nonblocking_twin`]): each
    /// write goes straight out on the vCPU thread.
    pub fn blocking(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Box::new(out),
            room: None,
        }
    }

    /// A non-blocking output: `twin` (a [`nonblocking_twin`]) as `wrap`
    /// makes it into a writer (itself, or a writer around it), whose
    /// descriptor is waited on for room.
    pub fn nonblocking<W: Write + Send + 'static>(
        twin: File,
        wrap: impl FnOnce(File) -> W,
    ) -> Self {
        let fd = twin.as_raw_fd();
        Self {
            out: Box::new(wrap(twin)),
            room: Some(fd),
        }
    }
}

impl Target {
    /// A socket `out` writes to, if it is one: written without blocking
    /// ([`SocketOut`]), waited on for room as a pipe's twin is.
    pub fn socket(out: &impl AsFd) -> Option<Self> {
        let fd = out.as_fd().try_clone_to_owned().ok()?;
        let kind = File::from(fd.try_clone().ok()?)
            .metadata()
            .ok()?
            .file_type();
        if !kind.is_socket() {
            return None;
        }
        let room = fd.as_raw_fd();
        Some(Self {
            out: Box::new(SocketOut(fd)),
            room: Some(room),
        })
    }
}

/// A socket written with `send(MSG_DONTWAIT | MSG_NOSIGNAL)`: "would
/// block" when it is full, without setting `O_NONBLOCK` on a description
/// other processes may share (a socket has no [`nonblocking_twin`]).
pub struct SocketOut(std::os::fd::OwnedFd);

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes, which send only
        // reads; the descriptor is ours for as long as `self`.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How far writing out the buffer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    /// All of it.
    Empty,
    /// The output would block.
    WouldBlock,
    /// The output failed (a reader that is gone): the buffer was dropped.
    Broken,
}

struct State {
    target: Target,
    buf: VecDeque<u8>,
    /// The output failed: everything from then on is dropped.
    broken: bool,
    dropped: u64,
    /// Bytes written directly by the vCPU side.
    direct_bytes: u64,
    /// Bytes that waited in the buffer.
    queued_bytes: u64,
}

impl State {
    /// Gives up on the output after an error other than "would block".
    fn break_off(&mut self, e: &io::Error) {
        if !self.broken {
            log::debug!("serial output: write failed ({e}); guest output is dropped from now on");
        }
        self.broken = true;
        self.dropped += self.buf.len() as u64;
        self.buf.clear();
    }

    /// Writes what it can of `bytes` directly, if nothing written earlier
    /// still waits (the order of the output is kept); returns how many
    /// bytes are done with (written, or dropped by a broken output).
    fn write_direct(&mut self, bytes: &[u8]) -> usize {
        if self.broken {
            self.dropped += bytes.len() as u64;
            return bytes.len();
        }
        if !self.buf.is_empty() {
            return 0;
        }
        let mut done = 0;
        let mut waited = Duration::ZERO;
        while done < bytes.len() {
            match self.target.out.write(&bytes[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A reader slower than the guest: wait a little for
                    // room, as a UART's guest waits for its transmitter;
                    // a kick (EINTR) or a reader that stays away leaves
                    // the rest to the buffer.
                    let Some(fd) = self.target.room else { break };
                    let left = BACKPRESSURE.saturating_sub(waited);
                    let started = Instant::now();
                    if left.is_zero() || !wait_for_room(fd, left) {
                        break;
                    }
                    waited += started.elapsed();
                }
                Err(e) => {
                    self.break_off(&e);
                    self.dropped += (bytes.len() - done) as u64;
                    return bytes.len();
                }
            }
        }
        if done > 0 && self.target.room.is_none() {
            // std's Stdout buffers lines; a file does not.
            let _ = self.target.out.flush();
        }
        self.direct_bytes += done as u64;
        done
    }

    /// Writes out what it can of the buffer without waiting.
    fn flush_buffer(&mut self) -> Flushed {
        while !self.buf.is_empty() {
            if self.broken {
                return Flushed::Broken;
            }
            let (front, _) = self.buf.as_slices();
            match self.target.out.write(front) {
                Ok(0) => return Flushed::WouldBlock,
                Ok(n) => {
                    self.buf.drain(..n.min(front.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::WouldBlock,
                Err(e) => {
                    self.break_off(&e);
                    return Flushed::Broken;
                }
            }
        }
        Flushed::Empty
    }
}

/// Waits up to `limit` for `fd` to take more; false on a timeout, a
/// signal (a vCPU kick) or an error.
fn wait_for_room(fd: RawFd, limit: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, which poll only writes `revents` of.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc == 1 && pfd.revents & libc::POLLOUT != 0
}

struct Shared {
    state: Mutex<State>,
    /// Tells the main loop ([`Drain`]) that the buffer has output.
    queued: EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU side: never blocks for longer than [`BACKPRESSURE`] a write.
/// The console's monitor writes its text through one too, in order with
/// the guest's and never blocking the main loop for longer.
#[derive(Clone)]
pub struct SerialSink {
    shared: Arc<Shared>,
}

impl Write for SerialSink {
    fn write(&mut self, all: &[u8]) -> io::Result<usize> {
        let mut s = self.shared.lock();
        let bytes = &all[s.write_direct(all)..];
        if bytes.is_empty() {
            return Ok(all.len());
        }
        let was_empty = s.buf.is_empty();
        let room = CAPACITY.saturating_sub(s.buf.len());
        let taken = if s.target.room.is_some() {
            bytes.len().min(room)
        } else {
            // Nothing would write it out later.
            0
        };
        s.buf.extend(&bytes[..taken]);
        s.queued_bytes += taken as u64;
        let lost = (bytes.len() - taken) as u64;
        if lost > 0 {
            if s.dropped == 0 {
                log::warn!("serial output is not being read: dropping guest output");
            }
            s.dropped += lost;
        }
        drop(s);
        if was_empty && taken > 0 {
            let _ = self.shared.queued.write(1);
        }
        // Dropped bytes count as written: the guest must not stall.
        Ok(all.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The buffer's other end: [`SerialOutput::drain`] for the main loop, and
/// [`SerialOutput::finish`] at the end.
pub struct SerialOutput {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOutput").finish_non_exhaustive()
    }
}

/// A second descriptor for the pipe or terminal `out` writes to, opened
/// non-blocking (through `/proc/self/fd`, so that the flag is not set on
/// the description `out` shares with other processes, as `fcntl` would);
/// `None` for anything else (a file, a socket) or if it cannot be opened.
pub fn nonblocking_twin(out: &impl AsFd) -> Option<File> {
    let fd = out.as_fd();
    let kind = File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .ok()?
        .file_type();
    if !(kind.is_fifo() || kind.is_char_device()) {
        return None;
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(file) => Some(file),
        Err(e) => {
            log::info!(
                "serial output: no non-blocking twin ({path}: {e}); a reader that stops \
                 reading will stall the guest's vCPU in its write"
            );
            None
        }
    }
}

/// The vCPU side and the other end for `target`.
pub fn new(target: Target) -> io::Result<(SerialSink, SerialOutput)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            target,
            buf: VecDeque::new(),
            broken: false,
            dropped: 0,
            direct_bytes: 0,
            queued_bytes: 0,
        }),
        queued: EventFd::new(EFD_NONBLOCK)?,
    });
    Ok((
        SerialSink {
            shared: Arc::clone(&shared),
        },
        SerialOutput { shared },
    ))
}

impl SerialOutput {
    /// Another writer beside the guest's (the console's monitor).
    pub fn sink(&self) -> SerialSink {
        SerialSink {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The main loop's part (a subscriber), for a non-blocking output; an
    /// output that never waits needs none.
    pub fn drain(&self) -> Option<Drain> {
        let fd = self.shared.lock().target.room?;
        Some(Drain {
            shared: Arc::clone(&self.shared),
            fd,
            watching: false,
        })
    }

    /// Writes out what is buffered, once nothing else writes (the vCPUs
    /// are gone). Waits as long as the output moves, but gives up once it
    /// has not moved for `stall_limit` (a reader that never reads must not
    /// keep the VMM from exiting). Returns how many bytes were dropped over
    /// the run.
    pub fn finish(self, stall_limit: Duration) -> u64 {
        let mut deadline = Instant::now() + stall_limit;
        let mut s = self.shared.lock();
        loop {
            let before = s.buf.len();
            if s.flush_buffer() != Flushed::WouldBlock {
                break;
            }
            let now = Instant::now();
            if s.buf.len() < before {
                deadline = now + stall_limit;
            }
            let left = deadline.saturating_duration_since(now);
            let fd = s.target.room;
            if left.is_zero() || fd.is_none() {
                log::warn!("serial output not fully written: its reader is not reading");
                let rest = s.buf.len() as u64;
                s.dropped += rest;
                s.buf.clear();
                break;
            }
            drop(s);
            if let Some(fd) = fd {
                wait_for_room(fd, left.min(Duration::from_millis(100)));
            }
            s = self.shared.lock();
        }
        let _ = s.target.out.flush();
        if s.direct_bytes > 0 && s.queued_bytes > 0 {
            // The reader was slower than the guest at times.
            log::info!(
                "serial output: {} bytes written directly, {} after waiting in the buffer",
                s.direct_bytes,
                s.queued_bytes
            );
        }
        s.dropped
    }
}

/// The main loop's part: writes the buffer out whenever the vCPU side has
/// queued output, and then whenever the output has room again (watched
/// only while something waits).
pub struct Drain {
    shared: Arc<Shared>,
    fd: RawFd,
    watching: bool,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("fd", &self.fd)
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

impl Drain {
    fn watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching {
            return;
        }
        let result = if on {
            ops.add(Events::new_raw(self.fd, EventSet::OUT))
        } else {
            ops.remove(Events::empty_raw(self.fd))
        };
        match result {
            Ok(()) => self.watching = on,
            Err(e) => {
                // Left to the next queued output, and to the end.
                log::warn!("serial output: cannot watch the output for room: {e:?}");
            }
        }
    }

    fn pump(&mut self, ops: &mut EventOps) {
        let flushed = self.shared.lock().flush_buffer();
        self.watch(ops, flushed == Flushed::WouldBlock);
    }
}

impl MutEventSubscriber for Drain {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.shared.queued, EventSet::IN)) {
            log::error!("serial output: cannot watch the buffer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.shared.queued.as_raw_fd() {
            let _ = self.shared.queued.read();
        }
        self.pump(ops);
    }
}

#[cfg(test)]
mod tests;
