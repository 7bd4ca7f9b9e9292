//! Guest serial output, decoupled from the vCPUs.
//!
//! COM1's output is written on a vCPU thread, under the device's lock. If
//! that write blocked (a full pipe whose reader stopped reading, a paused
//! terminal), the vCPU would stall inside `write`, where no kick reaches
//! it, and with it the whole VMM. So the vCPU side never blocks for
//! long:
//!
//! - Where the output is a pipe or a terminal, the vCPU side writes each
//!   byte at once through a descriptor of its own opened non-blocking
//!   ([`nonblocking_twin`]), as QEMU's vCPU threads write their
//!   character devices. A full pipe or terminal makes it wait for room,
//!   up to [`BACKPRESSURE`], so a guest prints no faster than its reader
//!   reads, as behind a real UART; only what still would block goes to
//!   the writer thread. That wait holds COM1's lock (and this module's),
//!   so while a reader is stalled, a key typed into the console or a
//!   pause can wait as long: a kick that lands during the wait ends it,
//!   one that lands just before it does not (the bound is what keeps
//!   both short).
//! - Everything else (a file, output that would block) is appended to a
//!   bounded buffer that a writer thread of its own writes out with
//!   blocking writes. When the buffer is full, newer output is dropped and
//!   counted (as a real UART loses characters nobody takes), never waited
//!   for. Once the writer has caught up, the vCPU side writes directly
//!   again, so the order of the output is kept.
//!
//! Why not always the writer thread: waking it costs a futex call on the
//! vCPU thread, a wake-up on another CPU and, to gather bytes into fewer
//! writes, a timed wait. Nested (the test bed: L1's KVM under QEMU's TCG),
//! those cross-CPU wake-ups during a verbose boot went with L2 boots under
//! our VMM that hung or reset far more often than QEMU's, and writing on
//! the vCPU thread did not (docs/nested/). A direct write is one system
//! call on a thread that has exited to the VMM anyway.
//!
//! When the writer thread does the writing, it lets more output gather for
//! [`COALESCE`] between two writes instead of a write per byte.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much guest output may wait for the writer.
pub const CAPACITY: usize = 1 << 20;
/// How long a busy writer lets output gather between two writes.
pub const COALESCE: Duration = Duration::from_millis(1);
/// How long one direct write of the vCPU side waits at most for a full
/// pipe or terminal to take more, before the writer thread takes over.
pub const BACKPRESSURE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    closed: bool,
    dropped: u64,
    /// Bytes the writer has handed on so far (its progress).
    written: u64,
    /// The writer is blocked waiting for output (only then is it woken).
    idle: bool,
    /// The writer holds output it has not yet written out.
    busy: bool,
    /// The output's non-blocking twin, for the vCPU side's direct writes;
    /// dropped after an error other than "would block".
    direct: Option<File>,
    /// Bytes written directly by the vCPU side.
    direct_bytes: u64,
    /// Bytes handed to the writer thread.
    queued_bytes: u64,
}

impl State {
    /// Writes what it can of `bytes` directly, if nothing written earlier
    /// is still on its way (the order of the output is kept); returns how
    /// many bytes went out.
    fn write_direct(&mut self, bytes: &[u8]) -> usize {
        if !self.buf.is_empty() || self.busy {
            return 0;
        }
        let Some(direct) = self.direct.as_mut() else {
            return 0;
        };
        let mut done = 0;
        let mut waited = Duration::ZERO;
        while done < bytes.len() {
            match direct.write(&bytes[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A reader slower than the guest: wait a little for
                    // room, as a UART's guest waits for its transmitter;
                    // a kick (EINTR) or a reader that stays away hands the
                    // rest to the writer thread.
                    let left = BACKPRESSURE.saturating_sub(waited);
                    let started = Instant::now();
                    if left.is_zero() || !wait_for_room(direct, left) {
                        break;
                    }
                    waited += started.elapsed();
                }
                Err(e) => {
                    // The writer thread meets the same error on its
                    // descriptor and deals with it (drops the output).
                    log::debug!(
                        "serial output: direct write failed ({e}); the writer thread takes over"
                    );
                    self.direct = None;
                    break;
                }
            }
        }
        self.written += done as u64;
        self.direct_bytes += done as u64;
        done
    }
}

