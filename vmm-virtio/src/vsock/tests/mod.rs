//! virtio-vsock end to end without KVM: the transport set up as Linux
//! does, rings in fake guest memory, the test playing the guest's driver
//! on one side and host programs on real Unix sockets on the other.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};

use super::packet::{op, shutdown, Header, HDR_LEN, TYPE_STREAM};
use super::*;
use crate::testing::reg::*;
use crate::testing::*;
use crate::transport::VirtioPciDevice;

const CID: u64 = 3;
const SIZE: u16 = 16;
const RX_RING: u64 = 0x10000;
const TX_RING: u64 = 0x14000;
const EV_RING: u64 = 0x18000;
const RX_BUF: u64 = 0x100000;
const RX_BUF_LEN: u32 = 4096 + HDR_LEN as u32;
const TX_BUF: u64 = 0x400000;
const TX_SLOT: u64 = 0x12000;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Vsock {
    dev: VirtioPciDevice<Mem>,
    mem: Arc<Mem>,
    rx: Ring,
    tx: Ring,
    handle: VsockHandle,
    dir: TempDir,
    uds: PathBuf,
    rx_used: u16,
    tx_next: u16,
    fakes: Fakes,
    /// Receive buffers the device gave back unused (malformed ones).
    returned_unused: Vec<u32>,
}

