//! The incoming live-migration stream (`vmm_pc::snapshot::stream`) on
//! arbitrary bytes, for a machine of 1 vCPU and 64 KiB of RAM: an error or
//! the state, never a panic, never a page outside RAM, never a section
//! past its bound; the optional `runstate` section (a guest in S3) is
//! decoded as the destination does, to a run state or an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_pc::snapshot::format::{Shape, PAGE};
use vmm_pc::snapshot::runstate::{self, SavedRunState};
use vmm_pc::snapshot::stream::{self, Item, StreamReader, MAX_CHUNK_PAGES, STATE_SECTIONS};

const RAM: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let shape = Shape {
        cpus: 1,
        ram: vec![(0, RAM)],
        kvm_pit: false,
        devices: vec![],
        cpuid: vec![],
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
                let optional = sections
                    .iter()
                    .filter(|s| s.name == runstate::SECTION)
                    .count();
                assert!(optional <= 1);
                assert_eq!(sections.len(), STATE_SECTIONS.len() + optional);
                for s in sections.iter().filter(|s| s.name == runstate::SECTION) {
                    assert!(s.data.len() <= runstate::MAX_BYTES);
                    if let Ok(state) = SavedRunState::decode(&s.data) {
                        assert_eq!(SavedRunState::decode(&state.encode()), Ok(state));
                    }
                }
                return;
            }
        }
    }
});
