//! Hand-made kernel images and helpers shared by the boot tests.

use std::fs::File;
use std::io::{Seek, Write};

use linux_loader::loader::bootparam::{LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

/// Sectors of real-mode setup code in the fake bzImage.
pub const BZ_SETUP_SECTS: u8 = 4;
/// The fake bzImage's protected-mode part.
pub const BZ_PAYLOAD: &[u8] = b"protected-mode kernel stands in here";
/// The fake bzImage's `pref_address` (`LOAD_PHYSICAL_ADDR`, 16 MiB).
pub const BZ_PREF_ADDRESS: u64 = 0x100_0000;
/// The fake bzImage's `init_size` (4 MiB).
pub const BZ_INIT_SIZE: u32 = 0x40_0000;

/// Where the fake ELF's one segment is loaded.
pub const ELF_LOAD: u64 = 0x100_0000;
/// The fake ELF's `e_entry`.
pub const ELF_ENTRY: u64 = ELF_LOAD + 0x40;
/// The PVH entry its note announces.
pub const PVH_ENTRY: u64 = ELF_LOAD + 0x100;
/// The fake ELF's segment contents (`p_memsz` is 0x2000).
pub const ELF_PAYLOAD: &[u8] = b"\xf4\xf4\xf4\xf4 vmlinux stands in here";

fn put(image: &mut [u8], offset: usize, bytes: &[u8]) {
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// A minimal bzImage: the setup header of a 64-bit, relocatable kernel
/// speaking boot protocol 2.15, then [`BZ_PAYLOAD`].
pub fn bzimage() -> Vec<u8> {
    let mut image = vec![0u8; (usize::from(BZ_SETUP_SECTS) + 1) * 512];
    put(&mut image, 0x1f1, &[BZ_SETUP_SECTS]);
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut image, 0x202, b"HdrS"); // header
    put(&mut image, 0x206, &0x020fu16.to_le_bytes()); // version
    put(&mut image, 0x211, &[LOADED_HIGH]); // loadflags
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut image, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut image, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut image, 0x234, &[1, 21]); // relocatable_kernel, min_alignment
    let xloadflags = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
    put(&mut image, 0x236, &xloadflags.to_le_bytes());
    put(&mut image, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut image, 0x258, &BZ_PREF_ADDRESS.to_le_bytes()); // pref_address
    put(&mut image, 0x260, &BZ_INIT_SIZE.to_le_bytes()); // init_size
    image.extend_from_slice(BZ_PAYLOAD);
    image
}

/// A minimal x86-64 ELF executable: one `PT_LOAD` at [`ELF_LOAD`] and, if
/// `pvh`, a `PT_NOTE` with the Xen `XEN_ELFNOTE_PHYS32_ENTRY` (type 18)
/// note giving [`PVH_ENTRY`], as Linux's `arch/x86/platform/pvh/head.S`
/// emits it.
pub fn elf(pvh: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = if pvh { 2 } else { 1 };
    let mut note = Vec::new();
    if pvh {
        note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
        note.extend_from_slice(&8u32.to_le_bytes()); // n_descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // n_type
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&PVH_ENTRY.to_le_bytes());
    }
    let note_offset = EHDR + phnum * PHDR;
    let payload_offset = note_offset + note.len();

    let mut image = Vec::new();
    // ELF header.
    image.extend_from_slice(b"\x7fELF");
    image.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little-endian, version 1, SysV
    image.extend_from_slice(&[0; 8]);
    image.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    image.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    image.extend_from_slice(&1u32.to_le_bytes()); // e_version
    image.extend_from_slice(&ELF_ENTRY.to_le_bytes()); // e_entry
    image.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    image.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    image.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    image.extend_from_slice(&(phnum as u16).to_le_bytes()); // e_phnum
    image.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    assert_eq!(image.len(), EHDR);

    let mut phdr = |p_type: u32, offset: usize, paddr: u64, filesz: usize, memsz: u64| {
        image.extend_from_slice(&p_type.to_le_bytes());
        image.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R+X
        image.extend_from_slice(&(offset as u64).to_le_bytes());
        image.extend_from_slice(&paddr.to_le_bytes()); // p_vaddr
        image.extend_from_slice(&paddr.to_le_bytes()); // p_paddr
        image.extend_from_slice(&(filesz as u64).to_le_bytes());
        image.extend_from_slice(&memsz.to_le_bytes());
        image.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    };
    phdr(1, payload_offset, ELF_LOAD, ELF_PAYLOAD.len(), 0x2000); // PT_LOAD
    if pvh {
        phdr(4, note_offset, 0, note.len(), note.len() as u64); // PT_NOTE
    }
    image.extend_from_slice(&note);
    image.extend_from_slice(ELF_PAYLOAD);
    image
}

/// An unnamed temporary file holding `bytes`, positioned at its start.
pub fn file_with(bytes: &[u8]) -> File {
    let mut file = TempFile::new().unwrap().into_file();
    file.write_all(bytes).unwrap();
    file.rewind().unwrap();
    file
}

/// `size` bytes of guest RAM from address 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}
