//! The ACPI Watchdog Action Table (WDAT) for the i6300esb, so that an OS
//! with a generic WDAT driver (Linux's `wdat_wdt`) drives the watchdog as
//! `/dev/watchdog` with no driver for the chip.
//!
//! A WDAT lists watchdog actions (ping, set the countdown, start, stop, …)
//! each as a sequence of instructions: write a constant, write the
//! countdown, read and compare, on registers given as Generic Address
//! Structures. Ours name the chip's fixed window
//! ([`crate::layout::WATCHDOG_WINDOW`]), not its BAR, for two reasons
//! (both seen with Debian's 6.1 kernel, see docs/watchdog.md): Linux
//! claims the table's registers for a platform device while ACPI starts,
//! before the PCI core claims the BARs, so a BAR holding them looks taken
//! and is moved elsewhere; and the enable bit lives in configuration
//! space, which a WDAT reaches only through ECAM (which Linux reserves as
//! busy: `wdat_wdt` cannot map it) or ports 0xCF8/0xCFC (shared, unlocked,
//! with the kernel's own configuration accesses). The
//! window holds the same registers (the BAR's, then `ESB_LOCK`), so the
//! sequences are the chip's own: the 0x80, 0x86 unlock before each preload
//! and reload write. The table's PCI fields are 0xFF: Linux skips a WDAT
//! that names a PCI device.
//!
//! Counts: one count is [`PERIOD_MS`] ms; SET_COUNTDOWN writes the count
//! into both preloads, so the two stages of about 0.993 ms per tick add
//! up to about 1.986 ms per count (a 30 s timeout fires after about
//! 29.8 s).

use acpi_tables::sdt::Sdt;
use vmm_devices::i6300esb::{
    LOCK_ENABLE, PRELOAD1, PRELOAD2, PRELOAD_MASK, RELOAD, RELOAD_TIMEOUT, RELOAD_TIMER, UNLOCK1,
    UNLOCK2, WINDOW_LOCK,
};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::WATCHDOG_WINDOW;

/// The WDAT's own header after the common one: 32 bytes.
const WDAT_HEADER_LEN: u32 = 32;
/// Common header and WDAT header.
pub const WDAT_FIXED_LEN: u32 = 36 + WDAT_HEADER_LEN;
/// One action entry.
pub const ENTRY_LEN: usize = 24;
/// Milliseconds per count.
pub const PERIOD_MS: u32 = 2;
/// Flags: the watchdog is enabled (usable).
const FLAG_ENABLED: u8 = 1;

/// Actions (ACPI's WDAT action numbers).
pub mod action {
    /// Ping: restart the countdown.
    pub const RESET: u8 = 1;
    /// Read the programmed countdown.
    pub const GET_COUNTDOWN: u8 = 5;
    /// Set the countdown.
    pub const SET_COUNTDOWN: u8 = 6;
    /// Is it running?
    pub const GET_RUNNING_STATE: u8 = 8;
    /// Start it.
    pub const SET_RUNNING_STATE: u8 = 9;
    /// Is it stopped?
    pub const GET_STOPPED_STATE: u8 = 10;
    /// Stop it.
    pub const SET_STOPPED_STATE: u8 = 11;
    /// Did it fire (the timeout flag)?
    pub const GET_STATUS: u8 = 32;
    /// Clear the timeout flag.
    pub const SET_STATUS: u8 = 33;
}

/// Instructions.
pub mod instruction {
    /// Read, mask, compare with the value.
    pub const READ_VALUE: u8 = 0;
    /// Read, mask: the countdown.
    pub const READ_COUNTDOWN: u8 = 1;
    /// Write the value, masked.
    pub const WRITE_VALUE: u8 = 2;
    /// Write the countdown, masked.
    pub const WRITE_COUNTDOWN: u8 = 3;
}

/// A register of the window: offset and width in bytes.
#[derive(Clone, Copy)]
struct Reg(u64, u8);

