//! Guest RAM as the VMM maps it: vm-memory's mmap backend with a dirty
//! bitmap per region ([`GuestRam`]) for the writes KVM's dirty log does
//! not see, the VMM's own. Every write made through the guest-memory API
//! (`write_obj`, `write_slice`, `VolatileSlice` copies, `read_volatile_from`,
//! the virtqueues' used-ring stores) marks its pages; a write made by host
//! address (the kernel filling an iovec for io_uring or `preadv`) must mark
//! its range itself once done. The live migration's pre-copy takes and
//! clears these bits with KVM's log at every pass ([`take_written`]).

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::vm::{DirtyBitmap, RamSlot, DIRTY_PAGE_SIZE};

/// Guest RAM: anonymous mappings, each region with its bitmap of the pages
/// the VMM wrote (one bit per host page, 4 KiB on x86-64, always on: an
/// atomic OR per page written by a device, nothing on vCPU writes).
pub type GuestRam = GuestMemoryMmap<AtomicBitmap>;

/// The pages of `slot` that the VMM wrote since the last call, and those
/// bits cleared. Each 64-page word is taken and zeroed in one atomic step,
/// so a write marked meanwhile is either in this map or left for the next
/// call, never lost; a writer marks after writing, so a page read after
/// this call holds at least what its bit stood for. All pages if the
/// region's bitmap does not match the slot (a page size other than
/// [`DIRTY_PAGE_SIZE`]).
pub fn take_written(mem: &GuestRam, slot: &RamSlot) -> DirtyBitmap {
    let pages = slot.size.div_ceil(DIRTY_PAGE_SIZE);
    let region = mem
        .iter()
        .find(|r| r.start_addr() == GuestAddress(slot.guest_addr));
    let Some(region) = region else {
        return DirtyBitmap::new(pages, true);
    };
    let mmap = region.get_mmap();
    let bitmap = mmap.bitmap();
    if u64::try_from(bitmap.len()).ok() != Some(pages) {
        bitmap.reset();
        return DirtyBitmap::new(pages, true);
    }
    DirtyBitmap::from_words(bitmap.get_and_reset(), pages)
}

/// Clears every region's bitmap (the pre-copy's start: what the VMM wrote
/// before is in the first pass, which sends every page in use).
pub fn clear_written(mem: &GuestRam) {
    for region in mem.iter() {
        region.get_mmap().bitmap().reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::bitmap::Bitmap;
    use vm_memory::{Address, Bytes};

    const BASE: u64 = 0x10_0000;

    fn ram() -> (GuestRam, RamSlot) {
        let mem = GuestRam::from_ranges(&[(GuestAddress(BASE), 64 << 12)]).unwrap();
        let slot = RamSlot {
            slot: 0,
            guest_addr: BASE,
            size: 64 << 12,
        };
        (mem, slot)
    }

    fn page(index: u64) -> GuestAddress {
        GuestAddress(BASE + index * DIRTY_PAGE_SIZE)
    }

    #[test]
    fn writes_through_the_guest_memory_api_are_marked() {
        let (mem, slot) = ram();
        assert_eq!(take_written(&mem, &slot).count(), 0);
        mem.write_obj(7u32, page(3)).unwrap();
        // Across a page boundary: both pages.
        mem.write_slice(&[1; 8], page(10).unchecked_add(4092))
            .unwrap();
        let s = mem.get_slice(page(20), 16).unwrap();
        s.copy_from(&[2u8; 16]);
        assert_eq!(
            take_written(&mem, &slot).iter().collect::<Vec<_>>(),
            [3, 10, 11, 20]
        );
    }

    #[test]
    fn a_clone_for_a_device_marks_the_same_bitmap() {
        let (mem, slot) = ram();
        let device = std::sync::Arc::new(mem.clone());
        device.write_obj(1u64, page(7)).unwrap();
        assert_eq!(take_written(&mem, &slot).iter().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn a_host_address_write_marked_explicitly_shows() {
        let (mem, slot) = ram();
        let host = mem.get_host_address(page(5)).unwrap();
        // SAFETY: page 5 is inside the mapping, which `mem` keeps alive.
        unsafe { host.write_bytes(0xaa, 2 * DIRTY_PAGE_SIZE as usize) };
        // Not seen until marked, as with io_uring filling an iovec.
        assert_eq!(take_written(&mem, &slot).count(), 0);
        let region = mem.find_region(page(5)).unwrap();
        let off = region.to_region_addr(page(5)).unwrap().raw_value() as usize;
        region
            .bitmap()
            .mark_dirty(off, 2 * DIRTY_PAGE_SIZE as usize);
        assert_eq!(take_written(&mem, &slot).iter().collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn taking_clears_and_later_writes_wait_for_the_next_take() {
        let (mem, slot) = ram();
        mem.write_obj(1u8, page(63)).unwrap();
        assert_eq!(take_written(&mem, &slot).iter().collect::<Vec<_>>(), [63]);
        assert_eq!(take_written(&mem, &slot).count(), 0);
        mem.write_obj(1u8, page(0)).unwrap();
        assert_eq!(take_written(&mem, &slot).iter().collect::<Vec<_>>(), [0]);
        mem.write_obj(1u8, page(1)).unwrap();
        clear_written(&mem);
        assert_eq!(take_written(&mem, &slot).count(), 0);
    }

    #[test]
    fn a_slot_that_is_not_a_region_is_all_dirty() {
        let (mem, _) = ram();
        let other = RamSlot {
            slot: 1,
            guest_addr: 0,
            size: 3 << 12,
        };
        assert_eq!(take_written(&mem, &other).count(), 3);
    }
}
