//! The RTC's unit tests, on fake time (Sim).

use super::date::civil_from_days;
use super::*;
use crate::irq::EventFdTrigger;
use crate::test_util::{fired, line, Sim};

const MS: i64 = 1_000_000;
const SEC: i64 = NS_PER_SEC;

/// 2026-11-22 01:23:45.250 UTC, a Sunday.
fn start_ns() -> i64 {
    (days_from_civil(2026, 11, 22) * SECONDS_PER_DAY + 3600 + 23 * 60 + 45) * SEC + 250 * MS
}

struct Bench {
    sim: Sim,
    rtc: Arc<Mutex<Rtc<EventFdTrigger>>>,
    probe: EventFdTrigger,
}

impl Bench {
    fn new() -> Self {
        Self::at(start_ns())
    }

    fn at(wall: i64) -> Self {
        let sim = Sim::with_wall(wall);
        let (irq, probe) = line();
        let rtc = Rtc::new(&sim.clocks, irq);
        Self { sim, rtc, probe }
    }

    fn get(&self, r: u8) -> u8 {
        let mut rtc = lock(&self.rtc);
        rtc.write(0, r);
        rtc.read(1)
    }

    fn set(&self, r: u8, v: u8) {
        let mut rtc = lock(&self.rtc);
        rtc.write(0, r);
        rtc.write(1, v);
    }

    fn wait(&self, ns: i64) {
        self.sim.run_for(ns, |_| {});
    }

    fn guest_hour(&self) -> i64 {
        let host = self.sim.clocks.now(ClockType::Host);
        lock(&self.rtc).guest_time_ns(host).div_euclid(SEC) % 86_400 / 3600
    }

    /// Edge instants over `ns`, reading C after each as a driver does;
    /// also returns what C read.
    fn serviced_edges(&self, ns: i64) -> (Vec<i64>, Vec<u8>) {
        let mut edges = Vec::new();
        let mut flags = Vec::new();
        fired(&self.probe);
        self.sim.run_for(ns, |now| {
            if fired(&self.probe) > 0 {
                edges.push(now);
                flags.push(self.get(reg::C));
            }
        });
        (edges, flags)
    }

    fn time(&self) -> [u8; 8] {
        [
            reg::SECONDS,
            reg::MINUTES,
            reg::HOURS,
            reg::DAY_OF_WEEK,
            reg::DAY_OF_MONTH,
            reg::MONTH,
            reg::YEAR,
            reg::CENTURY,
        ]
        .map(|r| self.get(r))
    }
}

fn assert_spacing(edges: &[i64], period: i64) {
    assert!(edges.len() >= 2);
    for pair in edges.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((gap - period).abs() <= 1, "gap {gap} ns, expected {period}");
    }
}

#[test]
fn starts_at_the_host_date_in_bcd() {
    let b = Bench::new();
    assert_eq!(b.time(), [0x45, 0x23, 0x01, 0x01, 0x22, 0x11, 0x26, 0x20]);
}

#[test]
fn vector_1_registers_after_reset() {
    let b = Bench::new();
    assert_eq!(b.get(reg::A), 0x26);
    assert_eq!(b.get(reg::B), 0x02);
    assert_eq!(b.get(reg::D), 0x80);
    assert_eq!(b.get(reg::C), 0x00);
    // UIP in the last 244 µs of a second.
    b.wait(750 * MS - 200_000);
    assert_eq!(b.get(reg::A), 0xA6);
    b.wait(250_000);
    assert_eq!(b.get(reg::A), 0x26);
}

#[test]
fn vector_2_nmi_bit_ignored_and_index_port_reads_ff() {
    let b = Bench::new();
    let mut rtc = lock(&b.rtc);
    rtc.write(0, 0x8B);
    assert_eq!(rtc.read(1), 0x02);
    assert_eq!(rtc.read(0), 0xFF);
    rtc.write(0, 0xB7); // 0x37 | NMI: the century
    assert_eq!(rtc.read(1), 0x20);
}

