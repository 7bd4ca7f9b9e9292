//! Guest debugging through KVM (QEMU's `kvm_update_guest_debug`): single
//! step, software breakpoints (`int3` reported to userspace instead of the
//! guest) and the four hardware breakpoint registers, set per vCPU with
//! `KVM_SET_GUEST_DEBUG` on the vCPU's own thread.
//!
//! What to ask for is plain data ([`GuestDebug`]) turned into KVM's struct
//! by a pure function, tested without `/dev/kvm`; [`apply`] issues the
//! ioctl. A vCPU that stops for one of these exits with `KVM_EXIT_DEBUG`,
//! which the vCPU thread turns into [`crate::vcpu::VcpuRequest::Debug`].

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};
use kvm_ioctls::VcpuFd;

/// How many hardware breakpoints x86 has (DR0 to DR3).
pub const HW_BREAKPOINTS: usize = 4;

/// The `#DB` exception vector: a finished single step or a hardware
/// breakpoint (`KVM_EXIT_DEBUG`'s `exception`).
pub const DB_VECTOR: u32 = 1;
/// The `#BP` exception vector: an `int3` (a software breakpoint).
pub const BP_VECTOR: u32 = 3;

/// DR6's B0..B3: which hardware breakpoint fired.
pub const DR6_BREAKPOINTS: u64 = 0xf;
/// DR6's BS: a single step finished.
pub const DR6_SINGLE_STEP: u64 = 1 << 14;

/// What one vCPU should stop for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Stop after the next instruction.
    pub single_step: bool,
    /// Report `int3` to the VMM rather than to the guest.
    pub sw_breakpoints: bool,
    /// Instruction breakpoints at these linear addresses (DR0 to DR3).
    pub hw_breakpoints: [Option<u64>; HW_BREAKPOINTS],
}

impl GuestDebug {
    /// Whether this asks for anything (else debugging is turned off).
    pub fn is_active(&self) -> bool {
        self.single_step || self.sw_breakpoints || self.hw_breakpoints.iter().any(Option::is_some)
    }

    /// KVM's struct for this: no flags at all when nothing is asked (guest
    /// debugging off), else `ENABLE` and a flag per feature; the hardware
    /// breakpoints in DR0..DR3 with DR7 enabling each as an execute
    /// breakpoint (R/W 00, LEN 00) through its global-enable bit, plus
    /// DR7's GE/LE bits (0x600 is what QEMU writes).
    pub fn to_kvm(&self) -> kvm_guest_debug {
        let mut dbg = kvm_guest_debug::default();
        if !self.is_active() {
            return dbg;
        }
        dbg.control = KVM_GUESTDBG_ENABLE;
        if self.single_step {
            dbg.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if self.sw_breakpoints {
            dbg.control |= KVM_GUESTDBG_USE_SW_BP;
        }
        let mut dr7 = 0u64;
        for (n, addr) in self.hw_breakpoints.iter().enumerate() {
            if let Some(addr) = addr {
                dbg.arch.debugreg[n] = *addr;
                dr7 |= 2 << (n * 2);
            }
        }
        if dr7 != 0 {
            dbg.control |= KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[7] = 0x600 | dr7;
        }
        dbg
    }
}

/// Sets what `vcpu` stops for (`KVM_SET_GUEST_DEBUG`). Call it on the
/// vCPU's own thread, with the vCPU out of `KVM_RUN`.
pub fn apply(vcpu: &VcpuFd, debug: &GuestDebug) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_guest_debug(&debug.to_kvm())
}

/// Why a vCPU stopped with `KVM_EXIT_DEBUG`, from the exit's exception
/// vector and DR6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// An `int3` (a software breakpoint).
    SwBreakpoint,
    /// A hardware breakpoint (DR6's B0..B3).
    HwBreakpoint,
    /// A finished single step.
    Step,
}

impl DebugStop {
    /// Reads `KVM_EXIT_DEBUG`'s `exception` and `dr6`.
    pub fn from_exit(exception: u32, dr6: u64) -> Self {
        if exception == BP_VECTOR {
            Self::SwBreakpoint
        } else if exception == DB_VECTOR && dr6 & DR6_BREAKPOINTS != 0 {
            Self::HwBreakpoint
        } else {
            Self::Step
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_turns_debugging_off() {
        let dbg = GuestDebug::default().to_kvm();
        assert_eq!(dbg.control, 0);
        assert_eq!(dbg.arch.debugreg, [0; 8]);
    }

    #[test]
    fn flags_follow_the_request() {
        let step = GuestDebug {
            single_step: true,
            ..Default::default()
        };
        assert_eq!(
            step.to_kvm().control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
        );
        let sw = GuestDebug {
            sw_breakpoints: true,
            ..Default::default()
        };
        assert_eq!(
            sw.to_kvm().control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP
        );
    }

    #[test]
    fn hardware_breakpoints_fill_dr0_to_dr3_and_dr7() {
        let hw = GuestDebug {
            hw_breakpoints: [Some(0x1000), None, Some(0x2000), None],
            ..Default::default()
        };
        let dbg = hw.to_kvm();
        assert_eq!(dbg.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(dbg.arch.debugreg[0], 0x1000);
        assert_eq!(dbg.arch.debugreg[1], 0);
        assert_eq!(dbg.arch.debugreg[2], 0x2000);
        // G0 (bit 1) and G2 (bit 5), execute breakpoints of length 1.
        assert_eq!(dbg.arch.debugreg[7], 0x600 | 0b10 | 0b10_0000);
    }

    #[test]
    fn exits_are_told_apart() {
        assert_eq!(DebugStop::from_exit(3, 0), DebugStop::SwBreakpoint);
        assert_eq!(DebugStop::from_exit(1, DR6_SINGLE_STEP), DebugStop::Step);
        assert_eq!(DebugStop::from_exit(1, 0x4), DebugStop::HwBreakpoint);
    }
}
