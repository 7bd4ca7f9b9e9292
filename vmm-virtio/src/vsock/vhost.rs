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
//! nothing is ever sent on it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};

use super::{check_cid, CidError, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
use crate::device::{ActivateContext, ActivateError, ActiveQueue, DeviceState, VirtioDevice};
use crate::worker::{ThreadStart, Waiter, Worker, STOP_TOKEN};
use crate::Memory;

/// The ioctl numbers of `<linux/vhost.h>`.
#[allow(dead_code)] // VHOST_GET_VRING_BASE: only checked against the kernel's.
mod nr {
    use super::{VringAddr, VringFile, VringState};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const VHOST: u32 = 0xAF;
    ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST, 0x00, u64);
    ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST, 0x00, u64);
    ioctl_io_nr!(VHOST_SET_OWNER, VHOST, 0x01);
    // struct vhost_memory's fixed part: nregions, padding.
    ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST, 0x03, [u32; 2]);
    ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST, 0x10, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST, 0x11, VringAddr);
    ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST, 0x20, VringFile);
    ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST, 0x21, VringFile);
    ioctl_iow_nr!(VHOST_VSOCK_SET_GUEST_CID, VHOST, 0x60, u64);
    ioctl_iow_nr!(VHOST_VSOCK_SET_RUNNING, VHOST, 0x61, i32);
}
use nr::*;

/// The vhost ioctl requests a started device's worker makes (the device
/// file is opened, owned and given its CID at build time), for the VMM's
/// seccomp list.
pub fn worker_ioctls() -> [u64; 8] {
    [
        VHOST_SET_FEATURES(),
        VHOST_SET_MEM_TABLE(),
        VHOST_SET_VRING_NUM(),
        VHOST_SET_VRING_ADDR(),
        VHOST_SET_VRING_BASE(),
        VHOST_SET_VRING_KICK(),
        VHOST_SET_VRING_CALL(),
        VHOST_VSOCK_SET_RUNNING(),
    ]
}

