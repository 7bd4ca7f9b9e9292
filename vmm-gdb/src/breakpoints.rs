//! Breakpoint bookkeeping: the software breakpoints the stub wrote into
//! guest memory (each `int3` with the byte it replaced), and the four
//! debug register slots (DR0 to DR3) that hardware breakpoints and
//! watchpoints share.
//!
//! Plain data, so that what gdb asks (`Z0` to `Z4` and their `z`s, in any
//! order, twice, for addresses never set) is tested without a guest.

use std::collections::BTreeMap;

/// The `int3` instruction.
pub const INT3: u8 = 0xcc;

/// How many hardware breakpoints there are.
pub const HW_SLOTS: usize = 4;

/// The most software breakpoints at once: far more than a debugging
/// session sets (gdb sets one per `break` location, a few per `next`),
/// and a bound on what a client can make the stub write into the guest
/// and keep, and restore one by one on its way out.
pub const MAX_SW: usize = 4096;

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

    /// Whether another can be set ([`MAX_SW`]).
    pub fn has_room(&self) -> bool {
        self.saved.len() < MAX_SW
    }

    /// Records a breakpoint at `addr` over `original`; false if one is
    /// already there (the guest byte is then our `int3`, not to be saved)
    /// or there is no room.
    pub fn insert(&mut self, addr: u64, original: u8) -> bool {
        if self.saved.contains_key(&addr) || !self.has_room() {
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

/// What a debug register slot stops for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// An instruction breakpoint (`hbreak`, `Z1`).
    Execute,
    /// A write watchpoint (`watch`, `Z2`).
    Write,
    /// A read-or-write watchpoint (`awatch`, `Z4`).
    Access,
}

/// One of DR0 to DR3 in use: `len` bytes (1, 2, 4 or 8) at `addr`,
/// aligned to `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwSlot {
    /// The linear address.
    pub addr: u64,
    /// 1, 2, 4 or 8 (1 for [`SlotKind::Execute`]).
    pub len: u8,
    /// What it stops for.
    pub kind: SlotKind,
}

/// What gdb asked for: a breakpoint, or a watchpoint over a region that
/// may take several slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    addr: u64,
    len: u64,
    kind: SlotKind,
}

/// The four debug address registers, shared by hardware breakpoints and
/// watchpoints. A watched region is cut into aligned pieces of 1, 2, 4
/// or 8 bytes (what DR7 can express), a slot each; a request that does
/// not fit in the free slots takes none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HwBreakpoints {
    slots: [Option<(HwSlot, Request)>; HW_SLOTS],
}

/// The aligned pieces of `len` bytes at `addr`, or `None` if they are
/// more than the four slots (or `len` is 0).
fn pieces(addr: u64, len: u64) -> Option<Vec<(u64, u8)>> {
    if len == 0 || len > 8 * HW_SLOTS as u64 {
        return None;
    }
    let mut out = Vec::new();
    let (mut at, mut left) = (addr, len);
    while left > 0 {
        let size = [8u8, 4, 2, 1]
            .into_iter()
            .find(|&s| at % u64::from(s) == 0 && u64::from(s) <= left)
            .unwrap_or(1);
        out.push((at, size));
        if out.len() > HW_SLOTS {
            return None;
        }
        at = at.wrapping_add(u64::from(size));
        left -= u64::from(size);
    }
    Some(out)
}

impl HwBreakpoints {
    /// Takes a free slot for an instruction breakpoint at `addr`: false
    /// if all four are used. Setting the same address twice takes one
    /// slot.
    pub fn insert(&mut self, addr: u64) -> bool {
        self.take(Request {
            addr,
            len: 1,
            kind: SlotKind::Execute,
        })
    }

    /// Frees the slot of the instruction breakpoint at `addr`; false if
    /// none held it.
    pub fn remove(&mut self, addr: u64) -> bool {
        self.free(Request {
            addr,
            len: 1,
            kind: SlotKind::Execute,
        })
    }

    /// Takes as many free slots as watching `len` bytes at `addr` for
    /// `kind` needs (the region cut into aligned pieces): false, and no
    /// slot taken, if they are not free. The same watchpoint twice takes
    /// its slots once.
    pub fn insert_watch(&mut self, addr: u64, len: u64, kind: SlotKind) -> bool {
        if kind == SlotKind::Execute {
            return false;
        }
        self.take(Request { addr, len, kind })
    }

    /// Frees the slots of the watchpoint gdb set with these values; false
    /// if there was none.
    pub fn remove_watch(&mut self, addr: u64, len: u64, kind: SlotKind) -> bool {
        self.free(Request { addr, len, kind })
    }

    fn take(&mut self, request: Request) -> bool {
        if self.slots.iter().flatten().any(|(_, r)| *r == request) {
            return true;
        }
        let Some(pieces) = pieces(request.addr, request.len) else {
            return false;
        };
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        if pieces.len() > free {
            return false;
        }
        let mut free_slots = self.slots.iter_mut().filter(|s| s.is_none());
        for (addr, len) in pieces {
            if let Some(slot) = free_slots.next() {
                *slot = Some((
                    HwSlot {
                        addr,
                        len,
                        kind: request.kind,
                    },
                    request,
                ));
            }
        }
        true
    }

    fn free(&mut self, request: Request) -> bool {
        let mut found = false;
        for slot in &mut self.slots {
            if slot.is_some_and(|(_, r)| r == request) {
                *slot = None;
                found = true;
            }
        }
        found
    }

    /// DR0 to DR3.
    pub fn slots(&self) -> [Option<HwSlot>; HW_SLOTS] {
        self.slots.map(|s| s.map(|(slot, _)| slot))
    }

