//! virtio-blk end to end without KVM: the transport set up as Linux does,
//! requests in a ring in fake guest memory, the worker doing real I/O on a
//! temporary image, completions seen in the used ring and as MSI messages.

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_pci::msix::MsiMessage;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::blk::{Aio, ErrorAction, ErrorOutcome, IoErrorEvent, Operation};
use crate::seams::MsiSender;
use crate::testing::reg::*;
use crate::testing::*;
use crate::transport::{TransportSeams, VirtioPciDevice};

const HDR: u64 = 0x20000;
const STATUS: u64 = 0x20100;
const TABLE: u64 = 0x21000;
const DATA: u64 = 0x30000;
const SECTORS: u64 = 64;
const NO_EVENT_IDX: u64 = !(1 << VIRTIO_RING_F_EVENT_IDX);

std::thread_local! {
    /// The `aio=` of the disks this test thread starts.
    static AIO: std::cell::Cell<Aio> = const { std::cell::Cell::new(Aio::Threads) };
}

/// Each test, once per `aio=` mode (`threads::NAME`, `io_uring::NAME`).
macro_rules! both_aio {
    ($($name:ident),* $(,)?) => {
        mod threads {
            $(#[test] fn $name() { super::AIO.set(super::Aio::Threads); super::$name() })*
        }
        mod io_uring {
            $(#[test] fn $name() { super::AIO.set(super::Aio::IoUring); super::$name() })*
        }
    };
}

both_aio!(
    the_configuration_space_describes_the_disk,
    reads_writes_flushes_and_the_id_round_trip,
    discard_and_write_zeroes_reach_the_image,
    a_read_only_disk_refuses_writes,
    malicious_chains_complete_without_harm,
    a_driver_that_breaks_the_ring_gets_needs_reset,
    host_errors_follow_the_policy,
    a_reset_drops_held_and_in_flight_requests,
    without_msix_completions_raise_intx,
    event_idx_asks_for_interrupts_only_where_the_driver_wants_them,
    bad_configurations_are_refused,
    dropping_the_function_stops_a_held_worker,
    random_rings_never_hang_or_break_the_device,
);

mod inflight;
mod snapshot;

struct Events(Arc<Recorder<IoErrorEvent>>);

impl BlockEvents for Events {
    fn io_error(&self, event: &IoErrorEvent) {
        self.0.push(event.clone());
    }
}

/// Records each MSI's data with the used index the driver could see when
/// it was sent: once the one for completion `n` is in, every earlier one
/// is too (the worker sends them in order).
struct RingMsi {
    mem: Arc<Mem>,
    used: u64,
    sent: Arc<Recorder<(u32, u16)>>,
}

impl MsiSender for RingMsi {
    fn send(&self, msg: MsiMessage) {
        let idx = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        self.sent.push((msg.data, idx));
    }
}

struct Blk {
    dev: VirtioPciDevice<Mem>,
    mem: Arc<Mem>,
    ring: Ring,
    fakes: Fakes,
    msi: Arc<Recorder<(u32, u16)>>,
    handle: BlockHandle,
    disk: Arc<Disk>,
    events: Arc<Recorder<IoErrorEvent>>,
    image: TempFile,
    used: u16,
    msix: bool,
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

fn new_image() -> TempFile {
    let t = TempFile::new().unwrap();
    std::os::unix::fs::FileExt::write_all_at(t.as_file(), &pattern(0, (SECTORS * 512) as usize), 0)
        .unwrap();
    t
}

/// A started disk: `tweak` changes the configuration, `msix` says whether
/// the driver uses MSI-X (vector 0 for the queue, 1 for configuration),
/// `want` masks the features it accepts.
fn start(tweak: impl FnOnce(&mut BlockConfig), msix: bool, want: u64) -> Blk {
    let image = new_image();
    let mut config = BlockConfig::new(image.as_path());
    config.aio = AIO.get();
    tweak(&mut config);
    let events = Recorder::new();
    let blk = VirtioBlk::new(&config, Arc::new(Events(Arc::clone(&events)))).unwrap();
    let handle = blk.handle();
    let disk = blk.disk();
    let mem = memory(4 << 20);
    let ring = Ring::new(&mem, 0x10000, 16);
    let fakes = Fakes::new(false);
    let msi = Recorder::new();
    let seams = TransportSeams {
        msi: Arc::new(RingMsi {
            mem: Arc::clone(&mem),
            used: ring.used,
            sent: Arc::clone(&msi),
        }),
        ..fakes.seams()
    };
    let dev = plugged("virtio-blk-pci", Box::new(blk), &mem, seams, 0);
    let mut b = Blk {
        dev,
        mem,
        ring,
        fakes,
        msi,
        handle,
        disk,
        events,
        image,
        used: 0,
        msix,
    };
    if msix {
        msix_vector(&mut b.dev, 0, 0x40);
        msix_vector(&mut b.dev, 1, 0x41);
    }
    b.init(want);
    b
}

impl Blk {
    fn init(&mut self, want: u64) {
        self.ring = Ring::new(&self.mem, 0x10000, 16);
        self.used = 0;
        let (config_vector, vector) = if self.msix { (1, 0) } else { (0xffff, 0xffff) };
        let q = QueueSetup {
            vector,
            ..QueueSetup::from(&self.ring)
        };
        linux_init(&mut self.dev, want, config_vector, &[q]).unwrap();
    }

    /// Puts a chain of (address, length, device-writable) at descriptors
    /// `first..`, publishes it and notifies.
    fn send_at(&mut self, first: u16, descs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let i = first + i as u16;
            let last = usize::from(i - first) + 1 == descs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.ring.set_desc(i, addr, len, flags, i + 1);
        }
        self.ring.publish(first);
        self.kick();
    }

    fn kick(&mut self) {
        write(&mut self.dev, NOTIFY, 2, 0);
    }

    /// Waits for the next completion: (status byte, used length).
    fn complete(&mut self) -> (u8, u32) {
        self.used += 1;
        self.ring.wait_used(self.used);
        let (_, len) = self.ring.used_elem(self.used - 1);
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// A request with the header, `data` and the status byte.
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
        self.header(kind, sector);
        let mut descs = vec![(HDR, 16, false)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, true));
        self.send_at(0, &descs);
        self.complete()
    }

    fn file(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(self.image.as_file(), &mut v, offset).unwrap();
        v
    }

    fn guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn status(&mut self) -> u8 {
        read(&mut self.dev, DEVICE_STATUS, 1) as u8
    }

    fn segment(&self, at: u64, sector: u64, sectors: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&sectors.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_slice(&s, GuestAddress(at)).unwrap();
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn the_configuration_space_describes_the_disk() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    let cfg = |b: &mut Blk, off: u64, len: usize| read(&mut b.dev, DEVICE_CFG + off, len);
    assert_eq!(cfg(&mut b, 0, 4), SECTORS);
    assert_eq!(cfg(&mut b, 4, 4), 0, "capacity's high half");
    assert_eq!(cfg(&mut b, 12, 4), 254, "seg_max");
    assert_eq!(cfg(&mut b, 20, 4), 512, "blk_size");
    assert_eq!(cfg(&mut b, 40, 4), 1, "max_discard_seg");
    assert_eq!(cfg(&mut b, 56, 1), 1, "write_zeroes_may_unmap");
    assert_eq!(cfg(&mut b, 60, 4), 0, "past the end");
    let state = b.dev.state();
    let offered = state.common.device_features;
    for f in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(offered & 1 << f, 0, "feature {f}");
    }
    assert_eq!(offered & 1 << VIRTIO_BLK_F_RO, 0);
    assert!(state.device.active);
    assert_eq!(state.device.acked_features, offered & NO_EVENT_IDX);
    let ro = start(|c| c.read_only = true, true, NO_EVENT_IDX);
    let offered = ro.dev.state().common.device_features;
    assert_ne!(offered & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        offered & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
}

fn reads_writes_flushes_and_the_id_round_trip() {
    let mut b = start(|c| c.serial = Some("disk-7".into()), true, NO_EVENT_IDX);
    // Read sectors 3-4 into two buffers.
    let r = b.request(
        VIRTIO_BLK_T_IN,
        3,
        &[(DATA, 512, true), (DATA + 0x1000, 512, true)],
    );
    assert_eq!(r, (OK, 1025));
    assert_eq!(b.guest(DATA, 512), pattern(1536, 512));
    assert_eq!(b.guest(DATA + 0x1000, 512), pattern(2048, 512));
    assert_eq!(b.msi.wait_len(1), [(0x40, 1)]);
    // Write them to sectors 10-11.
    let r = b.request(
        VIRTIO_BLK_T_OUT,
        10,
        &[(DATA, 512, false), (DATA + 0x1000, 512, false)],
    );
    assert_eq!(r, (OK, 1));
    // Each request's MSI is awaited before the next is made available:
    // one the worker found while still on the last would share its MSI.
    b.msi.wait_len(2);
    assert_eq!(b.file(5120, 1024), pattern(1536, 1024));
    assert_eq!(b.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    b.msi.wait_len(3);
    b.mem.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(
        b.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]),
        (OK, 21)
    );
    b.msi.wait_len(4);
    assert_eq!(b.guest(DATA, 20), b"disk-7\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    // Through an indirect table.
    b.header(VIRTIO_BLK_T_IN, 0);
    for (i, (addr, len, flags)) in [
        (HDR, 16, NEXT),
        (DATA, 512, WRITE | NEXT),
        (STATUS, 1, WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        write_desc(&b.mem, TABLE, i as u16, addr, len, flags, i as u16 + 1);
    }
    b.ring.set_desc(0, TABLE, 48, INDIRECT, 0);
    b.ring.publish(0);
    b.kick();
    assert_eq!(b.complete(), (OK, 513));
    assert_eq!(b.guest(DATA, 512), pattern(0, 512));
    let sent = b.msi.wait_len(5);
    assert_eq!(
        sent,
        [(0x40, 1), (0x40, 2), (0x40, 3), (0x40, 4), (0x40, 5)]
    );
    let s = b.handle.stats();
    assert_eq!(
        (s.reads, s.writes, s.flushes, s.read_bytes, s.written_bytes),
        (2, 1, 1, 1536, 1024)
    );
}

fn discard_and_write_zeroes_reach_the_image() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    b.segment(DATA, 4, 4, 1);
    assert_eq!(
        b.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, false)]),
        (OK, 1)
    );
    assert!(b.file(2048, 2048).iter().all(|&x| x == 0));
    assert_eq!(b.file(0, 2048), pattern(0, 2048));
    b.segment(DATA, 16, 8, 0);
    assert_eq!(
        b.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, false)]),
        (OK, 1)
    );
    b.segment(DATA, 16, 8, 1);
    assert_eq!(
        b.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, false)]),
        (UNSUPP, 1)
    );
    b.segment(DATA, 60, 8, 0);
    assert_eq!(
        b.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, false)]),
        (IOERR, 1)
    );
    assert_eq!(b.handle.stats().discards, 2);
}

