//! Hand-made kernel images and helpers shared by the boot tests.

use std::fs::File;
use std::io::{Seek, Write};

use linux_loader::loader::bootparam::{LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64};
use vm_memory::GuestAddress;
use vmm_core::ram::GuestRam;
use vmm_sys_util::tempfile::TempFile;

/// Sectors of real-mode setup code in the fake bzImage.
pub const BZ_SETUP_SECTS: u8 = 4;
/// The start of the fake bzImage's protected-mode part.
pub const BZ_PAYLOAD: &[u8] = b"protected-mode kernel stands in here";
/// The fake bzImage's whole payload: [`BZ_PAYLOAD`], zero-padded past the
/// 64-bit entry at 0x200, in whole 16-byte paragraphs (`syssize`).
pub const BZ_PAYLOAD_LEN: usize = 0x400;
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
/// speaking boot protocol 2.15, then [`BZ_PAYLOAD_LEN`] bytes of payload
/// starting with [`BZ_PAYLOAD`].
pub fn bzimage() -> Vec<u8> {
    let mut image = vec![0u8; (usize::from(BZ_SETUP_SECTS) + 1) * 512];
    put(&mut image, 0x1f1, &[BZ_SETUP_SECTS]);
    let syssize = u32::try_from(BZ_PAYLOAD_LEN / 16).unwrap();
    put(&mut image, 0x1f4, &syssize.to_le_bytes()); // syssize
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
    let start = image.len();
    image.extend_from_slice(BZ_PAYLOAD);
    image.resize(start + BZ_PAYLOAD_LEN, 0);
    image
}

/// A minimal x86-64 ELF executable: one `PT_LOAD` at [`ELF_LOAD`] with a
/// 0x2000-byte memory size and, if `pvh`, the Xen PVH note giving
/// [`PVH_ENTRY`] (built by the test guests' ELF writer).
pub fn elf(pvh: bool) -> Vec<u8> {
    crate::test_guests::elf(
        &[(ELF_LOAD, ELF_PAYLOAD, 0x2000)],
        ELF_ENTRY,
        pvh.then_some(PVH_ENTRY),
    )
}

/// An unnamed temporary file holding `bytes`, positioned at its start.
pub fn file_with(bytes: &[u8]) -> File {
    let mut file = TempFile::new().unwrap().into_file();
    file.write_all(bytes).unwrap();
    file.rewind().unwrap();
    file
}

/// `size` bytes of guest RAM from address 0.
pub fn guest_memory(size: usize) -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}
