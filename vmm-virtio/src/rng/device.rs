//! [`VirtioRng`]: the device the transport drives, and [`RngHandle`], the
//! machine's hold on it once the device belongs to the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::timerfd::TimerFd;

use super::limit::Budget;
use super::worker::RngWorker;
use super::{EntropySource, RateLimit, RngStats, QUEUE_SIZE, VIRTIO_ID_RNG};
use crate::device::{
    ActivateContext, ActivateError, DeviceSnapshot, DeviceState, SnapshotError, VirtioDevice,
};
use crate::worker::{ThreadStart, Worker};
use crate::Memory;

/// The features offered (ring features only: the device has none).
pub const FEATURES: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// Counters the worker updates and the handle reads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub bad_chains: AtomicU64,
    pub throttled: AtomicU64,
}

/// What outlives one activation: the budget (a reset does not refill
/// it) and the timer that ends a spent window (made with the device, so
/// that the worker creates no file descriptor).
pub(super) struct Shared {
    pub budget: Mutex<Budget>,
    pub timer: Mutex<TimerFd>,
    pub counters: Counters,
}

/// The machine's hold on an entropy device: its counters and its limit.
#[derive(Clone)]
pub struct RngHandle {
    shared: Arc<Shared>,
    limit: RateLimit,
}

impl std::fmt::Debug for RngHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RngHandle")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl RngHandle {
    /// The counters.
    pub fn stats(&self) -> RngStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RngStats {
            requests: get(&c.requests),
            bytes: get(&c.bytes),
            bad_chains: get(&c.bad_chains),
            throttled: get(&c.throttled),
        }
    }

    /// The rate limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }
}

/// A virtio-rng device on an entropy source.
pub struct VirtioRng {
    source: Arc<dyn EntropySource>,
    limit: RateLimit,
    shared: Arc<Shared>,
    worker: Worker,
    acked: u64,
}

impl std::fmt::Debug for VirtioRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioRng")
            .field("limit", &self.limit)
            .field("active", &self.worker.is_running())
            .finish_non_exhaustive()
    }
}

impl VirtioRng {
    /// A device on `source` under `limit`; its worker thread (made now,
    /// parked until the guest activates the device) runs `start` first.
    pub fn new(
        source: Arc<dyn EntropySource>,
        limit: RateLimit,
        start: Option<ThreadStart>,
    ) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(std::io::Error::from)?;
        Ok(Self {
            source,
            limit,
            shared: Arc::new(Shared {
                budget: Mutex::new(Budget::new(limit)),
                timer: Mutex::new(timer),
                counters: Counters::default(),
            }),
            worker: Worker::new("virtio-rng", start)?,
            acked: 0,
        })
    }

    /// A handle for the machine (counters, limit).
    pub fn handle(&self) -> RngHandle {
        RngHandle {
            shared: Arc::clone(&self.shared),
            limit: self.limit,
        }
    }
}

impl<M: Memory> VirtioDevice<M> for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-rng: configuration write of {} bytes at {offset:#x} ignored (it has none)",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext<M>) -> Result<(), ActivateError> {
        if self.worker.is_running() {
            return Err(ActivateError::AlreadyActive);
        }
        let q = ctx
            .queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::QueueMissing(0))?;
        let worker = RngWorker::new(
            ctx.mem,
            q.queue,
            ctx.interrupt,
            Arc::clone(&self.source),
            Arc::clone(&self.shared),
            ctx.home,
        );
        let kick = q.notify;
        self.worker
            .start(move |waiter| worker.run(waiter, kick))
            .map_err(ActivateError::Worker)?;
        self.acked = ctx.features;
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.stop();
        self.acked = 0;
    }

    fn state(&self) -> DeviceState {
        DeviceState {
            device_type: VIRTIO_ID_RNG,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: self.handle().stats().requests,
            held: 0,
        }
    }

    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        // Each request is filled and used before the next is popped.
        self.worker.stop();
        Ok(())
    }

    fn snapshot(&self) -> Result<DeviceSnapshot, SnapshotError> {
        let (left, window_left_ms) = self.budget().saved(std::time::Instant::now());
        Ok(DeviceSnapshot::Rng {
            max_bytes: self.limit.max_bytes(),
            period_ms: u64::try_from(self.limit.period().as_millis()).unwrap_or(u64::MAX),
            left,
            window_left_ms,
        })
    }

    fn restore(&mut self, snapshot: &DeviceSnapshot) -> Result<(), SnapshotError> {
        let DeviceSnapshot::Rng {
            max_bytes,
            period_ms,
            left,
            window_left_ms,
        } = snapshot
        else {
            return Err(SnapshotError::Invalid(format!(
                "a {} snapshot given to an entropy device",
                snapshot.kind()
            )));
        };
        let period = u64::try_from(self.limit.period().as_millis()).unwrap_or(u64::MAX);
        if (*max_bytes, *period_ms) != (self.limit.max_bytes(), period) {
            return Err(SnapshotError::Invalid(format!(
                "the snapshot's rate limit is max-bytes={max_bytes},period={period_ms}, this \
                 device's max-bytes={},period={period}",
                self.limit.max_bytes()
            )));
        }
        self.budget()
            .restore(*left, *window_left_ms, std::time::Instant::now())
            .map_err(SnapshotError::Invalid)
    }
}

impl VirtioRng {
    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.shared.budget.lock().unwrap_or_else(|e| e.into_inner())
    }
}
