//! Loading the kernel image (bzImage or ELF `vmlinux`) with linux-loader.

use std::io::{Read, Seek};

use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};
use vmm_core::ram::GuestRam;

use super::check::{check_bzimage, check_elf, PROTOCOL_64BIT_ENTRY};
use super::initrd::DEFAULT_INITRD_ADDR_MAX;
use super::BootError;
use crate::layout::{CMDLINE_MAX_SIZE, HIMEM_START};

/// The 64-bit entry point sits this far into the protected-mode part of a
/// bzImage (boot protocol 2.12+, `startup_64`).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Offset of the setup header's "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// The setup header's magic, "HdrS".
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";

/// The ELF magic, `\x7fELF`.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// `e_ident[EI_CLASS]` and its value for 64-bit files.
const ELF_CLASS_OFFSET: usize = 4;
const ELFCLASS64: u8 = 2;
/// `e_machine` and its value for x86-64.
const ELF_MACHINE_OFFSET: usize = 18;
const EM_X86_64: u16 = 62;

/// Boot protocol versions that added the setup-header fields we read.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x206;
const PROTOCOL_INIT_SIZE: u16 = 0x20a;
/// Command-line size limit of kernels older than protocol 2.06.
const OLD_CMDLINE_MAX_SIZE: usize = 256;

/// Command-line capacity (with its NUL) for an ELF kernel, which has no
/// header to say: x86 Linux's `COMMAND_LINE_SIZE` (2048); the kernel would
/// cut a longer one short.
pub const ELF_CMDLINE_MAX_SIZE: usize = 2048;

/// Which kind of image was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage (compressed kernel with a real-mode setup header).
    BzImage,
    /// An ELF `vmlinux`.
    Elf,
}

/// Where and how the boot CPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// Linux 64-bit boot protocol: long mode, paging on with the low memory
    /// identity-mapped, `%rip` here, `%rsi` = the zero page.
    Linux64(GuestAddress),
    /// PVH: 32-bit protected mode, paging off, `%eip` here, `%ebx` = the
    /// `hvm_start_info`.
    Pvh(GuestAddress),
}

impl KernelEntry {
    /// The entry address.
    pub fn addr(self) -> GuestAddress {
        match self {
            Self::Linux64(addr) | Self::Pvh(addr) => addr,
        }
    }
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadedKernel {
    /// The image's format.
    pub format: KernelFormat,
    /// Where the boot CPU starts.
    pub entry: KernelEntry,
    /// Where the image (bzImage: its protected-mode part) was loaded.
    pub load_addr: GuestAddress,
    /// The first byte past the memory the kernel needs: for a bzImage this
    /// includes the buffer it decompresses into, for an ELF its segments'
    /// `p_memsz`. The initrd goes above it.
    pub end: u64,
    /// The bzImage's setup header (with `code32_start` set to the load
    /// address); `None` for ELF.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// The highest address the initrd may occupy: the bzImage header's
    /// `initrd_addr_max` (protocol 2.03+), else [`DEFAULT_INITRD_ADDR_MAX`].
    pub fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(hdr) if hdr.version >= 0x203 && hdr.initrd_addr_max != 0 => {
                u64::from(hdr.initrd_addr_max)
            }
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }

    /// The longest command line (with its NUL) the kernel takes, at most
    /// [`CMDLINE_MAX_SIZE`]: the bzImage header's `cmdline_size` + 1
    /// (protocol 2.06+), 256 for older bzImages, [`ELF_CMDLINE_MAX_SIZE`]
    /// for ELF.
    pub fn cmdline_max_size(&self) -> usize {
        let size = match self.setup_header {
            Some(hdr) if hdr.version >= PROTOCOL_CMDLINE_SIZE => {
                usize::try_from(hdr.cmdline_size).map_or(usize::MAX, |n| n.saturating_add(1))
            }
            Some(_) => OLD_CMDLINE_MAX_SIZE,
            None => ELF_CMDLINE_MAX_SIZE,
        };
        size.min(CMDLINE_MAX_SIZE)
    }
}