fn a_read_only_disk_refuses_writes() {
    let mut b = start(|c| c.read_only = true, true, NO_EVENT_IDX);
    b.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        b.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]),
        (IOERR, 1)
    );
    assert_eq!(b.file(0, 512), pattern(0, 512));
    b.segment(DATA + 0x1000, 0, 1, 0);
    assert_eq!(
        b.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA + 0x1000, 16, false)]),
        (UNSUPP, 1)
    );
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]),
        (OK, 513)
    );
    assert_eq!(b.handle.stats().invalid, 2);
}

fn malicious_chains_complete_without_harm() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    b.header(VIRTIO_BLK_T_IN, 0);
    // A loop: descriptor 0 chained to itself. virtio-queue stops after the
    // queue's size; every descriptor is readable, so there is no status.
    b.ring.set_desc(0, HDR, 16, NEXT, 0);
    b.ring.publish(0);
    b.kick();
    assert_eq!(b.complete().1, 0);
    // Longer than allowed, through an indirect table of 300.
    for i in 0..300u16 {
        write_desc(&b.mem, TABLE, i, DATA, 512, WRITE | NEXT, i + 1);
    }
    b.ring.set_desc(0, TABLE, 300 * 16, INDIRECT, 0);
    b.ring.publish(0);
    b.kick();
    assert_eq!(b.complete().1, 0);
    // Data outside memory, zero-length header, past the end, sector
    // overflow: IOERR each.
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(8 << 20, 512, true)]),
        (IOERR, 1)
    );
    b.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    b.send_at(0, &[(HDR, 0, false), (STATUS, 1, true)]);
    assert_eq!(b.complete(), (IOERR, 1));
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[(DATA, 1024, true)]),
        (IOERR, 1)
    );
    assert_eq!(
        b.request(VIRTIO_BLK_T_OUT, u64::MAX, &[(DATA, 512, false)]),
        (IOERR, 1)
    );
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 100, true)]),
        (IOERR, 1)
    );
    assert_eq!(b.request(77, 0, &[]), (UNSUPP, 1));
    // A read-only status descriptor: nothing written, used length 0.
    b.header(VIRTIO_BLK_T_IN, 0);
    b.send_at(
        0,
        &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, false)],
    );
    assert_eq!(b.complete(), (0xff, 0));
    // Nothing broke: a good read works, and the device is fine.
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]),
        (OK, 513)
    );
    assert_eq!(b.guest(DATA, 512), pattern(512, 512));
    assert_eq!(b.status() & NEEDS_RESET, 0);
    assert_eq!(b.handle.stats().invalid, 9);
}

