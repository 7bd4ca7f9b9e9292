//! virtio-net end to end without KVM: the transport set up as Linux does,
//! rings in fake guest memory, and a datagram socket pair standing in for
//! the tap (one datagram, one frame).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};

use super::device::FEATURES;
use super::*;
use crate::testing::reg::*;
use crate::testing::*;
use crate::transport::VirtioPciDevice;

const RX_RING: u64 = 0x10000;
const TX_RING: u64 = 0x14000;
const BUF: u64 = 0x40000;
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const ALL: u64 = u64::MAX;

/// The tap's stand-in: the worker's end of a datagram pair.
struct SocketBackend {
    sock: UnixDatagram,
    offloads: Mutex<Vec<u32>>,
    /// Frames read (not counting reads that found none).
    reads: AtomicU64,
}

impl NetBackend for SocketBackend {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.sock.recv(buf);
        if got.is_ok() {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        got
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        self.offloads.lock().unwrap().push(flags);
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

struct Net {
    dev: VirtioPciDevice<Mem>,
    mem: Arc<Mem>,
    rx: Ring,
    tx: Ring,
    fakes: Fakes,
    backend: Arc<SocketBackend>,
    /// The network's end.
    wire: UnixDatagram,
    handle: NetHandle,
    /// Next free descriptor in each ring.
    rx_next: u16,
    tx_next: u16,
    rx_used: u16,
    tx_used: u16,
}

/// A started card whose driver accepts `offered & want`.
fn start(want: u64) -> Net {
    let (ours, wire) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let backend = Arc::new(SocketBackend {
        sock: ours,
        offloads: Mutex::new(Vec::new()),
        reads: AtomicU64::new(0),
    });
    let net = VirtioNet::new(
        Arc::clone(&backend) as Arc<dyn NetBackend>,
        MacAddr::default_for(1),
        None,
    )
    .unwrap();
    let handle = net.handle();
    let mem = memory(4 << 20);
    let fakes = Fakes::new(false);
    let dev = plugged("virtio-net-pci", Box::new(net), &mem, fakes.seams(), 3);
    let mut n = Net {
        dev,
        rx: Ring::new(&mem, RX_RING, 16),
        tx: Ring::new(&mem, TX_RING, 16),
        mem,
        fakes,
        backend,
        wire,
        handle,
        rx_next: 0,
        tx_next: 0,
        rx_used: 0,
        tx_used: 0,
    };
    n.init(want);
    n
}

impl Net {
    fn init(&mut self, want: u64) {
        self.rx = Ring::new(&self.mem, RX_RING, 16);
        self.tx = Ring::new(&self.mem, TX_RING, 16);
        (self.rx_next, self.tx_next, self.rx_used, self.tx_used) = (0, 0, 0, 0);
        let rx = QueueSetup {
            vector: 0,
            ..QueueSetup::from(&self.rx)
        };
        let tx = QueueSetup {
            vector: 1,
            ..QueueSetup::from(&self.tx)
        };
        linux_init(&mut self.dev, want, 2, &[rx, tx]).unwrap();
    }

    /// Puts a chain of (address, length, device-writable) in `ring`.
    fn chain(ring: &mut Ring, next: &mut u16, descs: &[(u64, u32, bool)]) {
        let first = *next;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let d = (first + i as u16) % ring.size;
            let last = i + 1 == descs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            ring.set_desc(d, addr, len, flags, (d + 1) % ring.size);
        }
        *next = (first + descs.len().max(1) as u16) % ring.size;
        ring.publish(first);
    }

    /// Gives the device receive chains and rings the doorbell.
    fn post_rx(&mut self, chains: &[&[(u64, u32, bool)]]) {
        for c in chains {
            Self::chain(&mut self.rx, &mut self.rx_next, c);
        }
        write(&mut self.dev, NOTIFY, 2, 0);
    }

    /// Transmits chains and rings the doorbell.
    fn post_tx(&mut self, chains: &[&[(u64, u32, bool)]]) {
        for c in chains {
            Self::chain(&mut self.tx, &mut self.tx_next, c);
        }
        write(&mut self.dev, NOTIFY + 4, 2, 1);
    }

    /// Waits for `n` more receive completions: (head, len) each.
    fn rx_done(&mut self, n: u16) -> Vec<(u32, u32)> {
        let from = self.rx_used;
        self.rx_used += n;
        self.rx.wait_used(self.rx_used);
        (from..self.rx_used).map(|i| self.rx.used_elem(i)).collect()
    }

    fn tx_done(&mut self, n: u16) -> Vec<(u32, u32)> {
        let from = self.tx_used;
        self.tx_used += n;
        self.tx.wait_used(self.tx_used);
        (from..self.tx_used).map(|i| self.tx.used_elem(i)).collect()
    }

    fn guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn status(&mut self) -> u8 {
        read(&mut self.dev, DEVICE_STATUS, 1) as u8
    }

    /// The next frame the guest sent, as the network sees it.
    fn wire_recv(&self) -> Vec<u8> {
        self.wire.set_read_timeout(Some(HANG)).unwrap();
        let mut b = vec![0; 1 << 17];
        let n = self.wire.recv(&mut b).expect("a frame on the wire");
        b.truncate(n);
        b
    }

    /// The offload flags the worker set, once there are `count`.
    fn offloads(&self, count: usize) -> Vec<u32> {
        let deadline = std::time::Instant::now() + HANG;
        loop {
            let got = self.backend.offloads.lock().unwrap().clone();
            if got.len() >= count {
                return got;
            }
            assert!(std::time::Instant::now() < deadline, "offloads {got:?}");
            std::thread::yield_now();
        }
    }

    /// Sends a frame from the network unless its queue is full (the
    /// worker may rightly have stopped reading).
    fn wire_try_send(&self, f: &[u8]) {
        self.wire.set_nonblocking(true).unwrap();
        let _ = self.wire.send(f);
        self.wire.set_nonblocking(false).unwrap();
    }

    /// Whether the wire holds nothing more.
    fn wire_empty(&self) -> bool {
        self.wire.set_nonblocking(true).unwrap();
        let r = self.wire.recv(&mut [0; 16]);
        self.wire.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A frame as the tap gives it: a header (flags 0, num_buffers 0) and
/// `len` bytes of pattern `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

fn num_buffers(head: &[u8]) -> u16 {
    u16::from_le_bytes([head[10], head[11]])
}

#[test]
fn the_configuration_space_and_features() {
    let mut n = start(ALL);
    let cfg = |n: &mut Net, off: u64, len: usize| read(&mut n.dev, DEVICE_CFG + off, len);
    let mac: Vec<u8> = (0..6).map(|i| cfg(&mut n, i, 1) as u8).collect();
    assert_eq!(mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x57]);
    assert_eq!(cfg(&mut n, 6, 2), u64::from(VIRTIO_NET_S_LINK_UP));
    assert_eq!(cfg(&mut n, 10, 4), 0, "past the end");
    let state = n.dev.state();
    let offered = state.common.device_features;
    assert_eq!(offered & FEATURES, FEATURES);
    for f in [
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
    ] {
        assert_eq!(offered & 1 << f, 0, "feature {f} is not offered");
    }
    assert!(state.device.active);
    assert_eq!(n.dev.state().device.device_type, VIRTIO_ID_NET);
    // The driver accepted everything: the tap may hand over all it can.
    assert_eq!(
        n.offloads(1),
        [tun_f::CSUM | tun_f::TSO4 | tun_f::TSO6 | tun_f::TSO_ECN]
    );
}

#[test]
fn offloads_follow_what_the_guest_can_receive() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
    assert_eq!(offload_flags(0), 0);
    assert_eq!(
        offload_flags(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4])),
        0,
        "what the guest sends needs no tap flag"
    );
    assert_eq!(offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM])), tun_f::CSUM);
    assert_eq!(
        offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6])),
        0,
        "no segmentation without checksum offload"
    );
    assert_eq!(
        offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6])),
        tun_f::CSUM | tun_f::TSO6
    );
    assert_eq!(
        offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN])),
        tun_f::CSUM,
        "ECN only with TSO"
    );
    // End to end: a driver without GUEST_CSUM gets plain frames, and a
    // reset and a new negotiation set the flags again.
    let mut n = start(!(1 << VIRTIO_NET_F_GUEST_CSUM));
    write(&mut n.dev, DEVICE_STATUS, 1, 0);
    n.init(!(1 << VIRTIO_NET_F_GUEST_TSO4));
    assert_eq!(
        n.offloads(2),
        [0, tun_f::CSUM | tun_f::TSO6 | tun_f::TSO_ECN]
    );
}

