//! vCPU threads (QEMU's `qemu_init_vcpu` → `ap_main_loop` → `kvm_main_loop_cpu`).
//!
//! Each vCPU gets a thread that lets the machine set its registers, runs
//! the optional thread-start hook ([`VcpuThreadStart`]: the binary's
//! seccomp filter, so that it covers everything the thread does from then
//! on and nothing before), and then loops as a small state machine. With
//! several vCPUs, the boot vCPU's thread runs the hook's
//! [`VcpuStartStage::Spawner`] stage first and starts a helper that starts
//! the others' threads: what that stage installs (a filter with the
//! set-up's calls), they inherit from birth, so that a machine of many
//! vCPUs installs one large filter, not one per vCPU. Every vCPU is created
//! (`KVM_CREATE_VCPU`) before the boot vCPU runs, the others' set-up goes
//! on beside it (`start.rs`).
//!
//! ```text
//!            Resume                      exit it cannot handle
//!  Paused ─────────────▶ Running ───────────────────────────────▶ Paused
//!    ▲  ◀───────────────   │  KVM_RUN, PIO/MMIO → IoHandler        (request
//!    │      Pause + kick   └─────────────┐                          sent to
//!    └── Exit: thread ends ◀─────────────┘ Exit + kick              main loop)
//! ```
//!
//! The controller ([`Vcpus`]) talks to each thread over a channel. To get a
//! running vCPU's attention it *kicks* it: it sets `immediate_exit` in the
//! vCPU's `kvm_run` and sends it a real-time signal whose handler does
//! nothing. If the thread is inside `KVM_RUN` the signal makes it return
//! `EINTR`; if the thread is between two runs the flag makes the next one
//! return at once. Either way it reads its channel before entering the guest
//! again, so no request is lost and no polling is needed.
//!
//! A machine with an interrupt controller outside KVM (the split
//! irqchip's 8259s) hands a vCPU its output through
//! [`crate::io::IoHandler::external_interrupts`]; before each `KVM_RUN`
//! the vCPU injects it when the guest can take it (`KVM_INTERRUPT`, the
//! interrupt window: see `extint.rs`), and the controller's side kicks it
//! with a [`VcpuKick`] when its output rises.
//!
//! Exits the vCPU cannot handle (triple fault, `KVM_SYSTEM_EVENT_*`, entry
//! failure, internal errors) travel to the main loop as [`VcpuRequest`]s, on
//! a channel with an eventfd to wake the loop; the vCPU then parks until the
//! main loop decides. A device the vCPU drives that asks the machine to
//! reset, power off or sleep stops that vCPU at once ([`stop_current`], as
//! QEMU's `cpu_stop_current`): it parks after the exit that asked, instead
//! of running on until the main loop pauses it.

mod exit;
mod extint;
mod handle;
mod run_map;
mod start;
mod state;
mod thread;

pub use extint::ExtIntSource;
pub use handle::{
    kick_signal, VcpuError, VcpuInit, VcpuKick, VcpuStartStage, VcpuThreadStart, Vcpus,
};
pub use state::{VcpuState, VcpuStateError};

std::thread_local! {
    /// Set by [`stop_current`] on a vCPU's thread while it handles an exit.
    static STOP_REQUESTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Stops the vCPU whose exit is being handled on this thread, as QEMU's
/// `cpu_stop_current`: once the exit is handled it parks, its I/O
/// completed, instead of entering the guest again. For a device that has
/// just asked the machine for something that stops the guest anyway (a
/// reset, a poweroff, S3) and told the main loop through its own line:
/// the guest runs no further than the instruction that asked, and the
/// main loop's pause finds the vCPU already parked rather than kicking it
/// out of the guest. The main loop must then pause and resume (or end)
/// the machine, as it does for each of those requests. On any other
/// thread it does nothing.
pub fn stop_current() {
    STOP_REQUESTED.with(|s| s.set(true));
}

/// Whether [`stop_current`] was called on this thread since the last call.
pub(crate) fn take_stop_request() -> bool {
    STOP_REQUESTED.with(|s| s.replace(false))
}

/// The calling thread's kernel id, asked with the system call itself:
/// the `gettid` wrapper of std's libc bindings is not there in a static
/// musl build (the call went to address 0).
pub(crate) fn current_tid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments, touches no memory and cannot
    // fail; a thread id fits a pid_t.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// What a vCPU asks of the main loop (QEMU's `qemu_system_*_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuRequest {
    /// The guest reset the machine (triple fault or a reset system event).
    Reset {
        /// The vCPU that saw it.
        vcpu: u32,
        /// What happened.
        reason: String,
    },
    /// The guest powered the machine off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    Shutdown {
        /// The vCPU that saw it.
        vcpu: u32,
    },
    /// The vCPU executed HLT (seen only without the in-kernel irqchip).
    Halted {
        /// The vCPU.
        vcpu: u32,
    },
    /// The vCPU stopped for the debugger (`KVM_EXIT_DEBUG`: a breakpoint
    /// or a finished single step; see [`crate::guest_debug`]).
    Debug {
        /// The vCPU.
        vcpu: u32,
        /// The exception vector (1: `#DB`, 3: `#BP`).
        exception: u32,
        /// The linear address of the instruction.
        pc: u64,
        /// DR6 (which hardware breakpoint, or a single step).
        dr6: u64,
        /// Not a `KVM_EXIT_DEBUG` but KVM failing to emulate an `int3`
        /// (PVM's answer to a software breakpoint): a breakpoint when the
        /// debugger set one, else the internal error it is.
        emulated_int3: bool,
    },
    /// KVM could not go on running this vCPU.
    InternalError {
        /// The vCPU.
        vcpu: u32,
        /// What KVM reported.
        reason: String,
    },
}
