//! A vCPU's architectural state as plain data (what a snapshot or a
//! migration carries), saved from and restored to its `VcpuFd` on the
//! vCPU's own thread ([`super::Vcpus::call_each`]).
//!
//! Saved, in this order: MP state, registers, special registers, XSAVE
//! area (the FPU and SSE/AVX state; the 4 KiB legacy layout, as this VMM
//! never enables XSAVE features beyond it), XCRs, debug registers, the
//! local APIC (with an in-kernel irqchip), the MSRs KVM lists as
//! saveable, and pending events. Restored in an order where each step's
//! state is not undone by the next: MP state, registers, special
//! registers, XSAVE, XCRs, debug registers, LAPIC, MSRs (the TSC among
//! them), events last (the pending exception and NMI belong to the
//! restored registers).

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// The most MSRs asked for in one `KVM_GET_MSRS`.
const MSR_CHUNK: usize = 64;

/// Why a vCPU's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// One of the vCPU ioctls failed.
    #[error("{what} failed")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer MSRs than the state holds.
    #[error("KVM_SET_MSRS set {set} of {total} MSRs (the first refused: {refused:#x})")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many the state holds.
        total: usize,
        /// The first one KVM refused.
        refused: u32,
    },
    /// A list that does not fit KVM's structures.
    #[error("cannot build a KVM MSR list of {0} entries")]
    MsrList(usize),
    /// The state belongs to a machine with (or without) an in-kernel
    /// irqchip, and this one is the other kind.
    #[error("the state has {} local APIC; this vCPU has {}",
        if *.saved { "a" } else { "no" }, if *.saved { "none" } else { "one" })]
    Lapic {
        /// Whether the state has one.
        saved: bool,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl { what, source }
}

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// The XSAVE area: x87, SSE, AVX state.
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// DR0-DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers, with an in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    /// The MSRs KVM could read, by index.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .field("lapic", &self.lapic.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads the MSRs `indices` names; an MSR KVM will not read is left out
/// (KVM stops a `KVM_GET_MSRS` at the first one it refuses).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuStateError::MsrList(entries.len()))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
        // The one at `read` was refused: skip it.
        let used = (read + 1).min(chunk.len());
        rest = &rest[used..];
    }
    Ok(out)
}

impl VcpuState {
    /// Saves `vcpu`'s state, with its local APIC when `lapic` (a machine
    /// with an in-kernel irqchip), and the MSRs of `msr_indices` that KVM
    /// reads (KVM's `KVM_GET_MSR_INDEX_LIST`, read once per VM).
    pub fn save(vcpu: &VcpuFd, lapic: bool, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        Ok(Self {
            mp_state: vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?,
            regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            xsave: vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
            lapic: if lapic {
                Some(vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?)
            } else {
                None
            },
            msrs: read_msrs(vcpu, msr_indices)?,
            events: vcpu
                .get_vcpu_events()
                .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Puts the state back on `vcpu` (a vCPU of the same VM shape: an
    /// in-kernel irqchip exactly when the state has a local APIC).
    pub fn restore(&self, vcpu: &VcpuFd, lapic: bool) -> Result<(), VcpuStateError> {
        if self.lapic.is_some() != lapic {
            return Err(VcpuStateError::Lapic {
                saved: self.lapic.is_some(),
            });
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(ioctl("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(ioctl("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        // SAFETY: the area came from KVM_GET_XSAVE on a vCPU of a VMM that
        // never enables dynamic XSAVE features (AMX), so its state fits
        // the 4 KiB legacy layout KVM_SET_XSAVE reads.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        if let Some(lapic) = &self.lapic {
            vcpu.set_lapic(lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
        }
        let mut rest: &[kvm_msr_entry] = &self.msrs;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(MSR_CHUNK)];
            let msrs =
                Msrs::from_entries(chunk).map_err(|_| VcpuStateError::MsrList(chunk.len()))?;
            let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
            let Some(refused) = chunk.get(set) else {
                rest = &rest[chunk.len()..];
                continue;
            };
            // KVM refuses some writes of a value the MSR already holds
            // (a paravirtual MSR whose feature the guest never enabled):
            // that one is restored all the same. Any other refusal fails.
            let now = read_msrs(vcpu, &[refused.index])?;
            if now.first().map(|e| e.data) != Some(refused.data) {
                return Err(VcpuStateError::Msrs {
                    set,
                    total: chunk.len(),
                    refused: refused.index,
                });
            }
            log::debug!(
                "vCPU state: MSR {:#x} refused but already {:#x}",
                refused.index,
                refused.data
            );
            rest = &rest[set + 1..];
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
