//! The incoming live-migration stream (`vmm_pc::snapshot::stream`) on
//! arbitrary bytes, for a machine of 1 vCPU and 64 KiB of RAM: an error or
//! the state, never a panic, never a page outside RAM, never a section
//! past its bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_pc::snapshot::format::{Shape, PAGE};
use vmm_pc::snapshot::stream::{self, Item, StreamReader, MAX_CHUNK_PAGES, STATE_SECTIONS};

const RAM: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let shape = Shape {
        cpus: 1,
        ram: vec![(0, RAM)],
        kvm_pit: false,
        devices: vec![],
    };
    let Ok(mut r) = StreamReader::open(data, &shape) else {
        return;
    };
    loop {
        match r.next_item() {
            Err(_) => return,
            Ok(Item::Pages(section)) => {
                let pages = stream::pages(&section, &shape.ram).expect("checked by next_item()");
                assert!(pages.len() <= MAX_CHUNK_PAGES);
                for (gpa, page) in pages {
                    assert!(gpa % PAGE as u64 == 0 && gpa + PAGE as u64 <= RAM);
                    assert!(page.is_none_or(|p| p.len() == PAGE));
                }
            }
            Ok(Item::State(sections)) => {
                assert_eq!(sections.len(), STATE_SECTIONS.len());
                return;
            }
        }
    }
});
