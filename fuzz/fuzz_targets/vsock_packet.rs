//! The vsock packet parser (`vmm_virtio::vsock::packet`): any bytes a
//! guest can put in a transmit chain, with the guest's CID from the first
//! input byte. Checks that an accepted packet is one the device may act
//! on (from the guest, to the host, a stream, a known operation, a payload
//! within the chain and the largest packet, and only on RW), that a
//! refused one is answered exactly when it should be and never with an
//! answer to an RST, and that a header reads back as written.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_virtio::vsock::packet::{op, parse_tx, Header, PacketError, HDR_LEN, TYPE_STREAM};
use vmm_virtio::vsock::{HOST_CID, MAX_PKT_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&cid, bytes)) = data.split_first() else {
        return;
    };
    let cid = u64::from(cid);
    match parse_tx(bytes, cid) {
        Ok(h) => {
            assert_eq!(
                (h.src_cid, h.dst_cid, h.type_),
                (cid, HOST_CID, TYPE_STREAM)
            );
            assert!((op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op));
            let len = h.len as usize;
            assert!(len <= MAX_PKT_LEN && HDR_LEN + len <= bytes.len());
            assert!(h.op == op::RW || len == 0);
            assert_eq!(&h.to_bytes()[..], &bytes[..HDR_LEN]);
        }
        Err((None, e)) => {
            assert_eq!(e, PacketError::Short(bytes.len()));
            assert!(bytes.len() < HDR_LEN && !e.answered());
        }
        Err((Some(h), e)) => {
            assert_eq!(&h.to_bytes()[..], &bytes[..HDR_LEN]);
            assert_eq!(e.answered(), h.src_cid == cid, "{e}");
            let reply = h.reset_reply();
            assert_eq!(reply.op, op::RST);
            assert_eq!(
                (reply.src_port, reply.dst_port, reply.len),
                (h.dst_port, h.src_port, 0)
            );
        }
    }
    if bytes.len() >= HDR_LEN {
        let h = Header::parse(bytes).expect("a whole header parses");
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h));
    }
});
