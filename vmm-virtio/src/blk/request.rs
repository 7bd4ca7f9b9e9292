//! A virtio-blk request, parsed and checked from its descriptor chain into
//! a plain value before any I/O.
//!
//! The chain is read as the specification frames it (any layout): the
//! device-readable descriptors form one byte stream (the 16-byte header,
//! then data for writes, discards and write-zeroes) and the
//! device-writable ones another (data for reads and GET_ID, then the
//! status byte, which is the stream's last byte). How the driver cut the
//! streams into descriptors does not matter; that readable descriptors
//! come first does. Zero-length descriptors add nothing.
//!
//! The chain's length is bounded twice: by `virtio-queue` (a chain visits
//! at most the queue's size of descriptors, or an indirect table's length,
//! so loops end) and here ([`Limits::max_descriptors`]).

use smallvec::SmallVec;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::SECTOR_SIZE;

/// The request header's length: type, reserved, sector.
pub const HEADER_LEN: u64 = 16;
/// A discard or write-zeroes segment's length.
pub const SEGMENT_LEN: u64 = 16;

/// What the parser needs to know about the disk and the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The capacity in sectors.
    pub capacity: u64,
    /// Whether the disk is read-only.
    pub read_only: bool,
    /// The negotiated features.
    pub features: u64,
    /// The most descriptors in a chain (`seg_max` + header + status).
    pub max_descriptors: usize,
    /// The most sectors in one discard segment.
    pub max_discard_sectors: u32,
    /// The most segments in one discard request.
    pub max_discard_seg: u32,
    /// The most sectors in one write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
    /// The most segments in one write-zeroes request.
    pub max_write_zeroes_seg: u32,
}

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where.
    pub addr: GuestAddress,
    /// How long (never 0).
    pub len: u32,
}

/// How many segments a [`Buffers`] holds in place (more go to the heap):
/// a packet's header and payload, a request's data.
const INLINE_SEGMENTS: usize = 4;

/// Guest buffers read or written as one stream, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Buffers {
    segments: SmallVec<[Segment; INLINE_SEGMENTS]>,
    len: u64,
}

impl Buffers {
    /// Appends a buffer (empty ones are dropped).
    pub(crate) fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.segments.push(Segment { addr, len });
            self.len += u64::from(len);
        }
    }

    /// The buffers.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Their total length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Splits off the first `n` bytes.
    fn take_front(&mut self, n: u64) -> Option<Buffers> {
        if n > self.len {
            return None;
        }
        let mut front = Buffers::default();
        let mut rest = Buffers::default();
        let mut left = n;
        for s in &self.segments {
            let here = u64::from(s.len).min(left);
            front.push(s.addr, here as u32);
            left -= here;
            if let Some(addr) = s.addr.checked_add(here) {
                rest.push(addr, s.len - here as u32);
            }
        }
        *self = rest;
        Some(front)
    }

    /// Splits off the last byte.
    fn take_last_byte(&mut self) -> Option<GuestAddress> {
        let last = self.segments.last_mut()?;
        let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
        last.len -= 1;
        if last.len == 0 {
            self.segments.pop();
        }
        self.len -= 1;
        Some(addr)
    }

    /// The guest ranges covering stream bytes `[pos, pos + n)`, each with
    /// its offset in that window.
    fn ranges(&self, pos: u64, n: u64) -> impl Iterator<Item = (GuestAddress, usize, usize)> + '_ {
        let end = pos.saturating_add(n);
        let mut start = 0u64;
        self.segments.iter().filter_map(move |s| {
            let seg_start = start;
            let seg_end = start + u64::from(s.len);
            start = seg_end;
            let from = seg_start.max(pos);
            let to = seg_end.min(end);
            (from < to).then(|| {
                (
                    s.addr.unchecked_add(from - seg_start),
                    (to - from) as usize,
                    (from - pos) as usize,
                )
            })
        })
    }

    /// The buffers holding stream bytes `[pos, pos + n)` (fewer past the
    /// end).
    pub(crate) fn window(&self, pos: u64, n: u64) -> Buffers {
        let mut w = Buffers::default();
        for (addr, len, _) in self.ranges(pos, n) {
            w.push(addr, len as u32);
        }
        w
    }

    /// Copies `src` into the stream from byte `pos`.
    pub fn write_from<M: GuestMemory>(
        &self,
        mem: &M,
        pos: u64,
        src: &[u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        for (addr, len, at) in self.ranges(pos, src.len() as u64) {
            mem.write_slice(&src[at..at + len], addr)?;
        }
        Ok(())
    }

    /// Copies the stream's bytes from `pos` into `dst`.
    pub fn read_into<M: GuestMemory>(
        &self,
        mem: &M,
        pos: u64,
        dst: &mut [u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        for (addr, len, at) in self.ranges(pos, dst.len() as u64) {
            mem.read_slice(&mut dst[at..at + len], addr)?;
        }
        Ok(())
    }
}

/// A discard or write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first sector.
    pub sector: u64,
    /// How many sectors.
    pub sectors: u32,
    /// Write-zeroes only: the device may deallocate.
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `data.len()` bytes from `sector` into `data`.
    Read {
        /// The first sector.
        sector: u64,
        /// Where the bytes go.
        data: Buffers,
    },
    /// Write `data` at `sector`.
    Write {
        /// The first sector.
        sector: u64,
        /// Where the bytes come from.
        data: Buffers,
    },
    /// Make completed writes stable.
    Flush,
    /// Copy the ID string into `data` (at most 20 bytes of it).
    GetId {
        /// Where the ID goes.
        data: Buffers,
    },
    /// Deallocate, if the host can.
    Discard(Vec<Range>),
    /// Make the ranges read as zeroes.
    WriteZeroes(Vec<Range>),
}

