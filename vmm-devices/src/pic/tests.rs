//! The PIC pair against a recording INT line, programmed as Linux and
//! the BIOSes do.

use vmm_qom::Stateful;

use super::*;

#[derive(Debug, Default)]
struct Intr(Vec<bool>);

impl PicOutput for Intr {
    fn set_intr(&mut self, high: bool) {
        self.0.push(high);
    }
}

fn out(p: &mut Pic<Intr>, port: u16, v: u8) {
    p.write(port, &[v]);
}

fn inb(p: &mut Pic<Intr>, port: u16) -> u8 {
    let mut b = [0u8];
    p.read(port, &mut b);
    b[0]
}

/// Linux's `init_8259A`: ICW1 edge + ICW4, vectors 0x30/0x38, cascade on
/// IRQ 2, 8086 mode; all masked but the cascade afterwards.
fn linux_init(p: &mut Pic<Intr>) {
    out(p, 0x21, 0xFF);
    out(p, 0xA1, 0xFF);
    out(p, 0x20, 0x11);
    out(p, 0x21, 0x30);
    out(p, 0x21, 0x04);
    out(p, 0x21, 0x01);
    out(p, 0xA0, 0x11);
    out(p, 0xA1, 0x38);
    out(p, 0xA1, 0x02);
    out(p, 0xA1, 0x01);
    out(p, 0x21, 0xFB);
    out(p, 0xA1, 0xFF);
}

fn pic() -> Pic<Intr> {
    let mut p = Pic::new(Intr::default());
    linux_init(&mut p);
    p
}

#[test]
fn initialisation_sets_bases_and_masks() {
    let mut p = pic();
    let s = p.state();
    assert_eq!((s.master.irq_base, s.slave.irq_base), (0x30, 0x38));
    assert_eq!((s.master.init_state, s.slave.init_state), (0, 0));
    assert_eq!(inb(&mut p, 0x21), 0xFB);
    assert_eq!(inb(&mut p, 0xA1), 0xFF);
    assert!(!p.intr());
}

#[test]
fn an_edge_on_a_master_line_raises_int_and_gives_its_vector() {
    let mut p = pic();
    out(&mut p, 0x21, 0xFA); // unmask IRQ 0
    p.set_irq(0, true);
    assert!(p.intr());
    assert_eq!(p.acknowledge(), 0x30);
    assert!(!p.intr(), "in service now");
    assert_eq!(p.state().master.isr, 1);
    // Held high: no second request.
    p.set_irq(0, true);
    assert!(!p.intr());
    out(&mut p, 0x20, 0x20); // non-specific EOI
    assert_eq!(p.state().master.isr, 0);
    assert!(!p.intr(), "no new edge");
    p.set_irq(0, false);
    p.set_irq(0, true);
    assert!(p.intr());
    assert_eq!(p.output().0, [true, false, true]);
}

#[test]
fn the_slave_cascades_through_irq_2() {
    let mut p = pic();
    out(&mut p, 0xA1, 0xFE); // unmask IRQ 8
    p.set_irq(8, true);
    assert!(p.intr());
    assert_eq!(p.acknowledge(), 0x38);
    let s = p.state();
    assert_eq!((s.master.isr, s.slave.isr), (1 << 2, 1));
    // Linux's EOI order: the slave, then the master.
    out(&mut p, 0xA0, 0x20);
    out(&mut p, 0x20, 0x20);
    let s = p.state();
    assert_eq!((s.master.isr, s.slave.isr), (0, 0));
}

#[test]
fn priority_nesting_and_masking() {
    let mut p = pic();
    out(&mut p, 0x21, 0x00);
    p.set_irq(3, true);
    assert_eq!(p.acknowledge(), 0x33);
    // A lower priority (higher number) waits behind IRQ 3 in service.
    p.set_irq(5, true);
    assert!(!p.intr());
    // A higher one nests.
    p.set_irq(1, true);
    assert!(p.intr());
    assert_eq!(p.acknowledge(), 0x31);
    out(&mut p, 0x20, 0x20); // ends IRQ 1
    out(&mut p, 0x20, 0x20); // ends IRQ 3
    assert!(p.intr());
    assert_eq!(p.acknowledge(), 0x35);
    // Masked: requested but no INT.
    out(&mut p, 0x20, 0x65); // specific EOI of IRQ 5
    out(&mut p, 0x21, 0x80);
    p.set_irq(7, true);
    assert!(!p.intr());
    assert_eq!(inb(&mut p, 0x20) & 0x80, 0x80, "IRR shows it");
    out(&mut p, 0x21, 0x00);
    assert!(p.intr());
}

#[test]
fn isr_reads_polls_and_spurious_irq_7() {
    let mut p = pic();
    out(&mut p, 0x21, 0x00);
    p.set_irq(4, true);
    out(&mut p, 0x20, 0x0B); // OCW3: read ISR
    assert_eq!(inb(&mut p, 0x20), 0);
    out(&mut p, 0x20, 0x0C); // OCW3: poll
    assert_eq!(inb(&mut p, 0x20), 0x84);
    assert_eq!(inb(&mut p, 0x20), 1 << 4, "ISR again after the poll");
    out(&mut p, 0x20, 0x0A); // back to IRR
    out(&mut p, 0x20, 0x20);
    // Nothing pending: the acknowledge is spurious, IRQ 7, no ISR bit.
    assert_eq!(p.acknowledge(), 0x37);
    assert_eq!(p.state().master.isr, 0);
}

