//! Where everything is: the BAR layout, the virtio vendor capabilities
//! that tell the driver about it, and the VIRTIO_PCI_CAP_PCI_CFG window
//! (a way to reach the BAR through configuration space alone).
//!
//! | BAR | offset | what |
//! |---|---|---|
//! | 0 (32-bit memory, 16 KiB) | 0x0000 | common configuration ([`super::common`]) |
//! | 0 | 0x1000 | ISR status (1 byte) |
//! | 0 | 0x2000 | device configuration |
//! | 0 | 0x3000 | notifications: queue *n* at 0x3000 + 4 *n* |
//! | 2 (32-bit memory, 4 KiB or more) | 0 | MSI-X table |
//! | 2 | past the table, 2 KiB aligned | MSI-X pending bits |

use vmm_pci::config::{Bar, BarKind, ConfigSpace};
use vmm_pci::msix::{MsixLayout, ENTRY_SIZE};
use vmm_pci::PciError;

use super::common::COMMON_CFG_LEN;

/// The BAR with the virtio structures.
pub const VIRTIO_BAR: usize = 0;
/// Its size.
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// The common configuration's offset in [`VIRTIO_BAR`].
pub const COMMON_OFFSET: u64 = 0x0000;
/// The ISR's offset.
pub const ISR_OFFSET: u64 = 0x1000;
/// The device configuration's offset.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// The most device configuration there is room for.
pub const DEVICE_CFG_MAX: u64 = 0x1000;
/// The notification area's offset.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// The most queues the notification area has room for.
pub const MAX_QUEUES: usize = (0x1000 / NOTIFY_OFF_MULTIPLIER) as usize;
/// The BAR with the MSI-X table and PBA.
pub const MSIX_BAR: usize = 2;

/// The vendor-specific capability ID.
const CAP_VENDOR: u8 = 0x09;
/// `cfg_type` values.
const COMMON_CFG: u8 = 1;
const NOTIFY_CFG: u8 = 2;
const ISR_CFG: u8 = 3;
const DEVICE_CFG: u8 = 4;
const PCI_CFG: u8 = 5;

/// In a `virtio_pci_cap`, from the capability's start.
const CAP_BAR: usize = 4;
const CAP_OFFSET: usize = 8;
const CAP_LENGTH: usize = 12;
/// `pci_cfg_data` in the PCI_CFG capability.
const CAP_DATA: usize = 16;

/// Where the PBA goes for `vectors` vectors, and the BAR's size.
pub fn msix_layout(vectors: usize) -> (MsixLayout, u64) {
    let table = (vectors * ENTRY_SIZE) as u64;
    let pba_offset = table.next_multiple_of(0x800);
    let pba = vectors.div_ceil(64) as u64 * 8;
    let size = (pba_offset + pba).next_power_of_two().max(0x1000);
    let layout = MsixLayout {
        table_bar: MSIX_BAR as u8,
        table_offset: 0,
        pba_bar: MSIX_BAR as u8,
        pba_offset: pba_offset as u32,
    };
    (layout, size)
}

/// A `virtio_pci_cap` body (after ID and next pointer): length, type,
/// BAR, id, padding, offset, length; then `extra`.
fn cap_body(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![
        (16 + extra.len()) as u8,
        cfg_type,
        VIRTIO_BAR as u8,
        0,
        0,
        0,
    ];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// Declares the two BARs and adds the virtio capabilities to `config`
/// for a device with `device_cfg_len` bytes of configuration and `queues`
/// queues. Returns the PCI_CFG capability's offset.
pub fn add_virtio_caps(
    config: &mut ConfigSpace,
    device_cfg_len: u64,
    queues: usize,
    msix_bar_size: u64,
) -> Result<usize, PciError> {
    config.add_bar(
        VIRTIO_BAR,
        Bar {
            kind: BarKind::Memory32,
            size: VIRTIO_BAR_SIZE,
        },
    )?;
    config.add_bar(
        MSIX_BAR,
        Bar {
            kind: BarKind::Memory32,
            size: msix_bar_size,
        },
    )?;
    let common = cap_body(COMMON_CFG, COMMON_OFFSET, COMMON_CFG_LEN, &[]);
    config.add_capability(CAP_VENDOR, &common, &[])?;
    let isr = cap_body(ISR_CFG, ISR_OFFSET, 1, &[]);
    config.add_capability(CAP_VENDOR, &isr, &[])?;
    if device_cfg_len > 0 {
        let device = cap_body(DEVICE_CFG, DEVICE_OFFSET, device_cfg_len, &[]);
        config.add_capability(CAP_VENDOR, &device, &[])?;
    }
    // At least 2 bytes, and room for every queue's 2-byte write.
    let notify_len = (queues.max(1) as u64 - 1) * u64::from(NOTIFY_OFF_MULTIPLIER) + 2;
    let notify = cap_body(
        NOTIFY_CFG,
        NOTIFY_OFFSET,
        notify_len,
        &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
    );
    config.add_capability(CAP_VENDOR, &notify, &[])?;
    // PCI_CFG: bar, offset, length and data are the driver's to write.
    let pci_cfg = cap_body(PCI_CFG, 0, 0, &[0; 4]);
    let mut writable = vec![0u8; pci_cfg.len()];
    writable[CAP_BAR - 2] = 0xff;
    writable[CAP_OFFSET - 2..CAP_OFFSET + 2].fill(0xff);
    writable[CAP_LENGTH - 2..CAP_LENGTH + 2].fill(0xff);
    writable[CAP_DATA - 2..CAP_DATA + 2].fill(0xff);
    config.add_capability(CAP_VENDOR, &pci_cfg, &writable)
}

/// An access through the PCI_CFG window, as its fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAccess {
    /// The BAR.
    pub bar: usize,
    /// The offset in it.
    pub offset: u64,
    /// The width: 1, 2 or 4.
    pub len: usize,
}

