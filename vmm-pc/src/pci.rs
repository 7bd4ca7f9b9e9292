//! PCI on the PC: vmm-pci's root bus behind configuration mechanism #1
//! (ports 0xCF8-0xCFF) and the ECAM window, the BARs reached from the MMIO
//! and port exits that no fixed device claims, and the ACPI that tells the
//! guest all of it, so that Linux's own PCI code finds the bus with no
//! options:
//!
//! - MCFG: ECAM for segment 0, bus 0, at [`PCI_ECAM_START`] (also reserved
//!   in the e820 map, which Linux wants before it trusts MMCONFIG);
//! - `\_SB_.PCI0` (`PNP0A08`, compatible `PNP0A03`): `_CRS` with bus 0, the
//!   configuration ports, the port ranges around them, the 32-bit BAR
//!   window below the ECAM and a 64-bit window above RAM; `_PRT` routing
//!   each slot's INTA#-INTD# to IO-APIC inputs 16-23, swizzled by slot as
//!   bridges do (`16 + (slot + pin) % 8`), level-triggered, active low
//!   (the default for `_PRT` entries without a link device).
//!
//! | what | where |
//! |---|---|
//! | configuration ports | 0xCF8-0xCFF |
//! | ECAM (bus 0) | [`PCI_ECAM_START`], 1 MiB |
//! | 32-bit BARs | [`PCI_MMIO32_START`] to the ECAM |
//! | 64-bit BARs | [`mmio64_window`]: 64 GiB from the end of RAM (at least 4 GiB), 1 GiB aligned |
//! | port BARs | [`PCI_IO_START`]-0xFFFF |

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::mcfg::MCFG;
use acpi_tables::Aml;
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vmm_pci::bus::ConfigMechanism1;
use vmm_pci::PciRoot;

use crate::io::{BusError, PcIo};
use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// The first configuration port.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Configuration ports: the address register and the data window.
pub const PCI_CONFIG_PORTS: u16 = 8;
/// The 32-bit BAR window: from the MMIO hole's start to the ECAM.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// ECAM for bus 0 (1 MiB: 32 devices x 8 functions x 4 KiB).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// The ECAM's size: bus 0 only.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// The i6300esb's BAR: the last page of the 32-bit window (the disks'
/// BARs come from below it).
pub const PCI_WATCHDOG_BAR: u64 = PCI_ECAM_START - 0x1000;
/// Port BARs come from here to 0xFFFF.
pub const PCI_IO_START: u16 = 0xc000;
/// The 64-bit BAR window's size.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// The first IO-APIC input for INTx.
pub const INTX_FIRST_GSI: u32 = 16;

/// The 64-bit BAR window for a guest with `ram` bytes of RAM: from the end
/// of RAM above 4 GiB (or 4 GiB), rounded up to 1 GiB, [`PCI_MMIO64_SIZE`]
/// long.
pub fn mmio64_window(ram: u64) -> Range<u64> {
    let high_ram = ram.saturating_sub(MMIO_HOLE_START);
    let start = MMIO_HOLE_END
        .saturating_add(high_ram)
        .next_multiple_of(1 << 30);
    start..start.saturating_add(PCI_MMIO64_SIZE)
}

/// The GSI of `slot`'s interrupt pin (0 = INTA# .. 3 = INTD#).
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    INTX_FIRST_GSI + (u32::from(slot) + u32::from(pin)) % 8
}

/// Ports 0xCF8-0xCFF.
struct ConfigPorts {
    root: Arc<Mutex<PciRoot>>,
    mechanism: ConfigMechanism1,
}

impl MutDevicePio for ConfigPorts {
    fn pio_read(&mut self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let mut root = lock(&self.root);
        self.mechanism.read(&mut root, offset, data);
    }

    fn pio_write(&mut self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let mut root = lock(&self.root);
        self.mechanism.write(&mut root, offset, data);
    }
}

/// The ECAM window.
struct Ecam(Arc<Mutex<PciRoot>>);

impl MutDeviceMmio for Ecam {
    fn mmio_read(&mut self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        lock(&self.0).ecam_read(offset, data);
    }

