//! The KVM side of the VMM, after QEMU's `kvm-all.c`, `cpus.c` and `vl.c`.
//!
//! Everything that owns a KVM file descriptor lives here:
//!
//! - [`kvm`]: open `/dev/kvm`, check its API version and the capabilities
//!   the machine needs (QEMU's `kvm_init`).
//! - [`vm`]: the VM, its guest memory slots, irqchip and interrupt lines;
//!   [`ram`]: guest RAM's type, with the bitmap of the VMM's own writes.
//! - [`io`]: the [`io::IoHandler`] trait through which vCPU exits reach the
//!   machine's devices.
//! - [`vcpu`]: one thread per vCPU, its exit dispatch, pause/resume/kick.
//! - [`guest_debug`]: single step and breakpoints (`KVM_SET_GUEST_DEBUG`)
//!   for the gdb stub.
//! - [`event_loop`]: the main loop on `event-manager`, and an eventfd
//!   subscriber; [`signals`]: SIGINT/SIGTERM/SIGHUP through a signalfd.
//! - [`notify`]: notifier lists (QEMU's `NotifierList`), used for the exit
//!   notifiers that the machine runs on every exit path.
//!
//! ```
//! use vmm_core::notify::NotifierList;
//!
//! let on_exit: NotifierList<i32> = NotifierList::new();
//! on_exit.add(|status, _list, _id| println!("exiting with {status}"));
//! assert_eq!(on_exit.notify(&0), 1);
//! ```

#![deny(missing_docs)]

pub mod event_loop;
pub mod guest_debug;
pub mod io;
pub mod kvm;
pub mod notify;
pub mod ram;
pub mod routing;
pub mod signals;
pub mod vcpu;
pub mod vm;

pub use kvm_ioctls::VcpuFd;
pub use vm_memory;
