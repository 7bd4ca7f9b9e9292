//! Network cards as the command line gives them (QEMU's `-netdev tap` and
//! `-device virtio-net-pci`): each a tap opened (made if need be) before
//! the machine is built, so that a missing `/dev/net/tun`, a name the
//! kernel refuses or a lack of permission is a one-line error naming the
//! netdev.

pub use vmm_virtio::net::tap::{Tap, TapError};
pub use vmm_virtio::net::MacAddr;

/// One card on a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The netdev's id (`--netdev tap,id=ID`).
    pub id: String,
    /// The tap interface (`ifname=`).
    pub ifname: String,
    /// The card's address.
    pub mac: MacAddr,
    /// The PCI slot of its virtio-net-pci (None: the first free one).
    pub slot: Option<u8>,
}

/// Why a tap cannot be had.
#[derive(Debug, thiserror::Error)]
#[error("netdev {id}")]
pub struct NetError {
    /// The netdev.
    pub id: String,
    /// Why.
    #[source]
    pub source: TapError,
}

/// Opens `net`'s tap.
pub fn open_tap(net: &NetConfig) -> Result<Tap, NetError> {
    Tap::open(&net.ifname).map_err(|source| NetError {
        id: net.id.clone(),
        source,
    })
}
