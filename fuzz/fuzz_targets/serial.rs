//! The 16550A UART: guest port accesses of any size and offset, console
//! input offered now and then, and an output that may be a closed pipe.
//! Checks the RX FIFO bound and that the console is never told it gave more
//! than there was room for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_devices::{SerialDevice, RX_FIFO_CAPACITY};
use vmm_fuzz::{Access, Input, Line, Output};

const COM1: u16 = 0x3f8;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let output = if input.u8() & 1 == 0 {
        Output::default()
    } else {
        Output::broken()
    };
    let irq = Line::default();
    let mut com1 = SerialDevice::new(irq.clone(), Box::new(output.clone()));
    let mut writes = 0u64;
    while !input.is_empty() {
        match input.u8() % 8 {
            // The console offers input: what fits is taken, never more.
            0 => {
                let len = usize::from(input.u8() % 96);
                let bytes = input.bytes(len);
                let room = com1.fifo_capacity_left();
                let taken = com1.enqueue_input(bytes);
                assert!(
                    taken <= room.min(bytes.len()),
                    "took {taken} of {len}, room {room}"
                );
            }
            _ => {
                let access = Access::decode(&mut input, 8);
                writes += u64::from(access.write);
                access.run(&mut com1, COM1);
            }
        }
        assert!(com1.fifo_capacity_left() <= RX_FIFO_CAPACITY);
        assert!(com1.state().uart.in_buffer.len() <= RX_FIFO_CAPACITY);
        // Each THR write costs at most one byte of output.
        assert!(output.bytes() + com1.lost_output_bytes() <= writes);
    }
    irq.take();
});
