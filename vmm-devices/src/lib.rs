//! PC device models with no KVM in sight: a 16550A COM port, the i8254
//! PIT and the MC146818 RTC on vmm-clock's timers, the i8042
//! keyboard controller's reset path, the ACPI PM1a registers (S5 poweroff),
//! system control port B (0x61) and the POST-code port (0x80).
//!
//! Each device is plain state plus a [`vm_device::MutDevicePio`] bus adapter;
//! the machine (vmm-pc) puts it on the port bus behind a `Mutex` and backs its
//! lines with eventfds. A device reaches the outside world only through a
//! [`Trigger`] (an IRQ edge, a reset or poweroff request) and, for the UART,
//! a `Write` for output. This crate must not depend on `kvm-ioctls` or
//! `kvm-bindings`, even indirectly (`cargo xtask check-deps`).
//!
//! | device | ports (PC) | lines | module |
//! |---|---|---|---|
//! | [`SerialDevice`] | 8 from the COM base (COM1 0x3F8) | IRQ 4 (COM1/3) or 3 (COM2/4), edge | [`serial`] |
//! | [`I8042`] | 0x60 and 0x64 (absolute ports) | reset request; IRQ 1, edge | [`i8042`] |
//! | [`Pm1Event`] | 4 at `PM1a_EVT_BLK` (0x600) | none | [`acpi_pm`] |
//! | [`Pm1Control`] | 2 at `PM1a_CNT_BLK` (0x604) | poweroff and suspend requests | [`acpi_pm`] |
//! | [`Pit`] | 0x40-0x43 | IRQ 0, edge, from a Virtual-clock timer | [`pit`] |
//! | [`Rtc`] | 0x70-0x71 | IRQ 8, edge, from Host-clock timers | [`rtc`] |
//! | [`Port61`] | 0x61 | none (PIT channel 2 via [`PitChannel2`]) | [`port61`] |
//! | [`Port80`] | 0x80 | none | [`port80`] |
//! | [`PvPanic`] | 0x505 | the panic request | [`pvpanic`] |
//! | [`Ib700`] | 0x441-0x443 | the expiry request | [`ib700`] |
//! | [`IoApic`] | MMIO 0xFEC00000 (4 KiB) | 24 input pins in, MSIs out ([`MsiSink`]); for KVM's split irqchip (the PC's with `--irqchip split`) | [`ioapic`] |
//! | [`Pic`] | 0x20-0x21, 0xA0-0xA1, ELCR 0x4D0-0x4D1 | ISA IRQ 0-15 in, INT out ([`PicOutput`]) and the CPU's acknowledge; for KVM's split irqchip (the PC's with `--irqchip split`; INT not delivered there) | [`pic`] |
//! | [`I6300Esb`] | a PCI function ([`I6300EsbPci`], 16-byte memory BAR) and a fixed MMIO window | the expiry request | [`i6300esb`] |
//!
//! # Threat model
//!
//! The guest is untrusted. It can issue any number of port reads and writes,
//! of any size (including 0 and more than 8 bytes), at any offset the bus
//! hands a device (including offsets past the device's range, and bases near
//! `u16::MAX`), with any data, from several vCPUs (serialised by the bus
//! lock). For every device: no access panics (no indexing or arithmetic on
//! guest values without a check; the `#[cfg(test)]` mini-fuzz below drives
//! tens of thousands of random accesses through each), memory stays bounded,
//! host logging is bounded (a bad access is counted and logged once), and a
//! host-side failure (a full output pipe, a failing eventfd) is counted and
//! absorbed rather than returned to the guest.
//!
//! | device | what the guest controls | bounds that hold |
//! |---|---|---|
//! | serial | all eight registers; THR bytes; the RX FIFO via reads and FCR | RX FIFO capped at 64 bytes ([`RX_FIFO_CAPACITY`]) and filled only by the host, never past its free room ([`SerialDevice::enqueue_input`]); loopback bytes beyond 64 are discarded; each THR byte costs one `write` to the host's output, which must not block (see [`serial`]); one IRQ edge per new cause, so IRQ rate is bounded by the guest's own exit rate; the RX flush loop runs at most 64 iterations |
//! | i8042 | commands, data bytes, CTR, output port | output queue capped at 16 bytes ([`OUTPUT_QUEUE_LEN`]), excess dropped and counted; keyboard replies at most 3 bytes per write; the reset line fires once until the machine re-arms it ([`I8042::reset`]), so a reboot loop cannot queue up resets; no command blocks or waits |
//! | ACPI PM1 | PM1_STS (W1C), PM1_EN, PM1_CNT | only documented bits stored; S5 fires the poweroff line (idempotent for the machine: an eventfd counter), other sleep types only logged once; bytes outside each block read 0xFF |
//! | i8254 PIT | control words, counts, latches, read-back, channel 2's gate | counts are computed, never ticked; one timer, at most one IRQ 0 edge per 200 µs in the periodic modes (a one-shot needs a guest write per edge); every field stays in range (count 1..=65536) |
//! | MC146818 | index (NMI bit dropped), all 128 bytes | junk time values give a clamped year (1700-2199), never an overflow; a guest time past `i64::MAX` ns stops at 2262 and its timers are still armed strictly after now (never a timer due again at once from its own callback); update and alarm catch-up looks at most one day of seconds; periodic interrupts at most 8192 Hz, and one edge until register C is read |
//! | port 0x61 | gate and speaker bits | two bits stored; reads compute from state, no time or host call |
//! | pvpanic | one byte | a panic fires the line (an eventfd counts repeats); reads are constant |
//! | ib700 | arm (0x443) and disarm (0x441) writes | one Virtual-clock timer; one line edge per arming; re-arming only moves the deadline |
//! | i6300esb | `ESB_CONFIG`/`ESB_LOCK` in configuration space, the BAR's preloads, `GINTSR` and reload, the window | one Virtual-clock timer; one line edge per stage-2 expiry; preloads masked to 20 bits; the lock bit is write-once until reset; accesses of any width at any offset answered |
//! | IO-APIC | `IOREGSEL`, `IOWIN`, `EOI`; the redirection table | 24 entries; reserved delivery modes and vectors 0-15 never delivered (counted, logged once); Remote IRR and delivery status read-only; a level pin delivers once per EOI |
//! | 8259A pair | ICW1-4, OCW1-3, ELCR | every field in range after any write sequence (init state 0-3, rotation 0-7, vector bases multiples of 8); ELCR bits of IRQ 0-2, 8, 13 fixed; acknowledges always give a vector of one of the two bases |
//! | port 0x80 | one byte | last byte and a saturating counter; logged at `trace` only |
//!
//! CVE-2020-27173 (vm-superio's unbounded RX buffer) is the reason the UART
//! input path takes only what fits and reports the rest back to the console.
//!
//! # Example
//!
//! ```
//! use std::io::sink;
//!
//! use vm_device::bus::PioAddress;
//! use vm_device::MutDevicePio;
//! use vmm_devices::{EventFdTrigger, SerialDevice};
//!
//! // The machine registers `irq.event_fd()` as an irqfd for GSI 4.
//! let irq = EventFdTrigger::nonblocking().unwrap();
//! let mut com1 = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink()));
//!
//! // The guest enables the THR-empty interrupt: one edge on the line.
//! com1.pio_write(PioAddress(0x3f8), 1, &[0x02]);
//! assert_eq!(irq.event_fd().read().unwrap(), 1);
//!
//! // The console offers input; what does not fit stays with the console.
//! let taken = com1.enqueue_input(&[b'x'; 100]);
//! assert_eq!(taken, 64);
//! let mut byte = [0u8];
//! com1.pio_read(PioAddress(0x3f8), 0, &mut byte);
//! assert_eq!(byte, [b'x']);
//! ```

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod acpi_pm;
pub mod error;
pub mod i6300esb;
pub mod i8042;
pub mod ib700;
pub mod ioapic;
pub mod irq;
mod log_once;
pub mod pic;
pub mod pit;
pub mod port61;
pub mod port80;
pub mod pvpanic;
pub mod rtc;
pub mod serial;
pub mod stateful;
#[cfg(test)]
mod test_util;

