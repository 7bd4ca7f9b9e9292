//! The Intel MultiProcessor Specification 1.4 table, for kernels that do not
//! use ACPI (`acpi=off`, or built without it).
//!
//! It says the same as the MADT (see [`crate::acpi`]): one processor entry
//! per vCPU (APIC ID = index, CPU 0 the bootstrap processor), one ISA bus,
//! one IO-APIC (ID = number of vCPUs) and how the ISA IRQs reach it: IRQ 0
//! on pin 2, IRQ 2 (the 8259 cascade) nowhere, IRQ 9 (the ACPI SCI) level
//! and active high, every other IRQ on its own pin with the ISA defaults.
//! LINT0 of every CPU is ExtINT (the 8259s in virtual-wire mode), LINT1
//! is NMI.
//!
//! The floating pointer is at [`EBDA_START`] (Linux scans the last KiB
//! below 640 KiB for it) and the configuration table follows it. With many
//! vCPUs the table runs past 640 KiB into the legacy video/ROM area, up to
//! at most [`MPTABLE_END`]: that area is guest RAM on this machine and the
//! e820 map reserves all of it (see [`crate::memory::e820_map`]).

use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;

use crate::layout::{irq, APIC_ADDR, EBDA_START, IOAPIC_ADDR, RSDP_START};

/// The MP table must end here, where the ACPI tables begin.
pub const MPTABLE_END: u64 = RSDP_START;

pub use crate::layout::MAX_CPUS;

/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SHORT_ENTRY_LEN: usize = 8;

/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Processor entry flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// Local APIC version of an integrated APIC, as KVM's reports it.
const LAPIC_VERSION: u8 = 0x14;
/// CPU signature: family 6 (stepping and model 0).
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX feature flags: FPU on chip, APIC on chip.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// IO-APIC version of the 82093AA, as KVM's reports it.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// The one bus, ISA, as ID 0.
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: &[u8; 6] = b"ISA   ";
/// Interrupt types.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt flags: polarity and trigger conform to the bus (bits all 0),
/// or active high (0b01) and level (0b11 << 2).
const INT_FLAGS_DEFAULT: u16 = 0;
const INT_FLAGS_LEVEL_HIGH: u16 = 0b01 | (0b11 << 2);
/// Destination local APIC ID meaning "all local APICs".
const ALL_LOCAL_APICS: u8 = 0xff;
/// The legacy ISA IRQs.
const ISA_IRQS: u8 = 16;
/// The 8259 cascade input: no device uses it.
const ISA_IRQ_CASCADE: u8 = 2;

