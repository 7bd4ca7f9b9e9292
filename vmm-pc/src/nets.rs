//! Network cards as the command line gives them (QEMU's `-netdev tap` and
//! `-device virtio-net-pci`): each a tap opened (made if need be), and
//! with `vhost=on` the kernel's `/dev/vhost-net` opened and owned, before
//! the machine is built, so that a missing `/dev/net/tun` or
//! `/dev/vhost-net`, a name the kernel refuses or a lack of permission is
//! a one-line error naming the netdev.

pub use vmm_virtio::net::tap::{Tap, TapError};
pub use vmm_virtio::net::MacAddr;
use vmm_virtio::net::VhostNetError;
use vmm_virtio::vhost::VhostFile;

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
    /// `vhost=on`: the kernel's vhost-net serves the rings.
    pub vhost: bool,
}

/// Why a card's host side cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap.
    #[error("netdev {id}")]
    Tap {
        /// The netdev.
        id: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// `vhost=on` and no vhost-net.
    #[error("netdev {id}: vhost-net requested but could not be initialized")]
    Vhost {
        /// The netdev.
        id: String,
        /// Why.
        #[source]
        source: VhostNetError,
    },
}

/// A card's host side, open: its tap, and its vhost-net with `vhost=on`.
#[derive(Debug)]
pub struct OpenNet {
    /// The tap.
    pub tap: Tap,
    /// The owned `/dev/vhost-net`.
    pub vhost: Option<VhostFile>,
}

/// Opens `net`'s tap, and with `vhost=on` the kernel's vhost-net.
/// vhost-net comes first: without it, no tap interface is made.
pub fn open_net(net: &NetConfig) -> Result<OpenNet, NetError> {
    let vhost = if net.vhost {
        let file = vmm_virtio::net::vhost::open_vhost_net().map_err(|source| NetError::Vhost {
            id: net.id.clone(),
            source,
        })?;
        Some(file)
    } else {
        None
    };
    let tap = Tap::open(&net.ifname).map_err(|source| NetError::Tap {
        id: net.id.clone(),
        source,
    })?;
    Ok(OpenNet { tap, vhost })
}
