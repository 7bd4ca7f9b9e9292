//! The machine's device list (QEMU's qdev tree, flat: one bus of fixed
//! devices and the PCI root): every device the machine built, by id, as a
//! [`Device`] to reset, save and load alike.
//!
//! A machine reset resets every device in list order. A save is one
//! [`SavedDevice`] per id; a load first checks that the saved list names
//! the same ids with the same types, then loads each device, so that a
//! save of another machine shape is refused before any device changes.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vmm_pci::PciRoot;
use vmm_qom::{Device, InvalidState, SavedDevice, StateError, Stateful};

/// A device as the list holds it.
pub type SharedDevice = Arc<Mutex<dyn Device>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a saved device list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The save lacks a device this machine has, or has one it lacks.
    #[error("saved devices do not match this machine: {0}")]
    Shape(String),
    /// One device refused its state.
    #[error("device '{id}': {source}")]
    Device {
        /// The device's id.
        id: String,
        /// Why.
        #[source]
        source: StateError,
    },
}

/// One saved device, with its id.
///
/// Written with the device's fields beside the id (`flatten`); read
/// through [`SavedEntryFields`], the same four fields named, because
/// serde's `flatten` buffers the whole entry and decodes it twice (the
/// largest part of a restore's decoding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SavedEntryFields")]
pub struct SavedEntry {
    /// The device's id in the machine (`com1`, `pit`, a `--device`'s id).
    pub id: String,
    /// Its state.
    #[serde(flatten)]
    pub saved: SavedDevice,
}

/// A [`SavedEntry`] as written: its id and its device's fields.
#[derive(Deserialize)]
struct SavedEntryFields {
    id: String,
    #[serde(rename = "type")]
    type_name: String,
    version: u32,
    state: serde_json::Value,
}

impl From<SavedEntryFields> for SavedEntry {
    fn from(f: SavedEntryFields) -> Self {
        Self {
            id: f.id,
            saved: SavedDevice {
                type_name: f.type_name,
                version: f.version,
                state: f.state,
            },
        }
    }
}

/// The machine's devices, in the order they were built.
#[derive(Default)]
pub struct DeviceModel {
    entries: Vec<(String, SharedDevice)>,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}

impl DeviceModel {
    /// Adds `device` as `id`.
    pub fn add(&mut self, id: impl Into<String>, device: SharedDevice) {
        self.entries.push((id.into(), device));
    }

    /// The devices as (id, type name), in order.
    pub fn list(&self) -> Vec<(String, &'static str)> {
        self.entries
            .iter()
            .map(|(id, d)| (id.clone(), lock(d).type_name()))
            .collect()
    }

    /// Resets every device, in order.
    pub fn reset(&self) {
        for (_, d) in &self.entries {
            lock(d).reset();
        }
    }

    /// Saves every device.
    pub fn save(&self) -> Result<Vec<SavedEntry>, ModelError> {
        self.entries
            .iter()
            .map(|(id, d)| {
                let saved = lock(d).save().map_err(|source| ModelError::Device {
                    id: id.clone(),
                    source,
                })?;
                Ok(SavedEntry {
                    id: id.clone(),
                    saved,
                })
            })
            .collect()
    }

    /// Loads `saved`: the same ids and types in the same order as this
    /// machine's, checked before any device changes; then each device in
    /// turn (a device that refuses its state stops the load there).
    pub fn load(&self, saved: &[SavedEntry]) -> Result<(), ModelError> {
        let ours = self.list();
        if saved.len() != ours.len() {
            return Err(ModelError::Shape(format!(
                "{} saved, {} here",
                saved.len(),
                ours.len()
            )));
        }
        for (s, (id, ty)) in saved.iter().zip(&ours) {
            if s.id != *id || s.saved.type_name != *ty {
                return Err(ModelError::Shape(format!(
                    "saved '{}' ({}) where this machine has '{id}' ({ty})",
                    s.id, s.saved.type_name
                )));
            }
        }
        for (s, (id, d)) in saved.iter().zip(&self.entries) {
            lock(d)
                .load(&s.saved)
                .map_err(|source| ModelError::Device {
                    id: id.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The host bridge's state: its configuration space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBridgeState {
    /// The 4096 bytes of 00:00.0's configuration space.
    pub config: Vec<u8>,
}

/// The PCI root as a device of the list: the host bridge's state, and a
/// reset of the whole bus (each function on it back to power-on, as a
/// PCI bus reset does). The functions that `--device` adds are entries of
/// their own.
#[derive(Debug)]
pub struct PciHost(pub Arc<Mutex<PciRoot>>);

impl Stateful for PciHost {
    const TYPE: &'static str = "pcie-host-bridge";
    type State = HostBridgeState;

    fn state(&self) -> HostBridgeState {
        let mut root = lock(&self.0);
        let config = root
            .function_mut(0)
            .map(|f| f.config().state())
            .unwrap_or_default();
        HostBridgeState { config }
    }

    fn restore(&mut self, state: HostBridgeState) -> Result<(), InvalidState> {
        let mut root = lock(&self.0);
        let bridge = root
            .function_mut(0)
            .ok_or_else(|| InvalidState("no host bridge at 00:00.0".into()))?;
        bridge
            .config_mut()
            .restore(&state.config)
            .map_err(|e| InvalidState(e.to_string()))
    }

    fn reset(&mut self) {
        lock(&self.0).reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_entry_reads_back_with_its_fields_beside_the_id() {
        let entry = SavedEntry {
            id: "serial0".into(),
            saved: SavedDevice {
                type_name: "isa-serial".into(),
                version: 1,
                state: serde_json::json!({"fcr": 0, "lsr": [1, 2]}),
            },
        };
        let text = serde_json::to_string(&entry).unwrap();
        let fields: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({"id": "serial0", "type": "isa-serial", "version": 1,
                               "state": {"fcr": 0, "lsr": [1, 2]}})
        );
        assert_eq!(serde_json::from_str::<SavedEntry>(&text).unwrap(), entry);
        // A missing field is refused, not defaulted.
        assert!(serde_json::from_str::<SavedEntry>(
            r#"{"id":"serial0","type":"isa-serial","state":{}}"#
        )
        .is_err());
    }
}
