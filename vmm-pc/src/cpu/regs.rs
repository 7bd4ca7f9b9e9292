//! The boot CPU's registers for each way into the guest, and the tables
//! (GDT, IDT, identity page tables) those registers point at.
//!
//! [`boot_regs`] and [`boot_sregs`] are pure; [`write_boot_gdt_idt`] and
//! [`write_identity_page_tables`] only touch guest memory;
//! [`apply_boot_regs`] issues the ioctls.
//!
//! | | Linux 64-bit | PVH | real mode |
//! | --- | --- | --- | --- |
//! | mode | long mode, paging on | 32-bit protected, paging off | real |
//! | `CS`/`DS` | 0x10 / 0x18 (64-bit / flat) | 0x10 / 0x18 (32-bit flat) | `segment` / 0 |
//! | `CR0` | PE, ET, PG | PE, ET | as reset |
//! | `CR3`/`CR4`/`EFER` | [`PML4_START`] / PAE / LME, LMA | 0 / 0 / 0 | as reset |
//! | GPRs | `RSI` = zero page, `RSP` = `RBP` = [`BOOT_STACK_POINTER`] | `RBX` = `hvm_start_info` | none |
//!
//! `RFLAGS` is 0x2 (only the always-one bit) in every case: interrupts off,
//! as both protocols require.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;

use super::gdt::{
    boot_gdt, segment_from_gdt, CodeMode, BOOT_GDT_ENTRIES, BOOT_GDT_LIMIT, BOOT_IDT_LIMIT,
    CODE_INDEX, DATA_INDEX, TSS_INDEX,
};
use super::CpuError;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};

/// CR0: protected mode enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on anything since the 486).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, reserved and always one.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Page-table entry: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry: maps a 2 MiB page instead of pointing at a table.
pub const PDE_PAGE_SIZE: u64 = 1 << 7;
/// Size of a large page mapped by one page-directory entry.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// How much the identity map covers: one page directory's 512 large pages.
pub const IDENTITY_MAP_SIZE: u64 = 512 * LARGE_PAGE_SIZE;

/// x87 control word after `FNINIT`: all exceptions masked, 64-bit precision.
pub const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
pub const FPU_MXCSR: u32 = 0x1f80;

/// Where the boot CPU starts executing, and what it is handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// The Linux x86 64-bit boot protocol: long mode with the low 1 GiB
    /// identity mapped, `RSI` pointing at `struct boot_params`.
    Linux64 {
        /// Guest-physical (= virtual, identity mapped) entry point: `RIP`.
        entry: u64,
        /// Address of the zero page (`struct boot_params`): `RSI`.
        zero_page: u64,
    },
    /// The Xen PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit flat protected
    /// mode, paging off, `EBX` pointing at `struct hvm_start_info`.
    Pvh {
        /// 32-bit entry point: `RIP`.
        entry: u64,
        /// Address of `hvm_start_info`: `RBX`.
        start_info: u64,
    },
    /// Real mode at `segment:offset`, for small hand-assembled test guests.
    /// Nothing is written to guest memory.
    RealMode {
        /// `CS` selector; the base is `segment * 16`.
        segment: u16,
        /// `IP`.
        offset: u16,
    },
}

/// General-purpose registers at entry.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match *entry {
        BootEntry::Linux64 { entry, zero_page } => {
            regs.rip = entry;
            regs.rsi = zero_page;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::RealMode { offset, .. } => regs.rip = u64::from(offset),
    }
    regs
}

