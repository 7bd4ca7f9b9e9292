//! Several requests in flight at once (`aio=io_uring`; the first test for
//! both modes): whole rings of requests, completions out of order (a test
//! gate holds one request's I/O back until the test opens it), the `stop`
//! policy with others in flight, malformed chains beside good ones.
//!
//! Each request `i` is one indirect descriptor (ring slot `i`) pointing
//! at a table of three: its header, 512 bytes of data, its status byte;
//! so a 16-entry ring holds 16 requests.

use std::io::Write;
use std::os::unix::net::UnixStream;

use super::*;

const HDRS: u64 = 0x40000;
const STATUSES: u64 = 0x41000;
const TABLES: u64 = 0x42000;
const BUFS: u64 = 0x100000;

fn buf(i: u16) -> u64 {
    BUFS + 0x1000 * u64::from(i)
}

fn status_of(b: &Blk, i: u16) -> u8 {
    b.mem
        .read_obj(GuestAddress(STATUSES + u64::from(i)))
        .unwrap()
}

/// Makes request `i` (a read into, or a write from, `buf(i)` at `sector`)
/// available, without notifying.
fn put(b: &mut Blk, i: u16, kind: u32, sector: u64) {
    put_all(b, &[(i, kind, sector)]);
}

/// Makes requests `(i, kind, sector)` available together (see
/// [`Ring::publish_all`]), without notifying: a worker that starts late
/// takes them on its first pass, before the kick, all or none, as the
/// tests that count on one pass taking them all need.
fn put_all(b: &mut Blk, requests: &[(u16, u32, u64)]) {
    for &(i, kind, sector) in requests {
        write_request(b, i, kind, sector);
    }
    let heads: Vec<u16> = requests.iter().map(|r| r.0).collect();
    b.ring.publish_all(&heads);
}

/// Writes request `i` (as [`put`]) into guest memory and its ring slot's
/// descriptor, not yet available: the worker cannot see it, even on a
/// pass of its own.
fn write_request(b: &mut Blk, i: u16, kind: u32, sector: u64) {
    let hdr = HDRS + 32 * u64::from(i);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    b.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let status = STATUSES + u64::from(i);
    b.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let table = TABLES + 0x40 * u64::from(i);
    let data = if kind == VIRTIO_BLK_T_IN { WRITE } else { 0 };
    write_desc(&b.mem, table, 0, hdr, 16, NEXT, 1);
    write_desc(&b.mem, table, 1, buf(i), 512, data | NEXT, 2);
    write_desc(&b.mem, table, 2, status, 1, WRITE, 0);
    b.ring.set_desc(i, table, 48, INDIRECT, 0);
}

/// The heads in the used ring from element `from` to `to`.
fn used_heads(b: &Blk, from: u16, to: u16) -> Vec<u16> {
    (from..to).map(|k| b.ring.used_elem(k).0 as u16).collect()
}

/// A gate on the image's next io_uring `op`: it waits until the returned
/// end is written to (or dropped).
fn gate(b: &Blk, op: Operation) -> UnixStream {
    let (mine, theirs) = UnixStream::pair().unwrap();
    b.disk.inject_gate(op, theirs.into());
    mine
}

fn open(mut gate: &UnixStream) {
    gate.write_all(&[1]).unwrap();
}

fn a_whole_ring_of_requests_completes() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    // 16 reads at once, then the same slots again as 16 writes.
    let reads: Vec<_> = (0..16u16)
        .map(|i| (i, VIRTIO_BLK_T_IN, u64::from(i) * 3 % SECTORS))
        .collect();
    put_all(&mut b, &reads);
    b.kick();
    b.ring.wait_used(16);
    let mut heads = used_heads(&b, 0, 16);
    heads.sort_unstable();
    assert_eq!(heads, (0..16).collect::<Vec<_>>(), "each request once");
    for k in 0..16u16 {
        assert_eq!(b.ring.used_elem(k).1, 513);
    }
    for i in 0..16u16 {
        assert_eq!(status_of(&b, i), OK, "request {i}");
        let sector = u64::from(i) * 3 % SECTORS;
        assert_eq!(
            b.guest(buf(i), 512),
            pattern(sector * 512, 512),
            "request {i}"
        );
    }
    for i in 0..16u16 {
        b.mem
            .write_slice(&[i as u8 + 1; 512], GuestAddress(buf(i)))
            .unwrap();
    }
    let writes: Vec<_> = (0..16u16)
        .map(|i| (i, VIRTIO_BLK_T_OUT, 32 + u64::from(i)))
        .collect();
    put_all(&mut b, &writes);
    b.kick();
    b.ring.wait_used(32);
    for i in 0..16u16 {
        assert_eq!(status_of(&b, i), OK);
        assert_eq!(b.file((32 + u64::from(i)) * 512, 512), [i as u8 + 1; 512]);
    }
    let s = b.handle.stats();
    assert_eq!((s.reads, s.writes, s.host_errors), (16, 16, 0));
}

