//! The i8254 PIT and port 0x61 (channel 2's gate and OUT) on fake time:
//! guest accesses, time running deadline by deadline or leaping ahead (a
//! late main loop), the VM stopping and starting, machine resets. Checks
//! that every count stays in 1..=65536, that IRQ 0 never comes faster than
//! the periodic floor (one edge per 200 µs), that a late wake-up delivers at
//! most one edge, and that no timer is left due after a pass.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_devices::{Pit, PitPort61, Port61};
use vmm_fuzz::{Access, Input, Line, Sim};

/// The periodic floor, less one PIT tick (838 ns) of rounding.
const MIN_EDGE_SPACING_NS: i64 = 200_000 - 1_000;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sim = Sim::new(0);
    let irq = Line::default();
    let pit = Pit::new(&sim.clocks, irq.clone());
    let mut port61 = Port61::with_pit(PitPort61(pit.clone()));
    while !input.is_empty() {
        match input.u8() % 16 {
            0 | 1 => {
                let ns = i64::from(input.u32() >> (input.u8() % 32));
                irq.take();
                sim.run_for(ns, || {});
                let edges = irq.take();
                let bound = 1 + ns.min(vmm_fuzz::MAX_RUN_NS) / MIN_EDGE_SPACING_NS;
                assert!(edges <= bound as u64, "{edges} IRQ 0 edges in {ns} ns");
            }
            2 => {
                irq.take();
                sim.leap(input.i64() >> (input.u8() % 64));
                assert!(irq.take() <= 1, "a late wake-up delivered a burst");
            }
            3 => sim.clocks.vm_stop(),
            4 => sim.clocks.vm_start(),
            5 => pit.lock().unwrap().reset(),
            6 | 7 => {
                Access::decode(&mut input, 2).run(&mut port61, 0x61);
            }
            _ => {
                let access = Access::decode(&mut input, 6);
                access.run(&mut *pit.lock().unwrap(), 0x40);
            }
        }
        let p = pit.lock().unwrap();
        for ch in p.state().channels {
            assert!((1..=0x1_0000).contains(&ch.count), "count {}", ch.count);
        }
        for ch in 0..3 {
            p.count(ch);
            p.output(ch);
        }
    }
});