pub use acpi_pm::{
    Pm1Control, Pm1ControlState, Pm1Event, Pm1EventState, WakeCause, PM1_CNT_LEN, PM1_EVT_LEN,
    S3_SLP_TYP, S5_SLP_TYP,
};
pub use error::Error;
pub use i6300esb::{EsbState, I6300Esb, I6300EsbPci};
pub use i8042::{I8042State, I8042, OUTPUT_QUEUE_LEN};
pub use ib700::{Ib700, Ib700State, IB700_PORT, IB700_PORT_LEN};
pub use ioapic::{IoApic, IoApicState, MsiMessage, MsiSink};
pub use irq::{EventFdTrigger, LevelLine, Trigger};
pub use pic::{ChipState, Pic, PicOutput, PicState};
pub use pit::{Pit, PitChannelState, PitPort61, PitState, PIT_FREQ_HZ, PIT_PORT_LEN};
pub use port61::{NoPitChannel2, PitChannel2, Port61, Port61State};
pub use port80::{Port80, Port80State};
pub use pvpanic::{PvPanic, PVPANIC_PORT};
pub use rtc::{Rtc, RtcState, CMOS_SIZE, RTC_PORT_LEN};
pub use serial::{
    SerialDevice, SerialDeviceState, SerialOutput, RX_FIFO_CAPACITY, SERIAL_PORT_LEN,
};
pub use stateful::Duplicate;
pub use vm_superio::serial::{NoEvents, SerialEvents};

