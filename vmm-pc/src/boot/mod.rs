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
    /// The kernel cannot be entered in 64-bit mode: a bzImage older than
    /// boot protocol 2.12 or without `XLF_KERNEL_64`, or a 32-bit ELF.
    #[error("the kernel has no 64-bit entry point")]
    NotA64BitKernel,
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
