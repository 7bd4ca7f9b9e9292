//! Live migration, the machine's side (the stream and the pre-copy are
//! `crate::migration`'s): `migrate` over `tcp:`, `unix:` or `exec:` turns
//! dirty logging on (the vCPUs parked for that one call), hands the work
//! to the migration thread and returns; the main loop goes on
//! (the guest runs, QMP answers) and reads the thread's messages after
//! each wake-up. When the thread asks, the main loop stops the guest
//! (`finish-migrate`, as for `stop`: vCPUs parked, kvmclock and Virtual
//! clock frozen), captures its state with the snapshot's code and hands
//! it over; once the stream is out the source ends in `postmigrate`. A
//! failure or `migrate_cancel` puts the guest back as it was.
//!
//! The destination listens (or starts its command) at build time for
//! `--incoming`, at `migrate-incoming` after `defer`; the thread writes
//! the pages into the guest's RAM while the machine waits in `inmigrate`,
//! and the main loop puts the state on and runs (or waits `paused`). A
//! stream that cannot be taken ends the VMM with the reason.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use vmm_runstate::RunState;

use super::migration::{ms, MigrationInfo};
use super::{lock, CommandFailure, PcError, PcMachine};
use crate::migration::recv::{From, RecvJob};
use crate::migration::send::SendJob;
use crate::migration::transport::Listener;
use crate::migration::worker::{Job, Mailbox, Shared, ToMain, Worker};
use crate::migration::{MigrationUri, Params, RamStats};
use crate::MachineEvent;

/// QEMU's words for a second migration.
const IN_PROGRESS: &str = "There's a migration process in progress";

/// An outgoing live migration.
#[derive(Debug)]
struct Outgoing {
    shared: Arc<Shared>,
    started: Instant,
    /// When the guest stopped for the last copy.
    stopped: Option<Instant>,
    /// Its run state when stopped (a failure puts it back: running again,
    /// or `paused` or `postmigrate` as it was).
    before: RunState,
    status: &'static str,
}

/// The machine's live-migration state.
pub(super) struct Live {
    /// The migration thread, once the machine runs ([`Live::start_worker`]).
    worker: Option<Worker>,
    /// Its thread-start hook (its seccomp filter), until it starts.
    start: Option<crate::migration::worker::ThreadStart>,
    /// Whether the thread is made at all: only when something can hand
    /// it work (a control interface, `--incoming`).
    wanted: bool,
    mailbox: Arc<Mailbox>,
    params: Params,
    spawn_allowed: bool,
    out: Option<Outgoing>,
    /// `--incoming`'s listener (or command), set up at build time.
    listener: Option<Listener>,
    /// An incoming stream is being received.
    receiving: Option<Instant>,
    /// A completed migration let the disk images' locks go: the next
    /// start takes them back, from whatever state (`cont` in
    /// `postmigrate`, or after a `system_reset` there).
    pub(super) locks_released: bool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("worker", &self.worker)
            .field("params", &self.params)
            .field("spawn_allowed", &self.spawn_allowed)
            .field("receiving", &self.receiving)
            .finish_non_exhaustive()
    }
}

/// How long `migrate-incoming` waits for the migration thread's listening.
const LISTEN_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

impl Live {
    /// The state without its thread yet ([`Live::start_worker`]); for
    /// `--incoming` with a stream, listens now (a port in use fails the
    /// build) or starts the command. `control`: whether a control
    /// interface can ask for a migration (see `PcConfig::migration_control`).
    pub(super) fn new(
        wake: Arc<vmm_sys_util::eventfd::EventFd>,
        start: Option<crate::migration::worker::ThreadStart>,
        spawn_allowed: bool,
        control: bool,
        incoming: Option<&super::Incoming>,
    ) -> Result<Self, PcError> {
        let listener = match incoming {
            // Before any filter: the command may start here.
            Some(super::Incoming::Stream(uri)) => Some(
                crate::migration::transport::listen(uri, true)
                    .map_err(|e| PcError::Migration(format!("--incoming: {e}")))?,
            ),
            _ => None,
        };
        let mailbox = Arc::new(Mailbox::new(wake));
        Ok(Self {
            worker: None,
            start,
            wanted: control || incoming.is_some(),
            mailbox,
            params: Params::default(),
            spawn_allowed,
            out: None,
            listener,
            receiving: None,
            locks_released: false,
        })
    }

