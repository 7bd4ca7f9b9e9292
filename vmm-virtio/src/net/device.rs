//! [`VirtioNet`]: the device the transport drives (features,
//! configuration space, start and stop of the worker) and [`NetHandle`],
//! the machine's hold on it once the device belongs to the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::worker::NetWorker;
use super::{MacAddr, NetBackend, NetStats, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_NET};
use crate::device::{
    ActivateContext, ActivateError, DeviceSnapshot, DeviceState, SnapshotError, VirtioDevice,
};
use crate::worker::{ThreadStart, Worker};
use crate::Memory;

/// The configuration space's length: `mac`, `status`,
/// `max_virtqueue_pairs` (read only with MQ, which is not offered).
pub const CONFIG_LEN: usize = 10;

/// The features offered.
pub const FEATURES: u64 = 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX;

/// Counters the worker updates and the handle reads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub rx_bad_buffers: AtomicU64,
}

/// The machine's hold on a card: its counters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NetHandle {
    pub(super) counters: Arc<Counters>,
}

impl NetHandle {
    /// The counters.
    pub fn stats(&self) -> NetStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&c.rx_frames),
            rx_bytes: get(&c.rx_bytes),
            rx_dropped: get(&c.rx_dropped),
            tx_frames: get(&c.tx_frames),
            tx_bytes: get(&c.tx_bytes),
            tx_dropped: get(&c.tx_dropped),
            rx_bad_buffers: get(&c.rx_bad_buffers),
        }
    }
}

/// A virtio-net card on a backend.
pub struct VirtioNet {
    backend: Arc<dyn NetBackend>,
    mac: MacAddr,
    counters: Arc<Counters>,
    worker: Worker,
    acked: u64,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &format_args!("{}", self.mac))
            .field("active", &self.worker.is_running())
            .finish_non_exhaustive()
    }
}

impl VirtioNet {
    /// A card with address `mac` on `backend`; its worker thread (made
    /// now, parked until the guest activates the device) runs `start`
    /// first.
    pub fn new(
        backend: Arc<dyn NetBackend>,
        mac: MacAddr,
        start: Option<ThreadStart>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            backend,
            mac,
            counters: Arc::default(),
            worker: Worker::new("virtio-net", start)?,
            acked: 0,
        })
    }

    /// A handle for the machine (counters).
    pub fn handle(&self) -> NetHandle {
        NetHandle {
            counters: Arc::clone(&self.counters),
        }
    }

    /// The card's address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }
}

/// The configuration space of a card with address `mac`: the link is
/// always up, one queue pair.
pub(super) fn config_space(mac: MacAddr) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c
}

impl<M: Memory> VirtioDevice<M> for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = config_space(self.mac);
        crate::device::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only in legacy devices; nothing else is.
        log::debug!(
            "virtio-net: configuration write of {} bytes at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext<M>) -> Result<(), ActivateError> {
        if self.worker.is_running() {
            return Err(ActivateError::AlreadyActive);
        }
        let [rx, tx] = crate::device::take_queues(ctx.queues, [RX_QUEUE, TX_QUEUE])?;
        let worker = NetWorker::new(
            ctx.mem,
            rx.queue,
            tx.queue,
            ctx.interrupt,
            Arc::clone(&self.backend),
            ctx.features,
            Arc::clone(&self.counters),
            ctx.home,
        );
        let (rx_kick, tx_kick) = (rx.notify, tx.notify);
        self.worker
            .start(move |waiter| worker.run(waiter, rx_kick, tx_kick))
            .map_err(ActivateError::Worker)?;
        self.acked = ctx.features;
        Ok(())
    }

    fn reset(&mut self) {
        // A frame held for want of buffers goes with the worker.
        self.worker.stop();
        self.acked = 0;
    }

    fn state(&self) -> DeviceState {
        let s = self.handle().stats();
        DeviceState {
            device_type: VIRTIO_ID_NET,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: s.rx_frames + s.tx_frames,
            held: 0,
        }
    }

    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        // Each transmit chain is sent and used before the next is popped;
        // receive chains popped and not used are given back as the worker
        // ends.
        self.worker.stop();
        Ok(())
    }

    fn snapshot(&self) -> Result<DeviceSnapshot, SnapshotError> {
        Ok(DeviceSnapshot::Net { mac: self.mac.0 })
    }

    fn restore(&mut self, snapshot: &DeviceSnapshot) -> Result<(), SnapshotError> {
        restore_mac(snapshot, self.mac)
    }
}

/// A card's own part of a snapshot checked against a card with address
/// `ours` (ours or the kernel's rings alike: the address is all it is).
pub(super) fn restore_mac(snapshot: &DeviceSnapshot, ours: MacAddr) -> Result<(), SnapshotError> {
    match snapshot {
        DeviceSnapshot::Net { mac } if *mac == ours.0 => Ok(()),
        DeviceSnapshot::Net { mac } => Err(SnapshotError::Invalid(format!(
            "the snapshot's card has address {}, this one {ours}",
            MacAddr(*mac),
        ))),
        other => Err(SnapshotError::Invalid(format!(
            "a {} snapshot given to a network card",
            other.kind()
        ))),
    }
}
