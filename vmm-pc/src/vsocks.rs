//! Socket devices as the command line gives them (`--device
//! virtio-vsock-pci,guest-cid=N,uds=PATH`): each a virtio-vsock-pci whose
//! host side is a Unix socket the front end bound before the machine is
//! built (so that a taken path is a one-line error before any KVM work),
//! and which the front end removes at exit.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

pub use vmm_virtio::vsock::{check_cid, CidError, MAX_UDS_PATH};

/// One socket device.
#[derive(Debug)]
pub struct VsockConfig {
    /// The guest's CID (3 to 2^32 - 2).
    pub cid: u64,
    /// Where the listening socket is bound; guest connections to host
    /// port P go to `uds_P`.
    pub uds: PathBuf,
    /// The listening socket, bound at `uds`.
    pub listener: UnixListener,
    /// The PCI slot of its virtio-vsock-pci (None: the first free one).
    pub slot: Option<u8>,
}

/// One socket device on the host kernel's vhost-vsock (`--device
/// vhost-vsock-pci,guest-cid=N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostVsockConfig {
    /// The guest's CID, which no other VM on the host may have.
    pub cid: u64,
    /// The PCI slot (None: the first free one).
    pub slot: Option<u8>,
}