    /// The slot that fired, from DR6's B0..B3 (`hits`, bit n for DRn):
    /// the lowest one in use (the processor may also flag slots that are
    /// not enabled).
    pub fn hit(&self, hits: u8) -> Option<HwSlot> {
        (0..HW_SLOTS)
            .filter(|n| hits & (1 << n) != 0)
            .find_map(|n| self.slots[n].map(|(slot, _)| slot))
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
    fn software_breakpoints_are_bounded() {
        let mut bp = SwBreakpoints::default();
        for a in 0..MAX_SW as u64 {
            assert!(bp.insert(a, 0x90));
        }
        assert!(!bp.has_room());
        assert!(!bp.insert(u64::MAX, 0x90), "one past the most");
        assert!(!bp.contains(u64::MAX));
        assert_eq!(bp.remove(0), Some(0x90));
        assert!(bp.insert(u64::MAX, 0x90), "room again");
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
        assert_eq!(
            hw.slots().map(|s| s.map(|s| s.addr)),
            [Some(0x10), None, Some(0x30), Some(0x40)]
        );
        assert!(hw.insert(0x50));
        assert_eq!(hw.slots()[1].map(|s| s.addr), Some(0x50));
        assert_eq!(hw.slots()[1].map(|s| s.kind), Some(SlotKind::Execute));
        hw.clear();
        assert_eq!(hw.slots(), [None; 4]);
    }

    fn slot(addr: u64, len: u8, kind: SlotKind) -> Option<HwSlot> {
        Some(HwSlot { addr, len, kind })
    }

    #[test]
    fn watchpoints_and_breakpoints_share_the_slots() {
        use SlotKind::{Access, Execute, Write};
        let mut hw = HwBreakpoints::default();
        assert!(hw.insert(0x1000));
        assert!(hw.insert_watch(0x2000, 8, Write));
        assert!(hw.insert_watch(0x3002, 2, Access));
        assert!(hw.insert_watch(0x2000, 8, Write), "the same again");
        assert_eq!(
            hw.slots(),
            [
                slot(0x1000, 1, Execute),
                slot(0x2000, 8, Write),
                slot(0x3002, 2, Access),
                None
            ]
        );
        // A 4-byte region takes the last slot; then nothing fits.
        assert!(hw.insert_watch(0x4000, 4, Write));
        assert!(!hw.insert(0x5000));
        assert!(!hw.insert_watch(0x5000, 1, Access));
        // A watchpoint's removal names what was set: another length or
        // kind is another watchpoint.
        assert!(!hw.remove_watch(0x2000, 4, Write));
        assert!(!hw.remove_watch(0x2000, 8, Access));
        assert!(!hw.remove(0x2000), "not a breakpoint");
        assert!(hw.remove_watch(0x2000, 8, Write));
        assert!(hw.insert(0x5000));
        assert_eq!(hw.slots()[1], slot(0x5000, 1, Execute));
        // Execute is for breakpoints only.
        assert!(!hw.insert_watch(0x6000, 1, Execute));
    }

    #[test]
    fn unaligned_regions_take_several_slots() {
        use SlotKind::Write;
        let mut hw = HwBreakpoints::default();
        // 12 bytes at ...4: 4 at ...4, 8 at ...8.
        assert!(hw.insert_watch(0x1004, 12, Write));
        assert_eq!(
            hw.slots(),
            [slot(0x1004, 4, Write), slot(0x1008, 8, Write), None, None]
        );
        // 3 bytes at ...1 needs a 1 and a 2: two slots, both free.
        assert!(hw.insert_watch(0x2001, 3, Write));
        assert_eq!(
            hw.slots()[2..],
            [slot(0x2001, 1, Write), slot(0x2002, 2, Write)]
        );
        // Removing the first frees both of its slots.
        assert!(hw.remove_watch(0x1004, 12, Write));
        assert_eq!(hw.slots()[..2], [None, None]);
        // 7 bytes at ...1: 1 + 2 + 4, three slots; only two are free:
        // refused, nothing taken.
        assert!(!hw.insert_watch(0x3001, 7, Write));
        assert_eq!(hw.slots()[..2], [None, None]);
        // Too long or empty: refused.
        let mut empty = HwBreakpoints::default();
        assert!(!empty.insert_watch(0x1000, 0, Write));
        assert!(!empty.insert_watch(0x1000, 40, Write));
        assert!(!empty.insert_watch(0x1001, 32, Write), "five pieces");
        assert!(empty.insert_watch(0x1000, 32, Write), "four of 8");
        assert_eq!(empty.slots()[3], slot(0x1018, 8, Write));
        // At the top of the address space: no overflow.
        let mut top = HwBreakpoints::default();
        assert!(top.insert_watch(u64::MAX - 1, 2, Write));
    }

    #[test]
    fn a_hit_names_its_slot() {
        use SlotKind::{Access, Write};
        let mut hw = HwBreakpoints::default();
        assert!(hw.insert(0x1000));
        assert!(hw.insert_watch(0x2000, 8, Write));
        assert!(hw.insert_watch(0x3000, 4, Access));
        assert_eq!(hw.hit(0b0010), slot(0x2000, 8, Write));
        assert_eq!(hw.hit(0b0100), slot(0x3000, 4, Access));
        assert_eq!(hw.hit(0b0001), slot(0x1000, 1, SlotKind::Execute));
        // A slot not in use flagged beside one in use: the one in use.
        assert_eq!(hw.hit(0b1100), slot(0x3000, 4, Access));
        assert_eq!(hw.hit(0b1000), None);
        assert_eq!(hw.hit(0), None);
    }
}
