//! Virtio devices on the PC: each disk a virtio-blk-pci, each network card
//! a virtio-net-pci, each entropy device a virtio-rng-pci and each socket
//! device a virtio-vsock-pci or vhost-vsock-pci (vmm-virtio) on the root
//! bus, connected to KVM through the transport's three seams:
//!
//! - MSI-X messages go out with `KVM_SIGNAL_MSI`, from whichever thread the
//!   transport decides on (the device's worker, or a vCPU unmasking a
//!   vector);
//! - a queue's doorbell is a `KVM_IOEVENTFD` on its notify address, so a
//!   guest's notification wakes the worker without an exit to user space;
//! - INTA# (for a guest that does not enable MSI-X) is the slot's GSI from
//!   the `_PRT` swizzle, a level line shared by the slots that map to it.
//!
//! The BARs come from the 32-bit window below the ECAM (its last page is
//! the i6300esb's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmm_core::ram::GuestRam;
use vmm_core::vm::Vm;
use vmm_pci::alloc::Window;
use vmm_pci::msix::MsiMessage;
use vmm_pci::{PciDevice, PciRoot};
use vmm_sys_util::eventfd::EventFd;
use vmm_virtio::blk::{BlockConfig, BlockEvents, BlockHandle, ErrorPolicy, VirtioBlk};
use vmm_virtio::net::{MacAddr, NetHandle, VhostNet, VhostNetError, VirtioNet};
use vmm_virtio::rng::{HostRandom, RateLimit, RngHandle, VirtioRng};
use vmm_virtio::vsock::{VhostVsock, VirtioVsock, VsockHandle};
use vmm_virtio::worker::ThreadStart;
use vmm_virtio::{
    Doorbells, IntxLine, MsiRoutes, MsiSender, TransportSeams, VirtioDevice, VirtioPciDevice,
};

use crate::nets::{NetConfig, OpenNet};

use crate::disks::DiskConfig;
use crate::irqchip::IrqLines;
use crate::pci::{intx_gsi, PCI_MMIO32_START, PCI_WATCHDOG_BAR};

/// Why a virtio device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The disk could not be set up.
    #[error("drive {id}")]
    Block {
        /// The drive.
        id: String,
        /// Why.
        #[source]
        source: vmm_virtio::blk::BlockError,
    },
    /// The transport refused the device.
    #[error("drive {id}: virtio-pci")]
    Transport {
        /// The drive.
        id: String,
        /// Why.
        #[source]
        source: vmm_virtio::TransportError,
    },
    /// No room on the bus or in the BAR window.
    #[error("drive {id}: no room on the PCI bus")]
    Pci {
        /// The drive.
        id: String,
        /// Why.
        #[source]
        source: vmm_pci::PciError,
    },
    /// An entropy device could not be put on the bus.
    #[error("virtio-rng-pci")]
    Rng(#[source] PlugError),
    /// A socket device could not be made or put on the bus.
    #[error("virtio-vsock-pci with guest-cid={cid}")]
    Vsock {
        /// Its guest CID.
        cid: u64,
        /// Why.
        #[source]
        source: PlugError,
    },
    /// A socket device refused its configuration.
    #[error("virtio-vsock-pci with guest-cid={cid}")]
    VsockConfig {
        /// Its guest CID.
        cid: u64,
        /// Why.
        #[source]
        source: vmm_virtio::vsock::VsockError,
    },
    /// The host's vhost-vsock could not be had for a socket device.
    #[error("vhost-vsock-pci with guest-cid={cid}")]
    Vhost {
        /// Its guest CID.
        cid: u64,
        /// Why.
        #[source]
        source: vmm_virtio::vsock::VhostError,
    },
    /// A network card's vhost-net could not be set up.
    #[error("netdev {id}: vhost-net requested but could not be initialized")]
    VhostNet {
        /// The netdev.
        id: String,
        /// Why.
        #[source]
        source: VhostNetError,
    },
    /// A network card could not be put on the bus.
    #[error("netdev {id}: virtio-net-pci")]
    Net {
        /// The netdev.
        id: String,
        /// Why.
        #[source]
        source: PlugError,
    },
}