/// `struct vhost_vring_state`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VringState {
    index: u32,
    num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_vring_addr` (no logging).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VringAddr {
    index: u32,
    flags: u32,
    desc_user_addr: u64,
    used_user_addr: u64,
    avail_user_addr: u64,
    log_guest_addr: u64,
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

fn check(name: &'static str, r: i32) -> Result<(), VhostError> {
    if r < 0 {
        Err(VhostError::Ioctl(name, io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// A vhost-vsock device.
pub struct VhostVsock {
    cid: u64,
    file: Arc<File>,
    features: u64,
    calls: Arc<[EventFd; 2]>,
    worker: Worker,
    acked: u64,
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
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vhost-vsock")
            .map_err(VhostError::Open)?;
        // SAFETY: VHOST_SET_OWNER takes no argument; file is a vhost fd.
        check("VHOST_SET_OWNER", unsafe {
            ioctl(&file, VHOST_SET_OWNER())
        })?;
        let mut features = 0u64;
        // SAFETY: the kernel writes one u64 into `features`.
        check("VHOST_GET_FEATURES", unsafe {
            ioctl_with_mut_ref(&file, VHOST_GET_FEATURES(), &mut features)
        })?;
        // SAFETY: the kernel reads one u64 from `cid`.
        let r = unsafe { ioctl_with_ref(&file, VHOST_VSOCK_SET_GUEST_CID(), &cid) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                return Err(VhostError::CidInUse(cid));
            }
            return Err(VhostError::Ioctl("VHOST_VSOCK_SET_GUEST_CID", e));
        }
        let new = || EventFd::new(EFD_NONBLOCK).map_err(|e| VhostError::Ioctl("eventfd", e));
        Ok(Self {
            cid,
            file: Arc::new(file),
            features,
            calls: Arc::new([new()?, new()?]),
            worker: Worker::new("vhost-vsock", start)
                .map_err(|e| VhostError::Ioctl("the worker thread", e))?,
            acked: 0,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }
}

/// Guest RAM as `struct vhost_memory`: nregions, padding, then each
/// region's guest address, size, host address and flags, as u64 words.
/// Memory with no physical backing gives an empty table.
pub(super) fn mem_table<M: GuestMemory>(mem: &M) -> Vec<u64> {
    let Some(phys) = mem.physical_memory() else {
        return vec![0];
    };
    let regions: Vec<[u64; 4]> = phys
        .iter()
        .filter_map(|r| {
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            Some([r.start_addr().0, r.len(), host as u64, 0])
        })
        .collect();
    let mut table = vec![regions.len() as u64];
    table.extend(regions.iter().flatten());
    table
}

/// The worker's set-up of the kernel's rings, then its wait.
struct Body<M: Memory> {
    file: Arc<File>,
    calls: Arc<[EventFd; 2]>,
    ctx_mem: Arc<M>,
    features: u64,
    queues: Vec<ActiveQueue>,
    interrupt: Arc<dyn crate::device::VirtioInterrupt>,
}

impl<M: Memory> Body<M> {
    fn host(&self, addr: GuestAddress) -> Result<u64, VhostError> {
        self.ctx_mem
            .physical_memory()
            .and_then(|m| m.get_host_address(addr).ok())
            .map(|p| p as u64)
            .ok_or(())
            .map_err(|_| VhostError::Ioctl("a ring outside RAM", io::Error::other("")))
    }

    fn start(&self) -> Result<(), VhostError> {
        let f = &*self.file;
        // SAFETY: the kernel reads one u64.
        check("VHOST_SET_FEATURES", unsafe {
            ioctl_with_ref(f, VHOST_SET_FEATURES(), &self.features)
        })?;
        let table = mem_table(&*self.ctx_mem);
        // SAFETY: `table` is a vhost_memory header (nregions in the low
        // 32 bits of word 0, then padding) followed by nregions regions of
        // four u64 each, all within the vector.
        check("VHOST_SET_MEM_TABLE", unsafe {
            ioctl_with_ptr(f, VHOST_SET_MEM_TABLE(), table.as_ptr())
        })?;
        for (i, q) in self.queues.iter().enumerate() {
            let index = i as u32;
            let queue = &q.queue;
            let state = VringState {
                index,
                num: u32::from(queue.size()),
            };
            // SAFETY: the kernel reads a vhost_vring_state.
            check("VHOST_SET_VRING_NUM", unsafe {
                ioctl_with_ref(f, VHOST_SET_VRING_NUM(), &state)
            })?;
            let addr = VringAddr {
                index,
                flags: 0,
                desc_user_addr: self.host(GuestAddress(queue.desc_table()))?,
                used_user_addr: self.host(GuestAddress(queue.used_ring()))?,
                avail_user_addr: self.host(GuestAddress(queue.avail_ring()))?,
                log_guest_addr: 0,
            };
            // SAFETY: the kernel reads a vhost_vring_addr.
            check("VHOST_SET_VRING_ADDR", unsafe {
                ioctl_with_ref(f, VHOST_SET_VRING_ADDR(), &addr)
            })?;
            let base = VringState {
                index,
                num: u32::from(queue.next_avail()),
            };
            // SAFETY: the kernel reads a vhost_vring_state.
            check("VHOST_SET_VRING_BASE", unsafe {
                ioctl_with_ref(f, VHOST_SET_VRING_BASE(), &base)
            })?;
            let kick = VringFile {
                index,
                fd: q.notify.as_raw_fd(),
            };
            // SAFETY: the kernel reads a vhost_vring_file; the fd is open.
            check("VHOST_SET_VRING_KICK", unsafe {
                ioctl_with_ref(f, VHOST_SET_VRING_KICK(), &kick)
            })?;
            let call = VringFile {
                index,
                fd: self.calls[i].as_raw_fd(),
            };
            // SAFETY: as above.
            check("VHOST_SET_VRING_CALL", unsafe {
                ioctl_with_ref(f, VHOST_SET_VRING_CALL(), &call)
            })?;
        }
        self.running(true)
    }

    fn running(&self, on: bool) -> Result<(), VhostError> {
        let v: i32 = on.into();
        // SAFETY: the kernel reads one int.
        check("VHOST_VSOCK_SET_RUNNING", unsafe {
            ioctl_with_ref(&*self.file, VHOST_VSOCK_SET_RUNNING(), &v)
        })
    }

    fn run(self, waiter: Waiter) {
        if let Err(e) = self.start() {
            log::error!("vhost-vsock: cannot start the kernel's device: {e}");
            let _ = self.running(false);
            self.interrupt.set_needs_reset();
            return;
        }
        let added = waiter
            .add(&self.calls[0], 0)
            .and_then(|()| waiter.add(&self.calls[1], 1));
        if let Err(e) = added {
            log::error!("vhost-vsock: cannot wait on the kernel's interrupts: {e}");
            self.interrupt.set_needs_reset();
        }
        loop {
            let tokens = match waiter.wait() {
                Ok(t) => t,
                Err(e) => {
                    log::error!("vhost-vsock: the worker cannot wait: {e}");
                    break;
                }
            };
            if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
                break;
            }
            for t in tokens {
                if let Some(call) = self.calls.get(t as usize) {
                    let _ = call.read();
                    let queue = if t == 0 { RX_QUEUE } else { TX_QUEUE };
                    self.interrupt.signal_queue(queue);
                }
            }
        }
        if let Err(e) = self.running(false) {
            log::warn!("vhost-vsock: cannot stop the kernel's device: {e}");
        }
    }
}

impl<M: Memory> VirtioDevice<M> for VhostVsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        self.features & PASSED
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
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
        let mut rx = None;
        let mut tx = None;
        for q in ctx.queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::QueueMissing(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::QueueMissing(TX_QUEUE))?;
        let body = Body {
            file: Arc::clone(&self.file),
            calls: Arc::clone(&self.calls),
            ctx_mem: ctx.mem,
            features: ctx.features | 1 << VIRTIO_F_VERSION_1,
            queues: vec![rx, tx],
            interrupt: ctx.interrupt,
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
            device_type: VIRTIO_ID_VSOCK,
            active: self.worker.is_running(),
            acked_features: self.acked,
            completed: 0,
            held: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // From <linux/vhost.h> as the kernel's _IO* macros compute them.
        assert_eq!(VHOST_GET_FEATURES(), 0x8008_af00);
        assert_eq!(VHOST_SET_FEATURES(), 0x4008_af00);
        assert_eq!(VHOST_SET_OWNER(), 0xaf01);
        assert_eq!(VHOST_SET_MEM_TABLE(), 0x4008_af03);
        assert_eq!(VHOST_SET_VRING_NUM(), 0x4008_af10);
        assert_eq!(VHOST_SET_VRING_ADDR(), 0x4028_af11);
        assert_eq!(VHOST_SET_VRING_BASE(), 0x4008_af12);
        assert_eq!(VHOST_GET_VRING_BASE(), 0xc008_af12);
        assert_eq!(VHOST_SET_VRING_KICK(), 0x4008_af20);
        assert_eq!(VHOST_SET_VRING_CALL(), 0x4008_af21);
        assert_eq!(VHOST_VSOCK_SET_GUEST_CID(), 0x4008_af60);
        assert_eq!(VHOST_VSOCK_SET_RUNNING(), 0x4004_af61);
    }

    #[test]
    fn guest_ram_becomes_the_kernels_memory_table() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x1_0000_0000), 0x20000),
        ])
        .unwrap();
        let t = mem_table(&mem);
        assert_eq!(t.len(), 1 + 2 * 4);
        assert_eq!(t[0], 2, "nregions, padding 0");
        assert_eq!((t[1], t[2], t[4]), (0, 0x10000, 0));
        assert_eq!((t[5], t[6], t[8]), (0x1_0000_0000, 0x20000, 0));
        let host = mem.get_host_address(GuestAddress(0x1_0000_0000)).unwrap();
        assert_eq!(t[7], host as u64);
    }
}
