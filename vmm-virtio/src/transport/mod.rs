//! The modern virtio-pci transport: a [`VirtioPciDevice`] is a PCI function
//! (vendor 0x1AF4, device 0x1040 + the virtio device ID, revision 1) whose
//! BAR 0 holds the virtio structures and BAR 2 the MSI-X table (see
//! [`caps`] for the layout), driving one [`VirtioDevice`].
//!
//! Life of a device, as Linux's `virtio_pci_modern` drives it: reset
//! (status 0, read back until 0), ACKNOWLEDGE, DRIVER, feature words,
//! FEATURES_OK (read back), MSI-X vectors, each queue's size, areas,
//! vector and enable, then DRIVER_OK. At DRIVER_OK the transport checks
//! every enabled queue against guest memory, hands them to the device
//! (which starts its worker) and registers the notification doorbells.
//! Anything invalid there sets DEVICE_NEEDS_RESET and raises a
//! configuration interrupt instead. Writing 0 to the status (or a reset of
//! the machine) stops the worker, unregisters the doorbells and puts every
//! register back.

pub mod caps;
pub mod common;
pub mod interrupt;
pub mod snapshot;

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_pci::config::{
    ConfigSpace, Identity, COMMAND, COMMAND_INTX_DISABLE, STATUS, STATUS_INTERRUPT,
};
use vmm_pci::msix::{Msix, MsixState};
use vmm_pci::{PciDevice, PciError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::caps::{
    PciCfgWindow, COMMON_OFFSET, DEVICE_CFG_MAX, DEVICE_OFFSET, ISR_OFFSET, MAX_QUEUES, MSIX_BAR,
    NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, VIRTIO_BAR,
};
use self::common::{CommonConfig, Effect, Live, COMMON_CFG_LEN};
use self::interrupt::InterruptHub;
use crate::device::{ActivateContext, ActiveQueue, DeviceState, QueueHome, VirtioDevice};
use crate::seams::{Doorbells, IntxLine, MsiRoutes, MsiSender};
use crate::Memory;

/// The virtio vendor ID.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device ID.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// The subsystem ID QEMU gives modern virtio functions.
pub const VIRTIO_PCI_SUBSYSTEM: u16 = 0x1100;

/// VIRTIO_F_VERSION_1: the transport only speaks virtio 1.x.
const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Why a function could not be built (the machine's mistake, never the
/// guest's).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Configuration space would not take the BARs or capabilities.
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    /// A device with no queues, too many, or a maximum size that is not a
    /// power of two (or over 32768).
    #[error("the device's queues do not fit the transport: {0:?}")]
    Queues(Vec<u16>),
    /// More device configuration than the BAR has room for.
    #[error("device configuration of {0} bytes is too large")]
    ConfigLen(usize),
    /// No eventfd for a queue.
    #[error("cannot create a notification eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What the machine connects the function to.
#[derive(Clone)]
pub struct TransportSeams {
    /// MSI delivery.
    pub msi: Arc<dyn MsiSender>,
    /// The INTx line for the slot's INTA#, if the machine routes one.
    pub intx: Option<Arc<dyn IntxLine>>,
    /// Notification doorbells.
    pub doorbells: Arc<dyn Doorbells>,
    /// MSI routes for interrupts KVM sends by itself, if the machine has
    /// them (else those interrupts go through the device's thread).
    pub msi_routes: Option<Arc<dyn MsiRoutes>>,
}

impl std::fmt::Debug for TransportSeams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportSeams")
            .field("intx", &self.intx.is_some())
            .finish_non_exhaustive()
    }
}

/// The transport's state as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportState {
    /// Configuration space.
    pub config: Vec<u8>,
    /// MSI-X table and pending bits.
    pub msix: MsixState,
    /// The common configuration registers.
    pub common: CommonConfig,
    /// `config_generation`.
    pub generation: u8,
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// The notification addresses registered as doorbells now, by queue.
    pub doorbells: Vec<Option<u64>>,
    /// The device's own state.
    pub device: DeviceState,
}

/// PCI class codes by virtio device type, as QEMU gives them.
fn class_of(device_type: u32) -> (u8, u8, u8) {
    match device_type {
        // Network controller, Ethernet.
        1 => (0x02, 0x00, 0x00),
        // Mass storage, SCSI (QEMU's choice for virtio-blk-pci).
        2 => (0x01, 0x00, 0x00),
        // Simple communication controller, other (console).
        3 => (0x07, 0x80, 0x00),
        // Simple communication controller, other (QEMU's for
        // vhost-vsock-pci too).
        19 => (0x07, 0x80, 0x00),
        _ => (0xff, 0x00, 0x00),
    }
}