fn a_driver_that_breaks_the_ring_gets_needs_reset() {
    for lie in ["avail index", "head index"] {
        let mut b = start(|_| {}, true, NO_EVENT_IDX);
        match lie {
            "avail index" => b.ring.set_avail_idx(17),
            _ => {
                b.ring.publish(99);
            }
        }
        b.kick();
        let msi = b.msi.wait_len(1);
        assert_eq!(msi[0].0, 0x41, "{lie}: the configuration vector");
        assert_eq!(b.status() & NEEDS_RESET, NEEDS_RESET, "{lie}");
        // It recovers with a reset.
        write(&mut b.dev, DEVICE_STATUS, 1, 0);
        b.init(NO_EVENT_IDX);
        assert_eq!(b.status(), 0xf);
        assert_eq!(
            b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]),
            (OK, 513)
        );
    }
}

fn host_errors_follow_the_policy() {
    let cases = [
        (
            ErrorAction::Report,
            libc::EIO,
            Some(IOERR),
            ErrorOutcome::Reported,
        ),
        (
            ErrorAction::Ignore,
            libc::EIO,
            Some(OK),
            ErrorOutcome::Ignored,
        ),
        (
            ErrorAction::Enospc,
            libc::EIO,
            Some(IOERR),
            ErrorOutcome::Reported,
        ),
        (
            ErrorAction::Enospc,
            libc::ENOSPC,
            None,
            ErrorOutcome::Stopped,
        ),
        (ErrorAction::Stop, libc::EIO, None, ErrorOutcome::Stopped),
        // "Try again" for good (a FUSE server can): io_uring submits it
        // again a bounded number of times, then it is a host error.
        (
            ErrorAction::Report,
            libc::EAGAIN,
            Some(IOERR),
            ErrorOutcome::Reported,
        ),
    ];
    for (action, errno, status, outcome) in cases {
        let mut b = start(
            |c| {
                c.errors.write = action;
                c.errors.read = ErrorAction::Report;
            },
            true,
            NO_EVENT_IDX,
        );
        fault(&b, Operation::Write, errno);
        b.header(VIRTIO_BLK_T_OUT, 2);
        b.send_at(
            0,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        let events = b.events.wait_len(1);
        assert_eq!(
            events[0],
            IoErrorEvent {
                operation: Operation::Write,
                errno,
                nospace: errno == libc::ENOSPC,
                outcome,
                sector: 2,
                sectors: 1,
            }
        );
        match status {
            Some(s) => assert_eq!(b.complete(), (s, 1), "{action:?}/{errno}"),
            None => {
                assert!(b.handle.is_held());
                assert_eq!(b.ring.used_idx(), 0, "held, not completed");
                assert_eq!(b.dev.state().device.held, 1);
                // Still failing: held again, and said again.
                fault(&b, Operation::Write, errno);
                b.handle.retry();
                assert_eq!(b.events.wait_len(2)[1].outcome, ErrorOutcome::Stopped);
                // The host is fine again (QEMU's `cont`).
                b.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
                b.handle.retry();
                assert_eq!(b.complete(), (OK, 1));
                assert!(!b.handle.is_held());
                assert_eq!(b.file(1024, 512), [0x77; 512]);
            }
        }
        assert_eq!(
            b.handle.stats().host_errors,
            if status.is_some() { 1 } else { 2 }
        );
    }
}

/// Makes the image's next `op` fail with `errno`.
fn fault(b: &Blk, op: Operation, errno: i32) {
    b.disk.inject_fault(op, errno);
}

fn a_reset_drops_held_and_in_flight_requests() {
    let mut b = start(|c| c.errors.read = ErrorAction::Stop, true, NO_EVENT_IDX);
    fault(&b, Operation::Read, libc::EIO);
    b.header(VIRTIO_BLK_T_IN, 0);
    b.send_at(0, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    b.events.wait_len(1);
    assert!(b.handle.is_held());
    write(&mut b.dev, DEVICE_STATUS, 1, 0);
    assert!(!b.handle.is_held());
    assert!(!b.dev.state().device.active);
    assert_eq!(b.ring.used_idx(), 0);
    // A burst, and a reset right behind it: whatever got done, the worker
    // stops and the device comes back.
    b.init(NO_EVENT_IDX);
    for i in 0..5u16 {
        let hdr = HDR + 0x40 * u64::from(i);
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&u64::from(i).to_le_bytes());
        b.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let d = 3 * i;
        b.ring.set_desc(d, hdr, 16, NEXT, d + 1);
        b.ring.set_desc(
            d + 1,
            DATA + 0x1000 * u64::from(i),
            4096,
            WRITE | NEXT,
            d + 2,
        );
        b.ring
            .set_desc(d + 2, STATUS + 0x10 * u64::from(i), 1, WRITE, 0);
        b.ring.publish(d);
    }
    b.kick();
    write(&mut b.dev, DEVICE_STATUS, 1, 0);
    assert!(!b.dev.state().device.active);
    b.init(NO_EVENT_IDX);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true)]),
        (OK, 513)
    );
}

