//! What the machine tells about itself beyond the run state: the device
//! tree (`info qtree`), and its memory into a file (`pmemsave`).

use std::path::Path;

use vmm_runstate::RunState;

use super::{lock, CommandFailure, PcMachine};
use crate::control::Reply;
use crate::regular_file::{self, Access, OpenError};

impl PcMachine {
    /// The device model's list, then the PCI bus's functions (a disk's
    /// by its drive id, a network card's by its netdev id).
    pub(super) fn device_tree(&self) -> Vec<crate::DeviceInfo> {
        let mut tree: Vec<_> = self
            .devices
            .model
            .list()
            .into_iter()
            .map(|(id, ty)| crate::DeviceInfo {
                id,
                type_name: ty.to_owned(),
                pci_slot: None,
            })
            .collect();
        for f in lock(&self.devices.pci).describe() {
            if f.slot == 0 {
                continue;
            }
            let disk = self.disks.iter().find(|d| d.slot == f.slot);
            let nic = self.nets.iter().find(|n| n.slot == f.slot);
            let id = disk
                .map(|d| d.id.clone())
                .or_else(|| nic.map(|n| n.id.clone()));
            tree.push(crate::DeviceInfo {
                id: id.unwrap_or_default(),
                type_name: f.name,
                pci_slot: Some(f.slot),
            });
        }
        tree
    }

    /// QMP `pmemsave`: `size` bytes of guest physical memory from `addr`
    /// into `path` (see [`crate::snapshot::pmemsave`]), running or not, as
    /// QEMU's; on the main loop, as QEMU's under its lock. Not while an
    /// incoming migration writes RAM.
    pub(super) fn pmemsave(
        &self,
        addr: u64,
        size: u64,
        path: &Path,
    ) -> Result<Reply, CommandFailure> {
        if self.runstate.state() == RunState::Inmigrate {
            return Err(CommandFailure::Refused(
                "Guest memory access not allowed during migration".into(),
            ));
        }
        let refused =
            |e: crate::snapshot::pmemsave::DumpError| CommandFailure::Refused(e.to_string());
        crate::snapshot::pmemsave::check_range(self.vm.memory(), addr, size).map_err(refused)?;
        let name = path.display().to_string();
        let cannot_open =
            |why: String| CommandFailure::Refused(format!("Could not open '{name}': {why}"));
        // A regular file only, opened without blocking (a FIFO would stop
        // the main loop) and not truncated before it is known not to hold
        // the guest's RAM: RAM mapped from a snapshot file reads the pages
        // the guest has not written from it, and would be lost with them
        // (SIGBUS) were it cut short.
        let file = regular_file::open(path, Access::Write).map_err(|e| {
            cannot_open(match e {
                OpenError::Io(e) => strerror(&e),
                not_regular => not_regular.to_string(),
            })
        })?;
        if self.ram_file.as_ref().is_some_and(|r| r.maps_from(&file)) {
            return Err(cannot_open(
                "it holds the guest's RAM (the snapshot the machine was loaded from)".into(),
            ));
        }
        file.set_len(0).map_err(|e| cannot_open(strerror(&e)))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        crate::snapshot::pmemsave::dump(self.vm.memory(), addr, size, &mut out, &name)
            .map_err(refused)?;
        Ok(Reply::Done)
    }
}

/// An OS error as `strerror` words it (QEMU's file errors), without Rust's
/// "(os error N)".
fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
