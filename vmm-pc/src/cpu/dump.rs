//! A vCPU's registers as the human monitor's `info registers` prints them:
//! the layout of QEMU's x86 CPU dump in its 64-bit form (fields, their
//! order and widths), from a saved [`VcpuState`], without KVM.
//!
//! ```text
//! RAX=... RBX=... RCX=... RDX=...
//! RSI=... RDI=... RBP=... RSP=...
//! R8 =... R9 =... R10=... R11=...
//! R12=... R13=... R14=... R15=...
//! RIP=... RFL=... [ODSZAPC] CPL=n II=n A20=1 SMM=n HLT=n
//! ES =sel base limit flags [DPL=n type]      (ES CS SS DS FS GS LDT TR)
//! GDT=     base limit
//! IDT=     base limit
//! CR0=... CR2=... CR3=... CR4=...
//! DR0=... DR1=... DR2=... DR3=...
//! DR6=... DR7=...
//! EFER=...
//! MP_STATE=... IF=n EXC=... IRQ=... NMI pending=n injected=n masked=n SMI pending=n
//! ```
//!
//! Unlike QEMU, the layout is the 64-bit one whatever mode the vCPU is in
//! (QEMU switches to 32-bit fields outside long mode), and the FPU/SSE
//! lines are left out. The last line is ours, not QEMU's: the vCPU's MP
//! state and its pending events (`KVM_GET_VCPU_EVENTS`), what tells a
//! halted-for-good vCPU from a busy one when a guest hangs.

use std::fmt::Write;

use kvm_bindings::{kvm_dtable, kvm_segment};
use vmm_core::vcpu::VcpuState;

/// CR0.PE: protected mode.
const CR0_PE: u64 = 1;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// The segment-cache flag bits QEMU prints (the high dword of a
/// descriptor, without the limit's top bits).
mod desc {
    pub const TYPE_SHIFT: u32 = 8;
    pub const A: u32 = 1 << 8;
    /// Writable (data) or readable (code).
    pub const RW: u32 = 1 << 9;
    /// Expand-down (data) or conforming (code).
    pub const EC: u32 = 1 << 10;
    pub const CODE: u32 = 1 << 11;
    pub const S: u32 = 1 << 12;
    pub const DPL_SHIFT: u32 = 13;
    pub const P: u32 = 1 << 15;
    pub const AVL: u32 = 1 << 20;
    pub const L: u32 = 1 << 21;
    pub const B: u32 = 1 << 22;
    pub const G: u32 = 1 << 23;
}

/// The name of a KVM MP state (`KVM_MP_STATE_*`).
pub fn mp_state_name(state: u32) -> &'static str {
    match state {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable",
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "uninitialized",
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "init-received",
        kvm_bindings::KVM_MP_STATE_HALTED => "halted",
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "sipi-received",
        kvm_bindings::KVM_MP_STATE_STOPPED => "stopped",
        kvm_bindings::KVM_MP_STATE_CHECK_STOP => "check-stop",
        kvm_bindings::KVM_MP_STATE_OPERATING => "operating",
        kvm_bindings::KVM_MP_STATE_LOAD => "load",
        _ => "unknown",
    }
}

/// A KVM segment as a segment-cache flag word: type, S, DPL, P, AVL, L,
/// D/B, G in their descriptor positions (P clear for an unusable one).
pub fn segment_flags(s: &kvm_segment) -> u32 {
    (u32::from(s.type_ & 0xf) << desc::TYPE_SHIFT)
        | if s.s != 0 { desc::S } else { 0 }
        | (u32::from(s.dpl & 3) << desc::DPL_SHIFT)
        | if s.present != 0 && s.unusable == 0 {
            desc::P
        } else {
            0
        }
        | if s.avl != 0 { desc::AVL } else { 0 }
        | if s.l != 0 { desc::L } else { 0 }
        | if s.db != 0 { desc::B } else { 0 }
        | if s.g != 0 { desc::G } else { 0 }
}

/// A system descriptor's type in words, legacy or long mode.
fn system_type(kind: u32, long_mode: bool) -> &'static str {
    const LEGACY: [&str; 16] = [
        "Reserved",
        "TSS16-avl",
        "LDT",
        "TSS16-busy",
        "CallGate16",
        "TaskGate",
        "IntGate16",
        "TrapGate16",
        "Reserved",
        "TSS32-avl",
        "Reserved",
        "TSS32-busy",
        "CallGate32",
        "Reserved",
        "IntGate32",
        "TrapGate32",
    ];
    const LONG: [&str; 16] = [
        "<hiword>",
        "Reserved",
        "LDT",
        "Reserved",
        "Reserved",
        "Reserved",
        "Reserved",
        "Reserved",
        "Reserved",
        "TSS64-avl",
        "Reserved",
        "TSS64-busy",
        "CallGate64",
        "Reserved",
        "IntGate64",
        "TrapGate64",
    ];
    let table = if long_mode { &LONG } else { &LEGACY };
    table[(kind & 0xf) as usize]
}

