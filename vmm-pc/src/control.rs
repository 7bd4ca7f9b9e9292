//! Requests from front ends (QMP, the console) and the events the machine
//! reports back, run by the main loop as QEMU runs monitor commands under
//! its big lock: a front end [`submits`](crate::MachineControl::submit) a
//! [`Command`] with a callback; the main loop runs it between two waits and
//! calls the callback with the [`Reply`].

use vmm_runstate::RunState;

/// What a front end can ask of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Pause the vCPUs and the Virtual clock (QMP `stop`).
    Stop,
    /// Run again (QMP `cont`); refused where the machine needs a reset.
    Cont,
    /// End the VMM (QMP `quit`).
    Quit,
    /// Reset the machine in place (QMP `system_reset`).
    SystemReset,
    /// Press the ACPI power button (QMP `system_powerdown`); while
    /// suspended, this wakes the guest.
    SystemPowerdown,
    /// Wake a suspended guest (QMP `system_wakeup`); refused in any other
    /// state.
    SystemWakeup,
    /// The run state (QMP `query-status`).
    QueryStatus,
    /// The vCPUs and their threads (QMP `query-cpus-fast`).
    QueryCpus,
    /// The PCI functions (QMP `query-pci`).
    QueryPci,
    /// The disks (QMP `query-block`).
    QueryBlock,
    /// The device tree (the monitor's `info qtree`).
    QueryDevices,
    /// The registers of vCPU `cpu`, or of every vCPU for `None` (the
    /// monitor's `info registers [-a|N]`); running or paused.
    QueryRegisters {
        /// The vCPU index; `None` for all.
        cpu: Option<u32>,
    },
    /// The local APIC of the vCPU whose APIC ID is `apic_id` (the
    /// monitor's `info lapic`; vCPU `i` has APIC ID `i`).
    QueryLapic {
        /// The APIC ID.
        apic_id: u32,
    },
    /// Save the machine into a file as job `job` (QMP `snapshot-save`).
    SnapshotSave {
        /// The job's id.
        job: String,
        /// The file.
        path: std::path::PathBuf,
    },
    /// Load the machine from a file as job `job` (QMP `snapshot-load`).
    SnapshotLoad {
        /// The job's id.
        job: String,
        /// The file.
        path: std::path::PathBuf,
    },
    /// The jobs (QMP `query-jobs`).
    QueryJobs,
    /// `size` bytes of guest physical memory from `addr` into the file
    /// `path` (QMP `pmemsave`).
    PhysMemSave {
        /// The first guest physical address.
        addr: u64,
        /// How many bytes.
        size: u64,
        /// The file, made or truncated.
        path: std::path::PathBuf,
    },
    /// Migrate to `uri` (QMP `migrate`: `file:`, `tcp:`, `unix:`, `exec:`).
    Migrate {
        /// QEMU's URI.
        uri: String,
    },
    /// The last migration (QMP `query-migrate`).
    QueryMigrate,
    /// Load the incoming migration from `uri` (QMP `migrate-incoming`,
    /// after `--incoming defer`).
    MigrateIncoming {
        /// QEMU's URI.
        uri: String,
    },
    /// `MIGRATION` events on or off (the `events` capability).
    MigrationEvents(bool),
    /// Stop the outgoing migration (QMP `migrate_cancel`).
    MigrateCancel,
    /// QMP `migrate-set-parameters`: each `Some` replaces the current value.
    MigrateSetParameters {
        /// `downtime-limit`, ms.
        downtime_limit_ms: Option<u64>,
        /// `max-bandwidth`, bytes/s.
        max_bandwidth: Option<u64>,
    },
    /// QMP `query-migrate-parameters`.
    QueryMigrateParameters,
    /// Forget a concluded job (QMP `job-dismiss`).
    JobDismiss {
        /// The job's id.
        id: String,
    },
    /// What the gdb stub asks (`--gdb`; see `crate::gdb`).
    Gdb(GdbRequest),
    /// Change what events do (QMP `set-action`, `watchdog-set-action`):
    /// each `Some` replaces the current choice.
    SetAction {
        /// What the watchdog's expiry does.
        watchdog: Option<crate::WatchdogAction>,
        /// What a guest reset does.
        reboot: Option<crate::RebootAction>,
    },
}

