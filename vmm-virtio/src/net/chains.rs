//! How a descriptor chain becomes a frame to send or buffers to receive
//! into, checked before anything is read or written: the worker's two
//! parsers of guest-made chains (public for the fuzz targets).

use vm_memory::{Bytes, GuestMemory};

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

/// Copies a transmit chain (header and frame) into `buf`: its length.
pub fn gather<M, I>(descriptors: I, mem: &M, max: usize, buf: &mut [u8]) -> Result<usize, TxError>
where
    M: GuestMemory,
    I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let mut len = 0usize;
    for (i, d) in descriptors.into_iter().enumerate() {
        if d.is_write_only() {
            return Err(TxError::Writable);
        }
        let n = d.len() as usize;
        if i >= max || n > buf.len() - len {
            return Err(TxError::TooLong);
        }
        mem.read_slice(&mut buf[len..len + n], d.addr())
            .map_err(|_| TxError::Outside)?;
        len += n;
    }
    if len < HDR_LEN {
        return Err(TxError::Short(len));
    }
    Ok(len)
}
