//! What the machine tells about itself beyond the run state: the device
//! tree (`info qtree`).

use super::{lock, PcMachine};

impl PcMachine {
    /// The device model's list, then the PCI bus's functions (a disk's
    /// by its drive id).
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
            let id = self.disks.iter().find(|d| d.slot == f.slot);
            tree.push(crate::DeviceInfo {
                id: id.map(|d| d.id.clone()).unwrap_or_default(),
                type_name: f.name,
                pci_slot: Some(f.slot),
            });
        }
        tree
    }
}
