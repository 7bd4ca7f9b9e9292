//! The Intel 6300ESB's watchdog timer (QEMU's `i6300esb`), a PCI function
//! on the Virtual clock, written from the chip's documented behaviour.
//!
//! PCI function 8086:25AB, class 08:80 ("other system peripheral"), one
//! 16-byte memory BAR. Two registers live in configuration space:
//!
//! | offset | register | bits |
//! |---|---|---|
//! | 0x60 (16 bits) | `ESB_CONFIG` | 1:0 interrupt type (stored), 2 clock scale (0: 1 kHz, 1: 1 MHz), 5 output disable (stage 2 does not fire the machine's action) |
//! | 0x68 (8 bits) | `ESB_LOCK` | 0 lock (write-once: the register is frozen until reset), 1 enable, 2 (stored) |
//!
//! and four in the BAR:
//!
//! | offset | register |
//! |---|---|
//! | 0x00 | preload 1 (20 bits): stage 1's length in ticks |
//! | 0x04 | preload 2 (20 bits): stage 2's length in ticks |
//! | 0x08 | `GINTSR`: bit 0, stage 1 expired (write 1 to clear) |
//! | 0x0C | reload: the unlock sequence, 0x100 reloads, 0x200 clears the timeout flag; reads give the timeout flag in bit 9 |
//!
//! The preload and reload registers are locked: writing 0x80 and then 0x86
//! to 0x0C unlocks exactly one further write to 0x00, 0x04 or 0x0C; a
//! locked write is dropped. The down-counter runs at 33 MHz and a preload
//! value fills its bits 34:15 (1 kHz scale: a tick is 2^15 / 33 MHz, about
//! 0.993 ms) or 24:5 (1 MHz scale: 2^5 / 33 MHz, about 0.970 µs).
//!
//! Enabling the timer (or reloading it while enabled) starts stage 1 with
//! preload 1. When stage 1 runs out it sets `GINTSR` bit 0 (the interrupt
//! is only logged, as QEMU does with no interrupt wired) and stage 2 starts
//! with preload 2. When stage 2 runs out the timeout flag is set and, unless
//! output is disabled, the watchdog fires its line once (the machine then
//! carries out `--action watchdog=`); the timer then stays stopped until
//! the guest reloads it or enables it again. The timeout flag survives a
//! reset (it tells the next boot that the watchdog rebooted the machine).
//!
//! [`I6300Esb`] is the chip's state and its BAR; [`I6300EsbPci`] the PCI
//! function the bus holds (its configuration space, with 0x60-0x6B
//! answered by the chip). The chip also answers on a fixed MMIO window
//! ([`WINDOW_LEN`] bytes; the machine places it and describes it in the
//! ACPI WDAT): the BAR's four registers at 0x00-0x0F and `ESB_LOCK` at
//! 0x10, so that firmware tables can drive it without configuration
//! space or a BAR the OS may move.
//!
//! Bounds: one timer, one line edge per stage-2 expiry; every access of
//! any width at any offset is answered (unknown bytes read 0xff, are
//! dropped on write) and counted once in the log.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;
use vm_superio::Trigger;
use vmm_clock::{ClockType, Clocks, Timer};
use vmm_pci::config::{Bar, Identity};
use vmm_pci::{BarKind, ConfigSpace, PciDevice};
use vmm_qom::{InvalidState, Stateful};

use crate::irq::{fire, EventFdTrigger};
use crate::log_once::FaultLog;

/// Vendor: Intel.
pub const ESB_VENDOR: u16 = 0x8086;
/// Device: 6300ESB watchdog timer.
pub const ESB_DEVICE: u16 = 0x25ab;
/// The BAR's size.
pub const ESB_BAR_SIZE: u64 = 16;
/// `ESB_CONFIG` in configuration space.
pub const ESB_CONFIG_REG: usize = 0x60;
/// `ESB_LOCK` in configuration space.
pub const ESB_LOCK_REG: usize = 0x68;
/// `ESB_CONFIG`: the 1 MHz clock scale (else 1 kHz).
pub const CONFIG_SCALE_1MHZ: u16 = 1 << 2;
/// `ESB_CONFIG`: output disabled (stage 2 fires nothing).
pub const CONFIG_OUTPUT_DISABLE: u16 = 1 << 5;
/// The bits of `ESB_CONFIG` that hold a value.
const CONFIG_BITS: u16 = 0b10_0111;
/// `ESB_LOCK`: locked until reset.
pub const LOCK_LOCKED: u8 = 1 << 0;
/// `ESB_LOCK`: the timer runs.
pub const LOCK_ENABLE: u8 = 1 << 1;
/// The bits of `ESB_LOCK` that hold a value.
const LOCK_BITS: u8 = 0b111;
/// Preload 1 in the BAR.
pub const PRELOAD1: u64 = 0x00;
/// Preload 2 in the BAR.
pub const PRELOAD2: u64 = 0x04;
/// `GINTSR` in the BAR.
pub const GINTSR: u64 = 0x08;
/// The reload register in the BAR.
pub const RELOAD: u64 = 0x0c;
/// Reload: the first unlock value.
pub const UNLOCK1: u32 = 0x80;
/// Reload: the second unlock value.
pub const UNLOCK2: u32 = 0x86;
/// Reload: reload the timer (after the unlock sequence).
pub const RELOAD_TIMER: u32 = 0x100;
/// Reload: the timeout flag (read), clear it (write, after unlocking).
pub const RELOAD_TIMEOUT: u32 = 0x200;
/// The window's `ESB_LOCK` alias.
pub const WINDOW_LOCK: u64 = 0x10;
/// The fixed MMIO window's size: the BAR, then `ESB_LOCK`.
pub const WINDOW_LEN: u64 = 0x20;
/// The preload registers' 20 bits.
pub const PRELOAD_MASK: u32 = 0xf_ffff;
/// The down-counter's clock.
const COUNTER_HZ: i128 = 33_000_000;
const NS_PER_SEC: i128 = 1_000_000_000;