/// Waits up to `limit` for `out` to take more; false on a timeout, a
/// signal (a vCPU kick) or an error.
fn wait_for_room(out: &File, limit: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: out.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, which poll only writes `revents` of.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc == 1 && pfd.revents & libc::POLLOUT != 0
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU side: never blocks for longer than [`BACKPRESSURE`] a write.
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
        let room = CAPACITY.saturating_sub(s.buf.len());
        let taken = bytes.len().min(room);
        s.buf.extend(&bytes[..taken]);
        s.queued_bytes += taken as u64;
        let lost = (bytes.len() - taken) as u64;
        if lost > 0 {
            if s.dropped == 0 {
                log::warn!("serial output is not being read: dropping guest output");
            }
            s.dropped += lost;
        }
        let wake = s.idle && taken > 0;
        drop(s);
        if wake {
            self.shared.wake.notify_one();
        }
        // Dropped bytes count as written: the guest must not stall.
        Ok(all.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer thread; [`SerialOutput::finish`] flushes and stops it.
pub struct SerialOutput {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected once the thread has ended.
    ended: mpsc::Receiver<()>,
    /// The outcome of the thread's start function, until taken.
    started: Option<mpsc::Receiver<io::Result<()>>>,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOutput").finish_non_exhaustive()
    }
}

/// What the writer thread runs first, before it takes any output (its
/// seccomp filter); an error ends the thread, and [`SerialOutput::started`]
/// returns it.
pub type ThreadStart = Box<dyn FnOnce() -> io::Result<()> + Send>;

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
            log::debug!("serial output: no non-blocking twin ({path}: {e}); all output goes through the writer thread");
            None
        }
    }
}

/// Starts a writer thread for `out`; returns the sink for COM1 and the
/// handle to finish it.
#[cfg(test)]
pub fn spawn(out: Box<dyn Write + Send>) -> io::Result<(SerialSink, SerialOutput)> {
    spawn_with(out, None, Box::new(|| Ok(())))
}

/// [`spawn`], with `direct` (`out`'s [`nonblocking_twin`]) for the vCPU
/// side's direct writes and `start` run first on the writer thread.
/// Returns at once: `start` runs beside the caller's own set-up (a filter
/// takes about 0.1 ms to install); [`SerialOutput::started`] waits for its
/// outcome.
pub fn spawn_with(
    mut out: Box<dyn Write + Send>,
    direct: Option<File>,
    start: ThreadStart,
) -> io::Result<(SerialSink, SerialOutput)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            direct,
            ..State::default()
        }),
        wake: Condvar::new(),
    });
    let worker = Arc::clone(&shared);
    // Dropped when the thread ends, which wakes `finish` at once.
    let (ended_tx, ended) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::sync_channel::<io::Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name("serial out".into())
        .spawn(move || {
            let _ended = ended_tx;
            let result = start();
            let failed = result.is_err();
            let _ = started_tx.send(result);
            if failed {
                return;
            }
            loop {
                let (chunk, closed) = {
                    let mut s = worker.lock();
                    while s.buf.is_empty() && !s.closed {
                        s.idle = true;
                        s = worker.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                        s.idle = false;
                    }
                    s.busy = !s.buf.is_empty();
                    (s.buf.drain(..).collect::<Vec<u8>>(), s.closed)
                };
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    match out.write(rest) {
                        Ok(0) => break,
                        Ok(n) => {
                            rest = &rest[n.min(rest.len())..];
                            worker.lock().written += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // A reader that is gone: drop this chunk and go on
                        // draining, so that nothing waits.
                        Err(_) => break,
                    }
                }
                if !chunk.is_empty() {
                    let _ = out.flush();
                    worker.lock().busy = false;
                }
                if closed && worker.lock().buf.is_empty() {
                    return;
                }
                if !closed && !chunk.is_empty() {
                    // Not idle, so the vCPU side does not wake it: only
                    // `finish` (or the time) ends this wait. A futex wait,
                    // as every other, within the thread's seccomp list.
                    let s = worker.lock();
                    if !s.closed {
                        let _ = worker.wake.wait_timeout(s, COALESCE);
                    }
                }
            }
        })?;
    Ok((
        SerialSink {
            shared: Arc::clone(&shared),
        },
        SerialOutput {
            shared,
            thread: Some(thread),
            ended,
            started: Some(started),
        },
    ))
}

