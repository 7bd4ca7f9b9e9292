//! The MC146818 real-time clock and CMOS RAM on ports 0x70/0x71, IRQ 8
//! (docs/devices.md §5).
//!
//! **Time base.** The guest's date follows the Host clock (the wall clock,
//! QEMU's default `rtc_clock = host`): guest time is host time plus an
//! offset, 0 at start (UTC). When the guest sets the time the offset changes;
//! when the host's wall clock jumps the guest's time jumps with it and the
//! RTC's timers are re-armed from the new time (vmm-clock's reset
//! listeners), as QEMU has done since 4.2. The time registers are computed
//! from that time when read; nothing ticks.
//!
//! **Interrupts.** Periodic (register A's rate, while PIE is set, as QEMU),
//! alarm (with 0xC0-0xFF "don't care" bytes) and update-ended (each second)
//! interrupts come from two Host-clock timers, armed only while an enable
//! bit needs them. UF and AF are also brought up to date lazily whenever
//! register C is read, so a guest that polls sees the same flags. IRQ 8 is
//! an edge per 0 → 1 change of IRQF; reading C clears the flags and IRQF,
//! which lets the next flag raise a new edge (the same interrupts QEMU's
//! level line gives an edge-triggered PIC/IO-APIC input).
//!
//! **Wake-up.** When the alarm matches while AIE is set, the alarm listener
//! ([`Rtc::set_alarm_listener`]) is called, whether or not IRQF was already
//! pending: the machine makes it a wake-up source from S3 (if the guest set
//! PM1_EN.RTC_EN), as a PC's RTC alarm wakes a suspended board.
//!
//! **Port 0x70.** Bit 7 of the index is the chipset's NMI mask: ignored, as
//! QEMU does; reading 0x70 returns 0xFF. Index 0x37 (the PS/2 century byte)
//! is 0x32.
//!
//! **Deviations, both QEMU's too:** PF is only set while PIE is (the
//! periodic timer does not run otherwise); UIP is reported during the last
//! 244 µs before each second without modelling the 2 ms update itself.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vmm_clock::{ClockType, Clocks, ResetListenerId, Timer};

use crate::irq::{fire, Trigger};
use crate::log_once::FaultLog;

mod date;

use date::{days_from_civil, DateTime};

/// Ports from the base (0x70): index and data.
pub const RTC_PORT_LEN: u16 = 2;
/// Bytes of CMOS, registers included.
pub const CMOS_SIZE: usize = 128;

/// Register indices.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Seconds alarm.
    pub const SECONDS_ALARM: u8 = 0x01;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Minutes alarm.
    pub const MINUTES_ALARM: u8 = 0x03;
    /// Hours (bit 7 = PM in 12-hour mode).
    pub const HOURS: u8 = 0x04;
    /// Hours alarm.
    pub const HOURS_ALARM: u8 = 0x05;
    /// Day of week, Sunday = 1.
    pub const DAY_OF_WEEK: u8 = 0x06;
    /// Day of month.
    pub const DAY_OF_MONTH: u8 = 0x07;
    /// Month.
    pub const MONTH: u8 = 0x08;
    /// Year within the century.
    pub const YEAR: u8 = 0x09;
    /// Register A: UIP, divider, rate select.
    pub const A: u8 = 0x0A;
    /// Register B: SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE.
    pub const B: u8 = 0x0B;
    /// Register C: IRQF, PF, AF, UF (read-only, cleared on read).
    pub const C: u8 = 0x0C;
    /// Register D: VRT (read-only).
    pub const D: u8 = 0x0D;
    /// Century (the ACPI FADT's `CENTURY` points here).
    pub const CENTURY: u8 = 0x32;
    /// The IBM PS/2 century location, an alias of [`CENTURY`].
    pub const IBM_CENTURY: u8 = 0x37;
}

const A_UIP: u8 = 0x80;
const A_DV: u8 = 0x70;
const A_RS: u8 = 0x0F;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_SQWE: u8 = 0x08;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// PF, AF, UF and their enables PIE, AIE, UIE share bit positions.
const INT_BITS: u8 = 0x70;
const D_VRT: u8 = 0x80;

/// Register A after reset: 32.768 kHz time base, 1024 Hz periodic rate.
pub const REG_A_DEFAULT: u8 = 0x26;
/// Register B after reset: BCD, 24-hour, no interrupts (what Linux needs).
pub const REG_B_DEFAULT: u8 = 0x02;