/// Special registers at entry, starting from `base` (what `KVM_GET_SREGS`
/// returns for a fresh vCPU, so fields we do not set, such as `apic_base`,
/// keep KVM's values). Control registers and `EFER` are set outright, not
/// OR-ed: the reset `CR0` has CD and NW set, which we do not want to keep.
pub fn boot_sregs(entry: &BootEntry, base: kvm_sregs) -> kvm_sregs {
    let mut sregs = base;
    let (mode, cr0, cr3, cr4, efer) = match entry {
        BootEntry::RealMode { segment, .. } => return real_mode_sregs(*segment, base),
        BootEntry::Linux64 { .. } => (
            CodeMode::Long,
            CR0_PE | CR0_ET | CR0_PG,
            PML4_START,
            CR4_PAE,
            EFER_LME | EFER_LMA,
        ),
        BootEntry::Pvh { .. } => (CodeMode::Protected32, CR0_PE | CR0_ET, 0, 0, 0),
    };

    let gdt = boot_gdt(mode);
    let code = segment_from_gdt(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_gdt(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[usize::from(TSS_INDEX)], TSS_INDEX);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = BOOT_GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = BOOT_IDT_LIMIT;

    sregs.cr0 = cr0;
    sregs.cr3 = cr3;
    sregs.cr4 = cr4;
    sregs.efer = efer;
    sregs
}

/// A real-mode segment with selector `selector`: base `selector * 16`,
/// limit 64 KiB, present, accessed, `type_` 0xB (code) or 0x3 (data), as
/// after INIT.
fn real_mode_segment(selector: u16, type_: u8) -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        base: u64::from(selector) << 4,
        limit: 0xFFFF,
        selector,
        type_,
        present: 1,
        s: 1,
        ..Default::default()
    }
}

