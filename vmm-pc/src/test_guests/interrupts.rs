//! A guest that takes interrupts through the IO-APIC: the same on KVM's
//! irqchip and on the split one (our IO-APIC, KVM's local APICs).

use super::{acpi_poweroff, le32, print, pvh_elf, store, I8042_RESET, LOAD_ADDR};
use crate::layout::port;

/// Offsets in [`ioapic_interrupts`]' one page, and in `pic.rs`'s guest,
/// which shares its layout: the messages, the IDT register, the IDT,
/// the counts, where the handlers go on, the stack's top.
const MESSAGES: u64 = 0x600;
const IDTR: u64 = 0x700;
const IDT: u64 = 0x800;
pub(super) const PIT_COUNT: u64 = 0xC00;
const RTC_COUNT: u64 = 0xC04;
const SCI_COUNT: u64 = 0xC08;
/// Where the handlers go on (an address in the program).
pub(super) const NEXT: u64 = 0xC0C;
const STACK_TOP: u64 = 0x1000;
/// One gate's set-up code: mov eax, ecx; or eax, handler_lo;
/// mov [gate], eax; mov dword [gate + 4], handler_hi | 0x8E00.
const GATE_LEN: usize = 2 + 5 + 5 + 10;
/// The vectors: PIT (pin 2, edge), RTC (pin 8, edge), SCI (pin 9, level).
const VECTORS: [u8; 3] = [0x30, 0x31, 0x32];
/// Local APIC EOI and spurious-vector registers, IO-APIC windows.
const LAPIC_EOI: u32 = 0xFEE0_00B0;
const LAPIC_SVR: u32 = 0xFEE0_00F0;
const IOREGSEL: u32 = 0xFEC0_0000;
const IOWIN: u32 = 0xFEC0_0010;

const TICKS: &str = "PIT and RTC ticked\n";
const WAITING: &str = "waiting for the power button\n";
const SCI: &str = "SCI twice\n";
/// The messages' spacing from `MESSAGES`.
const SPACING: u64 = 0x20;

pub(super) fn a(offset: u64) -> [u8; 4] {
    le32(LOAD_ADDR + offset)
}

/// `jb` to `target` if the count at `offset` is below `n`.
pub(super) fn below(c: &mut Vec<u8>, offset: u64, n: u8, target: usize) {
    c.extend_from_slice(&[0x83, 0x3d]); // cmp dword [count], n
    c.extend_from_slice(&a(offset));
    c.push(n);
    let back = target as i64 - (c.len() as i64 + 6);
    c.extend_from_slice(&[0x0f, 0x82]); // jb target (rel32)
    c.extend_from_slice(&(back as i32).to_le_bytes());
}

/// `mov dword [NEXT], LOAD_ADDR + at`: where the handlers go on.
pub(super) fn next(c: &mut Vec<u8>, at: usize) {
    store(c, (LOAD_ADDR + NEXT) as u32, (LOAD_ADDR + at as u64) as u32);
}

/// The start both interrupt guests share: the stack, ECX = CS << 16 for
/// the gates, and room for `vectors` gates' set-up code, filled in by
/// [`fill_gates`] once the handlers' places are known. Returns the code
/// and where the gates' code starts.
pub(super) fn prologue(vectors: usize) -> (Vec<u8>, usize) {
    let mut c = Vec::new();
    c.push(0xbc); // mov esp, STACK_TOP
    c.extend_from_slice(&a(STACK_TOP));
    c.extend_from_slice(&[0x8c, 0xc9]); // mov ecx, cs
    c.extend_from_slice(&[0xc1, 0xe1, 0x10]); // shl ecx, 16
    let gates = c.len();
    c.resize(gates + GATE_LEN * vectors, 0x90);
    (c, gates)
}

/// Writes, at `gates`, the code that points each of `vectors`' IDT
/// entries at its handler (a 32-bit interrupt gate).
pub(super) fn fill_gates(c: &mut [u8], gates: usize, vectors: &[u8], handlers: &[u64]) {
    for (i, (&vector, &h)) in vectors.iter().zip(handlers).enumerate() {
        let gate = LOAD_ADDR + IDT + 8 * u64::from(vector);
        let mut g = vec![0x89, 0xc8, 0x0d]; // mov eax, ecx; or eax, lo
        g.extend_from_slice(&((h & 0xffff) as u32).to_le_bytes());
        g.push(0xa3); // mov [gate], eax
        g.extend_from_slice(&le32(gate));
        store(&mut g, (gate + 4) as u32, (h as u32 & 0xffff_0000) | 0x8e00);
        let at = gates + i * GATE_LEN;
        c[at..at + GATE_LEN].copy_from_slice(&g);
    }
}

