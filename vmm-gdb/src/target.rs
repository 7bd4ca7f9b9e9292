//! The gdbstub target: the machine as gdb sees it, each vCPU a thread
//! (thread id = vCPU index + 1), and the blocking event loop that waits
//! for either the client or a stop while the guest runs.

use std::num::NonZeroUsize;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;

use crate::breakpoints::{HwBreakpoints, SlotKind, SwBreakpoints, INT3};
use crate::server::Conn;
use crate::{DebugMachine, MachineError, Registers, ResumePlan, Stop, StopKind, StopReceiver};

/// The vCPU whose page tables place the software breakpoints (gdb does
/// not say which thread a `Z0` is for; a kernel's text is mapped alike
/// on every vCPU).
const BREAKPOINT_VCPU: u32 = 0;

/// The machine, its breakpoints and the current client's stop channel.
pub(crate) struct VmTarget<M> {
    machine: M,
    vcpus: u32,
    sw: SwBreakpoints,
    hw: HwBreakpoints,
    /// vCPUs gdb asked to single-step on the next resume.
    step: Vec<u32>,
    stops: StopReceiver,
}

impl<M: DebugMachine> VmTarget<M> {
    pub(crate) fn new(machine: M, stops: StopReceiver) -> Result<Self, MachineError> {
        let vcpus = machine.vcpu_count();
        if vcpus == 0 {
            return Err(MachineError::Refused("the machine has no vCPU".into()));
        }
        Ok(Self {
            machine,
            vcpus,
            sw: SwBreakpoints::default(),
            hw: HwBreakpoints::default(),
            step: Vec::new(),
            stops,
        })
    }

    /// A client came: stop the machine; stops of an earlier session are
    /// forgotten.
    pub(crate) fn attach(&mut self) -> Result<(), MachineError> {
        self.step.clear();
        self.machine.attach()?;
        while self.stops.try_recv().is_some() {}
        Ok(())
    }