/// What the gdb stub asks of the machine (`vmm_gdb::DebugMachine`,
/// carried out on the main loop by `machine/gdb.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbRequest {
    /// A client attached: stop (run state `paused`); debug stops go to
    /// the stub from now on.
    Attach,
    /// Ctrl-C: stop (`paused`).
    Interrupt,
    /// vCPU `vcpu`'s registers ([`Reply::GdbRegisters`]).
    ReadRegisters {
        /// The vCPU.
        vcpu: u32,
    },
    /// Set vCPU `vcpu`'s general registers, RIP, RFLAGS and the x87 and
    /// SSE state.
    WriteRegisters {
        /// The vCPU.
        vcpu: u32,
        /// The values (boxed: the SSE registers make them large).
        regs: Box<vmm_gdb::Registers>,
    },
    /// Read `len` bytes at virtual address `addr` as vCPU `vcpu` sees it
    /// ([`Reply::GdbMemory`]: fewer bytes where a page is unmapped).
    ReadMemory {
        /// The vCPU whose page tables translate.
        vcpu: u32,
        /// The virtual address.
        addr: u64,
        /// How many bytes.
        len: usize,
    },
    /// Write `data` at virtual address `addr` as vCPU `vcpu` sees it
    /// ([`Reply::GdbWritten`]: how many bytes).
    WriteMemory {
        /// The vCPU whose page tables translate.
        vcpu: u32,
        /// The virtual address.
        addr: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Run with these single steps and breakpoints.
    Resume(vmm_gdb::ResumePlan),
    /// The client went: debugging off, the guest runs on.
    Detach,
}

/// One device of the machine, as `info qtree` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id (a fixed device's own, a disk's drive id).
    pub id: String,
    /// Its type.
    pub type_name: String,
    /// Its PCI slot, for a function on the PCI bus.
    pub pci_slot: Option<u8>,
}

/// One disk, as `query-block` and `query-blockstats` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// The drive's id.
    pub device: String,
    /// The image.
    pub file: String,
    /// Read-only.
    pub readonly: bool,
    /// Size in bytes.
    pub size: u64,
    /// The device's PCI slot.
    pub slot: u8,
    /// `cache=none` (O_DIRECT).
    pub direct: bool,
    /// A request is held after an error (`io-status` "failed").
    pub failed: bool,
    /// The device's counters.
    pub stats: vmm_virtio::blk::BlockStats,
}

/// One vCPU's state as text (`info registers`, `info lapic`): lines end
/// in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuText {
    /// The vCPU index.
    pub index: u32,
    /// The text.
    pub text: String,
}

/// One vCPU, as `query-cpus-fast` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInfo {
    /// The vCPU index (its APIC ID too).
    pub index: u32,
    /// Its thread's Linux id.
    pub thread_id: i32,
}

/// A command's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done, nothing to report.
    Done,
    /// The run state.
    Status {
        /// Whether the guest runs.
        running: bool,
        /// The state.
        status: RunState,
    },
    /// The vCPUs.
    Cpus(Vec<CpuInfo>),
    /// vCPUs' registers, in vCPU order ([`crate::cpu::dump`]).
    Registers(Vec<CpuText>),
    /// A local APIC, decoded ([`crate::cpu::lapic_dump`]).
    Lapic(CpuText),
    /// The PCI functions on bus 0.
    Pci(Vec<vmm_pci::info::FunctionInfo>),
    /// The disks.
    Block(Vec<BlockInfo>),
    /// The devices: the fixed ones in the order built, then the functions
    /// on the PCI bus.
    Devices(Vec<DeviceInfo>),
    /// The jobs.
    Jobs(Vec<crate::snapshot::jobs::JobInfo>),
    /// The last migration, if any.
    Migration(Option<crate::MigrationInfo>),
    /// The migration parameters.
    MigrationParameters(crate::migration::Params),
    /// A vCPU's registers, for the gdb stub (boxed: they are large).
    GdbRegisters(Box<vmm_gdb::Registers>),
    /// Guest memory read for the gdb stub (shorter than asked where a
    /// page is unmapped; empty if the first one is).
    GdbMemory(Vec<u8>),
    /// How many bytes a gdb memory write wrote.
    GdbWritten(usize),
}

