//! ACPI PM1a fixed-hardware registers: the event block (status + enable) and
//! the control block, enough for Linux to power off through S5 and to
//! suspend to RAM through S3.
//!
//! Two devices, each decoding offsets from its own base:
//!
//! | device | FADT field | length | machine's port | offsets |
//! |---|---|---|---|---|
//! | [`Pm1Event`] | `PM1a_EVT_BLK`, `PM1_EVT_LEN` = 4 | [`PM1_EVT_LEN`] | 0x600 | 0-1 PM1_STS, 2-3 PM1_EN |
//! | [`Pm1Control`] | `PM1a_CNT_BLK`, `PM1_CNT_LEN` = 2 | [`PM1_CNT_LEN`] | 0x604 | 0-1 PM1_CNT |
//!
//! Accesses of any width are split into bytes (ACPICA uses 16-bit accesses;
//! byte accesses work as on PIIX4); bytes outside the block read 0xFF and are
//! ignored when written. The machine advertises no SMI command port (FADT
//! `SMI_CMD` = 0), so the system is always in ACPI mode: PM1_CNT.SCI_EN reads
//! 1 and cannot be cleared.
//!
//! **Poweroff:** writing PM1_CNT with SLP_EN (bit 13) set and SLP_TYP (bits
//! 12:10) equal to [`S5_SLP_TYP`] fires the poweroff [`Trigger`]. The DSDT's
//! `\_S5` package must give the same value (use the constant). SLP_TYP equal
//! to [`S3_SLP_TYP`] fires the suspend [`Trigger`] given by
//! [`Pm1Control::with_suspend`] (the `\_S3` package holds that value). Other
//! sleep types (and S3 without a suspend line) are logged once, counted and
//! ignored: the guest keeps running. After an S5
//! request Linux (ACPICA) waits ten seconds and writes SLP_EN again, so the
//! machine must stop the vCPUs when the line fires; a repeated request fires
//! the line again, which an eventfd counts as one wake-up.
//!
//! **Power button:** [`Pm1Event::press_power_button`] sets PWRBTN_STS; while
//! a status bit and its enable bit (PWRBTN, SLPBTN, RTC, GBL, TMR share bit
//! positions in PM1_STS and PM1_EN) are both set, the SCI [`LevelLine`] is
//! held high, and it drops when the guest clears the status (write 1 to
//! clear). The machine sets the others only on a wake from S3
//! ([`Pm1Event::wake`]: WAK_STS, with RTC_STS or PWRBTN_STS for the cause);
//! there is no PM timer. The enable bits are plain storage;
//! [`Pm1Event::rtc_wake_enabled`] reads RTC_EN, which says whether the RTC
//! alarm may wake the machine.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::irq::{fire, EventFdTrigger, LevelLine, Trigger};
use crate::log_once::FaultLog;

/// Bytes of the PM1 event block (PM1_STS + PM1_EN).
pub const PM1_EVT_LEN: u16 = 4;
/// Bytes of the PM1 control block.
pub const PM1_CNT_LEN: u16 = 2;
/// The SLP_TYP value for S5 (soft off). The DSDT's `\_S5` package must hold
/// this value for PM1a (and PM1b) so Linux writes it here.
pub const S5_SLP_TYP: u8 = 5;
/// The SLP_TYP value for S3 (suspend to RAM). The DSDT's `\_S3` package must
/// hold this value. (QEMU's PIIX4 uses 1 for S3 too; its S5 is 0, ours 5.)
pub const S3_SLP_TYP: u8 = 1;

/// PM1_STS bits that exist: TMR(0), BM(4), GBL(5), PWRBTN(8), SLPBTN(9),
/// RTC(10), PCIEXP_WAKE(14), WAK(15).
const STS_VALID_BITS: u16 = 0xC731;
/// PM1_EN bits that exist: TMR_EN(0), GBL_EN(5), PWRBTN_EN(8), SLPBTN_EN(9),
/// RTC_EN(10), PCIEXP_WAKE_DIS(14).
const EN_VALID_BITS: u16 = 0x4721;

/// PM1_STS/PM1_EN bit 8: the power button.
const PWRBTN: u16 = 1 << 8;
/// PM1_STS/PM1_EN bit 10: the RTC alarm.
const RTC: u16 = 1 << 10;
/// PM1_STS bit 15: WAK_STS, the system woke from a sleep state.
const WAK: u16 = 1 << 15;