    /// The client went: every `int3` out of guest memory, debugging off,
    /// the guest running. Whether the machine is gone.
    pub(crate) fn detach(&mut self) -> bool {
        for (addr, byte) in self.sw.take_all() {
            if let Err(e) = self.machine.write_memory(BREAKPOINT_VCPU, addr, &[byte]) {
                log::warn!("gdb: cannot remove the breakpoint at {addr:#x}: {e}");
            }
        }
        self.hw.clear();
        match self.machine.detach() {
            Ok(()) => false,
            Err(MachineError::Gone) => true,
            Err(e) => {
                log::warn!("gdb: detach: {e}");
                false
            }
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Err(e) = self.machine.kill() {
            log::warn!("gdb: kill: {e}");
        }
    }

    fn vcpu(&self, tid: Tid) -> TargetResult<u32, Self> {
        u32::try_from(tid.get() - 1)
            .ok()
            .filter(|&v| v < self.vcpus)
            .ok_or(TargetError::NonFatal)
    }
}

fn tid_of(vcpu: u32) -> Tid {
    NonZeroUsize::new(vcpu as usize + 1).unwrap_or(NonZeroUsize::MIN)
}

/// An error reply for what the machine refused; the end of the session
/// when it is gone.
fn reply(e: MachineError) -> TargetError<MachineError> {
    match e {
        // EFAULT, as QEMU's gdbstub answers a bad address.
        MachineError::Unmapped(_) => TargetError::Errno(14),
        MachineError::Refused(why) => {
            log::debug!("gdb: {why}");
            TargetError::NonFatal
        }
        MachineError::Gone => TargetError::Fatal(MachineError::Gone),
    }
}

impl<M: DebugMachine> Target for VmTarget<M> {
    type Arch = X86_64_SSE;
    type Error = MachineError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl<M: DebugMachine> MultiThreadBase for VmTarget<M> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let vcpu = self.vcpu(tid)?;
        let r = self.machine.read_registers(vcpu).map_err(reply)?;
        *regs = X86_64CoreRegs::default();
        regs.regs = r.gprs;
        regs.rip = r.rip;
        regs.eflags = r.rflags as u32;
        let [cs, ss, ds, es, fs, gs] = r.segments.map(u32::from);
        regs.segments.cs = cs;
        regs.segments.ss = ss;
        regs.segments.ds = ds;
        regs.segments.es = es;
        regs.segments.fs = fs;
        regs.segments.gs = gs;
        crate::fpu::to_gdb(&r.fpu, regs);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let vcpu = self.vcpu(tid)?;
        let s = &regs.segments;
        let r = Registers {
            gprs: regs.regs,
            rip: regs.rip,
            rflags: u64::from(regs.eflags),
            segments: [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|v| v as u16),
            fpu: crate::fpu::from_gdb(regs),
        };
        self.machine.write_registers(vcpu, &r).map_err(reply)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let vcpu = self.vcpu(tid)?;
        // Past the top of the address space: an error (gdbstub adds the
        // next chunk's offset to `start` unchecked).
        if start.checked_add(data.len() as u64).is_none() {
            return Err(TargetError::Errno(14));
        }
        let n = self.machine.read_memory(vcpu, start, data).map_err(reply)?;
        if n == 0 && !data.is_empty() {
            return Err(TargetError::Errno(14));
        }
        self.sw.shadow(start, &mut data[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let vcpu = self.vcpu(tid)?;
        self.machine.write_memory(vcpu, start, data).map_err(reply)
    }

    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for vcpu in 0..self.vcpus {
            active(tid_of(vcpu));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<M: DebugMachine> MultiThreadResume for VmTarget<M> {
    fn resume(&mut self) -> Result<(), Self::Error> {
        // A stop that raced a Ctrl-C belongs to the past.
        while self.stops.try_recv().is_some() {}
        let plan = ResumePlan {
            step: std::mem::take(&mut self.step),
            sw_breakpoints: !self.sw.is_empty(),
            hw_breakpoints: self.hw.slots(),
        };
        self.machine.resume(&plan)
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.step.clear();
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        _tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        // Every vCPU runs on a resume; a signal means nothing to a CPU.
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl<M: DebugMachine> MultiThreadSchedulerLocking for VmTarget<M> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        // gdb steps one thread with the others held (stepping off a
        // breakpoint). The machine resumes all vCPUs together, so the
        // others run for as long as the step takes: a limit of this first
        // step (QEMU resumes only the stepped vCPU).
        Ok(())
    }
}

impl<M: DebugMachine> MultiThreadSingleStep for VmTarget<M> {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        match self.vcpu(tid) {
            Ok(vcpu) => {
                if !self.step.contains(&vcpu) {
                    self.step.push(vcpu);
                }
                Ok(())
            }
            Err(_) => Err(MachineError::Refused(format!("no thread {tid} to step"))),
        }
    }
}

impl<M: DebugMachine> Breakpoints for VmTarget<M> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<M: DebugMachine> SwBreakpoint for VmTarget<M> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.sw.contains(addr) {
            return Ok(true);
        }
        // No room: refused before anything is written.
        if !self.sw.has_room() {
            return Ok(false);
        }
        let mut original = [0u8];
        match self
            .machine
            .read_memory(BREAKPOINT_VCPU, addr, &mut original)
        {
            Ok(1) => {}
            Ok(_) | Err(MachineError::Unmapped(_)) => return Ok(false),
            Err(e) => return Err(reply(e)),
        }
        match self.machine.write_memory(BREAKPOINT_VCPU, addr, &[INT3]) {
            Ok(()) => {}
            Err(MachineError::Unmapped(_)) => return Ok(false),
            Err(e) => return Err(reply(e)),
        }
        self.sw.insert(addr, original[0]);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(original) = self.sw.remove(addr) else {
            return Ok(false);
        };
        match self
            .machine
            .write_memory(BREAKPOINT_VCPU, addr, &[original])
        {
            Ok(()) => Ok(true),
            Err(e) => {
                // Keep it: a later removal (or the detach) tries again.
                self.sw.insert(addr, original);
                Err(reply(e))
            }
        }
    }
}

impl<M: DebugMachine> HwBreakpoint for VmTarget<M> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw.insert(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw.remove(addr))
    }
}

/// The debug registers' kind for gdb's, or none: x86 has no read-only
/// data breakpoint, so `rwatch` (`Z3`) is refused (gdb says it could not
/// insert the watchpoint; `awatch` stops on reads and writes).
fn slot_kind(kind: WatchKind) -> Option<SlotKind> {
    match kind {
        WatchKind::Write => Some(SlotKind::Write),
        WatchKind::ReadWrite => Some(SlotKind::Access),
        WatchKind::Read => None,
    }
}