#[test]
fn transmit_passes_the_header_and_frame_through() {
    let mut n = start(ALL);
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    n.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    let body = frame(3000, 9)[HDR_LEN..].to_vec();
    n.mem
        .write_slice(&body, GuestAddress(BUF + 0x1000))
        .unwrap();
    // The header alone, then the body cut in two.
    n.post_tx(&[&[
        (BUF, HDR_LEN as u32, false),
        (BUF + 0x1000, 1000, false),
        (BUF + 0x1000 + 1000, 2000, false),
    ]]);
    assert_eq!(n.tx_done(1), [(0, 0)]);
    let got = n.wire_recv();
    assert_eq!(&got[..HDR_LEN], &hdr);
    assert_eq!(&got[HDR_LEN..], &body[..]);
    // Header and body in one descriptor.
    n.mem.write_slice(&frame(60, 1), GuestAddress(BUF)).unwrap();
    n.post_tx(&[&[(BUF, (HDR_LEN + 60) as u32, false)]]);
    n.tx_done(1);
    assert_eq!(n.wire_recv(), frame(60, 1));
    let s = n.handle.stats();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (2, 3060, 0));
    assert_eq!(n.fakes.msi.wait_len(1)[0].data, 0x41, "the TX vector");
}

#[test]
fn receive_without_mergeable_buffers_fills_one_chain() {
    let mut n = start(!MRG);
    // A chain as Linux's small-buffer mode gives it: header, then data.
    n.post_rx(&[&[(BUF, HDR_LEN as u32, true), (BUF + 0x1000, 1514, true)]]);
    let f = frame(1000, 3);
    n.wire.send(&f).unwrap();
    assert_eq!(n.rx_done(1), [(0, 1012)]);
    let head = n.guest(BUF, HDR_LEN);
    assert_eq!(num_buffers(&head), 1, "num_buffers is 1 without MRG_RXBUF");
    assert_eq!(n.guest(BUF + 0x1000, 1000), &f[HDR_LEN..]);
    assert_eq!(n.fakes.msi.wait_len(1)[0].data, 0x40, "the RX vector");
    // A frame longer than the next chain is dropped; the chain waits for
    // the next frame.
    n.post_rx(&[&[(BUF + 0x4000, 200, true)]]);
    n.wire.send(&frame(500, 4)).unwrap();
    n.wire.send(&frame(100, 5)).unwrap();
    assert_eq!(n.rx_done(1), [(2, 112)]);
    assert_eq!(n.guest(BUF + 0x4000 + 12, 100), &frame(100, 5)[HDR_LEN..]);
    let s = n.handle.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (2, 1100, 1));
}

