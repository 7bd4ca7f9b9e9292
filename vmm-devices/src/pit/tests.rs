//! The PIT's unit tests, on fake time (Sim).

use super::*;
use crate::irq::EventFdTrigger;
use crate::test_util::{fired, line, Sim};

const MS: i64 = 1_000_000;
const US: i64 = 1_000;

struct Bench {
    sim: Sim,
    pit: Arc<Mutex<Pit<EventFdTrigger>>>,
    probe: EventFdTrigger,
}

impl Bench {
    fn new() -> Self {
        let sim = Sim::with_wall(0);
        let (irq, probe) = line();
        let pit = Pit::new(&sim.clocks, irq);
        Self { sim, pit, probe }
    }

    fn out(&self, port: u16, value: u8) {
        lock(&self.pit).write(port - 0x40, value);
    }

    fn inp(&self, port: u16) -> u8 {
        lock(&self.pit).read(port - 0x40)
    }

    fn edges(&self, ns: i64) -> Vec<i64> {
        self.sim.edges(ns, &self.probe)
    }

    fn wait(&self, ns: i64) {
        self.sim.run_for(ns, |_| {});
    }

    fn ch(&self, ch: usize) -> PitChannelState {
        lock(&self.pit).state().channels[ch]
    }
}

/// Nanoseconds of `ticks` input ticks, rounded down.
fn ticks_ns(ticks: u64) -> i64 {
    i64::try_from(u128::from(ticks) * NS_PER_SEC / u128::from(PIT_FREQ_HZ)).unwrap()
}

fn assert_spacing(edges: &[i64], period: i64) {
    for pair in edges.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((gap - period).abs() <= 1, "gap {gap} ns, expected {period}");
    }
}

#[test]
fn vector_1_mode_2_at_hz_100() {
    let b = Bench::new();
    b.wait(MS); // let the reset schedule settle
    let t0 = b.sim.now();
    b.out(0x43, 0x34);
    b.out(0x40, 0x9C);
    b.out(0x40, 0x2E);
    assert_eq!(b.ch(0).count, 11_932);
    let edges = b.edges(55 * MS);
    assert_eq!(edges.len(), 5);
    assert_eq!(edges[0], t0 + ticks_ns(11_932));
    assert_spacing(&edges, 10_000_151);
    // At t0 + 5 ms: latch, then LSB and MSB of 5967.
    let b = Bench::new();
    let t0 = b.sim.now();
    b.out(0x43, 0x34);
    b.out(0x40, 0x9C);
    b.out(0x40, 0x2E);
    b.wait(5 * MS);
    assert_eq!(b.sim.now(), t0 + 5 * MS);
    b.out(0x43, 0x00);
    assert_eq!(b.inp(0x40), 0x4F);
    assert_eq!(b.inp(0x40), 0x17);
}

#[test]
fn vector_2_mode_3_decrements_by_two_one_edge_per_period() {
    let b = Bench::new();
    b.out(0x43, 0x36);
    b.out(0x40, 0x9C);
    b.out(0x40, 0x2E);
    b.wait(5 * MS);
    b.out(0x43, 0x00);
    assert_eq!(u16::from_le_bytes([b.inp(0x40), b.inp(0x40)]), 2);
    let edges = b.edges(100 * MS);
    assert_eq!(edges.len(), 10);
    assert_spacing(&edges, 10_000_151);
    // OUT high for the first 5966 ticks of each period.
    let ch = b.ch(0);
    let start = ch.load_time_ns;
    assert!(ch.out_at(start + ticks_ns(5965)));
    assert!(!ch.out_at(start + ticks_ns(5967)));
}

#[test]
fn vector_3_after_reset_18_2_hz_and_lsb_reads() {
    let b = Bench::new();
    assert_eq!(b.inp(0x40), 0x00);
    b.wait(ticks_ns(1) + 1);
    assert_eq!(b.inp(0x40), 0xFE, "mode 3 counts down by two");
    let edges = b.edges(300 * MS);
    assert_eq!(edges.len(), 5);
    assert_spacing(&edges, 54_925_401);
}

#[test]
fn vector_4_hz_1000() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0xA9);
    b.out(0x40, 0x04);
    let edges = b.edges(10 * MS);
    assert_eq!(edges.len(), 10);
    assert_spacing(&edges, 999_847);
}

#[test]
fn vector_5_a_latch_holds_until_read_and_a_second_is_ignored() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0x00);
    b.out(0x40, 0x00);
    b.wait(MS);
    b.out(0x43, 0x00);
    let t1 = lock(&b.pit).count(0).unwrap();
    b.wait(MS);
    b.out(0x43, 0x00);
    let first = u16::from_le_bytes([b.inp(0x40), b.inp(0x40)]);
    assert_eq!(first, t1);
    b.out(0x43, 0x00);
    let now = lock(&b.pit).count(0).unwrap();
    b.wait(MS);
    let second = u16::from_le_bytes([b.inp(0x40), b.inp(0x40)]);
    assert_eq!(second, now);
    assert_ne!(first, second);
}