/// Loads a bzImage or ELF kernel into `mem` at the address the image asks
/// for (bzImage: `code32_start`, normally 1 MiB; ELF: each segment's
/// `p_paddr`), and says how to enter it.
///
/// The format comes from the file's magic numbers; a file that is neither,
/// or is empty, truncated or 32-bit, gives an error.
pub fn load_kernel<F>(mem: &GuestRam, kernel: &mut F) -> Result<LoadedKernel, BootError>
where
    F: Read + ReadVolatile + Seek,
{
    let loaded = match sniff(kernel)? {
        KernelFormat::BzImage => load_bzimage(mem, kernel)?,
        KernelFormat::Elf => load_elf(mem, kernel)?,
    };
    if loaded.end <= loaded.load_addr.raw_value() {
        return Err(BootError::EmptyKernel);
    }
    // The whole footprint must be RAM, in the region the kernel starts in.
    let region_end = mem
        .find_region(loaded.load_addr)
        .map_or(0, |region| region.start_addr().raw_value() + region.len());
    if loaded.end > region_end {
        return Err(BootError::KernelTooLarge { end: loaded.end });
    }
    Ok(loaded)
}

/// Tells a bzImage from an ELF file by their magic numbers.
fn sniff<F: Read + Seek>(kernel: &mut F) -> Result<KernelFormat, BootError> {
    let mut head = Vec::new();
    kernel.rewind().map_err(BootError::KernelRead)?;
    kernel
        .by_ref()
        .take(BZIMAGE_MAGIC_OFFSET as u64 + 4)
        .read_to_end(&mut head)
        .map_err(BootError::KernelRead)?;
    kernel.rewind().map_err(BootError::KernelRead)?;

    if head.is_empty() {
        return Err(BootError::EmptyKernel);
    }
    if head.starts_with(ELF_MAGIC) {
        // Whatever of the header is missing, linux-loader reports.
        if head
            .get(ELF_CLASS_OFFSET)
            .is_some_and(|&class| class != ELFCLASS64)
        {
            return Err(BootError::NotA64BitKernel);
        }
        if let Some(b) = head.get(ELF_MACHINE_OFFSET..ELF_MACHINE_OFFSET + 2) {
            let machine = u16::from_le_bytes([b[0], b[1]]);
            if machine != EM_X86_64 {
                return Err(BootError::WrongMachine(machine));
            }
        }
        return Ok(KernelFormat::Elf);
    }
    if head.get(BZIMAGE_MAGIC_OFFSET..) == Some(&BZIMAGE_MAGIC[..]) {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownKernelFormat)
}

fn load_bzimage<F>(mem: &GuestRam, kernel: &mut F) -> Result<LoadedKernel, BootError>
where
    F: Read + ReadVolatile + Seek,
{
    check_bzimage(kernel, BZIMAGE_64BIT_ENTRY_OFFSET)?;
    kernel.rewind().map_err(BootError::KernelRead)?;
    let result = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::BzImage)?;
    let hdr =
        result
            .setup_header
            .ok_or(BootError::BzImage(linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            )))?;
    // check_bzimage saw the same header; linux-loader read it again.
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < PROTOCOL_64BIT_ENTRY || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::NotA64BitKernel);
    }
    let load_addr = result.kernel_load;
    let entry = load_addr
        .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
        .ok_or(BootError::KernelTooLarge { end: u64::MAX })?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: KernelEntry::Linux64(entry),
        load_addr,
        end: bzimage_end(&result, &hdr),
        setup_header: Some(hdr),
    })
}

/// The end of the memory a bzImage uses while it decompresses itself.
///
/// The decompressor (`arch/x86/boot/compressed/head_64.S`) works in a buffer
/// of `init_size` bytes from the load address rounded up to
/// `kernel_alignment`, or from the preferred address `pref_address`
/// (`LOAD_PHYSICAL_ADDR`) if that is higher. Both fields are protocol 2.10+.
fn bzimage_end(result: &KernelLoaderResult, hdr: &setup_header) -> u64 {
    let mut end = result.kernel_end;
    if hdr.version >= PROTOCOL_INIT_SIZE {
        let align = u64::from(hdr.kernel_alignment);
        let load = result.kernel_load.raw_value();
        let aligned = if align.is_power_of_two() {
            load.checked_next_multiple_of(align).unwrap_or(u64::MAX)
        } else {
            load
        };
        let buffer = aligned
            .max(hdr.pref_address)
            .saturating_add(u64::from(hdr.init_size));
        end = end.max(buffer);
    }
    end
}

