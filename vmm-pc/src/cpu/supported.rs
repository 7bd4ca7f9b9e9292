//! The host's supported CPUID (`KVM_GET_SUPPORTED_CPUID`), asked for on a
//! thread of its own as early as the front end likes.
//!
//! Where the `CPUID` instruction itself traps to an outer hypervisor (a
//! nested or software KVM: about 0.4 ms on PVM) this is start-up's slowest
//! ioctl, and nothing needs its answer before the vCPUs' set-up. The
//! machine's build asks on a thread beside its own steps; a front end can
//! start the question earlier still ([`CpuidPrefetch::start`], before it
//! parses anything else) and hand it to the build (`PcConfig`).
//!
//! Asked in line by the build instead (tried 2026-12-07; `cargo xtask
//! bench startup --runs 20`, two rounds each way, the two binaries
//! swapped between runs): the first guest byte 1.61-1.68x the floor's
//! against 1.56-1.57x with this thread, CPU 1.55-1.57x against
//! 1.58-1.62x, the same peak RSS. The thread stays, for the first byte.

use std::thread::JoinHandle;

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

/// The supported CPUID, being asked for on a thread (`cpuid`) that opens
/// `/dev/kvm` for itself.
#[derive(Debug)]
pub struct CpuidPrefetch(JoinHandle<Result<CpuId, PcError>>);

impl CpuidPrefetch {
    /// Starts the thread. Its errors (no `/dev/kvm`, say) wait for
    /// [`CpuidPrefetch::join`]: the build reports them where it would
    /// have met them itself.
    pub fn start() -> std::io::Result<Self> {
        std::thread::Builder::new()
            .name("cpuid".into())
            .spawn(|| supported_cpuid(&KvmSystem::open()?))
            .map(Self)
    }

    /// The answer.
    pub(crate) fn join(self) -> Result<CpuId, PcError> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(PcError::Control("the CPUID thread panicked".into())))
    }
}