#[test]
fn vector_6_read_back_status_then_count() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0x9C);
    b.out(0x40, 0x2E);
    b.wait(5 * MS);
    b.out(0x43, 0xE2);
    assert_eq!(b.inp(0x40), 0xB4, "datasheet OUT (high) | word | mode 2");
    // Status only: the next read is the live count again.
    assert_eq!(b.inp(0x40), 0x4F);
    b.inp(0x40);
    b.out(0x43, 0xC2);
    assert_eq!(b.inp(0x40), 0xB4);
    assert_eq!(b.inp(0x40), 0x4F);
    assert_eq!(b.inp(0x40), 0x17);
}

#[test]
fn vector_7_lsb_only_mode_0_one_edge() {
    let b = Bench::new();
    b.out(0x43, 0x10);
    let t0 = b.sim.now();
    b.out(0x40, 0x64);
    let edges = b.edges(10 * MS);
    assert_eq!(edges, vec![t0 + ticks_ns(100)]);
    assert!((ticks_ns(100) - 83_809).abs() < 10);
    // LSB-only reads.
    let b = Bench::new();
    b.out(0x43, 0x10);
    b.out(0x40, 0x64);
    b.wait(ticks_ns(10) + 1);
    assert_eq!(b.inp(0x40), 90);
    assert_eq!(b.inp(0x40), 90);
}

#[test]
fn vector_8_msb_only() {
    let b = Bench::new();
    b.out(0x43, 0x20);
    b.out(0x40, 0x01);
    assert_eq!(b.ch(0).count, 256);
    assert_eq!(b.inp(0x40), 0x01, "MSB reads");
}

fn gate_on(p61: &mut crate::Port61<PitPort61<EventFdTrigger>>) {
    let v = p61.read();
    p61.write((v & !2) | 1);
}

#[test]
fn vector_9_channel_2_through_port_61() {
    let b = Bench::new();
    let mut p61 = crate::Port61::with_pit(PitPort61(b.pit.clone()));
    gate_on(&mut p61);
    b.out(0x43, 0xB0);
    b.out(0x42, 0x9B);
    b.out(0x42, 0x2E);
    let t0 = b.sim.now();
    let mut rise = None;
    for step in 0..2000 {
        b.wait(10 * US);
        let high = p61.read() & 0x20 != 0;
        if high && rise.is_none() {
            rise = Some(b.sim.now() - t0);
        }
        if rise.is_some() {
            assert!(high, "stays high (step {step})");
        }
    }
    let rise = rise.expect("OUT2 rose");
    assert!((9_990 * US..=10_010 * US).contains(&rise), "{rise}");
    assert_eq!(fired(&b.probe), 0, "channel 2 raises no IRQ");
}

#[test]
fn vector_10_quick_calibration_msb_steps() {
    let b = Bench::new();
    b.out(0x43, 0xB0);
    b.out(0x42, 0xFF);
    b.out(0x42, 0xFF);
    let mut last = 0xFF;
    let mut steps = Vec::new();
    let t0 = b.sim.now();
    for _ in 0..5000 {
        b.wait(US);
        b.inp(0x42);
        let msb = b.inp(0x42);
        if msb != last {
            assert_eq!(msb, last - 1);
            steps.push(b.sim.now() - t0);
            last = msb;
        }
    }
    assert!(steps.len() >= 20);
    for pair in steps.windows(2) {
        assert!((pair[1] - pair[0] - 214_550).abs() <= 1_000);
    }
}

#[test]
fn vector_11_gate_edge_restarts_mode_2_on_channel_2() {
    let b = Bench::new();
    b.out(0x43, 0xB4);
    b.out(0x42, 0x00);
    b.out(0x42, 0x10); // N = 4096
    b.wait(MS);
    lock(&b.pit).set_gate(2, true);
    let t = b.sim.now();
    assert_eq!(b.ch(2).load_time_ns, t);
    let ch = b.ch(2);
    assert!(!ch.out_at(t + ticks_ns(4095) + 1), "the low tick before N");
    assert!(ch.out_at(t + ticks_ns(4096) + 1));
}

#[test]
fn vector_12_control_word_alone_keeps_the_schedule() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0x9C);
    b.out(0x40, 0x2E);
    let t0 = b.sim.now();
    b.wait(3 * MS);
    b.out(0x43, 0x34);
    let edges = b.edges(25 * MS);
    assert_eq!(edges[0], t0 + ticks_ns(11_932));
    assert_eq!(edges.len(), 2);
}

#[test]
fn vector_13_mode_4_one_shot() {
    let b = Bench::new();
    b.wait(60 * MS);
    b.out(0x43, 0x38);
    let t0 = b.sim.now();
    b.out(0x40, 0xE8);
    b.out(0x40, 0x03);
    let edges = b.edges(100 * MS);
    assert_eq!(edges, vec![t0 + ticks_ns(1000)]);
}