/// A virtio device behind the modern virtio-pci transport.
pub struct VirtioPciDevice<M: Memory> {
    name: String,
    config: ConfigSpace,
    device: Box<dyn VirtioDevice<M>>,
    mem: Arc<M>,
    common: CommonConfig,
    hub: Arc<InterruptHub>,
    notify: Vec<EventFd>,
    doorbells: Arc<dyn Doorbells>,
    registered: Vec<Option<u64>>,
    /// By queue, the address whose registration was refused (KVM's
    /// `EEXIST` for a BAR moved onto another device's doorbells): not
    /// tried again, nor warned about, on every configuration write until
    /// the doorbell would move.
    refused: Vec<Option<u64>>,
    /// An unusable queue was logged at `warn` (later ones at `debug`).
    warned_unusable: bool,
    pci_cfg: PciCfgWindow,
    active: bool,
    /// Where the worker leaves its queues when it stops.
    home: QueueHome,
    /// The queues of an active device whose worker is stopped for a
    /// snapshot (or was restored from one): [`VirtioPciDevice::resume`]
    /// starts it from them.
    parked: Option<Vec<(u16, QueueState)>>,
}

impl<M: Memory> std::fmt::Debug for VirtioPciDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("name", &self.name)
            .field("status", &self.common.status)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl<M: Memory> VirtioPciDevice<M> {
    /// `device` as PCI function `name` on guest memory `mem`, with its
    /// interrupts and doorbells going to `seams`. The BARs are declared but
    /// not placed: the machine sets their bases
    /// ([`ConfigSpace::set_bar_base`] through [`PciDevice::config_mut`])
    /// and then calls [`ConfigSpace::set_reset_state`].
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice<M>>,
        mem: Arc<M>,
        seams: TransportSeams,
    ) -> Result<Self, TransportError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty()
            || max_sizes.len() > MAX_QUEUES
            || max_sizes.iter().any(|s| !s.is_power_of_two() || *s > 32768)
        {
            return Err(TransportError::Queues(max_sizes));
        }
        let config_len = device.config_len();
        if config_len as u64 > DEVICE_CFG_MAX {
            return Err(TransportError::ConfigLen(config_len));
        }
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE.wrapping_add(device_type as u16),
            class: class_of(device_type),
            revision: 1,
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: VIRTIO_PCI_SUBSYSTEM,
        });
        config.set_interrupt_pin(1);
        let vectors = device.msix_vectors().clamp(1, max_sizes.len() + 1);
        let (layout, msix_size) = caps::msix_layout(vectors);
        let pci_cfg =
            caps::add_virtio_caps(&mut config, config_len as u64, max_sizes.len(), msix_size)?;
        let msix = Msix::new(&mut config, vectors, layout)?;
        config.set_reset_state();
        let notify = (0..max_sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        let features = device.features() | VERSION_1;
        Ok(Self {
            name: name.to_owned(),
            config,
            common: CommonConfig::new(features, &max_sizes, vectors as u16),
            hub: Arc::new(
                InterruptHub::new(msix, seams.msi, seams.intx, max_sizes.len())
                    .with_routes(seams.msi_routes),
            ),
            registered: vec![None; max_sizes.len()],
            refused: vec![None; max_sizes.len()],
            warned_unusable: false,
            notify,
            device,
            mem,
            doorbells: seams.doorbells,
            pci_cfg: PciCfgWindow::new(pci_cfg),
            active: false,
            home: QueueHome::default(),
            parked: None,
        })
    }

    /// The state as plain data.
    pub fn state(&self) -> TransportState {
        TransportState {
            config: self.config.state(),
            msix: self.hub.msix(Msix::state),
            common: self.common.clone(),
            generation: self.hub.generation(),
            needs_reset: self.hub.needs_reset(),
            doorbells: self.registered.clone(),
            device: self.device.state(),
        }
    }

    /// A device reset (status 0): the worker stopped and joined, doorbells
    /// gone, every virtio register back to its reset value.
    fn reset_device(&mut self) {
        self.device.reset();
        self.active = false;
        self.parked = None;
        self.home.take();
        self.common.reset();
        self.hub.reset();
        // Notifications left in the eventfds are harmless: a new worker
        // looks at its rings first thing anyway.
        self.sync_doorbells();
    }

    /// The base of BAR 0 if it decodes now.
    fn virtio_bar_base(&self) -> Option<u64> {
        self.config
            .decoding_regions()
            .find(|r| r.index == VIRTIO_BAR)
            .map(|r| r.base)
    }

    /// Registers and unregisters doorbells so that exactly the enabled
    /// queues of a running device have one, at the BAR's present place.
    fn sync_doorbells(&mut self) {
        let base = self.virtio_bar_base();
        for (i, q) in self.common.queues.iter().enumerate() {
            let want = base
                .filter(|_| self.active && q.enabled)
                .map(|b| b + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER));
            if want.is_none() {
                self.refused[i] = None;
            }
            if self.registered[i] == want || (want.is_some() && self.refused[i] == want) {
                continue;
            }
            self.refused[i] = None;
            if let Some(old) = self.registered[i].take() {
                self.doorbells.unregister(old, &self.notify[i]);
            }
            if let Some(addr) = want {
                match self.doorbells.register(addr, &self.notify[i]) {
                    Ok(()) => self.registered[i] = Some(addr),
                    Err(e) => {
                        self.refused[i] = Some(addr);
                        log::warn!(
                            "{}: no doorbell for queue {i} at {addr:#x} ({e}); notifications will exit",
                            self.name
                        );
                    }
                }
            }
        }
    }

    /// DRIVER_OK: check the enabled queues and start the device.
    fn activate(&mut self) {
        if self.active {
            return;
        }
        self.start_device(None);
    }

    /// Starts the device on its enabled queues: as their registers set
    /// them up, or (`saved`) as a snapshot left them, indices included.
    fn start_device(&mut self, saved: Option<&[(u16, QueueState)]>) {
        let features = self.common.negotiated();
        let mut queues = Vec::new();
        for (i, q) in self.common.queues.iter().enumerate() {
            if !q.enabled {
                continue;
            }
            let built = match saved {
                None => build_queue(q, features, &*self.mem),
                Some(saved) => saved
                    .iter()
                    .find(|(index, _)| usize::from(*index) == i)
                    .and_then(|(_, state)| Queue::try_from(*state).ok())
                    .filter(|queue| servable(queue, &*self.mem)),
            };
            let notify = self.notify[i].try_clone();
            match (built, notify) {
                (Some(queue), Ok(notify)) => queues.push(ActiveQueue {
                    index: i as u16,
                    queue,
                    notify,
                }),
                (None, _) => {
                    // Once per device at `warn`: a guest may do this in a
                    // loop.
                    let level = crate::once_then_debug(&mut self.warned_unusable);
                    log::log!(
                        level,
                        "{}: queue {i} is not usable (size {}, areas {:#x}/{:#x}/{:#x}); device needs reset",
                        self.name, q.size, q.desc, q.driver, q.device
                    );
                    self.hub.raise_needs_reset();
                    self.sync_doorbells();
                    return;
                }
                (_, Err(e)) => {
                    log::error!("{}: cannot clone a notification eventfd: {e}", self.name);
                    self.hub.raise_needs_reset();
                    self.sync_doorbells();
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: Arc::clone(&self.mem),
            features,
            queues,
            interrupt: Arc::clone(&self.hub) as Arc<dyn crate::VirtioInterrupt>,
            home: self.home.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("{}: cannot start: {e}; device needs reset", self.name);
                self.hub.raise_needs_reset();
            }
        }
        self.sync_doorbells();
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            Effect::None => {}
            Effect::Reset => self.reset_device(),
            Effect::DriverOk => self.activate(),
            Effect::Vectors => self.hub.set_vectors(
                self.common.config_msix_vector,
                self.common.queues.iter().map(|q| q.msix_vector),
            ),
            Effect::NeedsReset => self.hub.raise_needs_reset(),
        }
    }

    fn virtio_bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if offset < COMMON_OFFSET + COMMON_CFG_LEN {
            let live = Live {
                generation: self.hub.generation(),
                needs_reset: self.hub.needs_reset(),
            };
            self.common.read(offset - COMMON_OFFSET, data, live);
        } else if offset == ISR_OFFSET {
            // Reading the ISR clears it: an access of no bytes reads
            // nothing and clears nothing.
            if let Some(first) = data.first_mut() {
                *first = self.hub.read_isr();
            }
        } else if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_CFG_MAX).contains(&offset)
            && offset + len <= DEVICE_OFFSET + self.device.config_len() as u64
        {
            self.device.read_config(offset - DEVICE_OFFSET, data);
        }
    }

    fn virtio_bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let queues = self.notify.len() as u64;
        let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
        if offset < COMMON_OFFSET + COMMON_CFG_LEN {
            self.common_write(offset - COMMON_OFFSET, data);
        } else if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_CFG_MAX).contains(&offset)
            && offset + len <= DEVICE_OFFSET + self.device.config_len() as u64
        {
            self.device.write_config(offset - DEVICE_OFFSET, data);
        } else if (NOTIFY_OFFSET..NOTIFY_OFFSET + queues * multiplier).contains(&offset)
            && (offset - NOTIFY_OFFSET) % multiplier == 0
        {
            // No doorbell caught it (none registered yet, or the exit came
            // anyway): signal the queue's eventfd ourselves.
            let queue = ((offset - NOTIFY_OFFSET) / multiplier) as usize;
            if let Err(e) = self.notify[queue].write(1) {
                log::error!("{}: cannot signal queue {queue}: {e}", self.name);
            }
        }
    }

    /// A read through the PCI_CFG window into `pci_cfg_data`.
    fn window_read(&mut self) {
        let Some(access) = self.pci_cfg.access(&self.config) else {
            return;
        };
        let mut bytes = [0u8; 4];
        self.bar_read(access.bar, access.offset, &mut bytes[..access.len]);
        self.pci_cfg
            .set_data(&mut self.config, &bytes[..access.len]);
    }

    /// A write through the PCI_CFG window from `pci_cfg_data`.
    fn window_write(&mut self) {
        let Some(access) = self.pci_cfg.access(&self.config) else {
            return;
        };
        let bytes = self.pci_cfg.data(&self.config);
        self.bar_write(access.bar, access.offset, &bytes[..access.len]);
    }
}

