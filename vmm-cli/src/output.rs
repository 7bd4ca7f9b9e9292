//! Guest serial output, decoupled from the vCPUs.
//!
//! COM1's output is written on a vCPU thread, under the device's lock. If
//! that write went straight to stdout, a reader that stops reading (a full
//! pipe, a paused pager) would stall the vCPU inside `write`, where no kick
//! reaches it, and with it the whole VMM. So the vCPU side only appends to a
//! bounded buffer, and a writer thread of its own does the blocking writes.
//! When the buffer is full, newer output is dropped and counted (as a real
//! UART loses characters nobody takes), never waited for.
//!
//! The guest writes one byte per port exit, and waking the writer for each
//! would cost a futex call on the vCPU thread and a wake-up, a `write` and
//! a reader's wake-up per character. So the vCPU side wakes the writer
//! only when it is idle, and a writer that found output lets more gather
//! for [`COALESCE`] before it looks again: a verbose Linux boot's 50 KiB go
//! out in some hundreds of writes instead of 50,000, and the first byte
//! after a quiet spell still leaves at once. Nested (the test bed), the
//! per-character wake-ups also interrupted the CPU running the guest often
//! enough to meet a fault of L1's emulated SVM far more often than QEMU's
//! guests did (see docs/nested/).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much guest output may wait for the writer.
pub const CAPACITY: usize = 1 << 20;
/// How long a busy writer lets output gather between two writes.
pub const COALESCE: Duration = Duration::from_millis(1);

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    closed: bool,
    dropped: u64,
    /// Bytes the writer has handed on so far (its progress).
    written: u64,
    /// The writer is blocked waiting for output (only then is it woken).
    idle: bool,
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

/// The vCPU side: never blocks.
pub struct SerialSink {
    shared: Arc<Shared>,
}

impl Write for SerialSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut s = self.shared.lock();
        let room = CAPACITY.saturating_sub(s.buf.len());
        let taken = bytes.len().min(room);
        s.buf.extend(&bytes[..taken]);
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
        Ok(bytes.len())
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

/// Starts a writer thread for `out`; returns the sink for COM1 and the
/// handle to finish it.
#[cfg(test)]
pub fn spawn(out: Box<dyn Write + Send>) -> io::Result<(SerialSink, SerialOutput)> {
    spawn_with(out, Box::new(|| Ok(())))
}

/// [`spawn`], with `start` run first on the writer thread. Returns at once:
/// `start` runs beside the caller's own set-up (a filter takes about 0.1 ms
/// to install); [`SerialOutput::started`] waits for its outcome.
pub fn spawn_with(
    mut out: Box<dyn Write + Send>,
    start: ThreadStart,
) -> io::Result<(SerialSink, SerialOutput)> {
    let shared = Arc::new(Shared::default());
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
        self.shared.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
