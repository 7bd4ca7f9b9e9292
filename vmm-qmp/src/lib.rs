//! QEMU's Machine Protocol (QMP), so that QEMU's own clients (its Python
//! `qemu.qmp` library, libvirt-style scripts, `socat`) can drive our VMM.
//!
//! - [`framer`]: a byte stream split into JSON texts by bracket depth, with a
//!   size limit; requests may arrive back to back or a byte at a time.
//! - [`session`]: one connection's protocol: greeting, capabilities
//!   negotiation, request checking, replies, errors and events, all as
//!   `serde_json` values and with no I/O, so every rule is unit-tested.
//! - [`server`]: the Unix socket as an `event-manager` subscriber, one
//!   client at a time; commands go to a [`server::Backend`].
//!
//! No KVM in here: the commands' meaning is the machine's (vmm-pc), wired
//! in by the binary.

#![deny(missing_docs)]

pub mod framer;
pub mod server;
pub mod session;

pub use server::{Backend, Outbox, QmpServer, Responder, ServerError};
pub use session::{ErrorClass, QmpError, Version};