const PRELOAD1_REG: Reg = Reg(PRELOAD1, 4);
const PRELOAD2_REG: Reg = Reg(PRELOAD2, 4);
const RELOAD_REG: Reg = Reg(RELOAD, 2);
const LOCK_REG: Reg = Reg(WINDOW_LOCK, 1);

/// One entry: action, instruction, a SystemMemory GAS, value, mask.
fn entry(action: u8, instruction: u8, reg: Reg, value: u32, mask: u32) -> [u8; ENTRY_LEN] {
    let Reg(offset, width) = reg;
    let mut e = [0u8; ENTRY_LEN];
    e[0] = action;
    e[1] = instruction;
    // GAS: SystemMemory (0), bit width, bit offset 0, access size
    // (1 byte, 2 word, 3 dword), address.
    e[4] = 0;
    e[5] = width * 8;
    e[6] = 0;
    e[7] = match width {
        1 => 1,
        2 => 2,
        _ => 3,
    };
    e[8..16].copy_from_slice(&(WATCHDOG_WINDOW + offset).to_le_bytes());
    e[16..20].copy_from_slice(&value.to_le_bytes());
    e[20..24].copy_from_slice(&mask.to_le_bytes());
    e
}

/// The unlock sequence, then `then`.
fn unlocked(action: u8, then: [u8; ENTRY_LEN]) -> [[u8; ENTRY_LEN]; 3] {
    use instruction::WRITE_VALUE;
    [
        entry(action, WRITE_VALUE, RELOAD_REG, UNLOCK1, 0xffff),
        entry(action, WRITE_VALUE, RELOAD_REG, UNLOCK2, 0xffff),
        then,
    ]
}

/// The entries, in order.
fn entries() -> Vec<[u8; ENTRY_LEN]> {
    use action::*;
    use instruction::*;
    let mut v = Vec::new();
    let reload = entry(RESET, WRITE_VALUE, RELOAD_REG, RELOAD_TIMER, 0xffff);
    v.extend(unlocked(RESET, reload));
    for reg in [PRELOAD1_REG, PRELOAD2_REG] {
        let write = entry(SET_COUNTDOWN, WRITE_COUNTDOWN, reg, 0, PRELOAD_MASK);
        v.extend(unlocked(SET_COUNTDOWN, write));
    }
    // The new count takes effect now if the timer runs.
    let reload = entry(SET_COUNTDOWN, WRITE_VALUE, RELOAD_REG, RELOAD_TIMER, 0xffff);
    v.extend(unlocked(SET_COUNTDOWN, reload));
    v.push(entry(
        GET_COUNTDOWN,
        READ_COUNTDOWN,
        PRELOAD2_REG,
        0,
        PRELOAD_MASK,
    ));
    let enable = u32::from(LOCK_ENABLE);
    v.push(entry(
        GET_RUNNING_STATE,
        READ_VALUE,
        LOCK_REG,
        enable,
        enable,
    ));
    v.push(entry(
        SET_RUNNING_STATE,
        WRITE_VALUE,
        LOCK_REG,
        enable,
        enable,
    ));
    v.push(entry(GET_STOPPED_STATE, READ_VALUE, LOCK_REG, 0, enable));
    v.push(entry(SET_STOPPED_STATE, WRITE_VALUE, LOCK_REG, 0, enable));
    v.push(entry(
        GET_STATUS,
        READ_VALUE,
        RELOAD_REG,
        RELOAD_TIMEOUT,
        RELOAD_TIMEOUT,
    ));
    let clear = entry(SET_STATUS, WRITE_VALUE, RELOAD_REG, RELOAD_TIMEOUT, 0xffff);
    v.extend(unlocked(SET_STATUS, clear));
    v
}

