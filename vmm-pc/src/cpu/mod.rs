//! x86 vCPU set-up: CPUID, MSRs, local APIC LINT pins, and the boot CPU's
//! registers and tables.
//!
//! Each submodule splits "compute the KVM struct" from "issue the ioctl":
//! pure builders ([`cpuid::vcpu_cpuid`], [`msr::boot_msrs`],
//! [`lapic::set_lint_modes`], [`regs::boot_regs`], [`regs::boot_sregs`],
//! [`regs::write_identity_page_tables`], ...) are tested without
//! `/dev/kvm`; thin `apply_*(&VcpuFd, ...)` functions issue the ioctls.
//! [`configure_vcpu`] strings them together for one vCPU.
//!
//! - [`gdt`]: segment descriptors and the boot GDT.
//! - [`regs`]: [`BootEntry`] and the boot CPU's registers, GDT/IDT and
//!   identity page tables.
//! - [`cpuid`]: per-vCPU CPUID from KVM's supported CPUID.
//! - [`msr`]: the MSRs every vCPU starts with.
//! - [`lapic`]: LINT0 = ExtINT, LINT1 = NMI.
//! - [`dump`], [`lapic_dump`]: a saved vCPU's registers and local APIC as
//!   the monitor's `info registers` and `info lapic` print them.
//!
//! # Boot CPU and APs
//!
//! Only the boot CPU gets registers: it jumps straight into the kernel. The
//! APs are left in the state KVM creates them in. With the in-kernel
//! irqchip, KVM (`kvm_arch_vcpu_create`) makes every vCPU except the BSP
//! (`vcpu_id == 0` unless `KVM_SET_BOOT_CPU_ID` says otherwise) start in
//! `KVM_MP_STATE_UNINITIALIZED`: it does not run until the kernel sends it
//! INIT and SIPI, after which KVM puts it in real mode at the SIPI vector.
//! So nothing needs setting: Firecracker and Cloud Hypervisor only call
//! `KVM_SET_MP_STATE` when restoring a snapshot. (Checked on this project's
//! host: a fresh vCPU 0 reports `RUNNABLE`, vCPU 1 `UNINITIALIZED`.) Without
//! an in-kernel irqchip every vCPU would start runnable; we always create one.

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vmm_core::ram::GuestRam;

pub mod cpuid;
pub mod dump;
pub mod gdt;
pub mod lapic;
pub mod lapic_dump;
pub mod msr;
pub mod regs;
pub mod supported;

pub use regs::BootEntry;

/// Errors from setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A vCPU ioctl failed.
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// `KVM_SET_MSRS` stopped before setting every MSR.
    #[error("KVM refused MSR {index:#x} (set {set} of {total} boot MSRs)")]
    MsrNotSet {
        /// The first MSR KVM did not set.
        index: u32,
        /// How many it set.
        set: usize,
        /// How many we asked for.
        total: usize,
    },
    /// A boot table did not fit in guest memory.
    #[error("cannot write the {what} to guest memory")]
    GuestMemory {
        /// Which table.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The vCPU index or count is out of range.
    #[error("vCPU {vcpu_index} of {num_vcpus} is not a valid topology (1 to {max} vCPUs)", max = cpuid::MAX_VCPUS)]
    Topology {
        /// The vCPU index.
        vcpu_index: u32,
        /// The vCPU count.
        num_vcpus: u32,
    },
    /// A CPUID or MSR list exceeded what one KVM call takes.
    #[error("too many {0} entries for KVM")]
    TooManyEntries(&'static str),
}

impl CpuError {
    /// A `map_err` adapter naming the ioctl that failed.
    fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
        move |e| CpuError::Ioctl(name, e)
    }
}

/// Sets up vCPU `index` of `num_vcpus` before its first run: CPUID derived
/// from `supported_cpuid` (`KVM_GET_SUPPORTED_CPUID`), the boot MSRs, and
/// LINT0/LINT1; then, for the boot CPU only (`entry` is `Some`), its
/// registers and the tables they point at in `mem`. APs get `None` and wait
/// for INIT/SIPI (see the module docs).
///
/// `index` must be the id `vcpu` was created with, which KVM also made its
/// APIC ID. The VM needs its in-kernel irqchip already.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestRam,
    supported_cpuid: &CpuId,
    index: u32,
    num_vcpus: u32,
    entry: Option<&BootEntry>,
) -> Result<(), CpuError> {
    // CPUID first: KVM checks some MSRs and the APIC against it.
    set_cpuid(vcpu, supported_cpuid, index, num_vcpus)?;
    set_boot_state(vcpu, mem, entry)
}

