//! [`VhostVsock`]: virtio-vsock served by the host kernel's vhost-vsock
//! (`/dev/vhost-vsock`). The kernel moves the packets; the guest's sockets
//! are the host's AF_VSOCK sockets (the host is CID 2 to the guest, the
//! guest its CID to the host).
//!
//! The device file is opened, owned (VHOST_SET_OWNER) and given the
//! guest's CID (VHOST_VSOCK_SET_GUEST_CID) by the machine at build time,
//! on the main thread. When the driver starts the device, its worker (not
//! the vCPU that wrote DRIVER_OK) gives the kernel the accepted features,
//! guest RAM (VHOST_SET_MEM_TABLE), each of the receive and transmit rings
//! (VHOST_SET_VRING_NUM, _ADDR, _BASE), the queue's doorbell eventfd as
//! its kick and an eventfd of ours as its call (VHOST_SET_VRING_KICK,
//! _CALL), then VHOST_VSOCK_SET_RUNNING; it then waits on the call
//! eventfds and raises the queues' interrupts. A reset stops the kernel
//! (SET_RUNNING 0) before the worker ends. The event queue stays with us:
//! only a transport reset is ever sent on it.
//!
//! A snapshot stops the kernel's device the same way and reads where each
//! ring stopped (VHOST_GET_VRING_BASE, and the used index in guest RAM)
//! into the queues it leaves for the transport, with the event queue. The
//! kernel keeps its connections meanwhile, so a machine that runs on
//! after a save goes on with them; a machine that loads a snapshot does
//! not have them (a new process, or the guest taken back in time), so its
//! driver gets a transport reset when the device starts again and drops
//! its own, as QEMU's vhost-vsock does after a migration. A live migration
//! is refused by the machine: the kernel's vhost-vsock does not log the
//! guest pages it writes.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::check_snapshot;
use super::events::EventQueue;
use super::{check_cid, CidError, MSIX_VECTORS, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
use crate::device::{
    ActivateContext, ActivateError, ActiveQueue, DeviceSnapshot, DeviceState, QueueHome,
    SnapshotError, VirtioDevice,
};
use crate::vhost::{
    forward_calls, host_address, read_back, IoctlError, OpenError, VhostFile, VringFds,
};
use crate::worker::{ThreadStart, Waiter, Worker};
use crate::Memory;

/// The vhost-vsock ioctl requests a started device's worker makes
/// besides [`crate::vhost::worker_ioctls`], for the VMM's seccomp list.
pub fn worker_ioctls() -> [u64; 1] {
    [crate::vhost::vsock_running_ioctl()]
}

/// The ring features passed through to the kernel if it has them.
const PASSED: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// Why the host's vhost-vsock could not be had.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// A CID out of range.
    #[error(transparent)]
    Cid(#[from] CidError),
    /// `/dev/vhost-vsock` could not be opened.
    #[error("cannot open /dev/vhost-vsock: {0}")]
    Open(#[source] io::Error),
    /// An ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, #[source] io::Error),
    /// The CID is taken by another VM on this host.
    #[error("guest CID {0} is in use on this host")]
    CidInUse(u64),
}

impl From<IoctlError> for VhostError {
    fn from(e: IoctlError) -> Self {
        Self::Ioctl(e.name, e.source)
    }
}

/// A vhost-vsock device.
pub struct VhostVsock {
    cid: u64,
    file: Arc<VhostFile>,
    calls: [Arc<EventFd>; 2],
    worker: Worker,
    acked: u64,
    /// The event queue; its transport reset is owed once a snapshot was
    /// loaded (the kernel's device never had the driver's connections).
    event: EventQueue,
}

impl std::fmt::Debug for VhostVsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostVsock")
            .field("cid", &self.cid)
            .field("active", &self.worker.is_running())
            .finish_non_exhaustive()
    }
}

