//! The PC machine's memory and I/O map: every guest-physical address and
//! port number the machine uses, in one place.
//!
//! Low memory follows the PC's conventions and the Linux x86 boot protocol
//! (`Documentation/arch/x86/boot.rst`): the kernel's real-mode data ("zero
//! page") and command line sit in the first 640 KiB, the kernel loads at
//! 1 MiB, and the BIOS area 0xE0000-0xFFFFF holds the ACPI RSDP where Linux
//! scans for it. RAM beyond 3 GiB moves above 4 GiB, leaving a 1 GiB hole
//! for the local APIC, IO-APIC and other MMIO.

/// The most vCPUs the machine describes (MADT, MP table, CPUID topology):
/// xAPIC IDs are 8 bits, 0xFF is the broadcast ID, and the IO-APIC takes
/// the ID after the last vCPU.
pub const MAX_CPUS: u32 = 254;

/// Start of guest RAM.
pub const RAM_START: u64 = 0;

/// The boot GDT (four 8-byte entries: null, TSS 0x08, code 0x10, data 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (empty: interrupts stay off until the kernel sets its own).
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH: the module list (one `hvm_modlist_entry` for the initrd), just
/// below the start info.
pub const PVH_MODLIST_START: u64 = PVH_INFO_START - 0x40;
/// PVH: `hvm_start_info` (Xen's `arch-x86/hvm/start_info.h`).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH: the memory map (`hvm_memmap_table_entry` array) right after it.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// The most PVH memory-map entries that fit below the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// The Linux "zero page" (`struct boot_params`, 4 KiB).
pub const ZERO_PAGE_START: u64 = 0x7000;

/// The initial stack pointer for the boot CPU (grows down, below 0x9000).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity-mapping page tables for 64-bit entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 2-MiB pages: the first 1 GiB, identity mapped).
pub const PDE_START: u64 = 0xb000;

/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Most bytes of command line (with its NUL) we place; the kernel's own
/// `cmdline_size` may be smaller and then wins.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// Start of the extended BIOS data area; the MP table goes here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (640 KiB): the legacy VGA/BIOS hole follows.
pub const LOW_RAM_END: u64 = 0xa0000;

/// The ACPI RSDP, in the BIOS read-only area Linux scans (0xE0000-0xFFFFF).
pub const RSDP_START: u64 = 0xe0000;
/// The other ACPI tables follow the RSDP in the same area.
pub const ACPI_TABLES_START: u64 = 0xe0040;
/// End of the BIOS area.
pub const BIOS_END: u64 = 0x10_0000;

/// Where protected/long-mode kernels are loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole (3 GiB): RAM above this moves to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// The i6300esb watchdog's fixed register window (`--device i6300esb`):
/// its BAR's registers and `ESB_LOCK`, described by the ACPI WDAT; just
/// past the PCI ECAM, outside every PCI window.
pub const WATCHDOG_WINDOW: u64 = 0xe010_0000;

/// The IO-APIC's registers (default PC address).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs' registers (default PC address).
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// The three pages Intel VMX needs for its real-mode TSS (`KVM_SET_TSS_ADDR`),
/// in the hole just below the BIOS ROM, as QEMU places them.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// Legacy ISA interrupt lines (GSI numbers on the IO-APIC).
pub mod irq {
    /// i8254 PIT channel 0 (routed to IO-APIC pin 2 by an interrupt override).
    pub const PIT: u32 = 0;
    /// i8042 keyboard.
    pub const KEYBOARD: u32 = 1;
    /// COM1 serial port.
    pub const COM1: u32 = 4;
    /// MC146818 RTC.
    pub const RTC: u32 = 8;
    /// ACPI system control interrupt (level, active high), as PIIX4 wires it.
    pub const ACPI_SCI: u32 = 9;
}

/// I/O ports.
pub mod port {
    /// i8254 PIT channels 0-2 and control word (0x40-0x43).
    pub const PIT: u16 = 0x40;
    /// i8042 data port.
    pub const I8042_DATA: u16 = 0x60;
    /// System control port B (NMI status, speaker gate, PIT channel 2 gate).
    pub const SYSTEM_CONTROL_B: u16 = 0x61;
    /// i8042 command/status port.
    pub const I8042_COMMAND: u16 = 0x64;
    /// CMOS/RTC index and data (0x70-0x71).
    pub const RTC: u16 = 0x70;
    /// QEMU's pvpanic device.
    pub const PVPANIC: u16 = 0x505;
    /// POST code / I/O delay port.
    pub const POST: u16 = 0x80;
    /// COM1 16550 UART (8 registers).
    pub const COM1: u16 = 0x3f8;
    /// ACPI PM1a event block: status (2 bytes) + enable (2 bytes), as PIIX4.
    pub const PM1A_EVT_BLK: u16 = 0x600;
    /// ACPI PM1a control block (2 bytes): SLP_TYP and SLP_EN for poweroff.
    pub const PM1A_CNT_BLK: u16 = 0x604;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memory_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, BOOT_IDT_START),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_MEMMAP_START),
            (PVH_MEMMAP_START, ZERO_PAGE_START),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (PML4_START, PDPTE_START),
            (PDPTE_START, PDE_START),
            (PDE_START, PDE_START + 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (EBDA_START, LOW_RAM_END),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 < a.1);
            for b in &areas[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }

    // Facts about constants, checked at compile time.
    const _: () = assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
    const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
    const _: () = assert!(CMDLINE_START + (CMDLINE_MAX_SIZE as u64) < EBDA_START);
    const _: () = assert!(RSDP_START < ACPI_TABLES_START && ACPI_TABLES_START < BIOS_END);

    #[test]
    fn mmio_devices_sit_in_the_hole() {
        for a in [IOAPIC_ADDR, APIC_ADDR, KVM_TSS_ADDR, WATCHDOG_WINDOW] {
            assert!((MMIO_HOLE_START..MMIO_HOLE_END).contains(&a));
        }
    }
}
