//! Segment descriptors and the boot GDT.
//!
//! A descriptor is 8 bytes (Intel SDM vol. 3, 3.4.5 "Segment Descriptors"):
//!
//! ```text
//! 63      56 55 54 53 52 51   48 47 46 45 44 43   40 39      16 15       0
//! base 31:24  G DB  L AVL lim 19:16 P  DPL  S  type   base 23:0   lim 15:0
//! ```
//!
//! [`gdt_entry`] packs one from a 16-bit `flags` word laid out as Linux's
//! `GDT_ENTRY(flags, base, limit)` (`arch/x86/include/asm/segment.h`):
//! bits 0-7 are the access byte (type, S, DPL, P) and bits 12-15 the
//! G/DB/L/AVL nibble. [`segment_from_gdt`] unpacks one into the
//! `kvm_segment` that `KVM_SET_SREGS` loads into the hidden segment cache.
//!
//! # The boot GDT
//!
//! Both direct-boot protocols start the guest with its own GDT already loaded,
//! so we write one at [`BOOT_GDT_START`] (four entries, up to
//! [`BOOT_IDT_START`]):
//!
//! | index | selector | entry |
//! | --- | --- | --- |
//! | 0 | 0x00 | null |
//! | 1 | 0x08 | TSS (busy, base 0, limit 0x67); `TR` points here |
//! | 2 | 0x10 | code: 64-bit (Linux) or 32-bit flat (PVH) |
//! | 3 | 0x18 | data: flat read/write |
//!
//! The Linux 64-bit boot protocol (`Documentation/arch/x86/boot.rst`,
//! "64-bit BOOT PROTOCOL") asks for a GDT with descriptors for
//! `__BOOT_CS` (0x10, execute/read) and `__BOOT_DS` (0x18, read/write),
//! `CS = __BOOT_CS` and `DS = ES = SS = __BOOT_DS`; hence code at index 2
//! and data at index 3, which leaves index 1 for the TSS. Firecracker and
//! Cloud Hypervisor use code 0x08 / data 0x10 / TSS 0x18 instead, which
//! Linux tolerates because its entry code loads its own GDT before relying
//! on a selector.
//!
//! The Xen PVH ABI (`docs/misc/pvh.pandoc`) leaves selector values
//! unspecified, and wants `CS` 32-bit flat execute/read, `DS`/`ES`/`SS`
//! 32-bit flat read/write and `TR` a 32-bit busy TSS with base 0 and limit
//! 0x67; the same table layout serves.
//!
//! In long mode a TSS descriptor is 16 bytes, so the upper half of ours
//! would overlap the code entry: nothing must `ltr 0x08`. Nobody does; the
//! guest loads its own GDT and TSS. `TR` only has to be valid for VM entry
//! (present, busy TSS type 11), which the cached descriptor is.

use kvm_bindings::kvm_segment;

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START};

/// Access byte: segment present.
pub const ACCESS_PRESENT: u16 = 1 << 7;
/// Access byte: code or data segment (clear for system segments like the TSS).
pub const ACCESS_CODE_DATA: u16 = 1 << 4;
/// Type (code/data): accessed. VMX requires it set on loaded `CS`/`SS`/`DS`.
pub const TYPE_ACCESSED: u16 = 1 << 0;
/// Type (code): readable; (data): writable.
pub const TYPE_READ_WRITE: u16 = 1 << 1;
/// Type: code segment (executable).
pub const TYPE_CODE: u16 = 1 << 3;
/// Type (system): busy 32-bit (or, in long mode, 64-bit) TSS.
pub const TYPE_TSS_BUSY: u16 = 0xb;
/// Flags nibble: 4 KiB granularity (limit is in pages).
pub const FLAG_GRANULARITY: u16 = 1 << 15;
/// Flags nibble: default operand size 32 bits (D/B).
pub const FLAG_32BIT: u16 = 1 << 14;
/// Flags nibble: 64-bit code segment (L).
pub const FLAG_LONG: u16 = 1 << 13;

/// 64-bit code: present, execute/read, accessed, L, 4 KiB granularity (0xa09b).
pub const CODE64_FLAGS: u16 = FLAG_GRANULARITY
    | FLAG_LONG
    | ACCESS_PRESENT
    | ACCESS_CODE_DATA
    | TYPE_CODE
    | TYPE_READ_WRITE
    | TYPE_ACCESSED;