fn set_1999_end(b: &Bench) {
    b.set(reg::B, 0x82);
    for (r, v) in [
        (reg::SECONDS, 0x45),
        (reg::MINUTES, 0x59),
        (reg::HOURS, 0x23),
        (reg::DAY_OF_MONTH, 0x31),
        (reg::MONTH, 0x12),
        (reg::YEAR, 0x99),
        (reg::CENTURY, 0x19),
    ] {
        b.set(r, v);
    }
    b.set(reg::B, 0x02);
}

#[test]
fn vector_3_set_a_bcd_time_and_roll_into_2000() {
    let b = Bench::new();
    set_1999_end(&b);
    b.wait(15 * SEC);
    // 2000-01-01 was a Saturday (7).
    assert_eq!(b.time(), [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]);
    // The guest's time is now an offset from the host's.
    let offset = lock(&b.rtc).offset_secs();
    let expect =
        days_from_civil(1999, 12, 31) * SECONDS_PER_DAY + 86_385 - start_ns().div_euclid(SEC);
    assert!((offset - expect).abs() <= 1, "{offset} vs {expect}");
}

#[test]
fn vector_4_twelve_hour_format() {
    let b = Bench::new();
    b.set(reg::B, 0x80);
    b.set(reg::HOURS, 0x81);
    b.set(reg::B, 0x00);
    assert_eq!(b.get(reg::HOURS), 0x81);
    // 00:xx reads 12 AM, 12:xx reads 12 PM.
    b.set(reg::B, 0x80);
    b.set(reg::HOURS, 0x12);
    b.set(reg::B, 0x00);
    assert_eq!(b.get(reg::HOURS), 0x12);
    assert_eq!(b.guest_hour(), 0);
    b.set(reg::B, 0x80);
    b.set(reg::HOURS, 0x92);
    b.set(reg::B, 0x00);
    assert_eq!(b.get(reg::HOURS), 0x92);
    assert_eq!(b.guest_hour(), 12);
}

#[test]
fn vector_5_binary_format() {
    let b = Bench::new();
    b.set(reg::B, 0x86);
    b.set(reg::SECONDS, 45);
    b.set(reg::MINUTES, 59);
    b.set(reg::HOURS, 23);
    b.set(reg::B, 0x06);
    assert_eq!(b.get(reg::SECONDS), 0x2D);
    assert_eq!(b.get(reg::MINUTES), 0x3B);
    assert_eq!(b.get(reg::HOURS), 0x17);
    // Changing DM alone converts nothing stored; the next read
    // rewrites in the new format.
    b.set(reg::B, 0x02);
    assert_eq!(b.get(reg::HOURS), 0x23);
}

#[test]
fn vector_6_periodic_rates() {
    for (a, period) in [
        (0x26, 976_563),
        (0x2F, 500 * MS),
        (0x23, 122_070),
        (0x21, 3_906_250),
        (0x2A, 15_625_000),
    ] {
        let b = Bench::new();
        b.set(reg::A, a);
        b.set(reg::B, 0x42);
        let (edges, flags) = b.serviced_edges(SEC + 1);
        let expected = SEC / period;
        assert!(
            (expected - 1..=expected + 1).contains(&(edges.len() as i64)),
            "A={a:#x}: {} edges",
            edges.len()
        );
        for pair in edges.windows(2) {
            assert!((pair[1] - pair[0] - period).abs() <= 1, "A={a:#x}");
        }
        // UF joins PF once a second.
        assert!(
            flags.iter().all(|&c| c & !C_UF == 0xC0),
            "A={a:#x}: {flags:x?}"
        );
    }
}

#[test]
fn unserviced_periodic_gives_one_edge_until_c_is_read() {
    let b = Bench::new();
    b.set(reg::B, 0x42);
    fired(&b.probe);
    b.wait(100 * MS);
    assert_eq!(fired(&b.probe), 1);
    assert_eq!(b.get(reg::C), 0xC0);
    b.wait(2 * MS);
    assert_eq!(fired(&b.probe), 1);
}

