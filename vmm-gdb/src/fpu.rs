//! The x87 and SSE registers between `FXSAVE`'s layout (the legacy region
//! of the XSAVE area KVM gives) and gdb's (`64bit-core`'s `st0`..`st7`, `fctrl`,
//! `fstat`, `ftag`, `fiseg`, `fioff`, `foseg`, `fooff`, `fop`, and
//! `64bit-sse`'s `xmm0`..`xmm15`, `mxcsr`).
//!
//! Two things differ. gdb's `ftag` is the full tag word (two bits per
//! physical register: 00 valid, 01 zero, 10 special, 11 empty) where
//! `FXSAVE` keeps one bit (empty or not), so the full word is worked out
//! from each register's contents, as the processor's `FSAVE` would. And
//! in 64-bit mode `FXSAVE` keeps 64-bit instruction and data pointers
//! where gdb has a segment and an offset of 32 bits each: gdb (as its own
//! `amd64` native target does) takes the upper halves as the "segments".

use gdbstub_arch::x86::reg::X86_64CoreRegs;

use crate::FpuRegisters;

/// Empty, in the full tag word.
const TAG_EMPTY: u16 = 0b11;
/// Zero.
const TAG_ZERO: u16 = 0b01;
/// Special: NaN, infinity, denormal, unsupported.
const TAG_SPECIAL: u16 = 0b10;
/// Valid: a normal number.
const TAG_VALID: u16 = 0b00;

/// The tag of a non-empty 80-bit register.
fn classify(reg: &[u8; 10]) -> u16 {
    let exponent = u16::from_le_bytes([reg[8], reg[9]]) & 0x7fff;
    let mut mantissa = [0u8; 8];
    mantissa.copy_from_slice(&reg[..8]);
    let mantissa = u64::from_le_bytes(mantissa);
    match exponent {
        0x7fff => TAG_SPECIAL,
        0 if mantissa == 0 => TAG_ZERO,
        0 => TAG_SPECIAL,
        // A normal number has its integer bit set.
        _ if mantissa >> 63 == 0 => TAG_SPECIAL,
        _ => TAG_VALID,
    }
}

/// The full tag word from `FXSAVE`'s abridged one: bit n of `ftw` is
/// physical register n, which is ST((n - TOP) mod 8), TOP being bits 11
/// to 13 of `fsw`.
pub(crate) fn full_tag(ftw: u8, fsw: u16, st: &[[u8; 10]; 8]) -> u16 {
    let top = usize::from((fsw >> 11) & 7);
    (0..8).fold(0u16, |tag, physical| {
        let t = if ftw & (1 << physical) == 0 {
            TAG_EMPTY
        } else {
            classify(&st[(physical + 8 - top) % 8])
        };
        tag | (t << (2 * physical))
    })
}

/// The abridged tag from a full one: a register is in use unless its tag
/// says empty.
pub(crate) fn abridged_tag(full: u16) -> u8 {
    (0..8)
        .filter(|p| (full >> (2 * p)) & 0b11 != TAG_EMPTY)
        .fold(0u8, |ftw, p| ftw | (1 << p))
}

/// Fills gdb's x87 and SSE registers from `fpu`.
pub(crate) fn to_gdb(fpu: &FpuRegisters, regs: &mut X86_64CoreRegs) {
    regs.st = fpu.st;
    regs.fpu.fctrl = u32::from(fpu.fcw);
    regs.fpu.fstat = u32::from(fpu.fsw);
    regs.fpu.ftag = u32::from(full_tag(fpu.ftw, fpu.fsw, &fpu.st));
    regs.fpu.fioff = fpu.fip as u32;
    regs.fpu.fiseg = (fpu.fip >> 32) as u32;
    regs.fpu.fooff = fpu.fdp as u32;
    regs.fpu.foseg = (fpu.fdp >> 32) as u32;
    regs.fpu.fop = u32::from(fpu.fop & 0x7ff);
    regs.xmm = fpu.xmm;
    regs.mxcsr = fpu.mxcsr;
}

