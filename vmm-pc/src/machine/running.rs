//! Running the built machine: start the vCPUs, the main loop and what
//! ends it (QEMU's `main_loop` and `main_loop_should_exit`), stops into a
//! run state, and machine resets.

use std::sync::atomic::Ordering;

use vmm_core::vcpu::VcpuRequest;
use vmm_runstate::RunState;

use super::{lock, BoxError, ExitReason, Incoming, PcError, PcMachine, RebootAction};
use crate::control::{MachineEvent, QuitSource};

impl PcMachine {
    /// Starts the vCPUs and runs until the machine stops.
    pub fn run(self) -> Result<ExitReason, PcError> {
        self.run_with(|| Ok(()))
    }

    /// [`PcMachine::run`], with `lockdown` run on this thread once, before
    /// it first acts on anything from outside: right after the vCPUs start
    /// (the boot vCPU runs meanwhile), or, if the machine does not start at
    /// once (paused, incoming), before the incoming state is read. The
    /// binary installs the main thread's seccomp filter there: off the
    /// boot vCPU's way to its first instruction, yet before the main loop
    /// reads a byte a guest, a client or a migration stream sent. An error
    /// stops the machine with [`PcError::StartHook`].
    pub fn run_with(
        mut self,
        lockdown: impl FnOnce() -> Result<(), BoxError>,
    ) -> Result<ExitReason, PcError> {
        self.run_and_stop(lockdown)
    }

    /// [`PcMachine::run_with`] for a process that ends as soon as this
    /// returns (the binary's): the main loop's subscribers (the QMP server,
    /// the console, the serial output's drain) and the rest of the machine's
    /// own state are dropped as usual, so that what they still owe goes out
    /// (QMP's last events, its socket's removal); the guest's side (the
    /// stopped vCPU threads, the device workers, the VM, its RAM) is left
    /// to the process's exit, where the kernel frees all of it at once.
    /// Taking that side down piece by piece (each thread told and joined,
    /// each descriptor closed) cost 0.16-0.3 ms from a guest's reset to the
    /// process's end on a 1-vCPU machine, a fifth to a third of that whole
    /// exit (README, "Where the time goes"). Not for a process that goes
    /// on: what is left is never freed.
    pub fn run_then_exit(
        mut self,
        lockdown: impl FnOnce() -> Result<(), BoxError>,
    ) -> Result<ExitReason, PcError> {
        let result = self.run_and_stop(lockdown);
        // The fields not named here (the main loop with its subscribers
        // among them) drop at the end of this function, as `run_with`'s do.
        let Self {
            vm,
            vcpus,
            devices,
            disks,
            nets,
            rngs,
            vsocks,
            ..
        } = self;
        std::mem::forget((vcpus, devices, disks, nets, rngs, vsocks, vm));
        result
    }

    /// Runs until the machine stops, then stops the guest (its vCPUs out of
    /// `KVM_RUN`, its clocks), says so (`SHUTDOWN`, the run state) and runs
    /// the exit notifiers.
    fn run_and_stop(
        &mut self,
        lockdown: impl FnOnce() -> Result<(), BoxError>,
    ) -> Result<ExitReason, PcError> {
        let result = self.run_loop(lockdown);
        let reason = match &result {
            Ok(r) => r.clone(),
            Err(e) => ExitReason::InternalError {
                vcpu: None,
                reason: e.to_string(),
            },
        };
        // Stop the guest before anything is torn down.
        if let Err(e) = self.vcpus.pause_all() {
            log::warn!("while stopping: {e}");
        }
        self.clocks.vm_stop();
        if let Some(cause) = reason.shutdown_cause() {
            self.emit(MachineEvent::Shutdown(cause));
        }
        let end = if reason.is_success() {
            RunState::Shutdown
        } else {
            RunState::InternalError
        };
        if let Err(e) = self.runstate.transition(end) {
            log::debug!("{e}");
        }
        self.exit_notifiers.notify(&reason);
        result
    }

    pub(super) fn run_loop(
        &mut self,
        lockdown: impl FnOnce() -> Result<(), BoxError>,
    ) -> Result<ExitReason, PcError> {
        let starts_now = self.incoming.is_none() && !self.start_paused;
        if starts_now {
            self.start()?;
        }
        // The last thread, made while the boot vCPU runs: the lock-down
        // (the main thread's filter) must come after every thread.
        self.live.start_worker()?;
        lockdown().map_err(PcError::StartHook)?;
        match self.incoming.take() {
            Some(Incoming::File(path)) => {
                self.incoming(&path)?;
                log::debug!("start-up: incoming state loaded");
                self.after_incoming()?;
                log::debug!("start-up: running");
            }
            Some(Incoming::Stream(uri)) => {
                self.incoming_stream(uri).map_err(PcError::Migration)?;
            }
            Some(Incoming::Defer) => {
                self.runstate
                    .transition(RunState::Inmigrate)
                    .map_err(|e| PcError::Control(e.to_string()))?;
                self.deferred_incoming = true;
            }
            // Started above; as QEMU's -S, `start_paused` stays in
            // prelaunch until `cont`.
            None => {}
        }
        loop {
            self.event_loop.run_once(-1)?;
            self.run_commands()?;
            self.migration_messages()?;
            if let Some(reason) = self.next_exit()? {
                return Ok(reason);
            }
        }
    }

