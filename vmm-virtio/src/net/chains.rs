//! How a descriptor chain becomes a frame to send or buffers to receive
//! into, checked before anything is read or written: the worker's two
//! parsers of guest-made chains (public for the fuzz targets).

use vm_memory::{GuestMemory, Permissions};

use super::{HDR_LEN, MAX_TX_LEN};
use crate::blk::request::Buffers;
use crate::ring::chain_buffers;

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// A device-writable descriptor in a transmit chain.
    #[error("a device-writable descriptor")]
    Writable,
    /// More than the buffer or `max` descriptors.
    #[error("longer than {MAX_TX_LEN} bytes")]
    TooLong,
    /// Not even a header.
    #[error("{0} bytes, less than the header")]
    Short(usize),
    /// A buffer outside guest memory.
    #[error("a buffer outside guest memory")]
    Outside,
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
    let mut frame = Buffers::default();
    for (i, d) in descriptors.into_iter().enumerate() {
        if d.is_write_only() {
            return Err(TxError::Writable);
        }
        let n = d.len() as usize;
        if i >= max || n > limit - frame.len() as usize {
            return Err(TxError::TooLong);
        }
        if n > 0 && !mem.check_range(d.addr(), n, Permissions::Read) {
            return Err(TxError::Outside);
        }
        frame.push(d.addr(), d.len());
    }
    let len = frame.len() as usize;
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
        .map_err(|_| TxError::Outside)?;
    Ok(len)
}
