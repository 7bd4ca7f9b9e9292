//! External interrupts from a controller outside KVM: with the split
//! irqchip, the machine's 8259 pair, whose INT output reaches the boot
//! CPU's LINT0 as ExtINT (QEMU's `kvm_arch_pre_run` does the same).
//!
//! KVM takes such an interrupt with `KVM_INTERRUPT`, which sets the vCPU's
//! pending external vector (refused with `EEXIST` while one is pending);
//! KVM delivers it when the local APIC accepts PIC interrupts (LVT0
//! ExtINT and unmasked, or the APIC disabled) and the vCPU can take an
//! interrupt. After every `KVM_RUN`, `kvm_run.ready_for_interrupt_injection`
//! says whether it could take one now (interrupts allowed, no external
//! vector pending, LINT0 accepting); `request_interrupt_window` asks KVM
//! for a `KVM_EXIT_IRQ_WINDOW_OPEN` exit as soon as it could.
//!
//! So before each `KVM_RUN` of that vCPU ([`before_run`]): while the
//! source's output is high, if the window is open, the source is
//! acknowledged (its interrupt-acknowledge cycle gives the vector) and the
//! vector goes to `KVM_INTERRUPT`; while it is (still) high, the window is
//! requested. The thread that raises the output kicks the vCPU
//! ([`super::VcpuKick`]), so a vCPU halted inside `KVM_RUN` comes out to
//! do this. The source is acknowledged only when the vector can go in at
//! once, so a request withdrawn meanwhile (a masked line) is never taken.

use std::io;

use kvm_bindings::kvm_interrupt;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use super::run_map::KvmRunMap;

/// An interrupt controller outside KVM whose output goes to a vCPU as
/// external interrupts. Given by the machine ([`crate::io::IoHandler::external_interrupts`]);
/// vmm-core knows nothing else of it.
pub trait ExtIntSource: Send + Sync {
    /// Whether the output is high. Asked before every `KVM_RUN` of the
    /// vCPU: it should be cheap (an atomic load).
    fn pending(&self) -> bool;
    /// The interrupt acknowledge: the vector the CPU takes (a controller
    /// whose request went away meanwhile gives its spurious vector).
    fn acknowledge(&self) -> u8;
}

/// What [`before_run`] needs of the vCPU (a seam for tests).
pub(crate) trait InterruptWindow {
    /// `kvm_run.ready_for_interrupt_injection`, as the last exit left it.
    fn ready(&self) -> bool;
    /// Whether a kick is pending (`immediate_exit`): the next `KVM_RUN`
    /// returns without entering the guest.
    fn kicked(&self) -> bool;
    /// Sets or clears `kvm_run.request_interrupt_window`.
    fn request_window(&self, on: bool);
    /// `KVM_INTERRUPT` with `vector`.
    fn inject(&self, vector: u8) -> io::Result<()>;
}

/// Before a `KVM_RUN`: injects `source`'s interrupt if the window is open,
/// and asks for the window while its output stays high.
///
/// With a kick pending nothing is injected: that `KVM_RUN` will not enter
/// the guest, and a vector handed to KVM then would wait in the vCPU,
/// outside anything a pause (and a snapshot) sees.
pub(crate) fn before_run(source: &dyn ExtIntSource, vcpu: &impl InterruptWindow) {
    if !source.pending() {
        vcpu.request_window(false);
        return;
    }
    if vcpu.ready() && !vcpu.kicked() {
        let vector = source.acknowledge();
        if let Err(e) = vcpu.inject(vector) {
            log::warn!("cannot inject the external interrupt vector {vector:#x}: {e}");
        }
    }
    vcpu.request_window(source.pending());
}

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// A running vCPU's interrupt window: its fd and its `kvm_run`.
pub(crate) struct KvmWindow<'a> {
    pub(crate) vcpu: &'a VcpuFd,
    pub(crate) run_map: &'a KvmRunMap,
}

