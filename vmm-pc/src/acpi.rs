//! ACPI tables for the PC machine, built with the `acpi_tables` crate.
//!
//! The machine is a legacy PC, not a "hardware-reduced" one: the FADT
//! describes a PM1a event and control block (see `layout::port`), an SCI on
//! IRQ 9, and says the 8259 PICs, PIT, CMOS RTC (century byte at 0x32) and
//! i8042 are there, so Linux keeps using them. The tables:
//!
//! - RSDP (revision 2) at [`RSDP_START`] → XSDT;
//! - XSDT → FADT, MADT, MCFG;
//! - FADT → DSDT, FACS;
//! - FACS: the firmware waking vector the guest writes before S3, which
//!   the machine reads on wake-up (see [`facs`]);
//! - DSDT: `\_S3_` (suspend to RAM, `SLP_TYP` = 1) and `\_S5_` (soft-off,
//!   `SLP_TYP` = 5), so the guest can suspend and power off through PM1a
//!   control; the pvpanic device; and the PCI host bridge
//!   `\_SB_.PCI0` (see [`crate::pci`]). Linux finds the legacy devices
//!   without ACPI device objects (with the FADT's 8042 flag set it probes
//!   the i8042 ports directly when no PNP device describes them);
//! - MCFG: the PCI Express ECAM window;
//! - MADT: one local APIC per vCPU, the IO-APIC, and the ISA interrupt
//!   overrides;
//! - WDAT, with an i6300esb only: the watchdog's actions (see [`wdat`]).
//!
//! All but the RSDP go from [`ACPI_TABLES_START`] up, below [`BIOS_END`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;

use crate::layout::{irq, port, ACPI_TABLES_START, APIC_ADDR, BIOS_END, IOAPIC_ADDR, RSDP_START};
use crate::pci;

pub mod facs;
pub mod wdat;

/// The OEM ID in every table.
const OEM_ID: [u8; 6] = *b"VMMPC ";
/// The OEM table ID in every table.
const OEM_TABLE_ID: [u8; 8] = *b"VMMPC   ";
/// The OEM revision in every table.
const OEM_REVISION: u32 = 1;

pub use crate::layout::MAX_CPUS;

/// MADT revision (ACPI 6.2-6.4).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: AML integers are 64-bit.
const DSDT_REVISION: u8 = 2;
/// Size of the common table header; the MADT's own fields follow it.
const HEADER_LEN: u32 = 36;
/// The MADT's fixed part: header, local APIC address, flags.
const MADT_FIXED_LEN: u32 = 44;
/// MADT flags: PCAT_COMPAT, the system also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT structure types we build by hand.
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: polarity active high, trigger edge / level.
const INTI_ACTIVE_HIGH: u16 = 0b01;
const INTI_EDGE: u16 = 0b01 << 2;
const INTI_LEVEL: u16 = 0b11 << 2;
/// FADT IAPC_BOOT_ARCH: LEGACY_DEVICES (ISA devices such as the RTC, PIT
/// and serial ports are there) and 8042 (a PS/2 controller is there).
const IAPC_BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// The CMOS index of the century byte (the FADT's `CENTURY`).
const CMOS_CENTURY: u8 = 0x32;
/// PM1 event block length: status and enable registers, 2 bytes each.
const PM1_EVT_LEN: u8 = 4;
/// PM1 control block length.
const PM1_CNT_LEN: u8 = 2;
/// `\_S5_` SLP_TYP value; vmm-devices' PM1 control powers off on it.
pub const SLP_TYP_S5: u8 = vmm_devices::S5_SLP_TYP;
/// `\_S3_` SLP_TYP value; vmm-devices' PM1 control suspends on it.
pub const SLP_TYP_S3: u8 = vmm_devices::S3_SLP_TYP;
/// Above this many vCPUs the FADT asks for physical APIC destination
/// mode (flat logical mode addresses only 8 CPUs), as QEMU does.
const FLAT_LOGICAL_MAX_CPUS: u32 = 8;
/// The FACS must be 64-byte aligned; other tables get 16.
pub(crate) const FACS_ALIGN: u64 = 64;
const TABLE_ALIGN: u64 = 16;

/// Why the ACPI tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count is 0 or above [`MAX_CPUS`].
    #[error("cannot describe {0} vCPUs in the MADT (1 to {MAX_CPUS} supported)")]
    CpuCount(u32),
    /// The tables would run past the BIOS area.
    #[error("the ACPI tables would end at {end:#x}, past {BIOS_END:#x}")]
    TooLarge {
        /// The first byte past the tables.
        end: u64,
    },
    /// Writing into guest memory failed.
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Hands out addresses from [`ACPI_TABLES_START`] up to [`BIOS_END`].
struct TableSpace {
    next: u64,
}

