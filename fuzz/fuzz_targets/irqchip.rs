//! The split irqchip's device models on fake outputs: the two 8259A PICs
//! with the ELCR, and the IO-APIC. Guest port and MMIO accesses of any
//! width and offset, device lines rising and falling, the CPU's interrupt
//! acknowledges, EOIs (KVM's exit and the EOI register), snapshots saved
//! and loaded into fresh models, resets. Checks that every vector the PICs
//! give is a programmed base plus 0-7, that INT as the output saw it is
//! the model's, that the IO-APIC sends only well-formed messages and only
//! a message some unmasked pin's entry holds, at most one per line change,
//! and that a saved state loads into a fresh model unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_devices::{IoApic, MsiMessage, MsiSink, Pic, PicOutput};
use vmm_fuzz::{width, write_data, Input};
use vmm_qom::Stateful;

/// The PIC's INT output as the boot CPU's LINT0 would see it.
#[derive(Debug, Default)]
struct Intr {
    high: bool,
}

impl PicOutput for Intr {
    fn set_intr(&mut self, high: bool) {
        assert_ne!(self.high, high, "INT set to what it already was");
        self.high = high;
    }
}

/// The local APICs: every message the IO-APIC sends.
#[derive(Debug, Default)]
struct Apics {
    sent: Vec<MsiMessage>,
}

impl MsiSink for Apics {
    fn send_msi(&mut self, msg: MsiMessage) {
        assert_eq!(msg.address >> 20, 0xFEE, "{msg:?}");
        assert_eq!(msg.address & !0xF_F00C, 0xFEE0_0000, "{msg:?}");
        assert!(msg.data <= 0xFFFF, "{msg:?}");
        self.sent.push(msg);
    }
}

/// The PICs' ports, and two that are not theirs.
const PIC_PORTS: [u16; 8] = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22, 0x4D2];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut pic = Pic::new(Intr::default());
    let mut ioapic = IoApic::new(Apics::default());
    while !input.is_empty() {
        let before = ioapic.sink().sent.len();
        let mut line_change = false;
        match input.u8() % 16 {
            0..=3 => {
                let port = PIC_PORTS[usize::from(input.u8()) % PIC_PORTS.len()];
                let len = width(&mut input);
                match write_data(&mut input, len) {
                    None => pic.read(port, &mut [0u8; 8][..len]),
                    Some(data) => pic.write(port, &data[..len]),
                }
            }
            4 | 5 => {
                let irq = input.u8() % 17;
                pic.set_irq(irq, input.u8() & 1 != 0);
            }
            6 => {
                let vector = pic.acknowledge();
                let s = pic.state();
                assert!(
                    vector & 0xF8 == s.master.irq_base || vector & 0xF8 == s.slave.irq_base,
                    "vector {vector:#x} from bases {:#x} and {:#x}",
                    s.master.irq_base,
                    s.slave.irq_base
                );
            }
            7..=10 => {
                // IOREGSEL (0x00), IOWIN (0x10), EOI (0x40), or anywhere.
                let offset = match input.u8() % 5 {
                    0 | 1 => 0x00,
                    2 | 3 => 0x10,
                    _ if input.u8() & 1 == 0 => 0x40,
                    _ => u64::from(input.u16()),
                };
                let len = width(&mut input);
                match write_data(&mut input, len) {
                    None => ioapic.read(offset, &mut [0u8; 8][..len]),
                    Some(data) => ioapic.write(offset, &data[..len]),
                }
            }
            11 | 12 => {
                let pin = usize::from(input.u8() % 26);
                ioapic.set_irq(pin, input.u8() & 1 != 0);
                line_change = true;
            }
            13 => ioapic.eoi(input.u8()),
            14 => {
                // A snapshot: both states into fresh models, which go on.
                let s = pic.state();
                let mut fresh = Pic::new(Intr::default());
                fresh.restore(s).expect("the PICs' own state");
                assert_eq!(fresh.state(), s);
                assert_eq!(fresh.output().high, fresh.intr());
                pic = fresh;
                let s = ioapic.state();
                let mut fresh = IoApic::new(Apics::default());
                fresh.restore(s).expect("the IO-APIC's own state");
                assert_eq!(fresh.state(), s);
                ioapic = fresh;
                continue;
            }
            _ => {
                if input.u8() & 1 == 0 {
                    pic.reset();
                } else {
                    ioapic.reset();
                }
            }
        }
        assert_eq!(pic.output().high, pic.intr(), "INT out of step");
        let sent = &ioapic.sink().sent[before..];
        if line_change {
            assert!(sent.len() <= 1, "one line change sent {sent:?}");
        }
        for msg in sent {
            assert!(
                (0..26).any(|pin| ioapic.route(pin) == Some(*msg)),
                "{msg:?} is no unmasked pin's message"
            );
        }
    }
});