fn without_msix_completions_raise_intx() {
    let mut b = start(|_| {}, false, NO_EVENT_IDX);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]),
        (OK, 513)
    );
    assert_eq!(b.fakes.intx.wait_len(1), [true]);
    assert_eq!(read(&mut b.dev, ISR, 1), 1);
    assert_eq!(b.fakes.intx.items(), [true, false]);
    assert!(b.msi.items().is_empty());
}

fn event_idx_asks_for_interrupts_only_where_the_driver_wants_them() {
    let mut b = start(|_| {}, true, u64::MAX);
    let acked = b.dev.state().device.acked_features;
    assert_ne!(acked & 1 << VIRTIO_RING_F_EVENT_IDX, 0);
    // used_event = 0: the first completion interrupts. Its MSI is
    // awaited before the next request: the used index it is sent with
    // would otherwise depend on how soon the completing thread sends it.
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]),
        (OK, 513)
    );
    assert_eq!(b.msi.wait_len(1), [(0x40, 1)]);
    // used_event left at 0: the next does not.
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]),
        (OK, 513)
    );
    // used_event = 2 (the third completion's index): it does.
    b.ring.set_used_event(2);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]),
        (OK, 513)
    );
    assert_eq!(b.msi.wait_len(2), [(0x40, 1), (0x40, 3)]);
}