/// Mini-fuzz: pseudo-random accesses through each device's bus interface,
/// from fixed seeds, asserting nothing panics and the bounds hold.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::test_util::{fired, fuzz_pio, line, BrokenPipe, SharedBuf};

    const OPS: usize = 20_000;
    const SEEDS: [u64; 3] = [0x9E37_79B9_7F4A_7C15, 1, 0xDEAD_BEEF];

    #[test]
    fn serial() {
        for seed in SEEDS {
            let (irq, probe) = line();
            let out = SharedBuf::default();
            let mut dev = SerialDevice::new(irq, Box::new(out.clone()));
            fuzz_pio(&mut dev, 0x3F8, 16, seed, OPS, |dev, rng| {
                // The console offers input now and then.
                if rng.below(8) == 0 {
                    let len = usize::try_from(rng.below(80)).unwrap();
                    let input = vec![rng.byte(); len];
                    let room = dev.fifo_capacity_left();
                    let taken = dev.enqueue_input(&input);
                    assert!(taken <= room.min(len));
                }
                assert!(dev.fifo_capacity_left() <= RX_FIFO_CAPACITY);
                assert!(dev.state().uart.in_buffer.len() <= RX_FIFO_CAPACITY);
            });
            // The eventfd counter never overflowed.
            fired(&probe);
            assert!(out.bytes().len() <= OPS);
        }
    }

    #[test]
    fn serial_with_broken_output() {
        let (irq, _probe) = line();
        let mut dev = SerialDevice::new(irq, Box::new(BrokenPipe));
        fuzz_pio(&mut dev, 0x3F8, 8, 7, OPS, |_, _| {});
        assert!(dev.lost_output_bytes() <= u64::try_from(OPS).unwrap());
    }

    #[test]
    fn i8042() {
        for seed in SEEDS {
            let (reset, _reset_probe) = line();
            let (irq, _irq_probe) = line();
            let mut dev = I8042::new(reset, irq);
            fuzz_pio(&mut dev, 0x60, 8, seed, OPS, |dev, rng| {
                assert!(dev.state().output.len() <= OUTPUT_QUEUE_LEN);
                assert_eq!(dev.read_status() & 0x02, 0, "IBF never set");
                if rng.below(500) == 0 {
                    dev.reset();
                }
            });
            // Registered as two 1-port ranges instead.
            fuzz_pio(&mut dev, 0x64, 2, seed, OPS, |_, _| {});
            fuzz_pio(&mut dev, 0xFFFA, 8, seed, OPS, |_, _| {});
        }
    }

    #[test]
    fn acpi_pm() {
        for seed in SEEDS {
            let mut evt = Pm1Event::new();
            fuzz_pio(&mut evt, 0x600, 8, seed, OPS, |evt, _| {
                let s = evt.state();
                assert_eq!(s.enable & !0x4721, 0);
                assert_eq!(s.status, 0, "nothing sets a status bit");
            });
            let (poweroff, _probe) = line();
            let mut cnt = Pm1Control::new(poweroff);
            fuzz_pio(&mut cnt, 0x604, 4, seed, OPS, |cnt, _| {
                assert!(cnt.state().slp_typ <= 7);
                assert_eq!(cnt.read_value() & 0x0001, 0x0001, "SCI_EN sticks");
            });
        }
    }

    #[test]
    fn port61() {
        for seed in SEEDS {
            let mut dev = Port61::new();
            fuzz_pio(&mut dev, 0x61, 2, seed, OPS, |dev, _| {
                assert_eq!(dev.state().control & !0x03, 0);
            });
        }
    }

    #[test]
    fn pit() {
        for seed in SEEDS {
            let sim = crate::test_util::Sim::with_wall(0);
            let (irq, probe) = line();
            let pit = Pit::new(&sim.clocks, irq);
            let mut edges = 0;
            let mut dev = pit.lock().unwrap();
            fuzz_pio(&mut *dev, 0x40, 6, seed, OPS, |dev, rng| {
                if rng.below(64) == 0 {
                    dev.set_gate(2, rng.below(2) == 0);
                }
                let st = dev.state();
                for ch in st.channels {
                    assert!((1..=0x1_0000).contains(&ch.count));
                }
            });
            drop(dev);
            // Time passes under whatever the guest left programmed: the
            // periodic floor bounds the edges.
            sim.run_for(100_000_000, |_| edges += fired(&probe));
            assert!(edges <= 501, "{edges} edges in 100 ms");
        }
    }

    #[test]
    fn rtc() {
        for seed in SEEDS {
            let sim = crate::test_util::Sim::with_wall(1_800_000_000_000_000_000);
            let (irq, probe) = line();
            let rtc = Rtc::new(&sim.clocks, irq);
            let mut dev = rtc.lock().unwrap();
            fuzz_pio(&mut *dev, 0x70, 4, seed, OPS, |dev, _| {
                assert!(dev.state().index <= 0x7F);
            });
            drop(dev);
            // Whatever the guest left programmed, time passes without a
            // panic, and the interrupt rate stays within the fastest rate.
            let mut edges = 0;
            sim.run_for(1_000_000_000, |_| {
                edges += fired(&probe);
                let mut rtc = rtc.lock().unwrap();
                rtc.write(0, 0x0C);
                rtc.read(1);
            });
            assert!(edges <= 8193, "{edges} edges in 1 s");
        }
    }

    #[test]
    fn port80() {
        for seed in SEEDS {
            let mut dev = Port80::new();
            fuzz_pio(&mut dev, 0x80, 2, seed, OPS, |_, _| {});
            assert!(dev.state().writes <= u64::try_from(OPS).unwrap());
        }
    }
}
