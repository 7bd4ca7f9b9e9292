//! Placing the initial ramdisk.

use std::fs::File;
use std::io::Seek;

use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;

use super::{BootError, LoadedKernel};
use crate::layout::{HIMEM_START, MMIO_HOLE_START};
use crate::memory::PAGE_SIZE;

/// The highest address an initrd may occupy when the kernel does not say
/// (`initrd_addr_max` is protocol 2.03+; ELF kernels have no header): the
/// boot protocol's default, 0x37FFFFFF.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Where an initrd of `size` bytes goes: page-aligned and as high as
/// possible, ending at or below both `initrd_addr_max` (the highest byte it
/// may occupy) and the top of low RAM (`ram_size`, at most the 3 GiB hole),
/// and starting at or above `kernel_end` (and 1 MiB).
pub fn initrd_address(
    size: u64,
    initrd_addr_max: u64,
    ram_size: u64,
    kernel_end: u64,
) -> Result<GuestAddress, BootError> {
    let high = initrd_addr_max
        .saturating_add(1)
        .min(ram_size)
        .min(MMIO_HOLE_START);
    let low = kernel_end
        .max(HIMEM_START)
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX);
    let too_large = BootError::InitrdTooLarge { size, low, high };
    let start = high.checked_sub(size).ok_or(too_large)?;
    let start = start - start % PAGE_SIZE;
    if start < low {
        return Err(BootError::InitrdTooLarge { size, low, high });
    }
    Ok(GuestAddress(start))
}

/// Copies the initrd file into guest memory at [`initrd_address`] for this
/// `kernel` and `ram_size` bytes of RAM; returns its address and size, for
/// the boot information.
pub fn load_initrd(
    mem: &GuestRam,
    initrd: &mut File,
    kernel: &LoadedKernel,
    ram_size: u64,
) -> Result<(GuestAddress, usize), BootError> {
    let size = initrd.metadata().map_err(BootError::InitrdRead)?.len();
    if size == 0 {
        return Err(BootError::EmptyInitrd);
    }
    let addr = initrd_address(size, kernel.initrd_addr_max(), ram_size, kernel.end)?;
    // It fits below 3 GiB, so in a usize.
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
        size,
        low: kernel.end,
        high: MMIO_HOLE_START,
    })?;
    initrd.rewind().map_err(BootError::InitrdRead)?;
    mem.read_exact_volatile_from(addr, initrd, len)
        .map_err(BootError::InitrdLoad)?;
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::test_images::{bzimage, elf, file_with, guest_memory};
    use crate::boot::{load_kernel, KernelEntry, KernelFormat};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn initrd_goes_to_the_top_of_ram() {
        let addr = initrd_address(0x1234, DEFAULT_INITRD_ADDR_MAX, 64 * MIB, 20 * MIB).unwrap();
        assert_eq!(addr, GuestAddress(64 * MIB - 0x2000));
    }

    #[test]
    fn initrd_stays_below_initrd_addr_max() {
        let addr = initrd_address(MIB, DEFAULT_INITRD_ADDR_MAX, 2 * GIB, 20 * MIB).unwrap();
        assert_eq!(addr, GuestAddress(0x3800_0000 - MIB));
        // A limit that is not page-aligned rounds the start down.
        let addr = initrd_address(0x1000, 0x1fff_f7ff, GIB, 20 * MIB).unwrap();
        assert_eq!(addr, GuestAddress(0x1fff_e000));
        assert!(addr.0 + 0x1000 - 1 <= 0x1fff_f7ff);
    }

    #[test]
    fn initrd_stays_below_the_mmio_hole() {
        let addr = initrd_address(MIB, u64::from(u32::MAX), 8 * GIB, 20 * MIB).unwrap();
        assert_eq!(addr, GuestAddress(MMIO_HOLE_START - MIB));
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        // Exactly the room between the kernel and the top of RAM fits.
        let addr = initrd_address(44 * MIB, DEFAULT_INITRD_ADDR_MAX, 64 * MIB, 20 * MIB).unwrap();
        assert_eq!(addr, GuestAddress(20 * MIB));
        // One page more does not.
        let err = initrd_address(
            44 * MIB + 0x1000,
            DEFAULT_INITRD_ADDR_MAX,
            64 * MIB,
            20 * MIB,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            BootError::InitrdTooLarge { low, high, .. } if low == 20 * MIB && high == 64 * MIB
        ));
        // Larger than all of RAM.
        assert!(initrd_address(128 * MIB, DEFAULT_INITRD_ADDR_MAX, 64 * MIB, 0).is_err());
        // A kernel end that is not page-aligned rounds the floor up.
        assert!(initrd_address(0x2000, DEFAULT_INITRD_ADDR_MAX, 0x20_2000, 0x20_0001).is_err());
    }

    #[test]
    fn initrd_is_loaded_above_a_bzimage() {
        let mem = guest_memory(64 << 20);
        let kernel = load_kernel(&mem, &mut file_with(&bzimage())).unwrap();
        let contents = b"070701 cpio archive stands in here";
        let (addr, size) = load_initrd(&mem, &mut file_with(contents), &kernel, 64 * MIB).unwrap();
        assert_eq!(size, contents.len());
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 >= kernel.end && addr.0 + size as u64 <= 64 * MIB);
        let mut back = vec![0u8; size];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(&back, contents);
    }

    #[test]
    fn initrd_for_an_elf_kernel_uses_the_default_limit() {
        let mem = guest_memory(1 << 30);
        let kernel = load_kernel(&mem, &mut file_with(&elf(true))).unwrap();
        assert_eq!(kernel.format, KernelFormat::Elf);
        assert!(matches!(kernel.entry, KernelEntry::Pvh(_)));
        let (addr, size) = load_initrd(&mem, &mut file_with(&[7; 5000]), &kernel, GIB).unwrap();
        // 5000 bytes take two pages below 0x3800_0000.
        assert_eq!(addr, GuestAddress(0x3800_0000 - 0x2000));
        assert!(addr.0 + size as u64 - 1 <= DEFAULT_INITRD_ADDR_MAX);
    }

    #[test]
    fn empty_initrd_is_refused() {
        let mem = guest_memory(64 << 20);
        let kernel = load_kernel(&mem, &mut file_with(&bzimage())).unwrap();
        assert!(matches!(
            load_initrd(&mem, &mut file_with(&[]), &kernel, 64 * MIB),
            Err(BootError::EmptyInitrd)
        ));
    }
}
