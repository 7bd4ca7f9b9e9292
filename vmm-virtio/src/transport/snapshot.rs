//! A virtio-pci function's state for snapshots and migration, and its
//! way back.
//!
//! A save happens with the guest stopped: [`VirtioPciDevice::pause`]
//! stops the device's worker with nothing in flight (the worker leaves its
//! queues, indices included, in the transport's [`crate::QueueHome`]), then
//! [`VirtioPciDevice::snapshot`] copies configuration space, MSI-X, the
//! ISR, the common configuration, each queue and the device's own part
//! into a [`VirtioPciSnapshot`]. [`VirtioPciDevice::resume`] starts the
//! worker again from the same queues when the guest runs again.
//!
//! [`VirtioPciDevice::restore`] takes a snapshot from a file or a stream:
//! untrusted. Everything is checked before anything changes: the device
//! type, the identity bytes of configuration space, the MSI-X size, the
//! offer and the queues' maxima, every enabled queue (its size a power of
//! two within the maximum, its areas aligned and inside guest RAM, the
//! same as the registers say, its indices at most a ring away from what
//! guest RAM holds). A refusal is an error with the reason, and the
//! function is unchanged. The device stays stopped until
//! [`VirtioPciDevice::resume`]; doorbells and the INTx level follow the
//! restored registers at once.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_pci::msix::{Msix, MsixState};

use super::common::CommonConfig;
use super::VirtioPciDevice;
use crate::device::{DeviceSnapshot, SnapshotError, VIRTIO_MSI_NO_VECTOR};
use crate::Memory;

/// One queue as the worker left it (`virtio_queue::QueueState`, which is
/// not serializable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// The queue's index.
    pub index: u16,
    /// The device's maximum size.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx: bool,
    /// The descriptor table.
    pub desc: u64,
    /// The available (driver) ring.
    pub avail: u64,
    /// The used (device) ring.
    pub used: u64,
    /// The next available entry the device will take.
    pub next_avail: u16,
    /// The next used entry the device will fill.
    pub next_used: u16,
}

impl SavedQueue {
    fn new(index: u16, q: &QueueState) -> Self {
        Self {
            index,
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            event_idx: q.event_idx_enabled,
            desc: q.desc_table,
            avail: q.avail_ring,
            used: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
        }
    }

    fn state(&self) -> QueueState {
        QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc,
            avail_ring: self.avail,
            used_ring: self.used,
        }
    }
}

/// A virtio-pci function's whole state, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciSnapshot {
    /// The virtio device type.
    pub device_type: u32,
    /// Configuration space (4096 bytes: BARs, command, MSI-X control).
    pub config: Vec<u8>,
    /// The MSI-X table.
    pub msix_table: Vec<u8>,
    /// The MSI-X pending bits.
    pub msix_pending: Vec<bool>,
    /// The ISR byte.
    pub isr: u8,
    /// `config_generation`.
    pub generation: u8,
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// The common configuration's registers.
    pub common: CommonConfig,
    /// Whether the device was started (DRIVER_OK and a worker).
    pub active: bool,
    /// The enabled queues of a started device, as its worker left them.
    pub queues: Vec<SavedQueue>,
    /// The device's own part.
    pub device: DeviceSnapshot,
}

fn invalid(why: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(why.into())
}

impl<M: Memory> VirtioPciDevice<M> {
    /// Stops a started device's worker for a snapshot, with nothing in
    /// flight; its queues wait here until [`VirtioPciDevice::resume`]. A
    /// device whose state cannot be captured refuses (and keeps running).
    pub fn pause(&mut self) -> Result<(), SnapshotError> {
        if !self.active || self.parked.is_some() {
            return Ok(());
        }
        self.device.quiesce()?;
        self.parked = Some(self.home.take());
        Ok(())
    }

    /// Whether the device's worker is stopped for a snapshot (or after a
    /// restore) and waits for [`VirtioPciDevice::resume`].
    pub fn is_paused(&self) -> bool {
        self.parked.is_some()
    }