/// What woke the machine from S3, for [`Pm1Event::wake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeCause {
    /// The host asked (QMP `system_wakeup`): WAK_STS only.
    Host,
    /// The power button (QMP `system_powerdown` while suspended): WAK_STS
    /// and PWRBTN_STS.
    PowerButton,
    /// The RTC alarm: WAK_STS and RTC_STS.
    Rtc,
}
/// Status bits whose enable bit sits at the same position: TMR, GBL,
/// PWRBTN, SLPBTN, RTC. Any of them set and enabled raises the SCI.
const SCI_CAUSES: u16 = 0x0721;

/// PM1_CNT bit 0: SCI_EN, events are SCIs (ACPI mode).
const CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT bit 1: BM_RLD, bus master requests leave C3.
const CNT_BM_RLD: u16 = 1 << 1;
/// PM1_CNT bits 12:10: SLP_TYP.
const CNT_SLP_TYP_SHIFT: u16 = 10;
const CNT_SLP_TYP_MASK: u16 = 0x7;
/// PM1_CNT bit 13: SLP_EN, write-only: enter the sleep state in SLP_TYP.
const CNT_SLP_EN: u16 = 1 << 13;

const EVT_NAME: &str = "acpi-pm1-evt";
const CNT_NAME: &str = "acpi-pm1-cnt";

/// Reads a little-endian 16-bit register bytewise: byte `index` of `regs`.
fn reg_byte(regs: &[u16], index: usize) -> Option<u8> {
    let reg = regs.get(index / 2)?;
    reg.to_le_bytes().get(index % 2).copied()
}

/// The byte index inside the block of byte `i` of an access at `offset`.
fn byte_index(offset: PioAddressOffset, i: usize) -> Option<usize> {
    usize::from(offset).checked_add(i)
}

/// Saved state of [`Pm1Event`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pm1EventState {
    /// PM1_STS.
    pub status: u16,
    /// PM1_EN.
    pub enable: u16,
}

/// The PM1a event block: PM1_STS (write 1 to clear) and PM1_EN, and the
/// SCI they drive.
#[derive(Debug, Default)]
pub struct Pm1Event {
    state: Pm1EventState,
    sci: Option<Box<dyn LevelLine>>,
    sci_level: bool,
}

impl Pm1Event {
    /// Both registers 0, no SCI connected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Both registers 0, status changes driving `sci`.
    pub fn with_sci(sci: Box<dyn LevelLine>) -> Self {
        Self {
            sci: Some(sci),
            ..Self::default()
        }
    }

    /// The power button was pressed (QMP `system_powerdown`): PWRBTN_STS
    /// is set, and the SCI raised if the guest enabled the button.
    pub fn press_power_button(&mut self) {
        self.state.status |= PWRBTN;
        self.update_sci();
    }

    /// The machine wakes from S3 because of `cause`: WAK_STS and the
    /// cause's status bit are set (the SCI raised if that one is enabled).
    pub fn wake(&mut self, cause: WakeCause) {
        self.state.status |= WAK
            | match cause {
                WakeCause::Host => 0,
                WakeCause::PowerButton => PWRBTN,
                WakeCause::Rtc => RTC,
            };
        self.update_sci();
    }

    /// Whether the guest let the RTC alarm wake it (PM1_EN.RTC_EN).
    pub fn rtc_wake_enabled(&self) -> bool {
        self.state.enable & RTC != 0
    }

    /// A machine reset: both registers 0, the SCI low.
    pub fn reset(&mut self) {
        self.state = Pm1EventState::default();
        self.update_sci();
    }

    /// Whether the SCI is held high.
    pub fn sci_level(&self) -> bool {
        self.sci_level
    }

    fn update_sci(&mut self) {
        let level = self.state.status & self.state.enable & SCI_CAUSES != 0;
        if level != self.sci_level {
            self.sci_level = level;
            if let Some(sci) = &self.sci {
                sci.set_level(level);
            }
        }
    }

