//! Error types: a refused transition and an unknown state string.

use core::fmt;

use crate::RunState;

/// A run-state transition that the table does not allow.
///
/// Returned by [`RunStateMachine::transition`](crate::RunStateMachine::transition);
/// when it is returned the state has not changed and no listener was called.
/// The message follows QEMU's wording, naming both states by their QMP
/// strings: `invalid runstate transition: 'prelaunch' -> 'paused'`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvalidTransition {
    /// The state the machine was (and still is) in.
    pub from: RunState,
    /// The state that was asked for.
    pub to: RunState,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid runstate transition: '{}' -> '{}'",
            self.from, self.to
        )
    }
}

impl std::error::Error for InvalidTransition {}

/// A string that is not the QMP name of any [`RunState`].
///
/// Returned by `str::parse::<RunState>()`. The message names the string:
/// `unknown run state 'bogus'`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParseRunStateError {
    input: String,
}

impl ParseRunStateError {
    pub(crate) fn new(input: &str) -> Self {
        ParseRunStateError {
            input: input.to_owned(),
        }
    }

    /// The string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseRunStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown run state '{}'", self.input)
    }
}

impl std::error::Error for ParseRunStateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_transition_message_names_both_states() {
        let err = InvalidTransition {
            from: RunState::Prelaunch,
            to: RunState::Paused,
        };
        assert_eq!(
            err.to_string(),
            "invalid runstate transition: 'prelaunch' -> 'paused'"
        );
        let err = InvalidTransition {
            from: RunState::GuestPanicked,
            to: RunState::SaveVm,
        };
        assert_eq!(
            err.to_string(),
            "invalid runstate transition: 'guest-panicked' -> 'save-vm'"
        );
    }

    #[test]
    fn errors_are_std_errors_and_send_sync() {
        fn check<E: std::error::Error + Send + Sync + 'static>() {}
        check::<InvalidTransition>();
        check::<ParseRunStateError>();
        let boxed: Box<dyn std::error::Error> = Box::new(ParseRunStateError::new("x"));
        assert!(boxed.source().is_none());
        assert_eq!(boxed.to_string(), "unknown run state 'x'");
    }
}
