//! The machine's configuration, its errors and why it stopped.

use std::path::PathBuf;

use vmm_core::event_loop::EventLoopError;
use vmm_core::kvm::KvmError;
use vmm_core::signals::{signal_name, SignalError};
use vmm_core::vcpu::{VcpuError, VcpuThreadStart};
use vmm_core::vm::VmError;
use vmm_devices::serial::SerialOutput;

use crate::boot::BootError;
use crate::control::{QuitSource, ShutdownCause};
use crate::devices::DeviceError;
use crate::memory::MemoryError;
use crate::{acpi, mptable};

/// What to build.
pub struct PcConfig {
    /// The kernel: a bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    /// Disks, each a virtio-blk-pci on its drive.
    pub disks: Vec<crate::disks::DiskConfig>,
    /// Network cards, each a virtio-net-pci on a tap.
    pub nets: Vec<crate::nets::NetConfig>,
    /// Entropy devices, each a virtio-rng-pci on the host's `getrandom`.
    pub rngs: Vec<crate::virtio::RngConfig>,
    /// Socket devices, each a virtio-vsock-pci on a Unix socket.
    pub vsocks: Vec<crate::vsocks::VsockConfig>,
    /// Socket devices on the host kernel's vhost-vsock.
    pub vhost_vsocks: Vec<crate::vsocks::VhostVsockConfig>,
    /// An initrd/initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Where COM1's output goes. Called on vCPU threads: must not block
    /// for long.
    pub serial: SerialOutput,
    /// Which i8254 PIT the machine gets.
    pub pit: PitBackend,
    /// Where the PICs and the IO-APIC are.
    pub irqchip: IrqChipMode,
    /// Stay in `prelaunch`, vCPUs parked, until a `cont` (QEMU's `-S`).
    pub start_paused: bool,
    /// What a guest reset (i8042, triple fault) does.
    pub reboot: RebootAction,
    /// An ib700 watchdog (`--device ib700`).
    pub ib700: bool,
    /// `--incoming`: the machine loads this file before it runs, or waits
    /// for QMP `migrate-incoming` (QEMU's `-incoming`).
    pub incoming: Option<super::Incoming>,
    /// An i6300esb watchdog (`--device i6300esb[,addr=SLOT]`) and the ACPI
    /// WDAT describing it: `Some(slot)`, the slot `None` for the last free
    /// one.
    pub i6300esb: Option<Option<u8>>,
    /// What the watchdog's expiry does (`--action watchdog=`).
    pub watchdog_action: super::WatchdogAction,
    /// On a KVM internal error or failed entry, stop in `internal-error`,
    /// and on a guest panic (pvpanic) in `guest-panicked` (vCPUs parked, the
    /// state queryable, `system_reset` possible), instead of exiting: for
    /// when a control interface (QMP) can act on it.
    pub stop_on_error: bool,
    /// Run on the vCPU threads before any guest code (the binary's seccomp
    /// filters); see [`VcpuThreadStart`].
    pub vcpu_thread_start: Option<VcpuThreadStart>,
    /// The supported CPUID, already being asked for (see
    /// [`crate::cpu::supported`]); `None`: the build asks itself.
    pub cpuid: Option<crate::cpu::supported::CpuidPrefetch>,
    /// Run on each device worker thread (made at build time, parked until
    /// its device is activated) before it does any work: the binary's
    /// seccomp filter.
    pub device_thread_start: Option<vmm_virtio::worker::ThreadStart>,
    /// Run on the migration thread (made when the machine starts, waiting
    /// for a `migrate` or an incoming stream) before it does any work: the
    /// binary's seccomp filter.
    pub migration_thread_start: Option<crate::migration::worker::ThreadStart>,
    /// Whether a control interface that can start a live migration or
    /// `migrate-incoming` exists (QMP). Without one, and without
    /// `incoming`, nothing could hand the migration thread work, so the
    /// machine makes none (a thread and its seccomp filter less at every
    /// start).
    pub migration_control: bool,
    /// Whether the VMM may start programs once it runs (`exec:`
    /// migration); false under seccomp filters.
    pub spawn_allowed: bool,
    /// The same for socket devices' workers, whose list adds the Unix
    /// socket calls (accept, connect) the others need not have.
    pub vsock_thread_start: Option<vmm_virtio::worker::ThreadStart>,
}