/// 32-bit flat code: present, execute/read, accessed, D, 4 KiB granularity (0xc09b).
pub const CODE32_FLAGS: u16 = FLAG_GRANULARITY
    | FLAG_32BIT
    | ACCESS_PRESENT
    | ACCESS_CODE_DATA
    | TYPE_CODE
    | TYPE_READ_WRITE
    | TYPE_ACCESSED;
/// Flat data: present, read/write, accessed, B, 4 KiB granularity (0xc093).
pub const DATA_FLAGS: u16 = FLAG_GRANULARITY
    | FLAG_32BIT
    | ACCESS_PRESENT
    | ACCESS_CODE_DATA
    | TYPE_READ_WRITE
    | TYPE_ACCESSED;
/// Busy TSS: present system segment of type 11, byte granularity (0x008b).
pub const TSS_FLAGS: u16 = ACCESS_PRESENT | TYPE_TSS_BUSY;

/// A flat segment's 20-bit limit (4 GiB with 4 KiB granularity).
pub const FLAT_LIMIT: u32 = 0xf_ffff;
/// A 32-bit TSS's limit (104 bytes, as the PVH ABI asks).
pub const TSS_LIMIT: u32 = 0x67;

/// Number of entries in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 4;
/// GDT index of the TSS.
pub const TSS_INDEX: u16 = 1;
/// GDT index of the boot code segment.
pub const CODE_INDEX: u16 = 2;
/// GDT index of the boot data segment.
pub const DATA_INDEX: u16 = 3;
/// `__BOOT_CS` of the Linux boot protocol.
pub const BOOT_CS: u16 = CODE_INDEX * 8;
/// `__BOOT_DS` of the Linux boot protocol.
pub const BOOT_DS: u16 = DATA_INDEX * 8;
/// The selector `TR` holds.
pub const BOOT_TSS: u16 = TSS_INDEX * 8;
/// `GDTR.limit` for the boot GDT (size in bytes minus one).
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT_ENTRIES * 8 - 1) as u16;
/// `IDTR.limit` for the boot IDT: one empty 8-byte slot, so any exception
/// before the guest installs its own IDT escalates to a triple fault
/// (a shutdown exit) instead of running garbage.
pub const BOOT_IDT_LIMIT: u16 = 7;

// The GDT must fit below the IDT.
const _: () = assert!(BOOT_GDT_START + (BOOT_GDT_ENTRIES as u64) * 8 <= BOOT_IDT_START);

/// Packs a segment descriptor. `flags` holds the access byte in bits 0-7 and
/// the G/DB/L/AVL nibble in bits 12-15; bits 8-11 are ignored. `limit` is the
/// 20-bit raw limit (in pages if `FLAG_GRANULARITY` is set).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let access = u64::from(flags & 0xff);
    let nibble = u64::from(flags >> 12);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (nibble << 52)
        | ((base >> 24) << 56)
}

fn bit(entry: u64, n: u32) -> u8 {
    u8::from(entry & (1 << n) != 0)
}

/// The segment base encoded in a descriptor.
pub fn descriptor_base(entry: u64) -> u64 {
    ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24)
}

/// The byte-granular limit of a descriptor: with G set the 20-bit field
/// counts 4 KiB pages, so 0xfffff becomes 0xffff_ffff. KVM (like the VMCS)
/// takes the expanded 32-bit value in `kvm_segment::limit`.
pub fn descriptor_limit(entry: u64) -> u32 {
    let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    if bit(entry, 55) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// Unpacks the descriptor at GDT `index` into the `kvm_segment` a segment
/// register would cache after loading selector `index * 8` (RPL 0).
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: descriptor_base(entry),
        limit: descriptor_limit(entry),
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(entry, 44),
        dpl: ((entry >> 45) & 0x3) as u8,
        present,
        avl: bit(entry, 52),
        l: bit(entry, 53),
        db: bit(entry, 54),
        g: bit(entry, 55),
        unusable: 1 - present,
        padding: 0,
    }
}