impl<M: DebugMachine> HwWatchpoint for VmTarget<M> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(slot_kind(kind).is_some_and(|k| self.hw.insert_watch(addr, len, k)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(slot_kind(kind).is_some_and(|k| self.hw.remove_watch(addr, len, k)))
    }
}

/// The blocking event loop gdbstub drives while the guest runs.
pub(crate) struct StubLoop<M>(std::marker::PhantomData<M>);

impl<M: DebugMachine> BlockingEventLoop for StubLoop<M> {
    type Target = VmTarget<M>;
    type Connection = Conn;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut VmTarget<M>,
        conn: &mut Conn,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<MachineError, std::io::Error>> {
        let stops = &target.stops;
        loop {
            if let Some(stop) = stops.try_recv() {
                return Ok(Event::TargetStopped(stop_reason(stop, &target.hw)));
            }
            if conn.has_buffered() {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            let mut fds = [
                libc::pollfd {
                    fd: conn.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stops.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the
            // duration of the call, and its length is passed with it.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(WaitForStopReasonError::Connection(e));
            }
            if fds[0].revents != 0 {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
        }
    }

    fn on_interrupt(target: &mut VmTarget<M>) -> Result<Option<Self::StopReason>, MachineError> {
        match target.machine.interrupt() {
            Ok(()) => Ok(Some(MultiThreadStopReason::Signal(Signal::SIGINT))),
            Err(MachineError::Gone) => Err(MachineError::Gone),
            Err(e) => {
                log::warn!("gdb: cannot stop the guest: {e}");
                Ok(Some(MultiThreadStopReason::Signal(Signal::SIGINT)))
            }
        }
    }
}

/// What gdb hears of `stop`: a debug register's hit is the breakpoint or
/// watchpoint in that slot (a watchpoint with the address it watches); a
/// hit on no slot of ours is a plain SIGTRAP.
fn stop_reason(stop: Stop, hw: &HwBreakpoints) -> MultiThreadStopReason<u64> {
    let tid = tid_of(stop.vcpu);
    let trap = MultiThreadStopReason::SignalWithThread {
        tid,
        signal: Signal::SIGTRAP,
    };
    match stop.kind {
        StopKind::SwBreakpoint => MultiThreadStopReason::SwBreak(tid),
        StopKind::DebugRegisters(hits) => match hw.hit(hits) {
            Some(slot) => match slot.kind {
                SlotKind::Execute => MultiThreadStopReason::HwBreak(tid),
                SlotKind::Write => MultiThreadStopReason::Watch {
                    tid,
                    kind: WatchKind::Write,
                    addr: slot.addr,
                },
                SlotKind::Access => MultiThreadStopReason::Watch {
                    tid,
                    kind: WatchKind::ReadWrite,
                    addr: slot.addr,
                },
            },
            None => trap,
        },
        StopKind::Step => trap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(kind: StopKind) -> Stop {
        Stop { vcpu: 1, kind }
    }

    #[test]
    fn debug_register_hits_become_gdb_stops() {
        let tid = tid_of(1);
        let mut hw = HwBreakpoints::default();
        assert!(hw.insert(0x1000));
        assert!(hw.insert_watch(0x2000, 8, SlotKind::Write));
        assert!(hw.insert_watch(0x3000, 2, SlotKind::Access));
        let r = |hits| stop_reason(stop(StopKind::DebugRegisters(hits)), &hw);
        assert!(matches!(r(0b001), MultiThreadStopReason::HwBreak(t) if t == tid));
        assert!(matches!(
            r(0b010),
            MultiThreadStopReason::Watch { tid: t, kind: WatchKind::Write, addr: 0x2000 } if t == tid
        ));
        assert!(matches!(
            r(0b100),
            MultiThreadStopReason::Watch {
                kind: WatchKind::ReadWrite,
                addr: 0x3000,
                ..
            }
        ));
        assert!(matches!(
            r(0b1000),
            MultiThreadStopReason::SignalWithThread {
                signal: Signal::SIGTRAP,
                ..
            }
        ));
        assert!(matches!(
            stop_reason(stop(StopKind::SwBreakpoint), &hw),
            MultiThreadStopReason::SwBreak(t) if t == tid
        ));
        assert!(matches!(
            stop_reason(stop(StopKind::Step), &hw),
            MultiThreadStopReason::SignalWithThread {
                signal: Signal::SIGTRAP,
                ..
            }
        ));
        assert_eq!(slot_kind(WatchKind::Read), None, "no read-only on x86");
    }
}
