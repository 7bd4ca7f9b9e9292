//! Hand-assembled guests for tests and benchmarks: ELF files with a PVH
//! entry note and a few dozen bytes of 32-bit code, one comment per
//! instruction. They boot through the same path as Linux's vmlinux (PVH
//! entry: flat 32-bit protected mode, paging off) and run on any KVM,
//! the PVM software hypervisor included.

use crate::layout::{port, HIMEM_START};

mod interrupts;
mod pic;
mod s3;
pub use interrupts::{ioapic_interrupts, timer_loop, IOAPIC_INTERRUPTS_OUTPUT};
pub use pic::{pic_from_cpu1, pic_interrupts, PIC_FROM_CPU1_OUTPUT, PIC_INTERRUPTS_OUTPUT};
pub use s3::{suspend_cycles, suspend_to_ram, WAKE_VECTOR};

/// Where the guests' code is loaded and entered.
pub const LOAD_ADDR: u64 = HIMEM_START;
/// Where the AP trampoline of [`two_cpus`] is loaded (SIPI vector 0x10).
pub const AP_TRAMPOLINE: u64 = 0x1_0000;

/// An ELF64 x86-64 executable whose `PT_LOAD` segments are `segments`
/// (load address, bytes), with a Xen `PHYS32_ENTRY` note (type 18) that
/// makes `entry` its PVH entry point.
pub fn pvh_elf(segments: &[(u64, &[u8])], entry: u64) -> Vec<u8> {
    let segments: Vec<(u64, &[u8], u64)> = segments
        .iter()
        .map(|&(addr, bytes)| (addr, bytes, bytes.len() as u64))
        .collect();
    elf(&segments, entry, Some(entry))
}

/// An ELF64 x86-64 executable: one `PT_LOAD` per segment (load address,
/// file bytes, memory size: the rest is zero-filled), `e_entry` = `entry`,
/// and, with `pvh_entry`, a Xen `PHYS32_ENTRY` note (type 18) naming it,
/// as Linux's `arch/x86/platform/pvh/head.S` emits it.
pub fn elf(segments: &[(u64, &[u8], u64)], entry: u64, pvh_entry: Option<u64>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut note = Vec::new();
    if let Some(pvh) = pvh_entry {
        note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // n_descsz (a 32-bit entry)
        note.extend_from_slice(&18u32.to_le_bytes()); // n_type: XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&u32::try_from(pvh).unwrap_or(0).to_le_bytes());
    }
    let phnum = segments.len() + usize::from(pvh_entry.is_some());
    let note_offset = EHDR + phnum * PHDR;
    let mut data_offset = note_offset + note.len();

    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF");
    image.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    image.extend_from_slice(&[0; 8]);
    image.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    image.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    image.extend_from_slice(&1u32.to_le_bytes()); // e_version
    image.extend_from_slice(&entry.to_le_bytes()); // e_entry
    image.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    image.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    image.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    image.extend_from_slice(&u16::try_from(phnum).unwrap_or(0).to_le_bytes()); // e_phnum
    image.extend_from_slice(&[0; 6]); // no section headers

    let mut phdr = |p_type: u32, offset: usize, addr: u64, size: usize, memsz: u64, align: u64| {
        image.extend_from_slice(&p_type.to_le_bytes());
        image.extend_from_slice(&7u32.to_le_bytes()); // p_flags: RWX
        image.extend_from_slice(&(offset as u64).to_le_bytes());
        image.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        image.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        image.extend_from_slice(&(size as u64).to_le_bytes()); // p_filesz
        image.extend_from_slice(&memsz.to_le_bytes()); // p_memsz
        image.extend_from_slice(&align.to_le_bytes()); // p_align
    };
    for &(addr, bytes, memsz) in segments {
        phdr(1, data_offset, addr, bytes.len(), memsz, 0x10); // PT_LOAD
        data_offset += bytes.len();
    }
    if pvh_entry.is_some() {
        // Notes are 4-byte aligned, as in Linux's vmlinux: QEMU rounds a
        // note's name size up to the segment's p_align to find the
        // descriptor.
        phdr(4, note_offset, 0, note.len(), note.len() as u64, 4); // PT_NOTE
    }
    image.extend_from_slice(&note);
    for (_, bytes, _) in segments {
        image.extend_from_slice(bytes);
    }
    image
}