#[test]
fn mergeable_buffers_take_a_frame_across_chains() {
    let mut n = start(ALL);
    // Four 256-byte buffers; a 600-byte frame (612 with its header) takes
    // three of them.
    let bufs: Vec<[(u64, u32, bool); 1]> =
        (0..4).map(|i| [(BUF + i * 0x1000, 256, true)]).collect();
    let chains: Vec<&[(u64, u32, bool)]> = bufs.iter().map(|b| &b[..]).collect();
    n.post_rx(&chains);
    let f = frame(600, 7);
    n.wire.send(&f).unwrap();
    assert_eq!(n.rx_done(3), [(0, 256), (1, 256), (2, 100)]);
    let mut got = n.guest(BUF, 256);
    got.extend(n.guest(BUF + 0x1000, 256));
    got.extend(n.guest(BUF + 0x2000, 100));
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    // The fourth buffer takes a small frame alone.
    n.wire.send(&frame(40, 8)).unwrap();
    assert_eq!(n.rx_done(1), [(3, 52)]);
    assert_eq!(num_buffers(&n.guest(BUF + 0x3000, HDR_LEN)), 1);
    // A frame longer than a whole ring of tiny buffers can never fit: it
    // is dropped rather than waited for.
    let tiny: Vec<[(u64, u32, bool); 1]> = (0..16)
        .map(|i| [(BUF + 0x10000 + i * 0x100, 16, true)])
        .collect();
    let chains: Vec<&[(u64, u32, bool)]> = tiny.iter().map(|b| &b[..]).collect();
    n.post_rx(&chains);
    n.wire.send(&frame(1000, 9)).unwrap();
    n.wire.send(&frame(8, 10)).unwrap();
    assert_eq!(n.rx_done(2), [(4, 16), (5, 4)]);
    assert_eq!(num_buffers(&n.guest(BUF + 0x10000, HDR_LEN)), 2);
    let s = n.handle.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (3, 1));
}