const NAME: &str = "i6300esb";

/// Nanoseconds of `ticks` preload ticks at the scale `config` selects.
pub fn ticks_ns(config: u16, ticks: u32) -> i64 {
    let shift = if config & CONFIG_SCALE_1MHZ != 0 {
        5
    } else {
        15
    };
    let cycles = i128::from(ticks & PRELOAD_MASK) << shift;
    i64::try_from(cycles * NS_PER_SEC / COUNTER_HZ).unwrap_or(i64::MAX)
}

/// The chip's registers and where its timer stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EsbState {
    /// `ESB_CONFIG`.
    pub config: u16,
    /// `ESB_LOCK`.
    pub lock: u8,
    /// Preload 1 and 2.
    pub preload: [u32; 2],
    /// `GINTSR` bit 0.
    pub stage1_expired: bool,
    /// The timeout flag (reload register bit 9).
    pub timed_out: bool,
    /// Unlock progress: 0 locked, 1 after 0x80, 2 unlocked.
    pub unlock: u8,
    /// The stage running (1 or 2) while armed.
    pub stage: u8,
    /// Virtual-clock time (ns) at which the running stage ends; `None`
    /// while stopped.
    pub deadline_ns: Option<i64>,
}

/// The 6300ESB watchdog, firing `T` when stage 2 expires.
#[derive(Debug)]
pub struct I6300Esb<T: Trigger = EventFdTrigger> {
    state: EsbState,
    clocks: Clocks,
    timer: Option<Timer>,
    expired: T,
    fired: u64,
    faults: FaultLog,
    locked_writes: FaultLog,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Little-endian value of up to 4 bytes.
fn le(data: &[u8]) -> u32 {
    data.iter()
        .take(4)
        .enumerate()
        .fold(0, |v, (i, b)| v | u32::from(*b) << (8 * i))
}

impl<T: Trigger + Send + 'static> I6300Esb<T> {
    /// A stopped watchdog on `clocks`' Virtual clock that fires `expired`.
    pub fn new(clocks: &Clocks, expired: T) -> Arc<Mutex<Self>> {
        let dev = Arc::new(Mutex::new(Self {
            state: EsbState::default(),
            clocks: clocks.clone(),
            timer: None,
            expired,
            fired: 0,
            faults: FaultLog::default(),
            locked_writes: FaultLog::default(),
        }));
        let weak: Weak<Mutex<Self>> = Arc::downgrade(&dev);
        let timer = clocks.new_timer(ClockType::Virtual, move |_| {
            if let Some(dev) = weak.upgrade() {
                lock(&dev).expire();
            }
        });
        lock(&dev).timer = Some(timer);
        dev
    }
}

impl<T: Trigger> I6300Esb<T> {
    /// How many times stage 2 fired the line.
    pub fn fired(&self) -> u64 {
        self.fired
    }

    /// The state.
    pub fn state(&self) -> EsbState {
        self.state
    }

    fn enabled(&self) -> bool {
        self.state.lock & LOCK_ENABLE != 0
    }

    /// Starts `stage` (1 or 2) from `from` (Virtual ns), or stops.
    fn arm(&mut self, stage: Option<(u8, i64)>) {
        match stage {
            Some((stage, from)) => {
                let idx = usize::from(stage.clamp(1, 2) - 1);
                let len = ticks_ns(self.state.config, self.state.preload[idx]);
                let at = from.saturating_add(len);
                self.state.stage = stage;
                self.state.deadline_ns = Some(at);
                if let Some(timer) = &self.timer {
                    timer.arm(at);
                }
            }
            None => {
                self.state.deadline_ns = None;
                if let Some(timer) = &self.timer {
                    timer.cancel();
                }
            }
        }
    }