impl InterruptWindow for KvmWindow<'_> {
    fn ready(&self) -> bool {
        self.run_map.ready_for_interrupt_injection()
    }

    fn kicked(&self) -> bool {
        self.run_map.immediate_exit()
    }

    fn request_window(&self, on: bool) {
        self.run_map.set_request_interrupt_window(on);
    }

    fn inject(&self, vector: u8) -> io::Result<()> {
        let irq = kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT on a vCPU fd reads one `struct
        // kvm_interrupt`, which `irq` is and outlives the call; the result
        // is checked.
        let ret = unsafe { ioctl_with_ref(self.vcpu, KVM_INTERRUPT(), &irq) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    use super::*;

    /// A controller with one request: high until acknowledged, unless
    /// `again` (another request behind it).
    #[derive(Default)]
    struct Source {
        high: AtomicBool,
        again: AtomicBool,
        acks: AtomicU8,
    }

    impl ExtIntSource for Source {
        fn pending(&self) -> bool {
            self.high.load(Ordering::SeqCst)
        }
        fn acknowledge(&self) -> u8 {
            self.acks.fetch_add(1, Ordering::SeqCst);
            self.high
                .store(self.again.load(Ordering::SeqCst), Ordering::SeqCst);
            0x20
        }
    }

    #[derive(Default)]
    struct Window {
        ready: Cell<bool>,
        kicked: Cell<bool>,
        requested: Cell<bool>,
        injected: RefCell<Vec<u8>>,
    }

    impl InterruptWindow for Window {
        fn ready(&self) -> bool {
            self.ready.get()
        }
        fn kicked(&self) -> bool {
            self.kicked.get()
        }
        fn request_window(&self, on: bool) {
            self.requested.set(on);
        }
        fn inject(&self, vector: u8) -> io::Result<()> {
            self.injected.borrow_mut().push(vector);
            Ok(())
        }
    }

    fn source(high: bool, again: bool) -> Source {
        let s = Source::default();
        s.high.store(high, Ordering::SeqCst);
        s.again.store(again, Ordering::SeqCst);
        s
    }

    #[test]
    fn nothing_pending_withdraws_the_window_request() {
        let w = Window::default();
        w.requested.set(true);
        w.ready.set(true);
        let s = source(false, false);
        before_run(&s, &w);
        assert!(!w.requested.get());
        assert!(w.injected.borrow().is_empty());
        assert_eq!(s.acks.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_open_window_takes_the_vector_at_once() {
        let w = Window::default();
        w.ready.set(true);
        let s = source(true, false);
        before_run(&s, &w);
        assert_eq!(*w.injected.borrow(), [0x20]);
        assert_eq!(s.acks.load(Ordering::SeqCst), 1);
        assert!(!w.requested.get(), "nothing more to ask for");
    }

    #[test]
    fn a_closed_window_is_requested_and_the_controller_left_alone() {
        let w = Window::default();
        let s = source(true, false);
        before_run(&s, &w);
        assert!(w.requested.get());
        assert!(w.injected.borrow().is_empty());
        assert_eq!(s.acks.load(Ordering::SeqCst), 0, "not acknowledged yet");
        // The window opens (KVM_EXIT_IRQ_WINDOW_OPEN): the next run injects.
        w.ready.set(true);
        before_run(&s, &w);
        assert_eq!(*w.injected.borrow(), [0x20]);
        assert!(!w.requested.get());
    }

    #[test]
    fn a_second_request_asks_for_the_next_window() {
        let w = Window::default();
        w.ready.set(true);
        let s = source(true, true);
        before_run(&s, &w);
        assert_eq!(*w.injected.borrow(), [0x20]);
        assert!(w.requested.get(), "the next one waits for its window");
    }

    #[test]
    fn a_pending_kick_defers_the_injection() {
        let w = Window::default();
        w.ready.set(true);
        w.kicked.set(true);
        let s = source(true, false);
        before_run(&s, &w);
        assert!(w.injected.borrow().is_empty());
        assert_eq!(s.acks.load(Ordering::SeqCst), 0);
        assert!(w.requested.get());
        w.kicked.set(false);
        before_run(&s, &w);
        assert_eq!(*w.injected.borrow(), [0x20]);
    }
}
