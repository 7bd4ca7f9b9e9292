//! virtio-vsock (device type 19, the "Socket Device") on Unix sockets,
//! with the host side spoken as Firecracker's and Cloud Hypervisor's
//! hybrid vsock: one listening Unix socket for host-initiated
//! connections, one Unix socket path per host port for guest-initiated
//! ones.
//!
//! Three queues: 0 receives (packets to the guest), 1 transmits (packets
//! from the guest), 2 carries events (the transport-reset event, sent when
//! the device starts again after a snapshot stopped its worker or one was
//! loaded: its connections did not survive). The configuration space is
//! the guest's CID, a `u64`.
//!
//! # The host side
//!
//! - **Host to guest.** A host program connects to the listening socket
//!   (`uds=PATH`) and writes `CONNECT <port>\n`. The device picks a host
//!   port (from 2^30 upward, one no connection uses) and sends the guest
//!   a REQUEST from it to `<port>`. On the guest's RESPONSE the program
//!   reads `OK <hostport>\n`, and from then on the socket is the
//!   connection; on the guest's RST, or no answer within
//!   [`CONNECT_TIMEOUT`] (then the guest gets an RST), the socket is
//!   closed. Anything but a well-formed line of at most
//!   [`MAX_CONNECT_LINE`] bytes closes it.
//! - **Guest to host.** A REQUEST to CID 2 port P connects to the Unix
//!   socket `PATH_P` (non-blocking); if there is none, or it refuses, or
//!   its backlog is full, the guest gets an RST.
//!
//! # Flow control
//!
//! Each connection advertises a receive buffer of [`CONN_BUF_ALLOC`]
//! bytes: what the guest sent and the host socket has not yet taken waits
//! there, so a slow host peer costs at most that much memory per
//! connection, and a guest sending beyond its credit gets an RST. Bytes
//! leave the buffer as the socket takes them (`fwd_cnt`); when the
//! guest's view of the free space falls under [`CREDIT_LOW`] and more is
//! free, the device sends a CREDIT_UPDATE (and answers every
//! CREDIT_REQUEST with one). The other way, the device reads a socket
//! only while the guest's credit (its `buf_alloc` less what is in
//! flight) allows, and only as much.
//!
//! # Untrusted input
//!
//! A transmitted packet is parsed and checked before anything is done
//! ([`packet::parse_tx`]): shorter than a header (an empty chain
//! included) or from a CID not the guest's, it is dropped; to another
//! CID, of another type than stream, with an unknown operation, a
//! payload longer than [`MAX_PKT_LEN`] or than its chain, or a payload
//! on an operation that takes none, it is answered with an RST (an RST
//! is never answered). So is any packet for a connection that does not
//! exist. A broken ring (an available index more than a ring ahead, a
//! used ring outside memory) sets DEVICE_NEEDS_RESET.

mod connection;
mod device;
mod events;
mod muxer;
pub mod packet;
pub mod vhost;
mod worker;

pub use device::{VirtioVsock, VsockError, VsockHandle};
pub use vhost::{VhostError, VhostVsock};

/// The virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The MSI-X vectors of a socket device's PCI function: QEMU's `vectors`
/// for its vhost-vsock-pci (and vhost-user-vsock-pci), so that the guest
/// sees the device it would see there. Fewer than the four a vector per
/// queue and one for configuration need, so Linux's virtio_pci takes one
/// for configuration and shares one among the three queues: a receive
/// and a transmit completion close together are one interrupt.
pub const MSIX_VECTORS: usize = 3;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0, 1 and 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// The highest CID a guest may have (Linux keeps CIDs in 32 bits; larger
/// ones are reserved by the spec).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// The longest payload of one packet (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_LEN: usize = 64 * 1024;
/// The receive buffer each connection advertises (`buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// A CREDIT_UPDATE is sent when the guest believes fewer bytes than this
/// are free (and more are).
pub const CREDIT_LOW: u32 = 64 * 1024;
/// The longest `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host-initiated connection waits for the guest's answer to
/// its REQUEST; then the guest gets an RST and the host socket is closed.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The first host port picked for host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// The most connections at once; REQUESTs beyond get an RST, host
/// connections beyond are closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most host connections waiting for their `CONNECT` line.
pub const MAX_PENDING: usize = 64;
/// The queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// The event queue's index.
pub const EVENT_QUEUE: u16 = 2;

/// Why a guest CID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guest CID {0} is out of range ({MIN_GUEST_CID} to {MAX_GUEST_CID})")]
pub struct CidError(pub u64);

/// Checks a guest CID.
pub fn check_cid(cid: u64) -> Result<u64, CidError> {
    if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        Ok(cid)
    } else {
        Err(CidError(cid))
    }
}

/// The longest Unix socket path (`sun_path` less its terminating NUL).
pub const MAX_UDS_PATH: usize = 107;

/// Counters, since the device was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VsockStats {
    /// Packets given to the guest.
    pub rx_packets: u64,
    /// Packets taken from the guest (well-formed or not).
    pub tx_packets: u64,
    /// Packets from the guest refused as malformed.
    pub tx_malformed: u64,
    /// Connections established, both ways.
    pub connections: u64,
    /// RSTs sent to the guest.
    pub resets: u64,
}

#[cfg(test)]
mod tests;
