//! The boot information the kernel reads on entry: the Linux zero page
//! (`struct boot_params`) or the PVH `hvm_start_info`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, E820_MAX_ENTRIES_ZEROPAGE};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Address, GuestAddress};
use vmm_core::ram::GuestRam;

use super::{BootError, LoadedKernel};
use crate::layout::{
    PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory::E820Entry;

// The initrd's one `hvm_modlist_entry` fits below `hvm_start_info`.
const _: () =
    assert!(PVH_MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64 <= PVH_INFO_START);

/// `boot_flag`: the 0xAA55 boot-sector signature.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header`: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: 0xff, "undefined" (no assigned loader ID).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `hvm_start_info.version` with the memory-map fields.
const HVM_START_INFO_VERSION: u32 = 1;

/// Writes the zero page (`struct boot_params`) at [`ZERO_PAGE_START`] for
/// the Linux 64-bit boot protocol.
///
/// The setup header is the bzImage's own (an ELF has none, so the fields a
/// 64-bit entry reads are filled in: `boot_flag`, `header`), then the loader
/// fields: `type_of_loader`, `cmd_line_ptr`, `ramdisk_image`/`ramdisk_size`
/// and, for ELF, `cmdline_size`. `acpi_rsdp_addr` (offset 0x70, read by
/// Linux 5.0+) hands the kernel the RSDP so it need not scan for it; the
/// e820 table describes RAM.
///
/// `loadflags` keeps the image's value. `CAN_USE_HEAP` and `heap_end_ptr`
/// only matter to the real-mode setup code, and `KEEP_SEGMENTS` (now
/// obsolete) only ever concerned the 32-bit entry; the 64-bit entry runs
/// neither.
pub fn write_boot_params(
    mem: &GuestRam,
    kernel: &LoadedKernel,
    cmdline: (GuestAddress, usize),
    initrd: Option<(GuestAddress, usize)>,
    e820: &[E820Entry],
    rsdp: Option<GuestAddress>,
) -> Result<(), BootError> {
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyMemoryMapEntries {
            count: e820.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = BOOT_FLAG_MAGIC;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.cmdline_size = low32(cmdline.1 as u64).saturating_sub(1);
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = low32(cmdline.0.raw_value());
    params.ext_cmd_line_ptr = high32(cmdline.0.raw_value());
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = low32(addr.raw_value());
        params.ext_ramdisk_image = high32(addr.raw_value());
        params.hdr.ramdisk_size = low32(size as u64);
        params.ext_ramdisk_size = high32(size as u64);
    }
    params.acpi_rsdp_addr = rsdp.map_or(0, |addr| addr.raw_value());
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.code(),
        };
    }
    // At most E820_MAX_ENTRIES_ZEROPAGE (128), checked above.
    params.e820_entries = e820.len() as u8;

    let info = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&info, mem).map_err(BootError::BootInfoWrite)
}

/// Writes the PVH `hvm_start_info` (version 1) at [`PVH_INFO_START`], its
/// memory map at [`PVH_MEMMAP_START`] and, with an initrd, a one-entry
/// module list at [`PVH_MODLIST_START`].
pub fn write_pvh_start_info(
    mem: &GuestRam,
    cmdline: GuestAddress,
    initrd: Option<(GuestAddress, usize)>,
    e820: &[E820Entry],
    rsdp: Option<GuestAddress>,
) -> Result<(), BootError> {
    if e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyMemoryMapEntries {
            count: e820.len(),
            max: PVH_MEMMAP_MAX_ENTRIES,
        });
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind.code(),
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        cmdline_paddr: cmdline.raw_value(),
        rsdp_paddr: rsdp.map_or(0, |addr| addr.raw_value()),
        memmap_paddr: PVH_MEMMAP_START,
        // At most PVH_MEMMAP_MAX_ENTRIES, checked above.
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|&(addr, size)| hvm_modlist_entry {
            paddr: addr.raw_value(),
            size: size as u64,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }

    let mut info = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    info.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        info.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&info, mem).map_err(BootError::BootInfoWrite)
}

/// The low 32 bits of a guest address or size (the zero page's legacy field).
fn low32(value: u64) -> u32 {
    (value & 0xffff_ffff) as u32
}

/// The high 32 bits (the zero page's `ext_*` field).
fn high32(value: u64) -> u32 {
    (value >> 32) as u32
}

#[cfg(test)]
mod tests {
    use linux_loader::loader::bootparam::LOADED_HIGH;
    use vm_memory::Bytes;

    use super::*;
    use crate::boot::test_images::{bzimage, elf, file_with, guest_memory};
    use crate::boot::{load_cmdline, load_initrd, load_kernel};
    use crate::layout::{CMDLINE_START, PVH_MEMMAP_START, RSDP_START};
    use crate::memory::{e820_map, E820Kind};

    const RAM: u64 = 64 << 20;

