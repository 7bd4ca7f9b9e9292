//! The two watchdogs on fake time: the IB700 on its ports, and the 6300ESB
//! as a PCI function (configuration space, BAR 0) and on its fixed MMIO
//! window; guest accesses of any width at any offset, time running
//! deadline by deadline or leaping ahead (a late main loop), the VM
//! stopping and starting, machine resets. Checks that each fires its line
//! exactly as often as it counts, never while it is stopped, at most once
//! while time passes with no guest access (after an expiry the timer stays
//! stopped until the guest starts it again), and that the 6300ESB's
//! preloads keep to 20 bits and its stage to 1 or 2 while it runs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vmm_devices::{I6300Esb, I6300EsbPci, Ib700};
use vmm_fuzz::{width, write_data, Input, Line, Sim};
use vmm_pci::PciDevice;
use vmm_qom::Stateful;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sim = Sim::new(0);
    let ib_line = Line::default();
    let esb_line = Line::default();
    let ib700 = Ib700::new(&sim.clocks, ib_line.clone());
    let chip = I6300Esb::new(&sim.clocks, esb_line.clone());
    let mut esb = I6300EsbPci::new(chip.clone());
    esb.config_mut().set_bar_base(0, 0xfebf_0000);
    esb.config_mut().set_reset_state();
    let (mut ib_fired, mut esb_fired) = (0u64, 0u64);
    while !input.is_empty() {
        let ib_armed = ib700.lock().unwrap().state().deadline_ns.is_some();
        let esb_armed = chip.lock().unwrap().state().deadline_ns.is_some();
        let mut time_only = false;
        match input.u8() % 16 {
            0..=2 => {
                time_only = true;
                let ns = i64::from(input.u32() >> (input.u8() % 32));
                sim.run_for(ns, || {});
            }
            3 => {
                time_only = true;
                sim.leap(input.i64() >> (input.u8() % 64));
            }
            4 => sim.clocks.vm_stop(),
            5 => sim.clocks.vm_start(),
            6 | 7 => {
                // Ports 0x441-0x443 (0x443 starts, 0x441 stops).
                let offset = u16::from(input.u8() % 4);
                let len = width(&mut input);
                let mut dev = ib700.lock().unwrap();
                match write_data(&mut input, len) {
                    None => {
                        let mut buf = [0u8; 8];
                        dev.pio_read(PioAddress(0x441), offset, &mut buf[..len]);
                        assert!(buf[..len].iter().all(|&b| b == 0xff), "{buf:?}");
                    }
                    Some(data) => dev.pio_write(PioAddress(0x441), offset, &data[..len]),
                }
            }
            8 | 9 => {
                // ESB_CONFIG and ESB_LOCK, around them, or anywhere.
                let offset = match input.u8() % 4 {
                    0 | 1 => 0x60 + usize::from(input.u8() % 12),
                    2 => usize::from(input.u8()),
                    _ => usize::from(input.u16()),
                };
                let len = width(&mut input).min(4);
                match write_data(&mut input, len) {
                    None => esb.config_read(offset, &mut [0u8; 8][..len]),
                    Some(data) => esb.config_write(offset, &data[..len]),
                }
            }
            10..=12 => {
                // BAR 0 (0x00-0x0f) or past it.
                let offset = u64::from(input.u8() % 24);
                let len = width(&mut input);
                match write_data(&mut input, len) {
                    None => esb.bar_read(0, offset, &mut [0u8; 8][..len]),
                    Some(data) => esb.bar_write(0, offset, &data[..len]),
                }
            }
            13 => {
                // The fixed window: the BAR, then ESB_LOCK at 0x10.
                let offset = u64::from(input.u8() % 40);
                let len = width(&mut input);
                let mut dev = chip.lock().unwrap();
                match write_data(&mut input, len) {
                    None => dev.mmio_read(MmioAddress(0xfed4_0000), offset, &mut [0u8; 8][..len]),
                    Some(data) => dev.mmio_write(MmioAddress(0xfed4_0000), offset, &data[..len]),
                }
            }
            14 => {
                esb.reset();
                Stateful::reset(&mut *ib700.lock().unwrap());
            }
            _ => {
                // The unlock sequence, then a reload (what a driver's
                // keep-alive writes).
                for value in [0x80u32, 0x86, 0x100] {
                    esb.bar_write(0, 0x0c, &value.to_le_bytes());
                }
            }
        }
        let (ib_now, esb_now) = (ib700.lock().unwrap().fired(), chip.lock().unwrap().fired());
        assert_eq!(ib_line.take(), ib_now - ib_fired, "IB700 line and count");
        assert_eq!(
            esb_line.take(),
            esb_now - esb_fired,
            "6300ESB line and count"
        );
        if time_only {
            assert!(ib_now - ib_fired <= 1, "IB700 fired twice with no access");
            assert!(
                esb_now - esb_fired <= 1,
                "6300ESB fired twice with no access"
            );
            assert!(ib_armed || ib_now == ib_fired, "IB700 fired while stopped");
            assert!(
                esb_armed || esb_now == esb_fired,
                "6300ESB fired while stopped"
            );
        }
        (ib_fired, esb_fired) = (ib_now, esb_now);
        let s = chip.lock().unwrap().state();
        assert!(s.preload.iter().all(|&p| p <= 0xf_ffff), "{s:?}");
        if s.deadline_ns.is_some() {
            assert!(matches!(s.stage, 1 | 2), "{s:?}");
        }
    }
});