    /// Starts a paused device again from its queues. Used buffers may
    /// have been left unsignalled at the pause: each enabled queue gets an
    /// interrupt (a spurious one is harmless to a driver, a lost one is
    /// not).
    pub fn resume(&mut self) {
        let Some(saved) = self.parked.take() else {
            return;
        };
        if !self.active {
            return;
        }
        self.active = false;
        self.start_device(Some(&saved));
        if self.active {
            for (index, _) in &saved {
                crate::VirtioInterrupt::signal_queue(&*self.hub, *index);
            }
        }
    }

    /// Before a load replaces guest RAM: the worker stops (a device
    /// reset: the load puts every register back), so that neither it nor
    /// the host kernel's vhost writes guest RAM meanwhile.
    pub fn stop_for_load(&mut self) {
        if self.active {
            self.reset_device();
        }
    }

    /// A live migration's log for the host kernel's writes (None: the
    /// migration ended; see [`VirtioDevice::set_dirty_log`]). A running
    /// device's worker stops (as for a snapshot) and starts again at once
    /// from where it stopped, so that the kernel's rings take the log; a
    /// paused or stopped one takes it when it starts.
    pub fn set_dirty_log(&mut self, log: Option<std::sync::Arc<crate::vhost::DirtyLog>>) {
        let running = self.active && self.parked.is_none();
        if running {
            if let Err(e) = self.pause() {
                log::warn!("{}: cannot restart for the dirty log: {e}", self.name);
                self.device.set_dirty_log(log);
                return;
            }
        }
        self.device.set_dirty_log(log);
        if running {
            self.resume();
        }
    }

    /// The function's state; a started device must be paused first.
    pub fn snapshot(&self) -> Result<VirtioPciSnapshot, SnapshotError> {
        let queues = match (&self.parked, self.active) {
            (Some(q), true) => q.iter().map(|(i, s)| SavedQueue::new(*i, s)).collect(),
            (_, true) => {
                return Err(SnapshotError::Worker(
                    "the device was not paused for the snapshot".into(),
                ))
            }
            (_, false) => Vec::new(),
        };
        let msix = self.hub.msix(Msix::state);
        Ok(VirtioPciSnapshot {
            device_type: self.device.device_type(),
            config: self.config.state(),
            msix_table: msix.table,
            msix_pending: msix.pending,
            isr: self.hub.isr(),
            generation: self.hub.generation(),
            needs_reset: self.hub.needs_reset(),
            common: self.common.clone(),
            active: self.active,
            queues,
            device: self.device.snapshot()?,
        })
    }

    /// Puts `s` back after checking all of it (see the module's
    /// documentation); the device then waits, stopped, for
    /// [`VirtioPciDevice::resume`]. On an error nothing changed.
    pub fn restore(&mut self, s: &VirtioPciSnapshot) -> Result<(), SnapshotError> {
        let ours = self.device.device_type();
        if s.device_type != ours {
            return Err(invalid(format!(
                "a snapshot of virtio device type {} given to type {ours}",
                s.device_type
            )));
        }
        let mut config = self.config.clone();
        config
            .restore(&s.config)
            .map_err(|e| invalid(format!("configuration space: {e}")))?;
        let msix = MsixState {
            table: s.msix_table.clone(),
            pending: s.msix_pending.clone(),
        };
        let current = self.hub.msix(Msix::state);
        if msix.table.len() != current.table.len() || msix.pending.len() != current.pending.len() {
            return Err(invalid(format!(
                "MSI-X of {} vectors where this device has {}",
                msix.pending.len(),
                current.pending.len()
            )));
        }
        check_common(&s.common, &self.common)?;
        let queues = if s.active {
            self.check_queues(s)?
        } else if !s.queues.is_empty() {
            return Err(invalid("queue positions for a device that was not started"));
        } else {
            Vec::new()
        };
        // The device's own part is checked and applied last of the
        // fallible steps: after it, nothing can fail.
        self.device.restore(&s.device)?;
        self.reset_device();
        self.config = config;
        self.hub
            .restore(&msix, &self.config, s.isr, s.generation, s.needs_reset)
            .map_err(|e| invalid(format!("MSI-X: {e}")))?;
        self.common = s.common.clone();
        self.hub.set_vectors(
            self.common.config_msix_vector,
            self.common.queues.iter().map(|q| q.msix_vector),
        );
        self.active = s.active;
        if s.active {
            self.parked = Some(queues);
        }
        self.sync_doorbells();
        Ok(())
    }