/// One segment line: `CS =0010 0000000000000000 ffffffff 00a09b00`, and
/// in protected mode, for a present segment, its DPL and kind.
fn segment_line(out: &mut String, name: &str, s: &kvm_segment, protected: bool, long_mode: bool) {
    let flags = segment_flags(s);
    let _ = write!(
        out,
        "{name:<3}={:04x} {:016x} {:08x} {flags:08x}",
        s.selector, s.base, s.limit
    );
    if protected && flags & desc::P != 0 {
        let _ = write!(out, " DPL={} ", (flags >> desc::DPL_SHIFT) & 3);
        if flags & desc::S == 0 {
            out.push_str(system_type(flags >> desc::TYPE_SHIFT, long_mode));
        } else if flags & desc::CODE != 0 {
            let width = if flags & desc::L != 0 {
                "CS64"
            } else if flags & desc::B != 0 {
                "CS32"
            } else {
                "CS16"
            };
            let _ = write!(
                out,
                "{width} [{}{}{}]",
                if flags & desc::EC != 0 { 'C' } else { '-' },
                if flags & desc::RW != 0 { 'R' } else { '-' },
                if flags & desc::A != 0 { 'A' } else { '-' },
            );
        } else {
            let width = if flags & desc::B != 0 || long_mode {
                "DS  "
            } else {
                "DS16"
            };
            let _ = write!(
                out,
                "{width} [{}{}{}]",
                if flags & desc::EC != 0 { 'E' } else { '-' },
                if flags & desc::RW != 0 { 'W' } else { '-' },
                if flags & desc::A != 0 { 'A' } else { '-' },
            );
        }
    }
    out.push('\n');
}

fn table_line(out: &mut String, name: &str, t: &kvm_dtable) {
    let _ = writeln!(out, "{name}=     {:016x} {:08x}", t.base, t.limit);
}

/// RFLAGS' arithmetic flags and DF as letters, `-` where clear:
/// `[ODSZAPC]` order as QEMU prints them (D first).
fn flag_letters(rflags: u64) -> String {
    [
        (10, 'D'),
        (11, 'O'),
        (7, 'S'),
        (6, 'Z'),
        (4, 'A'),
        (2, 'P'),
        (0, 'C'),
    ]
    .iter()
    .map(|&(bit, c)| if rflags & (1 << bit) != 0 { c } else { '-' })
    .collect()
}

/// Our line: the MP state and the pending or injected events.
fn events_line(out: &mut String, state: &VcpuState) {
    let e = &state.events;
    let _ = write!(
        out,
        "MP_STATE={} IF={}",
        mp_state_name(state.mp_state.mp_state),
        u8::from(state.regs.rflags & RFLAGS_IF != 0)
    );
    if e.exception.injected != 0 || e.exception.pending != 0 {
        let _ = write!(
            out,
            " EXC={}({}",
            e.exception.nr,
            if e.exception.injected != 0 {
                "injected"
            } else {
                "pending"
            }
        );
        if e.exception.has_error_code != 0 {
            let _ = write!(out, ",err={:#x}", e.exception.error_code);
        }
        out.push(')');
    } else {
        out.push_str(" EXC=none");
    }
    if e.interrupt.injected != 0 {
        let _ = write!(
            out,
            " IRQ={}(injected{})",
            e.interrupt.nr,
            if e.interrupt.soft != 0 { ",soft" } else { "" }
        );
    } else {
        out.push_str(" IRQ=none");
    }
    let _ = writeln!(
        out,
        " NMI pending={} injected={} masked={} SMI pending={}",
        e.nmi.pending, e.nmi.injected, e.nmi.masked, e.smi.pending
    );
}

/// `state`'s registers as `info registers` prints them (lines end in
/// `\n`; no `CPU#N` header, which the monitor adds).
pub fn registers_text(state: &VcpuState) -> String {
    let r = &state.regs;
    let s = &state.sregs;
    let mut out = String::with_capacity(1600);
    let quad = |out: &mut String, names: [&str; 4], values: [u64; 4]| {
        let line: Vec<String> = names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n:<3}={v:016x}"))
            .collect();
        let _ = writeln!(out, "{}", line.join(" "));
    };
    quad(
        &mut out,
        ["RAX", "RBX", "RCX", "RDX"],
        [r.rax, r.rbx, r.rcx, r.rdx],
    );
    quad(
        &mut out,
        ["RSI", "RDI", "RBP", "RSP"],
        [r.rsi, r.rdi, r.rbp, r.rsp],
    );
    quad(
        &mut out,
        ["R8", "R9", "R10", "R11"],
        [r.r8, r.r9, r.r10, r.r11],
    );
    quad(
        &mut out,
        ["R12", "R13", "R14", "R15"],
        [r.r12, r.r13, r.r14, r.r15],
    );
    let _ = writeln!(
        out,
        "RIP={:016x} RFL={:08x} [{}] CPL={} II={} A20=1 SMM={} HLT={}",
        r.rip,
        r.rflags,
        flag_letters(r.rflags),
        s.ss.dpl & 3,
        u8::from(state.events.interrupt.shadow != 0),
        u8::from(state.events.smi.smm != 0),
        u8::from(state.mp_state.mp_state == kvm_bindings::KVM_MP_STATE_HALTED),
    );
    let protected = s.cr0 & CR0_PE != 0;
    let long_mode = s.efer & EFER_LMA != 0;
    for (name, seg) in [
        ("ES", &s.es),
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("LDT", &s.ldt),
        ("TR", &s.tr),
    ] {
        segment_line(&mut out, name, seg, protected, long_mode);
    }
    table_line(&mut out, "GDT", &s.gdt);
    table_line(&mut out, "IDT", &s.idt);
    let _ = writeln!(
        out,
        "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}",
        s.cr0, s.cr2, s.cr3, s.cr4
    );
    let d = &state.debugregs;
    let _ = writeln!(
        out,
        "DR0={:016x} DR1={:016x} DR2={:016x} DR3={:016x}",
        d.db[0], d.db[1], d.db[2], d.db[3]
    );
    let _ = writeln!(out, "DR6={:016x} DR7={:016x}", d.dr6, d.dr7);
    let _ = writeln!(out, "EFER={:016x}", s.efer);
    events_line(&mut out, state);
    out
}

#[cfg(test)]
#[path = "dump_tests.rs"]
mod tests;