    /// Rebuilds the block from `state` (bits that do not exist are dropped).
    pub fn from_state(state: &Pm1EventState) -> Self {
        Self {
            state: Pm1EventState {
                status: state.status & STS_VALID_BITS,
                enable: state.enable & EN_VALID_BITS,
            },
            ..Self::default()
        }
    }

    /// The current state.
    pub fn state(&self) -> Pm1EventState {
        self.state
    }

    /// Replaces the state (a snapshot restore; bits that do not exist are
    /// dropped) and sets the SCI to match.
    pub fn restore(&mut self, state: &Pm1EventState) {
        self.state = Pm1EventState {
            status: state.status & STS_VALID_BITS,
            enable: state.enable & EN_VALID_BITS,
        };
        self.update_sci();
    }

    fn write_byte(&mut self, index: usize, value: u8) {
        let (reg, shift) = match index {
            0 | 1 => (&mut self.state.status, index * 8),
            2 | 3 => (&mut self.state.enable, (index - 2) * 8),
            _ => return,
        };
        let bits = u16::from(value) << shift;
        if index < 2 {
            // Write 1 to clear.
            *reg &= !bits;
        } else {
            let mask = 0xFFu16 << shift;
            *reg = (*reg & !mask) | (bits & EN_VALID_BITS);
        }
    }
}

impl MutDevicePio for Pm1Event {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let regs = [self.state.status, self.state.enable];
        for (i, b) in data.iter_mut().enumerate() {
            *b = byte_index(offset, i)
                .and_then(|index| reg_byte(&regs, index))
                .unwrap_or(0xFF);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(index) = byte_index(offset, i) {
                self.write_byte(index, *b);
            }
        }
        self.update_sci();
        log::trace!("{EVT_NAME}: {data:x?} at {offset} -> {:x?}", self.state);
    }
}

/// Saved state of [`Pm1Control`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pm1ControlState {
    /// BM_RLD as last written.
    pub bm_rld: bool,
    /// SLP_TYP as last written (0..=7).
    pub slp_typ: u8,
}

/// The PM1a control block: SCI_EN (always 1), SLP_TYP, and SLP_EN, which
/// requests the sleep state; S5 fires the poweroff line, S3 the suspend line.
#[derive(Debug)]
pub struct Pm1Control<T: Trigger = EventFdTrigger> {
    state: Pm1ControlState,
    poweroff: T,
    suspend: Option<T>,
    ignored_sleeps: FaultLog,
    line_faults: FaultLog,
}

impl<T: Trigger> Pm1Control<T> {
    /// The control block in its reset state; `poweroff` fires on S5.
    pub fn new(poweroff: T) -> Self {
        Self::from_state(&Pm1ControlState::default(), poweroff)
    }

    /// Rebuilds the block from `state` (SLP_TYP is kept to 3 bits).
    pub fn from_state(state: &Pm1ControlState, poweroff: T) -> Self {
        Self {
            state: Pm1ControlState {
                bm_rld: state.bm_rld,
                slp_typ: state.slp_typ & 0x7,
            },
            poweroff,
            suspend: None,
            ignored_sleeps: FaultLog::default(),
            line_faults: FaultLog::default(),
        }
    }

    /// The same block, with `suspend` fired on S3 (without it S3 requests
    /// are ignored like any unsupported sleep type).
    #[must_use]
    pub fn with_suspend(mut self, suspend: T) -> Self {
        self.suspend = Some(suspend);
        self
    }

    /// The current state.
    pub fn state(&self) -> Pm1ControlState {
        self.state
    }

    /// Replaces the state (a snapshot restore; SLP_TYP kept to 3 bits).
    pub fn restore(&mut self, state: &Pm1ControlState) {
        self.state = Pm1ControlState {
            bm_rld: state.bm_rld,
            slp_typ: state.slp_typ & 0x7,
        };
    }

    /// The poweroff line.
    pub fn poweroff_line(&self) -> &T {
        &self.poweroff
    }

    /// The suspend line, if any.
    pub fn suspend_line(&self) -> Option<&T> {
        self.suspend.as_ref()
    }

    /// Sleep requests for states other than S5 and S3, which were ignored.
    pub fn ignored_sleep_requests(&self) -> u64 {
        self.ignored_sleeps.count()
    }

