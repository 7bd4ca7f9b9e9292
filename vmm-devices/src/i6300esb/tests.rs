use vmm_qom::Device;

use super::*;
use crate::test_util::{fired, line, Sim, XorShift};

const MS: i64 = 1_000_000;

fn w32(dev: &mut I6300Esb<EventFdTrigger>, offset: u64, v: u32) {
    dev.bar_write(offset, &v.to_le_bytes());
}

fn w16(dev: &mut I6300Esb<EventFdTrigger>, offset: u64, v: u16) {
    dev.bar_write(offset, &v.to_le_bytes());
}

fn unlock(dev: &mut I6300Esb<EventFdTrigger>) {
    w16(dev, RELOAD, 0x80);
    w16(dev, RELOAD, 0x86);
}

/// Both preloads to `ticks`, as Linux's driver and our WDAT do.
fn program(dev: &mut I6300Esb<EventFdTrigger>, ticks: u32) {
    unlock(dev);
    w32(dev, PRELOAD1, ticks);
    unlock(dev);
    w32(dev, PRELOAD2, ticks);
}

fn ping(dev: &mut I6300Esb<EventFdTrigger>) {
    unlock(dev);
    w16(dev, RELOAD, 0x100);
}

#[test]
fn ticks_follow_the_clock_scale() {
    // 1 kHz: 2^15 cycles of 33 MHz, 0.993 ms.
    assert_eq!(ticks_ns(0, 1000), 992_969_696);
    assert_eq!(ticks_ns(CONFIG_SCALE_1MHZ, 1000), 969_696);
    assert_eq!(
        ticks_ns(0, 0xfff_ffff),
        ticks_ns(0, PRELOAD_MASK),
        "20 bits"
    );
    assert_eq!(ticks_ns(0, 0), 0);
}

#[test]
fn enabled_and_left_alone_it_fires_after_both_stages() {
    let sim = Sim::with_wall(0);
    let (l, probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    let mut d = lock(&wdt);
    unlock(&mut d);
    w32(&mut d, PRELOAD1, 1000);
    unlock(&mut d);
    w32(&mut d, PRELOAD2, 500);
    d.config_write(ESB_LOCK_REG, &[LOCK_ENABLE]);
    assert_eq!(d.state().stage, 1);
    drop(d);
    let edges = sim.edges(5_000 * MS, &probe);
    assert_eq!(edges, vec![ticks_ns(0, 1000) + ticks_ns(0, 500)]);
    let mut d = lock(&wdt);
    assert_eq!(d.fired(), 1);
    assert!(d.state().stage1_expired, "GINTSR bit 0");
    let mut b = [0; 4];
    d.bar_read(GINTSR, &mut b);
    assert_eq!(u32::from_le_bytes(b), 1);
    d.bar_write(GINTSR, &[1]);
    d.bar_read(GINTSR, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0, "write one to clear");
    d.bar_read(RELOAD, &mut b[..2]);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x200, "timeout flag");
    assert_eq!(d.state().deadline_ns, None, "stopped after firing");
}

