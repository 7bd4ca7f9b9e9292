//! The seam between vCPU exits and the machine's devices.
//!
//! A vCPU thread turns each PIO or MMIO exit into calls on an [`IoHandler`];
//! the machine (vmm-pc) implements it over its buses. vmm-core knows no port
//! number and no device.

use std::sync::Arc;

use crate::vcpu::ExtIntSource;

/// Handles the guest's port and memory-mapped I/O. Called from vCPU threads,
/// concurrently: implementations lock what they share.
///
/// A string instruction (`rep outsb`, …) arrives as one call per element.
/// Nothing the guest does may make an implementation panic.
pub trait IoHandler: Send + Sync {
    /// The guest reads `data.len()` bytes from `port`. Fill `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// The guest writes `data` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// The guest reads `data.len()` bytes at guest-physical `addr`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// The guest writes `data` at guest-physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// A local APIC's EOI of level-triggered `vector`, which KVM's split
    /// irqchip hands to the VMM's IO-APIC (`KVM_EXIT_IOAPIC_EOI`). Without
    /// a user-space IO-APIC there is nothing to do.
    fn ioapic_eoi(&self, _vector: u8) {}
    /// The interrupt controller outside KVM whose output reaches vCPU
    /// `vcpu` as external interrupts (`KVM_INTERRUPT`), if any: the split
    /// irqchip's 8259 pair, for the boot CPU. Asked once, when the vCPU's
    /// thread starts running it.
    fn external_interrupts(&self, _vcpu: u32) -> Option<Arc<dyn ExtIntSource>> {
        None
    }
}