    /// The saved queues of a started device, each checked against the
    /// registers and guest RAM (already restored).
    fn check_queues(&self, s: &VirtioPciSnapshot) -> Result<Vec<(u16, QueueState)>, SnapshotError> {
        if s.common.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 == 0 {
            return Err(invalid("a started device without DRIVER_OK"));
        }
        let event_idx = s.common.negotiated() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut out = Vec::new();
        for (i, reg) in s.common.queues.iter().enumerate() {
            let saved: Vec<&SavedQueue> = s
                .queues
                .iter()
                .filter(|q| usize::from(q.index) == i)
                .collect();
            if !reg.enabled {
                if !saved.is_empty() {
                    return Err(invalid(format!("queue {i} is saved but not enabled")));
                }
                continue;
            }
            let [q] = saved.as_slice() else {
                return Err(invalid(format!(
                    "queue {i} is enabled but saved {} times",
                    saved.len()
                )));
            };
            let what = |why: &str| invalid(format!("queue {i}: {why}"));
            if (q.max_size, q.size, q.desc, q.avail, q.used)
                != (reg.max_size, reg.size, reg.desc, reg.driver, reg.device)
                || !q.ready
                || q.event_idx != event_idx
            {
                return Err(what("its position does not match its registers"));
            }
            let queue =
                Queue::try_from(q.state()).map_err(|e| invalid(format!("queue {i}: {e}")))?;
            if !super::servable(&queue, &*self.mem) {
                return Err(what(
                    "its rings are not inside guest RAM (or one is at address 0)",
                ));
            }
            let avail = queue
                .avail_idx(&*self.mem, Ordering::Acquire)
                .map_err(|e| invalid(format!("queue {i}: {e}")))?;
            if (avail - Wrapping(q.next_avail)).0 > q.size {
                return Err(what("the next available entry is more than a ring away"));
            }
            let used = queue
                .used_idx(&*self.mem, Ordering::Acquire)
                .map_err(|e| invalid(format!("queue {i}: {e}")))?;
            if used.0 != q.next_used {
                return Err(what("the next used entry is not the used ring's index"));
            }
            out.push((q.index, q.state()));
        }
        if out.len() != s.queues.len() {
            return Err(invalid("queues saved that the device does not have"));
        }
        Ok(out)
    }
}

/// A saved common configuration fits a device with `ours`' offer, queues
/// and vectors, and keeps the rules the registers do.
fn check_common(s: &CommonConfig, ours: &CommonConfig) -> Result<(), SnapshotError> {
    if s.device_features != ours.device_features {
        return Err(invalid(format!(
            "the device offered features {:#x}, this one offers {:#x}",
            s.device_features, ours.device_features
        )));
    }
    let max: Vec<u16> = s.queues.iter().map(|q| q.max_size).collect();
    let our_max: Vec<u16> = ours.queues.iter().map(|q| q.max_size).collect();
    if max != our_max {
        return Err(invalid(format!(
            "queues of maximum sizes {max:?}, this device has {our_max:?}"
        )));
    }
    if s.msix_vectors != ours.msix_vectors {
        return Err(invalid(format!(
            "{} MSI-X vectors, this device has {}",
            s.msix_vectors, ours.msix_vectors
        )));
    }
    let vector_ok = |v: u16| v == VIRTIO_MSI_NO_VECTOR || v < s.msix_vectors;
    if !vector_ok(s.config_msix_vector) {
        return Err(invalid("the configuration's MSI-X vector is out of range"));
    }
    for (i, q) in s.queues.iter().enumerate() {
        if !q.size.is_power_of_two() || q.size > q.max_size {
            return Err(invalid(format!("queue {i} has size {}", q.size)));
        }
        if !vector_ok(q.msix_vector) {
            return Err(invalid(format!("queue {i}'s MSI-X vector is out of range")));
        }
    }
    let features_ok = s.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0;
    if features_ok && s.driver_features & !s.device_features != 0 {
        return Err(invalid(
            "the driver accepted features that were not offered",
        ));
    }
    if s.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0 && !features_ok {
        return Err(invalid("DRIVER_OK without FEATURES_OK"));
    }
    Ok(())
}