fn start(tag: &str) -> Vsock {
    let dir = std::env::temp_dir().join(format!("vmm-vsock-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let vsock = VirtioVsock::new(CID, listener, &uds, None).unwrap();
    let handle = vsock.handle();
    let mem = memory(16 << 20);
    let fakes = Fakes::new(false);
    // QEMU's three vectors: here one per queue, the configuration none.
    let mut dev = plugged(
        "virtio-vsock-pci",
        Box::new(vsock),
        &mem,
        fakes.seams(),
        MSIX_VECTORS as u64,
    );
    let rx = Ring::new(&mem, RX_RING, SIZE);
    let tx = Ring::new(&mem, TX_RING, SIZE);
    let ev = Ring::new(&mem, EV_RING, SIZE);
    let setup = |r: &Ring, vector| QueueSetup {
        vector,
        ..QueueSetup::from(r)
    };
    let queues = [setup(&rx, 0), setup(&tx, 1), setup(&ev, 2)];
    linux_init(&mut dev, u64::MAX, NO_VECTOR, &queues).unwrap();
    let mut v = Vsock {
        dev,
        mem,
        rx,
        tx,
        handle,
        dir: TempDir(dir),
        uds,
        rx_used: 0,
        tx_next: 0,
        fakes,
        returned_unused: Vec::new(),
    };
    // Every receive descriptor a buffer of its own, all given.
    for i in 0..SIZE {
        v.rx.set_desc(i, rx_addr(i), RX_BUF_LEN, WRITE, 0);
        v.rx.publish(i);
    }
    write(&mut v.dev, NOTIFY, 2, 0);
    v
}

/// VIRTIO_MSI_NO_VECTOR: the configuration changes raise no interrupt.
const NO_VECTOR: u16 = 0xffff;

fn rx_addr(i: u16) -> u64 {
    RX_BUF + u64::from(i) * 0x2000
}

/// A packet from the guest (CID 3) to the host.
fn to_host(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 1 << 20,
        ..Header::default()
    }
}

impl Vsock {
    /// The guest sends the chain of (bytes) descriptors and waits until
    /// the device has used it.
    fn send_chain(&mut self, parts: &[&[u8]]) {
        let slot = self.tx_next % SIZE;
        let base = TX_BUF + u64::from(slot) * TX_SLOT;
        let mut at = base;
        let first = self.tx_next % SIZE;
        for (i, p) in parts.iter().enumerate() {
            self.mem.write_slice(p, GuestAddress(at)).unwrap();
            let d = (first + i as u16) % SIZE;
            let last = i + 1 == parts.len();
            let flags = if last { 0 } else { NEXT };
            self.tx
                .set_desc(d, at, p.len() as u32, flags, (d + 1) % SIZE);
            at += p.len() as u64;
        }
        self.tx_next = self.tx_next.wrapping_add(parts.len().max(1) as u16);
        let used = self.tx.used_idx();
        self.tx.publish(first);
        write(&mut self.dev, NOTIFY + 4, 2, 1);
        self.tx.wait_used(used.wrapping_add(1));
    }

    /// The guest sends a packet with `payload`.
    fn send(&mut self, h: Header, payload: &[u8]) {
        let h = Header {
            len: payload.len() as u32,
            ..h
        };
        self.send_chain(&[&h.to_bytes(), payload]);
    }

    /// The next packet the device gave the guest (its buffer given back);
    /// buffers given back unused are noted and skipped.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        loop {
            if let Some(p) = self.recv_used() {
                return p;
            }
        }
    }

    /// The next receive buffer the device used: its packet, or None if
    /// unused.
    fn recv_used(&mut self) -> Option<(Header, Vec<u8>)> {
        self.rx_used = self.rx_used.wrapping_add(1);
        let deadline = std::time::Instant::now() + HANG;
        // Several may have come at once.
        while (self.rx.used_idx().wrapping_sub(self.rx_used) as i16) < 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no packet for the guest"
            );
            std::thread::yield_now();
        }
        let (id, len) = self.rx.used_elem(self.rx_used.wrapping_sub(1));
        let mut b = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut b, GuestAddress(rx_addr(id as u16)))
            .unwrap();
        if len == 0 {
            self.returned_unused.push(id);
            return None;
        }
        self.rx.publish(id as u16);
        write(&mut self.dev, NOTIFY, 2, 0);
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.len as usize, b.len() - HDR_LEN, "{h:?}");
        Some((h, b.split_off(HDR_LEN)))
    }

    /// Proves nothing was queued for the guest before: the next packet is
    /// the RST answering an RW to a port nobody uses.
    fn nothing_before_probe(&mut self) {
        self.send(to_host(9, 9, op::RW), b"?");
        let (h, _) = self.recv();
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 9, 9), "{h:?}");
    }

    /// A host program connects to guest port `port`: the REQUEST the guest
    /// sees, answered with RESPONSE (and buf_alloc `credit`); the
    /// program's socket after its `OK` line.
    fn host_connects(&mut self, port: u32, credit: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        let (h, _) = self.recv();
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.dst_port, h.type_),
            (op::REQUEST, HOST_CID, CID, port, TYPE_STREAM)
        );
        assert!(h.src_port >= FIRST_HOST_PORT, "{h:?}");
        assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
        self.send(
            Header {
                buf_alloc: credit,
                ..to_host(port, h.src_port, op::RESPONSE)
            },
            &[],
        );
        let line = read_line(&mut s);
        assert_eq!(line, format!("OK {}\n", h.src_port));
        (s, h.src_port)
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "line so far {line:?}");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether the peer closed `s` (end of file, or a reset when it left
/// bytes unread).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(HANG)).unwrap();
    let mut b = Vec::new();
    match s.read_to_end(&mut b) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

#[test]
fn the_configuration_space_holds_the_cid() {
    let mut v = start("config");
    let lo = read(&mut v.dev, DEVICE_CFG, 4);
    let hi = read(&mut v.dev, DEVICE_CFG + 4, 4);
    assert_eq!(hi << 32 | lo, CID);
    assert_eq!(read(&mut v.dev, DEVICE_CFG + 8, 4), 0, "past the end");
    let state = v.dev.state();
    assert_eq!(state.device.device_type, VIRTIO_ID_VSOCK);
    assert!(state.device.active);
    assert_eq!(read(&mut v.dev, NUM_QUEUES, 2), 3);
    // PCI: 1AF4:1053 (0x1040 + 19), a communication controller (0x0780).
    assert_eq!(cfg_read(&mut v.dev, 0, 4), 0x1053_1af4);
    assert_eq!(cfg_read(&mut v.dev, 0x0a, 2), 0x0780);
    // QEMU's three MSI-X vectors (the table size minus one in bits 0-10
    // of Message Control): Linux shares one among the three queues.
    let cap = msix_cap(&v.dev);
    assert_eq!(cfg_read(&mut v.dev, cap + 2, 2) & 0x7ff, 2);
    assert!(
        VirtioVsock::new(
            2,
            UnixListener::bind(v.dir.0.join("x")).unwrap(),
            &v.uds,
            None
        )
        .is_err(),
        "CID 2 is the host's"
    );
}

#[test]
fn a_host_program_connects_and_bytes_flow_both_ways() {
    let mut v = start("host");
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    s.write_all(b"hello").unwrap();
    let (h, data) = v.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, port, 1234));
    assert_eq!(data, b"hello");
    v.send(to_host(1234, port, op::RW), b"world");
    assert_eq!(read_exact(&mut s, 5), b"world");
    // A second program gets another host port.
    let (_s2, port2) = v.host_connects(1234, 1 << 20);
    assert_ne!(port, port2);
    // Bytes sent right behind the line wait for the RESPONSE, then come
    // as data.
    let mut s3 = UnixStream::connect(&v.uds).unwrap();
    s3.write_all(b"CONNECT 80\nearly").unwrap();
    let (h, _) = v.recv();
    assert_eq!(h.op, op::REQUEST);
    v.send(to_host(80, h.src_port, op::RESPONSE), &[]);
    let (h, data) = v.recv();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"early"[..]));
    assert_eq!(v.handle.stats().connections, 3);
}

