//! The parser on hand-made chains: every way a chain can be wrong, each
//! its own error, and a mini-fuzz.

use virtio_bindings::virtio_blk::VIRTIO_BLK_F_DISCARD;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::testing::{memory, Mem, Rng, WRITE};

const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x3000;
const MEM: usize = 0x10000;

fn limits() -> Limits {
    Limits {
        capacity: 100,
        read_only: false,
        features: 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES,
        max_descriptors: 8,
        max_discard_sectors: 64,
        max_discard_seg: 1,
        max_write_zeroes_sectors: 64,
        max_write_zeroes_seg: 2,
    }
}

fn header(mem: &Mem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn segment(mem: &Mem, at: u64, sector: u64, sectors: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(at)).unwrap();
}

fn r(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, 0, 0)
}

fn w(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, WRITE, 0)
}

fn parse_on(mem: &Mem, chain: &[Descriptor], l: &Limits) -> Result<Request, Rejected> {
    parse(chain.iter().copied(), mem, l)
}

fn error(mem: &Mem, chain: &[Descriptor], l: &Limits) -> (RequestError, Option<u64>) {
    let e = parse_on(mem, chain, l).unwrap_err();
    (e.error, e.status.map(|a| a.0))
}

#[test]
fn reads_and_writes_parse_into_plain_values() {
    let mem = memory(MEM);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 7);
    let req = parse_on(
        &mem,
        &[r(HDR, 16), w(DATA, 512), w(DATA + 0x400, 512), w(STATUS, 1)],
        &limits(),
    )
    .unwrap();
    assert_eq!(req.status, GuestAddress(STATUS));
    let RequestKind::Read { sector: 7, data } = req.kind else {
        panic!("{:?}", req.kind);
    };
    assert_eq!(data.len(), 1024);
    assert_eq!(data.segments().len(), 2);
    // Any layout: the header and the data in one descriptor, the status
    // at the end of the data's.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 99);
    let req = parse_on(&mem, &[r(HDR, 16 + 512), w(STATUS, 1)], &limits()).unwrap();
    let RequestKind::Write { sector: 99, data } = req.kind else {
        panic!("{:?}", req.kind);
    };
    assert_eq!(
        data.segments(),
        [Segment {
            addr: GuestAddress(HDR + 16),
            len: 512
        }]
    );
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let req = parse_on(&mem, &[r(HDR, 8), r(HDR + 8, 8), w(DATA, 513)], &limits()).unwrap();
    assert_eq!(req.status, GuestAddress(DATA + 512));
    // Zero-length descriptors add nothing.
    let req = parse_on(
        &mem,
        &[r(HDR, 16), r(0, 0), w(DATA, 512), w(0, 0), w(STATUS, 1)],
        &limits(),
    )
    .unwrap();
    assert!(matches!(req.kind, RequestKind::Read { ref data, .. } if data.len() == 512));
    // Zero sectors at the very end is fine.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 100);
    assert!(parse_on(&mem, &[r(HDR, 16), w(STATUS, 1)], &limits()).is_ok());
}

#[test]
fn flush_and_get_id() {
    let mem = memory(MEM);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let req = parse_on(&mem, &[r(HDR, 16), w(STATUS, 1)], &limits()).unwrap();
    assert_eq!(req.kind, RequestKind::Flush);
    header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let req = parse_on(&mem, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)], &limits()).unwrap();
    assert!(matches!(req.kind, RequestKind::GetId { ref data } if data.len() == 20));
    assert_eq!(
        error(&mem, &[r(HDR, 16), w(STATUS, 1)], &limits()),
        (RequestError::NoIdBuffer, Some(STATUS))
    );
}

