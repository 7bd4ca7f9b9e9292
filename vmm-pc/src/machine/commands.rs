//! The commands front ends send (QMP, the console's monitor), carried out
//! on the main loop in the order they came (QEMU's `qmp_*` handlers).

use vmm_runstate::RunState;

use super::{lock, CommandFailure, PcError, PcMachine};
use crate::control::{Command, CpuInfo, MachineEvent, QuitSource, Reply};

impl PcMachine {
    /// Runs the commands front ends submitted, in order.
    pub(super) fn run_commands(&mut self) -> Result<(), PcError> {
        loop {
            let Some((command, reply, claim)) = lock(&self.control.commands).pop_front() else {
                return Ok(());
            };
            if claim.is_some_and(|c| !c.take()) {
                continue;
            }
            let outcome = self.run_command(command);
            // A failure to pause or resume the vCPUs is the machine's, not
            // the command's: it ends the run after the reply.
            match outcome {
                Ok(r) => reply(Ok(r)),
                Err(CommandFailure::Refused(why)) => reply(Err(why)),
                Err(CommandFailure::Machine(e)) => {
                    reply(Err(e.to_string()));
                    return Err(e);
                }
            }
        }
    }

    fn run_command(&mut self, command: Command) -> Result<Reply, CommandFailure> {
        let state = self.runstate.state();
        match command {
            Command::QueryStatus => Ok(Reply::Status {
                running: self.runstate.is_running(),
                status: state,
            }),
            Command::QueryCpus => Ok(Reply::Cpus(
                self.vcpus
                    .thread_ids()
                    .into_iter()
                    .zip(0..)
                    .map(|(thread_id, index)| CpuInfo { index, thread_id })
                    .collect(),
            )),
            Command::QueryPci => Ok(Reply::Pci(lock(&self.devices.pci).describe())),
            Command::QueryDevices => Ok(Reply::Devices(self.device_tree())),
            Command::PhysMemSave { addr, size, path } => self.pmemsave(addr, size, &path),
            Command::QueryRegisters { cpu } => self.query_registers(cpu),
            Command::QueryLapic { apic_id } => self.query_lapic(apic_id),
            Command::Gdb(request) => self.gdb_command(request),
            Command::Migrate { uri } => {
                self.migrate(&uri)?;
                Ok(Reply::Done)
            }
            Command::QueryMigrate => Ok(Reply::Migration(self.migration_info())),
            Command::MigrateCancel => {
                self.migrate_cancel();
                Ok(Reply::Done)
            }
            Command::MigrateSetParameters {
                downtime_limit_ms,
                max_bandwidth,
            } => {
                self.live.set_params(downtime_limit_ms, max_bandwidth);
                Ok(Reply::Done)
            }
            Command::QueryMigrateParameters => Ok(Reply::MigrationParameters(self.live.params())),
            Command::MigrationEvents(on) => {
                self.migration_events = on;
                Ok(Reply::Done)
            }
            // Not while a migration runs either way: an incoming stream
            // writes RAM on the migration thread, which a save would read
            // and a load would map over.
            Command::SnapshotSave { .. } | Command::SnapshotLoad { .. } => {
                self.check_no_migration()?;
                self.job_command(command)
            }
            Command::QueryJobs | Command::JobDismiss { .. } => self.job_command(command),
            Command::SetAction { watchdog, reboot } => {
                if let Some(action) = watchdog {
                    self.watchdog_action = action;
                }
                if let Some(action) = reboot {
                    self.reboot = action;
                }
                Ok(Reply::Done)
            }
            Command::QueryBlock => Ok(Reply::Block(
                self.disks
                    .iter()
                    .map(|d| crate::BlockInfo {
                        device: d.id.clone(),
                        file: d.path.display().to_string(),
                        readonly: d.readonly,
                        size: d.size,
                        direct: d.direct,
                        slot: d.slot,
                        failed: d.handle.is_held(),
                        stats: d.handle.stats(),
                    })
                    .collect(),
            )),
            Command::Stop => {
                if self.runstate.is_running() {
                    self.stop_with(RunState::Paused)
                        .map_err(CommandFailure::Machine)?;
                }
                Ok(Reply::Done)
            }
            Command::SystemPowerdown => {
                self.emit(MachineEvent::Powerdown);
                if state == RunState::Suspended {
                    // The power button wakes a suspended guest.
                    self.wake(vmm_devices::WakeCause::PowerButton)
                        .map_err(CommandFailure::Machine)?;
                } else {
                    self.devices.press_power_button();
                }
                Ok(Reply::Done)
            }
            Command::SystemWakeup => {
                self.system_wakeup()?;
                Ok(Reply::Done)
            }
            // The last copy of a live migration: the machine stays as it is.
            Command::SystemReset if state == RunState::FinishMigrate && self.live.active() => Err(
                CommandFailure::Refused("There's a migration process in progress".into()),
            ),
            // The incoming migration owns RAM and the machine's state until
            // it ends: a reset would reload the kernel under it.
            Command::SystemReset if state == RunState::Inmigrate => Err(CommandFailure::Refused(
                "Guest is waiting for an incoming migration".into(),
            )),
            Command::SystemReset => {
                self.reset(false).map_err(CommandFailure::Machine)?;
                Ok(Reply::Done)
            }
            // QEMU: `cont` while an incoming migration waits only says to
            // run once it is loaded.
            // The last copy of a live migration: the guest stays stopped.
            Command::Cont if state == RunState::FinishMigrate && self.live.active() => Err(
                CommandFailure::Refused("There's a migration process in progress".into()),
            ),
            Command::Cont if state == RunState::Inmigrate => {
                self.autostart = true;
                Ok(Reply::Done)
            }
            Command::MigrateIncoming { uri } => {
                self.migrate_incoming(&uri)?;
                Ok(Reply::Done)
            }
            Command::Cont => {
                if self.runstate.needs_reset() {
                    return Err(CommandFailure::Refused(
                        "Resetting the Virtual Machine is required".into(),
                    ));
                }
                // A suspended guest wakes only by a wake-up source.
                if !self.runstate.is_live() {
                    // (After io-error, the held requests go again: `start`.)
                    self.start().map_err(CommandFailure::Machine)?;
                    self.emit(MachineEvent::Resume);
                }
                Ok(Reply::Done)
            }
            Command::Quit => {
                self.quit = Some(QuitSource::Qmp);
                Ok(Reply::Done)
            }
        }
    }
}