fn load_elf<F>(mem: &GuestRam, kernel: &mut F) -> Result<LoadedKernel, BootError>
where
    F: Read + ReadVolatile + Seek,
{
    check_elf(kernel)?;
    kernel.rewind().map_err(BootError::KernelRead)?;
    let result =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(BootError::Elf)?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => {
            KernelEntry::Linux64(result.kernel_load)
        }
    };
    Ok(LoadedKernel {
        format: KernelFormat::Elf,
        entry,
        load_addr: result.kernel_load,
        end: result.kernel_end,
        setup_header: None,
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::boot::test_images::{
        bzimage, elf, file_with, guest_memory, BZ_INIT_SIZE, BZ_PAYLOAD, BZ_PAYLOAD_LEN,
        BZ_PREF_ADDRESS, ELF_ENTRY, ELF_LOAD, ELF_PAYLOAD, PVH_ENTRY,
    };

    const MIB: usize = 1 << 20;

    #[test]
    fn bzimage_is_loaded_at_1_mib_with_the_64_bit_entry() {
        let mem = guest_memory(64 * MIB);
        let kernel = load_kernel(&mem, &mut file_with(&bzimage())).unwrap();
        assert_eq!(kernel.format, KernelFormat::BzImage);
        assert_eq!(kernel.load_addr, GuestAddress(HIMEM_START));
        assert_eq!(
            kernel.entry,
            KernelEntry::Linux64(GuestAddress(HIMEM_START + 0x200))
        );
        assert_eq!(kernel.end, BZ_PREF_ADDRESS + u64::from(BZ_INIT_SIZE));
        let hdr = kernel.setup_header.unwrap();
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.version }, 0x20f);
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);

        let mut payload = vec![0u8; BZ_PAYLOAD.len()];
        mem.read_slice(&mut payload, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(payload, BZ_PAYLOAD);

        assert_eq!(kernel.initrd_addr_max(), 0x7fff_ffff);
        assert_eq!(kernel.cmdline_max_size(), 2048);
    }

    #[test]
    fn bzimage_that_cannot_decompress_in_ram_is_refused() {
        // RAM ends before pref_address + init_size.
        let mem = guest_memory(16 * MIB);
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&bzimage())),
            Err(BootError::KernelTooLarge { .. })
        ));
    }

    #[test]
    fn bzimage_without_64_bit_entry_is_refused() {
        let mem = guest_memory(64 * MIB);
        let mut image = bzimage();
        image[0x236] = 0; // xloadflags: no XLF_KERNEL_64
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&image)),
            Err(BootError::NotA64BitKernel)
        ));
        let mut image = bzimage();
        image[0x206..0x208].copy_from_slice(&0x20bu16.to_le_bytes());
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&image)),
            Err(BootError::BzImageProtocolTooOld { version: 0x20b })
        ));
    }

    #[test]
    fn truncated_bzimage_is_an_error() {
        let mem = guest_memory(64 * MIB);
        let image = bzimage();
        // Cut inside the setup sectors, and just after the magic.
        for len in [0x400, 0x206, 0x212] {
            let err = load_kernel(&mem, &mut file_with(&image[..len])).unwrap_err();
            assert!(
                matches!(err, BootError::BzImageSetupTruncated { .. }),
                "{len:#x}: {err:?}"
            );
        }
        // Cut inside the payload: linux-loader alone loaded what was there.
        let err = load_kernel(&mem, &mut file_with(&image[..image.len() - 0x100])).unwrap_err();
        assert!(matches!(err, BootError::BzImageTruncated { .. }), "{err:?}");
        let mut zeroes = vec![0u8; BZ_PAYLOAD_LEN];
        mem.read_slice(&mut zeroes, GuestAddress(HIMEM_START))
            .unwrap();
        assert!(zeroes.iter().all(|&b| b == 0), "nothing was loaded");
    }

    #[test]
    fn elf_without_pvh_note_enters_at_e_entry() {
        let mem = guest_memory(64 * MIB);
        let kernel = load_kernel(&mem, &mut file_with(&elf(false))).unwrap();
        assert_eq!(kernel.format, KernelFormat::Elf);
        assert_eq!(kernel.entry, KernelEntry::Linux64(GuestAddress(ELF_ENTRY)));
        assert_eq!(kernel.setup_header, None);
        assert_eq!(kernel.end, ELF_LOAD + 0x2000);
        let mut payload = vec![0u8; ELF_PAYLOAD.len()];
        mem.read_slice(&mut payload, GuestAddress(ELF_LOAD))
            .unwrap();
        assert_eq!(payload, ELF_PAYLOAD);
        assert_eq!(kernel.initrd_addr_max(), DEFAULT_INITRD_ADDR_MAX);
        assert_eq!(kernel.cmdline_max_size(), ELF_CMDLINE_MAX_SIZE);
    }

    #[test]
    fn elf_with_pvh_note_enters_through_pvh() {
        let mem = guest_memory(64 * MIB);
        let kernel = load_kernel(&mem, &mut file_with(&elf(true))).unwrap();
        assert_eq!(kernel.entry, KernelEntry::Pvh(GuestAddress(PVH_ENTRY)));
        assert_eq!(kernel.entry.addr(), GuestAddress(PVH_ENTRY));
    }

    #[test]
    fn elf_for_another_machine_or_class_is_refused() {
        let mem = guest_memory(64 * MIB);
        let mut image = elf(false);
        image[18] = 183; // EM_AARCH64
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&image)),
            Err(BootError::WrongMachine(183))
        ));
        let mut image = elf(false);
        image[4] = 1; // ELFCLASS32
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&image)),
            Err(BootError::NotA64BitKernel)
        ));
    }

    #[test]
    fn truncated_elf_is_an_error() {
        let mem = guest_memory(64 * MIB);
        let image = elf(true);
        for len in [8, 64, 100, image.len() - 1] {
            let err = load_kernel(&mem, &mut file_with(&image[..len])).unwrap_err();
            assert!(
                matches!(err, BootError::ElfTruncated { .. }),
                "{len}: {err:?}"
            );
        }
    }

    #[test]
    fn elf_beyond_ram_is_refused() {
        let mem = guest_memory(ELF_LOAD as usize + 0x1000);
        // The segment's bytes fit; its p_memsz does not.
        let err = load_kernel(&mem, &mut file_with(&elf(false))).unwrap_err();
        assert!(
            matches!(err, BootError::KernelTooLarge { end } if end == ELF_LOAD + 0x2000),
            "{err:?}"
        );
    }

    #[test]
    fn elf_with_nothing_to_load_is_refused() {
        let mem = guest_memory(64 * MIB);
        let mut image = elf(false);
        image[64..68].copy_from_slice(&0u32.to_le_bytes()); // PT_LOAD -> PT_NULL
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&image)),
            Err(BootError::EmptyKernel)
        ));
    }

    #[test]
    fn empty_file_is_refused() {
        let mem = guest_memory(64 * MIB);
        assert!(matches!(
            load_kernel(&mem, &mut file_with(&[])),
            Err(BootError::EmptyKernel)
        ));
    }

    #[test]
    fn random_bytes_are_refused() {
        let mem = guest_memory(64 * MIB);
        // A fixed xorshift sequence: same bytes on every run.
        let mut x: u32 = 0x1234_5678;
        let junk: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in [1, 100, junk.len()] {
            assert!(matches!(
                load_kernel(&mem, &mut file_with(&junk[..len])),
                Err(BootError::UnknownKernelFormat)
            ));
        }
    }
}