/// Called with a command's outcome, on the main-loop thread.
pub type ReplyFn = Box<dyn FnOnce(Result<Reply, String>) + Send>;

/// Who asked the machine to quit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuitSource {
    /// The console (Ctrl-A x, or the monitor).
    Console,
    /// A QMP or monitor `quit`.
    Qmp,
}

/// Why the machine shut down, as QMP's `SHUTDOWN` event says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownCause {
    /// QMP `quit`.
    HostQmpQuit,
    /// A signal (SIGINT, SIGTERM, SIGHUP).
    HostSignal,
    /// The user interface (the console's Ctrl-A x).
    HostUi,
    /// The guest powered off.
    GuestShutdown,
    /// The guest reset, and resets end the VMM (QEMU's `-no-reboot`).
    GuestReset,
    /// The guest panicked, and panics end the VMM.
    GuestPanic,
}

impl ShutdownCause {
    /// QAPI's `ShutdownCause` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostQmpQuit => "host-qmp-quit",
            Self::HostSignal => "host-signal",
            Self::HostUi => "host-ui",
            Self::GuestShutdown => "guest-shutdown",
            Self::GuestReset => "guest-reset",
            Self::GuestPanic => "guest-panic",
        }
    }

    /// Whether the guest caused it (the event's `guest` member).
    pub fn is_guest(self) -> bool {
        matches!(
            self,
            Self::GuestShutdown | Self::GuestReset | Self::GuestPanic
        )
    }
}

/// What the machine reports to its listeners (QMP events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest stopped running (`STOP`).
    Stop,
    /// The guest runs again (`RESUME`).
    Resume,
    /// The machine is shutting down (`SHUTDOWN`).
    Shutdown(ShutdownCause),
    /// The guest reported a panic (`GUEST_PANICKED`); `paused` when the
    /// machine stops in `guest-panicked`, else it shuts down.
    GuestPanicked {
        /// Whether the machine waits (action `pause`) or ends (`poweroff`).
        paused: bool,
    },
    /// The guest set its real-time clock (`RTC_CHANGE`).
    RtcChange {
        /// Guest time minus host time, seconds.
        offset: i64,
    },
    /// The power button was pressed (`POWERDOWN`).
    Powerdown,
    /// The guest entered S3 (`SUSPEND`): run state `suspended`.
    Suspend,
    /// The guest woke from S3 (`WAKEUP`): running again.
    Wakeup,
    /// The machine was reset in place (`RESET`), by the guest or the host.
    Reset {
        /// Whether the guest asked for it.
        guest: bool,
    },
    /// A disk's host I/O failed (`BLOCK_IO_ERROR`).
    BlockIoError(BlockIoError),
    /// A migration changed status (`MIGRATION`).
    Migration {
        /// The new status.
        status: &'static str,
    },
    /// A live migration began a pass over the dirty pages
    /// (`MIGRATION_PASS`).
    MigrationPass {
        /// The pass, from 1.
        pass: u64,
    },
    /// A job changed status (`JOB_STATUS_CHANGE`).
    JobStatus {
        /// The job's id.
        id: String,
        /// The new status's QAPI name.
        status: &'static str,
    },
    /// The watchdog expired (`WATCHDOG`); what is done follows.
    Watchdog {
        /// The action's QAPI name.
        action: &'static str,
    },
}

/// A disk's failed host I/O, as QEMU's `BLOCK_IO_ERROR` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIoError {
    /// The drive's id (`device`, and `node-name` too).
    pub device: String,
    /// `read` or `write` (a flush, discard or write-zeroes is a write).
    pub operation: &'static str,
    /// `report`, `ignore` or `stop`: what was done.
    pub action: &'static str,
    /// Whether the host ran out of space.
    pub nospace: bool,
    /// The host's error, in words.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_causes_are_qapi_strings() {
        assert_eq!(ShutdownCause::HostQmpQuit.as_str(), "host-qmp-quit");
        assert_eq!(ShutdownCause::GuestShutdown.as_str(), "guest-shutdown");
        assert!(ShutdownCause::GuestReset.is_guest());
        assert!(!ShutdownCause::HostSignal.is_guest());
    }
}