    /// prelaunch/paused -> running: the clock, then the vCPUs. A machine
    /// whose guest is asleep in S3 (see `asleep`) goes to `suspended`
    /// instead: the clocks run, the vCPUs stay parked until a wake-up
    /// (callers emit `RESUME` either way, as QEMU's `vm_start` does).
    pub(super) fn start(&mut self) -> Result<(), PcError> {
        self.virtio_before_start();
        let to = if self.asleep {
            RunState::Suspended
        } else {
            RunState::Running
        };
        self.runstate
            .transition(to)
            .map_err(|e| PcError::Control(e.to_string()))?;
        self.asleep = false;
        // The guest's kvmclock stood still since it was stopped (or
        // saved, or loaded): put back, and the guest told so as each vCPU
        // resumes (a guest woken later from S3 boots its clock anew).
        let clock_stopped = match self.paused_clock.take() {
            Some(ns) => {
                self.vm.set_clock_ns(ns)?;
                true
            }
            None => false,
        };
        self.clocks.vm_start();
        if to == RunState::Running {
            if clock_stopped {
                self.vcpus.resume_all_after_stop()?;
            } else {
                self.vcpus.resume_all()?;
            }
        }
        // Requests a disk holds for a host error (`werror=stop`) go again
        // whenever the guest runs again, as QEMU's vm_start retries them:
        // after `cont` from io-error, but also when the error came while the
        // machine was stopped already (then no io-error stop happened, and
        // the disk would wait for good).
        for d in self.disks.iter().filter(|d| d.handle.is_held()) {
            d.handle.retry();
        }
        Ok(())
    }

