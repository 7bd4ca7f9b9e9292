//! One `KVM_RUN` and the dispatch of its exit (QEMU's `kvm_cpu_exec`).
//!
//! Kept apart from the thread so that what each exit means is in one place.

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::run_map::KvmRunMap;
use super::VcpuRequest;
use crate::io::IoHandler;

/// Runs the vCPU until its next exit and handles it. Returns a request for
/// the main loop when the exit is one the vCPU cannot handle itself.
pub(crate) fn run_once(
    vcpu: &mut VcpuFd,
    run_map: &KvmRunMap,
    io: &dyn IoHandler,
    index: u32,
) -> Option<VcpuRequest> {
    let mut internal_error = false;
    let mut triple_fault = false;
    let request = match vcpu.run() {
        Ok(exit) => match exit {
            VcpuExit::IoOut(port, data) => {
                // String I/O (`rep outs`) comes as count*size bytes: one
                // access per element, as the instruction would do them.
                let size = run_map.io_size().clamp(1, 4);
                for element in data.chunks(size) {
                    io.pio_write(port, element);
                }
                None
            }
            VcpuExit::IoIn(port, data) => {
                let size = run_map.io_size().clamp(1, 4);
                for element in data.chunks_mut(size) {
                    io.pio_read(port, element);
                }
                None
            }
            VcpuExit::MmioRead(addr, data) => {
                io.mmio_read(addr, data);
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                io.mmio_write(addr, data);
                None
            }
            // Split irqchip only: a level-triggered vector's EOI.
            VcpuExit::IoapicEoi(vector) => {
                io.ioapic_eoi(vector);
                None
            }
            // The interrupt window asked for (`extint.rs`): the next
            // run injects.
            VcpuExit::IrqWindowOpen => None,
            // Only without the in-kernel irqchip: there the kernel halts.
            VcpuExit::Hlt => Some(VcpuRequest::Halted { vcpu: index }),
            // A triple fault: a PC resets (below, with where it happened).
            VcpuExit::Shutdown => {
                triple_fault = true;
                None
            }
            VcpuExit::SystemEvent(kind, _) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuRequest::Shutdown { vcpu: index },
                KVM_SYSTEM_EVENT_RESET => VcpuRequest::Reset {
                    vcpu: index,
                    reason: "system event reset".into(),
                },
                KVM_SYSTEM_EVENT_CRASH => VcpuRequest::InternalError {
                    vcpu: index,
                    reason: "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into(),
                },
                other => VcpuRequest::InternalError {
                    vcpu: index,
                    reason: format!("unknown KVM system event {other}"),
                },
            }),
            VcpuExit::FailEntry(reason, cpu) => Some(VcpuRequest::InternalError {
                vcpu: index,
                reason: format!(
                    "KVM could not enter the guest (hardware entry failure reason {reason:#x}, host cpu {cpu})"
                ),
            }),
            VcpuExit::InternalError => {
                internal_error = true;
                None
            }
            // A breakpoint or a finished single step, for the debugger.
            VcpuExit::Debug(debug) => Some(VcpuRequest::Debug {
                vcpu: index,
                exception: debug.exception,
                pc: debug.pc,
                dr6: debug.dr6,
                emulated_int3: false,
            }),
            // Interrupted by a kick.
            VcpuExit::Intr => {
                run_map.set_immediate_exit(false);
                None
            }
            other => Some(VcpuRequest::InternalError {
                vcpu: index,
                reason: format!("unexpected KVM exit {other:?}"),
            }),
        },
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // A kick: immediate_exit made KVM_RUN return before entering.
            run_map.set_immediate_exit(false);
            None
        }
        Err(e) => Some(VcpuRequest::InternalError {
            vcpu: index,
            reason: format!("KVM_RUN failed: {e}"),
        }),
    };
    if internal_error {
        let run = vcpu.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is
        // the active member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = usize::try_from(internal.ndata)
            .unwrap_or(0)
            .min(internal.data.len());
        if emulation_failed_at_int3(internal.suberror, &internal.data[..n]) {
            return Some(VcpuRequest::Debug {
                vcpu: index,
                exception: crate::guest_debug::BP_VECTOR,
                pc: vcpu.get_regs().map(|r| r.rip).unwrap_or(0),
                dr6: 0,
                emulated_int3: true,
            });
        }
        return Some(VcpuRequest::InternalError {
            vcpu: index,
            reason: format!(
                "KVM internal error, suberror {} (data {:x?})",
                internal.suberror,
                &internal.data[..n]
            ),
        });
    }
    if triple_fault {
        return Some(VcpuRequest::Reset {
            vcpu: index,
            reason: triple_fault_reason(vcpu, index),
        });
    }
    request
}

/// Whether an internal error is KVM failing to emulate an `int3`: what
/// the PVM software hypervisor reports for a software breakpoint with
/// `KVM_GUESTDBG_USE_SW_BP` instead of `KVM_EXIT_DEBUG` (seen on this
/// project's hosts). The exit's data is the emulation-failure layout:
/// flags, then the instruction's length and bytes (the low byte of the
/// second word, then the bytes above it).
fn emulation_failed_at_int3(suberror: u32, data: &[u64]) -> bool {
    let [flags, insn, ..] = data else {
        return false;
    };
    suberror == KVM_INTERNAL_ERROR_EMULATION
        && flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        && insn & 0xff != 0
        && (insn >> 8) & 0xff == 0xcc
}

/// "triple fault" and where: a guest that resets by a triple fault on
/// purpose (Linux's `reboot=t`) looks the same as one that crashed in a
/// way nothing could report, and only the registers tell them apart. On
/// AMD, KVM has already put the vCPU in its reset state when it reports
/// the shutdown (the VMCB is undefined after one), so there is nothing to
/// show, and the reason says so.
fn triple_fault_reason(vcpu: &VcpuFd, index: u32) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => format!(
            "triple fault on vCPU {index} (already in its reset state: no registers to show)"
        ),
        (Ok(r), Ok(s)) => format!(
            "triple fault on vCPU {index} at RIP={:#x} RSP={:#x} CR0={:#x} CR2={:#x} CR3={:#x} \
             IDT={:#x}+{:#x}",
            r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.idt.base, s.idt.limit
        ),
        _ => format!("triple fault on vCPU {index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_int3_that_could_not_be_emulated_is_told_apart() {
        // What PVM gave at a software breakpoint: flags 1, 15 bytes from
        // `cc 07 8b 07 b9 08 00`.
        let data = [1, 0x0008_b907_8b07_cc0f, 0x83c3_8904_c0c1_0000];
        assert!(emulation_failed_at_int3(1, &data));
        assert!(!emulation_failed_at_int3(2, &data), "another suberror");
        assert!(!emulation_failed_at_int3(1, &[0, data[1]]), "no bytes");
        assert!(!emulation_failed_at_int3(1, &[1, 0x0008_b907_8b07_ff0f]));
        assert!(!emulation_failed_at_int3(1, &[1]));
    }
}
