//! Checks on a split virtqueue and its chains that devices' workers make.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemory, Permissions};

use crate::blk::request::Buffers;

/// The driver's available index is at most a ring ahead of ours (a
/// driver whose index runs further has broken the ring: the device then
/// needs a reset).
pub(crate) fn avail_sane<M: GuestMemory>(q: &Queue, mem: &M) -> bool {
    q.avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(q.next_avail())).0 <= q.size())
}

/// A chain's buffers, all device-writable (`writable`) or all
/// device-readable, each inside guest memory: None for one that is not,
/// or for a chain of more than `max` descriptors.
pub(crate) fn chain_buffers<M, I>(
    descriptors: I,
    mem: &M,
    max: usize,
    writable: bool,
) -> Option<Buffers>
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut buffers = Buffers::default();
    for (i, d) in descriptors.into_iter().enumerate() {
        if i >= max || d.is_write_only() != writable {
            return None;
        }
        if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, access) {
            return None;
        }
        buffers.push(d.addr(), d.len());
    }
    Some(buffers)
}