const NS_PER_SEC: i64 = 1_000_000_000;
/// UIP is set this long before each update (8 cycles of 32.768 kHz).
const UIP_WINDOW_NS: i64 = 244_141;
/// A day of seconds: more than enough to find an alarm match.
const SECONDS_PER_DAY: i64 = 86_400;
/// The years the registers may name (see [`Rtc::register_secs`]).
const MIN_YEAR: i64 = 1700;
const MAX_YEAR: i64 = 2199;
/// After leaving divider reset, the first update comes this much later.
const HALF_SECOND_NS: i64 = 500_000_000;

const NAME: &str = "mc146818";

/// The RTC's state, plain data: read it out with [`Rtc::state`] and put it
/// back with [`Rtc::restore`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcState {
    /// CMOS bytes; the time registers hold their last computed or written
    /// values.
    #[serde(with = "crate::stateful::cmos_bytes")]
    pub cmos: [u8; CMOS_SIZE],
    /// The selected register (bit 7 already dropped).
    pub index: u8,
    /// Guest time minus Host-clock time, ns, while the clock runs.
    pub offset_ns: i64,
    /// The last guest second whose update (UF, AF) has been processed.
    pub last_update_sec: i64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called with the new guest-minus-host offset, in seconds, each time the
/// guest sets the time (QMP's `RTC_CHANGE`). Runs on the vCPU thread, with
/// the RTC locked: it must be quick and must not touch the RTC.
pub type ChangeListener = Box<dyn FnMut(i64) + Send>;

struct Listener(Option<ChangeListener>);

/// Called each time the alarm matches while AIE is set (a wake-up source
/// for a suspended machine). Runs with the RTC locked, on a timer's thread
/// or a vCPU's: it must be quick and must not touch the RTC.
pub type AlarmListener = Box<dyn FnMut() + Send>;

struct AlarmHook(Option<AlarmListener>);

impl std::fmt::Debug for AlarmHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// The MC146818 on the Host clock, pulsing `T` for IRQ 8.
///
/// Made with [`Rtc::new`] inside an `Arc<Mutex<_>>`, which the port bus and
/// the timer callbacks (weakly) share.
#[derive(Debug)]
pub struct Rtc<T: Trigger> {
    state: RtcState,
    clocks: Clocks,
    irq: T,
    periodic: Option<Timer>,
    update: Option<Timer>,
    /// Armed "now" by the clock-reset listener, to re-arm the others.
    rearm: Option<Arc<Timer>>,
    listener: Option<ResetListenerId>,
    on_change: Listener,
    on_alarm: AlarmHook,
    irq_edges: u64,
    faults: FaultLog,
}

impl<T: Trigger + Send + 'static> Rtc<T> {
    /// An RTC set to the host's date (UTC), registers A-D at their reset
    /// values, the CMOS RAM zero.
    pub fn new(clocks: &Clocks, irq: T) -> Arc<Mutex<Self>> {
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(reg::A)] = REG_A_DEFAULT;
        cmos[usize::from(reg::B)] = REG_B_DEFAULT;
        cmos[usize::from(reg::D)] = D_VRT;
        let now = clocks.now(ClockType::Host);
        let rtc = Arc::new(Mutex::new(Self {
            state: RtcState {
                cmos,
                index: 0,
                offset_ns: 0,
                last_update_sec: now.div_euclid(NS_PER_SEC),
            },
            clocks: clocks.clone(),
            irq,
            periodic: None,
            update: None,
            rearm: None,
            listener: None,
            on_change: Listener(None),
            on_alarm: AlarmHook(None),
            irq_edges: 0,
            faults: FaultLog::default(),
        }));
        let timer = |f: fn(&mut Self)| {
            let weak: Weak<Mutex<Self>> = Arc::downgrade(&rtc);
            clocks.new_timer(ClockType::Host, move |_| {
                if let Some(rtc) = weak.upgrade() {
                    f(&mut lock(&rtc));
                }
            })
        };
        let periodic = timer(Self::periodic_fired);
        let update = timer(Self::update_fired);
        let rearm = Arc::new(timer(Self::reschedule_now));
        let kick = Arc::clone(&rearm);
        // The listener runs on whichever thread read the jump, maybe with
        // this RTC locked: it only arms a timer, whose callback locks.
        let listener = clocks.add_reset_listener(move |host_now| kick.arm(host_now));
        {
            let mut r = lock(&rtc);
            r.periodic = Some(periodic);
            r.update = Some(update);
            r.rearm = Some(rearm);
            r.listener = Some(listener);
            r.refresh_time(now);
        }
        rtc
    }
}

