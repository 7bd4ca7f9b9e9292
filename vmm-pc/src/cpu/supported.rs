//! The host's supported CPUID (`KVM_GET_SUPPORTED_CPUID`).
//!
//! Where the `CPUID` instruction itself traps to an outer hypervisor (a
//! nested or software KVM: about 0.4 ms on PVM) this is start-up's slowest
//! ioctl. The build asks it in line, just before the vCPU threads start:
//! asked on a thread of its own from the front end's first step (as it
//! was until 2026-12-07), the answer came no sooner on a two-CPU host and
//! the start cost no less (three rounds of 40 alternating starts, both
//! binaries read afresh from disk: first byte 2.83-3.14 ms in line
//! against 2.92-3.11 on the thread, CPU 3.60-3.90 against 3.64-4.08, the
//! same peak RSS): the thread's start, its own `/dev/kvm` and the
//! wake-ups cost what the overlap saved.

use kvm_bindings::CpuId;
use vmm_core::kvm::KvmSystem;

use crate::PcError;

/// Asks `kvm` for its supported CPUID, with the TSC-deadline timer
/// advertised where the kernel leaves it out.
pub(crate) fn supported_cpuid(kvm: &KvmSystem) -> Result<CpuId, PcError> {
    let mut cpuid = kvm.supported_cpuid()?;
    // Older kernels leave the TSC-deadline timer out of the supported
    // CPUID even though the in-kernel LAPIC has it (KVM's API docs).
    if kvm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        super::cpuid::advertise_tsc_deadline(&mut cpuid);
    }
    Ok(cpuid)
}
