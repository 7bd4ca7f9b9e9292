//! The monitor's `info registers` and `info lapic` (QEMU's
//! `cpu_synchronize_state` then its dumps): each vCPU's state is saved on
//! its own thread ([`Vcpus::call_each`](vmm_core::vcpu::Vcpus::call_each),
//! which kicks a running vCPU out of `KVM_RUN` and lets it go on) and
//! formatted by [`crate::cpu::dump`] and [`crate::cpu::lapic_dump`].
//!
//! Only looking: the guest keeps running (or stays paused), and a failure
//! is the command's, never the machine's.

use vmm_core::vcpu::VcpuState;

use super::{CommandFailure, PcMachine};
use crate::control::{CpuText, Reply};
use crate::cpu::{dump, lapic_dump};

impl PcMachine {
    /// The state of each vCPU `wanted` selects (by index), in vCPU order.
    /// The MSRs are left out: neither dump prints them.
    fn vcpu_states(
        &self,
        wanted: impl Fn(u32) -> bool,
    ) -> Result<Vec<(u32, VcpuState)>, CommandFailure> {
        let states = self
            .vcpus
            .call_each(|i| {
                let want = wanted(i);
                move |vcpu: &kvm_ioctls::VcpuFd| {
                    want.then(|| VcpuState::save(vcpu, true, &[]).map_err(|e| e.to_string()))
                }
            })
            .map_err(|e| CommandFailure::Refused(format!("cannot read the vCPUs: {e}")))?;
        states
            .into_iter()
            .zip(0u32..)
            .filter_map(|(state, i)| state.map(|s| (i, s)))
            .map(|(i, state)| {
                state
                    .map(|s| (i, s))
                    .map_err(|e| CommandFailure::Refused(format!("cannot read vCPU {i}: {e}")))
            })
            .collect()
    }

    /// `info registers`: vCPU `cpu`'s registers, or every vCPU's.
    pub(super) fn query_registers(&self, cpu: Option<u32>) -> Result<Reply, CommandFailure> {
        let count = self.vcpus.len();
        if let Some(cpu) = cpu.filter(|&c| c as usize >= count) {
            return Err(CommandFailure::Refused(format!(
                "CPU#{cpu} not available (this machine has {count} vCPUs, 0 to {})",
                count.saturating_sub(1)
            )));
        }
        let states = self.vcpu_states(|i| cpu.is_none_or(|c| c == i))?;
        Ok(Reply::Registers(
            states
                .iter()
                .map(|(index, state)| CpuText {
                    index: *index,
                    text: dump::registers_text(state),
                })
                .collect(),
        ))
    }

    /// `info lapic`: the local APIC of the vCPU with APIC ID `apic_id`
    /// (vCPU `i` has APIC ID `i`).
    pub(super) fn query_lapic(&self, apic_id: u32) -> Result<Reply, CommandFailure> {
        let count = self.vcpus.len();
        if apic_id as usize >= count {
            return Err(CommandFailure::Refused(format!(
                "no CPU with APIC ID {apic_id} (the vCPUs have APIC IDs 0 to {})",
                count.saturating_sub(1)
            )));
        }
        let states = self.vcpu_states(|i| i == apic_id)?;
        let Some((index, state)) = states.first() else {
            return Err(CommandFailure::Refused(format!(
                "vCPU {apic_id} gave no state"
            )));
        };
        let Some(lapic) = &state.lapic else {
            return Err(CommandFailure::Refused(format!(
                "vCPU {index} has no in-kernel local APIC"
            )));
        };
        Ok(Reply::Lapic(CpuText {
            index: *index,
            text: lapic_dump::lapic_text(*index, lapic, state.sregs.apic_base),
        }))
    }
}