/// Which code segment the boot GDT carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMode {
    /// 64-bit code (Linux 64-bit boot protocol).
    Long,
    /// 32-bit flat protected-mode code (PVH).
    Protected32,
}

/// The boot GDT (see the module docs for the layout).
pub fn boot_gdt(mode: CodeMode) -> [u64; BOOT_GDT_ENTRIES] {
    let code = match mode {
        CodeMode::Long => gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
        CodeMode::Protected32 => gdt_entry(CODE32_FLAGS, 0, FLAT_LIMIT),
    };
    [
        0,
        gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
        code,
        gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_words_match_the_usual_constants() {
        assert_eq!(CODE64_FLAGS, 0xa09b);
        assert_eq!(CODE32_FLAGS, 0xc09b);
        assert_eq!(DATA_FLAGS, 0xc093);
        assert_eq!(TSS_FLAGS, 0x008b);
        assert_eq!((BOOT_CS, BOOT_DS, BOOT_TSS), (0x10, 0x18, 0x08));
        assert_eq!(BOOT_GDT_LIMIT, 31);
    }

    #[test]
    fn entries_encode_like_linux_gdt_entry() {
        // Linux's compressed head_64.S boot GDT values.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x008b, 0, 0x67), 0x0000_8b00_0000_0067);
        // Base and limit bits land in their split fields.
        assert_eq!(gdt_entry(0, 0x1234_5678, 0xa_bcde), 0x120a_0034_5678_bcde);
    }

    #[test]
    fn entries_decode_back() {
        for (flags, base, limit) in [
            (0xa09b_u16, 0_u32, 0xfffff_u32),
            (0xc093, 0, 0xfffff),
            (0x008b, 0x1000, 0x67),
            (0x40f3, 0xdead_beef, 0x1_2345),
        ] {
            let entry = gdt_entry(flags, base, limit);
            let seg = segment_from_gdt(entry, 5);
            assert_eq!(seg.base, u64::from(base));
            let expect_limit = if flags & FLAG_GRANULARITY != 0 {
                (limit << 12) | 0xfff
            } else {
                limit
            };
            assert_eq!(seg.limit, expect_limit);
            assert_eq!(seg.selector, 0x28);
            assert_eq!(u16::from(seg.type_), flags & 0xf);
            assert_eq!(u16::from(seg.s), (flags >> 4) & 1);
            assert_eq!(u16::from(seg.dpl), (flags >> 5) & 3);
            assert_eq!(u16::from(seg.present), (flags >> 7) & 1);
            assert_eq!(u16::from(seg.avl), (flags >> 12) & 1);
            assert_eq!(u16::from(seg.l), (flags >> 13) & 1);
            assert_eq!(u16::from(seg.db), (flags >> 14) & 1);
            assert_eq!(u16::from(seg.g), (flags >> 15) & 1);
            assert_eq!(seg.unusable, 0);
        }
        // The null descriptor is not present and so unusable.
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn boot_gdt_layouts() {
        let long = boot_gdt(CodeMode::Long);
        let code = segment_from_gdt(long[usize::from(CODE_INDEX)], CODE_INDEX);
        assert_eq!(
            (code.l, code.db, code.type_, code.selector),
            (1, 0, 0xb, BOOT_CS)
        );
        let data = segment_from_gdt(long[usize::from(DATA_INDEX)], DATA_INDEX);
        assert_eq!(
            (data.type_, data.limit, data.selector),
            (0x3, 0xffff_ffff, BOOT_DS)
        );
        let tss = segment_from_gdt(long[usize::from(TSS_INDEX)], TSS_INDEX);
        assert_eq!((tss.type_, tss.s, tss.limit, tss.g), (0xb, 0, 0x67, 0));
        assert_eq!(long[0], 0);

        let pvh = boot_gdt(CodeMode::Protected32);
        let code = segment_from_gdt(pvh[usize::from(CODE_INDEX)], CODE_INDEX);
        assert_eq!(
            (code.l, code.db, code.base, code.limit),
            (0, 1, 0, 0xffff_ffff)
        );
        assert_eq!(pvh[usize::from(DATA_INDEX)], long[usize::from(DATA_INDEX)]);
        assert_eq!(pvh[usize::from(TSS_INDEX)], long[usize::from(TSS_INDEX)]);
    }
}