fn bad_configurations_are_refused() {
    let image = new_image();
    let events: Arc<dyn BlockEvents> = Arc::new(Events(Recorder::new()));
    let with = |f: &dyn Fn(&mut BlockConfig)| {
        let mut c = BlockConfig::new(image.as_path());
        f(&mut c);
        VirtioBlk::new(&c, Arc::clone(&events))
    };
    assert!(matches!(
        with(&|c| c.serial = Some("x".repeat(21))),
        Err(BlockError::Serial(_))
    ));
    assert!(matches!(
        with(&|c| c.serial = Some("tab\there".into())),
        Err(BlockError::Serial(_))
    ));
    assert!(matches!(
        with(&|c| c.queue_size = 100),
        Err(BlockError::QueueSize(100))
    ));
    assert!(matches!(
        with(&|c| c.queue_size = 2),
        Err(BlockError::QueueSize(2))
    ));
    assert!(with(&|c| c.serial = Some("x".repeat(20))).is_ok());
}

fn dropping_the_function_stops_a_held_worker() {
    let mut b = start(|c| c.errors.write = ErrorAction::Stop, true, NO_EVENT_IDX);
    fault(&b, Operation::Flush, libc::EIO);
    b.header(VIRTIO_BLK_T_FLUSH, 0);
    b.send_at(0, &[(HDR, 16, false), (STATUS, 1, true)]);
    b.events.wait_len(1);
    let handle = b.handle.clone();
    drop(b);
    assert!(!handle.is_held(), "reset on drop");
}