/// Why the MP table could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// The vCPU count is 0 or above [`MAX_CPUS`].
    #[error("cannot describe {0} vCPUs in the MP table (1 to {MAX_CPUS} supported)")]
    CpuCount(u32),
    /// The table would run past [`MPTABLE_END`].
    #[error("the MP table would end at {end:#x}, past {MPTABLE_END:#x}")]
    TooLarge {
        /// The first byte past the table.
        end: u64,
    },
    /// Writing into guest memory failed.
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// vCPUs at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestRam, num_cpus: u32) -> Result<(), MpTableError> {
    let bytes = build_mptable(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

/// The floating pointer followed by the configuration table, as they go at
/// guest address `base`.
fn build_mptable(num_cpus: u32, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(num_cpus));
    }
    // Checked above: fits in a u8 with one ID to spare.
    let num_cpus = num_cpus as u8;
    let ioapic_id = num_cpus;

    let mut entries = Vec::with_capacity(
        usize::from(num_cpus) * PROCESSOR_ENTRY_LEN + (2 + 15 + 2) * SHORT_ENTRY_LEN,
    );
    let mut count: u16 = 0;
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(ISA_BUS_TYPE);
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for isa_irq in (0..ISA_IRQS).filter(|&i| i != ISA_IRQ_CASCADE) {
        let (pin, flags) = match u32::from(isa_irq) {
            irq::PIT => (ISA_IRQ_CASCADE, INT_FLAGS_DEFAULT),
            irq::ACPI_SCI => (isa_irq, INT_FLAGS_LEVEL_HIGH),
            _ => (isa_irq, INT_FLAGS_DEFAULT),
        };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        entries.extend_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, isa_irq, ioapic_id, pin]);
        count += 1;
    }
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, int_type]);
        entries.extend_from_slice(&INT_FLAGS_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LOCAL_APICS, lint]);
        count += 1;
    }

    let table_len = HEADER_LEN + entries.len();
    let end = base + (FLOATING_POINTER_LEN + table_len) as u64;
    if end > MPTABLE_END {
        return Err(MpTableError::TooLarge { end });
    }
    let table_addr = base + FLOATING_POINTER_LEN as u64;

    let mut floating = Vec::with_capacity(FLOATING_POINTER_LEN);
    floating.extend_from_slice(b"_MP_");
    // Below 1 MiB: the bound check above keeps it there.
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1 /* length in 16-byte units */, SPEC_REV, 0]);
    // Feature bytes: 0 = a configuration table is present; no IMCR.
    floating.extend_from_slice(&[0; 5]);
    floating[10] = checksum(&floating);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    // At most 44 + 254 * 20 + 19 * 8 bytes: fits in a u16.
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"VMMPC   "); // OEM ID
    table.extend_from_slice(b"PC MACHINE  "); // product ID
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.extend_from_slice(&[0, 0]); // extended table checksum, reserved
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// The byte that makes `bytes` sum to 0 (modulo 256) when its slot is 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{low_memory as memory, read, sum, u16_at, u32_at};

    /// Writes the table and returns its entries as (type, bytes).
    fn entries(mem: &GuestRam, num_cpus: u32) -> Vec<(u8, Vec<u8>)> {
        setup_mptable(mem, num_cpus).unwrap();
        let floating = read(mem, EBDA_START, FLOATING_POINTER_LEN);
        assert_eq!(&floating[..4], b"_MP_");
        assert_eq!((floating[8], floating[9]), (1, 4));
        assert_eq!(sum(&floating), 0);

        let table_addr = u64::from(u32_at(&floating, 4));
        let header = read(mem, table_addr, HEADER_LEN);
        assert_eq!(&header[..4], b"PCMP");
        assert_eq!(header[6], 4);
        assert_eq!(u32_at(&header, 36), APIC_ADDR as u32);
        let table = read(mem, table_addr, usize::from(u16_at(&header, 4)));
        assert_eq!(sum(&table), 0);

        let mut entries = Vec::new();
        let mut offset = HEADER_LEN;
        while offset < table.len() {
            let len = if table[offset] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_LEN
            } else {
                SHORT_ENTRY_LEN
            };
            entries.push((table[offset], table[offset..offset + len].to_vec()));
            offset += len;
        }
        assert_eq!(offset, table.len());
        assert_eq!(usize::from(u16_at(&header, 34)), entries.len());
        entries
    }

    fn of_type(entries: &[(u8, Vec<u8>)], kind: u8) -> Vec<Vec<u8>> {
        entries
            .iter()
            .filter(|(t, _)| *t == kind)
            .map(|(_, e)| e.clone())
            .collect()
    }

    #[test]
    fn one_processor_entry_per_cpu_with_cpu_0_the_bsp() {
        for num_cpus in [1, 2, 64, MAX_CPUS] {
            let mem = memory();
            let entries = entries(&mem, num_cpus);
            let cpus = of_type(&entries, ENTRY_PROCESSOR);
            assert_eq!(cpus.len(), num_cpus as usize);
            for (i, cpu) in cpus.iter().enumerate() {
                assert_eq!(cpu[1], i as u8); // APIC ID
                assert_ne!(cpu[2], 0); // APIC version
                let bsp = if i == 0 { CPU_BOOTSTRAP } else { 0 };
                assert_eq!(cpu[3], CPU_ENABLED | bsp);
            }
            let ioapics = of_type(&entries, ENTRY_IOAPIC);
            assert_eq!(ioapics.len(), 1);
            assert_eq!(ioapics[0][1], num_cpus as u8);
            assert_eq!(ioapics[0][3], IOAPIC_ENABLED);
            assert_eq!(u32_at(&ioapics[0], 4), IOAPIC_ADDR as u32);
        }
    }

    #[test]
    fn isa_bus_and_interrupts() {
        let mem = memory();
        let entries = entries(&mem, 4);
        let buses = of_type(&entries, ENTRY_BUS);
        assert_eq!(buses, vec![[&[ENTRY_BUS, 0][..], b"ISA   "].concat()]);

        // (source IRQ, IO-APIC ID, pin, flags) for every ISA IRQ but the cascade.
        let ints: Vec<_> = of_type(&entries, ENTRY_IO_INTERRUPT)
            .iter()
            .map(|e| {
                assert_eq!((e[1], e[4]), (INT_TYPE_INT, ISA_BUS_ID));
                (e[5], e[6], e[7], u16_at(e, 2))
            })
            .collect();
        assert_eq!(ints.len(), 15);
        assert_eq!(ints[0], (0, 4, 2, 0));
        assert!(ints.iter().all(|&(irq, ..)| irq != 2));
        assert!(ints.contains(&(9, 4, 9, 0xd)));
        assert!(ints.contains(&(4, 4, 4, 0)));
        assert!(ints.contains(&(15, 4, 15, 0)));

        let lints = of_type(&entries, ENTRY_LOCAL_INTERRUPT);
        assert_eq!(lints.len(), 2);
        assert_eq!(
            (lints[0][1], lints[0][6], lints[0][7]),
            (INT_TYPE_EXTINT, 0xff, 0)
        );
        assert_eq!(
            (lints[1][1], lints[1][6], lints[1][7]),
            (INT_TYPE_NMI, 0xff, 1)
        );
    }

    #[test]
    fn cpu_count_is_bounded() {
        let mem = memory();
        assert!(matches!(
            setup_mptable(&mem, 0),
            Err(MpTableError::CpuCount(0))
        ));
        assert!(matches!(
            setup_mptable(&mem, MAX_CPUS + 1),
            Err(MpTableError::CpuCount(255))
        ));
        // The largest table stays below the ACPI area.
        let bytes = build_mptable(MAX_CPUS, EBDA_START).unwrap();
        assert!(EBDA_START + bytes.len() as u64 <= MPTABLE_END);
    }

    #[test]
    fn table_that_would_reach_the_acpi_area_is_refused() {
        let base = MPTABLE_END - 0x100;
        assert!(build_mptable(1, base).is_ok());
        assert!(matches!(
            build_mptable(3, base),
            Err(MpTableError::TooLarge { end }) if end > MPTABLE_END
        ));
    }

    #[test]
    fn memory_without_the_ebda_is_an_error() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(MpTableError::Write(_))
        ));
    }
}