#[test]
fn without_buffers_one_frame_waits_and_the_rest_stay_in_the_backend() {
    let mut n = start(ALL);
    for seed in 0..3 {
        n.wire.send(&frame(100, seed)).unwrap();
    }
    // The worker takes the first frame and, with nowhere to put it,
    // stops reading.
    let deadline = std::time::Instant::now() + HANG;
    while n.backend.reads.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no read");
        std::thread::yield_now();
    }
    // Time for a worker that spins or reads on to show it.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(n.backend.reads.load(Ordering::SeqCst), 1);
    assert_eq!(n.rx.used_idx(), 0);
    // Buffers, one at a time: each frame in order, none lost.
    for seed in 0..3u16 {
        let at = BUF + u64::from(seed) * 0x1000;
        n.post_rx(&[&[(at, 2048, true)]]);
        assert_eq!(n.rx_done(1), [(u32::from(seed), 112)]);
        assert_eq!(num_buffers(&n.guest(at, HDR_LEN)), 1);
        assert_eq!(n.guest(at + 12, 100), frame(100, seed as u8)[HDR_LEN..]);
    }
    let s = n.handle.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (3, 0));
}

#[test]
fn malformed_transmit_chains_are_dropped_and_returned() {
    let mut n = start(ALL);
    n.mem.write_slice(&frame(64, 2), GuestAddress(BUF)).unwrap();
    let too_long: Vec<(u64, u32, bool)> =
        (0..3).map(|i| (BUF + i * 0x8000, 0x8000, false)).collect();
    let bad: [&[(u64, u32, bool)]; 6] = [
        &[(BUF, 0, false)],
        &[(BUF, 5, false)],
        &[(BUF, 76, true)],
        &[(BUF, 12, false), (BUF + 12, 64, true)],
        &[(BUF, 12, false), (0x7fff_0000, 64, false)],
        &too_long,
    ];
    n.post_tx(&bad);
    n.post_tx(&[&[(BUF, 76, false)]]);
    let done = n.tx_done(7);
    assert!(done.iter().all(|&(_, len)| len == 0), "{done:?}");
    // Only the good frame reached the wire.
    assert_eq!(n.wire_recv(), frame(64, 2));
    assert!(n.wire_empty());
    let s = n.handle.stats();
    assert_eq!((s.tx_frames, s.tx_dropped), (1, 6));
    assert_eq!(n.status() & NEEDS_RESET, 0);
}

