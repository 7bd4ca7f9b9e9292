//! The gdb stub's requests, carried out on the main loop (QEMU's
//! `gdbstub/system.c` and `kvm_arch_*_breakpoint`), and the vCPUs' debug
//! stops.
//!
//! - attach and Ctrl-C stop the guest in `paused`; a breakpoint or a
//!   finished single step stops it in `debug` and tells the stub;
//! - registers (`KVM_GET_REGS`, `KVM_GET_SREGS`, and `KVM_GET_XSAVE` for
//!   the x87 and SSE state) and the vCPU's paging registers are read on
//!   the vCPU's own thread
//!   ([`Vcpus::call_each`](vmm_core::vcpu::Vcpus::call_each)), and written
//!   there (`KVM_SET_REGS`, `KVM_SET_XSAVE`);
//! - memory is read and written here, by virtual address, through the
//!   guest's page tables ([`vmm_gdb::paging`]) over guest RAM: an unmapped
//!   page ends the access there, never a panic;
//! - a resume sets each vCPU's guest debugging (`KVM_SET_GUEST_DEBUG`,
//!   [`vmm_core::guest_debug`]) and runs the guest; a detach turns it off
//!   everywhere and runs the guest again.

use kvm_bindings::kvm_xsave;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::guest_debug::{self, DebugCondition, DebugRegister, DebugStop, GuestDebug};
use vmm_core::ram::GuestRam;
use vmm_gdb::paging::{self, PagingRegs, PhysMemory};
use vmm_gdb::{FpuRegisters, HwSlot, Registers, ResumePlan, SlotKind, Stop, StopKind, StopSender};
use vmm_runstate::RunState;

use super::{CommandFailure, PcError, PcMachine};
use crate::control::{GdbRequest, MachineEvent, Reply};

/// The gdb stub's side of the machine.
#[derive(Debug, Default)]
pub(super) struct GdbState {
    /// Where debug stops go (`--gdb`).
    stops: Option<StopSender>,
    /// A client is attached: debug stops stop the machine.
    attached: bool,
    /// The last resume had software breakpoints in guest memory.
    sw_breakpoints: bool,
    /// The last resume's plan: what a debug stop leaves in place but its
    /// single steps.
    plan: ResumePlan,
}

/// Guest RAM as the page-table walk reads it.
struct Ram<'a>(&'a GuestRam);

impl PhysMemory for Ram<'_> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.0.read_obj::<u64>(GuestAddress(gpa)).ok()
    }

    fn read_u32(&self, gpa: u64) -> Option<u32> {
        self.0.read_obj::<u32>(GuestAddress(gpa)).ok()
    }
}

fn refused(what: impl std::fmt::Display) -> CommandFailure {
    CommandFailure::Refused(what.to_string())
}

/// Where `FXSAVE`'s fields are in an XSAVE area's legacy region, and
/// the header's XSTATE_BV.
mod xsave_at {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
    pub const XSTATE_BV: usize = 512;
    /// XSTATE_BV's x87 and SSE bits.
    pub const X87_SSE: u64 = 0b11;
}

