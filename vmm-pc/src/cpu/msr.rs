//! Model-specific registers every vCPU starts with.
//!
//! KVM resets most MSRs sensibly already; we set the ones a firmware would
//! have initialised before handing over to the kernel, as Firecracker and
//! Cloud Hypervisor do:
//!
//! - the `SYSENTER`/`SYSCALL` entry MSRs and `KERNEL_GS_BASE`: 0 (the kernel
//!   programs them itself);
//! - `IA32_TSC`: 0 (KVM treats equal writes made close together as a
//!   request to synchronise the vCPUs' TSCs);
//! - `IA32_MISC_ENABLE`: fast strings on, as firmware leaves it (Linux checks
//!   it to decide whether `rep movs` is fast);
//! - `IA32_MTRR_DEF_TYPE`: MTRRs enabled with write-back as the default
//!   type, so that without any variable MTRR all RAM is cacheable. Without
//!   this the guest sees MTRRs disabled, meaning everything uncacheable, and
//!   Linux's PAT set-up complains or falls back.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::CpuError;

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_STAR`: `SYSCALL`/`SYSRET` segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`: 64-bit `SYSCALL` entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR`: compatibility-mode `SYSCALL` entry point.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK`: `RFLAGS` bits cleared by `SYSCALL`.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `IA32_KERNEL_GS_BASE`: the `GS` base `SWAPGS` swaps in.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `IA32_MISC_ENABLE` bit 0: fast-string operations enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// `IA32_MTRR_DEF_TYPE` bit 11: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type 6: write-back.
pub const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The MSRs (index, value) every vCPU gets before it first runs.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// IA32_APIC_BASE: the local APIC's base address and mode bits.
pub const MSR_IA32_APICBASE: u32 = 0x1b;
const APICBASE_BSP: u64 = 1 << 8;
const APICBASE_ENABLE: u64 = 1 << 11;
const APICBASE_DEFAULT: u64 = 0xfee0_0000;

/// Puts IA32_APIC_BASE back to its power-on value (xAPIC mode at
/// 0xFEE00000, enabled, BSP flag on vCPU 0), through "disabled", which is
/// the only legal way out of x2APIC mode.
pub fn reset_apic_base(vcpu: &VcpuFd, index: u32) -> Result<(), CpuError> {
    let bsp = if index == 0 { APICBASE_BSP } else { 0 };
    for value in [0, APICBASE_DEFAULT | APICBASE_ENABLE | bsp] {
        let entries = [kvm_msr_entry {
            index: MSR_IA32_APICBASE,
            data: value,
            ..Default::default()
        }];
        let not_set = CpuError::MsrNotSet {
            index: MSR_IA32_APICBASE,
            set: 0,
            total: 1,
        };
        let Ok(msrs) = Msrs::from_entries(&entries) else {
            return Err(not_set);
        };
        let set = vcpu
            .set_msrs(&msrs)
            .map_err(CpuError::ioctl("KVM_SET_MSRS"))?;
        if set != 1 {
            return Err(not_set);
        }
    }
    Ok(())
}

/// KVM's paravirtual MSRs a guest kernel enables (async page faults,
/// steal time, PV EOI), with their power-on values.
const PV_MSRS_AT_RESET: [(u32, u64); 4] = [
    (0x4b56_4d02, 0), // MSR_KVM_ASYNC_PF_EN
    (0x4b56_4d03, 0), // MSR_KVM_STEAL_TIME
    (0x4b56_4d04, 0), // MSR_KVM_PV_EOI_EN
    (0x4b56_4d01, 0), // MSR_KVM_SYSTEM_TIME_NEW (kvmclock page)
];

/// Switches off the paravirtual features the previous kernel enabled, so
/// KVM stops writing into memory the next kernel reuses. Best effort: a
/// KVM without one of them refuses it, and then it was never on.
pub fn reset_pv_msrs(vcpu: &VcpuFd, index: u32) {
    for (msr, value) in PV_MSRS_AT_RESET {
        let entries = [kvm_msr_entry {
            index: msr,
            data: value,
            ..Default::default()
        }];
        match Msrs::from_entries(&entries).map(|m| vcpu.set_msrs(&m)) {
            Ok(Ok(1)) => {}
            other => log::debug!("vcpu {index}: MSR {msr:#x} not reset: {other:?}"),
        }
    }
}

/// Sets [`boot_msrs`] on `vcpu`. `KVM_SET_MSRS` stops at the first MSR it
/// refuses and returns how many it set; anything short of all of them is
/// [`CpuError::MsrNotSet`], naming the refused one.
pub fn apply_boot_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::TooManyEntries("MSR"))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(CpuError::ioctl("KVM_SET_MSRS"))?;
    check_all_set(&entries, set)
}

/// The check [`apply_boot_msrs`] makes on `KVM_SET_MSRS`'s return value.
fn check_all_set(entries: &[kvm_msr_entry], set: usize) -> Result<(), CpuError> {
    match entries.get(set) {
        None => Ok(()),
        Some(refused) => Err(CpuError::MsrNotSet {
            index: refused.index,
            set,
            total: entries.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(index: u32) -> Option<u64> {
        boot_msrs()
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.data)
    }

    #[test]
    fn list_contents() {
        let msrs = boot_msrs();
        assert_eq!(msrs.len(), 11);
        for index in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_SYSCALL_MASK,
            MSR_KERNEL_GS_BASE,
            MSR_IA32_TSC,
        ] {
            assert_eq!(value_of(index), Some(0), "MSR {index:#x}");
        }
        assert_eq!(value_of(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(value_of(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert!(msrs.iter().all(|e| e.reserved == 0));
    }

    #[test]
    fn no_duplicates() {
        let mut indices: Vec<u32> = boot_msrs().iter().map(|e| e.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), boot_msrs().len());
    }

    #[test]
    fn fits_in_one_kvm_msrs() {
        let msrs = Msrs::from_entries(&boot_msrs()).unwrap();
        assert_eq!(msrs.as_slice().len(), boot_msrs().len());
    }

    #[test]
    fn partial_set_names_the_first_refused_msr() {
        let entries = boot_msrs();
        assert!(check_all_set(&entries, entries.len()).is_ok());
        let err = check_all_set(&entries, 3).unwrap_err();
        assert!(matches!(
            err,
            CpuError::MsrNotSet {
                index: MSR_STAR,
                set: 3,
                total: 11
            }
        ));
        assert!(err.to_string().contains("0xc0000081"), "{err}");
    }
}
