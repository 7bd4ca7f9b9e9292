//! [`VirtioVsock`]: the device the transport drives (features, the CID in
//! the configuration space, start and stop of the worker) and
//! [`VsockHandle`], the machine's hold on it once the device belongs to
//! the bus.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

use super::muxer::Muxer;
use super::worker::VsockWorker;
use super::{check_cid, CidError, VsockStats, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
use crate::device::{ActivateContext, ActivateError, DeviceState, VirtioDevice};
use crate::worker::{ThreadStart, Worker};
use crate::Memory;

/// The configuration space's length: `guest_cid`.
pub const CONFIG_LEN: usize = 8;

/// The features offered (stream sockets need no feature bit).
pub const FEATURES: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;

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
        let mut rx = None;
        let mut tx = None;
        for q in ctx.queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                // The event queue: nothing is ever sent on it.
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::QueueMissing(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::QueueMissing(TX_QUEUE))?;
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
}