/// The XSAVE area (`KVM_GET_XSAVE`: the standard, uncompacted layout,
/// components in their initial state filled in by KVM) as bytes.
fn xsave_bytes(x: &kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// The x87 and SSE state in an XSAVE area's legacy region (`FXSAVE`'s
/// 64-bit layout). (`KVM_GET_FPU` would give the same fields but MXCSR,
/// which it leaves out; the XSAVE area has it.)
fn fpu_of(x: &kvm_xsave) -> FpuRegisters {
    use xsave_at::*;
    let b = xsave_bytes(x);
    FpuRegisters {
        st: std::array::from_fn(|i| le::<10>(&b, ST + 16 * i)),
        fcw: u16::from_le_bytes(le(&b, FCW)),
        fsw: u16::from_le_bytes(le(&b, FSW)),
        ftw: b[FTW],
        fop: u16::from_le_bytes(le(&b, FOP)),
        fip: u64::from_le_bytes(le(&b, FIP)),
        fdp: u64::from_le_bytes(le(&b, FDP)),
        xmm: std::array::from_fn(|i| u128::from_le_bytes(le(&b, XMM + 16 * i))),
        mxcsr: u32::from_le_bytes(le(&b, MXCSR)),
    }
}

/// `x` with the state gdb wrote in its legacy region, the x87 and SSE
/// components marked in use (XSTATE_BV) so that KVM loads them; the
/// reserved bytes, MXCSR_MASK and the other components as they were.
fn set_fpu_of(x: &mut kvm_xsave, new: &FpuRegisters) {
    use xsave_at::*;
    let mut b = xsave_bytes(x);
    let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(FCW, &new.fcw.to_le_bytes());
    put(FSW, &new.fsw.to_le_bytes());
    put(FTW, &[new.ftw]);
    put(FOP, &new.fop.to_le_bytes());
    put(FIP, &new.fip.to_le_bytes());
    put(FDP, &new.fdp.to_le_bytes());
    put(MXCSR, &new.mxcsr.to_le_bytes());
    for (i, st) in new.st.iter().enumerate() {
        put(ST + 16 * i, st);
    }
    for (i, xmm) in new.xmm.iter().enumerate() {
        put(XMM + 16 * i, &xmm.to_le_bytes());
    }
    let bv = u64::from_le_bytes(le(&b, XSTATE_BV)) | X87_SSE;
    b[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    for (w, chunk) in x.region.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_le_bytes(le(chunk, 0));
    }
}

/// A debug register for one of the stub's slots.
fn debug_register(slot: &HwSlot) -> DebugRegister {
    DebugRegister {
        addr: slot.addr,
        condition: match slot.kind {
            SlotKind::Execute => DebugCondition::Execute,
            SlotKind::Write => DebugCondition::Write,
            SlotKind::Access => DebugCondition::ReadWrite,
        },
        len: slot.len,
    }
}

impl PcMachine {
    /// Debug stops (breakpoints, single steps) go to `stops` while a gdb
    /// client is attached (`--gdb`).
    pub fn set_gdb_stops(&mut self, stops: StopSender) {
        self.gdb.stops = Some(stops);
    }

    /// Carries out one request of the gdb stub.
    pub(super) fn gdb_command(&mut self, request: GdbRequest) -> Result<Reply, CommandFailure> {
        match request {
            GdbRequest::Attach => {
                self.gdb.attached = true;
                self.gdb_stop()?;
                Ok(Reply::Done)
            }
            GdbRequest::Interrupt => {
                self.gdb_stop()?;
                Ok(Reply::Done)
            }
            GdbRequest::ReadRegisters { vcpu } => {
                let (regs, sregs, fpu) = self.on_vcpu(vcpu, |fd| {
                    Ok((fd.get_regs()?, fd.get_sregs()?, fd.get_xsave()?))
                })?;
                Ok(Reply::GdbRegisters(Box::new(Registers {
                    gprs: [
                        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp,
                        regs.rsp, regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13,
                        regs.r14, regs.r15,
                    ],
                    rip: regs.rip,
                    rflags: regs.rflags,
                    segments: [sregs.cs, sregs.ss, sregs.ds, sregs.es, sregs.fs, sregs.gs]
                        .map(|s| s.selector),
                    fpu: fpu_of(&fpu),
                })))
            }
            GdbRequest::WriteRegisters { vcpu, regs: new } => {
                self.on_vcpu(vcpu, move |fd| {
                    let mut r = fd.get_regs()?;
                    let g = new.gprs;
                    (r.rax, r.rbx, r.rcx, r.rdx) = (g[0], g[1], g[2], g[3]);
                    (r.rsi, r.rdi, r.rbp, r.rsp) = (g[4], g[5], g[6], g[7]);
                    (r.r8, r.r9, r.r10, r.r11) = (g[8], g[9], g[10], g[11]);
                    (r.r12, r.r13, r.r14, r.r15) = (g[12], g[13], g[14], g[15]);
                    r.rip = new.rip;
                    // Bit 1 of RFLAGS is always set.
                    r.rflags = new.rflags | 2;
                    fd.set_regs(&r)?;
                    let mut x = fd.get_xsave()?;
                    set_fpu_of(&mut x, &new.fpu);
                    // SAFETY: the area came from KVM_GET_XSAVE on this
                    // vCPU just now, on a VMM that never enables dynamic
                    // XSAVE features (AMX), so its state fits the 4 KiB
                    // layout KVM_SET_XSAVE reads.
                    unsafe { fd.set_xsave(&x) }
                })?;
                Ok(Reply::Done)
            }
            GdbRequest::ReadMemory { vcpu, addr, len } => {
                let paging = self.paging_regs(vcpu)?;
                let mut buf = vec![0u8; len];
                let n = self.access(&paging, addr, len, |mem, gpa, range| {
                    mem.read_slice(&mut buf[range], gpa).is_ok()
                });
                buf.truncate(n);
                Ok(Reply::GdbMemory(buf))
            }
            GdbRequest::WriteMemory { vcpu, addr, data } => {
                let paging = self.paging_regs(vcpu)?;
                let n = self.access(&paging, addr, data.len(), |mem, gpa, range| {
                    // Through vm-memory: guest RAM's dirty bitmap has it
                    // for a migration under way.
                    mem.write_slice(&data[range], gpa).is_ok()
                });
                Ok(Reply::GdbWritten(n))
            }
            GdbRequest::Resume(plan) => self.gdb_resume(&plan),
            GdbRequest::Detach => {
                self.gdb.attached = false;
                self.gdb.sw_breakpoints = false;
                self.set_guest_debug(&ResumePlan::default())?;
                if matches!(self.runstate.state(), RunState::Paused | RunState::Debug) {
                    self.start().map_err(CommandFailure::Machine)?;
                    self.emit(MachineEvent::Resume);
                }
                Ok(Reply::Done)
            }
        }
    }

    /// A vCPU stopped with `KVM_EXIT_DEBUG` (and parked): with a client
    /// attached the machine stops in `debug` and the stub hears why; else
    /// (a stop left over from a client that went) the guest runs on. An
    /// `int3` KVM could not emulate (PVM's software breakpoint) is a
    /// breakpoint only while the stub has set some; otherwise it is the
    /// internal error it is, whose reason this returns.
    pub(super) fn debug_stop(
        &mut self,
        vcpu: u32,
        exception: u32,
        dr6: u64,
        emulated_int3: bool,
    ) -> Result<Option<String>, PcError> {
        log::debug!("vCPU {vcpu}: debug exit: exception {exception}, DR6 {dr6:#x}");
        if emulated_int3 && !(self.gdb.attached && self.gdb.sw_breakpoints) {
            return Ok(Some("KVM could not emulate an int3 instruction".into()));
        }
        if !self.runstate.is_running() {
            // Another vCPU's stop already stopped the machine; this one
            // stays parked with it.
            return Ok(None);
        }
        let stops = self.gdb.stops.clone().filter(|_| self.gdb.attached);
        let Some(stops) = stops else {
            log::debug!("vCPU {vcpu}: a debug exit with no gdb client; running on");
            self.vcpus.resume_all()?;
            return Ok(None);
        };
        self.stop_with(RunState::Debug)?;
        // Single steps end with the stop (as QEMU's): a `cont` from the
        // monitor or QMP runs the guest on, not one more instruction. The
        // breakpoints stay.
        if !self.gdb.plan.step.is_empty() {
            self.gdb.plan.step.clear();
            match self.set_guest_debug(&self.gdb.plan) {
                Ok(()) => {}
                Err(CommandFailure::Refused(e)) => {
                    log::warn!("gdb: cannot end the single step: {e}");
                }
                Err(CommandFailure::Machine(e)) => return Err(e),
            }
        }
        let kind = match DebugStop::from_exit(exception, dr6) {
            DebugStop::SwBreakpoint => StopKind::SwBreakpoint,
            DebugStop::HwBreakpoint { hits } => StopKind::DebugRegisters(hits),
            DebugStop::Step => StopKind::Step,
        };
        stops.send(Stop { vcpu, kind });
        Ok(None)
    }

    /// Attach and Ctrl-C: a running guest stops in `paused`.
    fn gdb_stop(&mut self) -> Result<(), CommandFailure> {
        if self.runstate.is_running() {
            self.stop_with(RunState::Paused)
                .map_err(CommandFailure::Machine)?;
        }
        Ok(())
    }

    fn gdb_resume(&mut self, plan: &ResumePlan) -> Result<Reply, CommandFailure> {
        let state = self.runstate.state();
        if self.runstate.needs_reset() {
            return Err(refused("Resetting the Virtual Machine is required"));
        }
        if !matches!(
            state,
            RunState::Paused | RunState::Debug | RunState::Prelaunch
        ) {
            return Err(refused(format!("cannot run the guest in state {state}")));
        }
        self.set_guest_debug(plan)?;
        self.gdb.sw_breakpoints = plan.sw_breakpoints;
        self.gdb.plan = plan.clone();
        self.start().map_err(CommandFailure::Machine)?;
        self.emit(MachineEvent::Resume);
        Ok(Reply::Done)
    }

    /// Each vCPU's guest debugging for `plan` (all off for the default).
    fn set_guest_debug(&self, plan: &ResumePlan) -> Result<(), CommandFailure> {
        let results = self
            .vcpus
            .call_each(|i| {
                let debug = GuestDebug {
                    single_step: plan.step.contains(&i),
                    sw_breakpoints: plan.sw_breakpoints,
                    hw_breakpoints: plan.hw_breakpoints.map(|s| s.as_ref().map(debug_register)),
                };
                move |fd: &VcpuFd| guest_debug::apply(fd, &debug)
            })
            .map_err(|e| refused(format!("cannot reach the vCPUs: {e}")))?;
        for (i, r) in results.into_iter().enumerate() {
            r.map_err(|e| refused(format!("vCPU {i}: cannot set guest debugging: {e}")))?;
        }
        Ok(())
    }

    /// Runs `work` on vCPU `vcpu`'s thread.
    fn on_vcpu<T: Send + 'static>(
        &self,
        vcpu: u32,
        work: impl FnOnce(&VcpuFd) -> Result<T, kvm_ioctls::Error> + Send + 'static,
    ) -> Result<T, CommandFailure> {
        if vcpu as usize >= self.vcpus.len() {
            return Err(refused(format!("no vCPU {vcpu}")));
        }
        // call_each asks for a closure per vCPU; only ours gets the work.
        let work = std::cell::Cell::new(Some(work));
        let results = self
            .vcpus
            .call_each(|i| {
                let mine = if i == vcpu { work.take() } else { None };
                move |fd: &VcpuFd| mine.map(|w| w(fd))
            })
            .map_err(|e| refused(format!("cannot reach vCPU {vcpu}: {e}")))?;
        results
            .into_iter()
            .nth(vcpu as usize)
            .flatten()
            .ok_or_else(|| refused(format!("vCPU {vcpu} gave nothing")))?
            .map_err(|e| refused(format!("vCPU {vcpu}: {e}")))
    }

    fn paging_regs(&self, vcpu: u32) -> Result<PagingRegs, CommandFailure> {
        let s = self.on_vcpu(vcpu, |fd| fd.get_sregs())?;
        Ok(PagingRegs {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }

    /// Walks `len` bytes from virtual `addr` page by page, calling `io`
    /// with each physical piece and its range in the caller's buffer;
    /// how many bytes were done before an unmapped page or a failed
    /// access.
    fn access(
        &self,
        paging: &PagingRegs,
        addr: u64,
        len: usize,
        mut io: impl FnMut(&GuestRam, GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> usize {
        let mem = self.vm.memory();
        let mut done = 0usize;
        while done < len {
            let va = addr.wrapping_add(done as u64);
            let Ok(t) = paging::translate(paging, va, &Ram(mem)) else {
                break;
            };
            let piece = usize::try_from(t.len_in_page)
                .unwrap_or(usize::MAX)
                .min(len - done);
            if !io(mem, GuestAddress(t.gpa), done..done + piece) {
                break;
            }
            done += piece;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_region_round_trips() {
        let mut x = kvm_xsave::default();
        // Something in AVX's component and MXCSR_MASK, to be kept.
        x.region[576 / 4] = 0xdead_beef;
        x.region[28 / 4] = 0xffff;
        let fpu = FpuRegisters {
            st: std::array::from_fn(|i| [i as u8 + 1; 10]),
            fcw: 0x37f,
            fsw: 0x3800,
            ftw: 0x80,
            fop: 0x123,
            fip: 0xffff_ffff_8100_0000,
            fdp: 0x7fff_0000_1000,
            xmm: std::array::from_fn(|i| u128::MAX - i as u128),
            mxcsr: 0x1fa0,
        };
        set_fpu_of(&mut x, &fpu);
        assert_eq!(fpu_of(&x), fpu);
        let b = xsave_bytes(&x);
        assert_eq!(&b[24..28], &0x1fa0u32.to_le_bytes(), "MXCSR");
        assert_eq!(&b[32..42], &[1; 10], "ST0");
        assert_eq!(&b[42..48], &[0; 6], "ST0's reserved bytes");
        assert_eq!(&b[160..176], &u128::MAX.to_le_bytes(), "XMM0");
        assert_eq!(b[512] & 0b11, 0b11, "x87 and SSE in use");
        assert_eq!(x.region[576 / 4], 0xdead_beef);
        assert_eq!(x.region[28 / 4], 0xffff);
    }
}