#[test]
fn vector_14_shutdown_gives_one_late_edge() {
    let b = Bench::new();
    b.wait(MS);
    b.out(0x43, 0x30);
    let t0 = b.sim.now();
    b.out(0x40, 0x00);
    b.out(0x40, 0x00);
    let edges = b.edges(500 * MS);
    assert_eq!(edges, vec![t0 + ticks_ns(65_536)]);
}

#[test]
fn half_written_word_count_keeps_the_old_count() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0x9C);
    b.out(0x40, 0x2E);
    let load = b.ch(0).load_time_ns;
    b.wait(MS);
    b.out(0x40, 0x55); // LSB only, MSB never comes
    assert_eq!(b.ch(0).count, 11_932);
    assert_eq!(b.ch(0).load_time_ns, load);
    assert_eq!(b.edges(30 * MS).len(), 3);
    // The MSB that finally comes completes the pending word.
    b.out(0x40, 0x01);
    assert_eq!(b.ch(0).count, 0x0155);
}

#[test]
fn read_back_of_all_channels() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x43, 0x70 | 0x04); // ch1 word mode 2
    b.out(0x43, 0xB0);
    b.out(0x43, 0xC0 | 0x0E); // count and status of 0, 1, 2
    assert_eq!(b.inp(0x40), 0xB4);
    assert_eq!(b.inp(0x41), 0xB4);
    assert_eq!(b.inp(0x42), 0x30, "mode 0 OUT low after reset's count");
    for port in 0x40..=0x42 {
        // count after the status: LSB then MSB of 65536 - d
        b.inp(port);
        b.inp(port);
    }
    // Nothing latched any more: a status-only read-back of none is a no-op.
    b.out(0x43, 0xE0);
    assert!(!b.ch(0).status_latched);
}

#[test]
fn mode_change_mid_count_takes_effect_at_the_next_load() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0xA9);
    b.out(0x40, 0x04);
    b.wait(500 * US);
    b.out(0x43, 0x30); // mode 0, no count yet
                       // The timer still fires on the old schedule, then judges by mode 0:
                       // d is past N, so no more edges.
    let edges = b.edges(10 * MS);
    assert_eq!(edges.len(), 1);
    b.out(0x40, 0xA9);
    b.out(0x40, 0x04);
    assert_eq!(b.edges(10 * MS).len(), 1, "mode 0: one edge");
}

#[test]
fn tiny_periodic_counts_are_held_to_the_minimum_interval() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0x02);
    b.out(0x40, 0x00); // N = 2: 596 kHz asked
    let edges = b.edges(10 * MS);
    assert!(edges.len() <= 50, "{} edges in 10 ms", edges.len());
    assert!(edges.len() >= 45);
    // Mode 2 with N = 1 (illegal) does not spin either.
    b.out(0x40, 0x01);
    b.out(0x40, 0x00);
    assert!(b.edges(10 * MS).len() <= 50);
}

#[test]
fn paused_vm_freezes_counts_and_edges() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0xA9);
    b.out(0x40, 0x04);
    b.wait(300 * US);
    b.sim.clocks.vm_stop();
    let frozen = lock(&b.pit).count(0);
    let edges = b.edges(50 * MS);
    assert!(edges.is_empty());
    assert_eq!(lock(&b.pit).count(0), frozen);
    b.sim.clocks.vm_start();
    let edges = b.edges(10 * MS);
    assert_eq!(edges.len(), 10);
    // The first edge came N ticks of *guest* time after the load.
    assert_eq!(edges[0], 50 * MS + ticks_ns(1193));
}

#[test]
fn state_round_trips_and_reset_restores_defaults() {
    let b = Bench::new();
    b.out(0x43, 0x34);
    b.out(0x40, 0xA9);
    b.out(0x40, 0x04);
    b.out(0x43, 0x00);
    let saved = lock(&b.pit).state();
    let (irq, probe) = line();
    let other = Pit::new(&b.sim.clocks, irq);
    lock(&other).restore(&saved);
    assert_eq!(lock(&other).state(), saved);
    assert_eq!(b.sim.edges(5 * MS, &probe).len(), 5);
    lock(&other).reset();
    let st = lock(&other).state();
    assert_eq!(st.channels[0].mode, 3);
    assert_eq!(st.channels[0].count, 0x1_0000);
    assert!(!st.channels[2].gate);
}

#[test]
fn bus_adapter_refuses_wide_accesses() {
    let b = Bench::new();
    let mut pit = lock(&b.pit);
    let mut data = [0u8; 2];
    pit.pio_read(PioAddress(0x40), 0, &mut data);
    assert_eq!(data, [0xFF, 0xFF]);
    pit.pio_write(PioAddress(0x40), 3, &[0x34, 0]);
    assert_eq!(pit.invalid_accesses(), 2);
    assert_eq!(pit.state().channels[0].mode, 3, "refused write ignored");
    let mut byte = [0u8];
    pit.pio_read(PioAddress(0x40), 3, &mut byte);
    assert_eq!(byte, [0], "control port reads 0");
}