    /// Starts the migration thread and waits for its start hook (its
    /// filter): once the vCPUs run, off the boot vCPU's way, and before the
    /// main thread's own filter, which a thread made after it would
    /// inherit. An error ends the machine. A machine nothing can ask for
    /// a migration makes none.
    pub(super) fn start_worker(&mut self) -> Result<(), PcError> {
        if self.worker.is_some() || !self.wanted {
            return Ok(());
        }
        let failed = |e| PcError::Control(format!("cannot start the migration thread: {e}"));
        let mut worker =
            Worker::spawn(self.start.take(), Arc::clone(&self.mailbox)).map_err(failed)?;
        worker.started().map_err(failed)?;
        self.worker = Some(worker);
        Ok(())
    }

    /// Hands the migration thread `job`.
    fn submit(&self, job: Job) -> Result<(), String> {
        match &self.worker {
            Some(worker) => worker.submit(job),
            None => Err("the migration thread has not started".to_owned()),
        }
    }

    /// The VMM rewrote guest RAM wholesale (a reset's reload): an outgoing
    /// migration sends all of it again. (Writes through the guest-memory
    /// API are in guest RAM's dirty bitmap already; this is the belt.)
    pub(super) fn vmm_wrote_ram(&self) {
        if let Some(out) = &self.out {
            out.shared.resend_all.store(true, Ordering::SeqCst);
        }
    }

    /// `query-migrate-parameters`.
    pub(super) fn params(&self) -> Params {
        self.params
    }

    /// `migrate-set-parameters`: for the next migration and the running
    /// one.
    pub(super) fn set_params(
        &mut self,
        downtime_limit_ms: Option<u64>,
        max_bandwidth: Option<u64>,
    ) {
        if let Some(v) = downtime_limit_ms {
            self.params.downtime_limit_ms = v;
        }
        if let Some(v) = max_bandwidth {
            self.params.max_bandwidth = v;
        }
        if let Some(out) = &self.out {
            out.shared
                .downtime_limit_ms
                .store(self.params.downtime_limit_ms, Ordering::Relaxed);
            out.shared
                .max_bandwidth
                .store(self.params.max_bandwidth, Ordering::Relaxed);
        }
    }

    /// Whether an outgoing migration runs.
    pub(super) fn active(&self) -> bool {
        self.out.is_some()
    }
}

impl PcMachine {
    /// Refuses while a migration runs, either way (QEMU's words).
    pub(super) fn check_no_migration(&self) -> Result<(), CommandFailure> {
        if self.live.out.is_some() || self.live.receiving.is_some() {
            return Err(CommandFailure::Refused(IN_PROGRESS.into()));
        }
        Ok(())
    }

