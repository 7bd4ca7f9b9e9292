//! A guest that takes interrupts only through the 8259 pair (no local
//! APIC or IO-APIC programming: the boot CPU's LINT0 is ExtINT as the
//! firmware leaves it), as `noapic` guests do: the same on KVM's irqchip
//! and on the split one (our 8259s, KVM_INTERRUPT).

use super::interrupts::{
    a, below, epilogue, fill_gates, go_on, load_idt, message, next, page, prologue, tick_both,
    PIT_COUNT,
};
use super::{print, pvh_elf, wake, AP_TRAMPOLINE, I8042_RESET, LOAD_ADDR};
use crate::layout::port;

/// The counts in [`pic_interrupts`]' one page (the rest of its layout is
/// `interrupts.rs`'s).
const COM_COUNT: u64 = 0xC04;
const RTC_COUNT: u64 = 0xC08;
/// The master's vectors from 0x20: IRQ 0 (the PIT), IRQ 4 (COM1), IRQ 7
/// (its spurious one); the slave's from 0x28: IRQ 8 (the RTC), IRQ 15
/// (its spurious one).
const VECTORS: [u8; 5] = [0x20, 0x24, 0x27, 0x28, 0x2F];

const TICKS: &str = "PIT and RTC ticked through the PICs\n";
const COM1: &str = "COM1 interrupted through the PIC\n";
const KEYS: &str = "keys echoed until q\n";
/// The messages' spacing.
const SPACING: u64 = 0x40;