/// The PCI_CFG capability at `cap` in configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciCfgWindow {
    cap: usize,
}

impl PciCfgWindow {
    /// The capability at `cap`.
    pub fn new(cap: usize) -> Self {
        Self { cap }
    }

    /// Whether an access of `len` bytes at `offset` touches `pci_cfg_data`.
    pub fn touches_data(&self, offset: usize, len: usize) -> bool {
        let data = self.cap + CAP_DATA;
        offset < data + 4 && offset.saturating_add(len) > data
    }

    /// The access the fields describe, if the driver may make it: a width
    /// of 1, 2 or 4, aligned, inside a region some other virtio capability
    /// names (all of them live in [`VIRTIO_BAR`]).
    pub fn access(&self, config: &ConfigSpace) -> Option<WindowAccess> {
        let bar = usize::from(config.read_u16(self.cap + CAP_BAR) as u8);
        let offset = u64::from(config.read_u32(self.cap + CAP_OFFSET));
        let len = config.read_u32(self.cap + CAP_LENGTH) as usize;
        let ok = bar == VIRTIO_BAR
            && matches!(len, 1 | 2 | 4)
            && offset % len as u64 == 0
            && offset + len as u64 <= VIRTIO_BAR_SIZE;
        ok.then_some(WindowAccess { bar, offset, len })
    }

    /// The bytes of `pci_cfg_data`.
    pub fn data(&self, config: &ConfigSpace) -> [u8; 4] {
        config.read_u32(self.cap + CAP_DATA).to_le_bytes()
    }

    /// Puts `bytes` (a BAR read's result) into `pci_cfg_data`.
    pub fn set_data(&self, config: &mut ConfigSpace, bytes: &[u8]) {
        let mut word = [0u8; 4];
        word[..bytes.len().min(4)].copy_from_slice(&bytes[..bytes.len().min(4)]);
        config.set_u32(self.cap + CAP_DATA, u32::from_le_bytes(word));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_pci::config::Identity;

    /// Walks the capability list: (offset, id, cfg_type, offset field,
    /// length field).
    fn caps(c: &ConfigSpace) -> Vec<(usize, u8, u8, u32, u32)> {
        c.capabilities()
            .into_iter()
            .map(|(at, id)| {
                let cfg_type = (c.read_u16(at + 2) >> 8) as u8;
                (at, id, cfg_type, c.read_u32(at + 8), c.read_u32(at + 12))
            })
            .collect()
    }

    #[test]
    fn the_capabilities_describe_the_bar() {
        let mut c = ConfigSpace::new(Identity::default());
        let (_, msix_size) = msix_layout(2);
        let pci_cfg = add_virtio_caps(&mut c, 60, 1, msix_size).unwrap();
        let list = caps(&c);
        let kinds: Vec<_> = list.iter().map(|&(_, id, t, o, l)| (id, t, o, l)).collect();
        assert_eq!(
            kinds,
            [
                (9, 1, 0, 0x38),
                (9, 3, 0x1000, 1),
                (9, 4, 0x2000, 60),
                (9, 2, 0x3000, 2),
                (9, 5, 0, 0),
            ]
        );
        assert_eq!(list[4].0, pci_cfg);
        // The notify capability carries the multiplier and is 20 bytes.
        let notify = list[3].0;
        assert_eq!(c.read_u32(notify + 16), 4);
        assert_eq!(c.read_u16(notify + 2) as u8, 20);
        // Read-only for the driver, except the PCI_CFG fields.
        c.write(notify + 8, &[0xff; 4]);
        assert_eq!(c.read_u32(notify + 8), 0x3000);
        c.write(pci_cfg + 4, &[0, 0, 0, 0]);
        c.write(pci_cfg + 8, &0x1000u32.to_le_bytes());
        c.write(pci_cfg + 12, &1u32.to_le_bytes());
        let w = PciCfgWindow::new(pci_cfg);
        assert_eq!(
            w.access(&c),
            Some(WindowAccess {
                bar: 0,
                offset: 0x1000,
                len: 1
            })
        );
        c.write(pci_cfg + 8, &0x1001u32.to_le_bytes());
        c.write(pci_cfg + 12, &2u32.to_le_bytes());
        assert_eq!(w.access(&c), None, "misaligned");
        c.write(pci_cfg + 12, &3u32.to_le_bytes());
        assert_eq!(w.access(&c), None, "width 3");
        c.write(pci_cfg + 4, &[2]);
        c.write(pci_cfg + 12, &1u32.to_le_bytes());
        assert_eq!(w.access(&c), None, "the MSI-X BAR is not a virtio region");
        assert!(w.touches_data(pci_cfg + 16, 1));
        assert!(w.touches_data(pci_cfg + 12, 8));
        assert!(!w.touches_data(pci_cfg + 12, 4));
    }

    #[test]
    fn the_msix_bar_fits_table_and_pba() {
        assert_eq!(msix_layout(2).1, 0x1000);
        assert_eq!(msix_layout(2).0.pba_offset, 0x800);
        let (l, size) = msix_layout(200);
        assert_eq!(l.pba_offset, 0x1000);
        assert_eq!(size, 0x2000);
        assert!(u64::from(l.pba_offset) + 32 <= size);
    }
}
