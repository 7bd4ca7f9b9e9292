//! Guest RAM: where it goes in the physical address space, and the e820
//! map that tells the guest about it.
//!
//! RAM starts at 0 and runs up to the 32-bit MMIO hole at
//! [`MMIO_HOLE_START`] (3 GiB); whatever is left moves above the hole, to
//! [`MMIO_HOLE_END`] (4 GiB), as on QEMU's `pc` machine. Both functions here
//! are pure: [`ram_regions`] checks the size against a limit the caller
//! supplies (normally [`host_memory_bytes`]), so tests need no host.

use vm_memory::GuestAddress;

use crate::layout::{EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START, RAM_START};

/// Guest pages are 4 KiB; the RAM size must be a multiple of this.
pub const PAGE_SIZE: u64 = 0x1000;

/// The smallest RAM we accept: 16 MiB.
///
/// The machine itself needs the first MiB (zero page, page tables, command
/// line, MP and ACPI tables) plus room for a kernel loaded at 1 MiB and an
/// initrd above it. This is a floor against nonsense sizes, not a promise
/// that a given kernel boots: a distribution kernel decompresses itself at
/// 16 MiB and wants well over 100 MiB, and says so itself when it lacks it.
pub const MIN_RAM_SIZE: u64 = 16 << 20;

/// Why a RAM size cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// No RAM at all.
    #[error("guest memory size is zero")]
    Zero,
    /// Less than [`MIN_RAM_SIZE`].
    #[error("guest memory of {} is below the minimum of {}", human(*size), human(*min))]
    TooSmall {
        /// The size asked for.
        size: u64,
        /// [`MIN_RAM_SIZE`].
        min: u64,
    },
    /// Not a whole number of [`PAGE_SIZE`] pages.
    #[error("guest memory of {0} bytes is not a multiple of the 4 KiB page size")]
    NotPageAligned(u64),
    /// More than the caller's limit (normally the host's total memory).
    #[error("guest memory of {} is more than this host has ({})", human(*size), human(*limit))]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The limit it was checked against.
        limit: u64,
    },
    /// RAM would reach past the end of the 64-bit address space.
    #[error("guest memory of {} does not fit in the guest address space", human(*.0))]
    Unaddressable(u64),
}

/// What an e820 range holds (the numeric values are the e820 and PVH
/// memory-map type codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM (`E820_RAM`).
    Ram = 1,
    /// Reserved: the guest must not use it as RAM (`E820_RESERVED`).
    Reserved = 2,
}

impl E820Kind {
    /// The e820 type code.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// One range of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: E820Kind,
}

/// Checks `size` and splits it into the guest RAM regions, as
/// `(start, length)` pairs ready for `GuestRam::from_ranges`.
///
/// `limit` is the most RAM the caller allows, normally the host's
/// [`host_memory_bytes`]. The result is one region from 0 when `size` fits
/// below the MMIO hole, else two: `0..3 GiB` and `4 GiB..4 GiB + (size - 3 GiB)`.
pub fn ram_regions(size: u64, limit: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if size == 0 {
        return Err(MemoryError::Zero);
    }
    if size < MIN_RAM_SIZE {
        return Err(MemoryError::TooSmall {
            size,
            min: MIN_RAM_SIZE,
        });
    }
    if size % PAGE_SIZE != 0 {
        return Err(MemoryError::NotPageAligned(size));
    }
    if size > limit {
        return Err(MemoryError::TooLarge { size, limit });
    }
    let too_large = || MemoryError::Unaddressable(size);
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(
        GuestAddress(RAM_START),
        usize::try_from(low).map_err(|_| too_large())?,
    )];
    let high = size - low;
    if high > 0 {
        // The top of the high region must stay addressable.
        MMIO_HOLE_END.checked_add(high).ok_or_else(too_large)?;
        regions.push((
            GuestAddress(MMIO_HOLE_END),
            usize::try_from(high).map_err(|_| too_large())?,
        ));
    }
    Ok(regions)
}

