//! Guest-made virtqueues as the devices read them: a descriptor table and
//! an available ring written by the guest (the fuzz input), chains popped
//! through `virtio-queue` as every device's worker pops them, then each
//! chain parsed the way virtio-blk (`blk::request::parse`) and virtio-net
//! (`net::chains::gather` for transmit, `net::chains::rx_buffers` for
//! receive) parse theirs. Whatever the ring holds (loops, chains longer
//! than the ring, indirect tables, buffers outside RAM, wrapping
//! addresses, lengths near 2^32), nothing panics, nothing loops for ever,
//! and what a parser accepts lies inside guest memory and within its
//! limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_virtio::blk::request::{parse, Limits};
use vmm_virtio::net::chains::{gather, rx_buffers};
use vmm_virtio::net::MAX_TX_LEN;

/// Guest RAM: the rings and the buffers they point to.
const RAM: usize = 64 << 10;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Chains popped per input at most.
const CHAINS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    // The guest's writes: the descriptor table, then the available ring.
    let table = rest.len().min(AVAIL as usize);
    mem.write_slice(&rest[..table], GuestAddress(DESC)).unwrap();
    let ring = &rest[table..];
    mem.write_slice(&ring[..ring.len().min(0x1000)], GuestAddress(AVAIL))
        .unwrap();
    let size = 1u16 << (first % 9); // 1 to 256, as a driver may pick.
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(first & 0x80 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let limits = Limits {
        capacity: 1 << 20,
        read_only: first & 0x40 != 0,
        features: u64::MAX,
        max_descriptors: usize::from(size) + 2,
        max_discard_sectors: 1 << 16,
        max_discard_seg: 8,
        max_write_zeroes_sectors: 1 << 16,
        max_write_zeroes_seg: 8,
    };
    let mut frame = vec![0u8; MAX_TX_LEN];
    for _ in 0..CHAINS {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        if head >= size {
            // virtio-queue hands out a head past the table as an empty
            // chain; the device's add_used below then fails, and every
            // worker puts the device into NEEDS_RESET for it.
            assert!(chain.clone().next().is_none());
        }
        if let Ok(request) = parse(chain.clone(), &mem, &limits) {
            let _ = format!("{request:?}");
        }
        if let Ok(len) = gather(chain.clone(), &mem, usize::from(size), &mut frame) {
            assert!(len <= MAX_TX_LEN);
        }
        if let Some(buffers) = rx_buffers(chain.clone(), &mem, usize::from(size)) {
            for s in buffers.segments() {
                assert!(mem.address_in_range(s.addr));
            }
        }
        // The device hands it back, as each worker does.
        if q.add_used(&mem, head, 0).is_err() {
            break;
        }
    }
});
