//! Flow control end to end: each side's credit bounds what the other
//! sends, and bytes a full host socket refused wait for room.

use super::*;

#[test]
fn the_host_sends_no_more_than_the_guests_credit() {
    let mut v = start("credit");
    let (mut s, port) = v.host_connects(1234, 1000);
    let sent: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    s.write_all(&sent).unwrap();
    let mut got = Vec::new();
    while got.len() < 1000 {
        let (h, data) = v.recv();
        assert_eq!(h.op, op::RW);
        got.extend(data);
    }
    assert_eq!(got.len(), 1000, "exactly the credit");
    v.nothing_before_probe();
    // The guest consumed 600: 600 more come.
    v.send(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 600,
            ..to_host(1234, port, op::CREDIT_UPDATE)
        },
        &[],
    );
    while got.len() < 1600 {
        let (h, data) = v.recv();
        assert_eq!(h.op, op::RW);
        got.extend(data);
    }
    assert_eq!(got.len(), 1600);
    v.nothing_before_probe();
    // A bigger buffer: the rest.
    v.send(
        Header {
            buf_alloc: 1 << 20,
            fwd_cnt: 1600,
            ..to_host(1234, port, op::CREDIT_UPDATE)
        },
        &[],
    );
    while got.len() < 5000 {
        got.extend(v.recv().1);
    }
    assert_eq!(got, sent);
    // Asked, the device tells its own credit.
    v.send(to_host(1234, port, op::RW), &[5; 300]);
    v.send(to_host(1234, port, op::CREDIT_REQUEST), &[]);
    let (h, _) = v.recv();
    assert_eq!(
        (h.op, h.buf_alloc, h.dst_port),
        (op::CREDIT_UPDATE, CONN_BUF_ALLOC, 1234)
    );
    assert!(h.fwd_cnt <= 300);
    assert_eq!(read_exact(&mut s, 300), [5; 300]);
}

#[test]
fn the_guest_hears_of_free_space_when_its_credit_runs_low() {
    let mut v = start("update");
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    let reader = std::thread::spawn(move || read_exact(&mut s, 4 * MAX_PKT_LEN));
    let chunk: Vec<u8> = (0..MAX_PKT_LEN).map(|i| (i % 251) as u8).collect();
    for _ in 0..4 {
        v.send(to_host(1234, port, op::RW), &chunk);
    }
    let got = reader.join().unwrap();
    assert!(got.chunks(MAX_PKT_LEN).all(|c| c == chunk.as_slice()));
    // 256 KiB sent, and the guest heard nothing since the RESPONSE: it
    // believes the buffer full, so the device tells it of the space the
    // socket freed, until the guest believes at least CREDIT_LOW free
    // (every update carries fwd_cnt; the guest sent 256 KiB, so what it
    // believes free is that fwd_cnt).
    let mut updates = 0;
    loop {
        let (h, _) = v.recv();
        assert_eq!(
            (h.op, h.buf_alloc),
            (op::CREDIT_UPDATE, CONN_BUF_ALLOC),
            "{h:?}"
        );
        updates += 1;
        if h.fwd_cnt >= CREDIT_LOW {
            break;
        }
    }
    assert!(updates >= 1);
}

#[test]
fn bytes_a_full_socket_refused_follow_once_the_host_reads() {
    let mut v = start("full");
    let (mut s, port) = v.host_connects(1234, 1 << 20);
    // The whole credit (256 KiB) while the host reads nothing: more than
    // a Unix socket holds (about 208 KiB by default), so the rest waits
    // in the device for room, which only then is watched for.
    let chunk = |k: usize| -> Vec<u8> { (0..MAX_PKT_LEN).map(|i| ((i + k) % 251) as u8).collect() };
    let n = CONN_BUF_ALLOC as usize / MAX_PKT_LEN;
    for k in 0..n {
        v.send(to_host(1234, port, op::RW), &chunk(k));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    for k in 0..n {
        assert!(read_exact(&mut s, MAX_PKT_LEN) == chunk(k), "chunk {k}");
    }
    // And the connection goes on both ways.
    v.send(to_host(1234, port, op::RW), b"more");
    assert_eq!(read_exact(&mut s, 4), b"more");
    s.write_all(b"back").unwrap();
    // (After the credit updates for the space the host's reads freed.)
    let (h, data) = loop {
        match v.recv() {
            (h, _) if h.op == op::CREDIT_UPDATE => continue,
            p => break p,
        }
    };
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"back"[..]), "{h:?}");
}