#[test]
fn vector_7_update_ended_once_a_second_at_the_boundary() {
    let b = Bench::new();
    b.set(reg::B, 0x12);
    let (edges, flags) = b.serviced_edges(5 * SEC);
    assert_eq!(edges.len(), 5);
    assert_eq!(edges[0], 750 * MS, "at the next second of the guest");
    assert_spacing(&edges, SEC);
    assert!(flags.iter().all(|&c| c == 0x90));
    assert_eq!(b.get(reg::C), 0x00);
}

#[test]
fn vector_8_alarms() {
    let b = Bench::new();
    for r in [reg::SECONDS_ALARM, reg::MINUTES_ALARM, reg::HOURS_ALARM] {
        b.set(r, 0xC0);
    }
    b.set(reg::B, 0x22);
    let (edges, flags) = b.serviced_edges(3 * SEC);
    assert_eq!(edges.len(), 3);
    assert!(flags.iter().all(|&c| c == 0xB0), "{flags:x?}");
    // In 5 s: 01:23:50.
    let b = Bench::new();
    b.set(reg::SECONDS_ALARM, 0x50);
    b.set(reg::MINUTES_ALARM, 0xC0);
    b.set(reg::HOURS_ALARM, 0xC0);
    b.set(reg::B, 0x22);
    let (edges, flags) = b.serviced_edges(10 * SEC);
    assert_eq!(edges, vec![4 * SEC + 750 * MS]);
    assert_eq!(flags[0] & 0xA0, 0xA0);
    // A full alarm: 01:24:00.
    let b = Bench::new();
    b.set(reg::SECONDS_ALARM, 0x00);
    b.set(reg::MINUTES_ALARM, 0x24);
    b.set(reg::HOURS_ALARM, 0x01);
    b.set(reg::B, 0x22);
    let (edges, _) = b.serviced_edges(70 * SEC);
    assert_eq!(edges, vec![14 * SEC + 750 * MS]);
}

#[test]
fn the_alarm_calls_the_wake_listener_only_with_aie_even_with_irqf_pending() {
    let b = Bench::new();
    let count = Arc::new(Mutex::new(0u32));
    let c = count.clone();
    lock(&b.rtc).set_alarm_listener(Box::new(move || *c.lock().unwrap() += 1));
    // In 5 s: 01:23:50, but AIE off: no wake.
    b.set(reg::SECONDS_ALARM, 0x50);
    b.set(reg::MINUTES_ALARM, 0xC0);
    b.set(reg::HOURS_ALARM, 0xC0);
    b.wait(10 * SEC);
    assert_eq!(*count.lock().unwrap(), 0);
    // Every second with AIE, and C never read (IRQF stays pending, as in a
    // suspended guest): one wake per match all the same.
    b.set(reg::SECONDS_ALARM, 0xC0);
    b.set(reg::B, 0x22);
    b.wait(3 * SEC);
    assert_eq!(*count.lock().unwrap(), 3);
    assert_eq!(fired(&b.probe), 1, "one edge until C is read");
}

#[test]
fn polled_flags_without_interrupts() {
    let b = Bench::new();
    b.set(reg::SECONDS_ALARM, 0x47);
    b.set(reg::MINUTES_ALARM, 0xC0);
    b.set(reg::HOURS_ALARM, 0xC0);
    b.wait(3 * SEC);
    assert_eq!(fired(&b.probe), 0);
    assert_eq!(b.get(reg::C), 0x30, "UF and AF, no IRQF");
    assert_eq!(b.get(reg::C), 0x00);
}

#[test]
fn vector_9_enable_edge() {
    let b = Bench::new();
    b.wait(SEC);
    fired(&b.probe);
    b.set(reg::B, 0x12);
    assert_eq!(fired(&b.probe), 1, "UF pending: IRQ8 at once");
    assert_eq!(lock(&b.rtc).state().cmos[usize::from(reg::C)] & 0x80, 0x80);
    b.set(reg::B, 0x02);
    assert_eq!(lock(&b.rtc).state().cmos[usize::from(reg::C)] & 0x80, 0);
    assert_eq!(b.get(reg::C), 0x10);
}

