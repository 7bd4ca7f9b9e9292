//! A second mapping of a vCPU's `kvm_run` page, for the fields other
//! threads and the exit handler need while `VcpuFd::run` holds the first.
//!
//! `kvm_run` is memory shared with the kernel. Mapping the vCPU fd again
//! gives another view of the same pages, owned by this struct and unmapped
//! when it drops, so it stays valid however long the vCPU thread lives. It
//! is used for a few one-byte fields only, read or written with volatile
//! accesses:
//!
//! - `immediate_exit`, set by the thread that kicks the vCPU: KVM_RUN then
//!   returns `EINTR` at once instead of entering the guest;
//! - `io.size`, the width of one element of a PIO exit, which `kvm-ioctls`
//!   does not report (it gives `count * size` bytes);
//! - `request_interrupt_window` and `ready_for_interrupt_injection`, for
//!   external interrupts from a controller outside KVM (`super::extint`).

use std::io;
use std::mem::offset_of;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use kvm_bindings::{kvm_run, kvm_run__bindgen_ty_1, kvm_run__bindgen_ty_1__bindgen_ty_4};

const IMMEDIATE_EXIT: usize = offset_of!(kvm_run, immediate_exit);
const REQUEST_INTERRUPT_WINDOW: usize = offset_of!(kvm_run, request_interrupt_window);
const READY_FOR_INTERRUPT_INJECTION: usize = offset_of!(kvm_run, ready_for_interrupt_injection);
const IO_SIZE: usize = offset_of!(kvm_run, __bindgen_anon_1)
    + offset_of!(kvm_run__bindgen_ty_1, io)
    + offset_of!(kvm_run__bindgen_ty_1__bindgen_ty_4, size);

/// The owned second mapping of one vCPU's `kvm_run`.
#[derive(Debug)]
pub(crate) struct KvmRunMap {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access through this type
// is a single volatile byte access, which is sound from any thread (the
// kernel itself reads and writes these pages concurrently).
unsafe impl Send for KvmRunMap {}
// SAFETY: as for Send: no access creates a reference into the mapping.
unsafe impl Sync for KvmRunMap {}

impl KvmRunMap {
    /// Maps `len` bytes (`KVM_GET_VCPU_MMAP_SIZE`) of the vCPU fd.
    pub(crate) fn new(vcpu: &impl AsRawFd, len: usize) -> io::Result<Self> {
        if len < std::mem::size_of::<kvm_run>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "vCPU mmap size smaller than struct kvm_run",
            ));
        }
        // SAFETY: a fresh shared mapping of the vCPU fd at offset 0 of the size
        // KVM reports; the result is checked before use. No existing memory is
        // affected (addr hint is null).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { addr, len })
    }

    /// Sets or clears `immediate_exit`.
    pub(crate) fn set_immediate_exit(&self, on: bool) {
        // Full fences on both sides. A kicker stores what it wants seen
        // (e.g. the PIC's INT line) and then sets the flag; the vCPU clears
        // the flag after an EINTR and then loads that state before its next
        // KVM_RUN. Without a store-load fence on each side (x86 lets a load
        // pass an earlier store), the vCPU could read the old state while
        // its clear overwrote the kicker's set, and a signal landing
        // outside KVM_RUN would leave the kick lost for good.
        fence(Ordering::SeqCst);
        // SAFETY: IMMEDIATE_EXIT is inside the mapping (len >= size_of kvm_run,
        // checked in new) and the field is one byte, so the write is in bounds
        // and aligned.
        unsafe {
            self.addr
                .as_ptr()
                .add(IMMEDIATE_EXIT)
                .write_volatile(u8::from(on))
        };
        // Make the flag visible before the signal that follows it (a set),
        // or before the loads that follow it (a clear).
        fence(Ordering::SeqCst);
    }

    /// Whether `immediate_exit` is set (a kick the next KVM_RUN will see).
    pub(crate) fn immediate_exit(&self) -> bool {
        self.read_byte(IMMEDIATE_EXIT) != 0
    }

    /// Sets or clears `request_interrupt_window` (KVM reads it at each
    /// KVM_RUN, on the vCPU's thread, which is the only writer).
    pub(crate) fn set_request_interrupt_window(&self, on: bool) {
        // SAFETY: the offset is inside struct kvm_run and so inside the
        // mapping (len >= size_of kvm_run, checked in new); the field is
        // one byte.
        unsafe {
            self.addr
                .as_ptr()
                .add(REQUEST_INTERRUPT_WINDOW)
                .write_volatile(u8::from(on))
        };
    }

    /// `ready_for_interrupt_injection`, as KVM left it at the last exit.
    pub(crate) fn ready_for_interrupt_injection(&self) -> bool {
        self.read_byte(READY_FOR_INTERRUPT_INJECTION) != 0
    }

    fn read_byte(&self, offset: usize) -> u8 {
        debug_assert!(offset < std::mem::size_of::<kvm_run>());
        // SAFETY: every caller passes the offset of a one-byte field of
        // struct kvm_run, which is inside the mapping (len >= size_of
        // kvm_run, checked in new).
        unsafe { self.addr.as_ptr().add(offset).read_volatile() }
    }

    /// The element size of the PIO exit being handled (1, 2 or 4).
    pub(crate) fn io_size(&self) -> usize {
        // SAFETY: IO_SIZE is inside struct kvm_run and so inside the mapping;
        // the field is one byte. Meaningful only during a KVM_EXIT_IO, which is
        // when the caller asks.
        usize::from(unsafe { self.addr.as_ptr().add(IO_SIZE).read_volatile() })
    }
}

impl Drop for KvmRunMap {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly the mapping created in new, unmapped once.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}
