//! Guest-virtual to guest-physical addresses, by walking the guest's own
//! page tables in guest memory (what QEMU's `cpu_get_phys_page_debug` does
//! for the gdb stub and the monitor's `x`).
//!
//! The walk follows the mode the vCPU is in, from its control registers:
//!
//! - real mode (CR0.PE = 0) and protected mode without paging
//!   (CR0.PG = 0): the linear address is the physical one;
//! - 32-bit paging (CR0.PG, no CR4.PAE): two levels, 4 MiB pages with
//!   CR4.PSE;
//! - PAE paging (CR4.PAE, no EFER.LMA): three levels, 2 MiB pages;
//! - 4-level long mode (EFER.LMA), 5-level with CR4.LA57: 1 GiB and 2 MiB
//!   pages.
//!
//! Nothing here trusts guest memory: a missing entry or a table outside
//! RAM is an error, never a panic, and a walk is at most five reads.

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: 64-bit page table entries.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// An entry's present bit.
const PRESENT: u64 = 1;
/// An entry's page-size bit (a large page at this level).
const PAGE_SIZE: u64 = 1 << 7;
/// The physical address bits of a 64-bit entry (up to 52-bit addresses).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Guest physical memory, as the walk reads it.
pub trait PhysMemory {
    /// The little-endian `u64` at `gpa`, or `None` outside RAM.
    fn read_u64(&self, gpa: u64) -> Option<u64>;

    /// The little-endian `u32` at `gpa`, or `None` outside RAM.
    fn read_u32(&self, gpa: u64) -> Option<u32> {
        // The low half of the u64 there (a u32 at the end of RAM, whose
        // next four bytes are outside, is not a page table entry anyone
        // uses).
        self.read_u64(gpa).map(|v| v as u32)
    }
}

/// The control registers that decide how a vCPU translates addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3: the top table.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Where a virtual address lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address.
    pub gpa: u64,
    /// How many bytes from there on stay in the same page (so in
    /// contiguous physical memory).
    pub len_in_page: u64,
}

/// Why an address does not translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// No present entry maps it.
    #[error("{addr:#x} is not mapped (no present entry at level {level})")]
    NotPresent {
        /// The virtual address.
        addr: u64,
        /// The table level where the walk stopped (1: the page table).
        level: u8,
    },
    /// A page table lies outside guest RAM.
    #[error("a page table of {addr:#x} lies outside guest RAM ({table:#x})")]
    TableOutsideRam {
        /// The virtual address.
        addr: u64,
        /// The entry's physical address.
        table: u64,
    },
    /// The address is not canonical in long mode.
    #[error("{addr:#x} is not a canonical address")]
    NotCanonical {
        /// The virtual address.
        addr: u64,
    },
}

/// Translates the linear address `addr` as a vCPU with `regs` would.
pub fn translate(
    regs: &PagingRegs,
    addr: u64,
    mem: &impl PhysMemory,
) -> Result<Translation, TranslateError> {
    if regs.cr0 & CR0_PE == 0 || regs.cr0 & CR0_PG == 0 {
        // Real mode and unpaged protected mode: linear is physical. A
        // "page" here is the rest of the 4 KiB frame, so a long read is
        // split the same way as under paging.
        return Ok(Translation {
            gpa: addr,
            len_in_page: 0x1000 - (addr & 0xfff),
        });
    }
    if regs.cr4 & CR4_PAE == 0 {
        return walk_32bit(regs, addr, mem);
    }
    if regs.efer & EFER_LMA == 0 {
        // PAE: CR3 points at four 8-byte PDPTEs (32-byte aligned), then
        // the page directory and page table as in long mode.
        let addr = addr & 0xffff_ffff;
        let pdpte_at = (regs.cr3 & 0xffff_ffe0) + ((addr >> 30) & 3) * 8;
        let pdpte = read_entry(mem, addr, pdpte_at)?;
        if pdpte & PRESENT == 0 {
            return Err(TranslateError::NotPresent { addr, level: 3 });
        }
        return walk_levels(pdpte & ADDR_MASK, addr, 2, mem);
    }
    let levels = if regs.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let bits = 12 + 9 * levels;
    // Canonical: bits 63..bits-1 all equal.
    let top = (addr as i64) >> (bits - 1);
    if top != 0 && top != -1 {
        return Err(TranslateError::NotCanonical { addr });
    }
    walk_levels(regs.cr3 & ADDR_MASK, addr, levels, mem)
}

/// Reads an entry, outside RAM being an error.
fn read_entry(mem: &impl PhysMemory, addr: u64, at: u64) -> Result<u64, TranslateError> {
    mem.read_u64(at)
        .ok_or(TranslateError::TableOutsideRam { addr, table: at })
}