    fn mmio_write(&mut self, _: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        lock(&self.0).ecam_write(offset, data);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs at debug level how long one step of the bus's set-up took since
/// `started`: `cargo xtask bench blk` adds these lines up to report what
/// the PCI bus adds to the VMM's start-up.
fn log_setup_time(what: &str, started: Instant) {
    log::debug!(
        "PCI set-up: {what} took {} ns",
        started.elapsed().as_nanos()
    );
}

/// Puts the root bus behind its ports, its ECAM window and the BAR
/// fallback of `io`; returns it, for the machine to add devices to.
pub fn create_pci(io: &mut PcIo) -> Result<Arc<Mutex<PciRoot>>, BusError> {
    let started = Instant::now();
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let ports = ConfigPorts {
        root: Arc::clone(&root),
        mechanism: ConfigMechanism1::default(),
    };
    io.add_pio(
        "PCI configuration",
        PCI_CONFIG_PORT,
        PCI_CONFIG_PORTS,
        Arc::new(Mutex::new(ports)),
    )?;
    io.add_mmio(
        "PCI ECAM",
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
        Arc::new(Mutex::new(Ecam(Arc::clone(&root)))),
    )?;
    io.set_pci(Arc::clone(&root));
    log_setup_time("root bus, configuration ports and ECAM", started);
    Ok(root)
}

/// The MCFG table: ECAM for segment 0, bus 0.
pub fn mcfg(oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
    let started = Instant::now();
    let mut mcfg = MCFG::new(oem_id, oem_table_id, oem_revision);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    let mut bytes = Vec::new();
    mcfg.to_aml_bytes(&mut bytes);
    log_setup_time("MCFG", started);
    bytes
}

/// `Device (PCI0)` for the DSDT's `\_SB_` scope, for a guest with `ram`
/// bytes of RAM.
pub fn pci0_aml(ram: u64) -> Vec<u8> {
    let started = Instant::now();
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let zero = aml::ZERO;
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let config_ports = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, PCI_CONFIG_PORT - 1, None);
    let io_high = AddressSpace::<u16>::new_io(PCI_CONFIG_PORT + PCI_CONFIG_PORTS, 0xffff, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_ECAM_START - 1) as u32,
        None,
    );
    let window = mmio64_window(ram);
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        window.start,
        window.end - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![
        &bus,
        &config_ports,
        &io_low,
        &io_high,
        &mmio32,
        &mmio64,
    ]);
    // _PRT: Package { Package { address, pin, source (0: a GSI), GSI } }.
    let mut routes = Vec::new();
    for slot in 0u8..32 {
        for pin in 0u8..4 {
            routes.push((u32::from(slot) << 16 | 0xffff, pin, intx_gsi(slot, pin)));
        }
    }
    let entries: Vec<aml::Package> = routes
        .iter()
        .map(|(address, pin, gsi)| aml::Package::new(vec![address, pin, &zero, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|p| p as &dyn Aml).collect());
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_ADR".into(), &zero),
        aml::Name::new("_SEG".into(), &zero),
        aml::Name::new("_UID".into(), &zero),
        aml::Name::new("_BBN".into(), &zero),
        aml::Name::new("_CRS".into(), &crs),
        aml::Name::new("_PRT".into(), &prt),
    ];
    let device = aml::Device::new("PCI0".into(), names.iter().map(|n| n as &dyn Aml).collect());
    let mut bytes = Vec::new();
    device.to_aml_bytes(&mut bytes);
    log_setup_time("PCI0 in the DSDT", started);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::io::IoHandler;

    #[test]
    fn windows_avoid_ram_and_each_other() {
        assert_eq!(mmio64_window(512 << 20), 0x1_0000_0000..0x11_0000_0000);
        // 5 GiB of RAM: 2 GiB above 4 GiB, the window from 6 GiB.
        assert_eq!(mmio64_window(5 << 30).start, 6 << 30);
        assert_eq!(mmio64_window((5 << 30) + 4096).start, 7 << 30);
        const { assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= crate::layout::IOAPIC_ADDR) };
        const { assert!(PCI_MMIO32_START < PCI_ECAM_START) };
        const { assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= crate::layout::WATCHDOG_WINDOW) };
        const { assert!(crate::layout::WATCHDOG_WINDOW + 0x1000 <= crate::layout::IOAPIC_ADDR) };
    }

    #[test]
    fn intx_swizzles_over_gsis_16_to_23() {
        assert_eq!(intx_gsi(0, 0), 16);
        assert_eq!(intx_gsi(1, 0), 17);
        assert_eq!(intx_gsi(1, 3), 20);
        assert_eq!(intx_gsi(7, 1), 16);
        assert!((0..32).all(|s| (0..4).all(|p| (16..24).contains(&intx_gsi(s, p)))));
    }

    #[test]
    fn the_bus_answers_on_its_ports_and_ecam() {
        let mut io = PcIo::new();
        let root = create_pci(&mut io).unwrap();
        io.pio_write(PCI_CONFIG_PORT, &(1u32 << 31).to_le_bytes());
        let mut id = [0; 4];
        io.pio_read(PCI_CONFIG_PORT + 4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36, "the host bridge");
        io.mmio_read(PCI_ECAM_START, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
        io.mmio_read(PCI_ECAM_START + (1 << 15), &mut id);
        assert_eq!(id, [0xff; 4], "slot 1 is empty");
        assert_eq!(lock(&root).functions().count(), 1);
        // Nothing decodes in the BAR window yet: all ones.
        io.mmio_read(PCI_MMIO32_START, &mut id);
        assert_eq!(id, [0xff; 4]);
    }

    #[test]
    fn mcfg_and_pci0_say_what_the_bus_is() {
        let m = mcfg(*b"VMMPC ", *b"VMMPC   ", 1);
        assert_eq!(&m[..4], b"MCFG");
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(m.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        assert_eq!(&m[44..52], &PCI_ECAM_START.to_le_bytes());
        assert_eq!(&m[54..56], &[0, 0], "buses 0 to 0");
        let d = pci0_aml(512 << 20);
        let find = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"PCI0") && find(b"_CRS") && find(b"_PRT") && find(b"_BBN"));
        // PNP0A08 as an EISA ID (0x080AD041).
        assert!(find(&0x080a_d041u32.to_le_bytes()));
        // The 64-bit window's bounds are in _CRS.
        assert!(find(&0x1_0000_0000u64.to_le_bytes()));
        assert!(find(&0x10_ffff_ffffu64.to_le_bytes()));
    }
}
