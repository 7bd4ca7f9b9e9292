//! The device side of virtio: what a transport needs to know about a
//! device (type, features, configuration space, queues) and how it starts
//! and stops one.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

/// "No MSI-X vector" in `config_msix_vector` and `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// How a started device reaches the driver. The transport implements it
/// (MSI-X, or the ISR and INTx); devices call it from their worker.
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers in queue `queue`: raise its interrupt.
    fn signal_queue(&self, queue: u16);
    /// The device configuration changed: new `config_generation`, and a
    /// configuration interrupt.
    fn signal_config(&self);
    /// The device hit an error it cannot go on from (a broken ring, say):
    /// DEVICE_NEEDS_RESET, and a configuration interrupt.
    fn set_needs_reset(&self);
    /// Queue `queue`'s interrupts are signals of `evt` from outside the
    /// VMM (the kernel's vhost): let KVM send them itself where it can (an
    /// irqfd, while the queue's MSI-X vector is unmasked: the queue's
    /// *direct line* is on). While it is off the device reads `evt`
    /// (non-blocking) and passes on with [`VirtioInterrupt::signal_queue`]
    /// what it finds there. Returns whether the transport can do this at
    /// all.
    fn connect_queue(&self, _queue: u16, _evt: &Arc<EventFd>) -> bool {
        false
    }
    /// Undoes [`VirtioInterrupt::connect_queue`] (before the device stops
    /// reading `evt`).
    fn disconnect_queue(&self, _queue: u16) {}
    /// Whether queue `queue`'s direct line is on: KVM takes every signal
    /// of its `evt`, and the device has nothing to read there.
    fn is_direct(&self, _queue: u16) -> bool {
        false
    }
    /// An eventfd signalled whenever a direct line goes on or off, for a
    /// device that reads `evt` only while its line is off; None where no
    /// line can be on (the device then reads every `evt` all along).
    fn direct_changes(&self) -> Option<Arc<EventFd>> {
        None
    }
}

/// One queue the driver enabled, ready for the device.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Its index.
    pub index: u16,
    /// The queue as the driver set it up (size, rings, event index),
    /// already checked against guest memory.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (by doorbell or by a
    /// notify write that reached the transport).
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext<M> {
    /// Guest memory.
    pub mem: Arc<M>,
    /// The features the driver accepted (a subset of those offered).
    pub features: u64,
    /// The queues the driver enabled, by index.
    pub queues: Vec<ActiveQueue>,
    /// Where the device's interrupts go.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Where the worker leaves its queues when its body ends, for a
    /// snapshot.
    pub home: QueueHome,
}

/// The queues at `indices` out of an activation's `queues`, in that order
/// (others are dropped); a missing one fails the activation.
pub fn take_queues<const N: usize>(
    queues: Vec<ActiveQueue>,
    indices: [u16; N],
) -> Result<[ActiveQueue; N], ActivateError> {
    let mut found: [Option<ActiveQueue>; N] = std::array::from_fn(|_| None);
    for q in queues {
        if let Some(i) = indices.iter().position(|&x| x == q.index) {
            found[i] = Some(q);
        }
    }
    let mut taken = Vec::with_capacity(N);
    for (slot, index) in found.into_iter().zip(indices) {
        taken.push(slot.ok_or(ActivateError::QueueMissing(index))?);
    }
    // N queues were pushed: the conversion cannot fail.
    taken
        .try_into()
        .map_err(|_: Vec<ActiveQueue>| ActivateError::QueueMissing(indices[0]))
}

/// Where a worker leaves each queue's state (indices included) when its
/// body ends: the transport reads them after [`VirtioDevice::quiesce`]
/// and starts the device again from them.
#[derive(Debug, Clone, Default)]
pub struct QueueHome(Arc<Mutex<Vec<(u16, QueueState)>>>);

impl QueueHome {
    /// Queue `index` as the worker leaves it.
    pub fn put(&self, index: u16, state: QueueState) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|(i, _)| *i != index);
        v.push((index, state));
    }

    /// The queues left since the last take, by index.
    pub fn take(&self) -> Vec<(u16, QueueState)> {
        let mut v = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        v.sort_by_key(|(i, _)| *i);
        v
    }
}

/// A device's own part of a snapshot: what it keeps beyond its queues
/// (which the transport saves), and what identifies its backing so that a
/// restore onto another device is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeviceSnapshot {
    /// virtio-blk: nothing in flight; the image's size and mode.
    Block {
        /// Capacity in 512-byte sectors.
        capacity: u64,
        /// Read-only.
        read_only: bool,
    },
    /// virtio-net: the card's address (a frame read from the backend and
    /// not delivered is dropped, as a wire may).
    Net {
        /// The MAC address.
        mac: [u8; 6],
    },
    /// virtio-rng: its rate-limit window.
    Rng {
        /// `max-bytes`.
        max_bytes: u64,
        /// `period`, ms.
        period_ms: u64,
        /// Bytes left in the open window.
        left: u64,
        /// Time left in the open window, ms (None: no window open).
        window_left_ms: Option<u64>,
    },
    /// virtio-vsock on Unix sockets: connections are not carried over (the
    /// driver is told with a transport reset when the device starts
    /// again); the guest's CID.
    Vsock {
        /// The guest's CID.
        cid: u64,
    },
}

impl DeviceSnapshot {
    /// The kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Block { .. } => "block",
            Self::Net { .. } => "net",
            Self::Rng { .. } => "rng",
            Self::Vsock { .. } => "vsock",
        }
    }
}