/// The 64-bit-entry walk from `table` at `level` down to level 1 (4 KiB
/// pages); levels 3 (1 GiB) and 2 (2 MiB) may map a large page.
fn walk_levels(
    mut table: u64,
    addr: u64,
    level: u32,
    mem: &impl PhysMemory,
) -> Result<Translation, TranslateError> {
    for level in (1..=level).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (addr >> shift) & 0x1ff;
        let entry = read_entry(mem, addr, table + index * 8)?;
        if entry & PRESENT == 0 {
            return Err(TranslateError::NotPresent {
                addr,
                level: level as u8,
            });
        }
        if level == 1 || (level <= 3 && entry & PAGE_SIZE != 0) {
            let size = 1u64 << shift;
            let base = entry & ADDR_MASK & !(size - 1);
            let offset = addr & (size - 1);
            return Ok(Translation {
                gpa: base + offset,
                len_in_page: size - offset,
            });
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 always returns")
}

/// 32-bit paging: 4-byte entries, a page directory and page tables; a
/// 4 MiB page where CR4.PSE allows it.
fn walk_32bit(
    regs: &PagingRegs,
    addr: u64,
    mem: &impl PhysMemory,
) -> Result<Translation, TranslateError> {
    let addr = addr & 0xffff_ffff;
    let read = |at: u64| {
        mem.read_u32(at)
            .map(u64::from)
            .ok_or(TranslateError::TableOutsideRam { addr, table: at })
    };
    let pde = read((regs.cr3 & 0xffff_f000) + (addr >> 22) * 4)?;
    if pde & PRESENT == 0 {
        return Err(TranslateError::NotPresent { addr, level: 2 });
    }
    if regs.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE != 0 {
        // Bits 13..20 of a 4 MiB PDE are physical bits 32..39 (PSE-36).
        let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
        let offset = addr & 0x3f_ffff;
        return Ok(Translation {
            gpa: base + offset,
            len_in_page: 0x40_0000 - offset,
        });
    }
    let pte = read((pde & 0xffff_f000) + ((addr >> 12) & 0x3ff) * 4)?;
    if pte & PRESENT == 0 {
        return Err(TranslateError::NotPresent { addr, level: 1 });
    }
    let offset = addr & 0xfff;
    Ok(Translation {
        gpa: (pte & 0xffff_f000) + offset,
        len_in_page: 0x1000 - offset,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Guest RAM of `size` bytes, as 8-byte words (absent ones read 0).
    struct FakeRam {
        size: u64,
        words: HashMap<u64, u64>,
    }

    impl FakeRam {
        fn new(size: u64) -> Self {
            Self {
                size,
                words: HashMap::new(),
            }
        }
        fn put(&mut self, gpa: u64, value: u64) {
            self.words.insert(gpa, value);
        }
        fn put32(&mut self, gpa: u64, value: u32) {
            let word = gpa & !7;
            let old = self.words.get(&word).copied().unwrap_or(0);
            let shift = (gpa & 7) * 8;
            let new = (old & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
            self.words.insert(word, new);
        }
    }

    impl PhysMemory for FakeRam {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            (gpa.checked_add(8)? <= self.size && gpa % 8 == 0)
                .then(|| self.words.get(&gpa).copied().unwrap_or(0))
        }
        fn read_u32(&self, gpa: u64) -> Option<u32> {
            let word = self.read_u64(gpa & !7)?;
            Some((word >> ((gpa & 7) * 8)) as u32)
        }
    }

    const P: u64 = PRESENT | 2; // present, writable

    fn long_mode(cr3: u64) -> PagingRegs {
        PagingRegs {
            cr0: CR0_PE | CR0_PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
    fn four_levels() -> FakeRam {
        let mut ram = FakeRam::new(16 << 20);
        // 0xffff_8000_0000_0000 + ... : PML4 index 256.
        ram.put(0x1000 + 256 * 8, 0x2000 | P);
        ram.put(0x1000, 0x2000 | P); // index 0 too
        ram.put(0x2000, 0x3000 | P); // PDPT[0] -> PD
        ram.put(0x2000 + 8, 0x4000_0000 | P | PAGE_SIZE); // PDPT[1]: 1 GiB page
        ram.put(0x3000, 0x4000 | P); // PD[0] -> PT
        ram.put(0x3000 + 8, 0x60_0000 | P | PAGE_SIZE); // PD[1]: 2 MiB page at 6 MiB
        ram.put(0x4000 + 5 * 8, 0x9000 | P); // PT[5]: 0x5000 -> 0x9000
        ram
    }

    #[test]
    fn unpaged_modes_are_identity() {
        let ram = FakeRam::new(0x10000);
        for cr0 in [0, CR0_PE] {
            let regs = PagingRegs {
                cr0,
                ..Default::default()
            };
            assert_eq!(
                translate(&regs, 0x1_0ff8, &ram),
                Ok(Translation {
                    gpa: 0x1_0ff8,
                    len_in_page: 8
                })
            );
        }
    }

    #[test]
    fn long_mode_4k_2m_1g_pages() {
        let ram = four_levels();
        let regs = long_mode(0x1000);
        assert_eq!(
            translate(&regs, 0x5123, &ram),
            Ok(Translation {
                gpa: 0x9123,
                len_in_page: 0x1000 - 0x123
            })
        );
        assert_eq!(
            translate(&regs, 0x20_0010, &ram),
            Ok(Translation {
                gpa: 0x60_0010,
                len_in_page: 0x20_0000 - 0x10
            })
        );
        assert_eq!(
            translate(&regs, 0x4000_1234, &ram).map(|t| t.gpa),
            Ok(0x4000_1234)
        );
        // The higher half goes through PML4 index 256.
        assert_eq!(
            translate(&regs, 0xffff_8000_0000_5000, &ram).map(|t| t.gpa),
            Ok(0x9000)
        );
    }

    #[test]
    fn unmapped_and_bad_addresses_are_errors() {
        let ram = four_levels();
        let regs = long_mode(0x1000);
        assert_eq!(
            translate(&regs, 0x6000, &ram),
            Err(TranslateError::NotPresent {
                addr: 0x6000,
                level: 1
            })
        );
        assert_eq!(
            translate(&regs, 0x0000_0080_0000_0000, &ram),
            Err(TranslateError::NotPresent {
                addr: 0x0000_0080_0000_0000,
                level: 4
            })
        );
        assert_eq!(
            translate(&regs, 0x0000_8000_0000_0000, &ram),
            Err(TranslateError::NotCanonical {
                addr: 0x0000_8000_0000_0000
            })
        );
        // CR3 outside RAM, and an entry pointing outside RAM.
        assert!(matches!(
            translate(&long_mode(0xffff_f000), 0, &ram),
            Err(TranslateError::TableOutsideRam { .. })
        ));
        let mut bad = four_levels();
        bad.put(0x3000, 0xf_0000_0000 | P);
        assert!(matches!(
            translate(&regs, 0x5000, &bad),
            Err(TranslateError::TableOutsideRam { .. })
        ));
    }

    #[test]
    fn five_levels() {
        let mut ram = four_levels();
        ram.put(0x8000, 0x1000 | P); // PML5[0] -> the PML4
        let mut regs = long_mode(0x8000);
        regs.cr4 |= CR4_LA57;
        assert_eq!(translate(&regs, 0x5008, &ram).map(|t| t.gpa), Ok(0x9008));
        // 57-bit canonical: bit 56 up equal.
        assert!(matches!(
            translate(&regs, 0x0100_0000_0000_0000, &ram),
            Err(TranslateError::NotCanonical { .. })
        ));
    }

    #[test]
    fn pae_paging() {
        let mut ram = FakeRam::new(16 << 20);
        ram.put(0x1000 + 8, 0x2000 | PRESENT); // PDPTE[1]: 1..2 GiB
        ram.put(0x2000, 0x40_0000 | P | PAGE_SIZE); // a 2 MiB page at 4 MiB
        ram.put(0x2000 + 8, 0x3000 | P); // a page table
        ram.put(0x3000 + 8 * 2, 0x7000 | P);
        let regs = PagingRegs {
            cr0: CR0_PE | CR0_PG,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(
            translate(&regs, 0x4000_0042, &ram).map(|t| t.gpa),
            Ok(0x40_0042)
        );
        assert_eq!(
            translate(&regs, 0x4020_2042, &ram).map(|t| t.gpa),
            Ok(0x7042)
        );
        assert!(matches!(
            translate(&regs, 0x42, &ram),
            Err(TranslateError::NotPresent { level: 3, .. })
        ));
    }

    #[test]
    fn two_level_32bit_paging() {
        let mut ram = FakeRam::new(16 << 20);
        ram.put32(0x1000, 0x2000 | PRESENT as u32); // PDE[0] -> PT
        ram.put32(0x1000 + 4, 0x40_0000 | (P | PAGE_SIZE) as u32); // PDE[1]: 4 MiB
        ram.put32(0x2000 + 3 * 4, 0x5000 | PRESENT as u32); // PTE[3]
        let mut regs = PagingRegs {
            cr0: CR0_PE | CR0_PG,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(translate(&regs, 0x3abc, &ram).map(|t| t.gpa), Ok(0x5abc));
        assert_eq!(
            translate(&regs, 0x41_0000, &ram),
            Ok(Translation {
                gpa: 0x41_0000,
                len_in_page: 0x3f_0000
            })
        );
        // Without PSE the PS bit means nothing: PDE[1] is a page table
        // (an empty one).
        regs.cr4 = 0;
        assert!(matches!(
            translate(&regs, 0x40_0000, &ram),
            Err(TranslateError::NotPresent { level: 1, .. })
        ));
        assert!(matches!(
            translate(&regs, 0x80_0000, &ram),
            Err(TranslateError::NotPresent { level: 2, .. })
        ));
    }
}