/// The WDAT.
pub fn wdat() -> Sdt {
    let entries = entries();
    let mut t = Sdt::new(
        *b"WDAT",
        WDAT_FIXED_LEN,
        1,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, WDAT_HEADER_LEN);
    // PCI segment, bus, device, function: none (0xFF).
    t.write_u16(40, 0xff);
    t.write_u8(42, 0xff);
    t.write_u8(43, 0xff);
    t.write_u8(44, 0xff);
    t.write_u32(48, PERIOD_MS);
    t.write_u32(52, PRELOAD_MASK); // max count
    t.write_u32(56, 1); // min count
    t.write_u8(60, FLAG_ENABLED);
    // At most a few dozen entries.
    t.write_u32(64, entries.len() as u32);
    for e in &entries {
        t.append_slice(e);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{sum, u32_at, u64_at};

    /// The entries of `action`, as (instruction, address, width, value,
    /// mask).
    fn of(t: &[u8], action: u8) -> Vec<(u8, u64, u8, u32, u32)> {
        let n = u32_at(t, 64) as usize;
        (0..n)
            .map(|i| &t[WDAT_FIXED_LEN as usize + i * ENTRY_LEN..][..ENTRY_LEN])
            .filter(|e| e[0] == action)
            .map(|e| {
                assert_eq!(e[4], 0, "SystemMemory");
                assert_eq!(e[5], 8 << (e[7] - 1), "bit width matches access size");
                (e[1], u64_at(e, 8), e[7], u32_at(e, 16), u32_at(e, 20))
            })
            .collect()
    }

    #[test]
    fn the_table_parses_back() {
        let t = wdat();
        let t = t.as_slice();
        assert_eq!(&t[..4], b"WDAT");
        assert_eq!(u32_at(t, 4) as usize, t.len());
        assert_eq!(sum(t), 0, "checksum");
        assert_eq!(u32_at(t, 36), 32);
        assert_eq!(&t[40..45], &[0xff, 0, 0xff, 0xff, 0xff], "no PCI device");
        assert_eq!(u32_at(t, 48), PERIOD_MS);
        assert!(u32_at(t, 56) <= u32_at(t, 52), "min <= max");
        assert_eq!(t[60] & 1, 1, "enabled");
        let n = u32_at(t, 64) as usize;
        assert_eq!(t.len(), WDAT_FIXED_LEN as usize + n * ENTRY_LEN);
        let w = WATCHDOG_WINDOW;
        let (unlock1, unlock2) = ((2, w + 0xc, 2, 0x80, 0xffff), (2, w + 0xc, 2, 0x86, 0xffff));
        assert_eq!(
            of(t, action::RESET),
            vec![unlock1, unlock2, (2, w + 0xc, 2, 0x100, 0xffff)]
        );
        let set = of(t, action::SET_COUNTDOWN);
        assert_eq!(set.len(), 9);
        assert_eq!(&set[..3], &[unlock1, unlock2, (3, w, 3, 0, 0xf_ffff)]);
        assert_eq!(set[5], (3, w + 4, 3, 0, 0xf_ffff));
        assert_eq!(set[8], (2, w + 0xc, 2, 0x100, 0xffff));
        assert_eq!(
            of(t, action::SET_RUNNING_STATE),
            vec![(2, w + 0x10, 1, 2, 2)]
        );
        assert_eq!(
            of(t, action::SET_STOPPED_STATE),
            vec![(2, w + 0x10, 1, 0, 2)]
        );
        assert_eq!(
            of(t, action::GET_RUNNING_STATE),
            vec![(0, w + 0x10, 1, 2, 2)]
        );
        assert_eq!(
            of(t, action::GET_COUNTDOWN),
            vec![(1, w + 4, 3, 0, 0xf_ffff)]
        );
        assert_eq!(of(t, action::GET_STATUS).len(), 1);
        assert_eq!(of(t, action::SET_STATUS).len(), 3);
    }

    /// Runs the table's instructions for `action` on a chip's window, as
    /// an OS's WDAT driver would.
    fn run(t: &[u8], chip: &mut vmm_devices::I6300Esb, action: u8, countdown: u32) -> Option<u32> {
        use vm_device::bus::MmioAddress;
        use vm_device::MutDeviceMmio;
        let mut result = None;
        for (instr, addr, access, value, mask) in of(t, action) {
            let off = addr - WATCHDOG_WINDOW;
            let width = 1usize << (access - 1);
            let mut b = [0u8; 4];
            match instr {
                instruction::READ_VALUE | instruction::READ_COUNTDOWN => {
                    chip.mmio_read(MmioAddress(WATCHDOG_WINDOW), off, &mut b[..width]);
                    let x = u32::from_le_bytes(b) & mask;
                    result = Some(if instr == 0 { u32::from(x == value) } else { x });
                }
                _ => {
                    let x = if instr == 2 { value } else { countdown } & mask;
                    let bytes = x.to_le_bytes();
                    chip.mmio_write(MmioAddress(WATCHDOG_WINDOW), off, &bytes[..width]);
                }
            }
        }
        result
    }

    #[test]
    fn the_sequences_drive_the_chip() {
        use vmm_clock::{ClockType, TimeSource};
        let time = std::sync::Arc::new(vmm_clock::FakeTime::with_wall(0));
        let clocks = vmm_clock::Clocks::new(time.clone() as std::sync::Arc<dyn TimeSource>);
        clocks.vm_start();
        let line = vmm_devices::EventFdTrigger::nonblocking().unwrap();
        let probe = line.try_clone().unwrap();
        let chip = vmm_devices::I6300Esb::new(&clocks, line);
        let t = wdat();
        let t = t.as_slice();
        let mut c = chip.lock().unwrap();
        // Probe: status, running state, countdown for 30 s.
        assert_eq!(run(t, &mut c, action::GET_STATUS, 0), Some(0));
        assert_eq!(run(t, &mut c, action::GET_RUNNING_STATE, 0), Some(0));
        run(t, &mut c, action::SET_COUNTDOWN, 30_000 / PERIOD_MS);
        assert_eq!(run(t, &mut c, action::GET_COUNTDOWN, 0), Some(15_000));
        assert_eq!(c.state().preload, [15_000, 15_000]);
        run(t, &mut c, action::SET_RUNNING_STATE, 0);
        assert_eq!(run(t, &mut c, action::GET_RUNNING_STATE, 0), Some(1));
        let deadline = c.state().deadline_ns.unwrap();
        // A ping moves the deadline.
        time.advance(1_000_000_000);
        run(t, &mut c, action::RESET, 0);
        assert_eq!(c.state().deadline_ns.unwrap(), deadline + 1_000_000_000);
        assert_eq!(c.state().unlock, 0, "every sequence ends locked");
        // Stopped: nothing fires.
        run(t, &mut c, action::SET_STOPPED_STATE, 0);
        assert_eq!(run(t, &mut c, action::GET_STOPPED_STATE, 0), Some(1));
        assert_eq!(c.state().deadline_ns, None);
        // Started and left alone: fires after both stages, about 29.8 s.
        run(t, &mut c, action::SET_RUNNING_STATE, 0);
        let start = clocks.now(ClockType::Virtual);
        drop(c);
        time.advance(29_700_000_000);
        clocks.run_all_timers();
        assert!(probe.event_fd().read().is_err(), "not yet");
        time.advance(200_000_000);
        clocks.run_all_timers();
        assert_eq!(probe.event_fd().read().unwrap(), 1);
        let mut c = chip.lock().unwrap();
        assert_eq!(
            c.state().deadline_ns,
            None,
            "{} ns after start",
            clocks.now(ClockType::Virtual) - start
        );
        assert_eq!(run(t, &mut c, action::GET_STATUS, 0), Some(1));
        run(t, &mut c, action::SET_STATUS, 0);
        assert_eq!(run(t, &mut c, action::GET_STATUS, 0), Some(0));
    }
}
