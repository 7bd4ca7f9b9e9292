//! pvpanic on port 0x505: guest accesses of any size and offset. Checks
//! that the panic line fires exactly for the 1-byte writes with PANICKED
//! (bit 0) set, and that reads are the constant feature bits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_devices::{PvPanic, PVPANIC_PORT};
use vmm_fuzz::{Access, Input, Line};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let line = Line::default();
    let mut dev = PvPanic::new(line.clone());
    let mut panics = 0;
    while !input.is_empty() {
        let access = Access::decode(&mut input, 2);
        let read = access.run(&mut dev, PVPANIC_PORT);
        let valid = access.offset == 0 && access.len == 1;
        let panic = access.write && valid && access.data[0] & 1 != 0;
        panics += u64::from(panic);
        if !access.write && valid {
            assert_eq!(read[0], 0x03, "pvpanic features");
        }
        assert_eq!(line.take(), u64::from(panic));
        assert_eq!(dev.panics(), panics);
    }
});
