//! QEMU's `-gdb`: a gdb remote stub for the whole machine, on the
//! [`gdbstub`] crate (the packet layer: parsing, checksums, `qSupported`,
//! `vCont`, …) with [`gdbstub_arch`]'s x86-64 registers and target
//! description.
//!
//! This crate knows no KVM: the machine is a [`DebugMachine`], which the
//! PC machine implements by asking its main loop (vmm-pc's `gdb.rs`).
//! What is here:
//!
//! - [`address`]: `--gdb tcp:HOST:PORT`, `--gdb unix:PATH` and `--gdb
//!   /dev/TTY` (a terminal, QEMU's `-gdb /dev/ttyS0`), parsed and bound or
//!   opened at start-up (a bad address or a port in use fails there);
//! - [`server`]: the stub's own thread: accept a client, stop the machine
//!   (`paused`, as QEMU does on attach), serve it, detach and let the guest
//!   run when it goes, then wait for the next client;
//! - the gdbstub target (`target.rs`): each vCPU a gdb thread (thread id =
//!   vCPU index + 1), registers, memory by guest-virtual address, single
//!   step, software breakpoints (the stub writes `int3` and restores the
//!   byte), hardware breakpoints and watchpoints (DR0 to DR3, shared);
//! - [`paging`]: the guest page-table walk the machine uses to read and
//!   write memory by virtual address;
//! - [`breakpoints`]: the breakpoint bookkeeping.
//!
//! Everything the client sends is untrusted: the packet parser is
//! gdbstub's, and a bad address or register set is an error reply.

#![deny(missing_docs)]

pub mod address;
pub mod breakpoints;
mod fpu;
pub mod paging;
pub mod server;
mod target;

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use address::GdbAddress;
pub use breakpoints::{HwSlot, SlotKind};
pub use server::{spawn, GdbListener};

/// x86-64 registers as gdb sees them (its `64bit-core` and `64bit-sse`
/// features).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8 to R15 (gdb's order).
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// The selectors of CS, SS, DS, ES, FS, GS.
    pub segments: [u16; 6],
    /// The x87 and SSE state.
    pub fpu: FpuRegisters,
}

/// The x87 and SSE state as `FXSAVE` lays it out (the legacy region of
/// the XSAVE area KVM's `KVM_GET_XSAVE` gives); the stub turns it into gdb's
/// registers (`target.rs`: the full tag word, the 64-bit pointers cut in
/// two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FpuRegisters {
    /// ST0 to ST7 (stack order: ST0 is the top), 80 bits each.
    pub st: [[u8; 10]; 8],
    /// The x87 control word (FCW).
    pub fcw: u16,
    /// The x87 status word (FSW, TOP in bits 11 to 13).
    pub fsw: u16,
    /// The abridged tag word: bit n set when physical register n is not
    /// empty.
    pub ftw: u8,
    /// The last x87 opcode (11 bits).
    pub fop: u16,
    /// The last x87 instruction pointer.
    pub fip: u64,
    /// The last x87 data pointer.
    pub fdp: u64,
    /// XMM0 to XMM15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

/// What to run and stop for on the next resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePlan {
    /// The vCPUs to single-step (the others run on until one stops).
    pub step: Vec<u32>,
    /// Report `int3` to the stub (software breakpoints are set).
    pub sw_breakpoints: bool,
    /// Hardware breakpoints and watchpoints (DR0 to DR3).
    pub hw_breakpoints: [Option<breakpoints::HwSlot>; breakpoints::HW_SLOTS],
}

/// Why the machine stopped for the debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// A software breakpoint (`int3`).
    SwBreakpoint,
    /// A hardware breakpoint or watchpoint: DR6's B0..B3 (bit n: DRn's
    /// condition was met), which the stub matches to its slots.
    DebugRegisters(u8),
    /// A finished single step.
    Step,
}

/// The machine stopped (run state `debug`) because `vcpu` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// The vCPU.
    pub vcpu: u32,
    /// Why.
    pub kind: StopKind,
}

