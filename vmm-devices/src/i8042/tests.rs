//! Unit tests of the i8042, after docs/devices.md §6.3 and §6.4.

use super::*;
use crate::test_util::{fired, inb, line, outb};

struct Kbc {
    dev: I8042,
    reset: EventFdTrigger,
    irq: EventFdTrigger,
}

impl Kbc {
    fn new() -> Self {
        let (reset, reset_probe) = line();
        let (irq, irq_probe) = line();
        Self {
            dev: I8042::new(reset, irq),
            reset: reset_probe,
            irq: irq_probe,
        }
    }

    /// Port I/O as two 1-port ranges (0x61 belongs to another device).
    fn inb(&mut self, port: u16) -> u8 {
        inb(&mut self.dev, port, 0)
    }

    fn outb(&mut self, port: u16, value: u8) {
        outb(&mut self.dev, port, 0, value);
    }

    fn command(&mut self, cmd: u8) {
        self.outb(COMMAND_PORT, cmd);
    }

    fn resets(&self) -> u64 {
        fired(&self.reset)
    }

    fn irqs(&self) -> u64 {
        fired(&self.irq)
    }

    /// Reads everything queued, checking OBF before each byte as Linux does.
    fn drain(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        while self.inb(COMMAND_PORT) & STS_OBF != 0 {
            bytes.push(self.inb(DATA_PORT));
        }
        bytes
    }
}

#[test]
fn reset_status_and_read_ctr() {
    let mut k = Kbc::new();
    assert_eq!(k.inb(COMMAND_PORT), 0x18);
    k.command(0x20);
    assert_eq!(k.inb(COMMAND_PORT) & 1, 1);
    assert_eq!(k.inb(DATA_PORT), 0x03);
    assert_eq!(k.inb(COMMAND_PORT) & 1, 0);
    // Empty queue: data reads 0.
    assert_eq!(k.inb(DATA_PORT), 0x00);
}

#[test]
fn write_ctr_and_irq1_follows_kbdint() {
    let mut k = Kbc::new();
    k.command(0x60);
    k.outb(DATA_PORT, 0x61);
    assert_eq!(
        k.inb(COMMAND_PORT) & STS_CMD,
        0,
        "A2 clear after a data write"
    );
    k.irqs();
    k.command(0x20);
    assert_eq!(k.irqs(), 1, "KBDINT set, KBDDIS clear: IRQ 1");
    assert_eq!(k.inb(DATA_PORT), 0x61);

    k.command(0x60);
    k.outb(DATA_PORT, 0x60);
    k.command(0x20);
    assert_eq!(k.irqs(), 0, "KBDINT clear: no IRQ 1");
    assert_eq!(k.inb(DATA_PORT), 0x60);

    // Data waiting while KBDINT is clear is signalled once it is set.
    k.command(0x20);
    k.command(0x60);
    k.outb(DATA_PORT, 0x61);
    assert_eq!(k.irqs(), 1);
    // And KBDDIS masks it.
    k.drain();
    k.command(0xAD);
    k.irqs();
    k.command(0x20);
    assert_eq!(k.irqs(), 0);
    k.command(0xAE);
    assert_eq!(k.irqs(), 1);
}

#[test]
fn self_test_sets_sys() {
    let mut k = Kbc::new();
    k.command(0xAA);
    assert_eq!(k.inb(DATA_PORT), 0x55);
    assert_eq!(k.inb(COMMAND_PORT) & 0x04, 0x04);
    k.command(0xAB);
    k.command(0xA9);
    k.command(0xC0);
    assert_eq!(k.drain(), [0x00, 0x00, 0x80]);
}

#[test]
fn reset_command_fires_once_until_rearmed() {
    let mut k = Kbc::new();
    k.command(0xFF);
    assert_eq!(k.resets(), 0, "0xFF pulses nothing");
    // Linux's reboot=k loop: wait for IBF clear, write 0xFE, ten times.
    for _ in 0..10 {
        assert_eq!(k.inb(COMMAND_PORT) & 0x02, 0);
        k.command(0xFE);
    }
    assert_eq!(k.resets(), 1);
    assert!(k.dev.reset_requested());
    k.dev.reset();
    assert!(!k.dev.reset_requested());
    assert_eq!(k.dev.state(), I8042State::default());
    k.command(0xF0);
    assert_eq!(k.resets(), 1, "0xF0 pulses bit 0 too");
    k.dev.reset();
    k.command(0xF3);
    assert_eq!(k.resets(), 0, "odd pulse commands leave reset alone");
}

