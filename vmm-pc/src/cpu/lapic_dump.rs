//! A local APIC decoded as the human monitor's `info lapic` prints it,
//! from the 1 KiB register page `KVM_GET_LAPIC` returns, without KVM.
//!
//! The lines follow QEMU's `info lapic` (LVT entries, timer, SVR, ICR,
//! ESR, ISR and IRR as lists of vectors, then APR/TPR/DFR/LDR/PPR); ours
//! are the `APIC ID` line after the header (ID, version, LVT count, base
//! address, enabled, x2APIC, BSP), the `LVTCMCI` entry where the APIC
//! has one, the ICR's delivery mode and vector, and a `TMR` list.

use std::fmt::Write;

use kvm_bindings::kvm_lapic_state;

use super::lapic::lapic_reg;

/// Register offsets in the APIC page.
mod reg {
    pub const ID: usize = 0x20;
    pub const VERSION: usize = 0x30;
    pub const TPR: usize = 0x80;
    pub const APR: usize = 0x90;
    pub const PPR: usize = 0xa0;
    pub const LDR: usize = 0xd0;
    pub const DFR: usize = 0xe0;
    pub const SVR: usize = 0xf0;
    pub const ISR: usize = 0x100;
    pub const TMR: usize = 0x180;
    pub const IRR: usize = 0x200;
    pub const ESR: usize = 0x280;
    pub const LVT_CMCI: usize = 0x2f0;
    pub const ICR_LOW: usize = 0x300;
    pub const ICR_HIGH: usize = 0x310;
    pub const LVT_TIMER: usize = 0x320;
    pub const LVT_THERMAL: usize = 0x330;
    pub const LVT_PERF: usize = 0x340;
    pub const LVT_LINT0: usize = 0x350;
    pub const LVT_LINT1: usize = 0x360;
    pub const LVT_ERROR: usize = 0x370;
    pub const TIMER_INITIAL: usize = 0x380;
    pub const TIMER_CURRENT: usize = 0x390;
    pub const TIMER_DIVIDE: usize = 0x3e0;
}

/// IA32_APIC_BASE bits.
const BASE_BSP: u64 = 1 << 8;
const BASE_X2APIC: u64 = 1 << 10;
const BASE_ENABLED: u64 = 1 << 11;
const BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// LVT and ICR bits.
const VECTOR: u32 = 0xff;
const DELIVERY_PENDING: u32 = 1 << 12;
const ACTIVE_LOW: u32 = 1 << 13;
const LEVEL_TRIGGERED: u32 = 1 << 15;
const MASKED: u32 = 1 << 16;
const ICR_LOGICAL: u32 = 1 << 11;
const ICR_ASSERT: u32 = 1 << 14;
const SVR_ENABLED: u32 = 1 << 8;
/// Focus processor checking *disabled* when set.
const SVR_NO_FOCUS: u32 = 1 << 9;
/// NMI delivery mode: the vector field means nothing.
const MODE_NMI: u32 = 4;

/// A delivery mode (bits 8-10 of an LVT entry or the ICR) in words.
fn delivery_mode(value: u32) -> (u32, &'static str) {
    let mode = (value >> 8) & 7;
    let name = match mode {
        0 => "Fixed",
        1 => "LowPri",
        2 => "SMI",
        4 => "NMI",
        5 => "INIT",
        6 => "SIPI",
        7 => "ExtINT",
        _ => "Reserved",
    };
    (mode, name)
}

/// The timer's divide configuration register as a divisor (1 to 128).
pub fn timer_divisor(dcr: u32) -> u32 {
    let code = (dcr & 3) | ((dcr & 8) >> 1);
    1 << ((code + 1) & 7)
}

/// One LVT line: value, polarity, trigger, mask, delivery status, the
/// timer's mode, delivery mode and vector.
fn lvt_line(out: &mut String, name: &str, lvt: u32, timer: bool) {
    let timer_mode = match (timer, (lvt >> 17) & 3) {
        (false, _) => "",
        (true, 0) => "one-shot",
        (true, 1) => "periodic",
        (true, 2) => "tsc-deadline",
        (true, _) => "reserved",
    };
    let (mode, mode_name) = delivery_mode(lvt);
    let _ = write!(
        out,
        "{name}\t 0x{lvt:08x} {} {:<5} {:<6} {:<7} {timer_mode:<12} {mode_name:<6}",
        if lvt & ACTIVE_LOW != 0 {
            "active-lo"
        } else {
            "active-hi"
        },
        if lvt & LEVEL_TRIGGERED != 0 {
            "level"
        } else {
            "edge"
        },
        if lvt & MASKED != 0 { "masked" } else { "" },
        if lvt & DELIVERY_PENDING != 0 {
            "pending"
        } else {
            ""
        },
    );
    if mode != MODE_NMI {
        let _ = write!(out, " (vec {})", lvt & VECTOR);
    }
    out.push('\n');
}