/// The e820 map for `size` bytes of RAM laid out as [`ram_regions`] does.
///
/// - RAM from 0 to the EBDA ([`EBDA_START`]);
/// - reserved from the EBDA to 1 MiB: the MP table in the EBDA, the legacy
///   video and ROM area, and the ACPI tables at 0xE0000-0xFFFFF;
/// - RAM from 1 MiB to the end of low RAM (at most the 3 GiB hole);
/// - reserved: the PCI ECAM window in the hole;
/// - RAM from 4 GiB for whatever did not fit below the hole.
///
/// `size` should have passed [`ram_regions`]; smaller sizes give a map
/// that stops where the RAM does.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: RAM_START,
        size: EBDA_START.min(size),
        kind: E820Kind::Ram,
    }];
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIMEM_START - EBDA_START,
        kind: E820Kind::Reserved,
    });
    let low_end = size.min(MMIO_HOLE_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    // The PCI ECAM window: Linux uses MMCONFIG only where the firmware
    // reserved it.
    map.push(E820Entry {
        addr: crate::pci::PCI_ECAM_START,
        size: crate::pci::PCI_ECAM_SIZE,
        kind: E820Kind::Reserved,
    });
    if size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: size - MMIO_HOLE_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// The host's total memory (`MemTotal` in `/proc/meminfo`, from
/// `sysinfo(2)`: one call on the way to the guest's first instruction,
/// where reading the file took nine), in bytes; `None` if it cannot be had.
pub fn host_memory_bytes() -> Option<u64> {
    // SAFETY: an all-zero `sysinfo` is a valid value of the plain C
    // struct, which the call fills in.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable `struct sysinfo`.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    info.totalram.checked_mul(u64::from(info.mem_unit.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const NO_LIMIT: u64 = u64::MAX;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Ram,
        }
    }

    fn low_reserved() -> E820Entry {
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        }
    }

    fn ecam() -> E820Entry {
        E820Entry {
            addr: crate::pci::PCI_ECAM_START,
            size: crate::pci::PCI_ECAM_SIZE,
            kind: E820Kind::Reserved,
        }
    }

    /// The RAM ranges of an e820 map add up to the RAM size and none overlap.
    fn check_e820(map: &[E820Entry], size: u64) {
        let ram_total: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // The reserved EBDA..1 MiB range is backed by RAM but not offered.
        assert_eq!(ram_total + (HIMEM_START - EBDA_START), size);
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr);
        }
    }

    #[test]
    fn regions_512_mib() {
        let regions = ram_regions(512 * MIB, NO_LIMIT).unwrap();
        assert_eq!(regions, vec![(GuestAddress(0), (512 * MIB) as usize)]);
        let map = e820_map(512 * MIB);
        assert_eq!(
            map,
            vec![
                ram(0, EBDA_START),
                low_reserved(),
                ram(HIMEM_START, 512 * MIB - HIMEM_START),
                ecam(),
            ]
        );
        check_e820(&map, 512 * MIB);
    }

    #[test]
    fn regions_exactly_3_gib() {
        let regions = ram_regions(3 * GIB, NO_LIMIT).unwrap();
        assert_eq!(regions, vec![(GuestAddress(0), (3 * GIB) as usize)]);
        let map = e820_map(3 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[3], ecam());
        assert_eq!(map[2], ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START));
        check_e820(&map, 3 * GIB);
    }

    #[test]
    fn regions_4_gib() {
        let regions = ram_regions(4 * GIB, NO_LIMIT).unwrap();
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), GIB as usize)
            ]
        );
        let map = e820_map(4 * GIB);
        assert_eq!(map.len(), 5);
        assert_eq!(map[3], ecam());
        assert_eq!(map[4], ram(4 * GIB, GIB));
        check_e820(&map, 4 * GIB);
    }

    #[test]
    fn regions_8_gib() {
        let regions = ram_regions(8 * GIB, NO_LIMIT).unwrap();
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (5 * GIB) as usize)
            ]
        );
        let map = e820_map(8 * GIB);
        assert_eq!(map[2], ram(HIMEM_START, 3 * GIB - HIMEM_START));
        assert_eq!(map[4], ram(4 * GIB, 5 * GIB));
        check_e820(&map, 8 * GIB);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert_eq!(ram_regions(0, NO_LIMIT), Err(MemoryError::Zero));
        assert_eq!(
            ram_regions(MIN_RAM_SIZE - PAGE_SIZE, NO_LIMIT),
            Err(MemoryError::TooSmall {
                size: MIN_RAM_SIZE - PAGE_SIZE,
                min: MIN_RAM_SIZE
            })
        );
        assert!(ram_regions(MIN_RAM_SIZE, NO_LIMIT).is_ok());
        assert_eq!(
            ram_regions(64 * MIB + 1, NO_LIMIT),
            Err(MemoryError::NotPageAligned(64 * MIB + 1))
        );
        assert_eq!(
            ram_regions(2 * GIB, GIB),
            Err(MemoryError::TooLarge {
                size: 2 * GIB,
                limit: GIB
            })
        );
        assert!(ram_regions(GIB, GIB).is_ok());
    }

    #[test]
    fn regions_beyond_the_address_space_are_refused() {
        let size = u64::MAX - PAGE_SIZE + 1;
        assert_eq!(
            ram_regions(size, NO_LIMIT),
            Err(MemoryError::Unaddressable(size))
        );
    }

    #[test]
    fn host_memory_is_meminfos_mem_total() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert_eq!(host_memory_bytes(), Some(kib * 1024));
    }
}

/// A byte count for people: "512 MiB", "1.5 GiB", "4096 bytes".
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            if bytes % size == 0 {
                return format!("{} {unit}", bytes / size);
            }
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod human_tests {
    use super::human;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(64 << 40), "64 TiB");
        assert_eq!(human(100), "100 bytes");
    }
}
