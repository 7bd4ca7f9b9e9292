//! The `runstate` section: the run state a snapshot file or migration
//! stream must resume in, when that is not the default one.
//!
//! Only a guest asleep in ACPI S3 needs it: a file or stream of a machine
//! that was `suspended` (or stopped while its guest slept) carries
//! `runstate` = `{"state":"suspended"}`, so that the loaded machine is
//! `suspended` too and `system_wakeup` wakes it at its waking vector,
//! rather than running vCPUs that were parked in S3. Any other machine's
//! file or stream has no `runstate` section and is byte for byte what it
//! was before the section existed.
//!
//! Compatibility (the format's rule, [`super::format`]): the layout
//! version is unchanged, a reader takes its own version only and refuses
//! a section it does not know. So a build without this section refuses a
//! suspended machine's file or stream (it would otherwise run a sleeping
//! guest), and every file and stream written before it is still read, as
//! the machine it was: not suspended.
//!
//! The section is untrusted input: it must be one JSON object with the one
//! field `state`, whose value is a run state this reader can resume in
//! (`suspended`); anything else is refused with an error naming it.

use serde::{Deserialize, Serialize};
use vmm_runstate::RunState;

/// The section's name.
pub const SECTION: &str = "runstate";
/// The longest `runstate` section taken.
pub const MAX_BYTES: usize = 256;

/// The run state a loaded machine resumes in, as the section says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedRunState {
    /// The guest is in ACPI S3: the machine resumes `suspended`.
    Suspended,
}

/// Why a `runstate` section was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunStateError {
    /// Longer than [`MAX_BYTES`].
    #[error("the '{SECTION}' section is {0} bytes, more than the {MAX_BYTES} allowed")]
    TooLarge(usize),
    /// Not the JSON object expected.
    #[error("the '{SECTION}' section is malformed: {0}")]
    Malformed(String),
    /// A run state this build cannot resume in.
    #[error("the '{SECTION}' section names run state '{0}', which a load cannot resume in")]
    Unsupported(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    state: String,
}

impl SavedRunState {
    /// Its name, as QMP's `query-status` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            SavedRunState::Suspended => RunState::Suspended.as_str(),
        }
    }

    /// The section's data.
    pub fn encode(self) -> Vec<u8> {
        let wire = Wire {
            state: self.as_str().to_owned(),
        };
        // A struct of one string always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes and checks the section's data.
    pub fn decode(data: &[u8]) -> Result<Self, RunStateError> {
        if data.len() > MAX_BYTES {
            return Err(RunStateError::TooLarge(data.len()));
        }
        let wire: Wire =
            serde_json::from_slice(data).map_err(|e| RunStateError::Malformed(e.to_string()))?;
        // QMP's run-state names, as `query-status` gives them.
        match wire.state.parse::<RunState>() {
            Ok(RunState::Suspended) => Ok(SavedRunState::Suspended),
            _ => Err(RunStateError::Unsupported(
                wire.state.chars().take(32).collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspended_round_trips() {
        let data = SavedRunState::Suspended.encode();
        assert_eq!(data, br#"{"state":"suspended"}"#);
        assert_eq!(
            SavedRunState::decode(&data).unwrap(),
            SavedRunState::Suspended
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for state in ["running", "paused", "Suspended", "", "inmigrate"] {
            let data = format!(r#"{{"state":"{state}"}}"#);
            assert_eq!(
                SavedRunState::decode(data.as_bytes()),
                Err(RunStateError::Unsupported(state.to_owned())),
                "{state}"
            );
        }
        for bad in [
            &b""[..],
            b"null",
            b"\"suspended\"",
            b"{}",
            br#"{"state":1}"#,
            br#"{"state":"suspended","extra":0}"#,
            br#"{"state":"suspended""#,
            b"\xff\xfe",
        ] {
            assert!(
                matches!(SavedRunState::decode(bad), Err(RunStateError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = format!(r#"{{"state":"{}"}}"#, "x".repeat(MAX_BYTES));
        assert_eq!(
            SavedRunState::decode(long.as_bytes()),
            Err(RunStateError::TooLarge(long.len()))
        );
        // A long name is cut in the error.
        let e = SavedRunState::decode(format!(r#"{{"state":"{}"}}"#, "y".repeat(100)).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 120, "{e}");
    }
}