/// The end both interrupt guests share: `messages` from [`MESSAGES`],
/// `spacing` bytes apart, the IDT register (an IDT up to `top_vector`),
/// the page up to the stack's top; the guest as a PVH ELF.
pub(super) fn epilogue(c: Vec<u8>, messages: &[&str], spacing: u64, top_vector: u8) -> Vec<u8> {
    let page = page(c, messages, spacing, top_vector);
    pvh_elf(&[(LOAD_ADDR, &page)], LOAD_ADDR)
}

/// [`epilogue`]'s page, for a guest with more segments than that one.
pub(super) fn page(mut c: Vec<u8>, messages: &[&str], spacing: u64, top_vector: u8) -> Vec<u8> {
    assert!(
        c.len() as u64 <= MESSAGES,
        "the code fits before the messages"
    );
    c.resize(MESSAGES as usize, 0x90);
    for (i, m) in messages.iter().enumerate() {
        c.resize((MESSAGES + spacing * i as u64) as usize, 0);
        c.extend_from_slice(m.as_bytes());
    }
    assert!(c.len() as u64 <= IDTR, "the messages fit before the IDTR");
    c.resize(IDTR as usize, 0);
    let limit = 8 * (u16::from(top_vector) + 1) - 1;
    c.extend_from_slice(&limit.to_le_bytes());
    c.extend_from_slice(&a(IDT));
    c.resize(STACK_TOP as usize, 0);
    c
}

/// Where message `i` of [`epilogue`]'s, `spacing` bytes apart, is.
pub(super) fn message(i: u64, spacing: u64) -> u64 {
    LOAD_ADDR + MESSAGES + spacing * i
}

/// `lidt [IDTR]`.
pub(super) fn load_idt(c: &mut Vec<u8>) {
    c.extend_from_slice(&[0x0f, 0x01, 0x1d]);
    c.extend_from_slice(&a(IDTR));
}

/// Runs the PIT at 1 kHz (channel 0, mode 2) and the RTC's periodic
/// interrupt at 1024 Hz, waits (`sti; hlt`) until the handlers have
/// counted 50 of each (the PIT's at `PIT_COUNT`, the RTC's at
/// `rtc_count`), then stops both. Returns where the wait is, for later
/// waits.
pub(super) fn tick_both(c: &mut Vec<u8>, rtc_count: u64) -> usize {
    #[rustfmt::skip]
    c.extend_from_slice(&[
        // PIT channel 0, mode 2, count 1193 (1 kHz).
        0xb0, 0x34, 0xe6, 0x43,
        0xb0, 0xa9, 0xe6, 0x40,
        0xb0, 0x04, 0xe6, 0x40,
        // RTC: rate 6 (1024 Hz) in A, PIE in B, C read to start clean.
        0xb0, 0x0a, 0xe6, 0x70, 0xb0, 0x26, 0xe6, 0x71,
        0xb0, 0x0b, 0xe6, 0x70, 0xe4, 0x71, 0x0c, 0x40, 0x88, 0xc4,
        0xb0, 0x0b, 0xe6, 0x70, 0x88, 0xe0, 0xe6, 0x71,
        0xb0, 0x0c, 0xe6, 0x70, 0xe4, 0x71,
    ]);
    let ticks = c.len() + 10 + 2 + 4;
    next(c, ticks);
    c.extend_from_slice(&[0xeb, 0x04]); // jmp ticks
    let wait = c.len();
    c.extend_from_slice(&[0xfb, 0xf4, 0xeb, 0xfc]); // wait: sti; hlt; jmp wait
    assert_eq!(c.len(), ticks);
    // ticks: (interrupts off) enough of both?
    below(c, PIT_COUNT, 50, wait);
    below(c, rtc_count, 50, wait);
    #[rustfmt::skip]
    c.extend_from_slice(&[
        // Both stopped: the PIT in mode 0 with no count, PIE cleared.
        0xb0, 0x30, 0xe6, 0x43,
        0xb0, 0x0b, 0xe6, 0x70, 0xb0, 0x02, 0xe6, 0x71,
    ]);
    wait
}

