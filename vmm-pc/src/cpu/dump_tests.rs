//! Tests of [`super::registers_text`] on made-up vCPU states.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE,
};

use super::*;

fn state(regs: kvm_regs, sregs: kvm_sregs, mp_state: u32) -> VcpuState {
    VcpuState {
        mp_state: kvm_mp_state { mp_state },
        regs,
        sregs,
        xsave: kvm_xsave::default(),
        xcrs: kvm_xcrs::default(),
        debugregs: kvm_debugregs {
            db: [1, 2, 3, 4],
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            ..Default::default()
        },
        lapic: Some(kvm_lapic_state::default()),
        msrs: Vec::new(),
        events: kvm_vcpu_events::default(),
    }
}

fn seg(selector: u16, base: u64, limit: u32, type_: u8, s: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s,
        l,
        g: u8::from(limit == 0xffff_ffff),
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A 64-bit kernel's vCPU, as Linux leaves one running.
fn long_mode() -> VcpuState {
    let regs = kvm_regs {
        rax: 0x1111,
        rbx: 0x2222,
        rcx: 0x3333,
        rdx: 0x4444,
        rsi: 5,
        rdi: 6,
        rbp: 7,
        rsp: 0xffff_c900_0000_3f00,
        r8: 8,
        r9: 9,
        r10: 10,
        r11: 11,
        r12: 12,
        r13: 13,
        r14: 14,
        r15: 0xffff_ffff_ffff_ffff,
        rip: 0xffff_ffff_8100_0000,
        rflags: 0x246,
    };
    let data = seg(0x18, 0, 0xffff_ffff, 3, 1, 0, 1);
    let mut ldt = seg(0, 0, 0xffff, 2, 0, 0, 0);
    ldt.present = 0;
    ldt.unusable = 1;
    let sregs = kvm_sregs {
        cs: seg(0x10, 0, 0xffff_ffff, 0xb, 1, 1, 0),
        ds: data,
        es: data,
        fs: data,
        gs: seg(0, 0xffff_8880_0f00_0000, 0xffff_ffff, 3, 1, 0, 1),
        ss: data,
        tr: seg(0x40, 0xfffffe0000003000, 0x4087, 0xb, 0, 0, 0),
        ldt,
        gdt: kvm_bindings::kvm_dtable {
            base: 0xfffffe0000001000,
            limit: 0x7f,
            ..Default::default()
        },
        idt: kvm_bindings::kvm_dtable {
            base: 0xfffffe0000000000,
            limit: 0xfff,
            ..Default::default()
        },
        cr0: 0x8005_0033,
        cr2: 0x7f00_0000_1000,
        cr3: 0x1_0a00_0000,
        cr4: 0x0035_06f0,
        efer: 0xd01,
        ..Default::default()
    };
    state(regs, sregs, KVM_MP_STATE_RUNNABLE)
}

#[test]
fn a_long_mode_vcpu_prints_as_qemus_64_bit_dump() {
    let text = registers_text(&long_mode());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "RAX=0000000000001111 RBX=0000000000002222 RCX=0000000000003333 RDX=0000000000004444",
            "RSI=0000000000000005 RDI=0000000000000006 RBP=0000000000000007 RSP=ffffc90000003f00",
            "R8 =0000000000000008 R9 =0000000000000009 R10=000000000000000a R11=000000000000000b",
            "R12=000000000000000c R13=000000000000000d R14=000000000000000e R15=ffffffffffffffff",
            "RIP=ffffffff81000000 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0",
            "ES =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]",
            "CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]",
            "SS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]",
            "DS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]",
            "FS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]",
            "GS =0000 ffff88800f000000 ffffffff 00c09300 DPL=0 DS   [-WA]",
            "LDT=0000 0000000000000000 0000ffff 00000200",
            "TR =0040 fffffe0000003000 00004087 00008b00 DPL=0 TSS64-busy",
            "GDT=     fffffe0000001000 0000007f",
            "IDT=     fffffe0000000000 00000fff",
            "CR0=80050033 CR2=00007f0000001000 CR3=000000010a000000 CR4=003506f0",
            "DR0=0000000000000001 DR1=0000000000000002 DR2=0000000000000003 DR3=0000000000000004",
            "DR6=00000000ffff0ff0 DR7=0000000000000400",
            "EFER=0000000000000d01",
            "MP_STATE=runnable IF=1 EXC=none IRQ=none NMI pending=0 injected=0 masked=0 SMI pending=0",
        ]
    );
    assert!(text.ends_with('\n'));
}

