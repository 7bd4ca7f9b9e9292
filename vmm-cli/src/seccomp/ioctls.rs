//! The `ioctl` request numbers the allow-lists name.
//!
//! kvm-ioctls keeps its numbers private, so they are computed here the way
//! Linux's `_IO`/`_IOR`/`_IOW` macros do, from the kvm-bindings structures'
//! sizes; the tests hold them to the values of Linux's `<linux/kvm.h>`.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_guest_debug, kvm_interrupt,
    kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state,
    kvm_mp_state, kvm_msi, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

const KVMIO: u64 = 0xae;
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

/// Linux's `_IOC(dir, KVMIO, nr, size)`.
const fn kvm(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// A tap's `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`).
pub(super) const TUNSETOFFLOAD: u64 = vmm_virtio::net::tap::TUNSETOFFLOAD_IOCTL;
pub(super) const KVM_IRQ_LINE: u64 = kvm(WRITE, 0x61, size_of::<kvm_irq_level>());
// The split irqchip: the IO-APIC's pins as MSI routes, rewritten when the
// guest writes its table, and on a reset or a load.
pub(super) const KVM_SET_GSI_ROUTING: u64 = kvm(WRITE, 0x6a, size_of::<kvm_irq_routing>());
// Linux declares it _IOR, though it writes.
pub(super) const KVM_SET_IRQCHIP: u64 = kvm(READ, 0x63, size_of::<kvm_irqchip>());
pub(super) const KVM_SET_CLOCK: u64 = kvm(WRITE, 0x7b, size_of::<kvm_clock_data>());
pub(super) const KVM_GET_CLOCK: u64 = kvm(READ, 0x7c, size_of::<kvm_clock_data>());
pub(super) const KVM_RUN: u64 = kvm(NONE, 0x80, 0);
pub(super) const KVM_GET_REGS: u64 = kvm(READ, 0x81, size_of::<kvm_regs>());
pub(super) const KVM_SET_REGS: u64 = kvm(WRITE, 0x82, size_of::<kvm_regs>());
pub(super) const KVM_GET_SREGS: u64 = kvm(READ, 0x83, size_of::<kvm_sregs>());
pub(super) const KVM_SET_SREGS: u64 = kvm(WRITE, 0x84, size_of::<kvm_sregs>());
pub(super) const KVM_SET_MSRS: u64 = kvm(WRITE, 0x89, size_of::<kvm_msrs>());
pub(super) const KVM_SET_FPU: u64 = kvm(WRITE, 0x8d, size_of::<kvm_fpu>());
pub(super) const KVM_GET_LAPIC: u64 = kvm(READ, 0x8e, size_of::<kvm_lapic_state>());
pub(super) const KVM_SET_LAPIC: u64 = kvm(WRITE, 0x8f, size_of::<kvm_lapic_state>());
pub(super) const KVM_SET_MP_STATE: u64 = kvm(WRITE, 0x99, size_of::<kvm_mp_state>());
pub(super) const KVM_SET_PIT2: u64 = kvm(WRITE, 0xa0, size_of::<kvm_pit_state2>());
pub(super) const KVM_SET_VCPU_EVENTS: u64 = kvm(WRITE, 0xa0, size_of::<kvm_vcpu_events>());
pub(super) const KVM_IOEVENTFD: u64 = kvm(WRITE, 0x79, size_of::<kvm_ioeventfd>());
pub(super) const KVM_SIGNAL_MSI: u64 = kvm(WRITE, 0xa5, size_of::<kvm_msi>());
// A vhost ring's interrupt eventfd on an MSI route of its own.
pub(super) const KVM_IRQFD: u64 = kvm(WRITE, 0x76, size_of::<kvm_irqfd>());
pub(super) const KVM_NMI: u64 = kvm(NONE, 0x9a, 0);
// The split irqchip: our 8259s' vector for the boot vCPU (ExtINT).
pub(super) const KVM_INTERRUPT: u64 = kvm(WRITE, 0x86, size_of::<kvm_interrupt>());
pub(super) const KVM_SET_GUEST_DEBUG: u64 = kvm(WRITE, 0x9b, size_of::<kvm_guest_debug>());
// A resume after a stop tells the guest its clock stood still.
pub(super) const KVM_KVMCLOCK_CTRL: u64 = kvm(NONE, 0xad, 0);
// A snapshot: the vCPU's state saved and restored, the irqchip and PIT read.
pub(super) const KVM_GET_MSRS: u64 = kvm(READ | WRITE, 0x88, size_of::<kvm_msrs>());
pub(super) const KVM_GET_MP_STATE: u64 = kvm(READ, 0x98, size_of::<kvm_mp_state>());
pub(super) const KVM_GET_VCPU_EVENTS: u64 = kvm(READ, 0x9f, size_of::<kvm_vcpu_events>());
pub(super) const KVM_GET_DEBUGREGS: u64 = kvm(READ, 0xa1, size_of::<kvm_debugregs>());
pub(super) const KVM_SET_DEBUGREGS: u64 = kvm(WRITE, 0xa2, size_of::<kvm_debugregs>());
pub(super) const KVM_GET_XSAVE: u64 = kvm(READ, 0xa4, size_of::<kvm_xsave>());
pub(super) const KVM_SET_XSAVE: u64 = kvm(WRITE, 0xa5, size_of::<kvm_xsave>());
pub(super) const KVM_GET_XCRS: u64 = kvm(READ, 0xa6, size_of::<kvm_xcrs>());
pub(super) const KVM_SET_XCRS: u64 = kvm(WRITE, 0xa7, size_of::<kvm_xcrs>());
pub(super) const KVM_GET_IRQCHIP: u64 = kvm(READ | WRITE, 0x62, size_of::<kvm_irqchip>());
pub(super) const KVM_GET_PIT2: u64 = kvm(READ, 0x9f, size_of::<kvm_pit_state2>());
// Live migration: dirty logging on and off on the RAM slots, the log read.
pub(super) const KVM_SET_USER_MEMORY_REGION: u64 =
    kvm(WRITE, 0x46, size_of::<kvm_userspace_memory_region>());
pub(super) const KVM_GET_DIRTY_LOG: u64 = kvm(WRITE, 0x42, size_of::<kvm_dirty_log>());
pub(super) const KVM_CREATE_VCPU: u64 = kvm(NONE, 0x41, 0);
/// `struct kvm_cpuid2` without its entries: `nent` and padding.
pub(super) const KVM_SET_CPUID2: u64 = kvm(WRITE, 0x90, 8);

/// Terminal and socket requests (not KVM's; x86-64's numbers: libc has
/// them as `c_ulong` for glibc and as `c_int` for musl).
pub(super) const TCGETS: u64 = 0x5401;
pub(super) const TCSETS: u64 = 0x5402;
pub(super) const FIONBIO: u64 = 0x5421;

#[cfg(test)]
mod tests {
    use super::*;

    /// The terminal and socket numbers are libc's (a `c_int` on musl).
    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn terminal_requests_match_libc() {
        assert_eq!(TCGETS, libc::TCGETS as u64);
        assert_eq!(TCSETS, libc::TCSETS as u64);
        assert_eq!(FIONBIO, libc::FIONBIO as u64);
    }

    /// The values of Linux's headers (printed by a C program including
    /// `<linux/kvm.h>` on x86-64).
    #[test]
    fn match_linux() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_CREATE_VCPU, 0xae41);
        assert_eq!(KVM_SET_CPUID2, 0x4008_ae90);
        assert_eq!(
            size_of::<kvm_bindings::kvm_cpuid2>(),
            8,
            "KVM_SET_CPUID2's size is the header's"
        );
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_SREGS, 0x4138_ae84);
        assert_eq!(KVM_SET_FPU, 0x41a0_ae8d);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(KVM_SET_LAPIC, 0x4400_ae8f);
        assert_eq!(KVM_SET_MSRS, 0x4008_ae89);
        assert_eq!(KVM_SET_MP_STATE, 0x4004_ae99);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(KVM_SET_CLOCK, 0x4030_ae7b);
        assert_eq!(KVM_SET_IRQCHIP, 0x8208_ae63);
        assert_eq!(KVM_SET_PIT2, 0x4070_aea0);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_NMI, 0xae9a);
        assert_eq!(KVM_INTERRUPT, 0x4004_ae86);
        assert_eq!(KVM_SET_GUEST_DEBUG, 0x4048_ae9b);
        assert_eq!(KVM_KVMCLOCK_CTRL, 0xaead);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_GET_DEBUGREGS, 0x8080_aea1);
        assert_eq!(KVM_SET_DEBUGREGS, 0x4080_aea2);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_SET_XSAVE, 0x5000_aea5);
        assert_eq!(KVM_GET_XCRS, 0x8188_aea6);
        assert_eq!(KVM_SET_XCRS, 0x4188_aea7);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(KVM_GET_DIRTY_LOG, 0x4010_ae42);
        assert_eq!((TCGETS, TCSETS, FIONBIO), (0x5401, 0x5402, 0x5421));
    }
}