/// How every handler ends: `mov esp, STACK_TOP; jmp [NEXT]` (a fresh
/// stack, then where the program goes on).
pub(super) fn go_on(c: &mut Vec<u8>) {
    c.push(0xbc);
    c.extend_from_slice(&a(STACK_TOP));
    c.extend_from_slice(&[0xff, 0x25]);
    c.extend_from_slice(&a(NEXT));
}

/// Masks the 8259s, sets up an IDT, the local APIC and the IO-APIC (pin
/// 2, our PIT's IRQ 0, edge, vector 0x30; pin 8, the RTC, edge, 0x31; pin
/// 9, the ACPI SCI, level, 0x32; all to APIC ID 0), runs the PIT at 1 kHz
/// and the RTC's periodic interrupt at 1024 Hz, and waits (`sti; hlt`)
/// for 50 of each; then stops both and prints "PIT and RTC ticked".
///
/// The handlers never return with `iretd` (which PVM cannot emulate in
/// 32-bit code): each counts, sends the local APIC's EOI, drops its frame
/// (a fresh stack) and jumps to where the program goes on (`NEXT`),
/// which checks the counts with interrupts still off and waits again
/// (`sti; hlt`) until they are reached.
///
/// Without `power_button` it then resets through the i8042. With it, it
/// enables the power button (PM1_EN), prints "waiting for the power
/// button", and waits for the SCI twice: its handler sends the EOI
/// *before* it clears PM1_STS, so the level line is still high at the EOI
/// and the IO-APIC must deliver it again (the second run finds nothing to
/// clear). Then it prints "SCI twice" and powers off.
pub fn ioapic_interrupts(power_button: bool) -> Vec<u8> {
    let (mut c, gates) = prologue(VECTORS.len());
    // Both 8259s masked: KVM's would interrupt through LINT0 (ExtINT).
    c.extend_from_slice(&[0xb0, 0xff, 0xe6, 0x21, 0xe6, 0xa1]);
    load_idt(&mut c);
    store(&mut c, LAPIC_SVR, 0x1ff);
    for (pin, vector, level) in [
        (2u32, VECTORS[0], false),
        (8, VECTORS[1], false),
        (9, VECTORS[2], true),
    ] {
        store(&mut c, IOREGSEL, 0x11 + 2 * pin);
        store(&mut c, IOWIN, 0); // destination APIC ID 0
        store(&mut c, IOREGSEL, 0x10 + 2 * pin);
        store(&mut c, IOWIN, u32::from(vector) | u32::from(level) << 15);
    }
    let wait = tick_both(&mut c, RTC_COUNT);
    c.extend(print(message(0, SPACING)));
    if power_button {
        c.extend_from_slice(&[0x66, 0xba]); // mov dx, PM1_EN
        c.extend_from_slice(&(port::PM1A_EVT_BLK + 2).to_le_bytes());
        c.extend_from_slice(&[0x66, 0xb8, 0x00, 0x01]); // mov ax, PWRBTN_EN
        c.extend_from_slice(&[0x66, 0xef]); // out dx, ax
        let sci = c.len() + 10 + 17;
        next(&mut c, sci);
        c.extend(print(message(1, SPACING)));
        assert_eq!(c.len(), sci);
        // sci: (interrupts off) the second one seen?
        below(&mut c, SCI_COUNT, 2, wait);
        c.extend(print(message(2, SPACING)));
        c.extend(acpi_poweroff());
    } else {
        c.extend_from_slice(I8042_RESET);
    }

    // The handlers, each ending with `go_on`.
    let mut handlers = Vec::new();
    handlers.push(LOAD_ADDR + c.len() as u64); // PIT
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [PIT_COUNT]
    c.extend_from_slice(&a(PIT_COUNT));
    store(&mut c, LAPIC_EOI, 0);
    go_on(&mut c);
    handlers.push(LOAD_ADDR + c.len() as u64); // RTC: reading C acknowledges
    c.extend_from_slice(&[0xb0, 0x0c, 0xe6, 0x70, 0xe4, 0x71]);
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [RTC_COUNT]
    c.extend_from_slice(&a(RTC_COUNT));
    store(&mut c, LAPIC_EOI, 0);
    go_on(&mut c);
    handlers.push(LOAD_ADDR + c.len() as u64); // SCI: EOI, then clear
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [SCI_COUNT]
    c.extend_from_slice(&a(SCI_COUNT));
    store(&mut c, LAPIC_EOI, 0);
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, PM1_STS
    c.extend_from_slice(&port::PM1A_EVT_BLK.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xed, 0x66, 0xef]); // in ax, dx; out dx, ax
    go_on(&mut c);

    fill_gates(&mut c, gates, &VECTORS, &handlers);
    epilogue(c, &[TICKS, WAITING, SCI], SPACING, VECTORS[2])
}