impl VhostVsock {
    /// Opens `/dev/vhost-vsock`, owns it and gives it `cid`; the worker
    /// thread (made now, parked until the guest activates the device) runs
    /// `start` first.
    pub fn open(cid: u64, start: Option<ThreadStart>) -> Result<Self, VhostError> {
        let cid = check_cid(cid)?;
        let file = VhostFile::open(Path::new("/dev/vhost-vsock")).map_err(|e| match e {
            OpenError::Open(e) => VhostError::Open(e),
            OpenError::Ioctl(e) => e.into(),
        })?;
        if let Err(e) = file.vsock_set_guest_cid(cid) {
            if e.source.raw_os_error() == Some(libc::EADDRINUSE) {
                return Err(VhostError::CidInUse(cid));
            }
            return Err(e.into());
        }
        let new = || EventFd::new(EFD_NONBLOCK).map_err(|e| VhostError::Ioctl("eventfd", e));
        Ok(Self {
            cid,
            file: Arc::new(file),
            calls: [Arc::new(new()?), Arc::new(new()?)],
            worker: Worker::new("vhost-vsock", start)
                .map_err(|e| VhostError::Ioctl("the worker thread", e))?,
            acked: 0,
            event: EventQueue::default(),
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }
}

/// The worker's set-up of the kernel's rings, then its wait.
struct Body<M: Memory> {
    file: Arc<VhostFile>,
    calls: [Arc<EventFd>; 2],
    ctx_mem: Arc<M>,
    features: u64,
    queues: Vec<ActiveQueue>,
    interrupt: Arc<dyn crate::device::VirtioInterrupt>,
    home: QueueHome,
}

impl<M: Memory> Body<M> {
    fn start(&self) -> Result<(), IoctlError> {
        let f = &*self.file;
        f.set_features(self.features)?;
        f.set_mem_table(&*self.ctx_mem)?;
        for (i, q) in self.queues.iter().enumerate() {
            f.set_vring(
                i as u32,
                &q.queue,
                |a| host_address(&*self.ctx_mem, a),
                VringFds {
                    kick: q.notify.as_raw_fd(),
                    call: self.calls[i].as_raw_fd(),
                },
                false,
            )?;
        }
        self.running(true)
    }

    fn running(&self, on: bool) -> Result<(), IoctlError> {
        self.file.vsock_set_running(on)
    }

    fn run(mut self, waiter: Waiter) {
        if let Err(e) = self.start() {
            log::error!("vhost-vsock: cannot start the kernel's device: {e}");
            let _ = self.running(false);
            // The kernel never ran the rings: they go home as the driver
            // left them, so that a snapshot still has every queue.
            for q in &self.queues {
                self.home.put(q.index, q.queue.state());
            }
            self.interrupt.set_needs_reset();
            return;
        }
        let calls = [(&self.calls[0], RX_QUEUE), (&self.calls[1], TX_QUEUE)];
        if !forward_calls("vhost-vsock", &waiter, &calls, &*self.interrupt) {
            self.interrupt.set_needs_reset();
        }
        self.stop();
    }

    /// Stops the kernel's device and leaves the rings as it left them for
    /// the transport.
    fn stop(&mut self) {
        if let Err(e) = self.running(false) {
            log::warn!("vhost-vsock: cannot stop the kernel's device: {e}");
        }
        for (i, q) in self.queues.iter_mut().enumerate() {
            match read_back(&self.file, i as u32, &mut q.queue, &*self.ctx_mem) {
                Ok(()) => self.home.put(q.index, q.queue.state()),
                Err(e) => log::error!("vhost-vsock: cannot read where ring {i} stopped: {e}"),
            }
        }
    }
}

impl<M: Memory> VirtioDevice<M> for VhostVsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        self.file.features() & PASSED
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn msix_vectors(&self) -> usize {
        MSIX_VECTORS
    }

    fn config_len(&self) -> usize {
        8
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        crate::device::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "vhost-vsock: configuration write of {} bytes at {offset:#x} ignored",
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
        let body = Body {
            file: Arc::clone(&self.file),
            calls: self.calls.clone(),
            ctx_mem: ctx.mem,
            features: ctx.features | 1 << VIRTIO_F_VERSION_1,
            queues: vec![rx, tx],
            interrupt: ctx.interrupt,
            home: ctx.home,
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
        self.event.reset();
    }

    fn state(&self) -> DeviceState {
        DeviceState {
            device_type: VIRTIO_ID_VSOCK,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: 0,
            held: 0,
        }
    }

    fn quiesce(&mut self) -> Result<(), SnapshotError> {
        // The kernel's device stops and its rings go home; its
        // connections stay for a machine that runs on.
        self.worker.stop();
        self.event.park();
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
