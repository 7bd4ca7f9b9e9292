//! The boot-information builders with arbitrary inputs, past what a real
//! kernel image would give: the RAM split and e820 map for any size, the
//! initrd placement for any size, limit and kernel end, the command line
//! with any text and size limit, and the zero page and PVH start info
//! with any setup-header fields, addresses and memory maps. Checks the
//! placement rules and that the maps are sorted and disjoint.

#![no_main]

use libfuzzer_sys::fuzz_target;
use linux_loader::loader::bootparam::setup_header;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;
use vmm_fuzz::Input;
use vmm_pc::boot::{self, KernelEntry, KernelFormat, LoadedKernel};
use vmm_pc::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_HOLE_START};
use vmm_pc::memory::{e820_map, ram_regions, E820Entry, E820Kind};

const PAGE: u64 = 4096;

fn check_memory_map(input: &mut Input) {
    let size = input.u64() >> (input.u8() % 64);
    let limit = input.u64();
    if let Ok(regions) = ram_regions(size, limit) {
        let total: u128 = regions.iter().map(|r| r.1 as u128).sum();
        assert_eq!(total, u128::from(size), "{regions:?}");
        let map = e820_map(size);
        for pair in map.windows(2) {
            assert!(
                u128::from(pair[0].addr) + u128::from(pair[0].size) <= u128::from(pair[1].addr),
                "e820 out of order or overlapping: {map:?}"
            );
        }
        for entry in map.iter().filter(|e| e.kind == E820Kind::Ram) {
            let inside = regions.iter().any(|&(start, len)| {
                entry.addr >= start.0
                    && u128::from(entry.addr) + u128::from(entry.size)
                        <= u128::from(start.0) + len as u128
            });
            assert!(inside, "e820 RAM {entry:?} outside {regions:?}");
        }
    }
}

fn check_initrd_address(input: &mut Input) {
    let (size, max, ram, kernel_end) = (input.u64(), input.u64(), input.u64(), input.u64());
    if let Ok(addr) = boot::initrd_address(size, max, ram, kernel_end) {
        let high = u128::from(max) + 1;
        let high = high.min(u128::from(ram)).min(u128::from(MMIO_HOLE_START));
        assert_eq!(addr.0 % PAGE, 0);
        assert!(addr.0 >= kernel_end.max(HIMEM_START));
        assert!(u128::from(addr.0) + u128::from(size) <= high);
    }
}

fn kernel(input: &mut Input) -> LoadedKernel {
    let flags = input.u8();
    let load_addr = GuestAddress(input.u64());
    let setup_header = (flags & 1 != 0).then(|| setup_header {
        version: input.u16(),
        cmdline_size: input.u32(),
        initrd_addr_max: input.u32(),
        ..Default::default()
    });
    LoadedKernel {
        format: if setup_header.is_some() {
            KernelFormat::BzImage
        } else {
            KernelFormat::Elf
        },
        entry: if flags & 2 != 0 {
            KernelEntry::Pvh(load_addr)
        } else {
            KernelEntry::Linux64(load_addr)
        },
        load_addr,
        end: input.u64(),
        setup_header,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    check_memory_map(&mut input);
    check_initrd_address(&mut input);

    let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let kernel = kernel(&mut input);
    let max = kernel.cmdline_max_size();
    assert!(max <= CMDLINE_MAX_SIZE);
    let max = if input.u8() & 1 == 0 {
        max
    } else {
        usize::from(input.u16())
    };
    let len = usize::from(input.u16() % 4096);
    let text = String::from_utf8_lossy(input.bytes(len)).into_owned();
    let cmdline = match boot::load_cmdline(&mem, &text, max) {
        Ok((addr, size)) => {
            assert_eq!(addr, GuestAddress(CMDLINE_START));
            assert!(
                size <= max.min(CMDLINE_MAX_SIZE),
                "{size} bytes, most {max}"
            );
            let nul: u8 = mem
                .read_obj(GuestAddress(CMDLINE_START + size as u64 - 1))
                .unwrap();
            assert_eq!(nul, 0, "the command line's NUL");
            (addr, size)
        }
        Err(_) => (GuestAddress(input.u64()), usize::from(input.u16())),
    };
    let initrd = (input.u8() & 1 != 0).then(|| (GuestAddress(input.u64()), input.u64() as usize));
    let rsdp = (input.u8() & 1 != 0).then(|| GuestAddress(input.u64()));
    let count = usize::from(input.u8());
    let e820: Vec<E820Entry> = (0..count)
        .map(|_| E820Entry {
            addr: input.u64(),
            size: input.u64(),
            kind: if input.u8() & 1 == 0 {
                E820Kind::Ram
            } else {
                E820Kind::Reserved
            },
        })
        .collect();
    let zero_page = boot::write_boot_params(&mem, &kernel, cmdline, initrd, &e820, rsdp);
    assert_eq!(zero_page.is_ok(), count <= 128, "{zero_page:?}");
    let pvh = boot::write_pvh_start_info(&mem, cmdline.0, initrd, &e820, rsdp);
    assert_eq!(
        pvh.is_ok(),
        count <= vmm_pc::layout::PVH_MEMMAP_MAX_ENTRIES,
        "{pvh:?}"
    );
});
