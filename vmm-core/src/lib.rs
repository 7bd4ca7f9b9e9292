//! The KVM side of the VMM, after QEMU's `kvm-all.c`, `cpus.c` and `vl.c`.
//!
//! Everything that owns a KVM file descriptor lives here. So far:
//!
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

pub mod notify;