#[test]
fn output_port_reset_and_a20() {
    let mut k = Kbc::new();
    k.command(0xD1);
    k.outb(DATA_PORT, 0xDF);
    assert_eq!(k.resets(), 0);
    k.command(0xD0);
    assert_eq!(k.inb(DATA_PORT), 0xDF);
    k.command(0xDD);
    k.command(0xD0);
    assert_eq!(k.inb(DATA_PORT), 0xDD);
    k.command(0xDF);
    k.command(0xD0);
    assert_eq!(k.inb(DATA_PORT), 0xDF);
    k.command(0xD1);
    k.outb(DATA_PORT, 0xFE);
    assert_eq!(k.resets(), 1);
}

#[test]
fn aux_loopback_sets_aux_obf_without_irq1() {
    let mut k = Kbc::new();
    k.command(0xD3);
    k.outb(DATA_PORT, 0x5A);
    assert_eq!(k.inb(COMMAND_PORT) & 0x21, 0x21);
    assert_eq!(k.irqs(), 0);
    assert_eq!(k.inb(DATA_PORT), 0x5A);
    assert_eq!(k.inb(COMMAND_PORT) & 0x21, 0);
    // 0xD2 queues keyboard data instead.
    k.command(0xD2);
    k.outb(DATA_PORT, 0x1C);
    assert_eq!(k.inb(COMMAND_PORT) & 0x21, 0x01);
    assert_eq!(k.irqs(), 1);
    // 0xD4: no AUX device, nothing comes back.
    k.drain();
    k.command(0xD4);
    k.outb(DATA_PORT, 0xFF);
    assert_eq!(k.inb(COMMAND_PORT) & STS_OBF, 0);
}

#[test]
fn keyboard_replies_with_one_irq_per_byte() {
    let mut k = Kbc::new();
    k.outb(DATA_PORT, 0xF2);
    assert_eq!(k.irqs(), 1);
    assert_eq!(k.inb(DATA_PORT), 0xFA);
    assert_eq!(k.irqs(), 1, "next byte loaded: a new edge");
    assert_eq!(k.inb(DATA_PORT), 0xAB);
    assert_eq!(k.irqs(), 1);
    assert_eq!(k.inb(DATA_PORT), 0x83);
    assert_eq!(k.irqs(), 0);

    k.command(0x60);
    k.outb(DATA_PORT, 0x41 | CTR_XLATE);
    k.outb(DATA_PORT, 0xF2);
    assert_eq!(k.drain(), [0xFA, 0xAB, 0x41]);
    k.outb(DATA_PORT, 0xFF);
    assert_eq!(k.drain(), [0xFA, 0xAA]);
}

#[test]
fn queue_is_capped() {
    let mut k = Kbc::new();
    for i in 0..20 {
        k.command(0xD2);
        k.outb(DATA_PORT, i);
    }
    assert_eq!(k.dev.dropped_output_bytes(), 4);
    assert_eq!(k.drain(), (0..16).collect::<Vec<u8>>());
}

#[test]
fn a_new_command_abandons_a_pending_parameter() {
    let mut k = Kbc::new();
    k.command(0x60);
    k.command(0x20);
    assert_eq!(k.inb(DATA_PORT), 0x03);
    // The data byte now goes to the keyboard, not into CTR.
    k.outb(DATA_PORT, 0xF4);
    assert_eq!(k.drain(), [0xFA]);
    k.command(0x20);
    assert_eq!(k.drain(), [0x03]);
}

#[test]
fn unsupported_commands_are_ignored() {
    let mut k = Kbc::new();
    for cmd in [0xA1, 0x00, 0xC1, 0xE0] {
        k.command(cmd);
    }
    assert_eq!(k.inb(COMMAND_PORT), 0x18);
    assert_eq!(k.resets(), 0);
}

