//! [`VhostNet`]: virtio-net whose receive and transmit rings the host
//! kernel's vhost-net (`/dev/vhost-net`) serves straight from the tap
//! (`--netdev tap,...,vhost=on`).
//!
//! The device file is opened, owned and asked its features by the machine
//! at build time, on the main thread ([`crate::vhost::VhostFile`]). When
//! the driver starts the device, its worker sets the tap's offloads from
//! the accepted features (TUNSETOFFLOAD, as [`super::VirtioNet`] does),
//! gives the kernel the features it knows of those, guest RAM and both
//! rings (kick: the queue's doorbell eventfd; call: an eventfd of ours),
//! then the tap as each ring's backend (VHOST_NET_SET_BACKEND), and
//! forwards the kernel's interrupts to the queues' vectors. When the
//! driver resets the device, or a snapshot stops it, the worker takes the
//! tap back from both rings (backend -1: the kernel finishes what it
//! holds and moves nothing more) and reads where each ring stopped
//! (VHOST_GET_VRING_BASE for the next available index, guest RAM for the
//! used one) into the queues it leaves for the transport, as our own
//! worker does: a snapshot of a card on vhost-net is the same virtio state
//! as one without.
//!
//! During a live migration the card runs with a [`DirtyLog`]: the worker
//! starts again with the log's base (VHOST_SET_LOG_BASE), VHOST_F_LOG_ALL
//! and each ring's used area logged, so that every guest page the kernel
//! writes is marked for the migration's next pass.
//!
//! The tap keeps its 12-byte virtio header: with VIRTIO_F_VERSION_1
//! (always accepted: the transport is modern only) the kernel leaves the
//! header to the socket and copies it as is, as our own worker does.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{config_space, Counters, CONFIG_LEN, FEATURES};
use super::{
    offload_flags, MacAddr, NetBackend, NetHandle, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_NET,
};
use crate::device::{
    ActivateContext, ActivateError, ActiveQueue, DeviceSnapshot, DeviceState, QueueHome,
    SnapshotError, VirtioDevice, VirtioInterrupt,
};
use crate::vhost::{
    forward_calls, host_address, read_back, DirtyLog, IoctlError, VhostFile, VringFds,
    VHOST_F_LOG_ALL,
};
use crate::worker::{ThreadStart, Waiter, Worker};
use crate::Memory;

/// Where the kernel's vhost-net is.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// The vhost-net ioctl requests a started card's worker makes besides
/// [`crate::vhost::worker_ioctls`], for the VMM's seccomp list.
pub fn worker_ioctls() -> [u64; 1] {
    [crate::vhost::net_set_backend_ioctl()]
}

/// The features that are the rings' and the transport's, which the
/// kernel moves the buffers by: offered (and passed on) only if the
/// kernel's vhost-net has them. The rest of [`FEATURES`] (the MAC, the
/// link status, the offloads) are ours or the tap's.
const KERNEL_BITS: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_F_VERSION_1;

/// The features a card on a kernel offering `kernel` offers the driver.
pub fn offered_features(kernel: u64) -> u64 {
    FEATURES & !KERNEL_BITS | FEATURES & KERNEL_BITS & kernel
}

/// What the kernel is told of the features the driver accepted
/// (VHOST_SET_FEATURES refuses bits it does not know): the rings' and the
/// transport's, VERSION_1 always.
pub fn kernel_features(acked: u64) -> u64 {
    (acked | 1 << VIRTIO_F_VERSION_1) & KERNEL_BITS
}

/// Why a card could not be had on vhost-net.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    /// `/dev/vhost-net` could not be opened.
    #[error("cannot open {VHOST_NET_PATH}: {0}")]
    Open(#[source] io::Error),
    /// An ioctl failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
    /// The kernel's vhost-net is too old for a modern device.
    #[error("the kernel's vhost-net does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// No worker thread or eventfd.
    #[error("cannot make the device's thread or eventfds: {0}")]
    Thread(#[source] io::Error),
}

impl From<crate::vhost::OpenError> for VhostNetError {
    fn from(e: crate::vhost::OpenError) -> Self {
        match e {
            crate::vhost::OpenError::Open(e) => Self::Open(e),
            crate::vhost::OpenError::Ioctl(e) => Self::Ioctl(e),
        }
    }
}

/// Opens [`VHOST_NET_PATH`] for a card (at build time, on the main
/// thread).
pub fn open_vhost_net() -> Result<VhostFile, VhostNetError> {
    Ok(VhostFile::open(std::path::Path::new(VHOST_NET_PATH))?)
}

/// A virtio-net card whose rings the kernel's vhost-net serves.
pub struct VhostNet {
    vhost: Arc<VhostFile>,
    backend: Arc<dyn NetBackend>,
    mac: MacAddr,
    calls: [Arc<EventFd>; 2],
    counters: Arc<Counters>,
    worker: Worker,
    acked: u64,
    /// The live migration's log, while one runs.
    log: Option<Arc<DirtyLog>>,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("mac", &format_args!("{}", self.mac))
            .field("active", &self.worker.is_running())
            .finish_non_exhaustive()
    }
}