#[test]
fn chains_without_a_usable_status_byte() {
    let mem = memory(MEM);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let l = limits();
    assert_eq!(error(&mem, &[], &l), (RequestError::EmptyChain, None));
    assert_eq!(
        error(&mem, &[r(HDR, 16), r(STATUS, 1)], &l),
        (RequestError::NoStatus, None),
        "status read-only"
    );
    assert_eq!(
        error(&mem, &[r(HDR, 16), w(STATUS, 0)], &l),
        (RequestError::NoStatus, None)
    );
    assert_eq!(
        error(&mem, &[r(HDR, 16), w(MEM as u64, 1)], &l),
        (RequestError::NoStatus, None),
        "status outside memory"
    );
    assert_eq!(
        error(
            &mem,
            &[r(HDR, 16), w(DATA, 512), r(DATA, 16), w(STATUS, 1)],
            &l
        ),
        (RequestError::ReadableAfterWritable, None)
    );
    let long = vec![r(HDR, 16); 9];
    assert_eq!(
        error(&mem, &long, &l),
        (RequestError::TooManyDescriptors(8), None)
    );
}

#[test]
fn malformed_requests_fail_with_ioerr() {
    let mem = memory(MEM);
    let l = limits();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        error(&mem, &[r(HDR, 15), w(STATUS, 1)], &l),
        (RequestError::HeaderTooShort(15), Some(STATUS))
    );
    assert_eq!(
        error(
            &mem,
            &[r(HDR, 16), w(MEM as u64 - 256, 512), w(STATUS, 1)],
            &l
        ),
        (
            RequestError::OutsideMemory {
                addr: MEM as u64 - 256,
                len: 512
            },
            Some(STATUS)
        )
    );
    assert_eq!(
        error(&mem, &[r(u64::MAX - 7, 16), w(STATUS, 1)], &l).0,
        RequestError::OutsideMemory {
            addr: u64::MAX - 7,
            len: 16
        }
    );
    assert_eq!(
        error(&mem, &[r(HDR, 16), w(DATA, 511), w(STATUS, 1)], &l).0,
        RequestError::NotSectorMultiple(511)
    );
    header(&mem, HDR, VIRTIO_BLK_T_IN, 99);
    assert_eq!(
        error(&mem, &[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)], &l).0,
        RequestError::PastEnd {
            sector: 99,
            sectors: 2,
            capacity: 100
        }
    );
    header(&mem, HDR, VIRTIO_BLK_T_OUT, u64::MAX);
    assert_eq!(
        error(&mem, &[r(HDR, 16 + 512), w(STATUS, 1)], &l).0,
        RequestError::SectorOverflow(u64::MAX)
    );
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    let ro = Limits {
        read_only: true,
        ..l
    };
    assert_eq!(
        error(&mem, &[r(HDR, 16 + 512), w(STATUS, 1)], &ro).0,
        RequestError::ReadOnly
    );
    let e = parse_on(&mem, &[r(HDR, 16 + 512), w(STATUS, 1)], &ro).unwrap_err();
    assert_eq!(e.error.status(), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn unknown_types_and_flags_are_unsupported() {
    let mem = memory(MEM);
    let l = limits();
    header(&mem, HDR, 99, 0);
    let e = parse_on(&mem, &[r(HDR, 16), w(STATUS, 1)], &l).unwrap_err();
    assert_eq!(e.error, RequestError::Unsupported(99));
    assert_eq!(e.error.status(), VIRTIO_BLK_S_UNSUPP as u8);
    // Discard: the unmap flag is not allowed; write-zeroes takes it.
    header(&mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    segment(&mem, DATA, 4, 8, 1);
    let chain = [r(HDR, 16), r(DATA, 16), w(STATUS, 1)];
    assert_eq!(error(&mem, &chain, &l).0, RequestError::BadFlags(1));
    segment(&mem, DATA, 4, 8, 0);
    assert_eq!(
        parse_on(&mem, &chain, &l).unwrap().kind,
        RequestKind::Discard(vec![Range {
            sector: 4,
            sectors: 8,
            unmap: false
        }])
    );
    let no_discard = Limits { features: 0, ..l };
    let e = parse_on(&mem, &chain, &no_discard).unwrap_err();
    assert_eq!(
        (e.error.clone(), e.error.status()),
        (RequestError::NotNegotiated(11), 2)
    );
    header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&mem, DATA, 4, 8, 1);
    assert_eq!(
        parse_on(&mem, &chain, &l).unwrap().kind,
        RequestKind::WriteZeroes(vec![Range {
            sector: 4,
            sectors: 8,
            unmap: true
        }])
    );
    segment(&mem, DATA, 4, 8, 2);
    assert_eq!(error(&mem, &chain, &l).0, RequestError::BadFlags(2));
}

#[test]
fn discard_segments_are_checked() {
    let mem = memory(MEM);
    let l = limits();
    header(&mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    segment(&mem, DATA, 0, 1, 0);
    segment(&mem, DATA + 16, 1, 1, 0);
    let e = |chain: &[Descriptor]| error(&mem, chain, &l).0;
    assert_eq!(e(&[r(HDR, 16), w(STATUS, 1)]), RequestError::BadSegments(0));
    assert_eq!(
        e(&[r(HDR, 16), r(DATA, 15), w(STATUS, 1)]),
        RequestError::BadSegments(15)
    );
    assert_eq!(
        e(&[r(HDR, 16), r(DATA, 32), w(STATUS, 1)]),
        RequestError::TooManySegments(2)
    );
    segment(&mem, DATA, 0, 65, 0);
    assert_eq!(
        e(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]),
        RequestError::SegmentTooLarge(65)
    );
    segment(&mem, DATA, 90, 20, 0);
    assert_eq!(
        e(&[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]),
        RequestError::PastEnd {
            sector: 90,
            sectors: 20,
            capacity: 100
        }
    );
    // Two write-zeroes segments are allowed by these limits.
    header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&mem, DATA, 0, 1, 0);
    let req = parse_on(&mem, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &l).unwrap();
    assert!(matches!(req.kind, RequestKind::WriteZeroes(ref v) if v.len() == 2));
    let ro = Limits {
        read_only: true,
        ..l
    };
    assert_eq!(
        error(&mem, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &ro).0,
        RequestError::ReadOnly
    );
}