#[test]
fn vector_10_divider_reset() {
    let b = Bench::new();
    b.set(reg::B, 0x12);
    b.set(reg::A, 0x70);
    let frozen = b.time();
    let (edges, _) = b.serviced_edges(3 * SEC);
    assert!(edges.is_empty());
    assert_eq!(b.time(), frozen);
    let t = b.sim.now();
    b.set(reg::A, 0x26);
    let (edges, _) = b.serviced_edges(2 * SEC);
    assert_eq!(edges[0] - t, 500 * MS);
    // Frozen at 01:23:45, restarted at 01:23:45.5, 2 s ago.
    assert_eq!(b.get(reg::SECONDS), 0x47);
}

#[test]
fn vector_11_host_clock_runs_while_paused() {
    let b = Bench::new();
    b.sim.clocks.vm_stop();
    b.wait(10 * SEC);
    b.sim.clocks.vm_start();
    assert_eq!(b.get(reg::SECONDS), 0x55);
}

#[test]
fn vector_12_cmos_ram_and_read_only_registers() {
    let b = Bench::new();
    b.set(0x50, 0xAB);
    assert_eq!(b.get(0x50), 0xAB);
    b.set(reg::C, 0xFF);
    b.set(reg::D, 0x00);
    assert_eq!(b.get(reg::C), 0x00);
    assert_eq!(b.get(reg::D), 0x80);
    b.set(reg::A, 0xA6);
    assert_eq!(b.get(reg::A) & 0x7F, 0x26, "UIP is read-only");
}

#[test]
fn vector_13_memory_bytes() {
    let b = Bench::new();
    lock(&b.rtc).set_pc_config(1 << 30, 0, 2);
    let expect = [
        (0x15, 0x80),
        (0x16, 0x02),
        (0x17, 0xFF),
        (0x18, 0xFF),
        (0x30, 0xFF),
        (0x31, 0xFF),
        (0x34, 0x00),
        (0x35, 0x3F),
        (0x5B, 0),
        (0x5C, 0),
        (0x5D, 0),
        (0x5F, 0x01),
        (0x14, 0x06),
    ];
    for (r, v) in expect {
        assert_eq!(b.get(r), v, "CMOS {r:#x}");
    }
    let mut rtc = lock(&b.rtc);
    rtc.set_pc_config(3 << 30, 6 << 30, 300);
    let st = rtc.state();
    assert_eq!(&st.cmos[0x5B..=0x5D], &[0x00, 0x80, 0x01]);
    assert_eq!(st.cmos[0x5F], 0);
    rtc.set_pc_config(16 << 20, 0, 1);
    let st = rtc.state();
    assert_eq!(&st.cmos[0x17..=0x18], &[0x00, 0x3C]);
    assert_eq!(&st.cmos[0x34..=0x35], &[0, 0]);
}

#[test]
fn host_clock_jump_moves_the_time_and_rearms_the_timers() {
    let b = Bench::new();
    b.set(reg::B, 0x12);
    b.wait(SEC);
    b.get(reg::C);
    // The host steps back an hour.
    b.sim
        .time
        .set_wall(b.sim.clocks.now(ClockType::Host) - 3600 * SEC);
    assert_eq!(b.get(reg::HOURS), 0x00, "00:23:46");
    let (edges, _) = b.serviced_edges(3 * SEC);
    assert_eq!(edges.len(), 3, "updates keep coming after the jump");
}

