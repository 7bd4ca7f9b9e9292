//! What the bus holds, as a management interface reports it (QMP's
//! `query-pci`, the monitor's `info pci`).

use crate::bus::PciRoot;
use crate::config::{self, BarKind};

/// One BAR as programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Which BAR.
    pub bar: usize,
    /// What it decodes.
    pub kind: BarKind,
    /// Where the guest put it (u64::MAX: nowhere, decoding off).
    pub address: u64,
    /// Its size.
    pub size: u64,
}

/// One function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Its slot on bus 0 (function 0).
    pub slot: u8,
    /// Its type's name.
    pub name: String,
    /// Vendor and device IDs.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: (u8, u8, u8),
    /// Subsystem vendor and ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Interrupt pin (0: none, 1 = INTA#).
    pub irq_pin: u8,
    /// The guest's interrupt line byte.
    pub irq_line: u8,
    /// The BARs.
    pub regions: Vec<RegionInfo>,
}

impl PciRoot {
    /// Every function, for a management interface.
    pub fn describe(&self) -> Vec<FunctionInfo> {
        self.functions()
            .map(|(slot, d)| {
                let c = d.config();
                let byte = |off| {
                    let mut b = [0u8];
                    c.read(off, &mut b);
                    b[0]
                };
                let decoding: Vec<usize> = c.decoding_regions().map(|r| r.index).collect();
                let regions = c
                    .bars()
                    .iter()
                    .enumerate()
                    .filter_map(|(bar, b)| {
                        let b = (*b)?;
                        let address = if decoding.contains(&bar) {
                            c.bar_base(bar).unwrap_or(u64::MAX)
                        } else {
                            u64::MAX
                        };
                        Some(RegionInfo {
                            bar,
                            kind: b.kind,
                            address,
                            size: b.size,
                        })
                    })
                    .collect();
                FunctionInfo {
                    slot,
                    name: d.name().to_owned(),
                    vendor: c.read_u16(config::VENDOR_ID),
                    device: c.read_u16(config::DEVICE_ID),
                    class: (
                        byte(config::REVISION_ID + 3),
                        byte(config::REVISION_ID + 2),
                        byte(config::REVISION_ID + 1),
                    ),
                    subsystem_vendor: c.read_u16(config::SUBSYSTEM_VENDOR_ID),
                    subsystem: c.read_u16(config::SUBSYSTEM_ID),
                    irq_pin: byte(config::INTERRUPT_PIN),
                    irq_line: byte(config::INTERRUPT_LINE),
                    regions,
                }
            })
            .collect()
    }
}

/// The class's name, as QEMU's `query-pci` gives `class_info.desc` for the
/// classes this machine has.
pub fn class_name(class: u8, subclass: u8) -> Option<&'static str> {
    Some(match (class, subclass) {
        (0x01, 0x00) => "SCSI controller",
        (0x01, 0x80) => "Storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x00, 0xff) | (0xff, _) => "Unclassified",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_bridge_described() {
        let root = PciRoot::new();
        let d = root.describe();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].slot, 0);
        assert_eq!((d[0].vendor, d[0].device), (0x1b36, 0x0008));
        assert_eq!(d[0].class, (0x06, 0x00, 0x00));
        assert_eq!(class_name(d[0].class.0, d[0].class.1), Some("Host bridge"));
        assert!(d[0].regions.is_empty());
        assert_eq!(class_name(0x12, 0x34), None);
    }
}