/// Why a virtio function could not be put on the bus.
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    /// The transport refused the device.
    #[error(transparent)]
    Transport(#[from] vmm_virtio::TransportError),
    /// No room on the bus or in the BAR window.
    #[error("no room on the PCI bus: {0}")]
    Pci(#[from] vmm_pci::PciError),
    /// No worker thread.
    #[error("cannot start the device's thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the virtio functions share: the 32-bit BAR window and the INTx
/// lines.
pub struct Slots {
    window: Window,
    lines: Arc<IntxLines>,
    mem: Arc<GuestRam>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").finish_non_exhaustive()
    }
}

impl Slots {
    /// The window below the ECAM, no line asserted; the INTx lines go
    /// through `irq`.
    pub fn new(vm: &Vm, irq: &IrqLines) -> Self {
        Self {
            window: Window::new("PCI 32-bit", PCI_MMIO32_START, PCI_WATCHDOG_BAR),
            lines: Arc::new(IntxLines {
                irq: irq.clone(),
                asserted: Mutex::new(HashMap::new()),
            }),
            mem: Arc::new(vm.memory().clone()),
        }
    }

    /// The first free slot, or `slot`.
    fn slot(root: &PciRoot, slot: Option<u8>) -> Result<u8, vmm_pci::PciError> {
        match slot {
            Some(s) => Ok(s),
            None => root.free_slot().ok_or(vmm_pci::PciError::SlotTaken(32)),
        }
    }

    /// Puts `device` on `root` at `slot` as function `name`, its seams
    /// going to KVM, its BARs placed in the window.
    fn plug(
        &mut self,
        vm: &Vm,
        root: &mut PciRoot,
        name: &str,
        device: Box<dyn VirtioDevice<GuestRam>>,
        slot: u8,
    ) -> Result<(), PlugError> {
        let seams = TransportSeams {
            msi: Arc::new(KvmMsi(vm.clone())),
            intx: Some(Arc::new(IntxPin {
                lines: Arc::clone(&self.lines),
                gsi: intx_gsi(slot, 0),
                high: Mutex::new(false),
            })),
            doorbells: Arc::new(KvmDoorbells(vm.clone())),
            msi_routes: Some(Arc::new(KvmMsiRoutes(vm.clone()))),
        };
        let mut device = VirtioPciDevice::new(name, device, Arc::clone(&self.mem), seams)?;
        let bars = *device.config().bars();
        for (index, bar) in bars.iter().enumerate() {
            if let Some(bar) = bar {
                let base = self.window.allocate(bar.size)?;
                device.config_mut().set_bar_base(index, base);
            }
        }
        device.config_mut().set_reset_state();
        root.add(Some(slot), Box::new(device))?;
        Ok(())
    }
}

/// MSI delivery through `KVM_SIGNAL_MSI`.
struct KvmMsi(Vm);

impl MsiSender for KvmMsi {
    fn send(&self, msg: MsiMessage) {
        if let Err(e) = self.0.signal_msi(msg.address, msg.data) {
            log::warn!(
                "cannot send an MSI ({:#x}, {:#x}): {e}",
                msg.address,
                msg.data
            );
        }
    }
}

/// Interrupts KVM sends itself: an irqfd on a GSI of its own that KVM
/// routes to the vector's message (`KVM_IRQFD`, `KVM_SET_GSI_ROUTING`).
struct KvmMsiRoutes(Vm);

impl MsiRoutes for KvmMsiRoutes {
    fn connect(&self, evt: &EventFd, msg: MsiMessage) -> Result<u32, String> {
        let gsi = self
            .0
            .add_msi_route(msg.address, msg.data)
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.0.register_irqfd(evt, gsi) {
            let _ = self.0.remove_msi_route(gsi);
            return Err(e.to_string());
        }
        Ok(gsi)
    }

    fn retarget(&self, route: u32, msg: MsiMessage) -> Result<(), String> {
        self.0
            .update_msi_route(route, msg.address, msg.data)
            .map_err(|e| e.to_string())
    }

    fn disconnect(&self, route: u32, evt: &EventFd) {
        if let Err(e) = self.0.unregister_irqfd(evt, route) {
            log::warn!("cannot remove the irqfd on GSI {route}: {e}");
        }
        if let Err(e) = self.0.remove_msi_route(route) {
            log::warn!("cannot remove MSI route {route}: {e}");
        }
    }
}

/// Doorbells through `KVM_IOEVENTFD`.
struct KvmDoorbells(Vm);

impl Doorbells for KvmDoorbells {
    fn register(&self, addr: u64, evt: &EventFd) -> Result<(), String> {
        self.0
            .register_mmio_doorbell(evt, addr)
            .map_err(|e| e.to_string())
    }

    fn unregister(&self, addr: u64, evt: &EventFd) {
        if let Err(e) = self.0.unregister_mmio_doorbell(evt, addr) {
            log::warn!("cannot remove the doorbell at {addr:#x}: {e}");
        }
    }
}

/// The INTx GSIs 16-23: a line is high while any device on it asserts.
struct IntxLines {
    irq: IrqLines,
    asserted: Mutex<HashMap<u32, u32>>,
}

/// One device's INTA#.
struct IntxPin {
    lines: Arc<IntxLines>,
    gsi: u32,
    high: Mutex<bool>,
}

impl IntxLine for IntxPin {
    fn set_level(&self, high: bool) {
        let mut mine = self.high.lock().unwrap_or_else(|e| e.into_inner());
        if *mine == high {
            return;
        }
        *mine = high;
        let mut asserted = self
            .lines
            .asserted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = asserted.entry(self.gsi).or_insert(0);
        *n = if high { *n + 1 } else { n.saturating_sub(1) };
        if let Err(e) = self.lines.irq.set_level(self.gsi, *n > 0) {
            log::warn!("cannot set GSI {} to {}: {e}", self.gsi, *n > 0);
        }
    }
}

/// A disk the machine built: its drive's id and the handle that retries
/// a held request (`werror/rerror=stop`).
#[derive(Debug, Clone)]
pub struct Disk {
    /// The drive's id.
    pub id: String,
    /// The device's handle.
    pub handle: BlockHandle,
    /// Its PCI slot.
    pub slot: u8,
    /// The image.
    pub path: std::path::PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// Its size in bytes.
    pub size: u64,
    /// `cache=none`.
    pub direct: bool,
}

/// Adds a virtio-blk-pci for each of `disks` to `root`; each worker thread
/// runs `thread_start` first; `events(id)` gives the ear for drive `id`'s
/// I/O errors; the images are locked now if `lock` (else, for an incoming
/// migration, once the source let them go).
pub fn add_disks(
    vm: &Vm,
    root: &mut PciRoot,
    slots: &mut Slots,
    disks: &[(DiskConfig, u64)],
    thread_start: Option<ThreadStart>,
    events: &dyn Fn(&str) -> Arc<dyn BlockEvents>,
    lock: bool,
) -> Result<Vec<Disk>, VirtioError> {
    let mut built = Vec::new();
    for (disk, size) in disks {
        let id = disk.id.clone();
        let mut config = BlockConfig::new(&disk.path);
        config.read_only = disk.readonly;
        config.cache = disk.cache;
        config.serial = disk.serial.clone();
        config.aio = disk.aio;
        config.lock = lock;
        config.errors = ErrorPolicy {
            read: disk.rerror,
            write: disk.werror,
        };
        let blk = VirtioBlk::with_thread_start(&config, events(&id), thread_start.clone())
            .map_err(|source| VirtioError::Block {
                id: id.clone(),
                source,
            })?;
        let handle = blk.handle();
        let pci_err = |source| VirtioError::Pci {
            id: id.clone(),
            source,
        };
        let slot = Slots::slot(root, disk.slot).map_err(pci_err)?;
        match slots.plug(vm, root, "virtio-blk-pci", Box::new(blk), slot) {
            Ok(()) => {}
            Err(PlugError::Transport(source)) => return Err(VirtioError::Transport { id, source }),
            Err(PlugError::Pci(source)) => return Err(pci_err(source)),
            Err(PlugError::Thread(e)) => {
                return Err(VirtioError::Block {
                    id: id.clone(),
                    source: vmm_virtio::blk::BlockError::EventFd(e),
                })
            }
        }
        built.push(Disk {
            id,
            handle,
            slot,
            path: disk.path.clone(),
            readonly: disk.readonly,
            size: *size,
            direct: disk.cache == crate::disks::CacheMode::None,
        });
    }
    Ok(built)
}

/// A network card the machine built.
#[derive(Debug, Clone)]
pub struct Nic {
    /// Its netdev's id.
    pub id: String,
    /// Its tap.
    pub ifname: String,
    /// Its address.
    pub mac: MacAddr,
    /// Its PCI slot.
    pub slot: u8,
    /// The device's counters (0 with vhost=on: the kernel moves the
    /// frames).
    pub handle: NetHandle,
    /// Whether the kernel's vhost-net serves its rings.
    pub vhost: bool,
}

/// Adds a virtio-net-pci for each of `nets`, on its open tap (and, with
/// vhost=on, the kernel's vhost-net); each worker thread runs
/// `thread_start` first.
pub fn add_nets(
    vm: &Vm,
    root: &mut PciRoot,
    slots: &mut Slots,
    nets: Vec<(NetConfig, OpenNet)>,
    thread_start: Option<ThreadStart>,
) -> Result<Vec<Nic>, VirtioError> {
    let mut built = Vec::new();
    for (net, open) in nets {
        let err = |source: PlugError| VirtioError::Net {
            id: net.id.clone(),
            source,
        };
        let ifname = open.tap.name().to_owned();
        let tap = Arc::new(open.tap);
        let vhost = open.vhost.is_some();
        let (card, handle): (Box<dyn VirtioDevice<GuestRam>>, _) = match open.vhost {
            Some(file) => {
                let card =
                    VhostNet::new(file, tap, net.mac, thread_start.clone()).map_err(|source| {
                        VirtioError::VhostNet {
                            id: net.id.clone(),
                            source,
                        }
                    })?;
                let handle = card.handle();
                (Box::new(card), handle)
            }
            None => {
                let card = VirtioNet::new(tap, net.mac, thread_start.clone())
                    .map_err(|e| err(e.into()))?;
                let handle = card.handle();
                (Box::new(card), handle)
            }
        };
        let slot = Slots::slot(root, net.slot).map_err(|e| err(e.into()))?;
        slots
            .plug(vm, root, "virtio-net-pci", card, slot)
            .map_err(err)?;
        built.push(Nic {
            id: net.id.clone(),
            ifname,
            mac: net.mac,
            slot,
            handle,
            vhost,
        });
    }
    Ok(built)
}

/// An entropy device as `--device virtio-rng-pci` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RngConfig {
    /// QEMU's `max-bytes` and `period`.
    pub limit: RateLimit,
    /// Its PCI slot (None: the first free one).
    pub slot: Option<u8>,
}

