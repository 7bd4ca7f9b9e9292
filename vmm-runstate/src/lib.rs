//! QEMU's run-state machine: the states a VM can be in, the table of allowed
//! transitions between them, and listeners told about every state change.
//!
//! The model is QEMU's `RunState` (`runstate_init`, `runstate_set`,
//! `runstate_is_running`, VM change-state handlers), rewritten as plain Rust
//! with no dependencies:
//!
//! * [`RunState`]: the fifteen states of QEMU 1.5, spelled in QMP the way
//!   `query-status` reports them (`running`, `paused`, `prelaunch`, ...).
//!   They parse with [`FromStr`] and print with
//!   [`Display`](core::fmt::Display) / [`RunState::as_str`].
//! * [`TRANSITIONS`]: the allowed `(from, to)` pairs, kept as data. It is the
//!   union of [`SEED_TRANSITIONS`] (QEMU 1.5's 38 pairs, unchanged) and
//!   [`ADDED_TRANSITIONS`] (the few pairs of current QEMU that our machine
//!   needs). [`is_allowed`] looks a pair up in that table.
//! * [`RunStateMachine`]: the current state (initially
//!   [`RunState::Prelaunch`]), a checked [`RunStateMachine::transition`], the
//!   predicates `is_running` / `is_live` / `needs_reset`, and state-change
//!   listeners.
//!
//! Two rules follow current QEMU rather than 1.5:
//!
//! * A self-transition (`X -> X`) is a successful no-op. It is not looked up
//!   in the table and no listener is called.
//! * An invalid transition is refused with [`InvalidTransition`], whose
//!   message names both states by their QMP strings. QEMU aborts the process
//!   here; we leave the choice to the caller ([`RunStateMachine::set`] panics
//!   with the same message, for parity).
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use vmm_runstate::{RunState, RunStateMachine};
//!
//! let mut vm = RunStateMachine::new();
//! assert_eq!(vm.state(), RunState::Prelaunch);
//! assert_eq!(vm.state().to_string(), "prelaunch");
//!
//! // Record every state change a listener sees.
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = Arc::clone(&seen);
//! let id = vm.add_listener(Box::new(move |running, state| {
//!     log.lock().unwrap().push((running, state));
//! }));
//!
//! vm.transition(RunState::Running).unwrap();
//! vm.transition(RunState::Paused).unwrap();
//! assert!(!vm.is_running());
//!
//! // PAUSED -> SHUTDOWN is not in the table: refused, nothing changes.
//! let err = vm.transition(RunState::Shutdown).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "invalid runstate transition: 'paused' -> 'shutdown'"
//! );
//! assert_eq!(vm.state(), RunState::Paused);
//!
//! // Self-transition: success, but listeners are not called.
//! vm.transition(RunState::Paused).unwrap();
//!
//! assert_eq!(
//!     *seen.lock().unwrap(),
//!     [(true, RunState::Running), (false, RunState::Paused)]
//! );
//! assert!(vm.remove_listener(id));
//!
//! // Strings round-trip.
//! let s: RunState = "guest-panicked".parse().unwrap();
//! assert_eq!(s, RunState::GuestPanicked);
//! assert!("bogus".parse::<RunState>().is_err());
//! ```

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

mod error;
mod machine;
mod transitions;

use core::fmt;
use core::str::FromStr;

pub use error::{InvalidTransition, ParseRunStateError};
pub use machine::{Listener, ListenerId, RunStateMachine};
pub use transitions::{is_allowed, ADDED_TRANSITIONS, SEED_TRANSITIONS, TRANSITIONS};

/// The run state of a VM, as QMP's `query-status` reports it.
///
/// These are the fifteen states of QEMU 1.5. Later QEMU added `colo` (and,
/// for a while, `preconfig`); we implement neither. The declaration order
/// follows QEMU's QAPI enum and is the order of [`RunState::ALL`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum RunState {
    /// `debug`: stopped by the gdb stub (breakpoint or single step).
    Debug,
    /// `inmigrate`: waiting for, or receiving, an incoming migration.
    Inmigrate,
    /// `internal-error`: the accelerator or emulation hit an unrecoverable
    /// error. Needs a reset.
    InternalError,
    /// `io-error`: paused because a block device stops the VM on an I/O error.
    IoError,
    /// `paused`: stopped by QMP `stop`.
    Paused,
    /// `postmigrate`: the source side after a successful outgoing migration.
    Postmigrate,
    /// `prelaunch`: created but never started (`-S`), or reset while stopped.
    /// This is the initial state.
    #[default]
    Prelaunch,
    /// `finish-migrate`: paused to complete a migration.
    FinishMigrate,
    /// `restore-vm`: paused while a snapshot is loaded.
    RestoreVm,
    /// `running`: the vCPUs are executing.
    Running,
    /// `save-vm`: paused while a snapshot is saved.
    SaveVm,
    /// `shutdown`: the guest shut down but the process stays (`-no-shutdown`).
    /// Needs a reset.
    Shutdown,
    /// `suspended`: the guest is in ACPI S3.
    Suspended,
    /// `watchdog`: stopped because the watchdog fired with action `pause`.
    Watchdog,
    /// `guest-panicked`: stopped because the guest reported a panic.
    GuestPanicked,
}

impl RunState {
    /// The number of states.
    pub const COUNT: usize = 15;

