//! How a descriptor chain becomes a frame to send or buffers to receive
//! into, checked before anything is read or written: the worker's two
//! parsers of guest-made chains (public for the fuzz targets).

use vm_memory::GuestMemory;

use super::HDR_LEN;
use crate::blk::request::Buffers;
use crate::ring::chain_buffers;

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// A device-writable descriptor, a buffer outside guest memory, or
    /// more than `max` descriptors.
    #[error("a device-writable descriptor, a buffer outside guest memory or too many descriptors")]
    Malformed,
    /// More bytes than the limit.
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// Not even a header.
    #[error("{0} bytes, less than the header")]
    Short(usize),
}

/// A receive chain's buffers: None if a descriptor is device-readable or
/// outside guest memory, the chain is longer than `max` descriptors, or
/// it has no room for the header.
pub fn rx_buffers<M, I>(descriptors: I, mem: &M, max: usize) -> Option<Buffers>
where
    M: GuestMemory,
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    chain_buffers(descriptors, mem, max, true).filter(|b| b.len() >= HDR_LEN as u64)
}

/// A transmit chain's buffers (header and frame, in order), checked:
/// device-readable, in guest memory, at most `max` descriptors and
/// `limit` bytes, at least a header. The worker writes the frame straight
/// from them.
pub fn tx_buffers<M, I>(
    descriptors: I,
    mem: &M,
    max: usize,
    limit: usize,
) -> Result<Buffers, TxError>
where
    M: GuestMemory,
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let frame = chain_buffers(descriptors, mem, max, false).ok_or(TxError::Malformed)?;
    let len = frame.len() as usize;
    if len > limit {
        return Err(TxError::TooLong(limit));
    }
    if len < HDR_LEN {
        return Err(TxError::Short(len));
    }
    Ok(frame)
}

/// Copies a transmit chain (header and frame), checked as
/// [`tx_buffers`] with `buf`'s length as the limit, into `buf`: its
/// length.
pub fn gather<M, I>(descriptors: I, mem: &M, max: usize, buf: &mut [u8]) -> Result<usize, TxError>
where
    M: GuestMemory,
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let frame = tx_buffers(descriptors, mem, max, buf.len())?;
    let len = frame.len() as usize;
    frame
        .read_into(mem, 0, &mut buf[..len])
        .map_err(|_| TxError::Malformed)?;
    Ok(len)
}
