//! Guest debugging through KVM (QEMU's `kvm_update_guest_debug`): single
//! step, software breakpoints (`int3` reported to userspace instead of the
//! guest) and the four debug address registers (DR0 to DR3: instruction
//! breakpoints and data watchpoints, DR7 saying which), set per vCPU with
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

/// What a debug register stops for (DR7's R/W field for its slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugCondition {
    /// Executing the instruction at the address (R/W 00; the length must
    /// be 1): a fault, before the instruction runs.
    Execute,
    /// A data write (R/W 01): a trap, after the writing instruction.
    Write,
    /// A data read or write (R/W 11; x86 has no read-only condition): a
    /// trap.
    ReadWrite,
}

/// One of DR0 to DR3 in use: the linear address, what it stops for and
/// how many bytes it covers (1, 2, 4 or 8, the address aligned to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugRegister {
    /// The linear address.
    pub addr: u64,
    /// Execute, write or read/write.
    pub condition: DebugCondition,
    /// 1, 2, 4 or 8 bytes (1 for [`DebugCondition::Execute`]).
    pub len: u8,
}

impl DebugRegister {
    /// An instruction breakpoint at `addr`.
    pub fn execute(addr: u64) -> Self {
        Self {
            addr,
            condition: DebugCondition::Execute,
            len: 1,
        }
    }

    /// This slot's bits of DR7 for slot `n` (0 to 3): G`n` (global
    /// enable, bit 2n+1), R/W`n` (bits 16+4n, 17+4n) and LEN`n` (bits
    /// 18+4n, 19+4n; 00 one byte, 01 two, 11 four, 10 eight). `None` for
    /// a length that is not 1, 2, 4 or 8, an address not aligned to it,
    /// or an instruction breakpoint longer than a byte.
    pub fn dr7_bits(&self, n: usize) -> Option<u64> {
        if n >= HW_BREAKPOINTS {
            return None;
        }
        let len: u64 = match self.len {
            1 => 0b00,
            2 => 0b01,
            4 => 0b11,
            8 => 0b10,
            _ => return None,
        };
        if self.addr % u64::from(self.len) != 0 {
            return None;
        }
        let rw: u64 = match self.condition {
            DebugCondition::Execute if self.len != 1 => return None,
            DebugCondition::Execute => 0b00,
            DebugCondition::Write => 0b01,
            DebugCondition::ReadWrite => 0b11,
        };
        let shift = 16 + 4 * n;
        Some((2 << (n * 2)) | (rw << shift) | (len << (shift + 2)))
    }
}

/// DR7's GE bit (9) and its always-one bit 10, as QEMU writes them.
pub const DR7_FIXED: u64 = 0x600;

/// What one vCPU should stop for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Stop after the next instruction.
    pub single_step: bool,
    /// Report `int3` to the VMM rather than to the guest.
    pub sw_breakpoints: bool,
    /// Instruction breakpoints and watchpoints in DR0 to DR3.
    pub hw_breakpoints: [Option<DebugRegister>; HW_BREAKPOINTS],
}

impl GuestDebug {
    /// Whether this asks for anything (else debugging is turned off).
    pub fn is_active(&self) -> bool {
        self.single_step || self.sw_breakpoints || self.hw_breakpoints.iter().any(Option::is_some)
    }

    /// KVM's struct for this: no flags at all when nothing is asked (guest
    /// debugging off), else `ENABLE` and a flag per feature; the hardware
    /// breakpoints and watchpoints in DR0..DR3 with DR7 enabling each
    /// through its global-enable bit, its R/W and LEN fields set (see
    /// [`DebugRegister::dr7_bits`]), plus [`DR7_FIXED`]. A slot whose
    /// length or alignment DR7 cannot express is left out (the stub never
    /// asks for one).
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
        for (n, reg) in self.hw_breakpoints.iter().enumerate() {
            let Some(reg) = reg else { continue };
            let Some(bits) = reg.dr7_bits(n) else {
                log::warn!("DR{n}: {reg:?} cannot be expressed in DR7; left out");
                continue;
            };
            dbg.arch.debugreg[n] = reg.addr;
            dr7 |= bits;
        }
        if dr7 != 0 {
            dbg.control |= KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[7] = DR7_FIXED | dr7;
        }
        dbg
    }
}

/// Sets what `vcpu` stops for (`KVM_SET_GUEST_DEBUG`). Call it on the
/// vCPU's own thread, with the vCPU out of `KVM_RUN`.
pub fn apply(vcpu: &VcpuFd, debug: &GuestDebug) -> Result<(), kvm_ioctls::Error> {
    let kvm = debug.to_kvm();
    log::debug!(
        "KVM_SET_GUEST_DEBUG: control {:#x}, DR0-3 {:x?}, DR7 {:#x}",
        kvm.control,
        &kvm.arch.debugreg[..4],
        kvm.arch.debugreg[7]
    );
    vcpu.set_guest_debug(&kvm)
}

/// Why a vCPU stopped with `KVM_EXIT_DEBUG`, from the exit's exception
/// vector and DR6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// An `int3` (a software breakpoint).
    SwBreakpoint,
    /// A hardware breakpoint or watchpoint: DR6's B0..B3, a bit per debug
    /// register whose condition was met (bit n for DRn).
    HwBreakpoint {
        /// DR6's B0..B3.
        hits: u8,
    },
    /// A finished single step.
    Step,
}