fn le32(v: u64) -> [u8; 4] {
    u32::try_from(v).unwrap_or(0).to_le_bytes()
}

/// Code that prints the NUL-terminated string at `msg` on COM1, then jumps
/// to the code following it (offset 17 of these bytes).
fn print(msg: u64) -> Vec<u8> {
    let mut c = vec![0x66, 0xba]; // mov dx, COM1
    c.extend_from_slice(&port::COM1.to_le_bytes());
    c.push(0xbe); // mov esi, msg
    c.extend_from_slice(&le32(msg));
    c.extend_from_slice(&[
        0xac, // next: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done (+3)
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next (-8)
              // done:
    ]);
    c
}

/// Pulse the reset line through the i8042 (command 0xFE on port 0x64).
const I8042_RESET: &[u8] = &[
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt (-3)
];

/// Poweroff: SLP_TYP = 5 and SLP_EN into PM1a control (port 0x604).
fn acpi_poweroff() -> Vec<u8> {
    let mut c = vec![0x66, 0xba]; // mov dx, PM1a_CNT
    c.extend_from_slice(&port::PM1A_CNT_BLK.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xb8, 0x00, 0x34]); // mov ax, (5 << 10) | (1 << 13)
    c.extend_from_slice(&[0x66, 0xef]); // out dx, ax
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    c
}

/// Code at LOAD_ADDR: `body`, then the message (NUL-terminated).
fn program(body: impl Fn(u64) -> Vec<u8>, message: &str) -> Vec<u8> {
    // The body's length does not depend on the message address.
    let len = body(0).len() as u64;
    let mut code = body(LOAD_ADDR + len);
    code.extend_from_slice(message.as_bytes());
    code.push(0);
    code
}