#[test]
fn a_burst_from_the_host_fills_buffers_in_order_around_a_malformed_one() {
    let mut v = start("burst");
    // The fourth buffer given is one the device may not write.
    v.rx.set_desc(3, rx_addr(3), RX_BUF_LEN, 0, 0);
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    let sent: Vec<u8> = (0..3 * 4096 + 100u32).map(|i| (i % 253) as u8).collect();
    s.write_all(&sent).unwrap();
    let mut got = Vec::new();
    let mut packets = 0;
    while got.len() < sent.len() {
        let (h, data) = v.recv();
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, port, 1234));
        assert!(!data.is_empty() && data.len() <= 4096, "{}", data.len());
        got.extend(data);
        packets += 1;
    }
    assert_eq!(got, sent, "every byte, in order");
    assert!(packets >= 4, "a packet per buffer: {packets}");
    assert_eq!(v.returned_unused, [3], "given back unused, in its turn");
    v.nothing_before_probe();
    // The stream goes on in the buffers after it.
    s.write_all(b"more").unwrap();
    assert_eq!(v.recv().1, b"more");
}

#[test]
fn event_idx_interrupts_and_notifications_only_where_wanted() {
    let mut v = start("event-idx");
    assert_ne!(
        v.dev.state().device.acked_features & 1 << VIRTIO_RING_F_EVENT_IDX,
        0
    );
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    // The transmit queue: the device asks to hear of the next chain past
    // those it took (one RESPONSE so far).
    assert_eq!(v.tx.avail_event(), 1);
    // The driver wants an interrupt once the used index passes 2: none
    // for the packet that makes it 2, one for the packet that makes it 3.
    v.rx.set_used_event(2);
    let before = v.fakes.msi.items().len();
    s.write_all(b"a").unwrap();
    let (h, data) = v.recv();
    assert_eq!(
        (h.op, h.src_port, data.as_slice()),
        (op::RW, port, &b"a"[..])
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        v.fakes.msi.items().len(),
        before,
        "used index 2: no interrupt"
    );
    s.write_all(b"b").unwrap();
    assert_eq!(v.recv().1, b"b");
    let msi = v.fakes.msi.wait_len(before + 1);
    assert_eq!(msi[before].data, 0x40, "the receive queue's vector");
    // Each chain the guest sends moves avail_event along.
    v.send(to_host(1234, port, op::RW), b"c");
    assert_eq!(read_exact(&mut s, 1), b"c");
    assert_eq!(v.tx.avail_event(), 2);
}

#[test]
fn a_refused_or_malformed_host_connection_is_closed() {
    let mut v = start("refused");
    let mut s = UnixStream::connect(&v.uds).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    let (h, _) = v.recv();
    v.send(to_host(5, h.src_port, op::RST), &[]);
    let mut b = Vec::new();
    assert_eq!(s.read_to_end(&mut b).unwrap(), 0, "closed without OK");
    for bad in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'C'; 40]] {
        let mut s = UnixStream::connect(&v.uds).unwrap();
        s.write_all(bad).unwrap();
        assert!(closed(&mut s), "{bad:?}");
    }
    v.nothing_before_probe();
}

#[test]
fn a_request_the_guest_never_answers_times_out() {
    let mut v = start("timeout");
    let mut s = UnixStream::connect(&v.uds).unwrap();
    s.write_all(b"CONNECT 77\n").unwrap();
    let t = std::time::Instant::now();
    let (h, _) = v.recv();
    assert_eq!((h.op, h.dst_port), (op::REQUEST, 77));
    // The guest says nothing: the host side is closed, the guest told.
    assert!(closed(&mut s));
    assert!(t.elapsed() >= CONNECT_TIMEOUT, "{:?}", t.elapsed());
    let (r, _) = v.recv();
    assert_eq!(
        (r.op, r.src_port, r.dst_port),
        (op::RST, h.src_port, 77),
        "{r:?}"
    );
    // A late answer finds no connection.
    v.send(to_host(77, h.src_port, op::RESPONSE), &[]);
    assert_eq!(v.recv().0.op, op::RST);
}