/// docs/devices.md §6.3: what Linux's i8042 driver does at boot, AUX probing
/// included, then atkbd's probe.
#[test]
fn linux_boot_probe() {
    let mut k = Kbc::new();
    // Flush: at most 16 bytes while OBF is set; the status is never 0xFF.
    assert_ne!(k.inb(COMMAND_PORT), 0xFF);
    assert!(k.drain().is_empty());
    // Read CTR until two reads agree.
    k.command(0x20);
    let a = k.inb(DATA_PORT);
    k.command(0x20);
    let b = k.inb(DATA_PORT);
    assert_eq!(a, b);
    // Save it, disable the keyboard and its interrupt, write it back.
    let ctr = (a | CTR_KBD_DISABLE) & !CTR_KBD_INT;
    k.command(0x60);
    k.outb(DATA_PORT, ctr);
    // AUX loopback (0xD3) with 0x5A: the byte comes back as AUX data.
    k.command(0xD3);
    k.outb(DATA_PORT, 0x5A);
    assert_eq!(k.inb(COMMAND_PORT) & STS_AUX_OBF, STS_AUX_OBF);
    assert_eq!(k.inb(DATA_PORT), 0x5A);
    // AUX disable/enable are visible in CTR.
    k.command(0xA7);
    k.command(0x20);
    assert_ne!(k.inb(DATA_PORT) & CTR_AUX_DISABLE, 0);
    k.command(0xA8);
    k.command(0x20);
    assert_eq!(k.inb(DATA_PORT) & CTR_AUX_DISABLE, 0);
    // Keyboard port on: KBDINT set, KBDDIS clear.
    k.irqs();
    k.command(0x60);
    k.outb(DATA_PORT, (ctr | CTR_KBD_INT) & !CTR_KBD_DISABLE);
    assert_eq!(k.irqs(), 0, "nothing queued, nothing signalled");
    // atkbd: get ID, then set LEDs and enable, each answered with IRQ 1.
    k.outb(DATA_PORT, 0xF2);
    assert_eq!(k.drain(), [0xFA, 0xAB, 0x83]);
    k.outb(DATA_PORT, 0xED);
    assert_eq!(k.drain(), [0xFA]);
    k.outb(DATA_PORT, 0x00);
    assert_eq!(k.drain(), [0xFA]);
    k.outb(DATA_PORT, 0xF4);
    assert_eq!(k.drain(), [0xFA]);
    assert_eq!(k.irqs(), 6);
    assert_eq!(k.resets(), 0);
    assert_eq!(k.dev.invalid_accesses(), 0);
}

#[test]
fn one_range_at_0x60_decodes_offsets_0_and_4() {
    let mut k = Kbc::new();
    outb(&mut k.dev, DATA_PORT, 4, 0x20);
    assert_eq!(inb(&mut k.dev, DATA_PORT, 4) & STS_OBF, STS_OBF);
    assert_eq!(inb(&mut k.dev, DATA_PORT, 0), 0x03);
    // 0x61..0x63 are not the i8042's.
    assert_eq!(inb(&mut k.dev, DATA_PORT, 1), 0xFF);
    outb(&mut k.dev, DATA_PORT, 2, 0xFE);
    assert_eq!(k.resets(), 0);
    assert_eq!(k.dev.invalid_accesses(), 2);
}

#[test]
fn refuses_wide_and_wrapping_accesses() {
    let mut k = Kbc::new();
    let mut word = [0u8; 2];
    k.dev.pio_read(PioAddress(COMMAND_PORT), 0, &mut word);
    assert_eq!(word, [0xFF, 0xFF]);
    k.dev.pio_write(PioAddress(COMMAND_PORT), 0, &[0xFE, 0x00]);
    k.dev.pio_write(PioAddress(COMMAND_PORT), 0, &[]);
    assert_eq!(inb(&mut k.dev, 0xFFFF, 0x65), 0xFF);
    assert_eq!(k.resets(), 0);
    assert_eq!(k.dev.invalid_accesses(), 4);
}

#[test]
fn state_round_trips_and_refires_irq() {
    let mut k = Kbc::new();
    k.command(0xAA);
    k.command(0xD1);
    let state = k.dev.state();
    assert_eq!(state.pending, PendingWrite::OutputPort);
    let (reset, _reset_probe) = line();
    let (irq, irq_probe) = line();
    let mut copy = I8042::from_state(&state, reset, irq).unwrap();
    assert_eq!(fired(&irq_probe), 1);
    assert_eq!(copy.state(), state);
    assert_eq!(copy.read_data(), 0x55);
    assert_eq!(copy.read_status() & STS_SYS, STS_SYS);

    let bad = I8042State {
        output: std::iter::repeat_n(
            OutputByte {
                byte: 0,
                source: Source::Aux,
            },
            OUTPUT_QUEUE_LEN + 1,
        )
        .collect(),
        ..I8042State::default()
    };
    let (reset, _r) = line();
    let (irq, _i) = line();
    let err = I8042::from_state(&bad, reset, irq).unwrap_err();
    assert!(matches!(err, Error::QueueOverflow { len: 17, .. }), "{err}");
    // The accessors hand out the lines the device was built with.
    k.dev.reset_line().trigger().unwrap();
    k.dev.keyboard_irq().trigger().unwrap();
    assert_eq!((k.resets(), k.irqs()), (1, 2));
}