#[test]
fn malformed_receive_chains_are_returned_unused() {
    let mut n = start(ALL);
    n.post_rx(&[
        &[(BUF, 2048, false)],
        &[(BUF, 12, true), (BUF + 12, 100, false)],
        &[(0x7fff_0000, 2048, true)],
        &[(BUF, 0, true)],
        &[(BUF + 0x1000, 2048, true)],
    ]);
    n.wire.send(&frame(50, 6)).unwrap();
    let done = n.rx_done(5);
    assert_eq!(&done[..4], [(0, 0), (1, 0), (3, 0), (4, 0)]);
    assert_eq!(done[4], (5, 62));
    assert_eq!(n.guest(BUF + 0x1000 + 12, 50), frame(50, 6)[HDR_LEN..]);
    assert_eq!(n.handle.stats().rx_bad_buffers, 4);
    assert_eq!(n.status() & NEEDS_RESET, 0);
}

#[test]
fn a_driver_that_breaks_a_ring_gets_needs_reset() {
    for queue in [0u16, 1] {
        let mut n = start(ALL);
        if queue == 0 {
            n.rx.set_avail_idx(17);
            write(&mut n.dev, NOTIFY, 2, 0);
            // The receive ring is looked at when a frame comes.
            n.wire.send(&frame(10, 0)).unwrap();
        } else {
            n.tx.set_avail_idx(17);
            write(&mut n.dev, NOTIFY + 4, 2, 1);
        }
        let msi = n.fakes.msi.wait_len(1);
        assert_eq!(msi[0].data, 0x42, "queue {queue}: the configuration vector");
        assert_eq!(n.status() & NEEDS_RESET, NEEDS_RESET);
        // A reset brings it back.
        write(&mut n.dev, DEVICE_STATUS, 1, 0);
        n.init(ALL);
        n.mem.write_slice(&frame(20, 1), GuestAddress(BUF)).unwrap();
        n.post_tx(&[&[(BUF, 32, false)]]);
        n.tx_done(1);
        let got = n.wire_recv();
        if queue == 0 {
            assert_eq!(got, frame(20, 1));
        } else {
            // The frame sent before the reset may come first.
            assert!(got == frame(20, 1) || n.wire_recv() == frame(20, 1));
        }
    }
}

#[test]
fn event_idx_interrupts_only_where_the_driver_wants_them() {
    let mut n = start(ALL);
    assert_ne!(
        n.dev.state().device.acked_features & 1 << VIRTIO_RING_F_EVENT_IDX,
        0
    );
    // used_event 2: no interrupt for the first two frames' buffers, one
    // for the third (the index crossing 2 -> 3).
    n.rx.set_used_event(2);
    let bufs: Vec<[(u64, u32, bool); 1]> =
        (0..3).map(|i| [(BUF + i * 0x1000, 2048, true)]).collect();
    let chains: Vec<&[(u64, u32, bool)]> = bufs.iter().map(|b| &b[..]).collect();
    n.post_rx(&chains);
    for seed in 0..3 {
        n.wire.send(&frame(30, seed)).unwrap();
    }
    n.rx_done(3);
    let msi = n.fakes.msi.wait_len(1);
    assert!(msi.iter().all(|m| m.data == 0x40));
    // A merged frame moving the index past used_event at once still
    // interrupts.
    n.rx.set_used_event(4);
    let bufs: Vec<[(u64, u32, bool); 1]> = (0..3)
        .map(|i| [(BUF + 0x8000 + i * 0x1000, 64, true)])
        .collect();
    let chains: Vec<&[(u64, u32, bool)]> = bufs.iter().map(|b| &b[..]).collect();
    n.post_rx(&chains);
    let before = n.fakes.msi.items().len();
    n.wire.send(&frame(150, 4)).unwrap();
    n.rx_done(3);
    n.fakes.msi.wait_len(before + 1);
}

