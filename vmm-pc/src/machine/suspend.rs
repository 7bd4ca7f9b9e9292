//! ACPI S3, suspend to RAM, and the run state `suspended` (QEMU's
//! `qemu_system_suspend` and `qemu_system_wakeup`, built from their
//! behaviour).
//!
//! **Suspend.** The guest writes SLP_TYP = S3 with SLP_EN into PM1a
//! control; the line reaches the main loop, which parks every vCPU (RAM,
//! devices and the irqchip stay as they are), goes `running -> suspended`
//! and emits `SUSPEND`. The clocks keep running, as in QEMU (the machine is
//! not stopped, only its CPUs are off): the RTC's alarm can fire.
//!
//! **Wake-up sources.** QMP `system_wakeup` (WAK_STS only), the power
//! button (`system_powerdown` while suspended: WAK_STS and PWRBTN_STS), and
//! the RTC alarm when the guest set PM1_EN.RTC_EN (WAK_STS and RTC_STS), as
//! QEMU gates its RTC wake-up on that enable bit.
//!
//! **Wake-up.** `suspended -> running`, `WAKEUP`; then, with no firmware
//! to run, the machine does what a PC's firmware would for an S3 resume:
//! every vCPU back to its INIT state on its own thread (a fresh local APIC,
//! no pending events, the paravirtual MSRs off, the application processors
//! waiting for INIT/SIPI, as at a machine reset), and the boot CPU in real
//! mode at the FACS's waking vector (`CS` = vector >> 4, `IP` = vector &
//! 0xF). Nothing else is reset: devices, the irqchip (the guest
//! reprograms the IO-APIC and PICs on resume) and RAM are kept. A waking
//! vector the machine cannot start (see [`crate::acpi::facs`]) makes it a
//! full system reset instead (`RESET`, the guest boots again).

use vmm_devices::WakeCause;
use vmm_runstate::RunState;

use super::{CommandFailure, PcError, PcMachine};
use crate::acpi::facs::{self, WakeTarget};
use crate::control::MachineEvent;
use crate::cpu::BootEntry;

/// QEMU's answer to `system_wakeup` outside `suspended`.
pub(crate) const NOT_SUSPENDED: &str = "Unable to wake up: guest is not in suspended state";

impl PcMachine {
    /// After each main-loop turn: a suspend the guest asked for, or an RTC
    /// alarm that wakes a suspended guest.
    pub(super) fn suspend_or_wake(
        &mut self,
        suspend: bool,
        rtc_alarm: bool,
    ) -> Result<(), PcError> {
        if suspend || self.suspend_requested {
            match self.runstate.state() {
                RunState::Running => {
                    self.suspend_requested = false;
                    self.suspend()?;
                }
                // Already suspended: a repeated write while parking.
                RunState::Suspended => self.suspend_requested = false,
                // Stopped first (`stop` in the same turn): once it runs.
                _ => self.suspend_requested = true,
            }
        }
        if rtc_alarm
            && self.runstate.state() == RunState::Suspended
            && self.devices.rtc_wake_enabled()
        {
            log::info!("the RTC alarm wakes the guest from S3");
            self.wake(WakeCause::Rtc)?;
        }
        Ok(())
    }

    /// `running -> suspended`: every vCPU parked, `SUSPEND`.
    fn suspend(&mut self) -> Result<(), PcError> {
        self.vcpus.pause_all()?;
        self.runstate
            .transition(RunState::Suspended)
            .map_err(|e| PcError::Control(e.to_string()))?;
        log::info!("guest suspended to RAM (S3)");
        self.emit(MachineEvent::Suspend);
        Ok(())
    }

    /// QMP `system_wakeup`: refused unless suspended.
    pub(super) fn system_wakeup(&mut self) -> Result<(), CommandFailure> {
        if self.runstate.state() != RunState::Suspended {
            return Err(CommandFailure::Refused(NOT_SUSPENDED.into()));
        }
        self.wake(WakeCause::Host).map_err(CommandFailure::Machine)
    }

    /// `suspended -> running` because of `cause` (see the module docs).
    pub(super) fn wake(&mut self, cause: WakeCause) -> Result<(), PcError> {
        self.devices.acpi_wake(cause);
        self.runstate
            .transition(RunState::Running)
            .map_err(|e| PcError::Control(e.to_string()))?;
        self.emit(MachineEvent::Wakeup);
        match facs::wake_target(self.vm.memory()) {
            WakeTarget::RealMode { segment, offset } => {
                log::info!("waking from S3 at {segment:04x}:{offset:04x}");
                // The boot CPU's entry for this re-initialization only; a
                // later reset reloads the kernel's.
                let boot = self.entry.get();
                self.entry.set(BootEntry::RealMode { segment, offset });
                let done = self.vcpus.reinit_all();
                if let Some(boot) = boot {
                    self.entry.set(boot);
                }
                done?;
                self.vcpus.resume_all()?;
            }
            WakeTarget::Reset(why) => {
                log::warn!("waking from S3: {why}; resetting the machine instead");
                self.reset(true)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_qemus_text() {
        assert_eq!(
            NOT_SUSPENDED,
            "Unable to wake up: guest is not in suspended state"
        );
    }
}