#[test]
fn level_lines_by_elcr_stay_requested_while_high() {
    let mut p = pic();
    out(&mut p, 0x4D1, 0xFF);
    assert_eq!(inb(&mut p, 0x4D1), 0xDE, "IRQ 8 and 13 stay edge");
    out(&mut p, 0x4D0, 0xFF);
    assert_eq!(inb(&mut p, 0x4D0), 0xF8, "IRQ 0-2 stay edge");
    out(&mut p, 0xA1, 0xF7); // unmask IRQ 11
    p.set_irq(11, true);
    assert_eq!(p.acknowledge(), 0x3B);
    out(&mut p, 0xA0, 0x20);
    out(&mut p, 0x20, 0x20);
    assert!(p.intr(), "still high: requested again");
    // Gone before the CPU acknowledged: the master's cascade input had
    // latched its edge, so the CPU gets the slave's spurious IRQ 15, as
    // on the chip.
    p.set_irq(11, false);
    assert_eq!(p.acknowledge(), 0x3F);
    assert_eq!(p.state().slave.isr, 0, "no in-service bit for it");
    out(&mut p, 0x20, 0x20);
    assert!(!p.intr());
}

#[test]
fn auto_eoi_rotation_and_special_mask() {
    let mut p = Pic::new(Intr::default());
    out(&mut p, 0x20, 0x13); // edge, single, ICW4
    out(&mut p, 0x21, 0x08);
    out(&mut p, 0x21, 0x03); // ICW4: auto EOI, 8086
    out(&mut p, 0x21, 0x00);
    out(&mut p, 0x20, 0x80); // rotate on auto EOI
    p.set_irq(0, true);
    p.set_irq(1, true);
    assert_eq!(p.acknowledge(), 0x08);
    assert_eq!(p.state().master.isr, 0, "auto EOI");
    assert_eq!(p.state().master.priority_add, 1, "IRQ 0 now lowest");
    assert_eq!(p.acknowledge(), 0x09);
    // Set priority: IRQ 4 lowest, so IRQ 5 is highest.
    out(&mut p, 0x20, 0xC4);
    assert_eq!(p.state().master.priority_add, 5);
    // Special mask mode lets a masked in-service level be preempted.
    let mut p = pic();
    out(&mut p, 0x21, 0x00);
    p.set_irq(1, true);
    assert_eq!(p.acknowledge(), 0x31);
    out(&mut p, 0x21, 0x02); // mask IRQ 1, in service
    out(&mut p, 0x20, 0x68); // OCW3: special mask on
    p.set_irq(6, true);
    assert!(p.intr(), "IRQ 6 despite IRQ 1 in service");
}

#[test]
fn state_round_trips_and_reset_is_power_on() {
    let mut p = pic();
    out(&mut p, 0x21, 0x00);
    out(&mut p, 0x4D0, 0x20);
    p.set_irq(5, true);
    p.set_irq(3, true);
    assert_eq!(p.acknowledge(), 0x33);
    let s = p.state();
    let mut q = Pic::new(Intr::default());
    q.restore(s).unwrap();
    assert_eq!(q.state(), s);
    assert!(
        q.output().0.is_empty(),
        "IRQ 5 waits behind IRQ 3 in service"
    );
    out(&mut q, 0x20, 0x20);
    assert_eq!(q.output().0, [true], "the restored one goes on from there");
    assert_eq!(q.acknowledge(), 0x35);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<PicState>(&json).unwrap(), s);
    let before = q.state();
    let mut bad = s;
    bad.master.init_state = 4;
    assert!(q.restore(bad).is_err());
    let mut bad = s;
    bad.slave.elcr = 0x01;
    assert!(q.restore(bad).is_err());
    assert_eq!(q.state(), before, "unchanged by a refused restore");
    p.reset();
    let r = p.state();
    assert_eq!(r.master.imr, 0);
    assert_eq!(r.master.isr, 0);
    assert_eq!(r.master.elcr, 0);
    assert_eq!(r.master.last_irr, (1 << 5) | (1 << 3), "the lines stay");
    assert!(!p.intr());
}

#[test]
fn odd_accesses_are_refused() {
    let mut p = pic();
    let mut b = [0u8; 2];
    p.read(0x20, &mut b);
    assert_eq!(b, [0xFF, 0xFF]);
    p.write(0x21, &[0, 0]);
    p.write(0x22, &[0]);
    assert_eq!(inb(&mut p, 0x21), 0xFB);
    p.set_irq(16, true);
    assert!(!p.intr());
}

/// Random writes, lines and acknowledges: no panic; fields stay in range.
#[test]
fn random_guests_never_break_it() {
    let mut x = 0x0ddc_0ffe_e15e_a5e5u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const PORTS: [u16; 7] = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22];
    let mut p = Pic::new(Intr::default());
    for _ in 0..50_000 {
        let r = next();
        let port = PORTS[(r >> 8) as usize % PORTS.len()];
        match r % 5 {
            0 | 1 => out(&mut p, port, (r >> 16) as u8),
            2 => {
                inb(&mut p, port);
            }
            3 => p.set_irq((r >> 16) as u8 % 17, r & 0x80 != 0),
            _ => {
                let v = p.acknowledge();
                let s = p.state();
                assert!(v & 0xF8 == s.master.irq_base || v & 0xF8 == s.slave.irq_base);
            }
        }
        let s = p.state();
        for c in [s.master, s.slave] {
            assert!(c.init_state <= 3 && c.priority_add <= 7 && c.irq_base & 7 == 0);
        }
        assert_eq!(p.intr(), p.output().0.last().copied().unwrap_or(false));
    }
}
