//! Checks on a split virtqueue that every device's worker makes.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

/// The driver's available index is at most a ring ahead of ours (a
/// driver whose index runs further has broken the ring: the device then
/// needs a reset).
pub(crate) fn avail_sane<M: GuestMemory>(q: &Queue, mem: &M) -> bool {
    q.avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(q.next_avail())).0 <= q.size())
}