/// What a guest-initiated reset does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RebootAction {
    /// End the VMM with status 0 (QEMU's `-no-reboot`, Firecracker).
    #[default]
    Exit,
    /// Reset the machine in place and boot the guest again.
    Reset,
}

/// Which i8254 PIT a machine gets; never both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PitBackend {
    /// Ours (vmm-devices), on the Virtual clock: it stops with the VM.
    #[default]
    Userspace,
    /// KVM's in-kernel PIT (`KVM_CREATE_PIT2`), which also answers port
    /// 0x61; it keeps counting host time while the VM is paused.
    Kvm,
}

/// Where the interrupt controllers are (QEMU's `kernel-irqchip=on|split`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IrqChipMode {
    /// All in KVM (`KVM_CREATE_IRQCHIP`): the 8259 pair, the IO-APIC and
    /// the local APICs.
    #[default]
    Kernel,
    /// Only the local APICs in KVM (`KVM_CAP_SPLIT_IRQCHIP`); the IO-APIC
    /// and the 8259 pair are ours ([`crate::irqchip`]). KVM's PIT needs
    /// the kernel's irqchip.
    Split,
}

impl PcConfig {
    /// KVM's PIT interrupts through KVM's irqchip: not with the split one.
    pub(super) fn check_irqchip(&self) -> Result<(), PcError> {
        if self.pit == PitBackend::Kvm && self.irqchip == IrqChipMode::Split {
            return Err(PcError::KvmPitNeedsKernelIrqchip);
        }
        Ok(())
    }
}

impl std::fmt::Debug for PcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("memory", &self.memory)
            .field("cpus", &self.cpus)
            .field("pit", &self.pit)
            .field("irqchip", &self.irqchip)
            .field("start_paused", &self.start_paused)
            .field("reboot", &self.reboot)
            .field("stop_on_error", &self.stop_on_error)
            .field("vcpu_thread_start", &self.vcpu_thread_start.is_some())
            .field("disks", &self.disks)
            .field("vsocks", &self.vsocks)
            .finish_non_exhaustive()
    }
}