    /// Every state, in declaration order (`ALL[s.index()] == s`).
    pub const ALL: [RunState; RunState::COUNT] = [
        RunState::Debug,
        RunState::Inmigrate,
        RunState::InternalError,
        RunState::IoError,
        RunState::Paused,
        RunState::Postmigrate,
        RunState::Prelaunch,
        RunState::FinishMigrate,
        RunState::RestoreVm,
        RunState::Running,
        RunState::SaveVm,
        RunState::Shutdown,
        RunState::Suspended,
        RunState::Watchdog,
        RunState::GuestPanicked,
    ];

    /// The QMP string for this state, as `query-status` reports it.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Debug => "debug",
            RunState::Inmigrate => "inmigrate",
            RunState::InternalError => "internal-error",
            RunState::IoError => "io-error",
            RunState::Paused => "paused",
            RunState::Postmigrate => "postmigrate",
            RunState::Prelaunch => "prelaunch",
            RunState::FinishMigrate => "finish-migrate",
            RunState::RestoreVm => "restore-vm",
            RunState::Running => "running",
            RunState::SaveVm => "save-vm",
            RunState::Shutdown => "shutdown",
            RunState::Suspended => "suspended",
            RunState::Watchdog => "watchdog",
            RunState::GuestPanicked => "guest-panicked",
        }
    }

    /// The position of this state in [`RunState::ALL`] (`0..COUNT`).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// True iff this is exactly [`RunState::Running`] (QEMU's
    /// `runstate_is_running`). [`RunState::Suspended`] is *not* running.
    /// This is also the `running` field of `query-status`.
    pub const fn is_running(self) -> bool {
        matches!(self, RunState::Running)
    }

    /// True for [`RunState::Running`] and [`RunState::Suspended`] (QEMU's
    /// `runstate_is_live`): the states in which the VM clock ticks.
    pub const fn is_live(self) -> bool {
        matches!(self, RunState::Running | RunState::Suspended)
    }

    /// True for the states that QMP `cont` refuses until the VM is reset:
    /// [`RunState::InternalError`] and [`RunState::Shutdown`].
    ///
    /// This is current QEMU's `runstate_needs_reset`. QEMU 1.5 also listed
    /// [`RunState::GuestPanicked`]; we do not, because we allow `cont` after a
    /// panic (`guest-panicked -> running`, see [`ADDED_TRANSITIONS`]).
    pub const fn needs_reset(self) -> bool {
        matches!(self, RunState::InternalError | RunState::Shutdown)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = ParseRunStateError;

    /// Parses a QMP run-state string (exact, case-sensitive match).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseRunStateError::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_complete() {
        assert_eq!(RunState::ALL.len(), RunState::COUNT);
        for (i, state) in RunState::ALL.into_iter().enumerate() {
            assert_eq!(state.index(), i, "{state}");
        }
    }

    #[test]
    fn qmp_strings_written_out() {
        // Independent of `as_str`: the strings QMP documents for query-status.
        let expected = [
            (RunState::Debug, "debug"),
            (RunState::Inmigrate, "inmigrate"),
            (RunState::InternalError, "internal-error"),
            (RunState::IoError, "io-error"),
            (RunState::Paused, "paused"),
            (RunState::Postmigrate, "postmigrate"),
            (RunState::Prelaunch, "prelaunch"),
            (RunState::FinishMigrate, "finish-migrate"),
            (RunState::RestoreVm, "restore-vm"),
            (RunState::Running, "running"),
            (RunState::SaveVm, "save-vm"),
            (RunState::Shutdown, "shutdown"),
            (RunState::Suspended, "suspended"),
            (RunState::Watchdog, "watchdog"),
            (RunState::GuestPanicked, "guest-panicked"),
        ];
        assert_eq!(expected.len(), RunState::COUNT);
        for (state, s) in expected {
            assert_eq!(state.as_str(), s);
            assert_eq!(state.to_string(), s);
            assert_eq!(s.parse::<RunState>(), Ok(state));
        }
    }

    #[test]
    fn parse_display_round_trip_for_every_state() {
        for state in RunState::ALL {
            let text = state.to_string();
            assert_eq!(text.parse::<RunState>(), Ok(state));
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
    }

    #[test]
    fn parse_rejects_bad_strings_and_names_them() {
        for bad in [
            "",
            "Running",
            "RUNNING",
            "colo",
            "preconfig",
            "guest_panicked",
            " paused",
        ] {
            let err = bad.parse::<RunState>().unwrap_err();
            assert_eq!(err.input(), bad);
            assert_eq!(err.to_string(), format!("unknown run state '{bad}'"));
        }
    }

    #[test]
    fn default_is_prelaunch() {
        assert_eq!(RunState::default(), RunState::Prelaunch);
    }

    #[test]
    fn predicates() {
        for state in RunState::ALL {
            assert_eq!(state.is_running(), state == RunState::Running, "{state}");
            assert_eq!(
                state.is_live(),
                matches!(state, RunState::Running | RunState::Suspended),
                "{state}"
            );
            assert_eq!(
                state.needs_reset(),
                matches!(state, RunState::InternalError | RunState::Shutdown),
                "{state}"
            );
        }
        // Today's semantics: a panicked guest may be continued without reset.
        assert!(!RunState::GuestPanicked.needs_reset());
    }
}