#[test]
fn the_guest_connects_to_a_host_socket_by_port() {
    let mut v = start("guest");
    let mut path = v.uds.clone().into_os_string();
    path.push("_5678");
    let listener = UnixListener::bind(&path).unwrap();
    v.send(to_host(40000, 5678, op::REQUEST), &[]);
    let (h, _) = v.recv();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (op::RESPONSE, HOST_CID, CID, 5678, 40000)
    );
    assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    v.send(to_host(40000, 5678, op::RW), b"ping");
    assert_eq!(read_exact(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    let (h, data) = v.recv();
    assert_eq!(
        (h.op, h.dst_port, data.as_slice()),
        (op::RW, 40000, &b"pong"[..])
    );
    // No socket for port 5679: RST.
    v.send(to_host(40001, 5679, op::REQUEST), &[]);
    let (h, _) = v.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 5679, 40001));
    // A second REQUEST for a live connection resets it.
    v.send(to_host(40000, 5678, op::REQUEST), &[]);
    let (h, _) = v.recv();
    assert_eq!((h.op, h.dst_port), (op::RST, 40000));
    assert!(closed(&mut s));
}

#[test]
fn shutdown_from_the_host_then_from_the_guest() {
    let mut v = start("shut1");
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    s.shutdown(Shutdown::Write).unwrap();
    let (h, _) = v.recv();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, shutdown::SEND));
    // The guest answers, then shuts both ways: the host gets the bytes,
    // end of file, and the guest an RST.
    v.send(to_host(1234, port, op::RW), b"bye");
    v.send(
        Header {
            flags: shutdown::BOTH,
            ..to_host(1234, port, op::SHUTDOWN)
        },
        &[],
    );
    let mut b = Vec::new();
    s.read_to_end(&mut b).unwrap();
    assert_eq!(b, b"bye");
    let (h, _) = v.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, port, 1234));
    // Gone: more data gets an RST.
    v.send(to_host(1234, port, op::RW), b"x");
    assert_eq!(v.recv().0.op, op::RST);
}

#[test]
fn the_last_bytes_and_the_hosts_end_of_file_both_reach_the_guest() {
    let mut v = start("last");
    // No credit yet: the device sees the bytes and the hang-up behind
    // them come, and reads nothing.
    let (mut s, port) = v.host_connects(1234, 0);
    let sent = vec![7u8; 5000];
    s.write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    // With credit, one read takes every byte; the end of file must
    // follow although no event will come for it.
    v.send(
        Header {
            buf_alloc: 1 << 20,
            ..to_host(1234, port, op::CREDIT_UPDATE)
        },
        &[],
    );
    let mut got = Vec::new();
    let h = loop {
        let (h, data) = v.recv();
        if h.op != op::RW {
            break h;
        }
        got.extend(data);
    };
    assert_eq!(got, sent);
    assert_eq!(
        (h.op, h.flags, h.src_port),
        (op::SHUTDOWN, shutdown::SEND, port)
    );
}

#[test]
fn shutdown_from_the_guest_then_from_the_host() {
    let mut v = start("shut2");
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    v.send(to_host(1234, port, op::RW), b"last");
    v.send(
        Header {
            flags: shutdown::SEND,
            ..to_host(1234, port, op::SHUTDOWN)
        },
        &[],
    );
    let mut b = Vec::new();
    s.read_to_end(&mut b).unwrap();
    assert_eq!(b, b"last", "then end of file");
    // The host still sends, then closes.
    s.write_all(b"reply").unwrap();
    drop(s);
    let (h, data) = v.recv();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"reply"[..]));
    let (h, _) = v.recv();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, shutdown::SEND));
    let (h, _) = v.recv();
    assert_eq!(h.op, op::RST, "both ways done");
}

#[test]
fn packets_for_unknown_connections_get_an_rst_but_an_rst_gets_nothing() {
    let mut v = start("unknown");
    for o in [
        op::RW,
        op::RESPONSE,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ] {
        v.send(to_host(1000, 7777, o), &[]);
        let (h, _) = v.recv();
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
            (op::RST, HOST_CID, CID, 7777, 1000),
            "answering op {o}"
        );
    }
    v.send(to_host(1000, 7777, op::RST), &[]);
    v.nothing_before_probe();
}