    /// `migrate` over a stream: the pre-copy starts on the migration
    /// thread; this returns at once.
    pub(super) fn migrate_live(&mut self, uri: MigrationUri) -> Result<(), CommandFailure> {
        if self.runstate.state() == RunState::Inmigrate {
            return Err(CommandFailure::Refused(
                "Guest is waiting for an incoming migration".into(),
            ));
        }
        self.check_live_migratable()?;
        let state = self.runstate.state();
        if !matches!(
            state,
            RunState::Running | RunState::Paused | RunState::Postmigrate | RunState::Suspended
        ) {
            return Err(CommandFailure::Refused(format!(
                "migration is not possible in state '{state}'"
            )));
        }
        if matches!(uri, MigrationUri::Exec(_)) && !self.live.spawn_allowed {
            return Err(CommandFailure::Refused(
                crate::migration::transport::NO_SPAWN.into(),
            ));
        }
        // Dirty logging on, here, with the vCPUs parked for the call: on a
        // running vCPU, KVM's memory-slot update waits for it (hundreds of
        // ms on PVM); parked, it takes microseconds. The guest's time is
        // not stopped for so short a park (no STOP, no run-state change).
        let started = Instant::now();
        let running = self.runstate.is_running();
        if running {
            self.vcpus
                .pause_all()
                .map_err(|e| CommandFailure::Machine(e.into()))?;
        }
        let logging = self.vm.set_dirty_logging(true);
        if running {
            self.vcpus
                .resume_all()
                .map_err(|e| CommandFailure::Machine(e.into()))?;
        }
        logging.map_err(|e| CommandFailure::Refused(format!("cannot log dirty pages: {e}")))?;
        log::debug!(
            "migration: dirty logging on, vCPUs parked {:?}",
            started.elapsed()
        );
        // What the host kernel writes for cards on vhost-net is in a log
        // of its own, which their rings take now.
        let vhost_log = self.start_vhost_log();
        let shared = Arc::new(Shared::new(self.live.params, self.ram_total()));
        let job = SendJob {
            vhost_log,
            uri,
            vm: self.vm.clone(),
            shape: self.shape(),
            shared: Arc::clone(&shared),
            spawn_allowed: self.live.spawn_allowed,
            started,
            file_data: self
                .vm
                .ram_slots()
                .iter()
                .map(|s| {
                    self.ram_file
                        .as_ref()
                        .and_then(|f| f.data_pages(s.guest_addr, s.size))
                })
                .collect(),
        };
        if let Err(e) = self.live.submit(Job::Send(job)) {
            let _ = self.vm.set_dirty_logging(false);
            self.end_vhost_log();
            return Err(CommandFailure::Refused(e));
        }
        self.live.out = Some(Outgoing {
            shared,
            started,
            stopped: None,
            before: RunState::Running,
            status: "setup",
        });
        self.migration = None;
        self.migration_status("setup");
        Ok(())
    }

    /// `migrate_cancel`: an outgoing migration stops and the guest goes
    /// back as it was (`cancelled`); without one, nothing.
    pub(super) fn migrate_cancel(&mut self) {
        let Some(out) = &mut self.live.out else {
            return;
        };
        if out.status == "cancelling" {
            return;
        }
        out.status = "cancelling";
        out.shared.cancel();
        self.migration_status("cancelling");
    }

    /// `query-migrate`: the running migration's figures, or the last one's.
    pub(super) fn migration_info(&self) -> Option<MigrationInfo> {
        if let Some(out) = &self.live.out {
            let shared = &out.shared;
            return Some(MigrationInfo {
                status: out.status,
                total_time_ms: ms(out.started),
                downtime_ms: None,
                expected_downtime_ms: Some(shared.expected_downtime_ms.load(Ordering::Relaxed)),
                setup_time_ms: shared.setup_time_ms.load(Ordering::Relaxed),
                ram: shared.stats(),
                error: None,
                incoming: false,
            });
        }
        if let Some(started) = self.live.receiving {
            return Some(MigrationInfo {
                status: "active",
                total_time_ms: ms(started),
                downtime_ms: None,
                expected_downtime_ms: None,
                setup_time_ms: 0,
                ram: RamStats::default(),
                error: None,
                incoming: true,
            });
        }
        self.migration.clone()
    }

