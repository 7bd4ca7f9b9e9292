//! Migration to and from a file (QEMU's `migrate` with `uri` `file:PATH`,
//! and `-incoming file:PATH`), on the snapshot's format and state (see
//! `snapshot.rs`): the source stops (`finish-migrate`) for the whole copy,
//! writes everything and stays stopped (`postmigrate`, where `cont` runs
//! it again); a failure puts it back where it was. The destination starts
//! in `inmigrate`, loads the file before any vCPU runs, and runs (or waits
//! `paused` with `--paused`). `migrate` and `migrate-incoming` with a
//! stream URI (`tcp:`, `unix:`, `exec:`) go to the live, pre-copy
//! migration instead (`live.rs`).
//!
//! A suspended guest (ACPI S3) migrates as such, as in current QEMU: the
//! source goes `suspended -> finish-migrate -> postmigrate` (a failure puts
//! it back in `suspended`), the file or stream carries the `runstate`
//! section, and the destination ends in `suspended` (with `--paused`, in
//! `paused`, and `cont` then goes to `suspended`), where `system_wakeup`
//! wakes the guest at its waking vector as the source would have. `cont`
//! on the source after the migration puts it back in `suspended` too.
//!
//! `query-migrate` reports the last migration in QEMU's shape;
//! `MIGRATION` events (`setup`, `active`, `completed` or `failed`; live
//! migrations also `cancelling` and `cancelled`) go out when the client
//! turned on the `events` capability (`migrate-set-capabilities`), as
//! QEMU's do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_runstate::RunState;

use super::{CommandFailure, PcError, PcMachine};
use crate::migration::{parse_uri, MigrationUri, RamStats};
use crate::MachineEvent;

/// The last migration, for `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    /// `setup`, `active`, `cancelling`, `completed`, `failed` or
    /// `cancelled`.
    pub status: &'static str,
    /// Start to end (or to now), ms.
    pub total_time_ms: u64,
    /// The guest stopped, ms (once completed).
    pub downtime_ms: Option<u64>,
    /// What the guest would stop for now, ms (while active).
    pub expected_downtime_ms: Option<u64>,
    /// Start to the stream's start, ms.
    pub setup_time_ms: u64,
    /// QEMU's RAM figures.
    pub ram: RamStats,
    /// Why it failed.
    pub error: Option<String>,
    /// The destination's: `query-migrate` shows only its `status` (and
    /// `error-desc`), as QEMU's destination does.
    pub incoming: bool,
}

/// Where an incoming migration comes from (`--incoming`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A file written by `migrate` with `file:PATH`.
    File(PathBuf),
    /// A stream: `tcp:`, `unix:` or `exec:`.
    Stream(MigrationUri),
    /// `defer`: wait in `inmigrate` for QMP `migrate-incoming`.
    Defer,
}

/// QEMU's `-incoming` value: `defer` or a URI.
pub fn parse_incoming(uri: &str) -> Result<Incoming, String> {
    if uri == "defer" {
        return Ok(Incoming::Defer);
    }
    Ok(match parse_uri(uri)? {
        MigrationUri::File(path) => Incoming::File(path),
        stream => Incoming::Stream(stream),
    })
}