impl TableSpace {
    fn place(&mut self, len: usize, align: u64) -> Result<u64, AcpiError> {
        let start = self.next.next_multiple_of(align);
        let end = start + len as u64;
        if end > BIOS_END {
            return Err(AcpiError::TooLarge { end });
        }
        self.next = end;
        Ok(start)
    }
}

/// Builds the ACPI tables for `num_cpus` vCPUs (APIC IDs 0 to
/// `num_cpus - 1`) and `ram` bytes of RAM (with the WDAT if `wdat`),
/// writes them into guest memory, and returns the RSDP's address, for the
/// boot information.
pub fn create_acpi_tables(
    mem: &GuestRam,
    num_cpus: u32,
    ram: u64,
    wdat: bool,
) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(num_cpus));
    }
    let mut space = TableSpace {
        next: ACPI_TABLES_START,
    };
    let mut write = |bytes: &[u8], align: u64| -> Result<u64, AcpiError> {
        let addr = space.place(bytes.len(), align)?;
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
        Ok(addr)
    };

    // First, so that it lands at `facs::FACS_ADDR`.
    let facs = write(&aml_bytes(&acpi_tables::facs::FACS::new()), FACS_ALIGN)?;
    debug_assert_eq!(facs, facs::FACS_ADDR);
    let dsdt = write(dsdt(ram).as_slice(), TABLE_ALIGN)?;
    let fadt = write(&fadt(num_cpus, dsdt, facs), TABLE_ALIGN)?;
    let madt = write(madt(num_cpus).as_slice(), TABLE_ALIGN)?;
    let mcfg = write(&pci::mcfg(OEM_ID, OEM_TABLE_ID, OEM_REVISION), TABLE_ALIGN)?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    xsdt.add_entry(mcfg);
    if wdat {
        xsdt.add_entry(write(wdat::wdat().as_slice(), TABLE_ALIGN)?);
    }
    let xsdt = write(&aml_bytes(&xsdt), TABLE_ALIGN)?;

    let rsdp = GuestAddress(RSDP_START);
    mem.write_slice(&aml_bytes(&Rsdp::new(OEM_ID, xsdt)), rsdp)
        .map_err(AcpiError::Write)?;
    Ok(rsdp)
}

/// The bytes an `acpi_tables` object serializes to.
fn aml_bytes(object: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.to_aml_bytes(&mut bytes);
    bytes
}

/// AML already serialized (a device built elsewhere).
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// The DSDT: `Name (\_S3_, Package () { 1, 1, 0, 0 })` and
/// `Name (\_S5_, Package () { 5, 5, 0, 0 })`, i.e. SLP_TYP 1 and 5 for PM1a
/// and PM1b control, then two reserved values; `\_SB_.PEVT`, the
/// pvpanic device (`QEMU0001`, I/O port 0x505); and `\_SB_.PCI0`, the PCI
/// host bridge, for a guest with `ram` bytes of RAM.
fn dsdt(ram: u64) -> Sdt {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let s3 = aml::Name::new(
        "_S3_".into(),
        &aml::Package::new(vec![&SLP_TYP_S3, &SLP_TYP_S3, &aml::ZERO, &aml::ZERO]),
    );
    dsdt.append_slice(&aml_bytes(&s3));
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]),
    );
    dsdt.append_slice(&aml_bytes(&s5));
    // QEMU's pvpanic device, where Linux's pvpanic-mmio driver finds it.
    let hid: aml::AmlStr = "QEMU0001";
    let io = aml::IO::new(port::PVPANIC, port::PVPANIC, 1, 1);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    let present: u8 = 0x0F;
    let (hid, crs, sta) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CRS".into(), &crs),
        aml::Name::new("_STA".into(), &present),
    );
    let pvpanic = aml::Device::new("PEVT".into(), vec![&hid, &crs, &sta]);
    let pci0 = RawAml(pci::pci0_aml(ram));
    let sb = aml::Scope::new("\\_SB_".into(), vec![&pvpanic, &pci0]);
    dsdt.append_slice(&aml_bytes(&sb));
    dsdt
}

