use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm_device::bus::PioAddress;
use vm_device::MutDevicePio;
use vmm_core::vcpu::ExtIntSource;
use vmm_devices::pic::PicState;
use vmm_devices::Trigger;

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
    let mut pic = SplitPic::new(Arc::default());
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

/// Counts the kicks.
#[derive(Debug, Default)]
struct Kicks(Arc<AtomicUsize>);

impl Kick for Kicks {
    fn kick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn out(pic: &mut SplitPic, port: u16, v: u8) {
    let base = if port >= 0x4D0 { 0x4D0 } else { port & !1 };
    pic.pio_write(PioAddress(base), port - base, &[v]);
}

/// ICW1-4 on both chips (vectors 0x20 and 0x28, the slave on IRQ 2),
/// then the masks.
fn init(pic: &mut SplitPic, master_imr: u8, slave_imr: u8) {
    for (port, v) in [
        (0x20u16, 0x11u8),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xA0, 0x11),
        (0xA1, 0x28),
        (0xA1, 0x02),
        (0xA1, 0x01),
        (0x21, master_imr),
        (0xA1, slave_imr),
    ] {
        out(pic, port, v);
    }
}

#[test]
fn the_pics_are_in_use_while_an_input_can_reach_the_cpu() {
    let state = |m: u8, s: u8| {
        let mut st = PicState::default();
        st.master.imr = m;
        st.slave.imr = s;
        st
    };
    assert!(pic_in_use(&state(0, 0)), "power-on: nothing masked");
    assert!(!pic_in_use(&state(0xFF, 0xFF)), "Linux with an IO-APIC");
    assert!(pic_in_use(&state(0xFE, 0xFF)), "IRQ 0");
    assert!(!pic_in_use(&state(0xFB, 0xFF)), "the cascade alone");
    assert!(pic_in_use(&state(0xFB, 0xFE)), "IRQ 8 through the cascade");
    assert!(!pic_in_use(&state(0xFF, 0xFE)), "IRQ 8, the cascade masked");
}

#[test]
fn the_link_follows_the_masks_through_writes_reset_and_restore() {
    let link = Arc::new(PicLink::default());
    let mut pic = SplitPic::new(Arc::clone(&link));
    assert!(link.in_use(), "power-on");
    init(&mut pic, 0xFF, 0xFF);
    assert!(!link.in_use());
    out(&mut pic, 0x21, 0xFE);
    assert!(link.in_use());
    let saved = pic.state();
    out(&mut pic, 0x21, 0xFF);
    assert!(!link.in_use());
    pic.restore(saved).unwrap();
    assert!(link.in_use());
    out(&mut pic, 0x21, 0xFF);
    pic.reset();
    assert!(link.in_use(), "power-on again");
}

#[test]
fn a_rising_output_kicks_the_boot_vcpu_which_acknowledges_the_vector() {
    let link = Arc::new(PicLink::default());
    let pic = Arc::new(Mutex::new(SplitPic::new(Arc::clone(&link))));
    init(&mut lock(&pic), 0xFE, 0xFF);
    let kicks = Arc::new(AtomicUsize::new(0));
    link.set_kick(Box::new(Kicks(Arc::clone(&kicks))));
    let source = PicExtInt {
        pic: Arc::clone(&pic),
        link: Arc::clone(&link),
    };
    assert!(!source.pending());
    lock(&pic).set_irq(0, true);
    assert_eq!(kicks.load(Ordering::SeqCst), 1);
    assert!(source.pending());
    assert_eq!(source.acknowledge(), 0x20, "IRQ 0's vector");
    assert!(!source.pending(), "in service now");
    assert_eq!(lock(&pic).state().master.isr, 1);
    // A masked line raises nothing.
    lock(&pic).set_irq(0, false);
    lock(&pic).set_irq(3, true);
    assert!(!source.pending());
    assert_eq!(kicks.load(Ordering::SeqCst), 1);
}