/// Whether guest RAM's dirty bitmap has the page at `addr`.
fn dirty(b: &Blk, addr: u64) -> bool {
    use vm_memory::GuestMemoryBackend;
    let region = b.mem.find_region(GuestAddress(addr)).unwrap();
    region.get_mmap().bitmap().is_addr_set(addr as usize)
}

/// The kernel fills a read's buffers by host address (`preadv`, io_uring's
/// `READV`), behind vm-memory's back: the device marks them in guest
/// RAM's dirty bitmap once done, for a live migration's pre-copy. A
/// write's buffers are only read: not marked.
fn host_reads_into_guest_buffers_are_marked_dirty() {
    use vm_memory::GuestMemoryBackend;
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    b.mem.write_slice(&[7; 512], GuestAddress(buf(1))).unwrap();
    write_request(&mut b, 0, VIRTIO_BLK_T_IN, 5);
    write_request(&mut b, 1, VIRTIO_BLK_T_OUT, 40);
    // Cleared before the requests are available: a worker that starts
    // late takes them on its first pass, before the kick, and its marks
    // must not be wiped.
    let region = b.mem.find_region(GuestAddress(0)).unwrap().get_mmap();
    region.bitmap().reset();
    assert!(!dirty(&b, buf(0)) && !dirty(&b, STATUSES));
    b.ring.publish_all(&[0, 1]);
    b.kick();
    b.ring.wait_used(2);
    assert_eq!((status_of(&b, 0), status_of(&b, 1)), (OK, OK));
    assert_eq!(b.guest(buf(0), 512), pattern(5 * 512, 512));
    assert!(dirty(&b, buf(0)), "the read's buffer");
    assert!(!dirty(&b, buf(1)), "the write's buffer");
    assert!(dirty(&b, STATUSES), "the status bytes");
}

both_aio!(
    a_whole_ring_of_requests_completes,
    host_reads_into_guest_buffers_are_marked_dirty,
);

fn uring() -> Blk {
    AIO.set(Aio::IoUring);
    start(
        |c| {
            c.errors.read = ErrorAction::Stop;
            c.errors.write = ErrorAction::Stop;
        },
        true,
        NO_EVENT_IDX,
    )
}

#[test]
fn completions_come_back_in_the_order_the_host_finishes_them() {
    let mut b = uring();
    let g = gate(&b, Operation::Read);
    let reads: Vec<_> = (0..4u16)
        .map(|i| (i, VIRTIO_BLK_T_IN, 10 + u64::from(i)))
        .collect();
    put_all(&mut b, &reads);
    b.kick();
    // The first is held back at the gate; the three behind it finish.
    b.ring.wait_used(3);
    let mut first = used_heads(&b, 0, 3);
    first.sort_unstable();
    assert_eq!(first, [1, 2, 3]);
    assert_eq!(status_of(&b, 0), 0xff, "still in flight");
    open(&g);
    b.ring.wait_used(4);
    assert_eq!(used_heads(&b, 3, 4), [0]);
    assert_eq!(b.ring.used_elem(3).1, 513);
    assert_eq!(status_of(&b, 0), OK);
    assert_eq!(b.guest(buf(0), 512), pattern(10 * 512, 512));
    // Its MSI went out after the used index covered it.
    let sent = b.msi.wait_len(2);
    assert_eq!(sent.last(), Some(&(0x40, 4)));
}

#[test]
fn a_stop_error_holds_its_requests_while_the_others_finish() {
    let mut b = uring();
    // Request 0 writes behind the gate; reads 1 and 2 fail (held); read 3
    // is fine.
    let g = gate(&b, Operation::Write);
    fault(&b, Operation::Read, libc::EIO);
    fault(&b, Operation::Read, libc::EIO);
    b.mem
        .write_slice(&[0xaa; 512], GuestAddress(buf(0)))
        .unwrap();
    // All four in one pass: one the worker's first pass (a late start)
    // took without the rest would be held by the stop behind the others.
    put_all(
        &mut b,
        &[
            (0, VIRTIO_BLK_T_OUT, 40),
            (1, VIRTIO_BLK_T_IN, 1),
            (2, VIRTIO_BLK_T_IN, 2),
            (3, VIRTIO_BLK_T_IN, 3),
        ],
    );
    b.kick();
    let events = b.events.wait_len(2);
    assert!(events.iter().all(|e| e.outcome == ErrorOutcome::Stopped));
    let mut sectors: Vec<u64> = events.iter().map(|e| e.sector).collect();
    sectors.sort_unstable();
    assert_eq!(sectors, [1, 2]);
    b.ring.wait_used(1);
    assert_eq!(used_heads(&b, 0, 1), [3]);
    assert!(b.handle.is_held());
    // A new request while stopped is not taken.
    put(&mut b, 4, VIRTIO_BLK_T_IN, 4);
    b.kick();
    open(&g);
    b.ring.wait_used(2);
    assert_eq!(used_heads(&b, 1, 2), [0], "the one in flight finished");
    assert_eq!(b.file(40 * 512, 512), [0xaa; 512]);
    assert_eq!(b.dev.state().device.held, 2);
    assert_eq!(b.handle.stats().reads, 1, "request 4 waits for the retry");
    // cont: the held ones again, then the queue.
    b.handle.retry();
    b.ring.wait_used(5);
    let mut rest = used_heads(&b, 2, 5);
    rest.sort_unstable();
    assert_eq!(rest, [1, 2, 4]);
    for i in 0..5u16 {
        assert_eq!(status_of(&b, i), OK, "request {i}");
    }
    for i in 1..5u16 {
        assert_eq!(b.guest(buf(i), 512), pattern(u64::from(i) * 512, 512));
    }
    assert!(!b.handle.is_held());
    assert_eq!(b.dev.state().device.held, 0);
    assert_eq!(b.handle.stats().host_errors, 2);
}

