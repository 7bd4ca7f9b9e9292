//! Guests that suspend to RAM (ACPI S3) and wake up: [`suspend_to_ram`]
//! for the tests, which knows our machine's FACS address, and
//! [`suspend_cycles`] for the benchmark beside QEMU, which finds the FACS
//! through the ACPI tables as a firmware-less kernel would.

use super::{le32, print, program, pvh_elf, LOAD_ADDR};
use crate::layout::port;

/// Where [`suspend_to_ram`]'s real-mode wake-up code is, and its waking
/// vector: `CS` = 0x1000, `IP` = 8.
pub const WAKE_VECTOR: u32 = 0x1_0008;

/// ACPI S3 from a guest with no kernel: writes [`WAKE_VECTOR`] into the
/// FACS's `Firmware_Waking_Vector` (none with `set_vector` false), prints
/// `suspending\n`, then writes SLP_TYP = S3 | SLP_EN into PM1a control.
/// With `rtc_alarm`, it first lets the RTC wake it: PM1_EN.RTC_EN, an RTC
/// alarm every second (all three alarm bytes "don't care") and AIE.
///
/// On each wake-up the real-mode code at [`WAKE_VECTOR`] reads PM1_STS,
/// clears it, and prints one byte: `P` if PWRBTN_STS was set (the power
/// button woke it), `R` if RTC_STS was (the alarm), else `W`; `?` if
/// WAK_STS was not set. After the
/// first wake-up it suspends again; after the second it halts with
/// interrupts off.
pub fn suspend_to_ram(set_vector: bool, rtc_alarm: bool) -> Vec<u8> {
    const COUNT: u64 = 0x1_0100;
    let s3 = (u16::from(crate::acpi::SLP_TYP_S3) << 10) | (1 << 13);
    let mut sleep = vec![0x66, 0xba]; // mov dx, PM1a_CNT
    sleep.extend_from_slice(&port::PM1A_CNT_BLK.to_le_bytes());
    sleep.extend_from_slice(&[0x66, 0xb8]); // mov ax, S3 | SLP_EN
    sleep.extend_from_slice(&s3.to_le_bytes());
    sleep.extend_from_slice(&[0x66, 0xef, 0xf4, 0xeb, 0xfd]); // out dx, ax; hlt; jmp hlt
    let code = program(
        |msg| {
            let mut c = vec![0xc6, 0x05]; // mov byte [COUNT], 0
            c.extend_from_slice(&le32(COUNT));
            c.push(0);
            if set_vector {
                c.extend_from_slice(&[0xc7, 0x05]); // mov dword [FACS + 12], vector
                c.extend_from_slice(&le32(
                    crate::acpi::facs::FACS_ADDR + crate::acpi::facs::WAKING_VECTOR_OFFSET,
                ));
                c.extend_from_slice(&WAKE_VECTOR.to_le_bytes());
            }
            if rtc_alarm {
                c.extend_from_slice(&[0x66, 0xba]); // mov dx, PM1_EN
                c.extend_from_slice(&(port::PM1A_EVT_BLK + 2).to_le_bytes());
                c.extend_from_slice(&[0x66, 0xb8, 0x00, 0x04]); // mov ax, RTC_EN
                c.extend_from_slice(&[0x66, 0xef]); // out dx, ax
                #[rustfmt::skip]
                c.extend_from_slice(&[
                    0xb0, 0x01, 0xe6, 0x70, 0xb0, 0xc0, 0xe6, 0x71, // seconds alarm: any
                    0xb0, 0x03, 0xe6, 0x70, 0xb0, 0xc0, 0xe6, 0x71, // minutes alarm: any
                    0xb0, 0x05, 0xe6, 0x70, 0xb0, 0xc0, 0xe6, 0x71, // hours alarm: any
                    0xb0, 0x0b, 0xe6, 0x70, 0xb0, 0x22, 0xe6, 0x71, // B: AIE, 24-hour
                ]);
            }
            c.extend(print(msg));
            c.extend_from_slice(&sleep);
            c
        },
        "suspending\n",
    );
    let [s3_lo, s3_hi] = s3.to_le_bytes();
    let [evt_lo, evt_hi] = port::PM1A_EVT_BLK.to_le_bytes();
    let [cnt_lo, cnt_hi] = port::PM1A_CNT_BLK.to_le_bytes();
    #[rustfmt::skip]
    let wake: Vec<u8> = vec![
        // Real mode, CS = 0x1000, IP = 8.
        0x8c, 0xc8,                   // mov ax, cs
        0x8e, 0xd8,                   // mov ds, ax
        0xba, evt_lo, evt_hi,         // mov dx, PM1_STS
        0xed,                         // in ax, dx
        0x89, 0xc3,                   // mov bx, ax
        0xef,                         // out dx, ax (write 1 to clear)
        0xb0, b'W',                   // mov al, 'W'
        0xf6, 0xc7, 0x01,             // test bh, PWRBTN >> 8
        0x74, 0x02,                   // jz +2
        0xb0, b'P',                   // mov al, 'P'
        0xf6, 0xc7, 0x04,             // test bh, RTC >> 8
        0x74, 0x02,                   // jz +2
        0xb0, b'R',                   // mov al, 'R'
        0xf6, 0xc7, 0x80,             // test bh, WAK >> 8
        0x75, 0x02,                   // jnz +2
        0xb0, b'?',                   // mov al, '?'
        0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xee,                         // out dx, al
        0xfe, 0x06, 0x00, 0x01,       // inc byte [0x100]  (COUNT)
        0x80, 0x3e, 0x00, 0x01, 0x02, // cmp byte [0x100], 2
        0x73, 0x07,                   // jae halt (+7)
        0xba, cnt_lo, cnt_hi,         // mov dx, PM1_CNT
        0xb8, s3_lo, s3_hi,           // mov ax, S3 | SLP_EN
        0xef,                         // out dx, ax
        // halt:
        0xfa,                         // cli
        0xf4,                         // hlt
        0xeb, 0xfd,                   // jmp hlt (-3)
    ];
    pvh_elf(
        &[(LOAD_ADDR, &code), (u64::from(WAKE_VECTOR), &wake)],
        LOAD_ADDR,
    )
}