impl VhostNet {
    /// A card with address `mac` on `backend` (a tap: the kernel reads and
    /// writes its fd), served by the owned vhost-net file `vhost`; its
    /// worker thread (made now, parked until the guest activates the
    /// device) runs `start` first.
    pub fn new(
        vhost: VhostFile,
        backend: Arc<dyn NetBackend>,
        mac: MacAddr,
        start: Option<ThreadStart>,
    ) -> Result<Self, VhostNetError> {
        if vhost.features() & 1 << VIRTIO_F_VERSION_1 == 0 {
            return Err(VhostNetError::NoVersion1);
        }
        let new = || EventFd::new(EFD_NONBLOCK).map_err(VhostNetError::Thread);
        Ok(Self {
            vhost: Arc::new(vhost),
            backend,
            mac,
            calls: [Arc::new(new()?), Arc::new(new()?)],
            counters: Arc::default(),
            worker: Worker::new("vhost-net", start).map_err(VhostNetError::Thread)?,
            acked: 0,
            log: None,
        })
    }

    /// A handle for the machine (its counters stay 0: the kernel moves
    /// the frames).
    pub fn handle(&self) -> NetHandle {
        NetHandle {
            counters: Arc::clone(&self.counters),
        }
    }
}

/// The worker's set-up of the kernel's rings, its wait, and the stop.
struct Body<M: Memory> {
    vhost: Arc<VhostFile>,
    backend: Arc<dyn NetBackend>,
    calls: [Arc<EventFd>; 2],
    mem: Arc<M>,
    features: u64,
    queues: [ActiveQueue; 2],
    interrupt: Arc<dyn VirtioInterrupt>,
    home: QueueHome,
    log: Option<Arc<DirtyLog>>,
}

impl<M: Memory> Body<M> {
    fn start(&self) -> Result<(), IoctlError> {
        let flags = offload_flags(self.features);
        if let Err(e) = self.backend.set_offload(flags) {
            log::warn!("vhost-net: cannot set offloads {flags:#x} on the tap: {e}");
            let _ = self.backend.set_offload(0);
        }
        let v = &*self.vhost;
        // RAM first: the kernel checks the log against it when it takes
        // VHOST_F_LOG_ALL.
        v.set_mem_table(&*self.mem)?;
        let mut features = kernel_features(self.features);
        if let Some(log) = &self.log {
            v.set_log_base(log)?;
            features |= VHOST_F_LOG_ALL;
        }
        v.set_features(features)?;
        for (i, q) in self.queues.iter().enumerate() {
            v.set_vring(
                i as u32,
                &q.queue,
                |a| host_address(&*self.mem, a),
                VringFds {
                    kick: q.notify.as_raw_fd(),
                    call: self.calls[i].as_raw_fd(),
                },
                self.log.is_some(),
            )?;
        }
        for i in 0..2 {
            v.net_set_backend(i, self.backend.fd().as_raw_fd())?;
        }
        Ok(())
    }

    /// Takes the tap back from both rings, reads where they stopped and
    /// leaves them for the transport.
    fn stop(&mut self) {
        for (i, q) in self.queues.iter_mut().enumerate() {
            let i = i as u32;
            if let Err(e) = self.vhost.net_set_backend(i, -1) {
                log::warn!("vhost-net: cannot take the tap back from ring {i}: {e}");
            }
            match read_back(&self.vhost, i, &mut q.queue, &*self.mem) {
                Ok(()) => log::debug!(
                    "vhost-net: ring {i} stopped at available index {}, used index {}",
                    q.queue.next_avail(),
                    q.queue.next_used()
                ),
                Err(e) => {
                    // A snapshot of this would not be the kernel's state.
                    log::error!("vhost-net: cannot read where ring {i} stopped: {e}");
                    continue;
                }
            }
            self.home.put(q.index, q.queue.state());
        }
    }