impl<T: Trigger> Drop for Rtc<T> {
    fn drop(&mut self) {
        if let Some(id) = self.listener.take() {
            self.clocks.remove_reset_listener(id);
        }
    }
}

impl<T: Trigger> Rtc<T> {
    fn now(&self) -> i64 {
        self.clocks.now(ClockType::Host)
    }

    fn byte(&self, r: u8) -> u8 {
        self.state.cmos[usize::from(r)]
    }

    fn set_byte(&mut self, r: u8, value: u8) {
        self.state.cmos[usize::from(r)] = value;
    }

    /// The current state.
    pub fn state(&self) -> RtcState {
        self.state.clone()
    }

    /// Replaces the state (a snapshot restore) and re-arms the timers.
    pub fn restore(&mut self, state: &RtcState) {
        self.state = state.clone();
        self.state.index &= 0x7F;
        let now = self.now();
        self.reschedule(now);
    }

    /// A machine reset: interrupts off, flags cleared, the shutdown status
    /// byte cleared unless it holds the S3 resume code. The time stays.
    pub fn reset(&mut self) {
        let b = self.byte(reg::B) & !(B_PIE | B_AIE | B_SQWE);
        self.set_byte(reg::B, b);
        self.set_byte(reg::C, 0);
        if self.byte(0x0F) != 0xFE {
            self.set_byte(0x0F, 0);
        }
        let now = self.now();
        self.reschedule(now);
    }

    /// IRQ 8 edges raised so far.
    pub fn irq_edges(&self) -> u64 {
        self.irq_edges
    }

    /// Accesses refused by the bus adapter (wrong size or offset).
    pub fn invalid_accesses(&self) -> u64 {
        self.faults.count()
    }

    /// Calls `listener` whenever the guest sets the time.
    pub fn set_change_listener(&mut self, listener: ChangeListener) {
        self.on_change = Listener(Some(listener));
    }

    /// Calls `listener` whenever the alarm matches with AIE set.
    pub fn set_alarm_listener(&mut self, listener: AlarmListener) {
        self.on_alarm = AlarmHook(Some(listener));
    }

    /// Guest time minus host time, in whole seconds (QMP's `RTC_CHANGE`).
    pub fn offset_secs(&self) -> i64 {
        self.state.offset_ns.div_euclid(NS_PER_SEC)
    }

    /// The guest's time (Unix ns) at host time `host_now`, or the frozen
    /// register time while SET or the divider stops the clock.
    ///
    /// Saturates at `i64::MAX` ns (2262-04-11 23:47:16 UTC): a guest clock
    /// set far ahead stops there, while its timers keep their 1 s and
    /// periodic spacing (see [`reschedule`](Self::reschedule)).
    pub fn guest_time_ns(&self, host_now: i64) -> i64 {
        if self.running() {
            host_now.saturating_add(self.state.offset_ns)
        } else {
            self.register_secs().saturating_mul(NS_PER_SEC)
        }
    }

    /// The guest's time as [`guest_time_ns`](Self::guest_time_ns) computes
    /// it, in `i128` and without saturating, for the timers' arithmetic.
    fn guest_time_wide(&self, host_now: i64) -> i128 {
        if self.running() {
            i128::from(host_now) + i128::from(self.state.offset_ns)
        } else {
            i128::from(self.register_secs()) * i128::from(NS_PER_SEC)
        }
    }