/// A queue from its registers, if its size and areas are usable: aligned
/// as the split ring needs and inside guest memory.
fn build_queue<M: Memory>(q: &common::QueueConfig, features: u64, mem: &M) -> Option<Queue> {
    let mut queue = Queue::new(q.max_size).ok()?;
    queue.try_set_size(q.size).ok()?;
    queue
        .try_set_desc_table_address(GuestAddress(q.desc))
        .ok()?;
    queue
        .try_set_avail_ring_address(GuestAddress(q.driver))
        .ok()?;
    queue
        .try_set_used_ring_address(GuestAddress(q.device))
        .ok()?;
    queue.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
    queue.set_ready(true);
    servable(&queue, mem).then_some(queue)
}

/// Whether a device can serve `queue` (from its registers or a snapshot):
/// virtio-queue's checks (size, alignment, inside guest memory), and
/// neither its descriptor table nor its available ring at guest address
/// 0, where the registers' reset values leave them. virtio-queue takes an
/// available ring at 0 for a queue never set up and refuses every pop
/// from it, while the ring's index can still say there is work: a worker
/// would spin on it for ever, and a reset would wait on that worker. QEMU
/// takes either area at 0 as a queue not set up too.
pub(crate) fn servable<M: Memory>(queue: &Queue, mem: &M) -> bool {
    queue.desc_table() != 0 && queue.avail_ring() != 0 && queue.is_valid(mem)
}

