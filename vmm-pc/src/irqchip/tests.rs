use std::sync::{Arc, Mutex};

use super::*;

/// One routing table as KVM would be given it: (GSI, address, data).
type Routes = Vec<(u32, u64, u32)>;

/// Records what the IO-APIC sends and what KVM would be given.
#[derive(Debug, Clone, Default)]
struct Record(Arc<Mutex<Vec<MsiMessage>>>, Arc<Mutex<Vec<Routes>>>);

impl MsiSink for Record {
    fn send_msi(&mut self, msg: MsiMessage) {
        lock(&self.0).push(msg);
    }
}

impl RouteSink for Record {
    fn set_routes(&mut self, routes: &[(u32, u64, u32)]) -> Result<(), VmError> {
        lock(&self.1).push(routes.to_vec());
        Ok(())
    }
}

fn ioapic() -> (SplitIoApic<Record, Record>, Record) {
    let r = Record::default();
    let a = SplitIoApic::new(r.clone(), r.clone(), 0).unwrap();
    (a, r)
}

fn write_reg(a: &mut SplitIoApic<Record, Record>, index: u32, value: u32) {
    a.mmio_write(MmioAddress(0xFEC0_0000), 0, &index.to_le_bytes());
    a.mmio_write(MmioAddress(0xFEC0_0000), 0x10, &value.to_le_bytes());
}

/// Pin `pin`: `vector`, fixed, physical destination `dest`, level or
/// edge, unmasked.
fn program(a: &mut SplitIoApic<Record, Record>, pin: u32, vector: u32, dest: u32, level: bool) {
    write_reg(a, 0x11 + 2 * pin, dest << 24);
    write_reg(a, 0x10 + 2 * pin, vector | u32::from(level) << 15);
}

fn last_routes(r: &Record) -> Routes {
    lock(&r.1).last().cloned().unwrap()
}

#[test]
fn kvm_starts_with_no_routes_and_gets_each_unmasked_pin() {
    let (mut a, r) = ioapic();
    assert_eq!(*lock(&r.1), vec![Vec::new()]);
    program(&mut a, 4, 0x34, 1, false);
    assert_eq!(last_routes(&r), [(4, 0xFEE0_1000, 0x34)]);
    program(&mut a, 9, 0x39, 0, true);
    // Level-triggered: trigger and assert bits, for KVM's EOI exits.
    assert_eq!(
        last_routes(&r),
        [
            (4, 0xFEE0_1000, 0x34),
            (9, 0xFEE0_0000, 0x39 | 1 << 15 | 1 << 14)
        ]
    );
    // Masking takes the route away.
    write_reg(&mut a, 0x10 + 2 * 4, 0x34 | 1 << 16);
    assert_eq!(
        last_routes(&r),
        [(9, 0xFEE0_0000, 0x39 | 1 << 15 | 1 << 14)]
    );
}

#[test]
fn unchanged_tables_are_not_given_again() {
    let (mut a, r) = ioapic();
    program(&mut a, 4, 0x34, 0, false);
    let n = lock(&r.1).len();
    // IOREGSEL, a read-only register, the same entry again.
    a.mmio_write(MmioAddress(0xFEC0_0000), 0, &1u32.to_le_bytes());
    write_reg(&mut a, 0x01, 0xFFFF_FFFF);
    write_reg(&mut a, 0x18, 0x34);
    assert_eq!(lock(&r.1).len(), n);
}

#[test]
fn reset_and_restore_give_kvm_the_table_they_leave() {
    let (mut a, r) = ioapic();
    program(&mut a, 2, 0x30, 0, false);
    let saved = a.state();
    a.reset();
    assert_eq!(last_routes(&r), []);
    a.restore(saved).unwrap();
    assert_eq!(last_routes(&r), [(2, 0xFEE0_0000, 0x30)]);
}

#[test]
fn a_level_line_is_delivered_again_after_its_eoi_while_high() {
    let (mut a, r) = ioapic();
    program(&mut a, 9, 0x39, 0, true);
    a.set_irq(9, true);
    assert_eq!(lock(&r.0).len(), 1);
    // Remote IRR: no second delivery before the EOI.
    a.set_irq(9, true);
    assert_eq!(lock(&r.0).len(), 1);
    a.eoi(0x39);
    assert_eq!(lock(&r.0).len(), 2);
    a.set_irq(9, false);
    a.eoi(0x39);
    assert_eq!(lock(&r.0).len(), 2);
}

#[test]
fn the_pit_is_pin_2_and_the_rest_their_own() {
    assert_eq!(split_pin(0), 2);
    for gsi in 1..24 {
        assert_eq!(split_pin(gsi), gsi);
    }
}

#[test]
fn the_pics_ports_reach_the_model_through_each_range() {
    let mut pic = SplitPic::default();
    // ICW1-4 on the master, then its IMR.
    for (port, v) in [
        (0x20u16, 0x11u8),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xFB),
    ] {
        let base = port & !1;
        pic.pio_write(PioAddress(base), port - base, &[v]);
    }
    let mut b = [0u8];
    pic.pio_read(PioAddress(0x20), 1, &mut b);
    assert_eq!(b, [0xFB]);
    // The ELCR's slave half: IRQ 8 and 13 stay edge.
    pic.pio_write(PioAddress(0x4D0), 1, &[0xFF]);
    pic.pio_read(PioAddress(0x4D0), 1, &mut b);
    assert_eq!(b, [0xDE]);
    assert_eq!(pic.state().master.imr, 0xFB);
    pic.reset();
    assert_eq!(pic.state(), PicState::default());
}