/// The vectors set in the 256-bit register at `offset` (eight 32-bit
/// words, 16 bytes apart).
pub fn vectors(lapic: &kvm_lapic_state, offset: usize) -> Vec<u8> {
    (0..=255u8)
        .filter(|&v| {
            let word = lapic_reg(lapic, offset + usize::from(v / 32) * 0x10);
            word & (1 << (v % 32)) != 0
        })
        .collect()
}

/// `ISR\t34 48(level)` or `ISR\t(none)`; a vector also set in the TMR
/// (level-triggered) is marked so, when `mark_level`.
fn vector_line(out: &mut String, name: &str, set: &[u8], level: &[u8], mark_level: bool) {
    let _ = write!(out, "{name}\t");
    if set.is_empty() {
        out.push_str("(none)");
    }
    let words: Vec<String> = set
        .iter()
        .map(|v| {
            let tag = if mark_level && level.contains(v) {
                "(level)"
            } else {
                ""
            };
            format!("{v}{tag}")
        })
        .collect();
    out.push_str(&words.join(" "));
    out.push('\n');
}

/// The ICR and its destination.
fn icr_lines(out: &mut String, low: u32, high: u32, own_id: u32) {
    let shorthand = (low >> 18) & 3;
    let (_, mode_name) = delivery_mode(low);
    let _ = writeln!(
        out,
        "ICR\t 0x{low:08x} {} {} {} {} {mode_name} (vec {})",
        if low & ICR_LOGICAL != 0 {
            "logical"
        } else {
            "physical"
        },
        if low & ICR_ASSERT != 0 {
            "assert"
        } else {
            "de-assert"
        },
        if low & LEVEL_TRIGGERED != 0 {
            "level"
        } else {
            "edge"
        },
        ["no-shorthand", "self", "all", "all-but-self"][shorthand as usize],
        low & VECTOR,
    );
    let dest = high >> 24;
    let _ = write!(out, "ICR2\t 0x{high:08x}");
    let _ = match shorthand {
        0 if low & ICR_LOGICAL != 0 => writeln!(out, " mask {dest:x}"),
        0 => writeln!(out, " cpu {dest}"),
        1 => writeln!(out, " cpu {own_id} (self)"),
        2 => writeln!(out, " all"),
        _ => writeln!(out, " all but self"),
    };
}

