//! Many packets on one connection: every byte arrives, in order, and the
//! host never sends past the guest's credit. Also the workloads to
//! profile the worker with (`valgrind --tool=callgrind
//! --separate-threads=yes` on the test binary with `volume::`; the
//! worker is its own thread): `VSOCK_VOLUME=N` scales both.

use super::*;

/// How many round trips, and how many 4 KiB packets the stream sends.
fn volume() -> usize {
    std::env::var("VSOCK_VOLUME")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

#[test]
fn one_byte_round_trips_come_back_in_turn() {
    let mut v = start("round-trips");
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    for i in 0..volume() {
        s.write_all(&[i as u8]).unwrap();
        let (h, data) = v.recv();
        assert_eq!((h.op, data.as_slice()), (op::RW, &[i as u8][..]), "{i}");
        v.send(to_host(1234, port, op::RW), &[!(i as u8)]);
        assert_eq!(read_exact(&mut s, 1), [!(i as u8)], "{i}");
    }
}

#[test]
fn a_long_stream_from_the_host_arrives_whole_within_the_credit() {
    const CREDIT: usize = 256 * 1024;
    let mut v = start("stream");
    let (s, port) = v.host_connects(1234, CREDIT as u32);
    let total = volume() * 4096;
    let byte = |i: usize| (i % 251) as u8;
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let all: Vec<u8> = (0..total).map(byte).collect();
        w.write_all(&all).unwrap();
    });
    let (mut got, mut acked) = (0, 0);
    while got < total {
        let (h, data) = v.recv();
        assert_eq!(h.op, op::RW);
        for (k, &b) in data.iter().enumerate() {
            assert_eq!(b, byte(got + k), "byte {}", got + k);
        }
        got += data.len();
        assert!(
            got - acked <= CREDIT,
            "{got} bytes sent, {acked} acknowledged"
        );
        // The guest reads in quarters of its buffer.
        if got - acked >= CREDIT / 4 {
            acked = got;
            v.send(
                Header {
                    buf_alloc: CREDIT as u32,
                    fwd_cnt: acked as u32,
                    ..to_host(1234, port, op::CREDIT_UPDATE)
                },
                &[],
            );
        }
    }
    writer.join().unwrap();
    drop(s);
}