/// The x87 and SSE state gdb wrote (the inverse of [`to_gdb`]; the parts
/// gdb's registers are wider than, such as the upper bits of `fctrl`,
/// are dropped).
pub(crate) fn from_gdb(regs: &X86_64CoreRegs) -> FpuRegisters {
    let f = &regs.fpu;
    FpuRegisters {
        st: regs.st,
        fcw: f.fctrl as u16,
        fsw: f.fstat as u16,
        ftw: abridged_tag(f.ftag as u16),
        fop: (f.fop & 0x7ff) as u16,
        fip: u64::from(f.fioff) | (u64::from(f.fiseg) << 32),
        fdp: u64::from(f.fooff) | (u64::from(f.foseg) << 32),
        xmm: regs.xmm,
        mxcsr: regs.mxcsr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1.0 as an 80-bit float: exponent 0x3fff, integer bit set.
    const ONE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f];
    const ZERO: [u8; 10] = [0; 10];
    /// A quiet NaN.
    const NAN: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0x7f];
    /// A denormal: exponent 0, a mantissa.
    const DENORMAL: [u8; 10] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    /// Unnormal: an exponent without the integer bit.
    const UNNORMAL: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0x40, 0xff, 0x3f];

    #[test]
    fn an_empty_stack_is_all_empty() {
        // FNINIT's state: FSW 0, no register in use.
        assert_eq!(full_tag(0, 0, &[ZERO; 8]), 0xffff);
        assert_eq!(abridged_tag(0xffff), 0);
    }

    #[test]
    fn tags_follow_the_contents_and_top() {
        // Two pushes from an empty stack: TOP = 6, ST0 = physical 6,
        // ST1 = physical 7.
        let mut st = [ZERO; 8];
        st[0] = ONE;
        st[1] = ZERO;
        let fsw = 6 << 11;
        let ftw = 0b1100_0000;
        // Physical 6 valid (00), physical 7 zero (01), others empty.
        assert_eq!(full_tag(ftw, fsw, &st), 0b0100_1111_1111_1111);
        assert_eq!(abridged_tag(0b0100_1111_1111_1111), ftw);

        // Every kind, TOP = 0: ST(i) = physical i.
        let st = [ONE, ZERO, NAN, DENORMAL, UNNORMAL, ONE, ONE, ONE];
        let tag = full_tag(0b0001_1111, 0, &st);
        assert_eq!(tag & 0b11, TAG_VALID);
        assert_eq!((tag >> 2) & 0b11, TAG_ZERO);
        assert_eq!((tag >> 4) & 0b11, TAG_SPECIAL);
        assert_eq!((tag >> 6) & 0b11, TAG_SPECIAL);
        assert_eq!((tag >> 8) & 0b11, TAG_SPECIAL);
        assert_eq!(tag >> 10, 0b11_1111, "5 to 7 empty");
    }

    #[test]
    fn a_round_trip_through_gdb_keeps_everything() {
        let mut st = [ZERO; 8];
        st[0] = ONE;
        st[7] = NAN;
        let fpu = FpuRegisters {
            st,
            fcw: 0x037f,
            fsw: 7 << 11 | 0x20,
            ftw: 0b1000_0001,
            fop: 0x7ff,
            fip: 0xffff_ffff_8100_1234,
            fdp: 0x0000_7fff_0000_5678,
            xmm: std::array::from_fn(|i| (i as u128) << 100 | 0xabcd),
            mxcsr: 0x1f80,
        };
        let mut regs = X86_64CoreRegs::default();
        to_gdb(&fpu, &mut regs);
        assert_eq!(regs.fpu.fctrl, 0x37f);
        assert_eq!(regs.fpu.fioff, 0x8100_1234);
        assert_eq!(regs.fpu.fiseg, 0xffff_ffff);
        assert_eq!(regs.fpu.fooff, 0x5678);
        assert_eq!(regs.fpu.foseg, 0x7fff);
        assert_eq!(regs.mxcsr, 0x1f80);
        assert_eq!(regs.xmm[3], 3 << 100 | 0xabcd);
        // TOP 7: ST0 is physical 7 (ONE: valid), ST1 physical 0 (ZERO
        // as stored in st[1]: zero); the rest empty.
        assert_eq!(regs.fpu.ftag, 0b0011_1111_1111_1101);
        assert_eq!(from_gdb(&regs), fpu);
    }
}
