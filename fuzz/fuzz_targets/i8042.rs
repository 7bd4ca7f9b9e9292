//! The i8042 keyboard controller: guest accesses to ports 0x60 and 0x64
//! (registered as two 1-port ranges, as the PC does, or as one range),
//! machine resets in between. Checks the output queue bound, that IBF never
//! shows (a guest's wait loop would spin), and that the reset line fires at
//! most once until the machine re-arms it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_device::bus::PioAddress;
use vm_device::MutDevicePio;
use vmm_devices::{I8042, OUTPUT_QUEUE_LEN};
use vmm_fuzz::{Access, Input, Line};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let reset = Line::default();
    let irq = Line::default();
    let mut dev = I8042::new(reset.clone(), irq.clone());
    let mut resets_since_rearm = 0;
    while !input.is_empty() {
        match input.u8() % 16 {
            // The machine resets (after acting on a reset request).
            0 => {
                dev.reset();
                resets_since_rearm = 0;
            }
            // One 8-port range at 0x60, as a machine without port 0x61 might.
            1 => {
                Access::decode(&mut input, 8).run(&mut dev, 0x60);
            }
            op => {
                let base = if op & 1 == 0 { 0x60 } else { 0x64 };
                Access::decode(&mut input, 1).run(&mut dev, base);
            }
        }
        resets_since_rearm += reset.take();
        assert!(
            resets_since_rearm <= 1,
            "the reset line fired again before a re-arm"
        );
        assert_eq!(resets_since_rearm == 1, dev.reset_requested());
        assert!(dev.state().output.len() <= OUTPUT_QUEUE_LEN);
        let mut status = [0u8];
        dev.pio_read(PioAddress(0x64), 0, &mut status);
        assert_eq!(status[0] & 0x02, 0, "IBF set");
    }
    irq.take();
});
