//! [`VirtioVsock`]: the device the transport drives (features, the CID in
//! the configuration space, start and stop of the worker) and
//! [`VsockHandle`], the machine's hold on it once the device belongs to
//! the bus.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::events::EventQueue;
use super::muxer::Muxer;
use super::worker::VsockWorker;
use super::{
    check_cid, CidError, VsockStats, MSIX_VECTORS, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK,
};
use crate::device::{
    ActivateContext, ActivateError, DeviceSnapshot, DeviceState, SnapshotError, VirtioDevice,
};
use crate::worker::{ThreadStart, Worker};
use crate::Memory;

/// The configuration space's length: `guest_cid`.
pub const CONFIG_LEN: usize = 8;

/// The features offered (stream sockets need no feature bit).
pub const FEATURES: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// Counters the worker updates and the handle reads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_malformed: AtomicU64,
    pub connections: AtomicU64,
    pub resets: AtomicU64,
}

/// The machine's hold on a device: its counters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VsockHandle {
    counters: Arc<Counters>,
}

impl VsockHandle {
    /// The counters.
    pub fn stats(&self) -> VsockStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VsockStats {
            rx_packets: get(&c.rx_packets),
            tx_packets: get(&c.tx_packets),
            tx_malformed: get(&c.tx_malformed),
            connections: get(&c.connections),
            resets: get(&c.resets),
        }
    }
}

/// A virtio-vsock device on a listening Unix socket.
pub struct VirtioVsock {
    cid: u64,
    listener: Arc<UnixListener>,
    uds: PathBuf,
    counters: Arc<Counters>,
    worker: Worker,
    acked: u64,
    /// The event queue; its transport reset is owed once the connections
    /// were lost (a snapshot stopped the worker, or one was loaded).
    event: EventQueue,
}

impl std::fmt::Debug for VirtioVsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioVsock")
            .field("cid", &self.cid)
            .field("uds", &self.uds)
            .field("active", &self.worker.is_running())
            .finish_non_exhaustive()
    }
}

/// Why a device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A CID out of range.
    #[error(transparent)]
    Cid(#[from] CidError),
    /// The listener could not be made non-blocking, or the thread started.
    #[error("cannot set up the device: {0}")]
    Io(#[from] std::io::Error),
}

impl VirtioVsock {
    /// A device for the guest CID `cid`, taking host connections on
    /// `listener` (bound at `uds`; guest connections to port P go to
    /// `uds_P`). Its worker thread (made now, parked until the guest
    /// activates the device) runs `start` first.
    pub fn new(
        cid: u64,
        listener: UnixListener,
        uds: &Path,
        start: Option<ThreadStart>,
    ) -> Result<Self, VsockError> {
        let cid = check_cid(cid)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            cid,
            listener: Arc::new(listener),
            uds: uds.to_owned(),
            counters: Arc::default(),
            worker: Worker::new("virtio-vsock", start)?,
            acked: 0,
            event: EventQueue::default(),
        })
    }

    /// A handle for the machine (counters).
    pub fn handle(&self) -> VsockHandle {
        VsockHandle {
            counters: Arc::clone(&self.counters),
        }
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }
}

impl<M: Memory> VirtioDevice<M> for VirtioVsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn msix_vectors(&self) -> usize {
        MSIX_VECTORS
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        crate::device::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-vsock: configuration write of {} bytes at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext<M>) -> Result<(), ActivateError> {
        if self.worker.is_running() {
            return Err(ActivateError::AlreadyActive);
        }
        let data = self
            .event
            .start(ctx.queues, ctx.home.clone(), &*ctx.mem, &*ctx.interrupt);
        let [rx, tx] = crate::device::take_queues(data, [RX_QUEUE, TX_QUEUE])?;
        let muxer = Muxer::new(
            self.cid,
            Arc::clone(&self.listener),
            self.uds.clone(),
            Arc::clone(&self.counters),
        );
        let worker = VsockWorker::new(
            ctx.mem,
            rx.queue,
            tx.queue,
            ctx.interrupt,
            muxer,
            Arc::clone(&self.counters),
            self.cid,
            ctx.home.clone(),
        );
        let (rx_kick, tx_kick) = (rx.notify, tx.notify);
        self.worker
            .start(move |waiter| worker.run(waiter, rx_kick, tx_kick))
            .map_err(ActivateError::Worker)?;
        self.acked = ctx.features;
        Ok(())
    }

    fn reset(&mut self) {
        // Every connection goes with the worker; host connections not yet
        // accepted wait in the listener's backlog.
        self.worker.stop();
        self.acked = 0;
        self.event.reset();
    }

    fn state(&self) -> DeviceState {
        let s = self.handle().stats();
        DeviceState {
            device_type: VIRTIO_ID_VSOCK,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: s.rx_packets + s.tx_packets,
            held: 0,
        }
    }

    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        // The connections end with the worker (their host sockets close):
        // the driver hears of it when the device starts again.
        self.worker.stop();
        self.event.park();
        self.event.reset_transport = true;
        Ok(())
    }

    fn snapshot(&self) -> Result<DeviceSnapshot, SnapshotError> {
        Ok(DeviceSnapshot::Vsock { cid: self.cid })
    }

    fn restore(&mut self, snapshot: &DeviceSnapshot) -> Result<(), SnapshotError> {
        check_snapshot(snapshot, self.cid)?;
        self.event.reset_transport = true;
        Ok(())
    }
}

/// A socket device's own part of a snapshot checked against a device for
/// guest CID `ours` (ours or the kernel's alike: the CID is all it is).
pub(super) fn check_snapshot(snapshot: &DeviceSnapshot, ours: u64) -> Result<(), SnapshotError> {
    match snapshot {
        DeviceSnapshot::Vsock { cid } if *cid == ours => Ok(()),
        DeviceSnapshot::Vsock { cid } => Err(SnapshotError::Invalid(format!(
            "the snapshot's guest CID is {cid}, this device's {ours}"
        ))),
        other => Err(SnapshotError::Invalid(format!(
            "a {} snapshot given to a socket device",
            other.kind()
        ))),
    }
}