/// How the machine tells the stub it stopped: a channel, and an eventfd the
/// stub's thread polls beside the client's socket.
#[derive(Debug, Clone)]
pub struct StopSender {
    tx: Sender<Stop>,
    evt: Arc<EventFd>,
}

impl StopSender {
    /// Reports a stop (from the machine's main loop).
    pub fn send(&self, stop: Stop) {
        if self.tx.send(stop).is_ok() {
            if let Err(e) = self.evt.write(1) {
                log::error!("cannot wake the gdb stub: {e}");
            }
        }
    }
}

/// The stub's end of the stop channel (see [`stop_channel`]).
#[derive(Debug)]
pub struct StopReceiver {
    rx: Receiver<Stop>,
    evt: Arc<EventFd>,
}

impl StopReceiver {
    /// The next stop already reported, if any.
    pub(crate) fn try_recv(&self) -> Option<Stop> {
        // Clear the eventfd first: a stop sent after this wakes the next
        // poll again.
        let _ = self.evt.read();
        self.rx.try_recv().ok()
    }

    /// The eventfd to poll.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.evt.as_raw_fd()
    }
}

/// A stop channel: the machine's end (kept by the machine for as long as
/// it lives) and the stub's (given to [`spawn`]).
pub fn stop_channel() -> std::io::Result<(StopSender, StopReceiver)> {
    let evt = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        StopSender {
            tx,
            evt: Arc::clone(&evt),
        },
        StopReceiver { rx, evt },
    ))
}

/// Why the machine could not do what the debugger asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The guest address is not mapped (or not in RAM): gdb gets an error
    /// reply and goes on.
    #[error("{0}")]
    Unmapped(String),
    /// Refused in this state, or a vCPU did not answer: an error reply.
    #[error("{0}")]
    Refused(String),
    /// The machine is gone: the session ends.
    #[error("the machine is gone")]
    Gone,
}

/// The machine as the stub drives it. Every call comes from the stub's
/// thread and may block until the machine has done it.
pub trait DebugMachine: Send {
    /// How many vCPUs (gdb threads 1 to N).
    fn vcpu_count(&self) -> u32;
    /// A client attached: stop the guest (run state `paused`); from now
    /// on, debug stops are reported through the machine's
    /// [`StopSender`].
    fn attach(&mut self) -> Result<(), MachineError>;
    /// The client pressed Ctrl-C: stop the guest (`paused`).
    fn interrupt(&mut self) -> Result<(), MachineError>;
    /// vCPU `vcpu`'s registers.
    fn read_registers(&mut self, vcpu: u32) -> Result<Registers, MachineError>;
    /// Sets vCPU `vcpu`'s general registers, RIP, RFLAGS and the x87 and
    /// SSE state (the segment selectors are left as they are).
    fn write_registers(&mut self, vcpu: u32, regs: &Registers) -> Result<(), MachineError>;
    /// Reads guest memory at virtual address `addr` as vCPU `vcpu` sees
    /// it: how many bytes were read (fewer where a page is unmapped).
    fn read_memory(&mut self, vcpu: u32, addr: u64, buf: &mut [u8]) -> Result<usize, MachineError>;
    /// Writes guest memory at virtual address `addr` as vCPU `vcpu` sees
    /// it, all of it or nothing beyond the first unmapped page.
    fn write_memory(&mut self, vcpu: u32, addr: u64, data: &[u8]) -> Result<(), MachineError>;
    /// Runs the guest with `plan`'s single steps and breakpoints (run
    /// state `running`) until a [`Stop`].
    fn resume(&mut self, plan: &ResumePlan) -> Result<(), MachineError>;
    /// The client went: no more debug stops, and the guest runs again
    /// unless it needs a reset.
    fn detach(&mut self) -> Result<(), MachineError>;
    /// The client asked to kill the target (`k`): end the VMM, as QEMU
    /// does.
    fn kill(&mut self) -> Result<(), MachineError>;
}
