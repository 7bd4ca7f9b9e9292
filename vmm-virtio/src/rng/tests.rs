//! virtio-rng end to end without KVM: the transport set up as Linux does,
//! the ring in fake guest memory, a counting source standing in for the
//! host's random bytes (so each byte given is known).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::device::VirtioDevice;
use crate::testing::reg::*;
use crate::testing::*;
use crate::transport::VirtioPciDevice;

const RING: u64 = 0x10000;
const BUF: u64 = 0x40000;

/// Bytes 1, 2, 3, ... (wrapping), or an error while `failing`.
#[derive(Default)]
struct Counting {
    next: AtomicU8,
    failing: AtomicBool,
}

impl EntropySource for Counting {
    fn fill(&self, buf: &mut [u8]) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("no entropy today"));
        }
        for b in buf {
            *b = self.next.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        }
        Ok(())
    }
}

struct Rig {
    dev: VirtioPciDevice<Mem>,
    mem: Arc<Mem>,
    ring: Ring,
    fakes: Fakes,
    source: Arc<Counting>,
    handle: RngHandle,
    next: u16,
    used: u16,
}

fn start(limit: RateLimit) -> Rig {
    let source = Arc::new(Counting::default());
    let rng = VirtioRng::new(Arc::clone(&source) as Arc<dyn EntropySource>, limit, None).unwrap();
    let handle = rng.handle();
    let mem = memory(4 << 20);
    let fakes = Fakes::new(false);
    let dev = plugged("virtio-rng-pci", Box::new(rng), &mem, fakes.seams(), 2);
    let mut r = Rig {
        dev,
        ring: Ring::new(&mem, RING, 16),
        mem,
        fakes,
        source,
        handle,
        next: 0,
        used: 0,
    };
    r.init();
    r
}

impl Rig {
    fn init(&mut self) {
        self.ring = Ring::new(&self.mem, RING, 16);
        (self.next, self.used) = (0, 0);
        let q = QueueSetup {
            vector: 0,
            ..QueueSetup::from(&self.ring)
        };
        assert!(linux_init(&mut self.dev, u64::MAX, 1, &[q]).is_some());
    }

    /// Makes chains of (address, length, device-writable) available and
    /// rings the doorbell.
    fn post(&mut self, chains: &[&[(u64, u32, bool)]]) {
        for descs in chains {
            let first = self.next;
            for (i, &(addr, len, w)) in descs.iter().enumerate() {
                let d = (first + i as u16) % self.ring.size;
                let last = i + 1 == descs.len();
                let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
                self.ring
                    .set_desc(d, addr, len, flags, (d + 1) % self.ring.size);
            }
            self.next = (first + descs.len().max(1) as u16) % self.ring.size;
            self.ring.publish(first);
        }
        write(&mut self.dev, NOTIFY, 2, 0);
    }

    /// Waits for `n` more completions: (head, len) each.
    fn done(&mut self, n: u16) -> Vec<(u32, u32)> {
        let from = self.used;
        self.used += n;
        self.ring.wait_used(self.used);
        (from..self.used).map(|i| self.ring.used_elem(i)).collect()
    }

    fn guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn status(&mut self) -> u8 {
        read(&mut self.dev, DEVICE_STATUS, 1) as u8
    }
}

fn counting(from: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| from.wrapping_add(i as u8)).collect()
}

#[test]
fn the_device_is_an_entropy_source_with_one_queue_and_no_config() {
    let rng = VirtioRng::new(Arc::new(HostRandom), RateLimit::default(), None).unwrap();
    let d: &dyn VirtioDevice<Mem> = &rng;
    assert_eq!(d.device_type(), 4);
    assert_eq!(d.queue_max_sizes(), vec![super::QUEUE_SIZE]);
    assert_eq!(d.config_len(), 0);
}

#[test]
fn requests_are_filled_from_the_source_across_their_buffers() {
    let mut r = start(RateLimit::default());
    r.post(&[
        &[(BUF, 64, true)],
        &[(BUF + 0x1000, 10, true), (BUF + 0x2000, 20, true)],
    ]);
    let done = r.done(2);
    assert_eq!(done, [(0, 64), (1, 30)]);
    assert_eq!(r.guest(BUF, 64), counting(1, 64));
    assert_eq!(r.guest(BUF + 0x1000, 10), counting(65, 10));
    assert_eq!(r.guest(BUF + 0x2000, 20), counting(75, 20));
    assert_eq!(r.guest(BUF + 64, 4), [0; 4], "nothing past the buffer");
    let s = r.handle.stats();
    assert_eq!((s.requests, s.bytes, s.bad_chains), (2, 94, 0));
    // An interrupt on the queue's vector.
    assert_eq!(r.fakes.msi.wait_len(1)[0].data, 0x40);
}