/// The vCPU's CPUID table (`KVM_SET_CPUID2`), [`configure_vcpu`]'s first
/// step: before anything else, since KVM checks some MSRs and the APIC
/// against it, and once per vCPU (KVM refuses a changed table once it has
/// run).
pub fn set_cpuid(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    index: u32,
    num_vcpus: u32,
) -> Result<(), CpuError> {
    let cpuid = cpuid::vcpu_cpuid(supported_cpuid, index, num_vcpus)?;
    cpuid::apply_cpuid(vcpu, &cpuid)
}

/// Boot MSRs and, for the boot CPU (`entry` given), LAPIC LINT0/LINT1
/// and the entry registers: what [`configure_vcpu`] sets after CPUID, and
/// all a reset sets again (KVM refuses a changed CPUID once a vCPU has
/// run, and its runtime bits make even the same table differ, so QEMU
/// does not set it again either).
///
/// An application processor's local APIC stays as KVM made it: the INIT
/// that starts it masks every LVT entry again (KVM's `kvm_lapic_reset`),
/// so LINT modes set here would be undone before it runs a single
/// instruction (QEMU sets LINT0 on the boot CPU only as well). And it is
/// set up while the boot vCPU already runs (vmm-core's `start.rs`), where
/// a `KVM_SET_LAPIC` would make KVM recompute the VM's APIC map and wait
/// for every running vCPU's CPU to answer an IPI.
pub fn set_boot_state(
    vcpu: &VcpuFd,
    mem: &GuestRam,
    entry: Option<&BootEntry>,
) -> Result<(), CpuError> {
    msr::apply_boot_msrs(vcpu)?;
    if let Some(entry) = entry {
        lapic::apply_lapic(vcpu)?;
        regs::apply_boot_regs(vcpu, mem, entry)?;
    }
    Ok(())
}

/// The vCPU's local APIC state (`KVM_GET_LAPIC`); read right after
/// creation it is what [`reset_vcpu`] puts back.
pub fn lapic_state(vcpu: &VcpuFd) -> Result<kvm_bindings::kvm_lapic_state, CpuError> {
    vcpu.get_lapic().map_err(CpuError::ioctl("KVM_GET_LAPIC"))
}

/// Puts a vCPU that has run back to its power-on state, before
/// [`configure_vcpu`] runs again (a machine reset): its local APIC as KVM
/// created it (`fresh_lapic`), only the boot CPU runnable (the others wait
/// for INIT/SIPI), no pending exception or interrupt, and the paravirtual
/// MSRs the old kernel enabled switched off (their areas are in memory the
/// new kernel reuses).
pub fn reset_vcpu(
    vcpu: &VcpuFd,
    fresh_lapic: &kvm_bindings::kvm_lapic_state,
    index: u32,
) -> Result<(), CpuError> {
    // The old kernel may have switched the APIC to x2APIC mode: disable it,
    // then enable it in xAPIC mode at the default base (the only legal way
    // back), before its registers are put back.
    msr::reset_apic_base(vcpu, index)?;
    vcpu.set_lapic(fresh_lapic)
        .map_err(CpuError::ioctl("KVM_SET_LAPIC"))?;
    let mp_state = kvm_bindings::kvm_mp_state {
        mp_state: if index == 0 {
            kvm_bindings::KVM_MP_STATE_RUNNABLE
        } else {
            kvm_bindings::KVM_MP_STATE_UNINITIALIZED
        },
    };
    vcpu.set_mp_state(mp_state)
        .map_err(CpuError::ioctl("KVM_SET_MP_STATE"))?;
    if let Err(e) = vcpu.set_vcpu_events(&kvm_bindings::kvm_vcpu_events::default()) {
        log::debug!("vcpu {index}: cannot clear pending events: {e}");
    }
    msr::reset_pv_msrs(vcpu, index);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn errors_read_as_sentences_and_keep_their_source() {
        let e = CpuError::ioctl("KVM_SET_CPUID2")(kvm_ioctls::Error::new(libc::E2BIG));
        assert_eq!(e.to_string(), "KVM_SET_CPUID2 failed");
        assert!(e.source().is_some());

        let e = CpuError::Topology {
            vcpu_index: 3,
            num_vcpus: 2,
        };
        assert_eq!(
            e.to_string(),
            "vCPU 3 of 2 is not a valid topology (1 to 254 vCPUs)"
        );
        assert!(CpuError::MsrNotSet {
            index: 0x2ff,
            set: 10,
            total: 11
        }
        .to_string()
        .contains("MSR 0x2ff"));
    }
}