/// What [`ioapic_interrupts`] prints, in order (the power button's lines
/// only with it).
pub const IOAPIC_INTERRUPTS_OUTPUT: [&str; 3] = [TICKS, WAITING, SCI];

/// Masks the 8259s, sets up an IDT, the local APIC and the IO-APIC (pin 2,
/// the PIT's IRQ 0, edge, vector 0x30, to APIC ID 0), writes `<` on COM1,
/// then `count` times: programs the PIT's channel 0 for a one-shot of two
/// ticks (mode 0, about 1.7 µs) and waits (`sti; hlt`) for its interrupt,
/// whose handler counts it and sends the local APIC's EOI; then writes `>`
/// and exits as [`super::hello_exit`] does. The host times the marks: each
/// round is a timer interrupt armed by the guest (three port writes, the
/// VMM's timer), raised by the VMM and taken by the guest's handler, the
/// path on which the irqchip's mode differs.
pub fn timer_loop(count: u32) -> Vec<u8> {
    let (mut c, gates) = prologue(1);
    c.extend_from_slice(&[0xb0, 0xff, 0xe6, 0x21, 0xe6, 0xa1]); // both 8259s masked
    load_idt(&mut c);
    store(&mut c, LAPIC_SVR, 0x1ff);
    store(&mut c, IOREGSEL, 0x11 + 2 * 2);
    store(&mut c, IOWIN, 0); // destination APIC ID 0
    store(&mut c, IOREGSEL, 0x10 + 2 * 2);
    store(&mut c, IOWIN, u32::from(VECTORS[0])); // edge, unmasked
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1
    c.extend_from_slice(&port::COM1.to_le_bytes());
    c.extend_from_slice(&[0xb0, b'<', 0xee]); // mov al, '<'; out dx, al
                                              // Where the handler goes on: `after`, past the arming and the wait.
    let arm_len = 12;
    let after = c.len() + 10 + arm_len + 4;
    next(&mut c, after);
    let arm = c.len();
    #[rustfmt::skip]
    c.extend_from_slice(&[
        // arm: PIT channel 0, lobyte/hibyte, mode 0, count 2.
        0xb0, 0x30, 0xe6, 0x43,
        0xb0, 0x02, 0xe6, 0x40,
        0xb0, 0x00, 0xe6, 0x40,
    ]);
    let wait = c.len();
    c.extend_from_slice(&[0xfb, 0xf4, 0xeb, 0xfc]); // wait: sti; hlt; jmp wait
    assert_eq!((c.len(), wait - arm), (after, arm_len));
    // after: (interrupts off) `count` taken yet?
    c.extend_from_slice(&[0x81, 0x3d]); // cmp dword [PIT_COUNT], count
    c.extend_from_slice(&a(PIT_COUNT));
    c.extend_from_slice(&count.max(1).to_le_bytes());
    let back = arm as i64 - (c.len() as i64 + 6);
    c.extend_from_slice(&[0x0f, 0x82]); // jb arm (rel32)
    c.extend_from_slice(&(back as i32).to_le_bytes());
    c.extend_from_slice(&[0xb0, b'>', 0xee]); // mov al, '>'; out dx, al (DX: COM1)
    c.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4]); // mov al, 0; out 0xf4, al
    c.extend_from_slice(I8042_RESET);

    let handler = LOAD_ADDR + c.len() as u64;
    c.extend_from_slice(&[0xff, 0x05]); // inc dword [PIT_COUNT]
    c.extend_from_slice(&a(PIT_COUNT));
    store(&mut c, LAPIC_EOI, 0);
    go_on(&mut c);

    fill_gates(&mut c, gates, &VECTORS[..1], &[handler]);
    epilogue(c, &[], SPACING, VECTORS[0])
}
