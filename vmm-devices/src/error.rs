//! Errors of this crate.
//!
//! Guest accesses never fail (they are absorbed and counted by each device);
//! only restoring a device from a saved state can.

/// Errors from building a device out of a saved state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A saved queue holds more bytes than the device's queue can.
    #[error("saved {what} holds {len} bytes, more than its capacity of {capacity}")]
    QueueOverflow {
        /// Which queue.
        what: &'static str,
        /// Bytes in the saved state.
        len: usize,
        /// What the device holds at most.
        capacity: usize,
    },
    /// A saved field holds a value the device cannot have.
    #[error("saved {what} {value} is out of range")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The restored device had an interrupt pending and could not raise it.
    #[error("cannot raise the restored device's interrupt ({0})")]
    Trigger(String),
}