/// The FADT (revision 6.5) of a legacy, not hardware-reduced, PC.
///
/// No SMI command port: the machine is always in ACPI mode. No PM timer and
/// no GPE blocks. The 32-bit and `X_` forms of each address agree, except
/// the FACS's, which is given once (`FIRMWARE_CTRL`, as QEMU gives it): the
/// spec wants one of the two left zero, and Linux lists a FACS named in
/// both twice.
fn fadt(num_cpus: u32, dsdt: u64, facs: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        // WBINVD works; C1 (HLT) on every CPU; no fixed-feature sleep button.
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton);
    if num_cpus > FLAT_LOGICAL_MAX_CPUS {
        fadt = fadt.flag(Flags::ForceApicPhysicalDestinationMode);
    }
    // Both live in the BIOS area, below 1 MiB.
    fadt.firmware_ctrl = (facs as u32).into();
    fadt.dsdt = (dsdt as u32).into();
    fadt.x_dsdt = dsdt.into();
    fadt.sci_int = (irq::ACPI_SCI as u16).into();
    fadt.smi_cmd = 0.into();
    fadt.pm1a_evt_blk = u32::from(port::PM1A_EVT_BLK).into();
    fadt.pm1_evt_len = PM1_EVT_LEN;
    fadt.pm1a_cnt_blk = u32::from(port::PM1A_CNT_BLK).into();
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.x_pm1a_evt_blk = io_gas(port::PM1A_EVT_BLK, PM1_EVT_LEN);
    fadt.x_pm1a_cnt_blk = io_gas(port::PM1A_CNT_BLK, PM1_CNT_LEN);
    // No "CMOS RTC not present" flag: the MC146818 is there, and Linux
    // registers its rtc_cmos device on IRQ 8.
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_LEGACY_DEVICES | IAPC_BOOT_ARCH_8042).into();
    fadt.century = CMOS_CENTURY;
    aml_bytes(&fadt.finalize())
}

/// A generic address for `len` bytes of I/O ports made of 16-bit registers.
fn io_gas(port: u16, len: u8) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        len * 8,
        0,
        AccessSize::WordAccess,
        u64::from(port),
    )
}

/// The MADT: local APIC address and PCAT_COMPAT, then one enabled local
/// APIC per vCPU (processor UID = APIC ID = index), the IO-APIC, the ISA
/// interrupt overrides, and LINT1 as NMI on every CPU.
///
/// The IO-APIC's ID is `num_cpus`, the first after the vCPUs', so no two
/// APICs share an ID (the MP table uses the same). x86-64 Linux takes the
/// ID from here and never compares it with the IO-APIC's ID register.
fn madt(num_cpus: u32) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_FIXED_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(HEADER_LEN as usize, APIC_ADDR as u32);
    madt.write_u32(HEADER_LEN as usize + 4, MADT_PCAT_COMPAT);
    // num_cpus <= MAX_CPUS (254), checked by the caller.
    for id in 0..num_cpus as u8 {
        let lapic = ProcessorLocalApic::new(id, id, EnabledStatus::Enabled);
        madt.append_slice(&aml_bytes(&lapic));
    }
    let ioapic = IoApic::new(num_cpus as u8, IOAPIC_ADDR as u32, 0);
    madt.append_slice(&aml_bytes(&ioapic));
    // The PIT's IRQ 0 arrives on IO-APIC pin 2, as on real PCs.
    madt.append_slice(&interrupt_override(
        irq::PIT as u8,
        2,
        INTI_ACTIVE_HIGH | INTI_EDGE,
    ));
    // The SCI is level-triggered, active high (PIIX4).
    madt.append_slice(&interrupt_override(
        irq::ACPI_SCI as u8,
        irq::ACPI_SCI,
        INTI_ACTIVE_HIGH | INTI_LEVEL,
    ));
    madt.append_slice(&local_apic_nmi());
    madt
}

/// MADT Interrupt Source Override (type 2): ISA `source` arrives on `gsi`.
fn interrupt_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut entry = vec![
        MADT_INTERRUPT_SOURCE_OVERRIDE,
        10,
        0, /* ISA bus */
        source,
    ];
    entry.extend_from_slice(&gsi.to_le_bytes());
    entry.extend_from_slice(&flags.to_le_bytes());
    entry
}