/// vCPU `index`'s local APIC as `info lapic` prints it (lines end in
/// `\n`), from its `KVM_GET_LAPIC` page and its IA32_APIC_BASE
/// (`kvm_sregs::apic_base`). The ID is read in xAPIC form (bits 24-31),
/// which is how KVM returns it unless `KVM_CAP_X2APIC_API` is on.
pub fn lapic_text(index: u32, lapic: &kvm_lapic_state, apic_base: u64) -> String {
    let r = |offset| lapic_reg(lapic, offset);
    let mut out = String::with_capacity(1200);
    let _ = writeln!(out, "dumping local APIC state for CPU {index:<2}\n");
    let id = r(reg::ID) >> 24;
    let version = r(reg::VERSION);
    let max_lvt = (version >> 16) & 0xff;
    let _ = writeln!(
        out,
        "APIC ID {id} version 0x{:02x} max LVT {max_lvt} base 0x{:x} {}{}{}",
        version & 0xff,
        apic_base & BASE_ADDRESS,
        if apic_base & BASE_ENABLED != 0 {
            "enabled"
        } else {
            "disabled"
        },
        if apic_base & BASE_X2APIC != 0 {
            " x2APIC"
        } else {
            ""
        },
        if apic_base & BASE_BSP != 0 {
            " BSP"
        } else {
            ""
        },
    );
    lvt_line(&mut out, "LVT0", r(reg::LVT_LINT0), false);
    lvt_line(&mut out, "LVT1", r(reg::LVT_LINT1), false);
    // The optional entries, by the count the version register gives:
    // performance counters from 4 up, thermal from 5, CMCI from 6.
    if max_lvt >= 4 {
        lvt_line(&mut out, "LVTPC", r(reg::LVT_PERF), false);
    }
    lvt_line(&mut out, "LVTERR", r(reg::LVT_ERROR), false);
    if max_lvt >= 5 {
        lvt_line(&mut out, "LVTTHMR", r(reg::LVT_THERMAL), false);
    }
    if max_lvt >= 6 {
        lvt_line(&mut out, "LVTCMCI", r(reg::LVT_CMCI), false);
    }
    lvt_line(&mut out, "LVTT", r(reg::LVT_TIMER), true);
    let dcr = r(reg::TIMER_DIVIDE);
    let _ = writeln!(
        out,
        "Timer\t DCR=0x{:x} (divide by {}) initial_count = {} current_count = {}",
        dcr & 0xb,
        timer_divisor(dcr),
        r(reg::TIMER_INITIAL),
        r(reg::TIMER_CURRENT),
    );
    let svr = r(reg::SVR);
    let _ = writeln!(
        out,
        "SPIV\t 0x{svr:08x} APIC {}, focus={}, spurious vec {}",
        if svr & SVR_ENABLED != 0 {
            "enabled"
        } else {
            "disabled"
        },
        if svr & SVR_NO_FOCUS != 0 { "off" } else { "on" },
        svr & VECTOR,
    );
    icr_lines(&mut out, r(reg::ICR_LOW), r(reg::ICR_HIGH), id);
    let _ = writeln!(out, "ESR\t 0x{:08x}", r(reg::ESR));
    let tmr = vectors(lapic, reg::TMR);
    vector_line(&mut out, "ISR", &vectors(lapic, reg::ISR), &tmr, true);
    vector_line(&mut out, "IRR", &vectors(lapic, reg::IRR), &tmr, true);
    vector_line(&mut out, "TMR", &tmr, &tmr, false);
    let dfr_model = r(reg::DFR) >> 28;
    let ldr = r(reg::LDR) >> 24;
    let _ = write!(
        out,
        "\nAPR 0x{:02x} TPR 0x{:02x} DFR 0x{dfr_model:02x} LDR 0x{ldr:02x}",
        r(reg::APR) & 0xff,
        r(reg::TPR) & 0xff,
    );
    if dfr_model == 0 {
        let _ = write!(out, "(cluster {}: id {})", ldr >> 4, ldr & 0xf);
    }
    let _ = writeln!(out, " PPR 0x{:02x}", r(reg::PPR) & 0xff);
    out
}

#[cfg(test)]
mod tests {
    use super::super::lapic::set_lapic_reg;
    use super::*;

    /// A BSP's APIC as Linux leaves it: timer periodic on vector 236,
    /// LINT0 ExtINT masked, LINT1 NMI, an interrupt in service and two
    /// requested (one level-triggered).
    fn busy() -> kvm_lapic_state {
        let mut l = kvm_lapic_state::default();
        let mut set = |offset, value| set_lapic_reg(&mut l, offset, value);
        set(reg::ID, 0x0300_0000);
        set(reg::VERSION, 0x0005_0014);
        set(reg::TPR, 0x10);
        set(reg::PPR, 0x30);
        set(reg::LDR, 0x0100_0000);
        set(reg::DFR, 0xffff_ffff);
        set(reg::SVR, 0x1ff);
        set(reg::ISR + 0x10, 1 << (0x30 - 32)); // 48
        set(reg::IRR + 0x10, 1 << (0x22 - 32)); // 34
        set(reg::IRR + 0x70, 1 << (0xec - 224)); // 236
        set(reg::TMR + 0x10, 1 << (0x22 - 32));
        set(reg::ICR_LOW, 0x0000_4610);
        set(reg::ICR_HIGH, 0x0100_0000);
        set(reg::LVT_TIMER, 0x0002_00ec);
        set(reg::LVT_THERMAL, 0x0001_0000);
        set(reg::LVT_PERF, 0x0000_0400);
        set(reg::LVT_LINT0, 0x0001_0700);
        set(reg::LVT_LINT1, 0x0000_0400);
        set(reg::LVT_ERROR, 0x0000_00fe);
        set(reg::TIMER_INITIAL, 1_000_000);
        set(reg::TIMER_CURRENT, 123_456);
        set(reg::TIMER_DIVIDE, 0x3);
        l
    }