#[test]
fn malformed_chains_beside_requests_in_flight() {
    let mut b = uring();
    let g = gate(&b, Operation::Read);
    write_request(&mut b, 0, VIRTIO_BLK_T_IN, 5);
    // Past the end; an unknown type; data outside memory.
    write_request(&mut b, 1, VIRTIO_BLK_T_IN, SECTORS);
    write_request(&mut b, 2, 77, 0);
    write_request(&mut b, 3, VIRTIO_BLK_T_IN, 0);
    write_desc(&b.mem, TABLES + 0x40 * 3, 1, 8 << 20, 512, WRITE | NEXT, 2);
    b.ring.publish_all(&[0, 1, 2, 3]);
    b.kick();
    b.ring.wait_used(3);
    let mut heads = used_heads(&b, 0, 3);
    heads.sort_unstable();
    assert_eq!(heads, [1, 2, 3]);
    assert_eq!(
        [status_of(&b, 1), status_of(&b, 2), status_of(&b, 3)],
        [IOERR, UNSUPP, IOERR]
    );
    open(&g);
    b.ring.wait_used(4);
    assert_eq!((status_of(&b, 0), b.ring.used_elem(3)), (OK, (0, 513)));
    assert_eq!(b.handle.stats().invalid, 3);
    assert_eq!(b.status() & NEEDS_RESET, 0);
}

#[test]
fn the_used_ring_takes_one_entry_per_request_through_wraps() {
    let mut b = uring();
    // Request 0 stays in flight while the other 15 slots are used over and
    // over: the used ring wraps around it several times.
    let g = gate(&b, Operation::Read);
    put(&mut b, 0, VIRTIO_BLK_T_IN, 7);
    let mut done = 0u16;
    for round in 0..5u64 {
        let reads: Vec<_> = (1..16u16)
            .map(|i| (i, VIRTIO_BLK_T_IN, (round + u64::from(i)) % SECTORS))
            .collect();
        put_all(&mut b, &reads);
        b.kick();
        done += 15;
        b.ring.wait_used(done);
        let mut heads = used_heads(&b, done - 15, done);
        heads.sort_unstable();
        assert_eq!(heads, (1..16).collect::<Vec<_>>(), "round {round}");
        assert_eq!(status_of(&b, 0), 0xff);
    }
    open(&g);
    b.ring.wait_used(done + 1);
    assert_eq!(used_heads(&b, done, done + 1), [0]);
    assert_eq!(b.handle.stats().reads, 76);
    assert_eq!(b.status() & NEEDS_RESET, 0);
}

#[test]
fn a_reset_with_requests_in_flight_lets_them_finish_and_comes_back() {
    let mut b = uring();
    let g = gate(&b, Operation::Read);
    put_all(&mut b, &[(0, VIRTIO_BLK_T_IN, 1), (1, VIRTIO_BLK_T_IN, 2)]);
    b.kick();
    b.ring.wait_used(1);
    // The reset (a vCPU's status write) waits for the gated read; the gate
    // opens from another thread, most likely once the reset is under way.
    let opener = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        open(&g);
        g
    });
    write(&mut b.dev, DEVICE_STATUS, 1, 0);
    assert!(!b.dev.state().device.active);
    // Whether or not it was completed before the reset, the read is done:
    // nothing writes into guest memory after the reset.
    assert!((1..=2).contains(&b.ring.used_idx()));
    assert_eq!(b.guest(buf(0), 512), pattern(512, 512));
    drop(opener.join().unwrap());
    b.init(NO_EVENT_IDX);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true)]),
        (OK, 513)
    );
}

#[test]
fn the_default_is_io_uring_where_the_host_has_it() {
    let image = new_image();
    let events: Arc<dyn BlockEvents> = Arc::new(Events(Recorder::new()));
    let auto = VirtioBlk::new(&BlockConfig::new(image.as_path()), Arc::clone(&events)).unwrap();
    assert!(format!("{auto:?}").contains("io_uring: true"), "{auto:?}");
    drop(auto);
    let mut config = BlockConfig::new(image.as_path());
    config.aio = Aio::Threads;
    let threads = VirtioBlk::new(&config, events).unwrap();
    assert!(format!("{threads:?}").contains("io_uring: false"));
}