    /// Reads what the subscribers and vCPUs asked for, in a fixed order
    /// (as QEMU's `main_loop_should_exit`): errors, shutdown, reset, quit.
    pub(super) fn next_exit(&mut self) -> Result<Option<ExitReason>, PcError> {
        let mut vcpu_reset = None;
        let mut vcpu_poweroff = false;
        while let Some(request) = self.vcpus.try_request() {
            let (vcpu, reason) = match request {
                VcpuRequest::InternalError { vcpu, reason } => (vcpu, reason),
                VcpuRequest::Halted { vcpu } => (
                    vcpu,
                    "halted with interrupts that can never come".to_owned(),
                ),
                VcpuRequest::Reset { reason, .. } => {
                    vcpu_reset = Some(reason);
                    continue;
                }
                VcpuRequest::Shutdown { .. } => {
                    vcpu_poweroff = true;
                    continue;
                }
                VcpuRequest::Debug {
                    vcpu,
                    exception,
                    dr6,
                    emulated_int3,
                    ..
                } => match self.debug_stop(vcpu, exception, dr6, emulated_int3)? {
                    None => continue,
                    Some(reason) => (vcpu, reason),
                },
            };
            if !self.stop_on_error {
                return Ok(Some(ExitReason::InternalError {
                    vcpu: Some(vcpu),
                    reason,
                }));
            }
            // As QEMU's vm_stop: a machine already stopped (a `stop` or a
            // debug stop in the same turn, a migration's last copy) stays
            // in its state; the vCPU meets the error again when it runs.
            if self.runstate.is_live() {
                log::error!("vCPU {vcpu}: {reason}; stopped in internal-error");
                self.stop_with(RunState::InternalError)?;
            } else if self.runstate.state() != RunState::InternalError {
                log::error!("vCPU {vcpu}: {reason} (the machine was stopped already)");
            }
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        if let Some(offset) = pending.rtc_change {
            self.emit(MachineEvent::RtcChange { offset });
        }
        let mut stop_for_io = false;
        for e in pending.io_errors {
            stop_for_io |= e.action == "stop";
            self.emit(MachineEvent::BlockIoError(e));
        }
        if stop_for_io && self.runstate.is_running() {
            log::warn!("a disk's host I/O failed; stopped in io-error (cont retries)");
            self.stop_with(RunState::IoError)?;
        }
        if let Some(signo) = pending.signal {
            return Ok(Some(ExitReason::Signal(signo)));
        }
        if pending.poweroff || vcpu_poweroff {
            return Ok(Some(ExitReason::GuestPoweroff));
        }
        if pending.panic && self.runstate.state() != RunState::GuestPanicked {
            if !self.stop_on_error {
                self.emit(MachineEvent::GuestPanicked { paused: false });
                return Ok(Some(ExitReason::GuestPanicked));
            }
            self.emit(MachineEvent::GuestPanicked { paused: true });
            // Stopped already (in the same turn): stays so, as QEMU's.
            if self.runstate.is_live() {
                log::error!("the guest panicked; stopped in guest-panicked");
                self.stop_with(RunState::GuestPanicked)?;
            } else {
                log::error!("the guest panicked (the machine was stopped already)");
            }
        }
        // A reset (the guest's, or a watchdog's) that arrives while the
        // last copy of a live migration is taken waits for the migration's
        // end: the state sent must stay the state captured, and the
        // machine cannot reset in `finish-migrate`. On a failure the
        // machine goes back and resets; on success the destination runs.
        let migrating = self.runstate.state() == RunState::FinishMigrate;
        if migrating && (pending.watchdog || pending.reset || vcpu_reset.is_some()) {
            let mut p = lock(&self.pending);
            p.watchdog |= pending.watchdog;
            p.reset |= pending.reset || vcpu_reset.is_some();
        }
        if pending.watchdog && !migrating {
            if let Some(exit) = self.watchdog_expired()? {
                return Ok(Some(exit));
            }
        }
        let guest_reset = if migrating {
            None
        } else if pending.reset {
            Some("i8042 reset line".to_owned())
        } else {
            vcpu_reset
        };
        self.suspend_or_wake(pending.suspend, pending.rtc_alarm)?;
        if let Some(why) = guest_reset {
            match self.reboot {
                RebootAction::Exit => return Ok(Some(ExitReason::GuestReset(why))),
                RebootAction::Reset => {
                    log::info!("guest reset ({why}): resetting in place");
                    self.reset(true)?;
                }
            }
        }
        if let Some(source) = self.quit.take() {
            return Ok(Some(ExitReason::Quit(source)));
        }
        if self.control.quit.swap(false, Ordering::SeqCst) {
            return Ok(Some(ExitReason::Quit(QuitSource::Console)));
        }
        Ok(None)
    }

    /// Stops the guest in `state` (paused or internal-error): vCPUs parked,
    /// kvmclock saved, the Virtual clock frozen; a `STOP` event if it ran.
    /// A suspended machine stops the same way (its clocks; `STOP`, as
    /// QEMU's since 9.0) and remembers its guest sleeps (`asleep`).
    pub(super) fn stop_with(&mut self, state: RunState) -> Result<(), PcError> {
        let was_running = self.runstate.is_running();
        let was_suspended = self.runstate.state() == RunState::Suspended;
        self.vcpus.pause_all()?;
        if was_running || was_suspended {
            // The guest's kvmclock stops with it, as the Virtual clock does.
            self.paused_clock = Some(self.vm.clock_ns()?);
        }
        self.clocks.vm_stop();
        self.runstate
            .transition(state)
            .map_err(|e| PcError::Control(e.to_string()))?;
        if was_suspended {
            self.asleep = true;
        }
        if was_running || was_suspended {
            self.emit(MachineEvent::Stop);
        }
        Ok(())
    }

    /// An in-place reset (QEMU's `qemu_system_reset`): the irqchip, KVM's
    /// PIT and our devices back to their reset state, the kernel, initrd
    /// and tables loaded again, every vCPU back to its boot state. A
    /// running guest boots again at once; otherwise the machine waits in
    /// `prelaunch` for `cont`.
    pub(super) fn reset(&mut self, guest: bool) -> Result<(), PcError> {
        // A suspended guest is live: it boots again at once.
        if self.runstate.state() == RunState::Suspended {
            self.runstate
                .transition(RunState::Running)
                .map_err(|e| PcError::Control(e.to_string()))?;
        }
        self.suspend_requested = false;
        // A reset boots the guest again: it is no longer asleep.
        self.asleep = false;
        let was_running = self.runstate.is_running();
        self.vcpus.pause_all()?;
        // What the vCPUs asked before parking belongs to the old boot, and
        // so does a reset line that fired meanwhile: a reset (the i8042's,
        // which stops the vCPU that wrote it, or a triple fault) and what
        // the other vCPUs ran into before the pause reach the main loop
        // apart; all are this one reset.
        while self.vcpus.try_request().is_some() {}
        let _ = self.devices.reset_evt.read();
        lock(&self.pending).reset = false;
        // (Empty with the split irqchip: the device model resets ours.)
        self.vm.set_irqchip_state(&self.fresh_irqchip)?;
        if let Some(pit) = &self.fresh_kvm_pit {
            self.vm.set_pit_state(pit)?;
        }
        self.devices.reset();
        self.entry.set(self.images.reload(self.vm.memory())?);
        self.live.vmm_wrote_ram();
        self.vcpus.reinit_all()?;
        self.emit(MachineEvent::Reset { guest });
        if was_running {
            self.vcpus.resume_all()?;
        } else if self.runstate.state() != RunState::Prelaunch {
            self.runstate
                .transition(RunState::Prelaunch)
                .map_err(|e| PcError::Control(e.to_string()))?;
        }
        Ok(())
    }
}
