//! The guest's boot images: the kernel and initrd files, opened once and
//! kept open so that a reset loads the same kernel and initrd again (as
//! QEMU's fw_cfg keeps its copies).
//!
//! Only regular files are taken, and opening never blocks
//! ([`crate::regular_file`]).

use std::fs::File;
use std::io::Seek;
use std::path::Path;

use crate::boot::{self, KernelEntry, LoadedKernel};
use crate::cpu::BootEntry;
use crate::layout;
use crate::machine::PcError;
use crate::regular_file::{self, Access, OpenError};
use crate::{acpi, memory, mptable};

/// Opens `path` for reading if it is a regular file, without blocking on
/// anything else; `what` ("kernel", "initrd") names it in errors.
pub(crate) fn open_regular(what: &'static str, path: &Path) -> Result<File, PcError> {
    regular_file::open(path, Access::Read).map_err(|e| match e {
        OpenError::NotRegular(kind) => PcError::NotRegular {
            what,
            path: path.to_owned(),
            kind,
        },
        OpenError::Io(source) => PcError::Open {
            what,
            path: path.to_owned(),
            source,
        },
    })
}

/// The files and settings the guest is loaded from.
pub(crate) struct BootImages {
    pub(crate) kernel: File,
    pub(crate) initrd: Option<File>,
    pub(crate) cmdline: String,
    pub(crate) memory: u64,
    pub(crate) cpus: u32,
    /// Add the ACPI WDAT (the machine has an i6300esb).
    pub(crate) wdat: bool,
}

impl BootImages {
    /// Loads kernel, initrd and command line into `mem` and writes the
    /// e820 map, ACPI and MP tables and boot parameters; returns where the
    /// boot CPU starts.
    pub(crate) fn load(&mut self, mem: &vmm_core::ram::GuestRam) -> Result<BootEntry, PcError> {
        let rewind = |f: &mut File| f.rewind().map_err(|e| PcError::Reload(e.to_string()));
        rewind(&mut self.kernel)?;
        let kernel = boot::load_kernel(mem, &mut self.kernel)?;
        let initrd = match self.initrd.as_mut() {
            Some(f) => {
                rewind(f)?;
                Some(boot::load_initrd(mem, f, &kernel, self.memory)?)
            }
            None => None,
        };
        let cmdline = boot::load_cmdline(mem, &self.cmdline, kernel.cmdline_max_size())?;
        let e820 = memory::e820_map(self.memory);
        let rsdp = acpi::create_acpi_tables(mem, self.cpus, self.memory, self.wdat)?;
        mptable::setup_mptable(mem, self.cpus)?;
        let entry = boot_entry(&kernel);
        match entry {
            BootEntry::Pvh { .. } => {
                boot::write_pvh_start_info(mem, cmdline.0, initrd, &e820, Some(rsdp))?;
            }
            _ => boot::write_boot_params(mem, &kernel, cmdline, initrd, &e820, Some(rsdp))?,
        }
        Ok(entry)
    }

    /// [`load`](Self::load) for a reset, on the main loop's thread. The
    /// images are regular files (anything else is refused at start), so the
    /// reads do not wait on another process; a thread of its own here
    /// would need thread creation and a signalfd on the main thread's
    /// seccomp list.
    pub(crate) fn reload(&mut self, mem: &vmm_core::ram::GuestRam) -> Result<BootEntry, PcError> {
        self.load(mem)
    }
}

fn boot_entry(kernel: &LoadedKernel) -> BootEntry {
    match kernel.entry {
        KernelEntry::Pvh(addr) => BootEntry::Pvh {
            entry: addr.0,
            start_info: layout::PVH_INFO_START,
        },
        KernelEntry::Linux64(addr) => BootEntry::Linux64 {
            entry: addr.0,
            zero_page: layout::ZERO_PAGE_START,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::TempDir as Dir;

    fn refused(path: &Path) -> String {
        match open_regular("kernel", path) {
            Err(e @ PcError::NotRegular { .. }) => e.to_string(),
            other => panic!("{}: {other:?}", path.display()),
        }
    }

    /// Issue 15: a FIFO as --kernel or --initrd blocked `open` for ever.
    /// Here it is refused at once: were `open` to block, this test would
    /// hang instead.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = Dir::new("images-fifo");
        let path = dir.0.join("fifo");
        crate::test_util::mkfifo(&path);
        let msg = refused(&path);
        assert_eq!(
            msg,
            format!("kernel {} is not a regular file (a FIFO)", path.display())
        );
    }

    #[test]
    fn a_missing_file_is_an_open_error() {
        let err = open_regular("initrd", Path::new("/nonexistent/initrd")).unwrap_err();
        assert!(
            matches!(err, PcError::Open { what: "initrd", .. }),
            "{err:?}"
        );
    }
}