    #[test]
    fn a_busy_apic_decodes_field_by_field() {
        let text = lapic_text(3, &busy(), 0xfee0_0900);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "dumping local APIC state for CPU 3 ",
                "",
                "APIC ID 3 version 0x14 max LVT 5 base 0xfee00000 enabled BSP",
                "LVT0\t 0x00010700 active-hi edge  masked                      ExtINT (vec 0)",
                "LVT1\t 0x00000400 active-hi edge                              NMI   ",
                "LVTPC\t 0x00000400 active-hi edge                              NMI   ",
                "LVTERR\t 0x000000fe active-hi edge                              Fixed  (vec 254)",
                "LVTTHMR\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)",
                "LVTT\t 0x000200ec active-hi edge                 periodic     Fixed  (vec 236)",
                "Timer\t DCR=0x3 (divide by 16) initial_count = 1000000 current_count = 123456",
                "SPIV\t 0x000001ff APIC enabled, focus=on, spurious vec 255",
                "ICR\t 0x00004610 physical assert edge no-shorthand SIPI (vec 16)",
                "ICR2\t 0x01000000 cpu 1",
                "ESR\t 0x00000000",
                "ISR\t48",
                "IRR\t34(level) 236",
                "TMR\t34",
                "",
                "APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x30",
            ]
        );
    }

    #[test]
    fn an_apic_as_kvm_creates_it() {
        // All LVT entries masked, nothing pending, APIC software-disabled,
        // CMCI present, cluster model, x2APIC mode.
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, reg::VERSION, 0x0006_0014);
        for lvt in [
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PERF,
            reg::LVT_LINT0,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
            reg::LVT_CMCI,
        ] {
            set_lapic_reg(&mut l, lvt, MASKED);
        }
        set_lapic_reg(&mut l, reg::SVR, 0x2ff);
        set_lapic_reg(&mut l, reg::LDR, 0x2100_0000);
        set_lapic_reg(&mut l, reg::TIMER_DIVIDE, 0xb);
        let text = lapic_text(0, &l, 0xfee0_0c00);
        assert!(
            text.contains("APIC ID 0 version 0x14 max LVT 6 base 0xfee00000 enabled x2APIC\n"),
            "{text}"
        );
        assert!(text.contains("\nLVTCMCI\t 0x00010000 "), "{text}");
        assert!(text.contains("DCR=0xb (divide by 1)"), "{text}");
        assert!(text.contains("SPIV\t 0x000002ff APIC disabled, focus=off, spurious vec 255\n"));
        assert!(
            text.contains("ISR\t(none)\nIRR\t(none)\nTMR\t(none)\n"),
            "{text}"
        );
        assert!(text.contains("DFR 0x00 LDR 0x21(cluster 2: id 1) PPR 0x00\n"));
        // Without performance counters or thermal sensor, no lines for them.
        set_lapic_reg(&mut l, reg::VERSION, 0x0003_0014);
        let text = lapic_text(0, &l, 0);
        assert!(
            !text.contains("LVTPC") && !text.contains("LVTTHMR"),
            "{text}"
        );
        assert!(text.contains("base 0x0 disabled\n"), "{text}");
    }

    #[test]
    fn the_icr_names_its_destination() {
        let mut out = String::new();
        icr_lines(&mut out, 0x000c_4500 | ICR_LOGICAL, 0x0300_0000, 2);
        assert_eq!(
            out,
            "ICR\t 0x000c4d00 logical assert edge all-but-self INIT (vec 0)\nICR2\t 0x03000000 all but self\n"
        );
        let mut out = String::new();
        icr_lines(&mut out, 0x0000_0830, 0x0300_0000, 2);
        assert!(out.ends_with("ICR2\t 0x03000000 mask 3\n"), "{out}");
        let mut out = String::new();
        icr_lines(&mut out, 0x0004_0030, 0, 2);
        assert!(out.ends_with(" cpu 2 (self)\n"), "{out}");
    }

    #[test]
    fn timer_divisors() {
        assert_eq!(timer_divisor(0), 2);
        assert_eq!(timer_divisor(1), 4);
        assert_eq!(timer_divisor(3), 16);
        assert_eq!(timer_divisor(8), 32);
        assert_eq!(timer_divisor(0xa), 128);
        assert_eq!(timer_divisor(0xb), 1);
    }
}