    fn run(mut self, waiter: Waiter) {
        if let Err(e) = self.start() {
            log::error!("vhost-net: cannot start the kernel's device: {e}");
            self.stop();
            self.interrupt.set_needs_reset();
            return;
        }
        let calls = [(&self.calls[0], RX_QUEUE), (&self.calls[1], TX_QUEUE)];
        if !forward_calls("vhost-net", &waiter, &calls, &*self.interrupt) {
            self.interrupt.set_needs_reset();
        }
        self.stop();
    }
}

impl<M: Memory> VirtioDevice<M> for VhostNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        offered_features(self.vhost.features())
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&config_space(self.mac), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "vhost-net: configuration write of {} bytes at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext<M>) -> Result<(), ActivateError> {
        if self.worker.is_running() {
            return Err(ActivateError::AlreadyActive);
        }
        let [rx, tx] = crate::device::take_queues(ctx.queues, [RX_QUEUE, TX_QUEUE])?;
        let body = Body {
            vhost: Arc::clone(&self.vhost),
            backend: Arc::clone(&self.backend),
            calls: self.calls.clone(),
            mem: ctx.mem,
            features: ctx.features,
            queues: [rx, tx],
            interrupt: ctx.interrupt,
            home: ctx.home,
            log: self.log.clone(),
        };
        self.worker
            .start(move |waiter| body.run(waiter))
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
            device_type: VIRTIO_ID_NET,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: 0,
            held: 0,
        }
    }

    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        // The worker's stop takes the tap back (the kernel finishes what
        // it holds) and leaves the rings as the kernel left them.
        self.worker.stop();
        Ok(())
    }

    fn snapshot(&self) -> Result<DeviceSnapshot, SnapshotError> {
        Ok(DeviceSnapshot::Net { mac: self.mac.0 })
    }

    fn restore(&mut self, snapshot: &DeviceSnapshot) -> Result<(), SnapshotError> {
        super::device::restore_mac(snapshot, self.mac)
    }

    fn set_dirty_log(&mut self, log: Option<Arc<DirtyLog>>) {
        self.log = log;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC};

    const VHOST_F_LOG_ALL: u64 = 1 << 26;

    #[test]
    fn ring_features_are_offered_only_if_the_kernel_has_them() {
        // 6.1's vhost-net: VHOST_FEATURES | VHOST_NET_F_VIRTIO_NET_HDR |
        // MRG_RXBUF | ACCESS_PLATFORM.
        let kernel = 1 << 24
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VHOST_F_LOG_ALL
            | 1 << 27
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << 33;
        assert_eq!(offered_features(kernel), FEATURES);
        // A kernel without EVENT_IDX or mergeable buffers: not offered;
        // the device's own features stay.
        let bare = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC;
        let offered = offered_features(bare);
        assert_eq!(offered & 1 << VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(offered & 1 << VIRTIO_NET_F_MRG_RXBUF, 0);
        assert_ne!(offered & 1 << VIRTIO_NET_F_MAC, 0);
        assert_ne!(offered & 1 << VIRTIO_NET_F_GUEST_TSO4, 0);
        // Nothing the kernel offers but the device does not (logging,
        // ACCESS_PLATFORM) is offered.
        assert_eq!(offered_features(u64::MAX), FEATURES);
    }

    #[test]
    fn the_kernel_is_told_only_the_ring_features_and_version_1() {
        let acked = FEATURES | 1 << VIRTIO_F_VERSION_1;
        assert_eq!(
            kernel_features(acked),
            1 << VIRTIO_NET_F_MRG_RXBUF
                | 1 << VIRTIO_RING_F_INDIRECT_DESC
                | 1 << VIRTIO_RING_F_EVENT_IDX
                | 1 << VIRTIO_F_VERSION_1
        );
        assert_eq!(
            kernel_features(1 << VIRTIO_NET_F_MAC),
            1 << VIRTIO_F_VERSION_1
        );
    }

    #[test]
    fn the_ioctl_is_set_backend() {
        assert_eq!(worker_ioctls(), [0x4008_af30]);
    }

    #[test]
    fn a_missing_device_file_is_an_open_error() {
        let e: VhostNetError = VhostFile::open(std::path::Path::new("/nonexistent/vhost-net"))
            .unwrap_err()
            .into();
        assert!(matches!(e, VhostNetError::Open(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot open /dev/vhost-net: No such file or directory (os error 2)"
        );
    }
}