impl DebugStop {
    /// Reads `KVM_EXIT_DEBUG`'s `exception` and `dr6`. A step that also
    /// met a watchpoint's condition (DR6's BS and a B bit) is the
    /// watchpoint: the debugger wants to hear of the data access.
    pub fn from_exit(exception: u32, dr6: u64) -> Self {
        if exception == BP_VECTOR {
            Self::SwBreakpoint
        } else if exception == DB_VECTOR && dr6 & DR6_BREAKPOINTS != 0 {
            Self::HwBreakpoint {
                hits: (dr6 & DR6_BREAKPOINTS) as u8,
            }
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
            hw_breakpoints: [
                Some(DebugRegister::execute(0x1000)),
                None,
                Some(DebugRegister::execute(0x2000)),
                None,
            ],
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

    fn watch(addr: u64, condition: DebugCondition, len: u8) -> DebugRegister {
        DebugRegister {
            addr,
            condition,
            len,
        }
    }

    #[test]
    fn watchpoints_set_dr7_rw_and_len() {
        use DebugCondition::{ReadWrite, Write};
        // Slot 0: write, 8 bytes: G0, R/W0 = 01, LEN0 = 10.
        assert_eq!(
            watch(0x1000, Write, 8).dr7_bits(0),
            Some(0b10 | (0b01 << 16) | (0b10 << 18))
        );
        // Slot 1: read/write, 4 bytes: G1, R/W1 = 11, LEN1 = 11.
        assert_eq!(
            watch(0x1004, ReadWrite, 4).dr7_bits(1),
            Some(0b1000 | (0b11 << 20) | (0b11 << 22))
        );
        // Slot 2: write, 2 bytes: G2, R/W2 = 01, LEN2 = 01.
        assert_eq!(
            watch(0x1002, Write, 2).dr7_bits(2),
            Some((0b10 << 4) | (0b01 << 24) | (0b01 << 26))
        );
        // Slot 3: read/write, 1 byte: G3, R/W3 = 11, LEN3 = 00.
        assert_eq!(
            watch(0x1003, ReadWrite, 1).dr7_bits(3),
            Some((0b10 << 6) | (0b11 << 28))
        );
        // An instruction breakpoint: R/W and LEN 00.
        assert_eq!(DebugRegister::execute(0x1003).dr7_bits(3), Some(0b10 << 6));
    }

    #[test]
    fn what_dr7_cannot_say_is_refused() {
        use DebugCondition::{Execute, Write};
        assert_eq!(watch(0x1004, Write, 8).dr7_bits(0), None, "misaligned");
        assert_eq!(watch(0x1001, Write, 2).dr7_bits(0), None, "misaligned");
        assert_eq!(watch(0x1000, Write, 3).dr7_bits(0), None, "length 3");
        assert_eq!(watch(0x1000, Write, 16).dr7_bits(0), None, "length 16");
        assert_eq!(watch(0x1000, Execute, 4).dr7_bits(0), None, "long execute");
        assert_eq!(watch(0x1000, Write, 1).dr7_bits(4), None, "no DR4");
        // Left out of KVM's struct, the good slot kept.
        let dbg = GuestDebug {
            hw_breakpoints: [
                Some(watch(0x1001, Write, 4)),
                Some(watch(0x2000, Write, 4)),
                None,
                None,
            ],
            ..Default::default()
        }
        .to_kvm();
        assert_eq!(dbg.arch.debugreg[0], 0);
        assert_eq!(dbg.arch.debugreg[1], 0x2000);
        assert_eq!(
            dbg.arch.debugreg[7],
            DR7_FIXED | 0b1000 | (0b01 << 20) | (0b11 << 22)
        );
    }

    #[test]
    fn breakpoints_and_watchpoints_share_the_four_registers() {
        let dbg = GuestDebug {
            hw_breakpoints: [
                Some(DebugRegister::execute(0xffff_ffff_8100_0000)),
                Some(watch(0xffff_ffff_8300_0008, DebugCondition::Write, 8)),
                Some(watch(0x7000, DebugCondition::ReadWrite, 2)),
                Some(DebugRegister::execute(0x1234)),
            ],
            ..Default::default()
        }
        .to_kvm();
        assert_eq!(dbg.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(
            dbg.arch.debugreg[..4],
            [0xffff_ffff_8100_0000, 0xffff_ffff_8300_0008, 0x7000, 0x1234]
        );
        let want =
            DR7_FIXED | 0b1010_1010 | (0b01 << 20) | (0b10 << 22) | (0b11 << 24) | (0b01 << 26);
        assert_eq!(dbg.arch.debugreg[7], want, "{:#x}", dbg.arch.debugreg[7]);
    }

    #[test]
    fn exits_are_told_apart() {
        assert_eq!(DebugStop::from_exit(3, 0), DebugStop::SwBreakpoint);
        assert_eq!(DebugStop::from_exit(1, DR6_SINGLE_STEP), DebugStop::Step);
        assert_eq!(
            DebugStop::from_exit(1, 0x4),
            DebugStop::HwBreakpoint { hits: 0x4 }
        );
        // DR6's fixed ones (0xffff0ff0) are not hits; BS and B1: B1.
        assert_eq!(
            DebugStop::from_exit(1, 0xffff_0ff0 | DR6_SINGLE_STEP | 0x2),
            DebugStop::HwBreakpoint { hits: 0x2 }
        );
        assert_eq!(
            DebugStop::from_exit(1, 0xffff_0ff0 | DR6_SINGLE_STEP),
            DebugStop::Step
        );
    }
}