    fn read_params(mem: &GuestRam) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn bzimage_boot_params_keep_the_header_and_add_the_loader_fields() {
        let mem = guest_memory(RAM as usize);
        let kernel = load_kernel(&mem, &mut file_with(&bzimage())).unwrap();
        let cmdline = load_cmdline(&mem, "console=ttyS0", kernel.cmdline_max_size()).unwrap();
        let initrd = load_initrd(&mem, &mut file_with(&[1; 3000]), &kernel, RAM).unwrap();
        let e820 = e820_map(RAM);
        let rsdp = GuestAddress(RSDP_START);
        write_boot_params(&mem, &kernel, cmdline, Some(initrd), &e820, Some(rsdp)).unwrap();

        let params = read_params(&mem);
        // The image's header...
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.header }, HDRS_MAGIC);
        assert_eq!({ params.hdr.version }, 0x20f);
        assert_eq!({ params.hdr.code32_start }, 0x10_0000);
        assert_eq!({ params.hdr.cmdline_size }, 2047);
        // ...plus what the loader fills in.
        assert_eq!(params.hdr.type_of_loader, 0xff);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.ext_cmd_line_ptr }, 0);
        assert_eq!({ params.hdr.ramdisk_image }, initrd.0.raw_value() as u32);
        assert_eq!({ params.hdr.ramdisk_size }, 3000);
        assert_eq!({ params.ext_ramdisk_image }, 0);
        assert_eq!({ params.acpi_rsdp_addr }, RSDP_START);
        assert_eq!(usize::from(params.e820_entries), e820.len());
        for (slot, expected) in params.e820_table.iter().zip(&e820) {
            assert_eq!({ slot.addr }, expected.addr);
            assert_eq!({ slot.size }, expected.size);
            assert_eq!({ slot.r#type }, expected.kind.code());
        }
        assert_eq!({ params.e820_table[e820.len()].size }, 0);
    }

    #[test]
    fn elf_boot_params_fill_in_the_header() {
        let mem = guest_memory(RAM as usize);
        let kernel = load_kernel(&mem, &mut file_with(&elf(false))).unwrap();
        let cmdline = load_cmdline(&mem, "console=ttyS0 quiet", 2048).unwrap();
        let e820 = e820_map(RAM);
        write_boot_params(&mem, &kernel, cmdline, None, &e820, None).unwrap();

        let params = read_params(&mem);
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.header }, HDRS_MAGIC);
        assert_eq!(params.hdr.type_of_loader, 0xff);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 19);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
        assert_eq!({ params.hdr.ramdisk_size }, 0);
        assert_eq!({ params.acpi_rsdp_addr }, 0);
        assert_eq!(params.e820_entries, 4, "RAM, reserved, RAM, the PCI ECAM");
        let ram = params.e820_table[2];
        assert_eq!(
            ({ ram.addr }, { ram.size }, { ram.r#type }),
            (1 << 20, RAM - (1 << 20), 1)
        );
    }

    #[test]
    fn too_many_e820_entries_are_refused() {
        let mem = guest_memory(RAM as usize);
        let kernel = load_kernel(&mem, &mut file_with(&elf(false))).unwrap();
        let entry = E820Entry {
            addr: 0,
            size: 0x1000,
            kind: E820Kind::Ram,
        };
        let e820 = vec![entry; E820_MAX_ENTRIES_ZEROPAGE + 1];
        let cmdline = (GuestAddress(CMDLINE_START), 1);
        assert!(matches!(
            write_boot_params(&mem, &kernel, cmdline, None, &e820, None),
            Err(BootError::TooManyMemoryMapEntries {
                count: 129,
                max: 128
            })
        ));
        let e820 = vec![entry; PVH_MEMMAP_MAX_ENTRIES + 1];
        assert!(matches!(
            write_pvh_start_info(&mem, GuestAddress(CMDLINE_START), None, &e820, None),
            Err(BootError::TooManyMemoryMapEntries { .. })
        ));
    }

    #[test]
    fn pvh_start_info_reads_back() {
        let mem = guest_memory(RAM as usize);
        let e820 = e820_map(RAM);
        let initrd = (GuestAddress(0x300_0000), 0x1234);
        let rsdp = GuestAddress(RSDP_START);
        let cmdline = GuestAddress(CMDLINE_START);
        write_pvh_start_info(&mem, cmdline, Some(initrd), &e820, Some(rsdp)).unwrap();

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, RSDP_START);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.memmap_entries, 4);

        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
        for (i, expected) in e820.iter().enumerate() {
            let addr = GuestAddress(PVH_MEMMAP_START + 24 * i as u64);
            let entry: hvm_memmap_table_entry = mem.read_obj(addr).unwrap();
            assert_eq!(entry.addr, expected.addr);
            assert_eq!(entry.size, expected.size);
            assert_eq!(entry.type_, expected.kind.code());
        }
    }

    #[test]
    fn pvh_start_info_without_initrd_has_no_modules() {
        let mem = guest_memory(RAM as usize);
        let cmdline = GuestAddress(CMDLINE_START);
        write_pvh_start_info(&mem, cmdline, None, &e820_map(RAM), None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(
            (info.nr_modules, info.modlist_paddr, info.rsdp_paddr),
            (0, 0, 0)
        );
    }

    #[test]
    fn loadflags_are_the_images() {
        let mem = guest_memory(RAM as usize);
        let kernel = load_kernel(&mem, &mut file_with(&bzimage())).unwrap();
        let cmdline = (GuestAddress(CMDLINE_START), 1);
        write_boot_params(&mem, &kernel, cmdline, None, &e820_map(RAM), None).unwrap();
        assert_eq!(read_params(&mem).hdr.loadflags, LOADED_HIGH);
    }
}