    /// The destination: `inmigrate`, the stream received on the migration
    /// thread from `uri` (or `--incoming`'s listener).
    pub(super) fn incoming_stream(&mut self, uri: MigrationUri) -> Result<(), String> {
        if self.runstate.state() != RunState::Inmigrate {
            self.runstate
                .transition(RunState::Inmigrate)
                .map_err(|e| e.to_string())?;
        }
        let (from, listening) = match self.live.listener.take() {
            Some(listener) => (From::Ready(listener), None),
            None => {
                if matches!(uri, MigrationUri::Exec(_)) && !self.live.spawn_allowed {
                    return Err(crate::migration::transport::NO_SPAWN.into());
                }
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                (From::Uri(uri, self.live.spawn_allowed, tx), Some(rx))
            }
        };
        let job = RecvJob {
            from,
            memory: self.vm.memory().clone(),
            shape: self.shape(),
        };
        self.live.submit(Job::Receive(job))?;
        // The migration thread listens (or starts `exec:`'s command) at
        // once: its answer is the command's.
        if let Some(rx) = listening {
            rx.recv_timeout(LISTEN_ANSWER)
                .map_err(|_| "the migration thread did not start listening".to_owned())??;
        }
        self.live.receiving = Some(Instant::now());
        self.migration_status("active");
        Ok(())
    }