#[test]
fn malformed_packets_are_dropped_or_reset_and_the_device_goes_on() {
    let mut v = start("malformed");
    let before = v.handle.stats().tx_malformed;
    // Dropped without an answer: an empty chain, a short header, a
    // spoofed source.
    v.send_chain(&[&[]]);
    v.send_chain(&[&[0u8; 20]]);
    v.send(
        Header {
            src_cid: 4,
            ..to_host(1, 2, op::REQUEST)
        },
        &[],
    );
    v.nothing_before_probe();
    // Answered with RST.
    let resets = [
        Header {
            dst_cid: 9,
            ..to_host(1, 2, op::REQUEST)
        },
        Header {
            type_: 2,
            ..to_host(1, 2, op::REQUEST)
        },
        to_host(1, 2, 0),
        to_host(1, 2, 42),
    ];
    for h in resets {
        v.send(h, &[]);
        let (r, _) = v.recv();
        assert_eq!((r.op, r.dst_port, r.src_port), (op::RST, 1, 2), "for {h:?}");
    }
    // A length past the chain, or past the largest packet.
    let lying = Header {
        len: 100,
        ..to_host(1, 2, op::RW)
    };
    v.send_chain(&[&lying.to_bytes(), &[0; 10]]);
    assert_eq!(v.recv().0.op, op::RST);
    let huge = vec![0u8; MAX_PKT_LEN + 1];
    v.send(to_host(1, 2, op::RW), &huge);
    assert_eq!(v.recv().0.op, op::RST);
    // A REQUEST with a payload.
    v.send(to_host(1, 2, op::REQUEST), b"junk");
    assert_eq!(v.recv().0.op, op::RST);
    assert_eq!(v.handle.stats().tx_malformed - before, 3 + 4 + 3);
    // A connection still works.
    let (mut s, port) = v.host_connects(22, 1 << 20);
    v.send(to_host(22, port, op::RW), b"ok");
    assert_eq!(read_exact(&mut s, 2), b"ok");
}

#[test]
fn a_broken_ring_needs_reset_and_a_reset_closes_connections() {
    let mut v = start("broken");
    let (mut s, _) = v.host_connects(1234, 1 << 20);
    // The driver resets the device: the connection goes.
    write(&mut v.dev, DEVICE_STATUS, 1, 0);
    assert!(closed(&mut s));
    // Set up again; then an available index far ahead.
    let setup = |r: &Ring, vector| QueueSetup {
        vector,
        ..QueueSetup::from(r)
    };
    v.rx = Ring::new(&v.mem, RX_RING, SIZE);
    v.tx = Ring::new(&v.mem, TX_RING, SIZE);
    let ev = Ring::new(&v.mem, EV_RING, SIZE);
    let queues = [setup(&v.rx, 0), setup(&v.tx, 1), setup(&ev, 2)];
    linux_init(&mut v.dev, u64::MAX, NO_VECTOR, &queues).unwrap();
    v.tx.set_avail_idx(100);
    write(&mut v.dev, NOTIFY + 4, 2, 1);
    let deadline = std::time::Instant::now() + HANG;
    while read(&mut v.dev, DEVICE_STATUS, 1) as u8 & NEEDS_RESET == 0 {
        assert!(std::time::Instant::now() < deadline, "no NEEDS_RESET");
        std::thread::yield_now();
    }
}

#[test]
fn a_snapshot_ends_the_connections_and_the_driver_hears_of_it() {
    use crate::device::DeviceSnapshot;
    const EVENT_BUF: u64 = 0x1f000;
    let mut v = start("snapshot");
    let mut ev = Ring::new(&v.mem, EV_RING, SIZE);
    ev.set_desc(0, EVENT_BUF, 4, WRITE, 0);
    v.mem
        .write_obj(0xffff_ffffu32, GuestAddress(EVENT_BUF))
        .unwrap();
    ev.publish(0);
    let (mut s, _port) = v.host_connects(1234, 1 << 20);
    v.dev.pause().unwrap();
    assert!(closed(&mut s), "the host's end of the connection closes");
    let saved = v.dev.snapshot().unwrap();
    assert_eq!(saved.device, DeviceSnapshot::Vsock { cid: CID });
    let q: Vec<(u16, u16, u16)> = saved
        .queues
        .iter()
        .map(|q| (q.index, q.next_avail, q.next_used))
        .collect();
    assert_eq!(
        q,
        [(0, 1, 1), (1, 1, 1), (2, 0, 0)],
        "the receive chain the worker held is given back"
    );
    restores_and_refuses_another_device(&mut v.dev, &saved, DeviceSnapshot::Vsock { cid: 4 });
    // Started again: a transport reset on the event queue, then the
    // device goes on.
    v.dev.resume();
    ev.wait_used(1);
    assert_eq!(ev.used_elem(0), (0, 4));
    assert_eq!(
        v.mem.read_obj::<u32>(GuestAddress(EVENT_BUF)).unwrap(),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    let (mut s2, port2) = v.host_connects(1234, 1 << 20);
    s2.write_all(b"again").unwrap();
    let (h, data) = v.recv();
    assert_eq!(
        (h.op, h.src_port, data.as_slice()),
        (op::RW, port2, &b"again"[..])
    );
}

mod credit;
mod volume;