impl SerialOutput {
    /// Waits for the thread's start function (see [`spawn_with`]) and
    /// returns its outcome; later calls return `Ok`.
    pub fn started(&mut self) -> io::Result<()> {
        match self.started.take() {
            Some(rx) => rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other("the serial output thread ended at start"))
            }),
            None => Ok(()),
        }
    }

    /// Writes out what is buffered. Waits as long as the output moves, but
    /// gives up once it has not moved for `stall_limit` (a reader that never
    /// reads must not keep the VMM from exiting). Returns how many bytes
    /// were dropped over the run.
    pub fn finish(mut self, stall_limit: Duration) -> u64 {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let mut progress = self.shared.lock().written;
        let mut deadline = Instant::now() + stall_limit;
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(mpsc::RecvTimeoutError::Disconnected) =
                    self.ended.recv_timeout(left.min(Duration::from_millis(10)))
                {
                    // Ended: its last instructions after that.
                    while !thread.is_finished() {
                        std::thread::yield_now();
                    }
                    break;
                }
                let now = self.shared.lock().written;
                if now != progress {
                    progress = now;
                    deadline = Instant::now() + stall_limit;
                }
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::warn!("serial output not fully written: its reader is not reading");
            }
        }
        let s = self.shared.lock();
        if s.direct_bytes > 0 && s.queued_bytes > 0 {
            // The reader was slower than the guest at times.
            log::info!(
                "serial output: {} bytes written directly, {} through the writer thread",
                s.direct_bytes,
                s.queued_bytes
            );
        }
        s.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[derive(Clone, Default)]
    struct Shared2(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared2 {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_start_is_reported_by_started() {
        let out = Shared2::default();
        let (_sink, mut handle) = spawn_with(
            Box::new(out),
            None,
            Box::new(|| Err(io::Error::other("no filter"))),
        )
        .unwrap();
        let err = handle.started().expect_err("the start failed");
        assert_eq!(err.to_string(), "no filter");
        assert!(handle.started().is_ok(), "taken");
        assert_eq!(handle.finish(Duration::from_secs(10)), 0);
    }

    #[test]
    fn the_start_runs_on_the_writer_thread_first() {
        let out = Shared2::default();
        let name = Arc::new(Mutex::new(None));
        let n = Arc::clone(&name);
        let (mut sink, mut handle) = spawn_with(
            Box::new(out.clone()),
            None,
            Box::new(move || {
                *n.lock().unwrap() = std::thread::current().name().map(str::to_owned);
                Ok(())
            }),
        )
        .unwrap();
        handle.started().unwrap();
        assert_eq!(name.lock().unwrap().as_deref(), Some("serial out"));
        sink.write_all(b"x").unwrap();
        assert_eq!(handle.finish(Duration::from_secs(10)), 0);
        assert_eq!(*out.0.lock().unwrap(), b"x");
    }

    #[test]
    fn everything_arrives_in_order() {
        let out = Shared2::default();
        let (mut sink, handle) = spawn(Box::new(out.clone())).unwrap();
        for i in 0..1000u32 {
            sink.write_all(format!("{i},").as_bytes()).unwrap();
        }
        assert_eq!(handle.finish(Duration::from_secs(10)), 0);
        let want: String = (0..1000u32).map(|i| format!("{i},")).collect();
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap(),
            want
        );
    }

    /// Counts the writes it gets.
    #[derive(Clone, Default)]
    struct Counting(Shared2, Arc<Mutex<usize>>);

    impl Write for Counting {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            *self.1.lock().unwrap() += 1;
            self.0.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_that_come_one_by_one_go_out_in_batches() {
        let out = Counting::default();
        let (mut sink, handle) = spawn(Box::new(out.clone())).unwrap();
        // As a guest's console: one byte per port write, 20,000 of them.
        // However slow this loop runs, the writer takes what gathered
        // every millisecond or more, never a byte per wake-up.
        let started = Instant::now();
        for i in 0..20_000u32 {
            sink.write_all(&[b'a' + (i % 26) as u8]).unwrap();
        }
        let took = started.elapsed();
        assert_eq!(handle.finish(Duration::from_secs(10)), 0);
        assert_eq!(out.0 .0.lock().unwrap().len(), 20_000);
        let writes = *out.1.lock().unwrap();
        let most = 2 + took.as_micros() / COALESCE.as_micros();
        assert!(
            (writes as u128) <= most,
            "{writes} writes for 20000 bytes in {took:?} (at most {most})"
        );
    }

    /// A slow reader: 1 ms per write.
    struct Slow(Shared2);

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(1));
            self.0.write(&b[..b.len().min(16)])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_reader_gets_everything_even_past_the_stall_limit() {
        let out = Shared2::default();
        let (mut sink, handle) = spawn(Box::new(Slow(out.clone()))).unwrap();
        let data = vec![b'y'; 16 * 200];
        sink.write_all(&data).unwrap();
        // 200 writes of 1 ms: far longer than the 20 ms stall limit, but
        // always moving, so finish() waits for all of it.
        assert_eq!(handle.finish(Duration::from_millis(20)), 0);
        assert_eq!(out.0.lock().unwrap().len(), data.len());
    }

    /// A writer that blocks until released, like a pipe nobody reads.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut released = lock.lock().unwrap();
            while !*released {
                released = cv.wait(released).unwrap();
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_never_blocks_the_guest() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (mut sink, handle) = spawn(Box::new(Stuck(Arc::clone(&gate)))).unwrap();
        // Far more than the capacity: every write returns at once.
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..(2 * CAPACITY / block.len() + 2) {
            assert_eq!(sink.write(&block).unwrap(), block.len());
        }
        // finish() gives up after its limit instead of hanging.
        let dropped = handle.finish(Duration::from_millis(50));
        assert!(dropped > 0);
        let (lock, cv) = &*gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_pipe_gets_a_twin_and_a_file_does_not() {
        let (_r, w) = pipe();
        let twin = nonblocking_twin(&w).expect("a pipe has a twin");
        // SAFETY: F_GETFL on descriptors this test owns.
        let (twin_flags, out_flags) = unsafe {
            (
                libc::fcntl(twin.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(w.as_raw_fd(), libc::F_GETFL),
            )
        };
        assert_ne!(twin_flags & libc::O_NONBLOCK, 0);
        assert_eq!(out_flags & libc::O_NONBLOCK, 0, "the output stays blocking");
        let file = File::open("/proc/self/exe").unwrap();
        assert!(nonblocking_twin(&file).is_none());
    }

    /// Reads everything from `r` until its writers are gone.
    fn read_all(mut r: File) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            io::Read::read_to_end(&mut r, &mut all).unwrap();
            all
        })
    }

    #[test]
    fn direct_writes_need_no_writer_thread() {
        let (r, w) = pipe();
        let twin = nonblocking_twin(&w);
        let (mut sink, handle) = spawn_with(Box::new(w), twin, Box::new(|| Ok(()))).unwrap();
        sink.write_all(b"hello").unwrap();
        // Already in the pipe, before the writer thread could be asked.
        let mut got = [0u8; 5];
        let mut reader = r;
        io::Read::read_exact(&mut reader, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        {
            let s = sink.shared.lock();
            assert_eq!((s.direct_bytes, s.queued_bytes), (5, 0));
        }
        assert_eq!(handle.finish(Duration::from_secs(10)), 0);
        drop(sink);
    }

    #[test]
    fn a_full_pipe_hands_over_to_the_writer_and_keeps_the_order() {
        let (r, w) = pipe();
        let twin = nonblocking_twin(&w);
        let (mut sink, handle) = spawn_with(Box::new(w), twin, Box::new(|| Ok(()))).unwrap();
        // Far more than a pipe holds (64 KiB) before anyone reads: the
        // direct writes meet a full pipe and the rest queues for the
        // writer, one byte at a time and in blocks, as a guest writes.
        let mut want = Vec::new();
        for i in 0..300_000u32 {
            let byte = [b'a' + (i % 26) as u8];
            sink.write_all(&byte).unwrap();
            want.push(byte[0]);
            if i % 50_000 == 0 {
                let block = format!("<{i}>").repeat(1000);
                sink.write_all(block.as_bytes()).unwrap();
                want.extend_from_slice(block.as_bytes());
            }
        }
        let reader = read_all(r);
        // Direct writes again once the writer has caught up.
        while sink.shared.lock().busy || !sink.shared.lock().buf.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (direct, queued) = {
            let s = sink.shared.lock();
            (s.direct_bytes, s.queued_bytes)
        };
        assert!(
            direct > 0 && queued > 0,
            "no hand-over: {direct} direct, {queued} queued"
        );
        sink.write_all(b"end").unwrap();
        want.extend_from_slice(b"end");
        // "end" went direct.
        assert_eq!(sink.shared.lock().direct_bytes, direct + 3);
        assert_eq!(handle.finish(Duration::from_secs(10)), 0);
        drop(sink);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the output is out of order");
    }

    #[test]
    fn a_full_pipe_has_room_again_once_read() {
        let (mut r, w) = pipe();
        let mut twin = nonblocking_twin(&w).unwrap();
        let block = [b'z'; 4096];
        loop {
            match twin.write(&block) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!wait_for_room(&twin, Duration::from_millis(10)), "full");
        let mut got = vec![0u8; 65536];
        io::Read::read_exact(&mut r, &mut got).unwrap();
        assert!(wait_for_room(&twin, Duration::from_secs(10)), "read");
    }
}