/// An entropy device the machine built.
#[derive(Debug, Clone)]
pub struct Rng {
    /// Its PCI slot.
    pub slot: u8,
    /// The device's counters.
    pub handle: RngHandle,
}

/// Adds a virtio-rng-pci on the host's `getrandom` for each of `rngs`;
/// each worker thread runs `thread_start` first.
pub fn add_rngs(
    vm: &Vm,
    root: &mut PciRoot,
    slots: &mut Slots,
    rngs: &[RngConfig],
    thread_start: Option<ThreadStart>,
) -> Result<Vec<Rng>, VirtioError> {
    let mut built = Vec::new();
    for config in rngs {
        let err = |source: PlugError| VirtioError::Rng(source);
        let rng = VirtioRng::new(Arc::new(HostRandom), config.limit, thread_start.clone())
            .map_err(|e| err(e.into()))?;
        let handle = rng.handle();
        let slot = Slots::slot(root, config.slot).map_err(|e| err(e.into()))?;
        slots
            .plug(vm, root, "virtio-rng-pci", Box::new(rng), slot)
            .map_err(err)?;
        built.push(Rng { slot, handle });
    }
    Ok(built)
}

/// A socket device the machine built.
#[derive(Debug, Clone)]
pub struct Vsock {
    /// The guest's CID.
    pub cid: u64,
    /// Its listening socket's path.
    pub uds: std::path::PathBuf,
    /// Its PCI slot.
    pub slot: u8,
    /// The device's counters.
    pub handle: VsockHandle,
}