/// Programs both 8259s (ICW1-4: vectors 0x20 and 0x28, the slave on IRQ
/// 2, 8086 mode, normal EOI) and unmasks IRQ 0, 2 (the cascade), 4 and 8
/// only, runs the PIT at 1 kHz and the RTC's periodic interrupt at 1024
/// Hz, and waits (`sti; hlt`) for 50 of each, each ended by a
/// non-specific EOI on port 0x20 (the RTC's on the slave's 0xA0 first);
/// then stops both and prints "PIT and RTC ticked through the PICs". Then
/// it enables COM1's THR-empty interrupt
/// (which raises IRQ 4 at once, the transmitter being empty), waits for
/// it (its handler reads IIR and sends the EOI), disables it again,
/// prints "COM1 interrupted through the PIC" and resets through the
/// i8042. A spurious IRQ 7 or 15 is taken and ignored.
///
/// As in [`super::ioapic_interrupts`], the handlers never return with
/// `iretd` (which PVM cannot emulate in 32-bit code): each counts, drops
/// its frame and jumps to where the program goes on, which checks the
/// counts with interrupts off and waits again until they are reached.
///
/// With `echo`, instead of resetting it enables COM1's received-data
/// interrupt, prints "keys echoed until q" and waits: the IRQ 4 handler
/// echoes every byte received and resets through the i8042 on a `q`.
pub fn pic_interrupts(echo: bool) -> Vec<u8> {
    let (mut c, gates) = prologue(VECTORS.len());
    load_idt(&mut c);
    // Masks: IRQ 0, 2 and 4 open on the master, IRQ 8 on the slave.
    init_pics(&mut c, 0xea, 0xfe);
    let wait = tick_both(&mut c, RTC_COUNT);
    c.extend(print(message(0, SPACING)));
    ier(&mut c, 0x02); // THR empty: IRQ 4 now
    let com = c.len() + 10;
    next(&mut c, com);
    assert_eq!(c.len(), com);
    // com: (interrupts off) taken?
    below(&mut c, COM_COUNT, 1, wait);
    ier(&mut c, 0);
    c.extend(print(message(1, SPACING)));
    if echo {
        // Keys: received data interrupts, echoed by the handler.
        ier(&mut c, 0x01);
        next(&mut c, wait);
        c.extend(print(message(2, SPACING)));
        let back = wait as i64 - (c.len() as i64 + 5);
        c.push(0xe9); // jmp wait
        c.extend_from_slice(&(back as i32).to_le_bytes());
    } else {
        c.extend_from_slice(I8042_RESET);
    }

    // The handlers: count, EOI, then `go_on`.
    let eoi = [0xb0, 0x20, 0xe6, 0x20]; // mov al, 0x20; out 0x20, al
    let mut handlers = Vec::new();
    handlers.push(LOAD_ADDR + c.len() as u64); // IRQ 0
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [PIT_COUNT]
    c.extend_from_slice(&a(PIT_COUNT));
    c.extend_from_slice(&eoi);
    go_on(&mut c);
    handlers.push(LOAD_ADDR + c.len() as u64); // IRQ 4: reading IIR acknowledges
    let dx = |c: &mut Vec<u8>, p: u16| {
        c.extend_from_slice(&[0x66, 0xba]); // mov dx, p
        c.extend_from_slice(&p.to_le_bytes());
    };
    dx(&mut c, port::COM1 + 2); // IIR
    c.push(0xec); // in al, dx
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [COM_COUNT]
    c.extend_from_slice(&a(COM_COUNT));
    // drain: echo what was received, and reset on 'q'.
    let drain = c.len();
    dx(&mut c, port::COM1 + 5); // LSR
    #[rustfmt::skip]
    c.extend_from_slice(&[
        0xec,       // in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0x0c, // jz done (+12)
    ]);
    let body = c.len();
    dx(&mut c, port::COM1); // RBR and THR
    #[rustfmt::skip]
    c.extend_from_slice(&[
        0xec,       // in al, dx
        0xee,       // out dx, al
        0x3c, b'q', // cmp al, 'q'
        0x74, 0x00, // je reset (patched below)
    ]);
    let je = c.len() - 1;
    let back = drain as i64 - (c.len() as i64 + 2);
    c.extend_from_slice(&[0xeb, back as i8 as u8]); // jmp drain
    assert_eq!(c.len() - body, 12);
    // done:
    c.extend_from_slice(&eoi);
    go_on(&mut c);
    c[je] = u8::try_from(c.len() - (je + 1)).unwrap_or(0);
    c.extend_from_slice(I8042_RESET); // reset:
    handlers.push(LOAD_ADDR + c.len() as u64); // IRQ 7, spurious: no EOI
    go_on(&mut c);
    handlers.push(LOAD_ADDR + c.len() as u64); // IRQ 8: reading C acknowledges
    c.extend_from_slice(&[0xb0, 0x0c, 0xe6, 0x70, 0xe4, 0x71]);
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [RTC_COUNT]
    c.extend_from_slice(&a(RTC_COUNT));
    c.extend_from_slice(&[0xb0, 0x20, 0xe6, 0xa0]); // the slave's EOI
    c.extend_from_slice(&eoi);
    go_on(&mut c);
    handlers.push(LOAD_ADDR + c.len() as u64); // IRQ 15, spurious: the cascade's EOI
    c.extend_from_slice(&eoi);
    go_on(&mut c);

    fill_gates(&mut c, gates, &VECTORS, &handlers);
    epilogue(c, &[TICKS, COM1, KEYS], SPACING, VECTORS[4])
}

/// What [`pic_interrupts`] prints, in order (the last one only with
/// `echo`).
pub const PIC_INTERRUPTS_OUTPUT: [&str; 3] = [TICKS, COM1, KEYS];

/// What [`pic_from_cpu1`] prints.
pub const PIC_FROM_CPU1_OUTPUT: &str = "CPU 1 raised COM1's IRQ 4 for the boot CPU\n";