#[test]
fn random_chains_never_hang_or_break_the_device() {
    let mut n = start(ALL);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut posted = 0u16;
    for round in 0..200u32 {
        let mut descs = Vec::new();
        for _ in 0..=rng.next() % 4 {
            let addr = match rng.next() % 8 {
                0 => 0x7fff_f000,
                _ => BUF + rng.next() % 0x10000,
            };
            let len = match rng.next() % 6 {
                0 => 0,
                1 => 0x2_0000,
                _ => (rng.next() % 3000) as u32,
            };
            descs.push((addr, len, rng.next() % 5 == 0));
        }
        // At most a ring's worth of receive chains outstanding (more is a
        // broken driver, tested above).
        let outstanding = posted.wrapping_sub(n.rx.used_idx());
        if round % 2 == 0 || outstanding >= 15 {
            n.post_tx(&[&descs]);
            n.tx_done(1);
        } else {
            n.post_rx(&[&descs]);
            posted = posted.wrapping_add(1);
            n.wire_try_send(&frame((rng.next() % 2000) as usize, 0));
        }
        assert_eq!(n.status() & NEEDS_RESET, 0, "round {round}");
    }
    // Still a working card.
    while !n.wire_empty() {}
    n.mem.write_slice(&frame(20, 1), GuestAddress(BUF)).unwrap();
    n.post_tx(&[&[(BUF, 32, false)]]);
    n.tx_done(1);
    assert_eq!(n.wire_recv(), frame(20, 1));
}

#[test]
fn mac_addresses_parse_and_print() {
    let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
    assert_eq!(m.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);
    assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
    assert_eq!(MacAddr::default_for(0).to_string(), "52:54:00:12:34:56");
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52-54-00-12-34-56",
        "5:54:00:12:34:567",
        "zz:54:00:12:34:56",
    ] {
        assert!(
            matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))),
            "{bad}"
        );
    }
    assert_eq!(
        "01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap_err()
            .to_string(),
        "'01:00:5e:00:00:01' is a multicast address (the first byte must be even)"
    );
}

#[test]
fn a_snapshot_keeps_the_queues_gives_back_unused_receive_buffers_and_refuses_bad_ones() {
    use crate::device::{DeviceSnapshot, SnapshotError};
    let mut n = start(ALL);
    n.post_tx(&[&[(BUF + 0x8000, 12, false), (BUF + 0x9000, 60, false)]]);
    assert_eq!(n.tx_done(1), [(0, 0)]);
    n.wire_recv();
    // Two 16-byte buffers, a frame they cannot hold: the worker pops
    // both, then waits for more with the frame in hand.
    n.post_rx(&[&[(BUF, 16, true)], &[(BUF + 0x1000, 16, true)]]);
    n.wire.send(&frame(100, 1)).unwrap();
    let deadline = std::time::Instant::now() + HANG;
    while n.backend.reads.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no read");
        std::thread::yield_now();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    n.dev.pause().unwrap();
    let saved = n.dev.snapshot().unwrap();
    let q: Vec<(u16, u16, u16)> = saved
        .queues
        .iter()
        .map(|q| (q.index, q.next_avail, q.next_used))
        .collect();
    assert_eq!(q, [(0, 0, 0), (1, 1, 1)], "both receive chains given back");
    assert_eq!(
        saved.device,
        DeviceSnapshot::Net {
            mac: MacAddr::default_for(1).0
        }
    );
    restores_and_refuses_another_device(&mut n.dev, &saved, DeviceSnapshot::Net { mac: [2; 6] });
    let mut bad = saved.clone();
    bad.queues[0].next_used = 3;
    assert!(matches!(
        n.dev.restore(&bad),
        Err(SnapshotError::Invalid(_))
    ));
    assert_eq!(n.dev.snapshot().unwrap(), saved, "unchanged");
    // The frame in hand went with the worker; the two buffers are popped
    // again and take the next frame that fits.
    n.dev.resume();
    n.wire.send(&frame(20, 2)).unwrap();
    assert_eq!(n.rx_done(2), [(0, 16), (1, 16)]);
    let mut got = n.guest(BUF, 16);
    got.extend(n.guest(BUF + 0x1000, 16));
    assert_eq!(&got[HDR_LEN..], &frame(20, 2)[HDR_LEN..]);
}