#[test]
fn the_random_bytes_and_the_used_ring_are_in_the_dirty_bitmap() {
    let mut r = start(RateLimit::default());
    r.post(&[&[(BUF + 0x3000, 16, true)]]);
    r.done(1);
    assert!(take_dirty_pages(&r.mem).contains(&((BUF + 0x3000) / 0x1000)));
    // The test's own driver writes the second request's descriptor and
    // the available ring; the device the bytes and the used ring.
    r.post(&[&[(BUF + 0x5000, 16, true)]]);
    r.done(1);
    let pages = take_dirty_pages(&r.mem);
    assert!(pages.contains(&((BUF + 0x5000) / 0x1000)), "{pages:x?}");
    assert!(pages.contains(&(r.ring.used / 0x1000)), "{pages:x?}");
    assert!(!pages.contains(&((BUF + 0x3000) / 0x1000)), "{pages:x?}");
    // The worker may still be writing the ring's notification fields
    // after the used index the test waits on: a reset stops it, then one
    // take clears what it wrote and the next finds nothing.
    write(&mut r.dev, DEVICE_STATUS, 1, 0);
    take_dirty_pages(&r.mem);
    assert!(take_dirty_pages(&r.mem).is_empty(), "taken and cleared");
}

#[test]
fn a_request_gets_at_most_max_request_bytes() {
    let mut r = start(RateLimit::default());
    r.post(&[&[(BUF, MAX_REQUEST as u32 + 4096, true)]]);
    assert_eq!(r.done(1), [(0, MAX_REQUEST as u32)]);
    assert_eq!(r.guest(BUF + MAX_REQUEST as u64, 16), [0; 16]);
}

#[test]
fn malformed_requests_come_back_empty_and_the_next_is_served() {
    let mut r = start(RateLimit::default());
    r.post(&[
        // Device-readable.
        &[(BUF, 64, false)],
        // Outside guest memory.
        &[(0xffff_0000, 64, true)],
        // Readable after writable.
        &[(BUF, 8, true), (BUF + 8, 8, false)],
        &[(BUF + 0x100, 8, true)],
    ]);
    let done = r.done(4);
    assert_eq!(done.iter().map(|d| d.1).collect::<Vec<_>>(), [0, 0, 0, 8]);
    assert_eq!(r.guest(BUF, 16), [0; 16], "nothing written for a bad chain");
    assert_eq!(r.guest(BUF + 0x100, 8), counting(1, 8));
    assert_eq!(r.handle.stats().bad_chains, 3);
    assert_eq!(r.status() & NEEDS_RESET, 0);
}

#[test]
fn a_failing_source_fills_nothing() {
    let mut r = start(RateLimit::default());
    r.source.failing.store(true, Ordering::SeqCst);
    r.post(&[&[(BUF, 64, true)]]);
    assert_eq!(r.done(1), [(0, 0)]);
    r.source.failing.store(false, Ordering::SeqCst);
    r.post(&[&[(BUF, 64, true)]]);
    assert_eq!(r.done(1), [(1, 64)]);
}

#[test]
fn the_rate_limit_holds_requests_until_its_window_ends() {
    let period = Duration::from_millis(400);
    let mut r = start(RateLimit::new(100, period.as_millis() as u64).unwrap());
    let t0 = Instant::now();
    r.post(&[
        &[(BUF, 64, true)],
        &[(BUF + 0x1000, 64, true)],
        &[(BUF + 0x2000, 64, true)],
    ]);
    // The first window's 100 bytes: 64, then a short 36.
    assert_eq!(r.done(2), [(0, 64), (1, 36)]);
    assert_eq!(r.guest(BUF + 0x1000 + 36, 4), [0; 4]);
    // The third waits for the next window.
    std::thread::sleep(period / 4);
    assert_eq!(r.ring.used_idx(), 2, "served within a spent window");
    assert_eq!(r.done(1), [(2, 64)]);
    assert!(
        t0.elapsed() >= period,
        "served {:?} after the window opened",
        t0.elapsed()
    );
    assert_eq!(r.guest(BUF + 0x2000, 64), counting(101, 64));
    assert_eq!(r.handle.stats().throttled, 1);
}

#[test]
fn a_reset_does_not_refill_the_budget() {
    let mut r = start(RateLimit::new(64, 60_000).unwrap());
    r.post(&[&[(BUF, 64, true)]]);
    assert_eq!(r.done(1), [(0, 64)]);
    write(&mut r.dev, DEVICE_STATUS, 1, 0);
    r.init();
    r.post(&[&[(BUF, 64, true)]]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.ring.used_idx(), 0, "the spent window still runs");
    assert_eq!(r.handle.stats().bytes, 64);
}