/// Two vCPUs and the 8259s, where the line rises on the *other* vCPU: the
/// boot CPU programs both PICs (only IRQ 4 open), points vector 0x24 at
/// a handler, wakes CPU 1 (INIT, SIPI) and waits (`sti; hlt`); CPU 1
/// enables COM1's THR-empty interrupt (its port write raises IRQ 4 at
/// once, on CPU 1's vCPU thread) and halts. The boot CPU's handler reads
/// IIR, counts and sends the EOI; then the boot CPU disables the
/// interrupt, prints [`PIC_FROM_CPU1_OUTPUT`] and resets through the
/// i8042. On the split irqchip the 8259s' output rises on CPU 1's thread
/// while the boot vCPU is halted inside `KVM_RUN`, so that thread must
/// kick the boot vCPU out to inject the vector; a machine whose kick
/// cannot cross threads hangs or dies here.
pub fn pic_from_cpu1() -> Vec<u8> {
    const VECTORS: [u8; 2] = [0x24, 0x27]; // IRQ 4; IRQ 7, spurious
    let (mut c, gates) = prologue(VECTORS.len());
    load_idt(&mut c);
    init_pics(&mut c, 0xef, 0xff);
    // Interrupts stay off until the wait: IRQ 4 may rise before it.
    wake(&mut c, 1);
    let com = c.len() + 10 + 2 + 4;
    next(&mut c, com);
    c.extend_from_slice(&[0xeb, 0x04]); // jmp com
    let wait = c.len();
    c.extend_from_slice(&[0xfb, 0xf4, 0xeb, 0xfc]); // wait: sti; hlt; jmp wait
    assert_eq!(c.len(), com);
    // com: (interrupts off) taken?
    below(&mut c, COM_COUNT, 1, wait);
    ier(&mut c, 0);
    c.extend(print(message(0, SPACING)));
    c.extend_from_slice(I8042_RESET);

    let mut handlers = vec![LOAD_ADDR + c.len() as u64]; // IRQ 4
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1 + 2 (IIR)
    c.extend_from_slice(&(port::COM1 + 2).to_le_bytes());
    c.push(0xec); // in al, dx: acknowledges THR empty
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [COM_COUNT]
    c.extend_from_slice(&a(COM_COUNT));
    c.extend_from_slice(&[0xb0, 0x20, 0xe6, 0x20]); // EOI
    go_on(&mut c);
    handlers.push(LOAD_ADDR + c.len() as u64); // IRQ 7, spurious: no EOI
    go_on(&mut c);
    fill_gates(&mut c, gates, &VECTORS, &handlers);

    #[rustfmt::skip]
    let ap = [
        // Real mode, CS = 0x1000 (SIPI vector 0x10), IP = 0.
        0xba, 0xf9, 0x03, // mov dx, 0x3f9 (COM1's IER)
        0xb0, 0x02,       // mov al, 2 (THR empty)
        0xee,             // out dx, al
        0xf4,             // hlt
        0xeb, 0xfd,       // jmp hlt
    ];
    let page = page(c, &[PIC_FROM_CPU1_OUTPUT], SPACING, VECTORS[1]);
    pvh_elf(&[(LOAD_ADDR, &page), (AP_TRAMPOLINE, &ap)], LOAD_ADDR)
}

/// Programs both 8259s: ICW1 (edge, cascade, ICW4), ICW2 (the master's
/// vectors from 0x20, the slave's from 0x28), ICW3 (the slave on IRQ 2),
/// ICW4 (8086 mode, normal EOI); then the masks.
fn init_pics(c: &mut Vec<u8>, master_mask: u8, slave_mask: u8) {
    #[rustfmt::skip]
    c.extend_from_slice(&[
        0xb0, 0x11, 0xe6, 0x20,
        0xb0, 0x20, 0xe6, 0x21,
        0xb0, 0x04, 0xe6, 0x21,
        0xb0, 0x01, 0xe6, 0x21,
        0xb0, 0x11, 0xe6, 0xa0,
        0xb0, 0x28, 0xe6, 0xa1,
        0xb0, 0x02, 0xe6, 0xa1,
        0xb0, 0x01, 0xe6, 0xa1,
        0xb0, master_mask, 0xe6, 0x21,
        0xb0, slave_mask, 0xe6, 0xa1,
    ]);
}

/// Writes `v` to COM1's interrupt-enable register.
fn ier(c: &mut Vec<u8>, v: u8) {
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1 + 1 (IER)
    c.extend_from_slice(&(port::COM1 + 1).to_le_bytes());
    c.extend_from_slice(&[0xb0, v, 0xee]); // mov al, v; out dx, al
}