    fn restart(&mut self) {
        let now = self.clocks.now(ClockType::Virtual);
        self.arm(Some((1, now)));
        log::debug!(
            "{NAME}: armed: stage 1 {} ns, stage 2 {} ns",
            ticks_ns(self.state.config, self.state.preload[0]),
            ticks_ns(self.state.config, self.state.preload[1])
        );
    }

    fn expire(&mut self) {
        let Some(at) = self.state.deadline_ns else {
            return;
        };
        if self.state.stage == 1 {
            self.state.stage1_expired = true;
            log::debug!("{NAME}: stage 1 expired (interrupt not wired)");
            self.arm(Some((2, at)));
            return;
        }
        self.arm(None);
        self.state.timed_out = true;
        log::debug!("{NAME}: stage 2 expired");
        if self.state.config & CONFIG_OUTPUT_DISABLE == 0 {
            self.fired += 1;
            fire(&self.expired, &mut self.faults, NAME, "expiry");
        } else {
            log::debug!("{NAME}: stage 2 expired with output disabled");
        }
    }

    /// A configuration-space read of `ESB_CONFIG` or `ESB_LOCK` at `offset`
    /// (absolute in configuration space); false if `offset` is neither.
    pub fn config_read(&self, offset: usize, data: &mut [u8]) -> bool {
        let regs = [
            (ESB_CONFIG_REG, self.state.config.to_le_bytes().to_vec()),
            (ESB_LOCK_REG, vec![self.state.lock]),
        ];
        let mut hit = false;
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i);
            *b = 0;
            for (base, bytes) in &regs {
                if let Some(v) = at.checked_sub(*base).and_then(|o| bytes.get(o)) {
                    *b = *v;
                    hit = true;
                }
            }
        }
        hit
    }

    /// A configuration-space write at `offset`: bytes of `ESB_CONFIG` and
    /// `ESB_LOCK` change them; others are not the chip's.
    pub fn config_write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset.saturating_add(i) {
                o if o == ESB_CONFIG_REG => {
                    self.state.config = (self.state.config & 0xff00 | u16::from(v)) & CONFIG_BITS;
                }
                o if o == ESB_CONFIG_REG + 1 => {
                    self.state.config =
                        (self.state.config & 0x00ff | u16::from(v) << 8) & CONFIG_BITS;
                }
                o if o == ESB_LOCK_REG => self.write_lock(v),
                _ => {}
            }
        }
    }

    fn write_lock(&mut self, v: u8) {
        if self.state.lock & LOCK_LOCKED != 0 {
            self.locked_writes
                .record(NAME, format_args!("write to the locked ESB_LOCK dropped"));
            return;
        }
        let was = self.enabled();
        self.state.lock = v & LOCK_BITS;
        match (was, self.enabled()) {
            (false, true) => self.restart(),
            (true, false) => self.arm(None),
            _ => {}
        }
    }

    /// A BAR read at `offset`.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let reg = match offset & !3 {
            PRELOAD1 => self.state.preload[0],
            PRELOAD2 => self.state.preload[1],
            GINTSR => u32::from(self.state.stage1_expired),
            RELOAD => {
                if self.state.timed_out {
                    RELOAD_TIMEOUT
                } else {
                    0
                }
            }
            _ => {
                self.faults
                    .record(NAME, format_args!("read at {offset:#x} outside the BAR"));
                data.fill(0xff);
                return;
            }
        };
        let shift = (offset & 3) * 8;
        let bytes = (reg >> shift).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xff);
        }
    }

    /// A BAR write at `offset`.
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() || data.len() > 4 || offset & 3 != 0 && offset & !3 != GINTSR {
            self.faults.record(
                NAME,
                format_args!("{}-byte write at {offset:#x} dropped", data.len()),
            );
            return;
        }
        let value = le(data);
        match offset {
            RELOAD if value == UNLOCK1 => self.state.unlock = 1,
            RELOAD if value == UNLOCK2 && self.state.unlock == 1 => self.state.unlock = 2,
            GINTSR..=0x0b => {
                if offset == GINTSR && value & 1 != 0 {
                    self.state.stage1_expired = false;
                }
            }
            PRELOAD1 | PRELOAD2 | RELOAD if self.state.unlock == 2 => {
                self.state.unlock = 0;
                match offset {
                    PRELOAD1 => self.state.preload[0] = value & PRELOAD_MASK,
                    PRELOAD2 => self.state.preload[1] = value & PRELOAD_MASK,
                    _ => {
                        if value & RELOAD_TIMEOUT != 0 {
                            self.state.timed_out = false;
                        }
                        if value & RELOAD_TIMER != 0 && self.enabled() {
                            self.restart();
                        }
                    }
                }
            }
            PRELOAD1 | PRELOAD2 | RELOAD => {
                self.state.unlock = 0;
                self.locked_writes.record(
                    NAME,
                    format_args!("write of {value:#x} at {offset:#x} without the unlock sequence"),
                );
            }
            _ => self
                .faults
                .record(NAME, format_args!("write at {offset:#x} outside the BAR")),
        }
    }
}

