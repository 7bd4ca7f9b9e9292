//! virtio-net (device type 1) on a host backend: a tap in the machine
//! ([`tap::Tap`]), a socket pair in tests.
//!
//! Two queues: 0 receives (frames from the backend into the guest), 1
//! transmits (frames from the guest to the backend); no control queue, no
//! multiqueue. Every frame, both ways, starts with the 12-byte
//! `virtio_net_hdr_v1` (virtio 1.x always has `num_buffers`), which the
//! backend reads and writes as is (a tap with `IFF_VNET_HDR` and a header
//! size of 12): checksum and segmentation offloads pass through untouched.
//!
//! # Offloads
//!
//! What the guest may send (CSUM, HOST_TSO4/6, HOST_ECN) needs nothing
//! from the backend: a tap takes partial checksums and GSO frames as they
//! come. What it may receive (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN) is what
//! the backend may hand over, set with [`offload_flags`] when the worker
//! starts (the tap's `TUNSETOFFLOAD`). UFO is not offered either way.
//!
//! # The worker
//!
//! One thread per device waits on the backend's readability, the
//! transmit doorbell and the receive doorbell. It holds at most one
//! received frame: while the guest has given no buffer for it, the
//! backend is not read (and not watched) until the receive doorbell says
//! buffers came. Receive buffers are popped as needed and kept until a
//! frame fills them; with `MRG_RXBUF` a frame spans as many as it needs
//! (`num_buffers` says how many), without it a frame must fit one.
//!
//! # vhost-net
//!
//! [`VhostNet`] is the same card with the rings served by the host
//! kernel's vhost-net instead of our worker (`vhost=on`): the kernel
//! reads and writes the tap itself, and checks the guest's chains itself.
//!
//! # Untrusted input
//!
//! A transmit chain that is empty, shorter than the header, longer than
//! [`MAX_TX_LEN`], has a device-writable descriptor or points outside
//! guest memory is dropped and returned (used length 0); so is a receive
//! chain with a device-readable descriptor or outside memory. A driver
//! whose available index runs more than a ring ahead gets
//! DEVICE_NEEDS_RESET, as virtio-blk does.

mod backend;
pub mod chains;
mod device;
pub mod tap;
pub mod vhost;
mod worker;

pub use backend::NetBackend;
pub use device::{NetHandle, VirtioNet};
pub use vhost::{VhostNet, VhostNetError};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};

/// The virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// `virtio_net_hdr_v1`'s length: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
/// Where `num_buffers` is in the header.
const NUM_BUFFERS_AT: usize = 10;
/// The longest frame: a 64 KiB GSO packet behind an Ethernet header with
/// a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65536 + 18;
/// The longest transmit chain: header and frame.
pub const MAX_TX_LEN: usize = HDR_LEN + MAX_FRAME_LEN;
/// The queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;

/// `TUN_F_*`: what a tap may hand over ([`offload_flags`]).
pub mod tun_f {
    /// Partial checksums.
    pub const CSUM: u32 = 0x01;
    /// TCPv4 segmentation.
    pub const TSO4: u32 = 0x02;
    /// TCPv6 segmentation.
    pub const TSO6: u32 = 0x04;
    /// TSO with ECN bits.
    pub const TSO_ECN: u32 = 0x08;
}

/// The tap offload flags (`TUNSETOFFLOAD`) for the features the driver
/// accepted: what the guest said it can receive. Segmentation needs
/// checksum offload (the kernel refuses TSO without CSUM), so it goes
/// only with GUEST_CSUM.
pub fn offload_flags(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = tun_f::CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= tun_f::TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= tun_f::TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (tun_f::TSO4 | tun_f::TSO6) != 0 {
        flags |= tun_f::TSO_ECN;
    }
    flags
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// QEMU's default for the `index`th card: 52:54:00:12:34:56, then
    /// :57, ...
    pub fn default_for(index: usize) -> Self {
        Self([
            0x52,
            0x54,
            0x00,
            0x12,
            0x34,
            0x56u8.wrapping_add(index as u8),
        ])
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex pairs separated by colons.
    #[error("'{0}' is not a MAC address (six hex pairs: 52:54:00:12:34:56)")]
    Syntax(String),
    /// A multicast (or broadcast) address: a card needs a unicast one.
    #[error("'{0}' is a multicast address (the first byte must be even)")]
    Multicast(String),
}

impl std::str::FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let syntax = || MacError::Syntax(s.to_owned());
        let mut m = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut m {
            let p = parts.next().ok_or_else(syntax)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        if m[0] & 1 != 0 {
            return Err(MacError::Multicast(s.to_owned()));
        }
        Ok(Self(m))
    }
}

/// Counters, since the device was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetStats {
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: u64,
    /// Frames from the backend dropped (no receive buffer could hold
    /// them, or the backend gave less than a header).
    pub rx_dropped: u64,
    /// Frames from the guest the backend took.
    pub tx_frames: u64,
    /// Their bytes (without the virtio header).
    pub tx_bytes: u64,
    /// Frames from the guest dropped: malformed chains, and frames the
    /// backend refused.
    pub tx_dropped: u64,
    /// Receive chains returned unused because they were malformed.
    pub rx_bad_buffers: u64,
}

#[cfg(test)]
mod tests;
