//! The PC machine (QEMU's `pc_init1`): memory map, kernel loading, boot
//! tables, x86 vCPU set-up and the wiring of the legacy devices.

#![deny(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod control;
pub mod cpu;
pub mod device_types;
pub mod devices;
pub mod disks;
pub mod gdb;
mod images;
pub mod io;
mod io_error;
pub mod irqchip;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod migration;
pub mod model;
pub mod mptable;
pub mod nets;
pub mod pci;
mod regular_file;
pub mod snapshot;
pub mod test_guests;
#[cfg(test)]
mod test_util;
pub mod virtio;
pub mod virtio_state;
pub mod vsocks;

pub use control::{
    BlockInfo, BlockIoError, Command, CpuInfo, CpuText, DeviceInfo, GdbRequest, MachineEvent,
    QuitSource, Reply, ReplyFn, ShutdownCause,
};
pub use machine::{
    parse_incoming, parse_migration_uri, BoxError, ExitReason, Incoming, IrqChipMode,
    MachineControl, MigrationInfo, PcConfig, PcError, PcMachine, PitBackend, RebootAction,
    WatchdogAction,
};
