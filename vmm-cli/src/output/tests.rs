use super::*;
use std::os::fd::FromRawFd;
use vmm_core::event_loop::EventLoop;

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

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// COM1's output into the write end `w` of a pipe, through its twin.
fn into_pipe(w: &File) -> (SerialSink, SerialOutput) {
    let twin = nonblocking_twin(w).expect("a pipe has a twin");
    new(Target::nonblocking(twin, |twin| twin)).unwrap()
}

/// Reads everything from `r` until its writers are gone.
fn read_all(mut r: File) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        io::Read::read_to_end(&mut r, &mut all).unwrap();
        all
    })
}

/// Fills `twin`'s pipe until a write would block.
fn fill(twin: &mut File) {
    let block = [b'z'; 4096];
    loop {
        match twin.write(&block) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn everything_arrives_in_order() {
    let out = Shared2::default();
    let (mut sink, handle) = new(Target::blocking(out.clone())).unwrap();
    assert!(handle.drain().is_none(), "nothing ever waits");
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

#[test]
fn nowhere_takes_everything() {
    let (mut sink, handle) = new(Target::discard()).unwrap();
    assert!(handle.drain().is_none());
    assert_eq!(sink.write(&[b'x'; 100_000]).unwrap(), 100_000);
    assert_eq!(handle.finish(Duration::from_secs(10)), 0);
}

#[test]
fn direct_writes_go_out_at_once() {
    let (mut r, w) = pipe();
    let (mut sink, handle) = into_pipe(&w);
    sink.write_all(b"hello").unwrap();
    // Already in the pipe: nothing else ran.
    let mut got = [0u8; 5];
    io::Read::read_exact(&mut r, &mut got).unwrap();
    assert_eq!(&got, b"hello");
    {
        let s = sink.shared.lock();
        assert_eq!((s.direct_bytes, s.queued_bytes), (5, 0));
    }
    assert_eq!(
        sink.shared.queued.read().map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock),
        "the main loop was not woken"
    );
    assert_eq!(handle.finish(Duration::from_secs(10)), 0);
}

/// Runs the main loop with `drain` until the buffer is empty.
fn run_until_drained(drain: Drain, shared: &Shared) {
    let mut main_loop = EventLoop::new().unwrap();
    main_loop.add(Arc::new(Mutex::new(drain)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shared.lock().buf.is_empty() {
        assert!(Instant::now() < deadline, "the main loop did not drain");
        main_loop.run_once(100).unwrap();
    }
}

#[test]
fn a_full_pipe_waits_for_the_main_loop_and_keeps_the_order() {
    let (r, w) = pipe();
    let (mut sink, handle) = into_pipe(&w);
    // Far more than a pipe holds (64 KiB) before anyone reads: the
    // direct writes meet a full pipe and the rest waits in the buffer,
    // one byte at a time and in blocks, as a guest writes.
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
    let drain = handle.drain().expect("a pipe may wait");
    let reader = read_all(r);
    run_until_drained(drain, &sink.shared);
    let (direct, queued) = {
        let s = sink.shared.lock();
        (s.direct_bytes, s.queued_bytes)
    };
    assert!(
        direct > 0 && queued > 0,
        "no hand-over: {direct} direct, {queued} queued"
    );
    // Direct writes again once the main loop has caught up.
    sink.write_all(b"end").unwrap();
    want.extend_from_slice(b"end");
    assert_eq!(sink.shared.lock().direct_bytes, direct + 3);
    assert_eq!(handle.finish(Duration::from_secs(10)), 0);
    drop(sink);
    drop(w);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the output is out of order");
}

#[test]
fn a_stuck_reader_never_blocks_the_guest() {
    let (_r, w) = pipe();
    let (mut sink, handle) = into_pipe(&w);
    // Far more than the capacity: every write returns, the first after
    // at most BACKPRESSURE, the others at once.
    let block = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    for _ in 0..(2 * CAPACITY / block.len() + 2) {
        assert_eq!(sink.write(&block).unwrap(), block.len());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // finish() gives up after its limit instead of hanging.
    let dropped = handle.finish(Duration::from_millis(50));
    assert!(dropped > CAPACITY as u64, "{dropped}");
}

#[test]
fn a_slow_reader_gets_everything_even_past_the_stall_limit() {
    let (mut r, w) = pipe();
    let (mut sink, handle) = into_pipe(&w);
    let data = vec![b'y'; 256 * 1024];
    sink.write_all(&data).unwrap();
    assert!(!sink.shared.lock().buf.is_empty(), "some output waits");
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while all.len() < 256 * 1024 {
            let n = io::Read::read(&mut r, &mut chunk).unwrap();
            assert!(n > 0);
            all.extend_from_slice(&chunk[..n]);
            std::thread::sleep(Duration::from_millis(1));
        }
        all
    });
    // 64 reads of 1 ms or more: far longer than the 20 ms stall limit,
    // but always moving, so finish() waits for all of it.
    assert_eq!(handle.finish(Duration::from_millis(20)), 0);
    assert_eq!(reader.join().unwrap(), data);
}

#[test]
fn a_reader_that_is_gone_drops_the_output() {
    let (r, w) = pipe();
    let (mut sink, handle) = into_pipe(&w);
    drop(r);
    // EPIPE (the test harness, as the VMM, ignores SIGPIPE): dropped,
    // and the guest is told it was written.
    assert_eq!(sink.write(b"lost").unwrap(), 4);
    assert_eq!(sink.write(b"too").unwrap(), 3);
    assert!(sink.shared.lock().buf.is_empty());
    assert_eq!(handle.finish(Duration::from_secs(10)), 7);
}

#[test]
fn a_reader_gone_while_output_waits_drops_it_in_the_main_loop() {
    let (r, w) = pipe();
    let (mut sink, handle) = into_pipe(&w);
    let mut twin = nonblocking_twin(&w).unwrap();
    fill(&mut twin);
    sink.write_all(b"waits").unwrap();
    assert_eq!(sink.shared.lock().buf.len(), 5);
    drop(r);
    run_until_drained(handle.drain().unwrap(), &sink.shared);
    assert!(sink.shared.lock().broken);
    assert_eq!(handle.finish(Duration::from_secs(10)), 5);
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

#[test]
fn a_full_pipe_has_room_again_once_read() {
    let (mut r, w) = pipe();
    let mut twin = nonblocking_twin(&w).unwrap();
    fill(&mut twin);
    let fd = twin.as_raw_fd();
    assert!(!wait_for_room(fd, Duration::from_millis(10)), "full");
    let mut got = vec![0u8; 65536];
    io::Read::read_exact(&mut r, &mut got).unwrap();
    assert!(wait_for_room(fd, Duration::from_secs(10)), "read");
}
