//! The kernel loaders and what follows them, as the machine runs them at
//! boot: a bzImage or ELF `vmlinux` (PVH note or not) parsed and loaded
//! by vmm-pc's `load_kernel` into a `GuestRam` of 16 to 64 MiB,
//! then an initrd (from a memfd), the command line, the ACPI and MP tables
//! and the zero page or PVH start info. Checks that a loaded kernel fits in
//! RAM and that the initrd and command line land where their rules say.

#![no_main]

use std::fs::File;
use std::io::{Cursor, Write};
use std::os::fd::FromRawFd;

use libfuzzer_sys::fuzz_target;
use vmm_core::ram::GuestRam;
use vmm_fuzz::Input;
use vmm_pc::boot::{self, KernelEntry};
use vmm_pc::layout::{CMDLINE_MAX_SIZE, HIMEM_START, MMIO_HOLE_START};
use vmm_pc::memory::{e820_map, ram_regions};
use vmm_pc::{acpi, mptable};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// An anonymous in-memory file holding `bytes`, as an initrd.
fn memfd(bytes: &[u8]) -> File {
    // SAFETY: the name is a NUL-terminated string; the call has no other
    // preconditions.
    let fd = unsafe { libc::memfd_create(c"initrd".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new file descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).expect("write to a memfd");
    file
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let memory = (16 + u64::from(input.u8() % 49)) * MIB;
    let cpus = u32::from(input.u8());
    let initrd_len = usize::from(input.u16() % 8192);
    let initrd = input.bytes(initrd_len).to_vec();
    let cmdline_len = usize::from(input.u16() % 4096);
    let cmdline = String::from_utf8_lossy(input.bytes(cmdline_len)).into_owned();
    let image = input.rest();

    let regions = ram_regions(memory, u64::MAX).expect("16..64 MiB is a valid size");
    let mem = GuestRam::from_ranges(&regions).expect("guest memory");
    let Ok(kernel) = boot::load_kernel(&mem, &mut Cursor::new(image)) else {
        return;
    };
    assert!(kernel.load_addr.0 < kernel.end, "{kernel:?}");
    assert!(kernel.end <= memory, "{kernel:?} past {memory:#x} of RAM");

    let initrd = if initrd.is_empty() {
        None
    } else {
        match boot::load_initrd(&mem, &mut memfd(&initrd), &kernel, memory) {
            Ok((addr, len)) => {
                assert_eq!(len, initrd.len());
                let end = addr.0 + len as u64;
                let high = kernel
                    .initrd_addr_max()
                    .saturating_add(1)
                    .min(memory)
                    .min(MMIO_HOLE_START);
                assert_eq!(addr.0 % PAGE, 0, "initrd at {addr:?}");
                assert!(
                    addr.0 >= kernel.end.max(HIMEM_START),
                    "initrd at {addr:?} over {kernel:?}"
                );
                assert!(end <= high, "initrd ends at {end:#x}, above {high:#x}");
                Some((addr, len))
            }
            Err(_) => None,
        }
    };
    let max = kernel.cmdline_max_size();
    assert!(max <= CMDLINE_MAX_SIZE);
    let Ok(cmdline) = boot::load_cmdline(&mem, &cmdline, max) else {
        return;
    };
    assert!(
        cmdline.1 <= max,
        "a command line of {} bytes, most {max}",
        cmdline.1
    );
    let e820 = e820_map(memory);
    // The WDAT (an i6300esb's table) on odd sizes of RAM: both table sets
    // without taking a byte from the seeds.
    let wdat = (memory / MIB) % 2 == 1;
    let rsdp = acpi::create_acpi_tables(&mem, cpus, memory, wdat).ok();
    assert_eq!(
        rsdp.is_some(),
        (1..=vmm_pc::layout::MAX_CPUS).contains(&cpus)
    );
    let _ = mptable::setup_mptable(&mem, cpus);
    match kernel.entry {
        KernelEntry::Pvh(_) => boot::write_pvh_start_info(&mem, cmdline.0, initrd, &e820, rsdp),
        KernelEntry::Linux64(_) => {
            boot::write_boot_params(&mem, &kernel, cmdline, initrd, &e820, rsdp)
        }
    }
    .expect("the boot information fits");
});