#[test]
fn buffers_split_and_copy_across_segments() {
    let mem = memory(MEM);
    let mut b = Buffers::default();
    b.push(GuestAddress(0x100), 3);
    b.push(GuestAddress(0x200), 0);
    b.push(GuestAddress(0x300), 5);
    assert_eq!(b.len(), 8);
    b.write_from(&*mem, 1, &[1, 2, 3, 4]).unwrap();
    let mut out = [0u8; 8];
    b.read_into(&*mem, 0, &mut out).unwrap();
    assert_eq!(out, [0, 1, 2, 3, 4, 0, 0, 0]);
    let front = b.clone().take_front(4).unwrap();
    assert_eq!(front.len(), 4);
    assert_eq!(
        front.segments()[1],
        Segment {
            addr: GuestAddress(0x300),
            len: 1
        }
    );
    assert!(b.clone().take_front(9).is_none());
    assert_eq!(b.take_last_byte(), Some(GuestAddress(0x304)));
    assert_eq!(b.len(), 7);
}

#[test]
fn any_chain_parses_or_fails_without_panicking() {
    let mem = memory(MEM);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let l = limits();
    for _ in 0..20_000 {
        let x = rng.next();
        header(
            &mem,
            HDR,
            [0, 1, 4, 8, 11, 13, 99][x as usize % 7],
            rng.next() % 128,
        );
        segment(
            &mem,
            DATA,
            rng.next() % 128,
            (rng.next() % 80) as u32,
            (x >> 32) as u32 % 4,
        );
        let n = (x >> 8) % 11;
        let chain: Vec<Descriptor> = (0..n)
            .map(|_| {
                let y = rng.next();
                let addr = match y % 4 {
                    0 => HDR,
                    1 => DATA,
                    2 => STATUS + (y >> 40) % 64,
                    _ => y >> 8,
                };
                let len = [0u32, 1, 15, 16, 17, 512, 513, 1024, u32::MAX][(y >> 16) as usize % 9];
                Descriptor::new(addr, len, if y >> 30 & 1 == 1 { WRITE } else { 0 }, 0)
            })
            .collect();
        match parse_on(&mem, &chain, &l) {
            Ok(req) => {
                assert!(mem.check_range(req.status, 1, Permissions::Write));
                if let RequestKind::Read { data, .. } | RequestKind::Write { data, .. } = &req.kind
                {
                    for s in data.segments() {
                        assert!(mem.check_range(s.addr, s.len as usize, Permissions::Read));
                    }
                }
            }
            Err(e) => {
                let _ = e.error.status();
            }
        }
    }
}
