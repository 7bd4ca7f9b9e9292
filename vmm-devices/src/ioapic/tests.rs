//! The IO-APIC against a recording MSI sink.

use vmm_qom::Stateful;

use super::*;

#[derive(Debug, Default)]
struct Recorder(Vec<MsiMessage>);

impl MsiSink for Recorder {
    fn send_msi(&mut self, msg: MsiMessage) {
        self.0.push(msg);
    }
}

fn ioapic() -> IoApic<Recorder> {
    IoApic::new(Recorder::default())
}

fn sel(a: &mut IoApic<Recorder>, index: u8) {
    a.write(IOREGSEL, &u32::from(index).to_le_bytes());
}

fn reg(a: &mut IoApic<Recorder>, index: u8) -> u32 {
    sel(a, index);
    let mut b = [0u8; 4];
    a.read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

fn set_reg(a: &mut IoApic<Recorder>, index: u8, value: u32) {
    sel(a, index);
    a.write(IOWIN, &value.to_le_bytes());
}

/// Programs entry `pin` as Linux does: high dword (destination) first,
/// then the low dword.
fn program(a: &mut IoApic<Recorder>, pin: u8, low: u32, dest: u8) {
    set_reg(a, REG_TABLE + 2 * pin + 1, u32::from(dest) << 24);
    set_reg(a, REG_TABLE + 2 * pin, low);
}

const LEVEL: u32 = 1 << 15;
const MASK: u32 = 1 << 16;
const LOGICAL: u32 = 1 << 11;
const ACTIVE_LOW: u32 = 1 << 13;

fn sent(a: &IoApic<Recorder>) -> Vec<(u64, u32)> {
    a.sink().0.iter().map(|m| (m.address, m.data)).collect()
}

#[test]
fn version_id_and_reset_state_read_as_the_chip_has_them() {
    let mut a = IoApic::with_id(Recorder::default(), 2);
    assert_eq!(
        reg(&mut a, REG_VER),
        0x0017_0020,
        "24 entries, version 0x20"
    );
    assert_eq!(reg(&mut a, REG_ID), 2 << 24);
    assert_eq!(reg(&mut a, REG_ARB), 2 << 24);
    set_reg(&mut a, REG_ID, 0xFF00_0000);
    assert_eq!(reg(&mut a, REG_ID), 0x0F00_0000, "four ID bits");
    set_reg(&mut a, REG_VER, 0);
    assert_eq!(reg(&mut a, REG_VER), 0x0017_0020, "read-only");
    for pin in 0..24 {
        assert_eq!(reg(&mut a, REG_TABLE + 2 * pin), MASK, "pin {pin} masked");
        assert_eq!(reg(&mut a, REG_TABLE + 2 * pin + 1), 0);
    }
    // Past the table and unknown registers.
    assert_eq!(reg(&mut a, REG_TABLE + 48), u32::MAX);
    assert_eq!(reg(&mut a, 0x05), u32::MAX);
    let mut b = [0u8; 4];
    a.read(IOREGSEL, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x05);
}

#[test]
fn an_edge_pin_delivers_each_rising_edge_as_an_msi() {
    let mut a = ioapic();
    program(&mut a, 4, 0x24, 1);
    a.set_irq(4, true);
    a.set_irq(4, true); // still high: no new edge
    a.set_irq(4, false);
    a.set_irq(4, true);
    assert_eq!(sent(&a), [(0xFEE0_1000, 0x24), (0xFEE0_1000, 0x24)]);
    assert_eq!(
        reg(&mut a, REG_TABLE + 8) & (1 << 14),
        0,
        "no Remote IRR on edges"
    );
}

#[test]
fn the_message_carries_destination_mode_delivery_mode_and_trigger() {
    let mut a = ioapic();
    // Logical destination 0x03, lowest priority, vector 0x31.
    program(&mut a, 1, 0x31 | 1 << 8 | LOGICAL, 0x03);
    a.set_irq(1, true);
    // NMI to APIC 5.
    program(&mut a, 2, 4 << 8, 5);
    a.set_irq(2, true);
    // Level, active low (a PCI line), vector 0x41 to APIC 0.
    program(&mut a, 16, 0x41 | LEVEL | ACTIVE_LOW, 0);
    a.set_irq(16, true);
    assert_eq!(
        sent(&a),
        [
            (0xFEE0_3004, 0x131),
            (0xFEE0_5000, 0x400),
            (0xFEE0_0000, 0x41 | 1 << 14 | 1 << 15),
        ]
    );
    assert_eq!(a.route(16), Some(a.sink().0[2]));
    assert_eq!(a.route(3), None, "masked");
    assert_eq!(a.route(24), None);
}

#[test]
fn a_level_pin_waits_for_eoi_and_fires_again_while_still_asserted() {
    let mut a = ioapic();
    program(&mut a, 9, 0x29 | LEVEL, 0);
    a.set_irq(9, true);
    assert_eq!(a.delivered(), 1);
    assert_ne!(reg(&mut a, REG_TABLE + 18) & (1 << 14), 0, "Remote IRR set");
    // Asserted again before the EOI: nothing more.
    a.set_irq(9, true);
    assert_eq!(a.delivered(), 1);
    // Another vector's EOI does nothing.
    a.eoi(0x30);
    assert_eq!(a.delivered(), 1);
    // Its EOI while the line is still high: once more.
    a.eoi(0x29);
    assert_eq!(a.delivered(), 2);
    // The device is served: the line drops, then the EOI.
    a.set_irq(9, false);
    a.eoi(0x29);
    assert_eq!(a.delivered(), 2);
    assert_eq!(
        reg(&mut a, REG_TABLE + 18) & (1 << 14),
        0,
        "Remote IRR clear"
    );
    // The EOI register (version 0x20) does the same as an EOI exit.
    a.set_irq(9, true);
    a.write(EOI, &0x29u32.to_le_bytes());
    assert_eq!(a.delivered(), 4);
}

#[test]
fn a_pin_raised_while_masked_is_delivered_when_unmasked() {
    let mut a = ioapic();
    program(&mut a, 3, 0x23 | MASK, 0);
    a.set_irq(3, true);
    a.set_irq(3, false);
    assert_eq!(a.delivered(), 0);
    program(&mut a, 3, 0x23, 0);
    assert_eq!(sent(&a), [(0xFEE0_0000, 0x23)], "the edge was kept");
    // A level pin held high while masked fires once unmasked.
    program(&mut a, 10, 0x2A | LEVEL | MASK, 0);
    a.set_irq(10, true);
    assert_eq!(a.delivered(), 1);
    program(&mut a, 10, 0x2A | LEVEL, 0);
    assert_eq!(a.delivered(), 2);
    // A level pin that dropped while masked is forgotten.
    program(&mut a, 11, 0x2B | LEVEL | MASK, 0);
    a.set_irq(11, true);
    a.set_irq(11, false);
    program(&mut a, 11, 0x2B | LEVEL, 0);
    assert_eq!(a.delivered(), 2);
}

#[test]
fn the_guest_cannot_write_delivery_status_or_remote_irr() {
    let mut a = ioapic();
    program(&mut a, 5, 0x25 | 1 << 12 | 1 << 14, 0);
    assert_eq!(reg(&mut a, REG_TABLE + 10), 0x25);
    program(&mut a, 5, 0x25 | LEVEL, 0);
    a.set_irq(5, true);
    // Rewriting the entry keeps Remote IRR (Linux masks and unmasks
    // level pins around their handlers).
    set_reg(&mut a, REG_TABLE + 10, 0x25 | LEVEL | MASK);
    assert_ne!(reg(&mut a, REG_TABLE + 10) & (1 << 14), 0);
    // Switching to edge drops it.
    set_reg(&mut a, REG_TABLE + 10, 0x25 | MASK);
    assert_eq!(reg(&mut a, REG_TABLE + 10) & (1 << 14), 0);
}

#[test]
fn illegal_vectors_and_reserved_modes_are_not_delivered() {
    let mut a = ioapic();
    program(&mut a, 0, 0x0F, 0); // fixed, vector 15
    program(&mut a, 1, 0x30 | 3 << 8, 0); // reserved mode 3
    program(&mut a, 2, 0x30 | 6 << 8, 0); // reserved mode 6
    program(&mut a, 3, 0x02 | 7 << 8, 0); // ExtINT: its vector is unused
    for pin in 0..4 {
        a.set_irq(pin, true);
    }
    assert_eq!(sent(&a), [(0xFEE0_0000, 0x702)]);
    // Fixed later, an edge spent on an illegal entry stays spent.
    program(&mut a, 0, 0x20, 0);
    assert_eq!(a.delivered(), 1);
}

#[test]
fn odd_accesses_are_refused_without_harm() {
    let mut a = ioapic();
    let mut b = [0u8; 2];
    a.read(IOWIN, &mut b);
    assert_eq!(b, [0xFF, 0xFF]);
    let mut b = [0u8; 8];
    a.read(0x20, &mut b);
    assert_eq!(b, [0xFF; 8]);
    a.write(IOREGSEL, &[0x10]);
    a.write(0x44, &[0; 4]);
    a.write(IOWIN, &[]);
    assert_eq!(a.state(), IoApicState::default());
    a.set_irq(24, true);
    a.set_irq(usize::MAX, true);
    a.eoi(0);
    assert_eq!(a.delivered(), 0);
}

#[test]
fn state_round_trips_and_reset_keeps_only_the_lines() {
    let mut a = IoApic::with_id(Recorder::default(), 1);
    program(&mut a, 9, 0x29 | LEVEL, 0);
    a.set_irq(9, true);
    program(&mut a, 4, 0x24 | MASK, 0);
    a.set_irq(4, true);
    let s = a.state();
    let mut b = ioapic();
    b.restore(s).unwrap();
    assert_eq!(b.state(), s);
    // The restored one waits for the same EOI.
    b.eoi(0x29);
    assert_eq!(b.delivered(), 1);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<IoApicState>(&json).unwrap(), s);
    assert!(b
        .restore(IoApicState {
            id: 16,
            ..IoApicState::default()
        })
        .is_err());
    assert!(b
        .restore(IoApicState {
            irr: 1 << 24,
            ..IoApicState::default()
        })
        .is_err());
    a.reset();
    let r = a.state();
    assert_eq!(r.table, [1 << 16; NUM_PINS]);
    assert_eq!((r.id, r.irr, r.ioregsel), (0, 0, 0));
    assert_eq!(r.levels, (1 << 9) | (1 << 4), "the lines are the devices'");
}

/// Random accesses, lines and EOIs: no panic, and the invariants hold
/// (Remote IRR only on level entries; masked pins never deliver).
#[test]
fn random_guests_never_break_it() {
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut a = ioapic();
    for _ in 0..50_000 {
        let r = next();
        match r % 6 {
            0 => a.write(
                r >> 8 & 0x7F,
                &((next() as u32).to_le_bytes())[..(r >> 16) as usize % 5],
            ),
            1 => {
                let mut b = vec![0u8; (r >> 8) as usize % 9];
                a.read(r >> 16 & 0x7F, &mut b);
            }
            2 => sel(&mut a, (r >> 8) as u8),
            3 => set_reg(&mut a, REG_TABLE + (r >> 8) as u8 % 50, next() as u32),
            4 => a.set_irq((r >> 8) as usize % 26, r & 0x100 != 0),
            _ => a.eoi((r >> 8) as u8),
        }
        for pin in 0..NUM_PINS {
            let e = a.entry(pin).unwrap();
            assert!(e & (1 << 12) == 0, "delivery status stays 0");
            if e & (1 << 15) == 0 {
                assert_eq!(e & (1 << 14), 0, "Remote IRR on an edge entry");
            }
        }
    }
}