/// The SLP_TYP | SLP_EN word for S3, the same on our machine and QEMU's
/// PIIX4 (`_S3` is 1 on both).
const S3_SLEEP: u16 = (crate::acpi::SLP_TYP_S3 as u16) << 10 | 1 << 13;

/// Suspends to RAM over and over, for timing suspend and wake-up beside
/// QEMU's `-M pc`: finds the RSDP in 0xE0000-0xFFFFF, the FADT through the
/// XSDT (the RSDT when the RSDP has no XSDT, as SeaBIOS's), the FACS
/// through the FADT, writes [`WAKE_VECTOR`] there, prints `z` and writes
/// S3 | SLP_EN into PM1a control (port 0x604 on both machines). Each
/// wake-up (real mode at the vector: after SeaBIOS's resume path on QEMU,
/// directly on ours) clears PM1_STS, prints `w`, then `z`, and suspends
/// again. Prints `!` and halts if it finds no FADT.
pub fn suspend_cycles() -> Vec<u8> {
    assert_eq!(port::PM1A_CNT_BLK, 0x604);
    assert_eq!(port::PM1A_EVT_BLK, 0x600);
    let [s3_lo, s3_hi] = S3_SLEEP.to_le_bytes();
    let [v0, v1, v2, v3] = WAKE_VECTOR.to_le_bytes();
    #[rustfmt::skip]
    let code: Vec<u8> = vec![
        0xfa,                                     // cli
        0xbe, 0x00, 0x00, 0x0e, 0x00,             // mov esi, 0xe0000
        // scan:
        0x81, 0x3e, b'R', b'S', b'D', b' ',       // cmp dword [esi], "RSD "
        0x75, 0x09,                               // jne next
        0x81, 0x7e, 0x04, b'P', b'T', b'R', b' ', // cmp dword [esi + 4], "PTR "
        0x74, 0x0d,                               // je found
        // next:
        0x83, 0xc6, 0x10,                         // add esi, 16
        0x81, 0xfe, 0x00, 0x00, 0x10, 0x00,       // cmp esi, 0x100000
        0x72, 0xe4,                               // jb scan
        0xeb, 0x5f,                               // jmp fail
        // found:
        0xba, 0x04, 0x00, 0x00, 0x00,             // mov edx, 4 (RSDT entries)
        0x8b, 0x5e, 0x10,                         // mov ebx, [esi + 16] (RsdtAddress)
        0x80, 0x7e, 0x0f, 0x02,                   // cmp byte [esi + 15], 2 (Revision)
        0x72, 0x0e,                               // jb tables
        0x8b, 0x46, 0x18,                         // mov eax, [esi + 24] (XsdtAddress)
        0x85, 0xc0,                               // test eax, eax
        0x74, 0x07,                               // jz tables
        0x89, 0xc3,                               // mov ebx, eax
        0xba, 0x08, 0x00, 0x00, 0x00,             // mov edx, 8 (XSDT entries)
        // tables:
        0x8b, 0x4b, 0x04,                         // mov ecx, [ebx + 4] (Length)
        0x01, 0xd9,                               // add ecx, ebx (end)
        0x8d, 0x7b, 0x24,                         // lea edi, [ebx + 36] (Entry)
        // entry:
        0x39, 0xcf,                               // cmp edi, ecx
        0x73, 0x37,                               // jae fail
        0x8b, 0x2f,                               // mov ebp, [edi]
        0x81, 0x7d, 0x00, b'F', b'A', b'C', b'P', // cmp dword [ebp], "FACP"
        0x74, 0x04,                               // je fadt
        0x01, 0xd7,                               // add edi, edx
        0xeb, 0xed,                               // jmp entry
        // fadt:
        0x8b, 0x45, 0x24,                         // mov eax, [ebp + 36] (FIRMWARE_CTRL)
        0x85, 0xc0,                               // test eax, eax
        0x75, 0x06,                               // jnz facs
        0x8b, 0x85, 0x84, 0x00, 0x00, 0x00,       // mov eax, [ebp + 132] (X_FIRMWARE_CTRL)
        // facs:
        0xc7, 0x40, 0x0c, v0, v1, v2, v3,         // mov dword [eax + 12], WAKE_VECTOR
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, COM1
        0xb0, b'z',                               // mov al, 'z'
        0xee,                                     // out dx, al
        0x66, 0xba, 0x04, 0x06,                   // mov dx, PM1a_CNT
        0x66, 0xb8, s3_lo, s3_hi,                 // mov ax, S3 | SLP_EN
        0x66, 0xef,                               // out dx, ax
        // halt:
        0xf4,                                     // hlt
        0xeb, 0xfd,                               // jmp halt
        // fail:
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, COM1
        0xb0, b'!',                               // mov al, '!'
        0xee,                                     // out dx, al
        0xf4,                                     // hlt
        0xeb, 0xf6,                               // jmp fail
    ];
    #[rustfmt::skip]
    let wake: Vec<u8> = vec![
        // Real mode, CS = 0x1000, IP = 8.
        0xfa,                   // cli
        0xba, 0x00, 0x06,       // mov dx, PM1_STS
        0xed,                   // in ax, dx
        0xef,                   // out dx, ax (write 1 to clear)
        0xba, 0xf8, 0x03,       // mov dx, COM1
        0xb0, b'w',             // mov al, 'w'
        0xee,                   // out dx, al
        0xb0, b'z',             // mov al, 'z'
        0xee,                   // out dx, al
        0xba, 0x04, 0x06,       // mov dx, PM1a_CNT
        0xb8, s3_lo, s3_hi,     // mov ax, S3 | SLP_EN
        0xef,                   // out dx, ax
        // halt:
        0xf4,                   // hlt
        0xeb, 0xfd,             // jmp halt
    ];
    pvh_elf(
        &[(LOAD_ADDR, &code), (u64::from(WAKE_VECTOR), &wake)],
        LOAD_ADDR,
    )
}