/// Why a device's state could not be captured or put back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The device type cannot be captured.
    #[error("its state cannot be captured (not supported for this device)")]
    Unsupported,
    /// A request is held after a host I/O error (`werror=stop`).
    #[error("a request is held after a host I/O error (cont, or reset the machine, first)")]
    Held,
    /// The worker could not be stopped cleanly.
    #[error("the device's worker did not stop cleanly: {0}")]
    Worker(String),
    /// The state does not fit this device (untrusted input).
    #[error("{0}")]
    Invalid(String),
}

impl<M> std::fmt::Debug for ActivateContext<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateContext")
            .field("features", &format_args!("{:#x}", self.features))
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Why a device could not start; the transport then sets
/// DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not enabled by the driver.
    #[error("queue {0} is not enabled")]
    QueueMissing(u16),
    /// The device is already started (a second DRIVER_OK without reset).
    #[error("the device is already active")]
    AlreadyActive,
    /// The host could not start the worker (threads, eventfds, epoll).
    #[error("cannot start the device's worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// A device's state as plain data, for inspection (and, later, for
/// snapshots).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// The virtio device type (2: block).
    pub device_type: u32,
    /// Whether the device runs (DRIVER_OK and a worker).
    pub active: bool,
    /// The features the driver accepted (0 while inactive).
    pub acked_features: u64,
    /// Requests completed, by the device's own counting.
    pub completed: u64,
    /// Requests popped but not completed: held after a host I/O error
    /// under the `stop` policy.
    pub held: u64,
}

/// A read of `data.len()` bytes at `offset` of a device's configuration
/// space `config`: bytes past its end (or an offset no index can reach)
/// read 0, as the spec asks of a device's unused configuration bytes.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device as a transport drives it.
///
/// Generic over guest memory `M` so that tests use plain anonymous memory.
/// Nothing here may run the data path: [`VirtioDevice::activate`] starts
/// the device's own worker, [`VirtioDevice::reset`] stops it.
pub trait VirtioDevice<M>: Send {
    /// The virtio device ID (1 net, 2 block, ...).
    fn device_type(&self) -> u32;
    /// The features the device offers (device-specific bits, ring
    /// features it handles; the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// The maximum size of each queue (powers of two); their number is the
    /// device's queue count.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// How many MSI-X vectors its PCI function offers: by default one per
    /// queue and one for configuration changes, so that the driver can
    /// give each queue its own. The transport keeps it between 1 and that.
    fn msix_vectors(&self) -> usize {
        self.queue_max_sizes().len() + 1
    }
    /// The device configuration space's length in bytes.
    fn config_len(&self) -> usize;
    /// The driver reads the device configuration space (`data` beyond the
    /// space reads 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the device configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: start the worker on `ctx`.
    fn activate(&mut self, ctx: ActivateContext<M>) -> Result<(), ActivateError>;
    /// Back to the state before activation: stop and join the worker, drop
    /// the queues (requests in flight are abandoned).
    fn reset(&mut self);
    /// The state as plain data.
    fn state(&self) -> DeviceState;

    /// For a snapshot: stops the worker with nothing in flight (each
    /// request popped is completed first); its queues go to the
    /// activation's [`QueueHome`]. The transport starts the device again
    /// with [`VirtioDevice::activate`] from them. Devices whose state
    /// cannot be captured refuse (the default).
    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        Err(SnapshotError::Unsupported)
    }

    /// The device's own part of a snapshot (after [`VirtioDevice::quiesce`]
    /// if it runs).
    fn snapshot(&self) -> Result<DeviceSnapshot, SnapshotError> {
        Err(SnapshotError::Unsupported)
    }

    /// Checks `snapshot` against this device and puts it back (the device
    /// is reset, not running); on an error nothing changed.
    fn restore(&mut self, snapshot: &DeviceSnapshot) -> Result<(), SnapshotError> {
        let _ = snapshot;
        Err(SnapshotError::Unsupported)
    }

    /// A live migration's log of the guest pages the host kernel writes
    /// for this device (None: the migration ended), taken from the
    /// worker's next start. Only devices whose rings the kernel serves
    /// (vhost) have a use for it; ours write guest RAM through its own
    /// dirty bitmap.
    fn set_dirty_log(&mut self, log: Option<Arc<crate::vhost::DirtyLog>>) {
        let _ = log;
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::{Queue, QueueT};
    use vmm_sys_util::eventfd::EventFd;

    use super::{take_queues, ActivateError, ActiveQueue};

    fn queue(index: u16) -> ActiveQueue {
        ActiveQueue {
            index,
            queue: Queue::new(16).unwrap(),
            notify: EventFd::new(0).unwrap(),
        }
    }

    #[test]
    fn take_queues_orders_them_and_names_a_missing_one() {
        let [rx, tx] = take_queues(vec![queue(2), queue(1), queue(0)], [0, 1]).unwrap();
        assert_eq!((rx.index, tx.index), (0, 1));
        let [one] = take_queues(vec![queue(1)], [1]).unwrap();
        assert_eq!(one.index, 1);
        assert!(matches!(
            take_queues(vec![queue(0)], [0, 1]),
            Err(ActivateError::QueueMissing(1))
        ));
        assert!(matches!(
            take_queues(Vec::new(), [0, 1]),
            Err(ActivateError::QueueMissing(0))
        ));
    }
}
