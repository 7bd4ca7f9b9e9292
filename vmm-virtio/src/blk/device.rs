//! [`VirtioBlk`]: the device the transport drives (features, configuration
//! space, start and stop of the worker) and [`BlockHandle`], the machine's
//! hold on it once the device belongs to the bus.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::io::Disk;
use super::request::Limits;
use super::uring::{self, Uring};
use super::worker::{BlkWorker, UringHome};
use super::{
    Aio, BlockConfig, BlockError, BlockEvents, BlockStats, ErrorPolicy, ID_BYTES, SECTOR_SIZE,
};
use crate::device::{
    ActivateContext, ActivateError, DeviceSnapshot, DeviceState, SnapshotError, VirtioDevice,
};
use crate::worker::Worker;
use crate::Memory;

/// The virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// The configuration space's length: through `write_zeroes_may_unmap` and
/// its padding (no secure erase, no zoned fields).
pub const CONFIG_LEN: usize = 60;
/// The most sectors in one discard or write-zeroes segment (QEMU's
/// `BDRV_REQUEST_MAX_SECTORS`).
pub const MAX_RANGE_SECTORS: u32 = (i32::MAX as u32) >> 9;

/// Counters the worker updates and the handle reads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub invalid: AtomicU64,
    pub host_errors: AtomicU64,
}

/// What the device, its worker and its handles share.
pub(super) struct Shared {
    /// Written by [`BlockHandle::retry`].
    pub retry: EventFd,
    pub events: Arc<dyn BlockEvents>,
    pub policy: ErrorPolicy,
    pub stats: Counters,
    /// How many requests are held.
    pub held: AtomicU64,
    /// The worker is being stopped for a snapshot: it completes what is
    /// in flight before it ends.
    pub quiescing: AtomicBool,
}

/// The machine's hold on a disk after the device went to the bus: retry
/// held requests, read counters. Cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct BlockHandle {
    shared: Arc<Shared>,
    disk: Arc<Disk>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for BlockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHandle")
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl BlockHandle {
    /// Tries held requests again (QEMU's `cont` after an `io-error` stop).
    /// Nothing held: the worker just looks at the queue.
    pub fn retry(&self) {
        if let Err(e) = self.shared.retry.write(1) {
            log::error!("virtio-blk: cannot wake the worker to retry: {e}");
        }
    }

    /// Takes the image's lock (after an incoming migration: the source
    /// let it go).
    pub fn lock_image(&self) -> Result<(), BlockError> {
        self.disk.lock(&self.path)
    }

    /// Lets the image's lock go (a migration's source, done).
    pub fn unlock_image(&self) {
        self.disk.unlock();
    }

    /// Whether a request is held after a host error.
    pub fn is_held(&self) -> bool {
        self.shared.held.load(Ordering::Acquire) > 0
    }

    /// The counters.
    pub fn stats(&self) -> BlockStats {
        let c = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BlockStats {
            reads: get(&c.reads),
            writes: get(&c.writes),
            flushes: get(&c.flushes),
            discards: get(&c.discards),
            read_bytes: get(&c.read_bytes),
            written_bytes: get(&c.written_bytes),
            invalid: get(&c.invalid),
            host_errors: get(&c.host_errors),
        }
    }
}

/// A virtio-blk device on an open image.
pub struct VirtioBlk {
    disk: Arc<Disk>,
    path: std::path::PathBuf,
    config: [u8; CONFIG_LEN],
    features: u64,
    queue_size: u16,
    id: [u8; ID_BYTES],
    shared: Arc<Shared>,
    /// With `aio=io_uring`: the disk's ring, between activations.
    uring: Option<UringHome>,
    worker: Worker,
    acked: u64,
}

impl std::fmt::Debug for VirtioBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("capacity", &self.disk.capacity())
            .field("read_only", &self.disk.read_only())
            .field("direct_alignment", &self.disk.alignment())
            .field("io_uring", &self.uring.is_some())
            .field("active", &self.worker.is_running())
            .finish_non_exhaustive()
    }
}

impl VirtioBlk {
    /// Opens `config.path` and describes it; host I/O errors will be told
    /// to `events`.
    pub fn new(config: &BlockConfig, events: Arc<dyn BlockEvents>) -> Result<Self, BlockError> {
        Self::with_thread_start(config, events, None)
    }

