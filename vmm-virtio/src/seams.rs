//! What the machine gives a virtio-pci function: the three ways out of
//! this crate into KVM (or into a test's fakes).
//!
//! Each is called from the thread that has something to say: the vCPU
//! thread that wrote a register, or the device's worker thread. None may
//! block for long, and none may call back into the device (a reset from
//! inside [`MsiSender::send`] would wait for the very thread that calls
//! it).

use vmm_pci::msix::MsiMessage;
use vmm_sys_util::eventfd::EventFd;

/// Delivers an MSI message (the machine: `KVM_SIGNAL_MSI`). The transport
/// has already decided, with [`vmm_pci::msix::Msix::signal`], that the
/// vector is unmasked; masked vectors wait as pending and are sent when
/// the guest unmasks them.
pub trait MsiSender: Send + Sync {
    /// Sends `msg` now.
    fn send(&self, msg: MsiMessage);
}

/// Interrupts KVM sends by itself (the machine: an irqfd on a GSI that
/// `KVM_SET_GSI_ROUTING` makes an MSI route). For interrupt sources
/// outside the VMM (the kernel's vhost rings): each interrupt then reaches
/// the guest without waking a thread of ours.
pub trait MsiRoutes: Send + Sync {
    /// Makes every signal of `evt` send `msg`; returns the route's handle.
    fn connect(&self, evt: &EventFd, msg: MsiMessage) -> Result<u32, String>;
    /// Points route `route` (of `evt`) at `msg` instead.
    fn retarget(&self, route: u32, msg: MsiMessage) -> Result<(), String>;
    /// Undoes [`MsiRoutes::connect`]: signals of `evt` stay in it.
    fn disconnect(&self, route: u32, evt: &EventFd);
}

/// The function's INTx line, level-triggered (the machine: `KVM_IRQ_LINE`
/// on the GSI that `_PRT` gives the slot's INTA#). Several functions may
/// share a GSI: the machine ORs their levels.
pub trait IntxLine: Send + Sync {
    /// Drives the line high (asserted) or low.
    fn set_level(&self, high: bool);
}

/// Notification doorbells (the machine: `KVM_IOEVENTFD` on MMIO, no
/// datamatch, length 0 so that any width matches and KVM may take its
/// fast MMIO path). A write to `addr` then signals `evt` in the kernel
/// without an exit. Registering is an optimisation only: a notify write
/// that does reach the transport signals the same eventfd.
pub trait Doorbells: Send + Sync {
    /// Signal `evt` on guest writes to `addr`.
    fn register(&self, addr: u64, evt: &EventFd) -> Result<(), String>;
    /// Undo [`Doorbells::register`] for `addr` and `evt`.
    fn unregister(&self, addr: u64, evt: &EventFd);
}