/// MADT Local APIC NMI (type 4, 6 bytes): LINT1 of all processors (UID 0xFF)
/// is the NMI line, with the bus's default polarity and trigger.
fn local_apic_nmi() -> Vec<u8> {
    let mut entry = vec![MADT_LOCAL_APIC_NMI, 6, 0xff];
    entry.extend_from_slice(&0u16.to_le_bytes());
    entry.push(1); // LINT1
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{low_memory as memory, read, sum, u16_at, u32_at, u64_at};

    /// Reads the table at `addr`, checks its signature, checksum and place,
    /// and returns its bytes.
    fn table(mem: &GuestRam, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, HEADER_LEN as usize);
        assert_eq!(&header[..4], signature);
        let len = u32_at(&header, 4) as usize;
        assert!(addr >= ACPI_TABLES_START && addr + len as u64 <= BIOS_END);
        let bytes = read(mem, addr, len);
        assert_eq!(
            sum(&bytes),
            0,
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        bytes
    }

    /// All the tables of a machine with `num_cpus` vCPUs: (FADT, MADT, DSDT).
    fn tables(mem: &GuestRam, num_cpus: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let rsdp_addr = create_acpi_tables(mem, num_cpus, 512 << 20, false).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(RSDP_START));
        let rsdp = read(mem, RSDP_START, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2); // revision
        assert_eq!(u32_at(&rsdp, 20), 36); // length
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);

        let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 3 * 8);
        let fadt = table(mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(mem, u64_at(&xsdt, 44), b"APIC");
        let mcfg = table(mem, u64_at(&xsdt, 52), b"MCFG");
        assert_eq!(&mcfg[44..52], &crate::pci::PCI_ECAM_START.to_le_bytes());
        assert_eq!(u32_at(&fadt, 40) as u64, u64_at(&fadt, 140));
        let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
        (fadt, madt, dsdt)
    }

    /// The MADT's interrupt-controller structures, as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut offset = MADT_FIXED_LEN as usize;
        while offset < madt.len() {
            let len = usize::from(madt[offset + 1]);
            assert!(len >= 2);
            entries.push((madt[offset], madt[offset..offset + len].to_vec()));
            offset += len;
        }
        assert_eq!(offset, madt.len());
        entries
    }

    #[test]
    fn fadt_describes_a_legacy_pc() {
        let mem = memory();
        let (fadt, _, _) = tables(&mem, 1);
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6); // revision
        let flags = u32_at(&fadt, 112);
        assert_eq!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::Wbinvd as u32, 0);
        assert_eq!(flags & Flags::ForceApicPhysicalDestinationMode as u32, 0);
        // IAPC_BOOT_ARCH: legacy devices, 8042 (and a CMOS RTC).
        assert_eq!(u16_at(&fadt, 109), 0b11);
        assert_eq!(fadt[108], 0x32); // CENTURY
        assert_eq!(u16_at(&fadt, 46), 9); // SCI_INT
        assert_eq!(u32_at(&fadt, 48), 0); // SMI_CMD
        assert_eq!(u32_at(&fadt, 56), 0x600); // PM1a_EVT_BLK
        assert_eq!(u32_at(&fadt, 64), 0x604); // PM1a_CNT_BLK
        assert_eq!(u32_at(&fadt, 76), 0); // PM_TMR_BLK
        assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 0)); // lengths
                                                               // X_PM1a_EVT_BLK and X_PM1a_CNT_BLK: system I/O, width, port.
        assert_eq!((fadt[148], fadt[149], u64_at(&fadt, 152)), (1, 32, 0x600));
        assert_eq!((fadt[172], fadt[173], u64_at(&fadt, 176)), (1, 16, 0x604));
        // FACS, 64-byte aligned, in FIRMWARE_CTRL only (X_FIRMWARE_CTRL 0).
        assert_eq!(u64_at(&fadt, 132), 0);
        let facs = u64::from(u32_at(&fadt, 36));
        assert_ne!(facs, 0);
        assert_eq!(facs % 64, 0);
        let facs = read(&mem, facs, 64);
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(&facs, 4), 64);
    }

    #[test]
    fn many_cpus_force_physical_apic_mode() {
        let mem = memory();
        let (fadt, _, _) = tables(&mem, 9);
        assert_ne!(
            u32_at(&fadt, 112) & Flags::ForceApicPhysicalDestinationMode as u32,
            0
        );
    }

    #[test]
    fn dsdt_defines_s5() {
        let mem = memory();
        let (_, _, dsdt) = tables(&mem, 1);
        // NameOp "_S5_" PackageOp len=8 count=4 BytePrefix 5 BytePrefix 5 Zero Zero
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0x00, 0x00,
        ];
        assert!(dsdt.windows(s5.len()).any(|w| w == s5), "{dsdt:x?}");
        assert_eq!(dsdt[8], DSDT_REVISION);
    }

    #[test]
    fn dsdt_defines_s3() {
        let mem = memory();
        let (fadt, _, dsdt) = tables(&mem, 1);
        // NameOp "_S3_" PackageOp len=6 count=4 OneOp OneOp Zero Zero
        let s3 = [
            0x08, b'_', b'S', b'3', b'_', 0x12, 0x06, 0x04, 0x01, 0x01, 0x00, 0x00,
        ];
        assert_eq!(SLP_TYP_S3, 1);
        assert!(dsdt.windows(s3.len()).any(|w| w == s3), "{dsdt:x?}");
        // The FADT points at the FACS where the machine looks for the
        // waking vector.
        assert_eq!(u64::from(u32_at(&fadt, 36)), facs::FACS_ADDR);
    }

    #[test]
    fn dsdt_has_the_pvpanic_device() {
        let mem = memory();
        let (_, _, dsdt) = tables(&mem, 1);
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        // Scope (\_SB_) { Device (PEVT) { _HID "QEMU0001", _CRS IO 0x505 } }
        assert!(has(b"\\_SB_"), "{dsdt:x?}");
        assert!(has(b"PEVT"));
        assert!(has(b"_HID\x0dQEMU0001\x00"), "a string _HID");
        // IO port descriptor: decode16, min 0x505, max 0x505, align 1, len 1.
        assert!(has(&[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
        // The whole table still sums to zero.
        assert_eq!(dsdt.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu() {
        for num_cpus in [1u32, 2, 64, MAX_CPUS] {
            let mem = memory();
            let (_, madt, _) = tables(&mem, num_cpus);
            assert_eq!(u32_at(&madt, 36), APIC_ADDR as u32);
            assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT);
            let entries = madt_entries(&madt);
            let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
            assert_eq!(lapics.len(), num_cpus as usize);
            for (i, (_, lapic)) in lapics.iter().enumerate() {
                // UID, APIC ID, flags = enabled.
                assert_eq!(
                    (lapic[2], lapic[3], u32_at(lapic, 4)),
                    (i as u8, i as u8, 1)
                );
            }
            let ioapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let ioapic = &ioapics[0].1;
            assert_eq!(ioapic[2], num_cpus as u8);
            assert_eq!(u32_at(ioapic, 4), IOAPIC_ADDR as u32);
            assert_eq!(u32_at(ioapic, 8), 0);
        }
    }

    #[test]
    fn madt_overrides_irq0_and_the_sci() {
        let mem = memory();
        let (_, madt, _) = tables(&mem, 2);
        let overrides: Vec<_> = madt_entries(&madt)
            .into_iter()
            .filter(|(t, _)| *t == 2)
            .map(|(_, e)| (e[2], e[3], u32_at(&e, 4), u16_at(&e, 8)))
            .collect();
        // (bus, source IRQ, GSI, flags)
        assert_eq!(overrides, vec![(0, 0, 2, 0x5), (0, 9, 9, 0xd)]);
        let nmis: Vec<_> = madt_entries(&madt)
            .into_iter()
            .filter(|(t, _)| *t == 4)
            .collect();
        assert_eq!(nmis, vec![(4, vec![4, 6, 0xff, 0, 0, 1])]);
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        let mem = memory();
        assert!(matches!(
            create_acpi_tables(&mem, 0, 512 << 20, false),
            Err(AcpiError::CpuCount(0))
        ));
        assert!(matches!(
            create_acpi_tables(&mem, MAX_CPUS + 1, 512 << 20, false),
            Err(AcpiError::CpuCount(255))
        ));
    }

    #[test]
    fn tables_outside_guest_memory_are_an_error() {
        // RAM ends before the BIOS area.
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            create_acpi_tables(&mem, 1, 512 << 20, false),
            Err(AcpiError::Write(_))
        ));
    }

    #[test]
    fn table_space_ends_at_the_bios_end() {
        let mut space = TableSpace {
            next: ACPI_TABLES_START,
        };
        assert_eq!(space.place(10, 64).unwrap(), ACPI_TABLES_START);
        assert_eq!(space.place(1, 16).unwrap(), ACPI_TABLES_START + 16);
        let room = (BIOS_END - space.next.next_multiple_of(16)) as usize;
        assert!(matches!(
            space.place(room + 1, 16),
            Err(AcpiError::TooLarge { end }) if end == BIOS_END + 1
        ));
        assert!(space.place(room, 16).is_ok());
    }

    #[test]
    fn the_wdat_is_listed_only_with_the_i6300esb() {
        let mem = memory();
        let rsdp = create_acpi_tables(&mem, 1, 512 << 20, true).unwrap();
        let rsdp = read(&mem, rsdp.0, 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 4 * 8);
        let wdat = table(&mem, u64_at(&xsdt, 60), b"WDAT");
        assert_eq!(wdat, wdat::wdat().as_slice());
        let (_, _, _) = tables(&mem, 1); // without: three entries
    }
}
