//! The POST-code port 0x80: guest accesses of any size and offset. Checks
//! that the last code is the last valid 1-byte write and that the write
//! counter counts exactly those.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_devices::Port80;
use vmm_fuzz::{Access, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut dev = Port80::new();
    let mut last = None;
    let mut writes = 0u64;
    while !input.is_empty() {
        let access = Access::decode(&mut input, 2);
        access.run(&mut dev, 0x80);
        if access.write && access.offset == 0 && access.len == 1 {
            last = Some(access.data[0]);
            writes += 1;
        }
        assert_eq!(dev.last_code(), last);
        assert_eq!(dev.state().writes, writes);
    }
});
