//! The 44-byte packet header (`struct virtio_vsock_hdr`, all little
//! endian) and the checks a packet from the guest must pass before the
//! device acts on it. Pure: no guest memory, no sockets (so the fuzz
//! target can drive it).

use super::{HOST_CID, MAX_PKT_LEN};

/// The header's length.
pub const HDR_LEN: usize = 44;

/// `type`: a stream socket (the only type served).
pub const TYPE_STREAM: u16 = 1;

/// `op`: what a packet asks.
pub mod op {
    /// Open a connection.
    pub const REQUEST: u16 = 1;
    /// Accept a connection.
    pub const RESPONSE: u16 = 2;
    /// Refuse or end a connection at once.
    pub const RST: u16 = 3;
    /// No more receiving and/or sending (see [`super::shutdown`]).
    pub const SHUTDOWN: u16 = 4;
    /// Payload.
    pub const RW: u16 = 5;
    /// The sender's credit (buf_alloc, fwd_cnt) changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of a SHUTDOWN.
pub mod shutdown {
    /// The sender will receive no more.
    pub const RCV: u32 = 1;
    /// The sender will send no more.
    pub const SEND: u32 = 2;
    /// Both.
    pub const BOTH: u32 = RCV | SEND;
}

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The sender's CID.
    pub src_cid: u64,
    /// The receiver's CID.
    pub dst_cid: u64,
    /// The sender's port.
    pub src_port: u32,
    /// The receiver's port.
    pub dst_port: u32,
    /// The payload's length.
    pub len: u32,
    /// The socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// The operation ([`op`]).
    pub op: u16,
    /// SHUTDOWN's flags.
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// The bytes the sender has taken out of that buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

/// Why a packet from the guest was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than a header.
    #[error("{0} bytes, less than a header")]
    Short(usize),
    /// The source is not the guest's CID (a spoofed address): dropped
    /// without an answer.
    #[error("source CID {0} is not the guest's")]
    SrcCid(u64),
    /// The destination is not the host: answered with RST.
    #[error("destination CID {0} is not the host's")]
    DstCid(u64),
    /// Not a stream packet: answered with RST.
    #[error("socket type {0} is not a stream")]
    Type(u16),
    /// An operation that does not exist: answered with RST.
    #[error("unknown operation {0}")]
    Op(u16),
    /// A payload longer than [`MAX_PKT_LEN`], or than the chain holds:
    /// answered with RST.
    #[error("payload length {len} with {have} bytes after the header")]
    Len {
        /// What the header says.
        len: u32,
        /// What the chain holds.
        have: usize,
    },
    /// A payload on a packet that carries none (only RW has one):
    /// answered with RST.
    #[error("operation {0} with a payload")]
    Payload(u16),
}

impl PacketError {
    /// Whether the guest gets an RST for it (when it is not an RST
    /// itself): everything but a short or spoofed packet.
    pub fn answered(self) -> bool {
        !matches!(self, Self::Short(_) | Self::SrcCid(_))
    }
}

impl Header {
    /// Reads a header from the first [`HDR_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        let b: &[u8; HDR_LEN] = bytes
            .get(..HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(PacketError::Short(bytes.len()))?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Ok(Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A packet from the host to the guest's `dst_port` from host port
    /// `src_port`, no payload.
    pub fn to_guest(guest_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            ..Self::default()
        }
    }

    /// The RST answering this packet (ports swapped).
    pub fn reset_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Self::default()
        }
    }
}

/// Parses and checks a packet the guest sent: `bytes` is the whole chain
/// (header and payload) as gathered; the payload is the header's `len`
/// bytes after it. On success, the header.
pub fn parse_tx(bytes: &[u8], guest_cid: u64) -> Result<Header, (Option<Header>, PacketError)> {
    check_tx(bytes, bytes.len().saturating_sub(HDR_LEN), guest_cid)
}

/// [`parse_tx`] with the payload left where it is: `header` is the
/// chain's first bytes (at most [`HDR_LEN`] are read), `have` the bytes
/// the chain holds after the header.
pub fn check_tx(
    header: &[u8],
    have: usize,
    guest_cid: u64,
) -> Result<Header, (Option<Header>, PacketError)> {
    let h = Header::parse(header).map_err(|e| (None, e))?;
    let fail = |e| Err((Some(h), e));
    if h.src_cid != guest_cid {
        return fail(PacketError::SrcCid(h.src_cid));
    }
    if h.dst_cid != HOST_CID {
        return fail(PacketError::DstCid(h.dst_cid));
    }
    if h.type_ != TYPE_STREAM {
        return fail(PacketError::Type(h.type_));
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op) {
        return fail(PacketError::Op(h.op));
    }
    if h.len as usize > MAX_PKT_LEN || h.len as usize > have {
        return fail(PacketError::Len { len: h.len, have });
    }
    if h.op != op::RW && h.len != 0 {
        return fail(PacketError::Payload(h.op));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 5678,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    fn packet(h: &Header, payload: usize) -> Vec<u8> {
        let mut v = h.to_bytes().to_vec();
        v.resize(HDR_LEN + payload, 0xab);
        v
    }

    #[test]
    fn a_header_round_trips_in_the_specs_layout() {
        let h = rw(5);
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[16..20], &1000u32.to_le_bytes());
        assert_eq!(&b[20..24], &5678u32.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[36..40], &65536u32.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
        assert_eq!(Header::parse(&b), Ok(h));
        assert_eq!(parse_tx(&packet(&h, 5), 3), Ok(h));
    }

    #[test]
    fn malformed_packets_are_refused_with_the_right_answer() {
        let short = parse_tx(&[0; 43], 3).unwrap_err();
        assert_eq!(short, (None, PacketError::Short(43)));
        assert!(!short.1.answered());
        assert_eq!(
            parse_tx(&[], 3).unwrap_err().1,
            PacketError::Short(0),
            "a zero-length chain"
        );
        let spoofed = parse_tx(&packet(&rw(0), 0), 4).unwrap_err().1;
        assert_eq!(spoofed, PacketError::SrcCid(3));
        assert!(!spoofed.answered());
        let cases = [
            (
                Header {
                    dst_cid: 7,
                    ..rw(0)
                },
                0,
                PacketError::DstCid(7),
            ),
            (Header { type_: 2, ..rw(0) }, 0, PacketError::Type(2)),
            (Header { op: 0, ..rw(0) }, 0, PacketError::Op(0)),
            (Header { op: 8, ..rw(0) }, 0, PacketError::Op(8)),
            (rw(10), 9, PacketError::Len { len: 10, have: 9 }),
            (
                rw(MAX_PKT_LEN as u32 + 1),
                MAX_PKT_LEN + 1,
                PacketError::Len {
                    len: MAX_PKT_LEN as u32 + 1,
                    have: MAX_PKT_LEN + 1,
                },
            ),
            (
                Header {
                    op: op::REQUEST,
                    ..rw(4)
                },
                4,
                PacketError::Payload(op::REQUEST),
            ),
        ];
        for (h, payload, want) in cases {
            let got = parse_tx(&packet(&h, payload), 3).unwrap_err();
            assert_eq!(got, (Some(h), want));
            assert!(want.answered(), "{want}");
        }
        // A payload shorter than the chain is fine: the rest is ignored.
        assert_eq!(parse_tx(&packet(&rw(3), 10), 3), Ok(rw(3)));
    }

    #[test]
    fn a_reset_reply_swaps_the_addresses() {
        let r = rw(0).reset_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op, r.len),
            (HOST_CID, 3, 5678, 1000, op::RST, 0)
        );
    }
}