#[test]
fn reloading_with_the_unlock_sequence_holds_it_off() {
    let sim = Sim::with_wall(0);
    let (l, probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    program(&mut lock(&wdt), 1000); // about 2 s over both stages
    lock(&wdt).config_write(ESB_LOCK_REG, &[LOCK_ENABLE]);
    for _ in 0..10 {
        sim.run_for(900 * MS, |_| {});
        ping(&mut lock(&wdt));
    }
    assert_eq!(fired(&probe), 0);
    assert_eq!(lock(&wdt).state().stage, 1);
    // A reload without the sequence is dropped: it fires on time.
    w16(&mut lock(&wdt), RELOAD, 0x100);
    assert_eq!(sim.edges(5_000 * MS, &probe).len(), 1);
}

#[test]
fn preloads_need_the_unlock_sequence_each_time() {
    let sim = Sim::with_wall(0);
    let (l, _probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    let mut d = lock(&wdt);
    w32(&mut d, PRELOAD1, 7);
    assert_eq!(d.state().preload, [0, 0], "locked");
    unlock(&mut d);
    w32(&mut d, PRELOAD1, 0xfff_ffff);
    w32(&mut d, PRELOAD2, 9);
    assert_eq!(d.state().preload, [PRELOAD_MASK, 0], "one write per unlock");
    // 0x86 alone does not unlock; 0x80 0x80 0x86 does.
    w16(&mut d, RELOAD, 0x86);
    w32(&mut d, PRELOAD2, 9);
    assert_eq!(d.state().preload[1], 0);
    w16(&mut d, RELOAD, 0x80);
    w16(&mut d, RELOAD, 0x80);
    w16(&mut d, RELOAD, 0x86);
    w32(&mut d, PRELOAD2, 9);
    assert_eq!(d.state().preload[1], 9);
    let mut b = [0; 4];
    d.bar_read(PRELOAD2, &mut b);
    assert_eq!(u32::from_le_bytes(b), 9);
}

#[test]
fn disabling_stops_it_and_lock_freezes_the_register() {
    let sim = Sim::with_wall(0);
    let (l, probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    program(&mut lock(&wdt), 100);
    lock(&wdt).config_write(ESB_LOCK_REG, &[LOCK_ENABLE]);
    sim.run_for(50 * MS, |_| {});
    lock(&wdt).config_write(ESB_LOCK_REG, &[0]);
    assert!(sim.edges(1_000 * MS, &probe).is_empty(), "disabled");
    // Enabled and locked: the guest cannot stop it any more.
    lock(&wdt).config_write(ESB_LOCK_REG, &[LOCK_ENABLE | LOCK_LOCKED]);
    lock(&wdt).config_write(ESB_LOCK_REG, &[0]);
    let mut b = [0];
    assert!(lock(&wdt).config_read(ESB_LOCK_REG, &mut b));
    assert_eq!(b[0], LOCK_ENABLE | LOCK_LOCKED);
    assert_eq!(sim.edges(1_000 * MS, &probe).len(), 1);
    // A reset unlocks.
    Device::reset(&mut *lock(&wdt));
    assert_eq!(lock(&wdt).state().lock, 0);
    assert!(lock(&wdt).state().timed_out, "the flag survives a reset");
}

#[test]
fn output_disable_and_the_1_mhz_scale() {
    let sim = Sim::with_wall(0);
    let (l, probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    lock(&wdt).config_write(ESB_CONFIG_REG, &(CONFIG_OUTPUT_DISABLE | 3).to_le_bytes());
    program(&mut lock(&wdt), 10);
    lock(&wdt).config_write(ESB_LOCK_REG, &[LOCK_ENABLE]);
    assert!(sim.edges(1_000 * MS, &probe).is_empty());
    assert!(lock(&wdt).state().timed_out);
    let mut b = [0; 2];
    assert!(lock(&wdt).config_read(ESB_CONFIG_REG, &mut b));
    assert_eq!(u16::from_le_bytes(b), CONFIG_OUTPUT_DISABLE | 3);
    // Unknown bits do not stick.
    lock(&wdt).config_write(ESB_CONFIG_REG, &[0xff, 0xff]);
    assert_eq!(lock(&wdt).state().config, CONFIG_BITS);
    lock(&wdt).config_write(ESB_CONFIG_REG, &CONFIG_SCALE_1MHZ.to_le_bytes());
    program(&mut lock(&wdt), 1000);
    ping(&mut lock(&wdt));
    assert_eq!(
        sim.edges(1_000 * MS, &probe).len(),
        1,
        "enabled still: a reload restarted it, at the 1 MHz scale"
    );
}

#[test]
fn the_window_and_the_pci_function_reach_the_same_chip() {
    let sim = Sim::with_wall(0);
    let (l, probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    let mut pci = I6300EsbPci::new(Arc::clone(&wdt));
    let mut id = [0; 4];
    pci.config_read(0, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x25ab_8086);
    pci.config_read(8, &mut id);
    assert_eq!(u32::from_le_bytes(id) >> 8, 0x08_8000, "class");
    assert_eq!(pci.config().bars()[0].map(|b| b.size), Some(16));
    // The WDAT's sequences, through the window.
    let base = MmioAddress(0);
    let mut d = lock(&wdt);
    for (off, v) in [(RELOAD, 0x80u32), (RELOAD, 0x86), (PRELOAD1, 20)] {
        d.mmio_write(base, off, &v.to_le_bytes());
    }
    for (off, v) in [(RELOAD, 0x80u32), (RELOAD, 0x86), (PRELOAD2, 20)] {
        d.mmio_write(base, off, &v.to_le_bytes());
    }
    d.mmio_write(base, WINDOW_LOCK, &[LOCK_ENABLE]);
    let mut b = [0];
    d.mmio_read(base, WINDOW_LOCK, &mut b);
    assert_eq!(b[0], LOCK_ENABLE);
    drop(d);
    pci.config_read(ESB_LOCK_REG, &mut b);
    assert_eq!(b[0], LOCK_ENABLE, "the same register in config space");
    pci.bar_read(0, PRELOAD2, &mut id);
    assert_eq!(u32::from_le_bytes(id), 20);
    assert_eq!(sim.edges(100 * MS, &probe).len(), 1);
    // A function reset stops it and clears the registers.
    PciDevice::reset(&mut pci);
    assert_eq!(lock(&wdt).state().preload, [0, 0]);
}

#[test]
fn state_saves_and_restores_and_junk_is_refused() {
    let sim = Sim::with_wall(0);
    let (l, _probe) = line();
    let wdt = I6300Esb::new(&sim.clocks, l);
    program(&mut lock(&wdt), 2000);
    lock(&wdt).config_write(ESB_LOCK_REG, &[LOCK_ENABLE]);
    let saved = lock(&wdt).save().unwrap();
    let (l2, probe2) = line();
    let wdt2 = I6300Esb::new(&sim.clocks, l2);
    lock(&wdt2).load(&saved).unwrap();
    assert_eq!(lock(&wdt2).state(), lock(&wdt).state());
    assert_eq!(
        sim.edges(5_000 * MS, &probe2).len(),
        1,
        "the timer came back"
    );
    let bad = EsbState {
        preload: [1 << 20, 0],
        ..EsbState::default()
    };
    assert!(Stateful::restore(&mut *lock(&wdt2), bad).is_err());
    let bad = EsbState {
        deadline_ns: Some(5),
        stage: 0,
        ..EsbState::default()
    };
    assert!(Stateful::restore(&mut *lock(&wdt2), bad).is_err());
}

#[test]
fn mini_fuzz_of_every_door() {
    for seed in [1, 0x9E37_79B9_7F4A_7C15, 0xDEAD_BEEF] {
        let sim = Sim::with_wall(0);
        let (l, probe) = line();
        let wdt = I6300Esb::new(&sim.clocks, l);
        let mut pci = I6300EsbPci::new(Arc::clone(&wdt));
        let mut rng = XorShift::new(seed);
        let mut edges = 0;
        for i in 0..20_000u64 {
            let size = usize::try_from(rng.below(9)).unwrap();
            let mut data = [0u8; 8];
            for b in &mut data[..size] {
                *b = rng.byte();
            }
            let off = rng.below(0x40);
            match rng.below(6) {
                0 => pci.config_write(0x58 + usize::try_from(off).unwrap(), &data[..size]),
                1 => pci.config_read(0x58 + usize::try_from(off).unwrap(), &mut data[..size]),
                2 => pci.bar_write(0, off, &data[..size]),
                3 => pci.bar_read(0, off, &mut data[..size]),
                4 => lock(&wdt).mmio_write(MmioAddress(0), off, &data[..size]),
                _ => lock(&wdt).mmio_read(MmioAddress(0), off, &mut data[..size]),
            }
            if i % 64 == 0 {
                sim.run_for(rng.below(50) as i64 * MS, |_| edges += fired(&probe));
            }
            let s = lock(&wdt).state();
            assert!(s.preload.iter().all(|p| p & !PRELOAD_MASK == 0));
            assert!(s.unlock <= 2 && s.stage <= 2);
        }
        assert_eq!(edges, lock(&wdt).fired());
    }
}
