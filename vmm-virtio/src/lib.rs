//! virtio with no KVM in sight: the modern virtio-pci transport (virtio
//! 1.x only, no legacy interface), virtio-blk on a raw image, virtio-net
//! on a tap and virtio-rng on the host's random source.
//!
//! | module | holds |
//! |---|---|
//! | [`seams`] | what the machine provides: [`MsiSender`] (KVM_SIGNAL_MSI), [`IntxLine`] (a level-triggered GSI), [`Doorbells`] (KVM_IOEVENTFD), [`MsiRoutes`] (KVM_IRQFD on MSI routes) |
//! | [`device`] | the [`VirtioDevice`] trait a transport drives, and what a device gets when the driver starts it |
//! | [`transport`] | [`VirtioPciDevice`]: a [`vmm_pci::PciDevice`] with the virtio capabilities, common configuration, ISR, notifications and MSI-X |
//! | [`net`] | [`net::VirtioNet`]: frames between a [`net::NetBackend`] (a tap) and the guest's receive and transmit queues, on its worker thread |
//! | [`rng`] | [`rng::VirtioRng`]: the host's `getrandom` into the guest's buffers, under QEMU's `max-bytes`/`period` rate limit |
//! | [`vsock`] | [`vsock::VirtioVsock`]: stream connections between guest ports and host Unix sockets (Firecracker's `CONNECT <port>` protocol), with credit-based flow control, on its worker thread |
//! | [`vhost`] | what the host kernel's vhost devices share: the device file, guest RAM and rings handed to it, its interrupts forwarded |
//! | [`blk`] | [`blk::VirtioBlk`]: requests parsed into plain values, then done with `preadv`/`pwritev`/`fdatasync`/`fallocate` on its worker thread, and the I/O error policy (report, ignore, stop) |
//!
//! # Threads
//!
//! The transport runs on whichever thread reaches the PCI bus (a vCPU
//! thread on an MMIO exit or a configuration access). It never does a
//! device's I/O: when the driver sets DRIVER_OK, the device starts its own
//! worker thread, which waits on the queues' notification eventfds (and a
//! stop eventfd) and does all the work. A reset stops and joins that
//! worker. Interrupts leave from the worker through the [`MsiSender`] or
//! [`IntxLine`] the machine gave, under a lock of their own (never the
//! bus's). The kernel's vhost rings are the exception: their interrupt
//! eventfds go to KVM as irqfds on [`MsiRoutes`] while their vectors are
//! unmasked, so that no thread of ours wakes for them.
//!
//! # Threat model
//!
//! The guest is untrusted: any register at any width and offset, any
//! order of status writes, queue addresses anywhere (or nowhere), sizes
//! that are no power of two, descriptor chains that loop, are too long,
//! point outside RAM, or have the wrong direction. None of it panics, none
//! of it blocks the vCPU for more than a bounded time, and each ends in a
//! defined state: the access is ignored, the request fails with
//! VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP, or the device sets
//! DEVICE_NEEDS_RESET and raises a configuration interrupt.

#![deny(missing_docs)]

pub mod blk;
pub mod device;
mod iov;
pub mod net;
mod ring;
pub mod rng;
pub mod seams;
pub mod transport;
pub mod vhost;
pub mod vsock;
pub mod worker;

/// The level for something a guest may repeat at will: `warn` the first
/// time (`said` false, then set), `debug` after, so that host logging
/// stays bounded.
fn once_then_debug(said: &mut bool) -> log::Level {
    if std::mem::replace(said, true) {
        log::Level::Debug
    } else {
        log::Level::Warn
    }
}

#[cfg(test)]
#[allow(dead_code)] // Helpers shared by the test modules; not each uses all.
mod testing;

pub use device::{ActivateContext, ActivateError, ActiveQueue, DeviceState, VirtioDevice};
pub use device::{DeviceSnapshot, QueueHome, SnapshotError};
pub use device::{VirtioInterrupt, VIRTIO_MSI_NO_VECTOR};
pub use seams::{Doorbells, IntxLine, MsiRoutes, MsiSender};
pub use transport::{TransportError, TransportSeams, VirtioPciDevice};

/// Guest memory as the transport and devices use it: any `vm-memory`
/// [`GuestMemory`](vm_memory::GuestMemory) that may be shared with worker
/// threads (`GuestMemoryMmap` in the machine and in tests).
pub trait Memory: vm_memory::GuestMemory + Send + Sync + 'static {}

impl<T: vm_memory::GuestMemory + Send + Sync + 'static> Memory for T {}