#[test]
fn an_isa_edge_through_the_vmm_reaches_the_pic_and_the_ioapic() {
    let link = Arc::new(PicLink::default());
    let pic = Arc::new(Mutex::new(SplitPic::new(Arc::clone(&link))));
    let (mut a, r) = ioapic();
    program(&mut a, 2, 0x30, 0, false);
    let isa = Arc::new(SplitIsa {
        link: Arc::clone(&link),
        pic: Arc::clone(&pic),
        ioapic: Arc::new(Mutex::new(a)),
    });
    let line = IsaLine::split(EventFdTrigger::nonblocking().unwrap(), 0, isa);
    // The PICs masked: the edge goes to KVM (the irqfd on pin 2's route).
    init(&mut lock(&pic), 0xFF, 0xFF);
    line.trigger().unwrap();
    assert_eq!(line.event_fd().event_fd().read().unwrap(), 1);
    assert!(lock(&r.0).is_empty());
    assert!(!link.intr());
    // IRQ 0 unmasked: both models see it, IRQ 0 on the PIC, pin 2 on the
    // IO-APIC (which sends its message), and nothing goes to KVM's irqfd.
    out(&mut lock(&pic), 0x21, 0xFE);
    line.trigger().unwrap();
    assert!(line.event_fd().event_fd().read().is_err());
    assert!(link.intr());
    assert_eq!(lock(&r.0).len(), 1);
    assert_eq!(lock(&pic).acknowledge(), 0x20);
    // A second edge while IRQ 0 is in service waits in the IRR.
    line.trigger().unwrap();
    assert!(!link.intr());
    out(&mut lock(&pic), 0x20, 0x20); // non-specific EOI
    assert!(link.intr());
}

#[test]
fn a_level_line_below_16_reaches_the_pics_and_the_ioapic() {
    let link = Arc::new(PicLink::default());
    let pic = Mutex::new(SplitPic::new(Arc::clone(&link)));
    let (mut a, r) = ioapic();
    program(&mut a, 9, 0x39, 0, true);
    let a = Mutex::new(a);
    // IRQ 9 (the SCI) unmasked on the slave, level-triggered by the ELCR,
    // as Linux booted `noapic` leaves it.
    init(&mut lock(&pic), 0xFB, 0xFD);
    out(&mut lock(&pic), 0x4D1, 0x02);
    isa::set_split_level(&pic, &a, 9, true);
    assert!(link.intr());
    assert_eq!(lock(&r.0).len(), 1, "the IO-APIC's pin 9 too");
    assert_eq!(lock(&pic).acknowledge(), 0x29);
    // Still high at the EOIs (slave, then master): requested again.
    out(&mut lock(&pic), 0xA0, 0x20);
    out(&mut lock(&pic), 0x20, 0x20);
    assert!(link.intr(), "a level line still high asks again");
    assert_eq!(lock(&pic).acknowledge(), 0x29);
    isa::set_split_level(&pic, &a, 9, false);
    out(&mut lock(&pic), 0xA0, 0x20);
    out(&mut lock(&pic), 0x20, 0x20);
    assert!(!link.intr(), "low: nothing more");
}

#[test]
fn pci_lines_and_the_cascade_stay_off_the_pics() {
    let link = Arc::new(PicLink::default());
    let pic = Mutex::new(SplitPic::new(Arc::clone(&link)));
    let (mut a, r) = ioapic();
    program(&mut a, 16, 0x50, 0, true);
    let a = Mutex::new(a);
    init(&mut lock(&pic), 0x00, 0x00);
    for gsi in [2, 16, 23] {
        isa::set_split_level(&pic, &a, gsi, true);
    }
    assert!(!link.intr());
    assert_eq!(lock(&pic).state().master.irr, 0);
    assert_eq!(lock(&r.0).len(), 1, "pin 16 on the IO-APIC");
}