/// A request ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestKind,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A chain refused before any I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No descriptor at all (a bad head index or an unreadable table).
    #[error("empty descriptor chain")]
    EmptyChain,
    /// More descriptors than [`Limits::max_descriptors`].
    #[error("more than {0} descriptors")]
    TooManyDescriptors(usize),
    /// A device-readable descriptor after a device-writable one.
    #[error("a readable descriptor follows a writable one")]
    ReadableAfterWritable,
    /// No device-writable byte for the status (the last descriptor is
    /// readable, or every writable descriptor is empty), or it is outside
    /// guest memory.
    #[error("no writable status byte")]
    NoStatus,
    /// Fewer than 16 readable bytes.
    #[error("header too short: {0} bytes")]
    HeaderTooShort(u64),
    /// A buffer outside guest memory.
    #[error("buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Where.
        addr: u64,
        /// How long.
        len: u32,
    },
    /// Read or write data that is not whole sectors.
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
    /// `sector + sectors` overflows.
    #[error("sector {0} plus the length overflows")]
    SectorOverflow(u64),
    /// Past the end of the disk.
    #[error("sectors {sector}+{sectors} are past the end ({capacity})")]
    PastEnd {
        /// The first sector.
        sector: u64,
        /// How many.
        sectors: u64,
        /// The capacity.
        capacity: u64,
    },
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// Discard or write-zeroes data that is not whole segments (or none).
    #[error("segment data of {0} bytes is not a multiple of 16")]
    BadSegments(u64),
    /// More segments than the configuration space allows.
    #[error("{0} segments, more than allowed")]
    TooManySegments(u64),
    /// A segment with more sectors than the configuration space allows.
    #[error("a segment of {0} sectors, more than allowed")]
    SegmentTooLarge(u32),
    /// GET_ID with nowhere to put the ID.
    #[error("GET_ID with no data buffer")]
    NoIdBuffer,
    /// A request type the device does not know.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Discard or write-zeroes without the feature negotiated.
    #[error("request type {0} needs a feature the driver did not accept")]
    NotNegotiated(u32),
    /// Flags the specification does not define, or unmap on a discard.
    #[error("unsupported segment flags {0:#x}")]
    BadFlags(u32),
}

impl RequestError {
    /// The status byte to report, if there is somewhere to put it.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::NotNegotiated(_) | Self::BadFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A refused chain: why, and where its status byte is if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: RequestError,
    /// The status byte, if the chain has a usable one.
    pub status: Option<GuestAddress>,
}

fn reject(error: RequestError, status: Option<GuestAddress>) -> Rejected {
    Rejected { error, status }
}