    /// PM1_CNT as the guest reads it: SCI_EN set, SLP_EN reads 0.
    pub fn read_value(&self) -> u16 {
        let mut value = CNT_SCI_EN | (u16::from(self.state.slp_typ) << CNT_SLP_TYP_SHIFT);
        if self.state.bm_rld {
            value |= CNT_BM_RLD;
        }
        value
    }

    /// A write of the whole register. SCI_EN and GBL_RLS (bit 2, a request
    /// to firmware that does not exist) are ignored.
    pub fn write_value(&mut self, value: u16) {
        self.state.bm_rld = value & CNT_BM_RLD != 0;
        let slp_typ = (value >> CNT_SLP_TYP_SHIFT) & CNT_SLP_TYP_MASK;
        // Three bits: the conversion cannot fail.
        self.state.slp_typ = u8::try_from(slp_typ).unwrap_or_default();
        if value & CNT_SLP_EN == 0 {
            return;
        }
        if self.state.slp_typ == S5_SLP_TYP {
            log::info!("{CNT_NAME}: guest requested poweroff (S5)");
            fire(&self.poweroff, &mut self.line_faults, CNT_NAME, "poweroff");
        } else if let (S3_SLP_TYP, Some(suspend)) = (self.state.slp_typ, &self.suspend) {
            log::info!("{CNT_NAME}: guest requested suspend to RAM (S3)");
            fire(suspend, &mut self.line_faults, CNT_NAME, "suspend");
        } else {
            self.ignored_sleeps.record(
                CNT_NAME,
                format_args!("sleep type {} not supported, ignored", self.state.slp_typ),
            );
        }
    }
}