/// The fixed window: the BAR's registers, then `ESB_LOCK` at 0x10.
impl<T: Trigger> MutDeviceMmio for I6300Esb<T> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        if offset < ESB_BAR_SIZE {
            self.bar_read(offset, data);
        } else if offset == WINDOW_LOCK && data.len() == 1 {
            data[0] = self.state.lock;
        } else {
            data.fill(0xff);
        }
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if offset < ESB_BAR_SIZE {
            self.bar_write(offset, data);
        } else if let (WINDOW_LOCK, [v]) = (offset, data) {
            self.write_lock(*v);
        } else {
            self.faults
                .record(NAME, format_args!("window write at {offset:#x} dropped"));
        }
    }
}

impl<T: Trigger> Stateful for I6300Esb<T> {
    const TYPE: &'static str = "i6300esb";
    type State = EsbState;

    fn state(&self) -> EsbState {
        self.state
    }

    /// The deadline comes back on the Virtual clock as it was saved.
    fn restore(&mut self, state: EsbState) -> Result<(), InvalidState> {
        if state.config & !CONFIG_BITS != 0
            || state.lock & !LOCK_BITS != 0
            || state.unlock > 2
            || state.stage > 2
            || (state.deadline_ns.is_some() && state.stage == 0)
            || state.preload.iter().any(|p| p & !PRELOAD_MASK != 0)
        {
            return Err(InvalidState(format!("{NAME}: registers out of range")));
        }
        self.state = state;
        match (state.deadline_ns, &self.timer) {
            (Some(at), Some(timer)) => timer.arm(at),
            (None, Some(timer)) => timer.cancel(),
            _ => {}
        }
        Ok(())
    }

    /// Everything back to power-on but the timeout flag.
    fn reset(&mut self) {
        self.arm(None);
        self.state = EsbState {
            timed_out: self.state.timed_out,
            ..EsbState::default()
        };
    }
}

/// The PCI function: its configuration space, with the chip behind
/// 0x60-0x6B and the BAR.
#[derive(Debug)]
pub struct I6300EsbPci<T: Trigger = EventFdTrigger> {
    config: ConfigSpace,
    chip: Arc<Mutex<I6300Esb<T>>>,
}

impl<T: Trigger> I6300EsbPci<T> {
    /// The function for `chip`, its BAR 0 declared (not placed), memory
    /// decoding on: a machine with no firmware leaves it as firmware
    /// would (the machine places the BAR and calls `set_reset_state`).
    pub fn new(chip: Arc<Mutex<I6300Esb<T>>>) -> Self {
        let mut config = ConfigSpace::new(Identity {
            vendor: ESB_VENDOR,
            device: ESB_DEVICE,
            class: (0x08, 0x80, 0x00),
            revision: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        // A fresh space has every BAR slot free and 16 is a valid size.
        let bar = Bar {
            kind: BarKind::Memory32,
            size: ESB_BAR_SIZE,
        };
        if let Err(e) = config.add_bar(0, bar) {
            log::error!("{NAME}: cannot declare BAR 0: {e}");
        }
        config.set_interrupt_pin(1);
        let command = config.read_u16(vmm_pci::config::COMMAND);
        config.set_u16(
            vmm_pci::config::COMMAND,
            command | vmm_pci::config::COMMAND_MEMORY,
        );
        Self { config, chip }
    }
}

const CHIP_REGS: std::ops::Range<usize> = ESB_CONFIG_REG..ESB_LOCK_REG + 4;

impl<T: Trigger + Send> PciDevice for I6300EsbPci<T> {
    fn name(&self) -> &str {
        NAME
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let end = offset.saturating_add(data.len());
        if offset < CHIP_REGS.end && end > CHIP_REGS.start {
            lock(&self.chip).config_read(offset, data);
        } else {
            self.config.read(offset, data);
        }
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let end = offset.saturating_add(data.len());
        if offset < CHIP_REGS.end && end > CHIP_REGS.start {
            lock(&self.chip).config_write(offset, data);
        } else {
            self.config.write(offset, data);
        }
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            0 => lock(&self.chip).bar_read(offset, data),
            _ => data.fill(0xff),
        }
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 {
            lock(&self.chip).bar_write(offset, data);
        }
    }
    fn reset(&mut self) {
        self.config.reset();
        Stateful::reset(&mut *lock(&self.chip));
    }
}

#[cfg(test)]
mod tests;