    /// [`VirtioBlk::new`], its worker thread (made now, parked until the
    /// guest activates the device) running `start` first.
    pub fn with_thread_start(
        config: &BlockConfig,
        events: Arc<dyn BlockEvents>,
        start: Option<crate::worker::ThreadStart>,
    ) -> Result<Self, BlockError> {
        let q = config.queue_size;
        if !q.is_power_of_two() || !(4..=32768).contains(&q) {
            return Err(BlockError::QueueSize(q));
        }
        let mut id = [0u8; ID_BYTES];
        if let Some(serial) = &config.serial {
            let printable = serial.bytes().all(|b| (b' '..=b'~').contains(&b));
            if serial.len() > ID_BYTES || !printable {
                return Err(BlockError::Serial(serial.clone()));
            }
            id[..serial.len()].copy_from_slice(serial.as_bytes());
        }
        let disk = Disk::open_with(&config.path, config.read_only, config.cache, config.lock)?;
        // The ring is made here, at build time (on the main thread, before
        // any seccomp filter): `aio=io_uring` on a host without io_uring is
        // refused now, not when the guest first uses the disk; the default
        // falls back to threads.
        let uring = match config.aio {
            Aio::Threads => None,
            Aio::IoUring => {
                Some(Uring::new(q).map_err(|e| BlockError::IoUring(uring::unavailable(&e)))?)
            }
            Aio::Auto => Uring::new(q)
                .inspect_err(|e| {
                    log::warn!(
                        "{}: {}; requests one at a time (aio=threads)",
                        config.path.display(),
                        uring::unavailable(e)
                    );
                })
                .ok(),
        }
        .map(|ring| Arc::new(Mutex::new(Some(ring))));
        let mut features = 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        features |= if config.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES
        };
        let shared = Arc::new(Shared {
            retry: EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            events,
            policy: config.errors,
            stats: Counters::default(),
            held: AtomicU64::new(0),
            quiescing: AtomicBool::new(false),
        });
        Ok(Self {
            config: config_space(disk.capacity(), q),
            disk: Arc::new(disk),
            path: config.path.clone(),
            features,
            queue_size: q,
            id,
            shared,
            uring,
            worker: Worker::new("virtio-blk", start).map_err(BlockError::EventFd)?,
            acked: 0,
        })
    }

    /// A handle for the machine (retry, counters).
    pub fn handle(&self) -> BlockHandle {
        BlockHandle {
            shared: Arc::clone(&self.shared),
            disk: Arc::clone(&self.disk),
            path: self.path.clone(),
        }
    }

    /// The capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The image, for tests that make it fail.
    #[cfg(test)]
    pub(crate) fn disk(&self) -> Arc<Disk> {
        Arc::clone(&self.disk)
    }

    fn limits(&self, features: u64) -> Limits {
        Limits {
            capacity: self.disk.capacity(),
            read_only: self.disk.read_only(),
            features,
            max_descriptors: usize::from(self.queue_size),
            max_discard_sectors: MAX_RANGE_SECTORS,
            max_discard_seg: 1,
            max_write_zeroes_sectors: MAX_RANGE_SECTORS,
            max_write_zeroes_seg: 1,
        }
    }
}

/// The configuration space (`struct virtio_blk_config`) for a disk of
/// `capacity` sectors and queues of `queue_size`.
fn config_space(capacity: u64, queue_size: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &capacity.to_le_bytes());
    // seg_max: the chain also needs the header and the status.
    put(12, &u32::from(queue_size - 2).to_le_bytes());
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // num_queues (only read with VIRTIO_BLK_F_MQ, which is not offered).
    put(34, &1u16.to_le_bytes());
    put(36, &MAX_RANGE_SECTORS.to_le_bytes());
    put(40, &1u32.to_le_bytes());
    put(44, &1u32.to_le_bytes());
    put(48, &MAX_RANGE_SECTORS.to_le_bytes());
    put(52, &1u32.to_le_bytes());
    put(56, &[1]);
    c
}

impl<M: Memory> VirtioDevice<M> for VirtioBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.queue_size]
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE.
        log::debug!(
            "virtio-blk: configuration write of {} bytes at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext<M>) -> Result<(), ActivateError> {
        if self.worker.is_running() {
            return Err(ActivateError::AlreadyActive);
        }
        let Some(queue) = ctx.queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::QueueMissing(0));
        };
        let retry = self
            .shared
            .retry
            .try_clone()
            .map_err(ActivateError::Worker)?;
        let worker = BlkWorker::new(
            ctx.mem,
            queue.queue,
            queue.index,
            ctx.interrupt,
            Arc::clone(&self.disk),
            self.limits(ctx.features),
            self.id,
            Arc::clone(&self.shared),
            ctx.home,
        );
        let kick = queue.notify;
        let home = self.uring.clone();
        self.worker
            .start(move |waiter| worker.run(waiter, kick, retry, home))
            .map_err(ActivateError::Worker)?;
        self.acked = ctx.features;
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.stop();
        self.shared.held.store(0, Ordering::Release);
        // A retry asked for before the reset is drained by the next
        // activation's worker, on its own thread (the vCPU thread that
        // resets the device reads no file descriptor).
        self.acked = 0;
    }

    fn state(&self) -> DeviceState {
        let s = self.handle().stats();
        DeviceState {
            device_type: VIRTIO_ID_BLOCK,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: s.reads + s.writes + s.flushes + s.discards,
            held: self.shared.held.load(Ordering::Acquire),
        }
    }

    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        // A held request was popped and may not be completed: its chain
        // would be lost.
        if self.shared.held.load(Ordering::Acquire) > 0 {
            return Err(SnapshotError::Held);
        }
        self.shared.quiescing.store(true, Ordering::Release);
        self.worker.stop();
        self.shared.quiescing.store(false, Ordering::Release);
        if self.shared.held.load(Ordering::Acquire) > 0 {
            // Held while stopping: the chain stays popped. The guest's
            // request would hang after a restore; say so.
            log::warn!("virtio-blk: a request was held as the worker stopped for a snapshot");
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<DeviceSnapshot, SnapshotError> {
        if self.shared.held.load(Ordering::Acquire) > 0 {
            return Err(SnapshotError::Held);
        }
        Ok(DeviceSnapshot::Block {
            capacity: self.disk.capacity(),
            read_only: self.disk.read_only(),
        })
    }

    fn restore(&mut self, snapshot: &DeviceSnapshot) -> Result<(), SnapshotError> {
        match snapshot {
            DeviceSnapshot::Block {
                capacity,
                read_only,
            } => {
                if *capacity != self.disk.capacity() || *read_only != self.disk.read_only() {
                    return Err(SnapshotError::Invalid(format!(
                        "the snapshot's disk has {capacity} sectors{}, this one {}{}",
                        if *read_only { " (read-only)" } else { "" },
                        self.disk.capacity(),
                        if self.disk.read_only() {
                            " (read-only)"
                        } else {
                            ""
                        }
                    )));
                }
                Ok(())
            }
            other => Err(SnapshotError::Invalid(format!(
                "a {} snapshot given to a block device",
                other.kind()
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