impl<T: Trigger> MutDevicePio for Pm1Control<T> {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let regs = [self.read_value()];
        for (i, b) in data.iter_mut().enumerate() {
            *b = byte_index(offset, i)
                .and_then(|index| reg_byte(&regs, index))
                .unwrap_or(0xFF);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        // Merge the bytes that land in the register, then act once.
        let mut bytes = self.read_value().to_le_bytes();
        let mut hit = false;
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = byte_index(offset, i).and_then(|index| bytes.get_mut(index)) {
                *slot = *b;
                hit = true;
            }
        }
        if hit {
            self.write_value(u16::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fired, line};

    const EVT: u16 = 0x600;
    const CNT: u16 = 0x604;

    fn inw(dev: &mut impl MutDevicePio, base: u16, offset: u16) -> u16 {
        let mut data = [0u8; 2];
        dev.pio_read(PioAddress(base), offset, &mut data);
        u16::from_le_bytes(data)
    }

    fn outw(dev: &mut impl MutDevicePio, base: u16, offset: u16, value: u16) {
        dev.pio_write(PioAddress(base), offset, &value.to_le_bytes());
    }

    /// SLP_TYP | SLP_EN as Linux writes them.
    fn sleep(slp_typ: u8) -> u16 {
        (u16::from(slp_typ) << 10) | CNT_SLP_EN
    }

    #[test]
    fn sci_en_reads_one_and_sticks() {
        let (line, _probe) = line();
        let mut cnt = Pm1Control::new(line);
        assert_eq!(inw(&mut cnt, CNT, 0), 0x0001);
        outw(&mut cnt, CNT, 0, 0x0000);
        assert_eq!(inw(&mut cnt, CNT, 0), 0x0001);
        outw(&mut cnt, CNT, 0, 0x0006);
        assert_eq!(inw(&mut cnt, CNT, 0), 0x0003, "BM_RLD stored, GBL_RLS not");
    }

    #[test]
    fn s5_fires_poweroff() {
        let (line, probe) = line();
        let mut cnt = Pm1Control::new(line);
        // ACPICA: write SLP_TYP first, then SLP_TYP | SLP_EN.
        outw(&mut cnt, CNT, 0, 0x0001 | (u16::from(S5_SLP_TYP) << 10));
        assert_eq!(fired(&probe), 0);
        assert_eq!(inw(&mut cnt, CNT, 0), 0x1401);
        outw(&mut cnt, CNT, 0, 0x0001 | sleep(S5_SLP_TYP));
        assert_eq!(fired(&probe), 1);
        // SLP_EN reads back 0.
        assert_eq!(inw(&mut cnt, CNT, 0), 0x1401);
        // A byte write of the high half alone also works.
        cnt.pio_write(PioAddress(CNT), 1, &[0x34]);
        assert_eq!(fired(&probe), 1);
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let (line, probe) = line();
        let mut cnt = Pm1Control::new(line);
        // Without a suspend line, S3 is one of them.
        for typ in (0..8).filter(|t| *t != S5_SLP_TYP) {
            outw(&mut cnt, CNT, 0, sleep(typ));
        }
        assert_eq!(fired(&probe), 0);
        assert_eq!(cnt.ignored_sleep_requests(), 7);
        assert_eq!(cnt.state().slp_typ, 7);
    }

    #[test]
    fn s3_fires_suspend_and_reserved_types_are_ignored() {
        let (off, off_probe) = line();
        let (sus, sus_probe) = line();
        let mut cnt = Pm1Control::new(off).with_suspend(sus);
        // SLP_TYP alone does nothing; with SLP_EN it suspends.
        outw(&mut cnt, CNT, 0, u16::from(S3_SLP_TYP) << 10);
        assert_eq!(fired(&sus_probe), 0);
        outw(&mut cnt, CNT, 0, sleep(S3_SLP_TYP));
        assert_eq!(fired(&sus_probe), 1);
        assert_eq!(fired(&off_probe), 0);
        assert_eq!(inw(&mut cnt, CNT, 0), 0x0401, "SLP_EN reads back 0");
        // A repeated request fires again (the machine ignores it unless
        // running).
        outw(&mut cnt, CNT, 0, sleep(S3_SLP_TYP));
        assert_eq!(fired(&sus_probe), 1);
        // Reserved and unsupported values: counted, never fired.
        for typ in (0..8).filter(|t| ![S3_SLP_TYP, S5_SLP_TYP].contains(t)) {
            outw(&mut cnt, CNT, 0, sleep(typ));
        }
        assert_eq!(cnt.ignored_sleep_requests(), 6);
        assert_eq!((fired(&sus_probe), fired(&off_probe)), (0, 0));
        // S5 still powers off.
        outw(&mut cnt, CNT, 0, sleep(S5_SLP_TYP));
        assert_eq!((fired(&sus_probe), fired(&off_probe)), (0, 1));
        assert!(cnt.suspend_line().is_some());
    }

    #[test]
    fn s3_without_a_suspend_line_is_ignored() {
        let (off, off_probe) = line();
        let mut cnt = Pm1Control::new(off);
        outw(&mut cnt, CNT, 0, sleep(S3_SLP_TYP));
        assert_eq!(fired(&off_probe), 0);
        assert_eq!(cnt.ignored_sleep_requests(), 1);
        assert!(cnt.suspend_line().is_none());
    }

    #[test]
    fn wake_sets_wak_sts_and_the_cause() {
        let mut evt = Pm1Event::new();
        evt.wake(WakeCause::Host);
        assert_eq!(evt.state().status, WAK);
        outw(&mut evt, EVT, 0, 0xFFFF);
        evt.wake(WakeCause::PowerButton);
        assert_eq!(evt.state().status, WAK | PWRBTN);
        outw(&mut evt, EVT, 0, 0xFFFF);
        evt.wake(WakeCause::Rtc);
        assert_eq!(inw(&mut evt, EVT, 0), 0x8400);
        assert!(!evt.rtc_wake_enabled());
        outw(&mut evt, EVT, 2, RTC);
        assert!(evt.rtc_wake_enabled());
    }

    #[test]
    fn control_bytes_outside_the_block() {
        let (line, probe) = line();
        let mut cnt = Pm1Control::new(line);
        let mut data = [0u8; 4];
        cnt.pio_read(PioAddress(CNT), 1, &mut data);
        assert_eq!(data, [0x00, 0xFF, 0xFF, 0xFF]);
        cnt.pio_write(PioAddress(CNT), 2, &sleep(S5_SLP_TYP).to_le_bytes());
        cnt.pio_write(PioAddress(CNT), u16::MAX, &[0xFF; 8]);
        assert_eq!(fired(&probe), 0);
        assert_eq!(cnt.state(), Pm1ControlState::default());
        cnt.poweroff_line().trigger().unwrap();
        assert_eq!(fired(&probe), 1);
    }

    #[test]
    fn status_is_write_one_to_clear() {
        let mut evt = Pm1Event::from_state(&Pm1EventState {
            status: 0x8121,
            enable: 0,
        });
        assert_eq!(inw(&mut evt, EVT, 0), 0x8121);
        outw(&mut evt, EVT, 0, 0x0001);
        assert_eq!(inw(&mut evt, EVT, 0), 0x8120);
        outw(&mut evt, EVT, 0, 0x0000);
        assert_eq!(inw(&mut evt, EVT, 0), 0x8120);
        evt.pio_write(PioAddress(EVT), 1, &[0x80]);
        assert_eq!(inw(&mut evt, EVT, 0), 0x0120);
        // ACPICA clears everything with all-ones.
        outw(&mut evt, EVT, 0, 0xFFFF);
        assert_eq!(evt.state().status, 0);
    }

    #[test]
    fn enable_is_plain_storage_of_existing_bits() {
        let mut evt = Pm1Event::new();
        outw(&mut evt, EVT, 2, 0x0121);
        assert_eq!(inw(&mut evt, EVT, 2), 0x0121);
        outw(&mut evt, EVT, 2, 0xFFFF);
        assert_eq!(inw(&mut evt, EVT, 2), EN_VALID_BITS);
        // A dword access covers both registers.
        let mut data = [0u8; 4];
        evt.pio_read(PioAddress(EVT), 0, &mut data);
        assert_eq!(data, [0x00, 0x00, 0x21, 0x47]);
        evt.pio_write(PioAddress(EVT), 0, &[0, 0, 0, 0]);
        assert_eq!(evt.state(), Pm1EventState::default());
        // Past the block.
        evt.pio_read(PioAddress(EVT), 3, &mut data);
        assert_eq!(data, [0x00, 0xFF, 0xFF, 0xFF]);
        evt.pio_write(PioAddress(EVT), 4, &[0xFF; 4]);
        assert_eq!(evt.state(), Pm1EventState::default());
    }

    #[test]
    fn from_state_drops_bits_that_do_not_exist() {
        let evt = Pm1Event::from_state(&Pm1EventState {
            status: 0xFFFF,
            enable: 0xFFFF,
        });
        assert_eq!(
            evt.state(),
            Pm1EventState {
                status: STS_VALID_BITS,
                enable: EN_VALID_BITS
            }
        );
        let (line, _probe) = line();
        let cnt = Pm1Control::from_state(
            &Pm1ControlState {
                bm_rld: true,
                slp_typ: 0xFF,
            },
            line,
        );
        assert_eq!(cnt.read_value(), 0x1C03);
    }
}

#[cfg(test)]
mod power_button_tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Default, Clone)]
    struct Line(Arc<Mutex<Vec<bool>>>);

    impl LevelLine for Line {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    fn write16(dev: &mut Pm1Event, offset: u16, v: u16) {
        dev.pio_write(PioAddress(0x600), offset, &v.to_le_bytes());
    }

    fn read16(dev: &mut Pm1Event, offset: u16) -> u16 {
        let mut b = [0u8; 2];
        dev.pio_read(PioAddress(0x600), offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn the_power_button_raises_the_sci_until_the_guest_clears_it() {
        let line = Line::default();
        let mut dev = Pm1Event::with_sci(Box::new(line.clone()));
        // Not enabled yet: status only.
        dev.press_power_button();
        assert_eq!(read16(&mut dev, 0) & 0x100, 0x100);
        assert!(line.0.lock().unwrap().is_empty());
        // Enabling with the status pending raises it.
        write16(&mut dev, 2, 0x100);
        assert_eq!(*line.0.lock().unwrap(), [true]);
        // Writing 0 to the status changes nothing; writing 1 clears.
        write16(&mut dev, 0, 0);
        assert!(dev.sci_level());
        write16(&mut dev, 0, 0x100);
        assert_eq!(*line.0.lock().unwrap(), [true, false]);
        assert_eq!(read16(&mut dev, 0), 0);
        // Enabled first, then pressed: raised at once.
        dev.press_power_button();
        assert_eq!(*line.0.lock().unwrap(), [true, false, true]);
        dev.reset();
        assert_eq!(*line.0.lock().unwrap(), [true, false, true, false]);
        assert_eq!(dev.state(), Pm1EventState::default());
    }
}
