//! What the machine asks of every device it holds, whatever its type
//! (QEMU's `DeviceClass`: a reset handler and a vmstate description).
//!
//! A device keeps its guest-visible state in one plain struct (no file
//! descriptors, threads or timers in it) and implements [`Stateful`]:
//! `state()` copies that struct out, `restore()` checks one and puts it
//! back, re-deriving whatever host-side things follow from it (an
//! interrupt line's level, an armed timer). [`Device`] comes with it: the
//! object-safe face the machine keeps in its list, which saves a device
//! as a [`SavedDevice`] (its type name, its state's version, the state as
//! a self-describing value with its field names) and loads one back,
//! refusing state of another type or version and state that does not
//! decode or does not fit.
//!
//! A device whose state cannot be captured this way cannot be saved or
//! migrated; the machine holds no device that does not implement
//! [`Device`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One device's saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// The device type (`isa-serial`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// The version of the type's state layout.
    pub version: u32,
    /// The state, field by field.
    pub state: serde_json::Value,
}

/// A state a device refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidState(pub String);

/// Why a device's state could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state did not encode (a device bug).
    #[error("cannot encode the state of a {ty}: {source}")]
    Encode {
        /// The device type.
        ty: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// State saved from another type of device.
    #[error("state of a {found} given to a {ty}")]
    WrongType {
        /// The device type.
        ty: &'static str,
        /// The type the state names.
        found: String,
    },
    /// State of another layout version.
    #[error("{ty} state version {found} is not the supported {expected}")]
    Version {
        /// The device type.
        ty: &'static str,
        /// The version the state names.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// The state's fields do not decode into the type's state.
    #[error("malformed {ty} state: {source}")]
    Decode {
        /// The device type.
        ty: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The state decodes but the device cannot take it (a queue longer
    /// than the device's, a value out of range).
    #[error("{ty} state refused: {source}")]
    Invalid {
        /// The device type.
        ty: &'static str,
        /// What the device said.
        #[source]
        source: InvalidState,
    },
}

/// A device with its guest-visible state in one plain struct.
pub trait Stateful {
    /// The device type's name, as the registry knows it.
    const TYPE: &'static str;
    /// The layout version of [`Stateful::State`]; bump it when the struct
    /// changes in a way old saves cannot decode into.
    const VERSION: u32 = 1;
    /// The state: plain data, serializable, nothing host-side in it.
    type State: Serialize + DeserializeOwned;

    /// A copy of the state.
    fn state(&self) -> Self::State;

    /// Puts `state` back, after checking it; on an error the device is
    /// unchanged.
    fn restore(&mut self, state: Self::State) -> Result<(), InvalidState>;

    /// Back to the power-on state (a machine reset); host-side things
    /// (lines, outputs, timers' owners) stay.
    fn reset(&mut self);
}

/// A device as the machine holds it: object-safe, one per entry in the
/// machine's device list. Every [`Stateful`] type that is `Send` is one.
pub trait Device: Send {
    /// The device type's name.
    fn type_name(&self) -> &'static str;
    /// Back to the power-on state.
    fn reset(&mut self);
    /// The state, saved.
    fn save(&self) -> Result<SavedDevice, StateError>;
    /// Loads `saved`; on an error the device is unchanged.
    fn load(&mut self, saved: &SavedDevice) -> Result<(), StateError>;
}

impl<T: Stateful + Send> Device for T {
    fn type_name(&self) -> &'static str {
        T::TYPE
    }

    fn reset(&mut self) {
        Stateful::reset(self);
    }

    fn save(&self) -> Result<SavedDevice, StateError> {
        let state =
            serde_json::to_value(Stateful::state(self)).map_err(|source| StateError::Encode {
                ty: T::TYPE,
                source,
            })?;
        Ok(SavedDevice {
            type_name: T::TYPE.to_owned(),
            version: T::VERSION,
            state,
        })
    }

    fn load(&mut self, saved: &SavedDevice) -> Result<(), StateError> {
        if saved.type_name != T::TYPE {
            return Err(StateError::WrongType {
                ty: T::TYPE,
                found: saved.type_name.clone(),
            });
        }
        if saved.version != T::VERSION {
            return Err(StateError::Version {
                ty: T::TYPE,
                found: saved.version,
                expected: T::VERSION,
            });
        }
        let state = T::State::deserialize(&saved.state).map_err(|source| StateError::Decode {
            ty: T::TYPE,
            source,
        })?;
        Stateful::restore(self, state).map_err(|source| StateError::Invalid {
            ty: T::TYPE,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register file of four bytes, the last one read-only 0x5a.
    #[derive(Debug, Default)]
    struct Regs {
        regs: [u8; 4],
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct RegsState {
        regs: [u8; 4],
    }

    impl Stateful for Regs {
        const TYPE: &'static str = "regs";
        const VERSION: u32 = 2;
        type State = RegsState;

        fn state(&self) -> RegsState {
            RegsState { regs: self.regs }
        }

        fn restore(&mut self, state: RegsState) -> Result<(), InvalidState> {
            if state.regs[3] != 0x5a {
                return Err(InvalidState(format!(
                    "register 3 is read-only 0x5a, not {:#x}",
                    state.regs[3]
                )));
            }
            self.regs = state.regs;
            Ok(())
        }

        fn reset(&mut self) {
            self.regs = [0, 0, 0, 0x5a];
        }
    }

    fn device() -> Box<dyn Device> {
        let mut d = Regs::default();
        Stateful::reset(&mut d);
        Box::new(d)
    }

    #[test]
    fn a_saved_device_loads_into_a_fresh_one() {
        let mut a = Regs::default();
        Stateful::reset(&mut a);
        a.regs[0] = 7;
        let saved = Device::save(&a).unwrap();
        assert_eq!(saved.type_name, "regs");
        assert_eq!(saved.version, 2);
        // Through a text encoding, as a snapshot file would carry it.
        let text = serde_json::to_string(&saved).unwrap();
        let back: SavedDevice = serde_json::from_str(&text).unwrap();
        let mut b = device();
        b.load(&back).unwrap();
        assert_eq!(b.save().unwrap(), saved);
        b.reset();
        assert_eq!(b.save().unwrap().state["regs"][0], 0);
    }

    #[test]
    fn foreign_old_malformed_and_invalid_states_are_refused_and_change_nothing() {
        let mut d = device();
        let good = d.save().unwrap();
        let mut other = good.clone();
        other.type_name = "isa-serial".into();
        assert!(matches!(d.load(&other), Err(StateError::WrongType { .. })));
        let mut old = good.clone();
        old.version = 1;
        assert!(matches!(d.load(&old), Err(StateError::Version { .. })));
        let mut junk = good.clone();
        junk.state = serde_json::json!({"regs": [1, 2, 3]});
        assert!(matches!(d.load(&junk), Err(StateError::Decode { .. })));
        junk.state = serde_json::json!({"regs": [1, 2, 3, 999]});
        assert!(matches!(d.load(&junk), Err(StateError::Decode { .. })));
        junk.state = serde_json::json!("regs");
        assert!(matches!(d.load(&junk), Err(StateError::Decode { .. })));
        let mut bad = good.clone();
        bad.state = serde_json::json!({"regs": [1, 2, 3, 4]});
        let e = d.load(&bad).unwrap_err();
        assert!(matches!(e, StateError::Invalid { .. }));
        assert!(e.to_string().contains("read-only"), "{e}");
        assert_eq!(d.save().unwrap(), good);
    }
}
