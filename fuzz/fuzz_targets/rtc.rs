//! The MC146818 RTC and CMOS on fake time: guest accesses to ports 0x70 and
//! 0x71, time running deadline by deadline (with or without an interrupt
//! handler reading register C) or leaping ahead, the host's wall clock
//! stepped anywhere, the VM stopping and starting, machine resets. Checks
//! that the index stays 7-bit, that IRQ 8 gives one edge until register C
//! is read and never more than the fastest periodic rate, and that no timer
//! is left due after a pass (a spinning main loop).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_device::bus::PioAddress;
use vm_device::MutDevicePio;
use vmm_devices::Rtc;
use vmm_fuzz::{wall_time, Access, Input, Line, Sim};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sim = Sim::new(wall_time(&mut input));
    let irq = Line::default();
    let rtc = Rtc::new(&sim.clocks, irq.clone());
    rtc.lock()
        .unwrap()
        .set_pc_config(input.u64(), input.u64(), input.u32());
    while !input.is_empty() {
        match input.u8() % 16 {
            // Time passes; nobody reads C, so at most one edge.
            0 => {
                irq.take();
                sim.run_for(i64::from(input.u32() >> (input.u8() % 32)), || {});
                assert!(irq.take() <= 1, "IRQ 8 edges without a read of C");
            }
            // Time passes with an interrupt handler that reads C each time.
            1 => {
                irq.take();
                let ns = i64::from(input.u32() >> (input.u8() % 32));
                sim.run_for(ns, || {
                    let mut rtc = rtc.lock().unwrap();
                    rtc.pio_write(PioAddress(0x70), 0, &[0x0C]);
                    rtc.pio_read(PioAddress(0x70), 1, &mut [0]);
                });
                // 8192 Hz at most (122 µs), plus the update and alarm.
                let bound = 3 + ns.min(vmm_fuzz::MAX_RUN_NS) / 122_000;
                let edges = irq.take();
                assert!(edges <= bound as u64, "{edges} IRQ 8 edges in {ns} ns");
            }
            2 => {
                irq.take();
                sim.leap(input.i64() >> (input.u8() % 64));
                assert!(irq.take() <= 1, "a late wake-up delivered a burst");
            }
            3 => {
                irq.take();
                sim.set_wall(wall_time(&mut input));
                assert!(irq.take() <= 1, "a wall-clock step delivered a burst");
            }
            4 => sim.clocks.vm_stop(),
            5 => sim.clocks.vm_start(),
            6 => rtc.lock().unwrap().reset(),
            _ => {
                let access = Access::decode(&mut input, 4);
                access.run(&mut *rtc.lock().unwrap(), 0x70);
            }
        }
        let r = rtc.lock().unwrap();
        assert!(r.state().index <= 0x7F);
        r.guest_time_ns(sim.clocks.now(vmm_clock::ClockType::Host));
        r.offset_secs();
    }
});