    /// Reads the migration thread's messages (after each main-loop
    /// wake-up). A stream that could not be taken ends the machine.
    pub(super) fn migration_messages(&mut self) -> Result<(), PcError> {
        while let Some(message) = self.live.mailbox.take() {
            match message {
                ToMain::Active => {
                    if let Some(out) = self.live.out.as_mut().filter(|o| o.status == "setup") {
                        out.status = "active";
                        self.migration_status("active");
                    }
                }
                ToMain::Pass(pass) => {
                    if self.migration_events {
                        self.emit(MachineEvent::MigrationPass { pass });
                    }
                }
                ToMain::WantStop(reply) => match self.stop_for_migration() {
                    Ok(state) => {
                        let _ = reply.send(state);
                    }
                    // The vCPUs did not all stop: the machine's failure,
                    // as for `stop` (some would stay parked while the
                    // machine said `running`).
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return Err(e);
                    }
                },
                ToMain::Sent(result) => self.outgoing_ended(result)?,
                ToMain::Received(result) => self.incoming_ended(result)?,
            }
        }
        Ok(())
    }

    /// A log for the host kernel's writes to guest RAM, given to the
    /// cards on vhost-net (None without one).
    fn start_vhost_log(&self) -> Option<Arc<vmm_virtio::vhost::DirtyLog>> {
        let slots = self.vhost_slots();
        if slots.is_empty() {
            return None;
        }
        let log = Arc::new(vmm_virtio::vhost::DirtyLog::for_memory(self.vm.memory()));
        crate::virtio_state::set_dirty_log(&self.devices.pci, &slots, Some(&log));
        Some(log)
    }

    /// The cards on vhost-net stop logging (at their next start: now if
    /// they run).
    fn end_vhost_log(&self) {
        let slots = self.vhost_slots();
        if !slots.is_empty() {
            crate::virtio_state::set_dirty_log(&self.devices.pci, &slots, None);
        }
    }

    /// The last copy: the guest stopped (`finish-migrate`), its state; an
    /// error if the vCPUs could not be stopped (which ends the machine).
    fn stop_for_migration(&mut self) -> Result<crate::migration::worker::StateReply, PcError> {
        if self.live.out.as_ref().is_none_or(|o| o.shared.cancelled()) {
            return Ok(Err("cancelled".into()));
        }
        // The guest may have gone to S3 meanwhile, or woken: the state
        // captured below says which (the `runstate` section).
        let text = |e: CommandFailure| match e {
            CommandFailure::Refused(why) => why,
            CommandFailure::Machine(e) => e.to_string(),
        };
        let Some(out) = self.live.out.as_mut() else {
            return Ok(Err("no migration".into()));
        };
        let state = self.runstate.state();
        // A state the last copy cannot be taken from (`debug`: gdb holds
        // the guest) fails the migration, not the machine.
        if !vmm_runstate::is_allowed(state, RunState::FinishMigrate) {
            return Ok(Err(format!("migration is not possible in state '{state}'")));
        }
        out.before = state;
        out.stopped = Some(Instant::now());
        self.stop_with(RunState::FinishMigrate)?;
        Ok(self.capture_state().map_err(text))
    }

    fn outgoing_ended(&mut self, result: Result<(), String>) -> Result<(), PcError> {
        let Some(out) = self.live.out.take() else {
            return Ok(());
        };
        self.end_vhost_log();
        let control = |e: vmm_runstate::InvalidTransition| PcError::Control(e.to_string());
        let mut info = MigrationInfo {
            status: "completed",
            total_time_ms: ms(out.started),
            downtime_ms: out.stopped.map(ms),
            expected_downtime_ms: None,
            setup_time_ms: out.shared.setup_time_ms.load(Ordering::Relaxed),
            ram: out.shared.stats(),
            error: None,
            incoming: false,
        };
        match result {
            Ok(()) => {
                self.runstate
                    .transition(RunState::Postmigrate)
                    .map_err(control)?;
                // A reset that arrived during the last copy waited for the
                // end (see `next_exit`): the guest runs on at the
                // destination now, which has the state captured before it.
                let mut p = lock(&self.pending);
                if std::mem::take(&mut p.reset) | std::mem::take(&mut p.watchdog) {
                    log::warn!(
                        "a guest or watchdog reset came during the migration's last copy; \
                         the destination has the state from before it"
                    );
                }
                drop(p);
                self.release_disk_locks();
                log::info!(
                    "migration completed in {} ms, downtime {} ms",
                    info.total_time_ms,
                    info.downtime_ms.unwrap_or(0)
                );
            }
            Err(why) => {
                let cancelled = out.shared.cancelled();
                info.status = if cancelled { "cancelled" } else { "failed" };
                info.downtime_ms = None;
                if !cancelled {
                    log::warn!("migration failed: {why}");
                    info.error = Some(why);
                }
                // Back where it was.
                if self.runstate.state() == RunState::FinishMigrate {
                    // `suspended` through `asleep`.
                    if out.before.is_live() {
                        self.start()?;
                        self.emit(MachineEvent::Resume);
                    } else if vmm_runstate::is_allowed(RunState::FinishMigrate, out.before) {
                        self.runstate.transition(out.before).map_err(control)?;
                    } else {
                        // A state reached during the pre-copy that the
                        // table has no way back to (`prelaunch` after a
                        // reset, `io-error`, `watchdog`, ...): stopped,
                        // `cont` runs it.
                        log::warn!(
                            "migration failed in state '{}': the machine stays paused",
                            out.before
                        );
                        self.runstate
                            .transition(RunState::Paused)
                            .map_err(control)?;
                    }
                }
            }
        }
        let status = info.status;
        self.migration = Some(info);
        self.migration_status(status);
        Ok(())
    }

    fn incoming_ended(
        &mut self,
        result: Result<Vec<crate::snapshot::format::Section>, String>,
    ) -> Result<(), PcError> {
        let Some(started) = self.live.receiving.take() else {
            return Ok(());
        };
        let fail = |why: String| PcError::Migration(format!("load of migration failed: {why}"));
        let sections = result.map_err(fail)?;
        let applied = self
            .decode_state(&sections)
            .and_then(|state| self.apply_state(state));
        match applied {
            Ok(()) => {}
            Err(CommandFailure::Refused(why)) => return Err(fail(why)),
            Err(CommandFailure::Machine(e)) => return Err(e),
        }
        self.migration = Some(MigrationInfo {
            status: "completed",
            total_time_ms: ms(started),
            downtime_ms: None,
            expected_downtime_ms: None,
            setup_time_ms: 0,
            ram: RamStats::default(),
            error: None,
            incoming: true,
        });
        self.migration_status("completed");
        self.after_incoming()
    }
}
