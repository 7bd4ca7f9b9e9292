//! QEMU's Machine Protocol (QMP), so that QEMU's own clients (its Python
//! `qemu.qmp` library, libvirt-style scripts, `socat`) can drive our VMM.
//!
//! - [`framer`]: a byte stream split into JSON texts by bracket depth, with a
//!   size limit; requests may arrive back to back or a byte at a time.
//! - [`session`]: one connection's protocol: greeting, capabilities
//!   negotiation, request checking, replies, errors and events, all as
//!   `serde_json` values and with no I/O, so every rule is unit-tested.
//! - [`server`]: the Unix socket as an `event-manager` subscriber, several
//!   clients at once (at most [`MAX_CLIENTS`]), or one permanent client on
//!   a character device; commands go to a [`server::Backend`].
//! - [`outbox`]: each client's output buffer, written without blocking,
//!   bounded by [`OUTPUT_LIMIT`]; events broadcast from any thread.
//! - [`endpoint`]: the socket (removed at exit only if it is still the one
//!   created) or the device.
//!
//! No KVM in here: the commands' meaning is the machine's (vmm-pc), wired
//! in by the binary.

#![deny(missing_docs)]

pub mod endpoint;
pub mod framer;
pub mod outbox;
pub mod server;
pub mod session;

pub use endpoint::SocketPath;
pub use outbox::{Outbox, Responder, OUTPUT_LIMIT};
pub use server::{Backend, QmpServer, ServerError, MAX_CLIENTS};
pub use session::{ErrorClass, QmpError, Version};