#[test]
fn a_guest_set_time_survives_as_an_offset() {
    let b = Bench::new();
    b.set(reg::B, 0x82);
    b.set(reg::YEAR, 0x30);
    b.set(reg::B, 0x02);
    b.wait(SEC);
    assert_eq!(b.get(reg::YEAR), 0x30);
    let years = lock(&b.rtc).offset_secs() / (365 * 86_400);
    assert_eq!(years, 4);
    // Writing a field while running keeps the others current.
    b.wait(70 * SEC);
    b.set(reg::SECONDS, 0x00);
    assert_eq!(b.get(reg::MINUTES), 0x24);
}

#[test]
fn setting_the_time_calls_the_change_listener() {
    let b = Bench::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    lock(&b.rtc).set_change_listener(Box::new(move |offset| log.lock().unwrap().push(offset)));
    b.get(reg::SECONDS);
    assert!(seen.lock().unwrap().is_empty(), "reads change nothing");
    set_1999_end(&b);
    let offsets = seen.lock().unwrap().clone();
    assert_eq!(offsets.len(), 1, "one change, when SET clears");
    assert!(offsets[0] < -800_000_000, "{offsets:?}");
}

#[test]
fn reading_c_around_the_update() {
    let b = Bench::new();
    b.wait(750 * MS - 1);
    assert_eq!(b.get(reg::C), 0x00, "1 ns before the update");
    b.wait(1);
    assert_eq!(b.get(reg::C), 0x10, "at the update");
    assert_eq!(b.get(reg::C), 0x00);
}

#[test]
fn junk_in_time_registers_gives_some_time_and_no_panic() {
    let b = Bench::new();
    b.set(reg::B, 0x80);
    for r in [
        reg::SECONDS,
        reg::MINUTES,
        reg::HOURS,
        reg::MONTH,
        reg::DAY_OF_MONTH,
        reg::YEAR,
        reg::CENTURY,
    ] {
        b.set(r, 0xFF);
    }
    b.set(reg::B, 0x02);
    b.wait(2 * SEC);
    let _ = b.time();
    b.set(reg::B, 0x86);
    b.set(reg::CENTURY, 0xFF);
    b.set(reg::B, 0x06);
    let _ = b.time();
}

#[test]
fn reset_clears_interrupts_and_keeps_the_time() {
    let b = Bench::new();
    b.set(reg::B, 0x72);
    b.set(0x0F, 0x05);
    b.wait(SEC);
    let mut rtc = lock(&b.rtc);
    rtc.reset();
    let st = rtc.state();
    assert_eq!(st.cmos[usize::from(reg::B)], 0x12);
    assert_eq!(st.cmos[usize::from(reg::C)], 0);
    assert_eq!(st.cmos[0x0F], 0);
    drop(rtc);
    assert_eq!(b.time()[0], 0x46);
}

#[test]
fn state_round_trips() {
    let b = Bench::new();
    set_1999_end(&b);
    b.set(reg::B, 0x42);
    let saved = lock(&b.rtc).state();
    let (irq, probe) = line();
    let other = Rtc::new(&b.sim.clocks, irq);
    lock(&other).restore(&saved);
    assert_eq!(lock(&other).state(), saved);
    assert!(b.sim.edges(10 * MS, &probe).len() == 1);
}

/// A snapshot restored an hour later (another machine, its host clock an
/// hour on): the guest's wall clock reads the host's time again, not the
/// saved instant, and a time the guest set keeps its distance from the
/// host's (the state holds the offset, not the time).
#[test]
fn a_restore_later_keeps_the_wall_clock_right() {
    let hour = 3600 * SEC;
    let guest_now = |b: &Bench| {
        let host = b.sim.clocks.now(ClockType::Host);
        lock(&b.rtc).guest_time_ns(host)
    };
    // A guest that never set the clock: host time.
    let b = Bench::new();
    b.wait(10 * MS);
    let saved = lock(&b.rtc).state();
    let later = Bench::at(start_ns() + hour);
    lock(&later.rtc).restore(&saved);
    assert_eq!(guest_now(&later), start_ns() + hour);
    assert_eq!(later.guest_hour(), 2, "01:23 then, 02:23 an hour later");
    // A guest that set 1999: still the same distance from host time.
    let b = Bench::new();
    set_1999_end(&b);
    b.set(reg::B, 0x02);
    let offset = guest_now(&b) - start_ns();
    let saved = lock(&b.rtc).state();
    let later = Bench::at(start_ns() + hour);
    lock(&later.rtc).restore(&saved);
    assert_eq!(guest_now(&later) - (start_ns() + hour), offset);
}

