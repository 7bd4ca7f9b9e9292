//! QEMU's device model in small: what `-device NAME,prop=value` needs.
//!
//! - [`opts`]: QEMU's option syntax (`key=value` pairs separated by commas,
//!   `,,` for a comma inside a value, an implied first key such as the
//!   driver name of `-device`, a bare `key` meaning `key=on`);
//! - [`types`]: a device type (name, bus, category, description, typed
//!   properties with defaults and help) and the [`Registry`] the machine
//!   fills at start-up (QEMU's `MODULE_INIT_QOM`), which checks a request
//!   against its type and prints `-device help` and `-device NAME,help` the
//!   way QEMU does;
//! - [`device`]: what every device implements ([`Stateful`]: a plain,
//!   serializable state with `state()`, `restore()` and `reset()`), and the
//!   object-safe [`Device`] the machine keeps in its device list to reset,
//!   save and load each one.
//!
//! No KVM, no devices: the machine (vmm-pc) registers the types it can build
//! and builds them from checked [`types::DeviceRequest`]s.

#![deny(missing_docs)]

pub mod device;
pub mod opts;
pub mod types;

pub use device::{Device, InvalidState, SavedDevice, StateError, Stateful};
pub use opts::{parse as parse_opts, Opts};
pub use types::{Bus, Category, DeviceRequest, DeviceType, PropKind, PropSpec, Registry, Value};

/// A request the registry or the option parser refuses, in QEMU's words
/// where QEMU has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QomError {
    /// Not a `key=value` list.
    #[error("Invalid parameter '{0}'")]
    Syntax(String),
    /// The same key twice.
    #[error("Parameter '{0}' given twice")]
    Repeated(String),
    /// No device type of that name.
    #[error("'{0}' is not a valid device model name")]
    UnknownType(String),
    /// The type has no such property.
    #[error("Property '{ty}.{prop}' not found")]
    UnknownProperty {
        /// The type.
        ty: String,
        /// The property.
        prop: String,
    },
    /// A value that does not fit the property.
    #[error("Parameter '{prop}' expects {expected}")]
    BadValue {
        /// The property.
        prop: String,
        /// What it takes.
        expected: String,
    },
    /// A property the type cannot do without.
    #[error("Property '{ty}.{prop}' is required")]
    Missing {
        /// The type.
        ty: String,
        /// The property.
        prop: String,
    },
    /// No driver named.
    #[error("Parameter 'driver' is missing")]
    NoDriver,
    /// A type registered twice (a machine bug).
    #[error("device type '{0}' is registered twice")]
    Duplicate(String),
}