pub(super) fn ms(i: Instant) -> u64 {
    u64::try_from(i.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl PcMachine {
    pub(super) fn migration_status(&mut self, status: &'static str) {
        if self.migration_events {
            self.emit(MachineEvent::Migration { status });
        }
    }

    pub(super) fn ram_total(&self) -> u64 {
        self.vm.memory().iter().map(|r| r.len()).sum()
    }

    /// QMP `migrate`: the machine into the file `uri` names, or live over
    /// a stream (`machine/live.rs`).
    pub(super) fn migrate(&mut self, uri: &str) -> Result<(), CommandFailure> {
        self.check_no_migration()?;
        let path = match parse_uri(uri).map_err(CommandFailure::Refused)? {
            MigrationUri::File(path) => path,
            stream => return self.migrate_live(stream),
        };
        let state = self.runstate.state();
        if !matches!(
            state,
            RunState::Running | RunState::Paused | RunState::Suspended
        ) {
            return Err(CommandFailure::Refused(format!(
                "migration is not possible in state '{state}'"
            )));
        }
        let started = Instant::now();
        self.migration_status("setup");
        self.migration_status("active");
        let was_live = self.runstate.is_live();
        self.stop_with(RunState::FinishMigrate)
            .map_err(CommandFailure::Machine)?;
        let stopped = Instant::now();
        let written = self.write_snapshot(&path);
        let total = self.ram_total();
        let pages = total / crate::snapshot::format::PAGE as u64;
        // What the file got: the data pages (and the sections), the pages
        // of zeroes as holes (QEMU's `duplicate`, zero pages it sends as a
        // flag).
        let (transferred, normal) = match &written {
            Ok(w) => (w.bytes, w.pages),
            Err(_) => (0, 0),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let per_second = |n: u64| {
            if elapsed > 0.0 {
                (n as f64 / elapsed) as u64
            } else {
                0
            }
        };
        let mut info = MigrationInfo {
            status: "completed",
            total_time_ms: ms(started),
            downtime_ms: Some(ms(stopped)),
            expected_downtime_ms: None,
            setup_time_ms: 0,
            ram: RamStats {
                transferred,
                total,
                normal,
                duplicate: pages.saturating_sub(normal),
                dirty_sync_count: 1,
                bandwidth: per_second(transferred),
                pages_per_second: per_second(normal),
                ..RamStats::default()
            },
            error: None,
            incoming: false,
        };
        match written {
            Ok(_) => {
                self.runstate
                    .transition(RunState::Postmigrate)
                    .map_err(|e| CommandFailure::Machine(PcError::Control(e.to_string())))?;
                self.release_disk_locks();
                self.migration = Some(info);
                self.migration_status("completed");
                Ok(())
            }
            Err(e) => {
                let why = match &e {
                    CommandFailure::Refused(w) => w.clone(),
                    CommandFailure::Machine(m) => m.to_string(),
                };
                log::warn!("migration failed: {why}");
                info.status = "failed";
                info.error = Some(why);
                self.migration = Some(info);
                self.migration_status("failed");
                // Back where it was (`suspended` through `asleep`).
                if was_live {
                    self.start().map_err(CommandFailure::Machine)?;
                    self.emit(MachineEvent::Resume);
                } else {
                    self.runstate
                        .transition(RunState::Paused)
                        .map_err(|e| CommandFailure::Machine(PcError::Control(e.to_string())))?;
                }
                match e {
                    CommandFailure::Machine(m) => Err(CommandFailure::Machine(m)),
                    CommandFailure::Refused(_) => Ok(()),
                }
            }
        }
    }

    /// QMP `migrate-incoming` in a machine started with `--incoming
    /// defer`: the load, then `running` (or `paused` if started with
    /// `--paused` and no `cont` came meanwhile).
    pub(super) fn migrate_incoming(&mut self, uri: &str) -> Result<(), CommandFailure> {
        if !self.deferred_incoming || self.runstate.state() != RunState::Inmigrate {
            return Err(CommandFailure::Refused(
                "migrate-incoming needs --incoming defer, once".into(),
            ));
        }
        let path = match parse_uri(uri).map_err(CommandFailure::Refused)? {
            MigrationUri::File(path) => path,
            stream => {
                // A listening that failed (a port in use) may be tried
                // again, as QEMU's.
                self.incoming_stream(stream)
                    .map_err(CommandFailure::Refused)?;
                self.deferred_incoming = false;
                return Ok(());
            }
        };
        let loaded = self.read_snapshot(&path)?;
        // Nothing has run in `inmigrate`.
        self.apply_snapshot(loaded)?;
        self.deferred_incoming = false;
        self.after_incoming().map_err(CommandFailure::Machine)
    }

    /// Once loaded: run, or wait `paused`. A suspended source's guest
    /// sleeps on (`asleep`, from the `runstate` section): `suspended`
    /// rather than `running` (`RESUME` all the same, as QEMU's); with
    /// `--paused`, `paused` as QEMU's, and `cont` goes to `suspended`.
    pub(super) fn after_incoming(&mut self) -> Result<(), PcError> {
        self.take_disk_locks()?;
        if self.autostart {
            self.start()?;
            self.emit(MachineEvent::Resume);
        } else {
            self.runstate
                .transition(RunState::Paused)
                .map_err(|e| PcError::Control(e.to_string()))?;
        }
        Ok(())
    }

    /// `--incoming file:PATH`, before any vCPU runs: `inmigrate`, the
    /// machine loaded from the file; the caller then starts it (or leaves
    /// it `paused` with `--paused`). A file that does not fit this machine
    /// is an error (the VMM ends, as QEMU's "load of migration failed").
    pub(super) fn incoming(&mut self, path: &Path) -> Result<(), PcError> {
        self.runstate
            .transition(RunState::Inmigrate)
            .map_err(|e| PcError::Control(e.to_string()))?;
        let fail = |e: CommandFailure| match e {
            CommandFailure::Refused(why) => PcError::Migration(format!(
                "load of migration from {} failed: {why}",
                path.display()
            )),
            CommandFailure::Machine(m) => m,
        };
        // Read and decoded during the build (see there).
        let loaded = match self.incoming_file.take() {
            Some(parsed) => parsed
                .map_err(CommandFailure::Refused)
                .and_then(|parsed| self.check_parsed(parsed)),
            None => self.read_snapshot(path),
        }
        .map_err(fail)?;
        self.apply_snapshot(loaded).map_err(fail)?;
        Ok(())
    }
}

/// How long a destination waits for the source to let its images go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl PcMachine {
    /// The destination of a migration, loaded: the disk images' locks,
    /// which the source lets go when its migration completes (QEMU's
    /// images are inactive on the destination until then, the same way).
    fn take_disk_locks(&self) -> Result<(), PcError> {
        let started = Instant::now();
        for disk in &self.disks {
            loop {
                match disk.handle.lock_image() {
                    Ok(()) => break,
                    Err(vmm_virtio::blk::BlockError::Locked(_))
                        if started.elapsed() < LOCK_WAIT =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => {
                        return Err(PcError::Migration(format!(
                            "drive {}: cannot lock the image after the migration: {e}",
                            disk.id
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// A migration's source, done (`postmigrate`): the destination may
    /// now lock the images.
    pub(super) fn release_disk_locks(&mut self) {
        for disk in &self.disks {
            disk.handle.unlock_image();
        }
        self.live.locks_released = true;
    }

    /// `cont` after a completed migration: the images are ours again if
    /// nobody took them (a destination that did keeps them; the guest
    /// runs on, as QEMU's does, but its writes now race the other's).
    pub(super) fn retake_disk_locks(&mut self) {
        if !std::mem::take(&mut self.live.locks_released) {
            return;
        }
        for disk in &self.disks {
            if let Err(e) = disk.handle.lock_image() {
                log::warn!(
                    "drive {}: {e}: the migration's destination has the image; both now write it",
                    disk.id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defer_a_file_or_a_stream() {
        assert_eq!(parse_incoming("defer").unwrap(), Incoming::Defer);
        assert_eq!(
            parse_incoming("file:/x").unwrap(),
            Incoming::File(PathBuf::from("/x"))
        );
        assert_eq!(
            parse_incoming("unix:/s").unwrap(),
            Incoming::Stream(MigrationUri::Unix("/s".into()))
        );
        assert_eq!(
            parse_incoming("bogus").unwrap_err(),
            "unknown migration protocol: bogus"
        );
    }
}
