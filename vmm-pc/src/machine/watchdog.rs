//! What the machine does when its watchdog expires (QEMU's
//! `watchdog_perform_action`), and how the action is chosen:
//! `--action watchdog=ACTION`, QMP `watchdog-set-action` and `set-action`.
//!
//! Every action first emits `WATCHDOG` with the action's name; then
//! `reset` resets the machine as a guest reset does (so `--reboot exit`
//! ends the VMM, as QEMU's `-no-reboot`), `shutdown` presses the ACPI
//! power button (`POWERDOWN`), `poweroff` ends the VMM with status 0 (as
//! QEMU, with no `SHUTDOWN` event), `pause` stops the VM in `watchdog`
//! (`STOP`; `cont` runs it again), `debug` logs "watchdog: timer fired",
//! `none` does nothing more and `inject-nmi` queues an NMI on every vCPU.

use vmm_runstate::RunState;

use super::{ExitReason, PcError, PcMachine, RebootAction};
use crate::control::MachineEvent;

/// What the watchdog's expiry does; QEMU's default is `reset`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchdogAction {
    /// Reset the machine (a guest reset).
    #[default]
    Reset,
    /// Press the ACPI power button.
    Shutdown,
    /// End the VMM.
    Poweroff,
    /// Stop in `watchdog`.
    Pause,
    /// Log and go on.
    Debug,
    /// Only the event.
    None,
    /// An NMI to every vCPU.
    InjectNmi,
}

impl WatchdogAction {
    /// Every action, by its QAPI name.
    pub const ALL: [(&'static str, WatchdogAction); 7] = [
        ("reset", Self::Reset),
        ("shutdown", Self::Shutdown),
        ("poweroff", Self::Poweroff),
        ("pause", Self::Pause),
        ("debug", Self::Debug),
        ("none", Self::None),
        ("inject-nmi", Self::InjectNmi),
    ];

    /// The action named `name` (QEMU's `WatchdogAction` enum).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// Its QAPI name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("reset", |(n, _)| n)
    }
}

impl PcMachine {
    /// The watchdog expired: the event, then the action.
    pub(super) fn watchdog_expired(&mut self) -> Result<Option<ExitReason>, PcError> {
        let action = self.watchdog_action;
        self.emit(MachineEvent::Watchdog {
            action: action.name(),
        });
        match action {
            WatchdogAction::Reset => match self.reboot {
                RebootAction::Exit => {
                    return Ok(Some(ExitReason::GuestReset("watchdog".to_owned())))
                }
                RebootAction::Reset => {
                    log::warn!("watchdog: timer fired; resetting the machine");
                    self.reset(true)?;
                }
            },
            WatchdogAction::Shutdown => {
                self.devices.press_power_button();
                self.emit(MachineEvent::Powerdown);
            }
            WatchdogAction::Poweroff => return Ok(Some(ExitReason::Watchdog)),
            WatchdogAction::Pause => {
                if self.runstate.is_running() {
                    log::warn!("watchdog: timer fired; stopped in watchdog (cont resumes)");
                    self.stop_with(RunState::Watchdog)?;
                }
            }
            WatchdogAction::Debug => log::warn!("watchdog: timer fired"),
            WatchdogAction::None => {}
            WatchdogAction::InjectNmi => self.vcpus.nmi_all()?,
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_have_qemus_names() {
        for (name, action) in WatchdogAction::ALL {
            assert_eq!(WatchdogAction::from_name(name), Some(action));
            assert_eq!(action.name(), name);
        }
        assert_eq!(WatchdogAction::from_name("bogus"), None);
        assert_eq!(WatchdogAction::default(), WatchdogAction::Reset);
    }
}