/// Prints `message` on COM1, then resets through the i8042.
pub fn hello_reset(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(I8042_RESET);
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Prints `message` on COM1, then exits on QEMU and on our VMM alike: first
/// `out 0xf4, al` with AL = 0, which QEMU's `isa-debug-exit` device turns
/// into exit status `(0 << 1) | 1` = 1 (on our PC machine port 0xf4 is
/// unmapped and the write is dropped), then the i8042 reset, which ends our
/// VMM with status 0 (QEMU's `microvm` machine has no i8042, but never gets
/// there). A guest for comparing VMMs' boot and exit times.
pub fn hello_exit(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(&[
                0xb0, 0x00, // mov al, 0
                0xe6, 0xf4, // out 0xf4, al (QEMU's isa-debug-exit)
            ]);
            c.extend_from_slice(I8042_RESET);
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Prints `message` on COM1, then halts with interrupts off for good
/// (`cli; hlt`): a guest that costs the host no CPU (with the in-kernel
/// irqchip a halted vCPU waits in the kernel) until the VMM is stopped
/// from outside.
pub fn hello_halt(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp hlt
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// The port [`pio_loop`] writes to: no device on our PC machine, on QEMU's
/// `microvm`, or in the benchmark's floor program.
pub const PIO_LOOP_PORT: u8 = 0x99;

/// Writes `<` on COM1, then `count` bytes to port [`PIO_LOOP_PORT`] (one
/// exit to the VMM each), then `>`, then exits like [`hello_exit`]: the
/// host times the exits between the two marks.
pub fn pio_loop(count: u32) -> Vec<u8> {
    let mut c = vec![0x66, 0xba]; // mov dx, COM1
    c.extend_from_slice(&port::COM1.to_le_bytes());
    c.extend_from_slice(&[0xb0, b'<', 0xee]); // mov al, '<'; out dx, al
    c.push(0xb9); // mov ecx, count
    c.extend_from_slice(&count.max(1).to_le_bytes());
    c.extend_from_slice(&[0xe6, PIO_LOOP_PORT]); // next: out PIO_LOOP_PORT, al
    c.extend_from_slice(&[0xe2, 0xfc]); // loop next (-4)
    c.extend_from_slice(&[0xb0, b'>', 0xee]); // mov al, '>'; out dx, al
    c.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4]); // mov al, 0; out 0xf4, al
    c.extend_from_slice(I8042_RESET);
    pvh_elf(&[(LOAD_ADDR, &c)], LOAD_ADDR)
}

/// Prints `message` on COM1, then powers off through ACPI PM1a control.
pub fn hello_poweroff(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(&acpi_poweroff());
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Prints `message` on COM1, then spins forever (`jmp $`): the VMM must
/// be stopped from outside (signal, console, control socket).
pub fn hello_spin(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Enables the ACPI power button (PM1_EN), prints `message`, polls PM1_STS
/// until the button is pressed, clears it and powers off through S5: a
/// guest for `system_powerdown` that needs no interrupt set-up.
pub fn power_button() -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = Vec::new();
            c.extend_from_slice(&[0x66, 0xba]); // mov dx, PM1_EN
            c.extend_from_slice(&(port::PM1A_EVT_BLK + 2).to_le_bytes());
            c.extend_from_slice(&[0x66, 0xb8, 0x00, 0x01]); // mov ax, PWRBTN
            c.extend_from_slice(&[0x66, 0xef]); // out dx, ax
            c.extend(print(msg));
            c.extend_from_slice(&[0x66, 0xba]); // mov dx, PM1_STS
            c.extend_from_slice(&port::PM1A_EVT_BLK.to_le_bytes());
            #[rustfmt::skip]
            c.extend_from_slice(&[
                // poll:
                0x66, 0xed,             // in ax, dx
                0x66, 0xa9, 0x00, 0x01, // test ax, PWRBTN
                0x74, 0xf8,             // jz poll
                0x66, 0xef,             // out dx, ax (write 1 to clear)
            ]);
            c.extend(acpi_poweroff());
            c
        },
        "waiting for the power button\n",
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Sets the RTC's time the way Linux's `hwclock -w` does (SET in register
/// B, a new year, SET cleared), prints `message`, then spins.
pub fn set_rtc(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = Vec::new();
            #[rustfmt::skip]
            c.extend_from_slice(&[
                0xb0, 0x0b, 0xe6, 0x70, // out 0x70, B
                0xb0, 0x82, 0xe6, 0x71, // out 0x71, SET | 24h
                0xb0, 0x09, 0xe6, 0x70, // out 0x70, year
                0xb0, 0x30, 0xe6, 0x71, // out 0x71, 0x30 (BCD 2030)
                0xb0, 0x0b, 0xe6, 0x70, // out 0x70, B
                0xb0, 0x02, 0xe6, 0x71, // out 0x71, 24h (SET cleared)
            ]);
            c.extend(print(msg));
            c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Where [`counter`] keeps its count.
pub const COUNTER_ADDR: u64 = LOAD_ADDR + 0x800;

/// Counts in memory ([`COUNTER_ADDR`]) and prints each count on COM1 as
/// eight hex digits and a newline, with a busy delay of `delay` loop turns
/// between lines: a guest whose state lives in memory and registers, for
/// snapshot tests (a restored guest prints from where it was saved).
pub fn counter(delay: u32) -> Vec<u8> {
    counter_after_fill(delay, 0, false)
}

/// Where [`filled_counter`] starts filling RAM.
pub const FILL_START: u32 = 2 << 20;

/// [`counter`], after writing `mib` MiB of RAM from [`FILL_START`] with a
/// pattern (0xa5 bytes): a guest whose RAM is mostly in use, for
/// measuring saves and restores by the size of what a guest wrote.
pub fn filled_counter(delay: u32, mib: u32) -> Vec<u8> {
    counter_after_fill(delay, mib, false)
}

/// [`counter`], writing the same `mib` MiB from [`FILL_START`] again
/// before each count: a guest that dirties memory as fast as it can, for
/// live migrations that must stop it to finish.
pub fn dirtying_counter(delay: u32, mib: u32) -> Vec<u8> {
    counter_after_fill(delay, mib, true)
}

/// `mib` MiB from [`FILL_START`] written with 0xa5 bytes (`edi`, `ecx`,
/// `eax` changed).
fn fill(c: &mut Vec<u8>, mib: u32) {
    c.push(0xfc); // cld
    c.push(0xbf); // mov edi, FILL_START
    c.extend_from_slice(&FILL_START.to_le_bytes());
    c.push(0xb9); // mov ecx, the dwords
    c.extend_from_slice(&(mib << 18).to_le_bytes());
    c.push(0xb8); // mov eax, the pattern
    c.extend_from_slice(&0xa5a5_a5a5u32.to_le_bytes());
    c.extend_from_slice(&[0xf3, 0xab]); // rep stosd
}

fn counter_after_fill(delay: u32, mib: u32, every_count: bool) -> Vec<u8> {
    let hex = LOAD_ADDR + 0x100;
    let mut c = Vec::new();
    if mib > 0 && !every_count {
        fill(&mut c, mib);
    }
    c.push(0xbc); // mov esp, a stack below the count
    c.extend_from_slice(&le32(COUNTER_ADDR));
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1
    c.extend_from_slice(&port::COM1.to_le_bytes());
    let top = c.len();
    if mib > 0 && every_count {
        fill(&mut c, mib);
    }
    c.push(0xbf); // top: mov edi, COUNTER_ADDR
    c.extend_from_slice(&le32(COUNTER_ADDR));
    c.extend_from_slice(&[0xff, 0x07]); // inc dword [edi]
    c.extend_from_slice(&[0x8b, 0x07]); // mov eax, [edi]
    c.extend_from_slice(&[0xb9, 8, 0, 0, 0]); // mov ecx, 8
    let digit = c.len();
    c.extend_from_slice(&[0xc1, 0xc0, 0x04]); // digit: rol eax, 4
    c.extend_from_slice(&[0x89, 0xc3]); // mov ebx, eax
    c.extend_from_slice(&[0x83, 0xe3, 0x0f]); // and ebx, 0xf
    c.extend_from_slice(&[0x8a, 0x9b]); // mov bl, [ebx + hex]
    c.extend_from_slice(&le32(hex));
    c.push(0x50); // push eax
    c.extend_from_slice(&[0x88, 0xd8]); // mov al, bl
    c.push(0xee); // out dx, al
    c.push(0x58); // pop eax
    let back = digit as i64 - (c.len() as i64 + 2);
    c.extend_from_slice(&[0xe2, back as u8]); // loop digit
    c.extend_from_slice(&[0xb0, b'\n', 0xee]); // mov al, '\n'; out dx, al
    c.push(0xbe); // mov esi, delay
    c.extend_from_slice(&delay.max(1).to_le_bytes());
    c.extend_from_slice(&[0x4e, 0x75, 0xfd]); // spin: dec esi; jnz spin
    let back = top as i64 - (c.len() as i64 + 2);
    assert!(back >= -128, "a short jump back to the top");
    c.extend_from_slice(&[0xeb, back as u8]); // jmp top
    assert!(c.len() <= 0x100, "the code fits before the digits");
    c.resize(0x100, 0x90);
    c.extend_from_slice(b"0123456789abcdef");
    pvh_elf(&[(LOAD_ADDR, &c)], LOAD_ADDR)
}

/// Prints `message` on COM1, arms the ib700 watchdog with the timeout
/// `index` selects (`out 0x443, al`: 30 s for 0 down to 0 s for 15), then
/// halts with interrupts off and never pets it: a guest whose watchdog
/// fires. An NMI ends it in a triple fault (it has no IDT).
pub fn watchdog(message: &str, index: u8) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(&[0xb0, index]); // mov al, index
            c.extend_from_slice(&[0x66, 0xba, 0x43, 0x04]); // mov dx, 0x443
            c.push(0xee); // out dx, al
            c.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp hlt
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Prints `message` on COM1, reports a panic through pvpanic (port 0x505),
/// then spins.
pub fn hello_panic(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.extend_from_slice(&[0x66, 0xba]); // mov dx, PVPANIC
            c.extend_from_slice(&port::PVPANIC.to_le_bytes());
            c.extend_from_slice(&[0xb0, 0x01]); // mov al, PANICKED
            c.push(0xee); // out dx, al
            c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Prints `message` on COM1, then jumps into the MMIO hole, where no
/// memory is: KVM cannot fetch an instruction there and stops with an
/// internal error (emulation failure), on hardware KVM and PVM alike.
pub fn hello_internal_error(message: &str) -> Vec<u8> {
    let code = program(
        |msg| {
            let mut c = print(msg);
            c.push(0xb8); // mov eax, 0xd000_0000
            c.extend_from_slice(&0xd000_0000u32.to_le_bytes());
            c.extend_from_slice(&[0xff, 0xe0]); // jmp eax
            c
        },
        message,
    );
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Echoes every byte COM1 receives back out of COM1 (polling the line
/// status register), until it echoes a `q`; then resets.
pub fn echo() -> Vec<u8> {
    #[rustfmt::skip]
    let mut code = vec![
        // wait:
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
        0xec,                   // in al, dx
        0xa8, 0x01,             // test al, 1 (data ready)
        0x74, 0xf7,             // jz wait (-9)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8 (receive / transmit)
        0xec,                   // in al, dx
        0xee,                   // out dx, al
        0x3c, b'q',             // cmp al, 'q'
        0x75, 0xed,             // jne wait (-19)
    ];
    code.extend_from_slice(I8042_RESET);
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Writes `x` to COM1 forever, as fast as it can.
pub fn flood() -> Vec<u8> {
    #[rustfmt::skip]
    let code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'x',             // mov al, 'x'
        0xee,                   // out dx, al
        0xeb, 0xfd,             // jmp out (-3)
    ];
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Reads a byte from `port` (normally one with no device), writes it to
/// COM1 as is, then resets.
pub fn read_port(port: u16) -> Vec<u8> {
    let mut code = vec![0x66, 0xba]; // mov dx, port
    code.extend_from_slice(&port.to_le_bytes());
    code.push(0xec); // in al, dx
    code.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1
    code.extend_from_slice(&port::COM1.to_le_bytes());
    code.push(0xee); // out dx, al
    code.extend_from_slice(I8042_RESET);
    pvh_elf(&[(LOAD_ADDR, &code)], LOAD_ADDR)
}

/// Two vCPUs: the boot CPU wakes CPU 1 with INIT and SIPI (as Linux does),
/// CPU 1 prints "A" from a real-mode trampoline and sets a flag; the boot
/// CPU waits for the flag, prints "B" (or "-" if CPU 1 never came), resets.
pub fn two_cpus() -> Vec<u8> {
    two_cpus_then(I8042_RESET, 1)
}

/// [`two_cpus`] with the INIT and SIPI sent to the vCPU of APIC ID
/// `apic_id` (it prints "A"; "-" if it never came): with many vCPUs, the
/// last one, whose set-up is the last to finish when the boot vCPU runs.
pub fn wake_cpu(apic_id: u8) -> Vec<u8> {
    two_cpus_then(I8042_RESET, apic_id)
}

/// [`two_cpus`], except that the boot CPU spins (`jmp $`) after "B"
/// instead of resetting, and CPU 1 stays halted in its trampoline (at
/// most [`TWO_CPUS_AP_LEN`] bytes at [`AP_TRAMPOLINE`]): a machine that
/// runs until stopped from outside, one vCPU busy and one halted.
pub fn two_cpus_spin() -> Vec<u8> {
    two_cpus_then(&[0xeb, 0xfe], 1) // jmp $
}

/// The length of [`two_cpus`]' AP trampoline.
pub const TWO_CPUS_AP_LEN: u64 = 18;

/// `mov dword [addr], value`.
fn store(c: &mut Vec<u8>, addr: u32, value: u32) {
    c.extend_from_slice(&[0xc7, 0x05]);
    c.extend_from_slice(&addr.to_le_bytes());
    c.extend_from_slice(&value.to_le_bytes());
}

/// Starts the CPU of APIC ID `apic_id` at [`AP_TRAMPOLINE`] in real mode
/// (CS = 0x1000, IP = 0), as Linux does: the local APIC software-enabled,
/// then INIT and STARTUP (vector 0x10) through the ICR.
fn wake(c: &mut Vec<u8>, apic_id: u8) {
    store(c, 0xfee0_00f0, 0x1ff); // local APIC SVR: software enable
    store(c, 0xfee0_0310, u32::from(apic_id) << 24); // ICR high: destination
    store(c, 0xfee0_0300, 0x0000_4500); // ICR low: INIT, assert
    store(c, 0xfee0_0300, 0x0000_4610); // ICR low: STARTUP, vector 0x10
}

fn two_cpus_then(end: &[u8], apic_id: u8) -> Vec<u8> {
    const FLAG: u64 = AP_TRAMPOLINE + 0x100;
    #[rustfmt::skip]
    let ap: Vec<u8> = vec![
        // Real mode, CS = 0x1000 (SIPI vector 0x10), IP = 0.
        0x8c, 0xc8,             // mov ax, cs
        0x8e, 0xd8,             // mov ds, ax
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xb0, b'A',             // mov al, 'A'
        0xee,                   // out dx, al
        0xc6, 0x06, 0x00, 0x01, 0x01, // mov byte [0x100], 1  (FLAG)
        0xf4,                   // hlt
        0xeb, 0xfd,             // jmp hlt
    ];
    let mut bsp = Vec::new();
    store(&mut bsp, FLAG as u32, 0); // a reset in place keeps RAM: start clean
    wake(&mut bsp, apic_id);
    // Wait for the flag, at most until the TSC's high half has moved on by
    // two (1.6-3.3 s at 2.6 GHz): a bound in time, not in iterations,
    // since some hypervisors emulate 32-bit code one instruction at a time.
    #[rustfmt::skip]
    bsp.extend_from_slice(&[
        0x0f, 0x31,             // rdtsc
        0x89, 0xd3,             // mov ebx, edx
        0x83, 0xc3, 0x02,       // add ebx, 2
        // poll:
        0x80, 0x3d,             // cmp byte [FLAG], 1
    ]);
    bsp.extend_from_slice(&le32(FLAG));
    #[rustfmt::skip]
    bsp.extend_from_slice(&[
        0x01,
        0x74, 0x0a,             // je seen (+10)
        0x0f, 0x31,             // rdtsc
        0x39, 0xda,             // cmp edx, ebx
        0x72, 0xf1,             // jb poll (-15)
        0xb0, b'-',             // mov al, '-'
        0xeb, 0x02,             // jmp out (+2)
        // seen:
        0xb0, b'B',             // mov al, 'B'
        // out:
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee,                   // out dx, al
    ]);
    bsp.extend_from_slice(end);
    debug_assert_eq!(ap.len() as u64, TWO_CPUS_AP_LEN);
    pvh_elf(&[(LOAD_ADDR, &bsp), (AP_TRAMPOLINE, &ap)], LOAD_ADDR)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_core::ram::GuestRam;

    use super::*;
    use crate::boot::{load_kernel, KernelEntry};

    fn load(image: &[u8]) -> (GuestRam, KernelEntry) {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(image).unwrap();
        f.rewind().unwrap();
        let k = load_kernel(&mem, &mut f).unwrap();
        (mem, k.entry)
    }

    #[test]
    fn the_loader_takes_them_with_their_pvh_entry() {
        for image in [
            hello_reset("hi\n"),
            hello_poweroff("x"),
            read_port(0x99),
            two_cpus(),
            two_cpus_spin(),
            timer_loop(10),
            pic_from_cpu1(),
        ] {
            let (_, entry) = load(&image);
            assert_eq!(entry, KernelEntry::Pvh(GuestAddress(LOAD_ADDR)));
        }
    }

    #[test]
    fn pio_loop_counts_its_writes_in_ecx() {
        let (mem, _) = load(&pio_loop(12345));
        // mov dx, COM1 (4); mov al, '<'; out dx, al (3); mov ecx, imm32 (5).
        let mov: u8 = mem.read_obj(GuestAddress(LOAD_ADDR + 7)).unwrap();
        assert_eq!(mov, 0xb9);
        let count: u32 = mem.read_obj(GuestAddress(LOAD_ADDR + 8)).unwrap();
        assert_eq!(count, 12345);
        let mut body = [0u8; 4];
        mem.read_slice(&mut body, GuestAddress(LOAD_ADDR + 12))
            .unwrap();
        assert_eq!(body, [0xe6, PIO_LOOP_PORT, 0xe2, 0xfc]);
        // A zero count would loop 2^32 times: it becomes 1.
        let (mem, _) = load(&pio_loop(0));
        let count: u32 = mem.read_obj(GuestAddress(LOAD_ADDR + 8)).unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn the_message_lands_after_the_code() {
        let (mem, _) = load(&hello_reset("hi\n"));
        // print() is 17 bytes, the reset 7: the message follows at +24.
        let mut msg = [0u8; 4];
        mem.read_slice(&mut msg, GuestAddress(LOAD_ADDR + 24))
            .unwrap();
        assert_eq!(&msg, b"hi\n\0");
        let esi: u32 = mem.read_obj(GuestAddress(LOAD_ADDR + 5)).unwrap();
        assert_eq!(u64::from(esi), LOAD_ADDR + 24);
    }

    #[test]
    fn hello_exit_writes_the_debug_exit_port_before_the_reset() {
        let image = hello_exit("bye\n");
        let (mem, entry) = load(&image);
        assert_eq!(entry, KernelEntry::Pvh(GuestAddress(LOAD_ADDR)));
        // print() is 17 bytes, then mov al, 0; out 0xf4, al (4 bytes),
        // then the reset (7): the message follows at +28.
        let mut code = [0u8; 4];
        mem.read_slice(&mut code, GuestAddress(LOAD_ADDR + 17))
            .unwrap();
        assert_eq!(code, [0xb0, 0x00, 0xe6, 0xf4]);
        let mut reset = [0u8; 7];
        mem.read_slice(&mut reset, GuestAddress(LOAD_ADDR + 21))
            .unwrap();
        assert_eq!(reset, I8042_RESET);
        let mut msg = [0u8; 5];
        mem.read_slice(&mut msg, GuestAddress(LOAD_ADDR + 28))
            .unwrap();
        assert_eq!(&msg, b"bye\n\0");
        let esi: u32 = mem.read_obj(GuestAddress(LOAD_ADDR + 5)).unwrap();
        assert_eq!(u64::from(esi), LOAD_ADDR + 28);
        // The PT_NOTE header (the second) is 4-byte aligned, for QEMU;
        // the PT_LOAD one is as pvh_elf made it.
        let p_align = |ph: usize| u64::from_le_bytes(image[ph + 48..ph + 56].try_into().unwrap());
        assert_eq!(image[64 + 56..64 + 60], 4u32.to_le_bytes());
        assert_eq!(p_align(64 + 56), 4);
        assert_eq!(p_align(64), 0x10);
    }

    #[test]
    fn the_trampoline_is_loaded_low() {
        let (mem, _) = load(&two_cpus());
        let first: [u8; 2] = mem.read_obj(GuestAddress(AP_TRAMPOLINE)).unwrap();
        assert_eq!(first, [0x8c, 0xc8]);
    }
}