/// Adds a virtio-vsock-pci for each of `vsocks`, on its bound listener;
/// each worker thread runs `thread_start` first.
pub fn add_vsocks(
    vm: &Vm,
    root: &mut PciRoot,
    slots: &mut Slots,
    vsocks: Vec<crate::vsocks::VsockConfig>,
    thread_start: Option<ThreadStart>,
) -> Result<Vec<Vsock>, VirtioError> {
    let mut built = Vec::new();
    for v in vsocks {
        let cid = v.cid;
        let err = |source: PlugError| VirtioError::Vsock { cid, source };
        let device = VirtioVsock::new(cid, v.listener, &v.uds, thread_start.clone())
            .map_err(|source| VirtioError::VsockConfig { cid, source })?;
        let handle = device.handle();
        let slot = Slots::slot(root, v.slot).map_err(|e| err(e.into()))?;
        slots
            .plug(vm, root, "virtio-vsock-pci", Box::new(device), slot)
            .map_err(err)?;
        built.push(Vsock {
            cid,
            uds: v.uds,
            slot,
            handle,
        });
    }
    Ok(built)
}

/// Adds a vhost-vsock-pci for each of `vhosts` (each opens
/// `/dev/vhost-vsock` and takes its CID now); each worker thread runs
/// `thread_start` first. Returns their CIDs and slots.
pub fn add_vhost_vsocks(
    vm: &Vm,
    root: &mut PciRoot,
    slots: &mut Slots,
    vhosts: &[crate::vsocks::VhostVsockConfig],
    thread_start: Option<ThreadStart>,
) -> Result<Vec<(u64, u8)>, VirtioError> {
    let mut built = Vec::new();
    for v in vhosts {
        let cid = v.cid;
        let device = VhostVsock::open(cid, thread_start.clone())
            .map_err(|source| VirtioError::Vhost { cid, source })?;
        let err = |source: PlugError| VirtioError::Vsock { cid, source };
        let slot = Slots::slot(root, v.slot).map_err(|e| err(e.into()))?;
        slots
            .plug(vm, root, "vhost-vsock-pci", Box::new(device), slot)
            .map_err(err)?;
        built.push((cid, slot));
    }
    Ok(built)
}