#[test]
fn a_real_mode_vcpu_has_no_segment_descriptions() {
    // An AP after SIPI 0x10, halted in its trampoline.
    let code = seg(0x1000, 0x1_0000, 0xffff, 0xb, 1, 0, 0);
    let data = seg(0x1000, 0x1_0000, 0xffff, 3, 1, 0, 0);
    let sregs = kvm_sregs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: seg(0, 0, 0xffff, 0xb, 0, 0, 0),
        ldt: seg(0, 0, 0xffff, 2, 0, 0, 0),
        cr0: 0x6000_0010,
        ..Default::default()
    };
    let regs = kvm_regs {
        rip: 0x10,
        rflags: 0x2 | (1 << 11) | (1 << 10) | 1,
        ..Default::default()
    };
    let mut s = state(regs, sregs, KVM_MP_STATE_HALTED);
    s.events.nmi.masked = 1;
    s.events.interrupt.shadow = 1;
    s.events.exception.pending = 1;
    s.events.exception.nr = 13;
    s.events.exception.has_error_code = 1;
    s.events.exception.error_code = 0x18;
    s.events.interrupt.injected = 1;
    s.events.interrupt.nr = 0x30;
    let text = registers_text(&s);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[4],
        "RIP=0000000000000010 RFL=00000c03 [DO----C] CPL=0 II=1 A20=1 SMM=0 HLT=1"
    );
    assert_eq!(lines[6], "CS =1000 0000000000010000 0000ffff 00009b00");
    assert_eq!(lines[11], "LDT=0000 0000000000000000 0000ffff 00008200");
    assert_eq!(lines[12], "TR =0000 0000000000000000 0000ffff 00008b00");
    assert_eq!(
        lines[19],
        "MP_STATE=halted IF=0 EXC=13(pending,err=0x18) IRQ=48(injected) NMI pending=0 injected=0 masked=1 SMI pending=0"
    );
}

#[test]
fn protected_mode_32_bit_segments_and_system_types() {
    let mut s = long_mode();
    s.sregs.efer = 0;
    s.sregs.cs = seg(0x8, 0, 0xffff_ffff, 0xf, 1, 0, 1);
    s.sregs.ds = seg(0x10, 0, 0xffff, 0x7, 1, 0, 0);
    s.sregs.tr = seg(0x28, 0x1000, 0x67, 0x9, 0, 0, 0);
    s.sregs.ldt = seg(0x30, 0x2000, 0x17, 0x2, 0, 0, 0);
    s.sregs.ss.dpl = 3;
    let text = registers_text(&s);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[4].contains(" CPL=3 "), "{}", lines[4]);
    assert_eq!(
        lines[6],
        "CS =0008 0000000000000000 ffffffff 00c09f00 DPL=0 CS32 [CRA]"
    );
    assert_eq!(
        lines[8],
        "DS =0010 0000000000000000 0000ffff 00009700 DPL=0 DS16 [EWA]"
    );
    assert_eq!(
        lines[11],
        "LDT=0030 0000000000002000 00000017 00008200 DPL=0 LDT"
    );
    assert_eq!(
        lines[12],
        "TR =0028 0000000000001000 00000067 00008900 DPL=0 TSS32-avl"
    );
}

#[test]
fn mp_states_have_names() {
    assert_eq!(mp_state_name(KVM_MP_STATE_RUNNABLE), "runnable");
    assert_eq!(mp_state_name(KVM_MP_STATE_HALTED), "halted");
    assert_eq!(
        mp_state_name(kvm_bindings::KVM_MP_STATE_UNINITIALIZED),
        "uninitialized"
    );
    assert_eq!(mp_state_name(99), "unknown");
}