    /// Fills the CMOS bytes a PC BIOS reports: base and extended memory,
    /// memory above 16 MiB and above 4 GiB, the CPU count and the equipment
    /// byte (docs/devices.md §5.7).
    pub fn set_pc_config(&mut self, below_4g: u64, above_4g: u64, cpus: u32) {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let clamp16 = |v: u64| u16::try_from(v.min(0xFFFF)).unwrap_or(u16::MAX);
        let base_kib = clamp16((below_4g / KIB).min(640));
        let ext_kib = clamp16(below_4g.saturating_sub(MIB) / KIB);
        let above_16m = clamp16(below_4g.saturating_sub(16 * MIB) / (64 * KIB));
        let high = (above_4g / (64 * KIB)).min(0xFF_FFFF).to_le_bytes();
        for (r, v) in [
            (0x15, base_kib),
            (0x17, ext_kib),
            (0x30, ext_kib),
            (0x34, above_16m),
        ] {
            let [lo, hi] = v.to_le_bytes();
            self.set_byte(r, lo);
            self.set_byte(r + 1, hi);
        }
        self.set_byte(0x5B, high[0]);
        self.set_byte(0x5C, high[1]);
        self.set_byte(0x5D, high[2]);
        let cpus_byte = if cpus > 255 {
            0
        } else {
            cpus.saturating_sub(1)
        };
        self.set_byte(0x5F, u8::try_from(cpus_byte).unwrap_or(0));
        // FPU and PS/2 mouse, as QEMU's PC reports.
        self.set_byte(0x14, 0x06);
    }

