//! Each vCPU's set-up at build time, and again at every machine reset,
//! run on the vCPU's own thread.

use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;
use vmm_core::vcpu::VcpuInit;
use vmm_core::vm::Vm;

use super::lock;
use crate::cpu::{self, BootEntry};

/// The per-vCPU set-up, run on each vCPU's thread.
/// The first call for a vCPU records its LAPIC as KVM created it; a later
/// call (a machine reset) puts that back and resets the vCPU before setting
/// it up again for `entry`, which a reset may have reloaded.
pub(super) fn vcpu_init(
    vm: &Vm,
    cpuid: CpuId,
    cpus: u32,
    entry: Arc<Mutex<BootEntry>>,
) -> VcpuInit {
    let vm = vm.clone();
    let fresh_lapics: Mutex<Vec<Option<kvm_bindings::kvm_lapic_state>>> =
        Mutex::new(vec![None; usize::try_from(cpus).unwrap_or(0)]);
    Arc::new(move |vcpu, index| {
        let slot = usize::try_from(index).unwrap_or(usize::MAX);
        let fresh = lock(&fresh_lapics).get(slot).cloned().flatten();
        let entry = (index == 0).then(|| *lock(&entry));
        match fresh {
            Some(lapic) => {
                cpu::reset_vcpu(vcpu, &lapic, index)?;
                cpu::set_boot_state(vcpu, vm.memory(), entry.as_ref())?;
            }
            None => {
                let lapic = cpu::lapic_state(vcpu)?;
                if let Some(s) = lock(&fresh_lapics).get_mut(slot) {
                    *s = Some(lapic);
                }
                cpu::configure_vcpu(vcpu, vm.memory(), &cpuid, index, cpus, entry.as_ref())?;
            }
        }
        Ok(())
    })
}