#[test]
fn a_driver_that_breaks_the_ring_gets_needs_reset() {
    let mut r = start(RateLimit::default());
    r.ring.set_avail_idx(17);
    write(&mut r.dev, NOTIFY, 2, 0);
    let msi = r.fakes.msi.wait_len(1);
    assert_eq!(msi[0].data, 0x41, "the configuration vector");
    assert_eq!(r.status() & NEEDS_RESET, NEEDS_RESET);
    write(&mut r.dev, DEVICE_STATUS, 1, 0);
    r.init();
    r.post(&[&[(BUF, 8, true)]]);
    assert_eq!(r.done(1), [(0, 8)]);
}

#[test]
fn the_host_source_gives_bytes_that_differ() {
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    HostRandom.fill(&mut a).unwrap();
    HostRandom.fill(&mut b).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, [0; 64]);
}

/// Random rings and chains: no panic, no hang; every request that came
/// back came back with a sane length.
#[test]
fn random_chains_never_panic_the_device() {
    let mut gen = crate::testing::Rng(0x5eed_1234_9876_abcd);
    let mut r = start(RateLimit::default());
    for round in 0..300 {
        let n = (gen.next() % 4 + 1) as usize;
        let mut descs = Vec::new();
        for _ in 0..n {
            let addr = match gen.next() % 4 {
                0 => gen.next(),
                _ => BUF + (gen.next() % 0x10000),
            };
            let len = (gen.next() % 0x3000) as u32;
            descs.push((addr, len, gen.next() % 5 != 0));
        }
        r.post(&[&descs]);
        let (_, len) = r.done(1)[0];
        assert!(len as usize <= MAX_REQUEST, "round {round}: {len}");
    }
    assert_eq!(r.status() & NEEDS_RESET, 0);
}

#[test]
fn a_snapshot_keeps_the_queue_and_the_budget_and_refuses_bad_ones() {
    use crate::device::{DeviceSnapshot, SnapshotError};
    let mut r = start(RateLimit::new(100, 60_000).unwrap());
    r.post(&[&[(BUF, 30, true)]]);
    assert_eq!(r.done(1), [(0, 30)]);
    r.dev.pause().unwrap();
    let saved = r.dev.snapshot().unwrap();
    let DeviceSnapshot::Rng {
        left,
        window_left_ms,
        ..
    } = saved.device
    else {
        panic!("{:?}", saved.device);
    };
    assert_eq!(left, 70);
    assert!(window_left_ms.is_some_and(|ms| ms <= 60_000));
    let text = serde_json::to_string(&saved).unwrap();
    let back: crate::transport::snapshot::VirtioPciSnapshot = serde_json::from_str(&text).unwrap();
    r.dev.restore(&back).unwrap();
    // The window's time left runs on: equal but for a few ms.
    let same = |a: &crate::transport::snapshot::VirtioPciSnapshot| {
        let mut a = a.clone();
        if let DeviceSnapshot::Rng { window_left_ms, .. } = &mut a.device {
            *window_left_ms = window_left_ms.map(|ms| ms / 1000);
        }
        a
    };
    assert_eq!(same(&r.dev.snapshot().unwrap()), same(&saved));
    let mut bad = saved.clone();
    bad.device = DeviceSnapshot::Rng {
        max_bytes: 100,
        period_ms: 60_000,
        left: 101,
        window_left_ms: Some(1),
    };
    assert!(matches!(
        r.dev.restore(&bad),
        Err(SnapshotError::Invalid(_))
    ));
    bad.device = DeviceSnapshot::Rng {
        max_bytes: 5,
        period_ms: 60_000,
        left: 5,
        window_left_ms: None,
    };
    assert!(matches!(
        r.dev.restore(&bad),
        Err(SnapshotError::Invalid(_))
    ));
    // The queue's available ring at address 0, its registers the same (a
    // worker would spin on it: virtio-queue refuses every pop from it).
    let mut bad = saved.clone();
    bad.queues[0].avail = 0;
    bad.common.queues[0].driver = 0;
    assert!(matches!(
        r.dev.restore(&bad),
        Err(SnapshotError::Invalid(why)) if why.contains("at address 0")
    ));
    assert_eq!(same(&r.dev.snapshot().unwrap()), same(&saved), "unchanged");
    // On from the saved place, within what was left of the budget.
    r.dev.resume();
    r.post(&[&[(BUF + 0x100, 100, true)]]);
    assert_eq!(r.done(1), [(1, 70)]);
}