    /// A guest read of port `0x70 + offset`.
    pub fn read(&mut self, offset: u16) -> u8 {
        if offset == 0 {
            return 0xFF;
        }
        let now = self.now();
        match self.state.index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY => {
                if self.running() {
                    self.refresh_time(now);
                }
                self.byte(self.state.index)
            }
            reg::A => {
                let uip = if self.uip(now) { A_UIP } else { 0 };
                (self.byte(reg::A) & !A_UIP) | uip
            }
            reg::C => {
                self.catch_up(now);
                let flags = self.byte(reg::C);
                self.set_byte(reg::C, 0);
                self.reschedule(now);
                flags
            }
            reg::D => D_VRT,
            i => self.byte(i),
        }
    }

    /// A guest write of `value` to port `0x70 + offset`.
    pub fn write(&mut self, offset: u16, value: u8) {
        if offset == 0 {
            let index = value & 0x7F;
            self.state.index = if index == reg::IBM_CENTURY {
                reg::CENTURY
            } else {
                index
            };
            return;
        }
        let now = self.now();
        match self.state.index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY => {
                let running = self.running();
                if running {
                    // The other fields must be current before one changes.
                    self.refresh_time(now);
                }
                self.set_byte(self.state.index, value);
                if running {
                    self.rebase(now, None);
                }
                self.reschedule(now);
            }
            reg::SECONDS_ALARM | reg::MINUTES_ALARM | reg::HOURS_ALARM => {
                self.set_byte(self.state.index, value);
                self.reschedule(now);
            }
            reg::A => self.write_a(value, now),
            reg::B => self.write_b(value, now),
            reg::C | reg::D => {}
            i => self.set_byte(i, value),
        }
    }

    fn write_a(&mut self, value: u8, now: i64) {
        let was_running = self.running();
        let was_reset = self.divider_in_reset();
        if was_running {
            self.catch_up(now);
            self.refresh_time(now);
        }
        self.set_byte(reg::A, value & !A_UIP);
        if !was_running && self.running() {
            // Out of divider reset, the first update is half a second away.
            self.rebase(now, was_reset.then_some(HALF_SECOND_NS));
        }
        self.reschedule(now);
    }

    fn write_b(&mut self, mut value: u8, now: i64) {
        let was_running = self.running();
        if was_running {
            self.catch_up(now);
        }
        if value & B_SET != 0 {
            if was_running {
                self.refresh_time(now);
            }
            // SET masks UIE (QEMU).
            value &= !B_UIE;
        }
        self.set_byte(reg::B, value);
        if !was_running && self.running() {
            self.rebase(now, None);
        }
        // The enable edge: a pending flag whose enable is now set raises
        // IRQF; with none, IRQF (and the line) drops.
        let c = self.byte(reg::C);
        if c & value & INT_BITS != 0 {
            if c & C_IRQF == 0 {
                self.set_byte(reg::C, c | C_IRQF);
                self.pulse();
            }
        } else {
            self.set_byte(reg::C, c & !C_IRQF);
        }
        self.reschedule(now);
    }

    fn divider_in_reset(&self) -> bool {
        self.byte(reg::A) & 0x60 == 0x60
    }

    fn divider_running(&self) -> bool {
        (self.byte(reg::A) & A_DV) >> 4 <= 2
    }

    /// Whether the time advances: divider running and SET clear.
    fn running(&self) -> bool {
        self.divider_running() && self.byte(reg::B) & B_SET == 0
    }

    fn uip(&self, now: i64) -> bool {
        self.running()
            && self.guest_time_ns(now).rem_euclid(NS_PER_SEC) >= NS_PER_SEC - UIP_WINDOW_NS
    }

    fn binary(&self) -> bool {
        self.byte(reg::B) & B_DM_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, r: u8) -> i64 {
        if self.binary() {
            i64::from(r)
        } else {
            i64::from(r >> 4) * 10 + i64::from(r & 0x0F)
        }
    }

    fn hour_encode(&self, hour: u8) -> u8 {
        if self.byte(reg::B) & B_24H != 0 {
            self.encode(hour)
        } else {
            let h12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
        }
    }

    fn hour_decode(&self, r: u8) -> i64 {
        let hour = self.decode(r & 0x7F);
        if self.byte(reg::B) & B_24H != 0 {
            hour
        } else {
            hour % 12 + if r & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// Writes the time registers from the guest time at `now`.
    fn refresh_time(&mut self, now: i64) {
        let secs = self.guest_time_ns(now).div_euclid(NS_PER_SEC);
        let t = DateTime::from_unix(secs);
        let fields = [
            (reg::SECONDS, self.encode(t.second)),
            (reg::MINUTES, self.encode(t.minute)),
            (reg::HOURS, self.hour_encode(t.hour)),
            (reg::DAY_OF_WEEK, self.encode(t.weekday + 1)),
            (reg::DAY_OF_MONTH, self.encode(t.day)),
            (reg::MONTH, self.encode(t.month)),
            (reg::YEAR, self.encode(t.year_in_century)),
            (reg::CENTURY, self.encode(t.century)),
        ];
        for (r, v) in fields {
            self.set_byte(r, v);
        }
    }

    /// The Unix time the time registers say (junk values give some time,
    /// never a panic).
    fn register_secs(&self) -> i64 {
        let field = |r| self.decode(self.byte(r));
        // Nanoseconds in an i64 span 1677-2262: a guest that leaves junk
        // in the century (or mixes BCD and binary) gets a year clamped
        // into what the clock can hold.
        let year = (field(reg::CENTURY) * 100 + field(reg::YEAR)).clamp(MIN_YEAR, MAX_YEAR);
        let days = days_from_civil(
            year,
            field(reg::MONTH).clamp(1, 12),
            field(reg::DAY_OF_MONTH).clamp(1, 31),
        );
        days * SECONDS_PER_DAY
            + self.hour_decode(self.byte(reg::HOURS)) * 3600
            + field(reg::MINUTES) * 60
            + field(reg::SECONDS)
    }

    /// Takes the time from the registers, starting at sub-second `phase`
    /// (by default the one the clock had, so updates keep their instant).
    fn rebase(&mut self, now: i64, phase: Option<i64>) {
        let secs = self.register_secs();
        let sub = phase.unwrap_or_else(|| {
            now.saturating_add(self.state.offset_ns)
                .rem_euclid(NS_PER_SEC)
        });
        let guest = secs.saturating_mul(NS_PER_SEC).saturating_add(sub);
        self.state.offset_ns = guest.saturating_sub(now);
        self.state.last_update_sec = secs;
        let offset = self.offset_secs();
        if let Some(listener) = self.on_change.0.as_mut() {
            listener(offset);
        }
    }

    /// Processes the updates (UF, AF) of the seconds that ended since the
    /// last one processed.
    fn catch_up(&mut self, now: i64) {
        if !self.running() {
            return;
        }
        let sec = self.guest_time_ns(now).div_euclid(NS_PER_SEC);
        let last = self.state.last_update_sec;
        if sec <= last {
            // The host clock went back: start again from here.
            self.state.last_update_sec = sec;
            return;
        }
        let mut flags = C_UF;
        let first = last.max(sec - SECONDS_PER_DAY) + 1;
        if (first..=sec).any(|s| self.alarm_matches(s)) {
            flags |= C_AF;
            if self.byte(reg::B) & B_AIE != 0 {
                if let Some(listener) = self.on_alarm.0.as_mut() {
                    listener();
                }
            }
        }
        self.state.last_update_sec = sec;
        self.raise(flags);
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let t = DateTime::from_unix(secs);
        let dont_care = |alarm: u8| alarm & 0xC0 == 0xC0;
        let (sec, min, hour) = (
            self.byte(reg::SECONDS_ALARM),
            self.byte(reg::MINUTES_ALARM),
            self.byte(reg::HOURS_ALARM),
        );
        (dont_care(sec) || self.decode(sec) == i64::from(t.second))
            && (dont_care(min) || self.decode(min) == i64::from(t.minute))
            && (dont_care(hour) || self.hour_decode(hour) == i64::from(t.hour))
    }

    /// Sets flags in C; an edge if one is enabled and IRQF was clear.
    fn raise(&mut self, flags: u8) {
        let c = self.byte(reg::C) | flags;
        if flags & self.byte(reg::B) & INT_BITS != 0 && c & C_IRQF == 0 {
            self.set_byte(reg::C, c | C_IRQF);
            self.pulse();
        } else {
            self.set_byte(reg::C, c);
        }
    }

    fn pulse(&mut self) {
        self.irq_edges += 1;
        fire(&self.irq, &mut self.faults, NAME, "IRQ 8");
    }

    /// The periodic interrupt's period in 32.768 kHz cycles, if it runs.
    fn periodic_cycles(&self) -> Option<i64> {
        let rs = match self.byte(reg::A) & A_RS {
            0 => return None,
            1 => 8,
            2 => 9,
            rs => rs,
        };
        (self.byte(reg::B) & B_PIE != 0 && self.divider_running()).then(|| 1 << (rs - 1))
    }

    fn reschedule_now(&mut self) {
        let now = self.now();
        self.catch_up(now);
        self.reschedule(now);
    }

    /// Arms the periodic and update timers for what the registers ask.
    ///
    /// The arithmetic is on the guest's time in `i128`
    /// ([`guest_time_wide`](Self::guest_time_wide)), never on the saturated
    /// `i64`: once host time plus the guest's offset passes `i64::MAX` ns
    /// (a guest that set the year 2199, then decades of host time or a host
    /// clock step), the saturated time stops moving, and a "next boundary
    /// minus now" of 0 armed the timers at `now` again from their own
    /// callbacks (issue 15). Every deadline here is at least 1 ns after
    /// `now`: the next periodic edge or second boundary is strictly after
    /// the guest's time.
    fn reschedule(&mut self, now: i64) {
        let guest = self.guest_time_wide(now);
        let ns = i128::from(NS_PER_SEC);
        let periodic = self.periodic_cycles().map(|period| {
            // Periods are aligned to the guest's time, in 32 kHz cycles.
            let period = i128::from(period);
            let cycles = (guest * 32_768).div_euclid(ns);
            let next = (cycles.div_euclid(period) + 1) * period;
            // Rounded up: the edge's first whole nanosecond.
            let next_ns = (next * ns + 32_767).div_euclid(32_768);
            after(now, next_ns - guest)
        });
        let periodic = periodic.flatten();
        let needs_update = self.running() && self.byte(reg::B) & (B_UIE | B_AIE) != 0;
        let update = needs_update
            .then(|| {
                let next_sec = (guest.div_euclid(ns) + 1) * ns;
                after(now, next_sec - guest)
            })
            .flatten();
        for (timer, deadline) in [(&self.periodic, periodic), (&self.update, update)] {
            if let Some(timer) = timer {
                match deadline {
                    Some(t) => timer.arm(t),
                    None => timer.cancel(),
                }
            }
        }
    }

    fn periodic_fired(&mut self) {
        let now = self.now();
        if self.periodic_cycles().is_some() {
            self.raise(C_PF);
        }
        self.reschedule(now);
    }

    fn update_fired(&mut self) {
        let now = self.now();
        self.catch_up(now);
        self.reschedule(now);
    }
}

/// The host time `delta` ns after `now`: at least 1 ns after it (a timer
/// armed at `now` from its own callback would be due again at once), and
/// saturating.
/// `delta` (at least 1 ns) after `now`; None when that instant is past the
/// end of the host clock's range (a host clock at year 2262): no timer can
/// be armed there, and one armed at the saturated end would be due at once,
/// for ever.
fn after(now: i64, delta: i128) -> Option<i64> {
    i64::try_from(i128::from(now) + delta.max(1)).ok()
}

impl<T: Trigger> MutDevicePio for Rtc<T> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (offset, &mut *data) {
            (0..=1, [byte]) => *byte = self.read(offset),
            _ => self.faults.refuse_read(NAME, base, offset, data),
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data) {
            (0..=1, [byte]) => self.write(offset, *byte),
            _ => self.faults.refuse_write(NAME, base, offset, data),
        }
    }
}

#[cfg(test)]
mod tests;
