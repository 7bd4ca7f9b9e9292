//! Breakpoint bookkeeping: the software breakpoints the stub wrote into
//! guest memory (each `int3` with the byte it replaced), and the four
//! hardware breakpoint slots (DR0 to DR3).
//!
//! Plain data, so that what gdb asks (`Z0`/`z0`, `Z1`/`z1`, in any order,
//! twice, for addresses never set) is tested without a guest.

use std::collections::BTreeMap;

/// The `int3` instruction.
pub const INT3: u8 = 0xcc;

/// How many hardware breakpoints there are.
pub const HW_SLOTS: usize = 4;

/// The software breakpoints in guest memory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SwBreakpoints {
    /// Address → the byte the `int3` replaced.
    saved: BTreeMap<u64, u8>,
}

impl SwBreakpoints {
    /// Whether one is set at `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.saved.contains_key(&addr)
    }

    /// Records a breakpoint at `addr` over `original`; false if one is
    /// already there (the guest byte is then our `int3`, not to be saved).
    pub fn insert(&mut self, addr: u64, original: u8) -> bool {
        if self.saved.contains_key(&addr) {
            return false;
        }
        self.saved.insert(addr, original);
        true
    }

    /// Forgets the breakpoint at `addr`: the byte to put back, if one was
    /// set.
    pub fn remove(&mut self, addr: u64) -> Option<u8> {
        self.saved.remove(&addr)
    }

    /// Forgets them all: each address and the byte to put back.
    pub fn take_all(&mut self) -> Vec<(u64, u8)> {
        std::mem::take(&mut self.saved).into_iter().collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.saved.is_empty()
    }

    /// Puts the original bytes back into `buf`, read from guest memory at
    /// `addr`: a debugger reading memory sees the guest's code, not our
    /// `int3`s.
    pub fn shadow(&self, addr: u64, buf: &mut [u8]) {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return;
        };
        for (&at, &byte) in self.saved.range(addr..end) {
            buf[(at - addr) as usize] = byte;
        }
    }
}

/// The hardware breakpoint slots.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HwBreakpoints {
    slots: [Option<u64>; HW_SLOTS],
}

impl HwBreakpoints {
    /// Takes a free slot for `addr`: false if all four are used. Setting
    /// the same address twice takes one slot.
    pub fn insert(&mut self, addr: u64) -> bool {
        if self.slots.contains(&Some(addr)) {
            return true;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(addr);
                true
            }
            None => false,
        }
    }

    /// Frees the slot of `addr`; false if none held it.
    pub fn remove(&mut self, addr: u64) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(addr)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }

    /// DR0 to DR3.
    pub fn slots(&self) -> [Option<u64>; HW_SLOTS] {
        self.slots
    }

    /// Frees every slot.
    pub fn clear(&mut self) {
        self.slots = [None; HW_SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_breakpoints_keep_the_first_original() {
        let mut bp = SwBreakpoints::default();
        assert!(bp.is_empty());
        assert!(bp.insert(0x1000, 0x90));
        // gdb setting it again must not save our own int3 as original.
        assert!(!bp.insert(0x1000, INT3));
        assert!(bp.contains(0x1000));
        assert_eq!(bp.remove(0x1000), Some(0x90));
        assert_eq!(bp.remove(0x1000), None);
        assert_eq!(bp.remove(0x2000), None);
    }

    #[test]
    fn reads_see_the_original_bytes() {
        let mut bp = SwBreakpoints::default();
        bp.insert(0x1001, 0x41);
        bp.insert(0x1003, 0x42);
        bp.insert(0x2000, 0x43);
        let mut buf = [INT3, INT3, 0, INT3];
        bp.shadow(0x1000, &mut buf);
        assert_eq!(buf, [INT3, 0x41, 0, 0x42]);
        // At the very top of the address space: no overflow.
        let mut top = [0u8; 4];
        bp.shadow(u64::MAX - 1, &mut top);
        bp.shadow(u64::MAX, &mut []);
        let all = bp.take_all();
        assert_eq!(all, [(0x1001, 0x41), (0x1003, 0x42), (0x2000, 0x43)]);
        assert!(bp.is_empty());
    }

    #[test]
    fn four_hardware_slots() {
        let mut hw = HwBreakpoints::default();
        for a in 1..=4 {
            assert!(hw.insert(a * 0x10));
        }
        assert!(hw.insert(0x20), "the same address again");
        assert!(!hw.insert(0x50), "a fifth");
        assert!(hw.remove(0x20));
        assert!(!hw.remove(0x20));
        assert_eq!(hw.slots(), [Some(0x10), None, Some(0x30), Some(0x40)]);
        assert!(hw.insert(0x50));
        assert_eq!(hw.slots()[1], Some(0x50));
        hw.clear();
        assert_eq!(hw.slots(), [None; 4]);
    }
}
