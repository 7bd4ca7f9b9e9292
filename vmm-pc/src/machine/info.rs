//! What the machine tells about itself beyond the run state: the device
//! tree (`info qtree`).

use super::{lock, PcMachine};

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
}