/// Real mode at `segment:0`, as after INIT, whatever mode the vCPU was in
/// (a wake-up from S3 starts a CPU that ran a 64-bit kernel): `CR0` at its
/// reset value (ET, CD, NW), paging and long mode off, flat 64 KiB data
/// segments at 0, `CS` = `segment`, GDTR and IDTR base 0 limit 0xFFFF, TR
/// and LDTR as at reset. `base`'s other fields (`apic_base`, the pending
/// interrupt bitmap) are kept.
fn real_mode_sregs(segment: u16, base: kvm_sregs) -> kvm_sregs {
    let data = real_mode_segment(0, 0x3);
    let mut sregs = base;
    sregs.cs = real_mode_segment(segment, 0xB);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_bindings::kvm_segment {
        limit: 0xFFFF,
        type_: 0xB,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_bindings::kvm_segment {
        limit: 0xFFFF,
        type_: 0x2,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = 0;
    sregs.gdt.limit = 0xFFFF;
    sregs.idt.base = 0;
    sregs.idt.limit = 0xFFFF;
    sregs.cr0 = CR0_RESET;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// `CR0` after RESET or INIT: ET, CD and NW.
const CR0_RESET: u64 = 0x6000_0010;

/// FPU/SSE state at entry (as after `FNINIT` and reset).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    }
}

/// Writes the boot GDT for `entry` at [`BOOT_GDT_START`] and an empty IDT
/// slot at [`BOOT_IDT_START`]. Real-mode entries need neither.
pub fn write_boot_gdt_idt(mem: &GuestRam, entry: &BootEntry) -> Result<(), CpuError> {
    let mode = match entry {
        BootEntry::Linux64 { .. } => CodeMode::Long,
        BootEntry::Pvh { .. } => CodeMode::Protected32,
        BootEntry::RealMode { .. } => return Ok(()),
    };
    let gdt: [u64; BOOT_GDT_ENTRIES] = boot_gdt(mode);
    for (i, descriptor) in (0u64..).zip(gdt) {
        write_u64(mem, BOOT_GDT_START + i * 8, descriptor, "boot GDT")?;
    }
    write_u64(mem, BOOT_IDT_START, 0, "boot IDT")
}

/// Writes 4-level page tables identity-mapping the first
/// [`IDENTITY_MAP_SIZE`] (1 GiB) with 2 MiB pages: `PML4[0]` -> the PDPT at
/// [`PDPTE_START`], `PDPT[0]` -> the page directory at [`PDE_START`], whose
/// 512 entries map `i * 2 MiB` present, writable, large. The other entries of
/// the PML4 and PDPT are left as they are (zero in fresh guest RAM).
pub fn write_identity_page_tables(mem: &GuestRam) -> Result<(), CpuError> {
    write_u64(
        mem,
        PML4_START,
        PDPTE_START | PTE_PRESENT | PTE_WRITABLE,
        "PML4",
    )?;
    write_u64(
        mem,
        PDPTE_START,
        PDE_START | PTE_PRESENT | PTE_WRITABLE,
        "page-directory-pointer table",
    )?;
    for i in 0..512u64 {
        let pde = (i * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE;
        write_u64(mem, PDE_START + i * 8, pde, "page directory")?;
    }
    Ok(())
}

fn write_u64(mem: &GuestRam, addr: u64, val: u64, what: &'static str) -> Result<(), CpuError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| CpuError::GuestMemory { what, source })
}

/// Puts the boot CPU at `entry`: writes the GDT/IDT (and for Linux the
/// identity page tables) into `mem`, then sets sregs (starting from the
/// vCPU's current ones), regs and the FPU.
pub fn apply_boot_regs(vcpu: &VcpuFd, mem: &GuestRam, entry: &BootEntry) -> Result<(), CpuError> {
    write_boot_gdt_idt(mem, entry)?;
    if let BootEntry::Linux64 { .. } = entry {
        write_identity_page_tables(mem)?;
    }
    let base = vcpu.get_sregs().map_err(CpuError::ioctl("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(entry, base))
        .map_err(CpuError::ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(CpuError::ioctl("KVM_SET_REGS"))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(CpuError::ioctl("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::cpu::gdt::{BOOT_CS, BOOT_DS, BOOT_TSS};
    use crate::layout::{PVH_INFO_START, ZERO_PAGE_START};

    const LINUX: BootEntry = BootEntry::Linux64 {
        entry: 0x100_0200,
        zero_page: ZERO_PAGE_START,
    };
    const PVH: BootEntry = BootEntry::Pvh {
        entry: 0x100_0000,
        start_info: PVH_INFO_START,
    };

    fn mem() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read_u64(mem: &GuestRam, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Roughly what KVM_GET_SREGS returns after vCPU creation.
    fn reset_sregs() -> kvm_sregs {
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        s.cs.selector = 0xf000;
        s.cs.base = 0xffff_0000;
        s
    }

    #[test]
    fn linux64_regs() {
        let regs = boot_regs(&LINUX);
        assert_eq!(regs.rip, 0x100_0200);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rflags, 0x2);
        assert_eq!(regs.rbx, 0);
    }

    #[test]
    fn pvh_regs() {
        let regs = boot_regs(&PVH);
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rbx, PVH_INFO_START);
        assert_eq!(regs.rflags, 0x2);
        assert_eq!((regs.rsi, regs.rsp), (0, 0));
    }

    #[test]
    fn linux64_sregs() {
        let s = boot_sregs(&LINUX, reset_sregs());
        assert_eq!(s.cr0, CR0_PE | CR0_ET | CR0_PG);
        assert_eq!(s.cr0 & 0x6000_0000, 0, "CD/NW must be cleared");
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr4, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.type_),
            (BOOT_CS, 1, 0, 0xb)
        );
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.base), (BOOT_DS, 0x3, 0));
            assert_eq!((seg.limit, seg.present, seg.s), (0xffff_ffff, 1, 1));
        }
        assert_eq!(
            (s.tr.selector, s.tr.type_, s.tr.s, s.tr.present),
            (BOOT_TSS, 0xb, 0, 1)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 7));
        assert_eq!(s.apic_base, 0xfee0_0900, "untouched fields are kept");
    }

    #[test]
    fn pvh_sregs() {
        let s = boot_sregs(&PVH, reset_sregs());
        assert_eq!(s.cr0, CR0_PE | CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db, s.cs.g), (BOOT_CS, 0, 1, 1));
        assert_eq!((s.cs.base, s.cs.limit, s.cs.type_), (0, 0xffff_ffff, 0xb));
        for seg in [s.ds, s.es, s.ss] {
            assert_eq!(
                (seg.selector, seg.base, seg.limit, seg.db),
                (BOOT_DS, 0, 0xffff_ffff, 1)
            );
        }
        // PVH ABI: TR a 32-bit busy TSS with base 0, limit 0x67.
        assert_eq!(
            (s.tr.type_, s.tr.base, s.tr.limit, s.tr.g),
            (0xb, 0, 0x67, 0)
        );
    }

    #[test]
    fn real_mode_sregs() {
        let entry = BootEntry::RealMode {
            segment: 0x100,
            offset: 0x10,
        };
        let s = boot_sregs(&entry, reset_sregs());
        assert_eq!((s.cs.selector, s.cs.base), (0x100, 0x1000));
        assert_eq!(s.cr0, 0x6000_0010);
        assert_eq!(boot_regs(&entry).rip, 0x10);
        let m = mem();
        write_boot_gdt_idt(&m, &entry).unwrap();
        assert_eq!(read_u64(&m, BOOT_GDT_START + 16), 0);
    }

    #[test]
    fn real_mode_from_long_mode() {
        // A CPU that ran a 64-bit kernel wakes from S3 in real mode.
        let long = boot_sregs(&LINUX, reset_sregs());
        let entry = BootEntry::RealMode {
            segment: 0x9a1b,
            offset: 7,
        };
        let s = boot_sregs(&entry, long);
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x6000_0010, 0, 0, 0));
        assert_eq!(
            (s.cs.selector, s.cs.base, s.cs.limit),
            (0x9a1b, 0x9_a1b0, 0xFFFF)
        );
        assert_eq!((s.cs.l, s.cs.db, s.cs.g, s.cs.type_), (0, 0, 0, 0xB));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(
                (seg.selector, seg.base, seg.limit, seg.type_),
                (0, 0, 0xFFFF, 3)
            );
            assert_eq!((seg.db, seg.g, seg.present, seg.s), (0, 0, 1, 1));
        }
        assert_eq!((s.gdt.base, s.idt.base, s.idt.limit), (0, 0, 0xFFFF));
        assert_eq!(s.apic_base, 0xfee0_0900, "kept from the vCPU");
    }

    #[test]
    fn gdt_and_idt_in_memory_decode_back() {
        let m = mem();
        for (entry, code) in [(LINUX, 0x00af_9b00_0000_ffff), (PVH, 0x00cf_9b00_0000_ffff)] {
            write_boot_gdt_idt(&m, &entry).unwrap();
            assert_eq!(read_u64(&m, BOOT_GDT_START), 0);
            assert_eq!(read_u64(&m, BOOT_GDT_START + 8), 0x0000_8b00_0000_0067);
            assert_eq!(read_u64(&m, BOOT_GDT_START + 16), code);
            assert_eq!(read_u64(&m, BOOT_GDT_START + 24), 0x00cf_9300_0000_ffff);
            assert_eq!(read_u64(&m, BOOT_IDT_START), 0);
            // What sregs caches is what the table in memory says.
            let s = boot_sregs(&entry, reset_sregs());
            let cs = segment_from_gdt(read_u64(&m, BOOT_GDT_START + u64::from(s.cs.selector)), 2);
            assert_eq!(cs, s.cs);
            let ds = segment_from_gdt(read_u64(&m, BOOT_GDT_START + u64::from(s.ds.selector)), 3);
            assert_eq!(ds, s.ds);
        }
    }

    #[test]
    fn identity_page_tables() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        assert_eq!(read_u64(&m, PML4_START), PDPTE_START | 0x3);
        assert_eq!(read_u64(&m, PML4_START + 8), 0);
        assert_eq!(read_u64(&m, PDPTE_START), PDE_START | 0x3);
        assert_eq!(read_u64(&m, PDPTE_START + 8), 0);
        assert_eq!(read_u64(&m, PDE_START), 0x83);
        assert_eq!(read_u64(&m, PDE_START + 8), 0x20_0083);
        assert_eq!(read_u64(&m, PDE_START + 511 * 8), 0x3fe0_0083);
        for i in 0..512 {
            assert_eq!(read_u64(&m, PDE_START + i * 8), (i << 21) | 0x83);
        }
    }

    #[test]
    fn writes_outside_memory_fail() {
        let small = GuestRam::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_identity_page_tables(&small),
            Err(CpuError::GuestMemory { what: "PML4", .. })
        ));
        let high = GuestRam::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(write_boot_gdt_idt(&high, &PVH).is_err());
    }

    #[test]
    fn fpu() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }
}