/// Why the machine could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum PcError {
    /// The vCPU count is out of range.
    #[error("cannot run {cpus} vCPUs: this machine takes 1 to {max}")]
    CpuCount {
        /// Asked for.
        cpus: u32,
        /// The limit (KVM's and the ACPI tables').
        max: u32,
    },
    /// The memory size is unusable.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A kernel or initrd path is not a regular file (a FIFO, a directory,
    /// a device, a socket); refused before anything reads from it.
    #[error("{what} {path} is not a regular file ({kind})")]
    NotRegular {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is instead ("a FIFO", ...).
        kind: &'static str,
    },
    /// A file could not be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `/dev/kvm` is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// MP table.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// Devices.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// A disk's image.
    #[error(transparent)]
    Disk(#[from] crate::disks::DiskError),
    /// A network card's tap.
    #[error(transparent)]
    Net(#[from] crate::nets::NetError),
    /// A virtio device.
    #[error(transparent)]
    Virtio(#[from] crate::virtio::VirtioError),
    /// Signals.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// The main loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// The guest could not be loaded again for a reset.
    #[error("cannot reload the guest for a reset: {0}")]
    Reload(String),
    /// A run-state change the machine tried is not allowed.
    #[error("run state: {0}")]
    Control(String),
    /// An incoming migration could not be taken (or listened for).
    #[error("{0}")]
    Migration(String),
    /// The timer alarm.
    #[error("cannot create the timer alarm")]
    Clock(#[source] vmm_clock::Error),
    /// vCPU threads.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// KVM would not list the MSRs a snapshot saves.
    #[error("KVM_GET_MSR_INDEX_LIST failed (the MSRs a snapshot or migration carries)")]
    MsrIndexList(#[source] kvm_ioctls::Error),
    /// KVM's PIT asked for without KVM's irqchip.
    #[error("KVM's in-kernel PIT needs the in-kernel irqchip (not the split one)")]
    KvmPitNeedsKernelIrqchip,
    /// The lock-down hook of [`crate::PcMachine::run_with`] failed.
    #[error("the main thread's start hook failed")]
    StartHook(#[source] BoxError),
}

/// An error from the binary's hooks, opaque to this crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042, triple fault, reset event).
    GuestReset(String),
    /// The guest powered off (ACPI S5 or a shutdown event).
    GuestPoweroff,
    /// The user asked to quit (console Ctrl-A x, QMP `quit`).
    Quit(QuitSource),
    /// A signal asked us to terminate.
    Signal(i32),
    /// The guest reported a panic (pvpanic) and nothing could act on it.
    GuestPanicked,
    /// The watchdog expired with the action `poweroff`.
    Watchdog,
    /// The machine could not go on (a vCPU's KVM error, or the main loop's).
    InternalError {
        /// The vCPU, when one failed.
        vcpu: Option<u32>,
        /// What KVM or the machine reported.
        reason: String,
    },
}

impl ExitReason {
    /// Whether this is a normal end (status 0), as QEMU treats them.
    pub fn is_success(&self) -> bool {
        !matches!(self, Self::InternalError { .. } | Self::GuestPanicked)
    }

    /// A guest reset by a triple fault (vmm-core names it so): a normal
    /// end all the same (Linux's `reboot=t` resets this way), but more
    /// often a guest that crashed too early or too hard to say so, which
    /// deserves a line where a reboot through the i8042 or ACPI does not.
    pub fn is_triple_fault(&self) -> bool {
        matches!(self, Self::GuestReset(why) if why.starts_with("triple fault"))
    }

    /// The `SHUTDOWN` event's cause; none for an internal error (QEMU
    /// stops in `internal-error` without one).
    pub fn shutdown_cause(&self) -> Option<ShutdownCause> {
        Some(match self {
            Self::GuestReset(_) => ShutdownCause::GuestReset,
            Self::GuestPoweroff => ShutdownCause::GuestShutdown,
            Self::Quit(QuitSource::Console) => ShutdownCause::HostUi,
            Self::Quit(QuitSource::Qmp) => ShutdownCause::HostQmpQuit,
            Self::Signal(_) => ShutdownCause::HostSignal,
            Self::GuestPanicked => ShutdownCause::GuestPanic,
            // QEMU's watchdog `poweroff` exits at once, with no event.
            Self::Watchdog | Self::InternalError { .. } => return None,
        })
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GuestReset(why) => write!(f, "guest reset ({why})"),
            Self::GuestPoweroff => write!(f, "guest powered off"),
            Self::Quit(QuitSource::Console) => write!(f, "quit from the console"),
            Self::Quit(QuitSource::Qmp) => write!(f, "quit (QMP or the monitor)"),
            Self::Signal(s) => write!(f, "terminating on signal {}", signal_name(*s)),
            Self::GuestPanicked => write!(f, "the guest panicked"),
            Self::Watchdog => write!(f, "the watchdog fired (action poweroff)"),
            Self::InternalError {
                vcpu: Some(vcpu),
                reason,
            } => write!(f, "vCPU {vcpu}: {reason}"),
            Self::InternalError { vcpu: None, reason } => write!(f, "{reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_triple_fault_reset_is_one() {
        // vmm-core's wording for a vCPU's shutdown exit.
        let tf = ExitReason::GuestReset("triple fault at RIP=0xffffffff81000000".into());
        assert!(tf.is_triple_fault() && tf.is_success());
        assert!(ExitReason::GuestReset("triple fault".into()).is_triple_fault());
        assert!(!ExitReason::GuestReset("i8042 reset line".into()).is_triple_fault());
        assert!(!ExitReason::GuestReset("system event reset".into()).is_triple_fault());
        assert!(!ExitReason::GuestPoweroff.is_triple_fault());
    }
}