impl<M: Memory> PciDevice for VirtioPciDevice<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if self.pci_cfg.touches_data(offset, data.len()) {
            self.window_read();
        }
        let status = self.config.read_u16(STATUS) & !STATUS_INTERRUPT;
        let pending = if self.hub.intx_pending() {
            STATUS_INTERRUPT
        } else {
            0
        };
        self.config.set_u16(STATUS, status | pending);
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let config = &self.config;
        self.hub.with_msix(|msix| msix.config_written(config));
        let command = self.config.read_u16(COMMAND);
        self.hub
            .set_intx_disabled(command & COMMAND_INTX_DISABLE != 0);
        if self.pci_cfg.touches_data(offset, data.len()) {
            self.window_write();
        }
        self.sync_doorbells();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            VIRTIO_BAR => self.virtio_bar_read(offset, data),
            MSIX_BAR => self.hub.msix(|msix| {
                let pba = msix_pba_offset(msix);
                if offset >= pba {
                    msix.pba_read(offset - pba, data);
                } else {
                    msix.table_read(offset, data);
                }
            }),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            VIRTIO_BAR => self.virtio_bar_write(offset, data),
            MSIX_BAR => self.hub.with_msix(|msix| {
                if offset < msix_pba_offset(msix) {
                    msix.table_write(offset, data)
                } else {
                    Vec::new()
                }
            }),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.reset_device();
        self.config.reset();
        self.hub.reset_function();
        self.sync_doorbells();
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

/// The PBA's offset in the MSI-X BAR.
fn msix_pba_offset(msix: &Msix) -> u64 {
    u64::from(caps::msix_layout(msix.vectors()).0.pba_offset)
}

impl<M: Memory> Drop for VirtioPciDevice<M> {
    fn drop(&mut self) {
        self.device.reset();
        self.active = false;
        self.sync_doorbells();
    }
}

#[cfg(test)]
mod tests;