/// Parses the chain `descriptors` (as `virtio-queue` yields them) on
/// memory `mem` for a disk with `limits`.
pub fn parse<M, I>(descriptors: I, mem: &M, limits: &Limits) -> Result<Request, Rejected>
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    let mut readable = Buffers::default();
    let mut writable = Buffers::default();
    let mut count = 0usize;
    let mut seen_writable = false;
    let mut misordered = false;
    let mut outside: Option<(u64, u32)> = None;
    for d in descriptors.into_iter().take(limits.max_descriptors + 1) {
        count += 1;
        if d.is_write_only() {
            seen_writable = true;
            writable.push(d.addr(), d.len());
        } else {
            misordered |= seen_writable;
            readable.push(d.addr(), d.len());
        }
        let perm = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, perm) {
            outside.get_or_insert((d.addr().0, d.len()));
        }
    }
    if count == 0 {
        return Err(reject(RequestError::EmptyChain, None));
    }
    if count > limits.max_descriptors {
        return Err(reject(
            RequestError::TooManyDescriptors(limits.max_descriptors),
            None,
        ));
    }
    if misordered {
        return Err(reject(RequestError::ReadableAfterWritable, None));
    }
    let status = writable
        .take_last_byte()
        .filter(|&a| mem.check_range(a, 1, Permissions::Write))
        .ok_or_else(|| reject(RequestError::NoStatus, None))?;
    let rej = |error| reject(error, Some(status));
    let Some(header) = readable.take_front(HEADER_LEN) else {
        return Err(rej(RequestError::HeaderTooShort(readable.len())));
    };
    if let Some((addr, len)) = outside {
        return Err(rej(RequestError::OutsideMemory { addr, len }));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    header
        .read_into(mem, 0, &mut h)
        .map_err(|_| rej(RequestError::HeaderTooShort(0)))?;
    let request_type = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let kind = match request_type {
        VIRTIO_BLK_T_IN => {
            check_range(sector, &writable, limits).map_err(rej)?;
            RequestKind::Read {
                sector,
                data: writable,
            }
        }
        VIRTIO_BLK_T_OUT => {
            if limits.read_only {
                return Err(rej(RequestError::ReadOnly));
            }
            check_range(sector, &readable, limits).map_err(rej)?;
            RequestKind::Write {
                sector,
                data: readable,
            }
        }
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if writable.is_empty() {
                return Err(rej(RequestError::NoIdBuffer));
            }
            RequestKind::GetId { data: writable }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = request_type == VIRTIO_BLK_T_DISCARD;
            let (feature, max_seg, max_sectors) = if discard {
                (
                    VIRTIO_BLK_F_DISCARD,
                    limits.max_discard_seg,
                    limits.max_discard_sectors,
                )
            } else {
                (
                    VIRTIO_BLK_F_WRITE_ZEROES,
                    limits.max_write_zeroes_seg,
                    limits.max_write_zeroes_sectors,
                )
            };
            if limits.features & (1 << feature) == 0 {
                return Err(rej(RequestError::NotNegotiated(request_type)));
            }
            if limits.read_only {
                return Err(rej(RequestError::ReadOnly));
            }
            let ranges = parse_segments(mem, &readable, discard, max_seg, max_sectors, limits)
                .map_err(rej)?;
            if discard {
                RequestKind::Discard(ranges)
            } else {
                RequestKind::WriteZeroes(ranges)
            }
        }
        other => return Err(rej(RequestError::Unsupported(other))),
    };
    Ok(Request { kind, status })
}

/// Whole sectors, inside the disk.
fn check_range(sector: u64, data: &Buffers, limits: &Limits) -> Result<(), RequestError> {
    if data.len() % SECTOR_SIZE != 0 {
        return Err(RequestError::NotSectorMultiple(data.len()));
    }
    sectors_fit(sector, data.len() / SECTOR_SIZE, limits.capacity)
}

fn sectors_fit(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    let end = sector
        .checked_add(sectors)
        .ok_or(RequestError::SectorOverflow(sector))?;
    if end > capacity {
        return Err(RequestError::PastEnd {
            sector,
            sectors,
            capacity,
        });
    }
    Ok(())
}

fn parse_segments<M: GuestMemory>(
    mem: &M,
    data: &Buffers,
    discard: bool,
    max_seg: u32,
    max_sectors: u32,
    limits: &Limits,
) -> Result<Vec<Range>, RequestError> {
    if data.is_empty() || data.len() % SEGMENT_LEN != 0 {
        return Err(RequestError::BadSegments(data.len()));
    }
    let count = data.len() / SEGMENT_LEN;
    if count > u64::from(max_seg) {
        return Err(RequestError::TooManySegments(count));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut s = [0u8; SEGMENT_LEN as usize];
        data.read_into(mem, i * SEGMENT_LEN, &mut s)
            .map_err(|_| RequestError::BadSegments(data.len()))?;
        let sector = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        let sectors = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
        let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
        let known = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !known != 0 {
            return Err(RequestError::BadFlags(flags));
        }
        if sectors > max_sectors {
            return Err(RequestError::SegmentTooLarge(sectors));
        }
        sectors_fit(sector, sectors.into(), limits.capacity)?;
        ranges.push(Range {
            sector,
            sectors,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests;