#[test]
fn dates() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    assert_eq!(civil_from_days(days_from_civil(2100, 3, 1)), (2100, 3, 1));
    for d in (-800_000..800_000).step_by(997) {
        let (y, m, day) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, day), d);
    }
    assert_eq!(DateTime::from_unix(0).weekday, 4, "a Thursday");
    assert_eq!(DateTime::from_unix(-1).second, 59);
}

/// Issue 15: the guest sets 2199 and host time runs on until host time
/// plus the guest's offset passes `i64::MAX` ns. The saturated guest time
/// used to arm the update and periodic timers at exactly `now` from their
/// own callbacks, so the clock's run loop popped them forever; every
/// deadline must stay after `now`.
#[test]
fn a_guest_time_past_i64_max_never_arms_a_timer_at_now() {
    let b = Bench::new();
    b.set(reg::B, 0x82);
    for (r, v) in [
        (reg::SECONDS, 0x59),
        (reg::MINUTES, 0x59),
        (reg::HOURS, 0x23),
        (reg::DAY_OF_MONTH, 0x31),
        (reg::MONTH, 0x12),
        (reg::YEAR, 0x99),
        (reg::CENTURY, 0x21),
    ] {
        b.set(r, v);
    }
    // Update-ended and alarm interrupts, and the periodic one at 2 Hz.
    b.set(reg::A, 0x2F);
    b.set(reg::B, 0x72);
    let offset = lock(&b.rtc).state().offset_ns;
    // Host time passes, by time (both clocks) or by a wall-clock step.
    for step_wall in [false, true] {
        let host = b.sim.clocks.now(ClockType::Host);
        let past_the_end = i64::MAX - offset - host + 10 * SEC;
        if step_wall {
            b.sim.time.set_wall(host + past_the_end);
        } else {
            b.sim.time.advance(past_the_end);
        }
        let host = b.sim.clocks.now(ClockType::Host);
        assert_eq!(lock(&b.rtc).guest_time_ns(host), i64::MAX, "saturated");
        for pass in 0..5 {
            b.sim.clocks.run_all_timers();
            let now = b.sim.now();
            let due = b
                .sim
                .clocks
                .alarm_deadline()
                .expect("the timers stay armed");
            assert!(due > now, "pass {pass}: a deadline at {due}, now {now}");
            b.sim.time.advance(due - now);
            b.get(reg::C);
        }
    }
    // The registers read the end of the clock's range, 2262.
    assert_eq!(b.get(reg::CENTURY), 0x22);
    assert_eq!(b.get(reg::YEAR), 0x62);
}

/// Found by the `rtc` fuzz target: with the host's wall clock at the end of
/// its range (year 2262), "the next edge" is past what the clock can say;
/// a deadline saturated to the end is `now` itself, due pass after pass,
/// and the main loop never sleeps. Such timers are not armed at all.
#[test]
fn a_host_clock_at_the_end_of_time_arms_no_timer_at_now() {
    let b = Bench::new();
    // Update-ended and alarm interrupts, and the periodic one at 2 Hz.
    b.set(reg::A, 0x2F);
    b.set(reg::B, 0x72);
    b.sim.time.set_wall(i64::MAX - 1);
    for pass in 0..5 {
        b.sim.clocks.run_all_timers();
        let now = b.sim.now();
        if let Some(due) = b.sim.clocks.alarm_deadline() {
            assert!(due > now, "pass {pass}: a deadline at {due}, now {now}");
            b.sim.time.advance(due - now);
        }
        b.get(reg::C);
    }
}
