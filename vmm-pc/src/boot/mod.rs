//! Booting Linux directly, without firmware: load the kernel, its initrd
//! and command line into guest memory, and write the boot information the
//! kernel reads on entry.
//!
//! Two entry protocols are supported, chosen by [`load_kernel`] from the
//! image:
//!
//! - the Linux 64-bit boot protocol (`Documentation/arch/x86/boot.rst`),
//!   for a bzImage and for an ELF `vmlinux` without a PVH note: the boot
//!   CPU starts in long mode at [`KernelEntry::Linux64`] with `%rsi`
//!   pointing at the zero page that [`write_boot_params`] fills;
//! - PVH (Xen's `docs/misc/pvh.pandoc`), for an ELF `vmlinux` that carries
//!   the `XEN_ELFNOTE_PHYS32_ENTRY` note: the boot CPU starts in 32-bit
//!   protected mode without paging at [`KernelEntry::Pvh`] with `%ebx`
//!   pointing at the `hvm_start_info` that [`write_pvh_start_info`] fills.
//!
//! The order is: [`load_kernel`], then [`load_initrd`] and [`load_cmdline`],
//! then one of the two writers (after the kernel, so nothing it loads can
//! overwrite them).

mod check;
mod cmdline;
mod initrd;
mod kernel;
mod params;
#[cfg(test)]
mod test_images;

use std::io;

pub use cmdline::load_cmdline;
pub use initrd::{initrd_address, load_initrd, DEFAULT_INITRD_ADDR_MAX};
pub use kernel::{load_kernel, KernelEntry, KernelFormat, LoadedKernel, ELF_CMDLINE_MAX_SIZE};
pub use params::{write_boot_params, write_pvh_start_info};

/// Why the kernel, initrd, command line or boot information could not be
/// set up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the kernel file failed.
    #[error("cannot read the kernel image")]
    KernelRead(#[source] io::Error),
    /// The kernel file has no bytes, or an ELF kernel nothing to load.
    #[error("the kernel image is empty")]
    EmptyKernel,
    /// The kernel file is neither a bzImage nor an ELF file.
    #[error("the kernel image is neither a bzImage nor an ELF file")]
    UnknownKernelFormat,
    /// The kernel cannot be entered in 64-bit mode: a bzImage without
    /// `XLF_KERNEL_64`, or a 32-bit ELF.
    #[error("the kernel has no 64-bit entry point")]
    NotA64BitKernel,
    /// The bzImage file ends before the setup code its header announces
    /// (which also holds the header itself).
    #[error(
        "bzImage truncated: the file is {len} bytes, shorter than its {setup} bytes of setup \
         code (setup_sects {setup_sects})"
    )]
    BzImageSetupTruncated {
        /// `setup_sects` as written (0 means 4).
        setup_sects: u8,
        /// `(setup_sects + 1) * 512`: the boot sector and the setup code.
        setup: u64,
        /// The file's length.
        len: u64,
    },
    /// The bzImage file ends before the protected-mode payload its header
    /// announces (`syssize` paragraphs after the setup code).
    #[error(
        "bzImage truncated: header says {payload} bytes of payload after {setup} bytes of setup \
         code (setup_sects {setup_sects}, syssize {syssize}), the file has {available}"
    )]
    BzImageTruncated {
        /// `setup_sects` as written (0 means 4).
        setup_sects: u8,
        /// `syssize`: the payload in 16-byte paragraphs.
        syssize: u32,
        /// Where the payload starts.
        setup: u64,
        /// `syssize * 16`.
        payload: u64,
        /// The bytes the file has after the setup code.
        available: u64,
    },
    /// The bzImage header announces no protected-mode payload.
    #[error("bzImage has no payload: its header says syssize 0")]
    BzImageEmptyPayload,
    /// The payload is too short to hold the 64-bit entry point.
    #[error(
        "bzImage payload of {payload} bytes ends before its 64-bit entry at offset {entry:#x}"
    )]
    BzImagePayloadTooSmall {
        /// `syssize * 16`.
        payload: u64,
        /// Where the 64-bit entry is in the payload.
        entry: u64,
    },
    /// The boot sector's signature is missing.
    #[error("bzImage boot_flag is {0:#06x}, not 0xaa55")]
    BzImageBootFlag(u16),
    /// The boot protocol predates the 64-bit entry (2.12).
    #[error(
        "bzImage boot protocol {}.{:02} is older than 2.12, the first with a 64-bit entry",
        version >> 8,
        version & 0xff
    )]
    BzImageProtocolTooOld {
        /// `version` as written: major in the high byte.
        version: u16,
    },
    /// `LOADED_HIGH` is clear: a zImage, loaded at 0x10000 and entered in
    /// real mode.
    #[error("bzImage loadflags {0:#04x} lack LOADED_HIGH: a zImage, which this VMM cannot boot")]
    BzImageNotLoadedHigh(u8),
    /// The ELF file ends before a part its headers announce.
    #[error("ELF truncated: {part} needs file bytes {start:#x}..{end:#x}, the file has {len:#x}")]
    ElfTruncated {
        /// What is cut off ("its header", "segment 2", ...).
        part: String,
        /// Its first byte in the file.
        start: u64,
        /// The first byte past it.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// `e_phentsize` is not the size of an `Elf64_Phdr`.
    #[error("the ELF program header size is {0} bytes, not 56")]
    ElfBadProgramHeaderSize(u16),
    /// The ELF kernel is built for another architecture.
    #[error("the ELF kernel is for machine {0}, not x86-64")]
    WrongMachine(u16),
    /// linux-loader refused or failed to load the bzImage.
    #[error("cannot load the bzImage kernel")]
    BzImage(#[source] linux_loader::loader::Error),
    /// linux-loader refused or failed to load the ELF file.
    #[error("cannot load the ELF kernel")]
    Elf(#[source] linux_loader::loader::Error),
    /// The kernel, with the room it needs to decompress and run, reaches
    /// past guest RAM.
    #[error("the kernel needs memory up to {end:#x}, beyond guest RAM")]
    KernelTooLarge {
        /// The first byte past the kernel's footprint.
        end: u64,
    },
    /// Reading the initrd file failed.
    #[error("cannot read the initrd")]
    InitrdRead(#[source] io::Error),
    /// The initrd file has no bytes.
    #[error("the initrd is empty")]
    EmptyInitrd,
    /// The initrd does not fit between the kernel and its highest allowed
    /// address.
    #[error("the initrd ({size:#x} bytes) does not fit between {low:#x} and {high:#x}")]
    InitrdTooLarge {
        /// The initrd's size.
        size: u64,
        /// The lowest address it may use (the end of the kernel).
        low: u64,
        /// The end of the space it may use.
        high: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy the initrd into guest memory")]
    InitrdLoad(#[source] vm_memory::GuestMemoryError),
    /// The command line, with its NUL, is longer than allowed.
    #[error("the kernel command line is {len} bytes with its NUL, more than {max}")]
    CmdlineTooLong {
        /// Its length including the NUL.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// linux-loader's `Cmdline` refused the string (e.g. not printable ASCII).
    #[error("invalid kernel command line")]
    CmdlineInvalid(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// More memory-map entries than the boot structure holds.
    #[error("{count} memory map entries, more than the {max} the boot information holds")]
    TooManyMemoryMapEntries {
        /// Entries given.
        count: usize,
        /// Most that fit.
        max: usize,
    },
    /// Writing the zero page or the PVH start info failed.
    #[error("cannot write the boot information into guest memory")]
    BootInfoWrite(#[source] linux_loader::configurator::Error),
}