fn random_rings_never_hang_or_break_the_device() {
    let mut b = start(|_| {}, true, u64::MAX);
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let area = |x: u64| match x % 8 {
        // Headers and data in their own area, so that the device's writes
        // never land on the rings the test reads.
        0..=5 => DATA + (x >> 8) % 0x8000,
        6 => (4 << 20) - (x >> 8) % 64,
        _ => x >> 4,
    };
    for round in 0..300 {
        // Random bytes where headers and segments are read from.
        let junk: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
        b.mem.write_slice(&junk, GuestAddress(DATA)).unwrap();
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&[0u32, 1, 4, 8, 11, 13][round % 6].to_le_bytes());
        h[8..].copy_from_slice(&(rng.next() % 70).to_le_bytes());
        b.mem.write_slice(&h, GuestAddress(DATA)).unwrap();
        for i in 0..16u16 {
            let x = rng.next();
            if x % 3 == 0 {
                // Anything at all.
                let len = [0u32, 1, 16, 17, 512, 4096, 0x10000, u32::MAX][(x >> 3) as usize % 8];
                let flags =
                    (x >> 40) as u16 & (NEXT | WRITE | if x % 5 == 0 { INDIRECT } else { 0 });
                b.ring
                    .set_desc(i, area(rng.next()), len, flags, (x >> 48) as u16 % 20);
                continue;
            }
            // Mostly well-formed: header, data, status in turn.
            let (addr, len, flags) = match i % 3 {
                0 => (DATA, 16, NEXT),
                1 => (
                    DATA + 0x1000 * (1 + x % 4),
                    512 * (1 + (x >> 8) as u32 % 8),
                    NEXT | if x >> 20 & 1 == 1 { WRITE } else { 0 },
                ),
                _ => (DATA + 0x100, 1, WRITE),
            };
            b.ring.set_desc(i, addr, len, flags, i + 1);
        }
        let chains = rng.next() % 8;
        for _ in 0..chains {
            let x = rng.next();
            let head = if x % 4 == 0 {
                (x >> 8) % 18
            } else {
                3 * ((x >> 8) % 5)
            } as u16;
            b.ring.publish(head);
        }
        b.kick();
        let target = b.used.wrapping_add(chains as u16);
        let deadline = std::time::Instant::now() + HANG;
        while b.ring.used_idx() != target && b.status() & NEEDS_RESET == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: stuck at used.idx {} of {target} ({chains} chains); {:?}; {:?}; \
                 held {}; events {:?}",
                b.ring.used_idx(),
                b.handle.stats(),
                b.dev.state().device,
                b.handle.is_held(),
                b.events.items()
            );
            std::thread::yield_now();
        }
        if b.status() & NEEDS_RESET != 0 || round % 50 == 49 {
            write(&mut b.dev, DEVICE_STATUS, 1, 0);
            b.init(u64::MAX);
        } else {
            b.used = target;
        }
    }
    // Whatever the guest did, the host never failed because of it.
    let s = b.handle.stats();
    assert_eq!(s.host_errors, 0, "{:?}", b.events.items());
    assert!(s.reads > 10 && s.writes > 10 && s.invalid > 100, "{s:?}");
    // Still a disk.
    write(&mut b.dev, DEVICE_STATUS, 1, 0);
    b.init(NO_EVENT_IDX);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 5, &[(DATA, 512, true)]),
        (OK, 513)
    );
}
