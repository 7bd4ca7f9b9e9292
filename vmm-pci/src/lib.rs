//! PCI for the PC machine, with no KVM in sight: what a guest's PCI code
//! sees, as plain state that tests drive without `/dev/kvm`.
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | a function's configuration space: the type-0 header, write masks, BARs and their sizing, the capability list |
//! | [`msix`] | the MSI-X capability, table and pending-bit array, masking and the vectors' messages |
//! | [`bus`] | the root bus: functions by device number, configuration access through ports 0xCF8/0xCFC (mechanism #1) and through ECAM (MMCONFIG), BAR lookup for MMIO and port exits |
//! | [`alloc`] | address windows for BARs (the 32-bit hole, a 64-bit window above RAM, ports) |
//!
//! The machine (vmm-pc) puts a [`bus::PciRoot`] behind its port and MMIO
//! buses and describes the same facts to the guest in ACPI (MCFG, `PCI0`
//! with `_CRS` and `_PRT`). Interrupts leave through the device: INTx as a
//! line the machine wires, MSI-X as the messages [`msix::Msix`] computes.
//!
//! # Threat model
//!
//! The guest is untrusted: it reads and writes any configuration offset of
//! any function with any width (including widths other than 1, 2 and 4 and
//! offsets that straddle registers), sizes and moves BARs anywhere
//! (overlapping RAM, each other, or nothing), and writes any value into the
//! MSI-X table. No access panics, state stays bounded (fixed-size arrays),
//! read-only bits stay read-only, and a BAR moved onto something else only
//! changes what that BAR decodes: lookups give RAM and fixed devices
//! precedence in the machine, never the other way round.

#![deny(missing_docs)]

pub mod alloc;
pub mod bus;
pub mod config;
pub mod info;
pub mod msix;

pub use bus::{PciDevice, PciRoot};
pub use config::{BarKind, ConfigSpace};

/// What the machine did wrong building a function or the bus (the guest
/// cannot cause these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// A BAR index taken, or past the six (a 64-bit BAR takes two).
    #[error("BAR {0} is taken or out of range")]
    BarSlot(usize),
    /// A BAR size that is not a power of two in range.
    #[error("BAR size {0:#x} is not a power of two of a valid size")]
    BarSize(u64),
    /// No room for a capability in the first 256 bytes, or a mask of the
    /// wrong length.
    #[error("the capability does not fit in configuration space")]
    CapabilitySpace,
    /// Saved configuration space of the wrong size.
    #[error("saved configuration space has {0} bytes, expected 4096")]
    StateSize(usize),
    /// Saved configuration space of another function.
    #[error("saved configuration space is another function's (it differs at {0:#x})")]
    StateIdentity(usize),
    /// Every device number on the bus is taken, or the one asked for is.
    #[error("PCI slot {0} is taken or out of range (0-31)")]
    SlotTaken(u8),
    /// An address window ran out.
    #[error("no room for {size:#x} bytes in the {window} window")]
    WindowFull {
        /// Which window.
        window: &'static str,
        /// What was asked for.
        size: u64,
    },
    /// MSI-X with no vectors or more than 2048.
    #[error("MSI-X needs 1 to 2048 vectors, not {0}")]
    MsixVectors(usize),
}
