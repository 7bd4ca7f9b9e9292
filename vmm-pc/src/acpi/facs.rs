//! The FACS's firmware waking vector: where the boot CPU resumes after S3.
//!
//! Before it enters S3 the guest writes the physical address of its wake-up
//! code into the FACS (Linux: `acpi_set_firmware_waking_vector`, the 32-bit
//! `Firmware_Waking_Vector` at offset 12, with `X_Firmware_Waking_Vector` at
//! offset 24 left 0). With no firmware, the machine itself reads it on
//! wake-up and starts the boot CPU there in real mode, as the ACPI
//! specification describes for a real-mode vector: `CS` = vector >> 4,
//! `IP` = vector & 0xF.
//!
//! What [`wake_target`] refuses, so that the machine does a full system
//! reset instead (never a panic): a vector of 0 (the guest set none), one a
//! real-mode `CS:IP` cannot reach (1 MiB and above), one outside guest RAM,
//! a FACS that cannot be read, and a non-zero `X_Firmware_Waking_Vector`
//! (a protected-mode or 64-bit wake-up this machine does not start).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_core::ram::GuestRam;

use crate::layout::ACPI_TABLES_START;

/// Where the FACS is: the first table placed, 64-byte aligned.
pub const FACS_ADDR: u64 = ACPI_TABLES_START.next_multiple_of(super::FACS_ALIGN);
/// Offset of `Firmware_Waking_Vector` (32 bits) in the FACS.
pub const WAKING_VECTOR_OFFSET: u64 = 12;
/// Offset of `X_Firmware_Waking_Vector` (64 bits) in the FACS.
pub const X_WAKING_VECTOR_OFFSET: u64 = 24;
/// A real-mode `CS:IP` with `IP` < 16 reaches below this.
const REAL_MODE_LIMIT: u64 = 0x10_0000;

/// Where the boot CPU goes on wake-up from S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeTarget {
    /// Real mode at `segment:offset`.
    RealMode {
        /// `CS`: vector >> 4.
        segment: u16,
        /// `IP`: vector & 0xF.
        offset: u16,
    },
    /// No usable vector: the machine resets instead; the reason, in words.
    Reset(&'static str),
}

/// Decides where to wake from the two vectors, with `in_ram` telling
/// whether an address is guest RAM.
pub fn classify(vector: u32, x_vector: u64, in_ram: impl Fn(u64) -> bool) -> WakeTarget {
    let addr = u64::from(vector);
    if x_vector != 0 {
        WakeTarget::Reset("the guest set X_Firmware_Waking_Vector, which is not supported")
    } else if vector == 0 {
        WakeTarget::Reset("the guest set no waking vector")
    } else if addr >= REAL_MODE_LIMIT {
        WakeTarget::Reset("the waking vector is out of real mode's reach (1 MiB)")
    } else if !in_ram(addr) {
        WakeTarget::Reset("the waking vector is outside guest RAM")
    } else {
        // Below 1 MiB: vector >> 4 fits 16 bits.
        WakeTarget::RealMode {
            segment: u16::try_from(addr >> 4).unwrap_or(0),
            offset: u16::try_from(addr & 0xF).unwrap_or(0),
        }
    }
}

/// Reads the FACS in `mem` and decides where the boot CPU wakes.
pub fn wake_target(mem: &GuestRam) -> WakeTarget {
    let vector = mem.read_obj::<u32>(GuestAddress(FACS_ADDR + WAKING_VECTOR_OFFSET));
    let x_vector = mem.read_obj::<u64>(GuestAddress(FACS_ADDR + X_WAKING_VECTOR_OFFSET));
    match (vector, x_vector) {
        (Ok(v), Ok(x)) => classify(v, x, |a| mem.address_in_range(GuestAddress(a))),
        _ => WakeTarget::Reset("the FACS cannot be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::low_memory;

    #[test]
    fn real_mode_vectors_split_into_cs_and_ip() {
        let all = |_| true;
        assert_eq!(
            classify(0x9_a1b7, 0, all),
            WakeTarget::RealMode {
                segment: 0x9a1b,
                offset: 7
            }
        );
        assert_eq!(
            classify(0x1_0000, 0, all),
            WakeTarget::RealMode {
                segment: 0x1000,
                offset: 0
            }
        );
        assert_eq!(
            classify(0xF_FFFF, 0, all),
            WakeTarget::RealMode {
                segment: 0xFFFF,
                offset: 0xF
            }
        );
    }

    #[test]
    fn unusable_vectors_reset() {
        let all = |_| true;
        let reset = |t| matches!(t, WakeTarget::Reset(_));
        assert!(reset(classify(0, 0, all)));
        assert!(reset(classify(0x10_0000, 0, all)));
        assert!(reset(classify(u32::MAX, 0, all)));
        assert!(reset(classify(0x1_0000, 0x1_0000, all)));
        assert!(reset(classify(0x1_0000, 0, |_| false)));
    }

    #[test]
    fn the_vector_is_read_from_the_facs() {
        let mem = low_memory();
        crate::acpi::create_acpi_tables(&mem, 1, 512 << 20, false).unwrap();
        let facs = crate::test_util::read(&mem, FACS_ADDR, 64);
        assert_eq!(&facs[..4], b"FACS");
        assert!(matches!(wake_target(&mem), WakeTarget::Reset(_)));
        mem.write_obj(0x9_a000u32, GuestAddress(FACS_ADDR + WAKING_VECTOR_OFFSET))
            .unwrap();
        assert_eq!(
            wake_target(&mem),
            WakeTarget::RealMode {
                segment: 0x9a00,
                offset: 0
            }
        );
        mem.write_obj(1u64, GuestAddress(FACS_ADDR + X_WAKING_VECTOR_OFFSET))
            .unwrap();
        assert!(matches!(wake_target(&mem), WakeTarget::Reset(_)));
        // A machine whose RAM ends before the FACS: unreadable, reset.
        let small = GuestRam::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(wake_target(&small), WakeTarget::Reset(_)));
    }
}
