//! The local APIC's LINT0/LINT1 wiring, as PC firmware leaves it.
//!
//! On a PC the 8259 PIC's output reaches the CPUs through LINT0 in ExtINT
//! mode ("virtual wire") and the NMI line through LINT1 in NMI mode. The
//! firmware tables describe the same wiring (MP table local-interrupt
//! entries, the MADT's local APIC NMI entry), and Linux relies on it, e.g.
//! for its timer check through the 8259 when the IO-APIC route fails.
//!
//! We set only the delivery-mode field (bits 8-10) of LVT0 and LVT1 and keep
//! the mask bit as KVM left it. KVM's reset (`kvm_lapic_reset`) masks every
//! LVT entry, except that with the default `KVM_X86_QUIRK_LINT0_REENABLED`
//! the BSP's LVT0 is already ExtINT and unmasked (0x700), as QEMU's
//! `apic_reset_common` does for the BSP. APs keep LINT0 masked; Linux
//! programs them itself when it brings each AP up. (Firecracker and Cloud
//! Hypervisor's `set_lint` do the same read-modify-write, on every vCPU; we
//! do it on the boot CPU only: an AP's INIT masks its LVT entries again,
//! see `set_boot_state`.)

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::CpuError;

/// Offset of the LVT LINT0 register in the APIC register page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery-mode field: bits 8-10.
pub const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
/// LVT mask bit.
pub const APIC_LVT_MASKED: u32 = 1 << 16;
/// Delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0b100;
/// Delivery mode ExtINT (the 8259 supplies the vector).
pub const APIC_MODE_EXTINT: u32 = 0b111;

/// Reads the 32-bit APIC register at `offset` (little-endian in the page).
///
/// # Panics
/// If `offset + 4` is past the 1 KiB `kvm_lapic_state`.
pub fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

/// Writes the 32-bit APIC register at `offset`.
///
/// # Panics
/// If `offset + 4` is past the 1 KiB `kvm_lapic_state`.
pub fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as std::os::raw::c_char;
    }
}

/// `lvt` with its delivery mode replaced by `mode`.
pub fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !APIC_DELIVERY_MODE_MASK) | ((mode << 8) & APIC_DELIVERY_MODE_MASK)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `state`, keeping every other
/// bit (mask, trigger, polarity, vector).
pub fn set_lint_modes(state: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Reads `vcpu`'s local APIC, applies [`set_lint_modes`] and writes it back.
/// Needs the in-kernel irqchip (`KVM_CREATE_IRQCHIP`) to exist.
pub fn apply_lapic(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut state = vcpu.get_lapic().map_err(CpuError::ioctl("KVM_GET_LAPIC"))?;
    set_lint_modes(&mut state);
    vcpu.set_lapic(&state)
        .map_err(CpuError::ioctl("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_round_trip_is_little_endian() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, 0x340, 0x8765_4321);
        assert_eq!(lapic_reg(&s, 0x340), 0x8765_4321);
        assert_eq!(s.regs[0x340] as u8, 0x21);
        assert_eq!(s.regs[0x343] as u8, 0x87);
        assert_eq!(lapic_reg(&s, 0x344), 0);
    }

    #[test]
    #[should_panic]
    fn register_out_of_range_panics() {
        let s = kvm_lapic_state::default();
        lapic_reg(&s, 0x3fe);
    }

    #[test]
    fn zeroed_state_gets_extint_and_nmi() {
        let mut s = kvm_lapic_state::default();
        set_lint_modes(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT0), 0x700);
        assert_eq!(lapic_reg(&s, APIC_LVT1), 0x400);
        // Nothing else changed.
        let mut expected = kvm_lapic_state::default();
        set_lapic_reg(&mut expected, APIC_LVT0, 0x700);
        set_lapic_reg(&mut expected, APIC_LVT1, 0x400);
        assert_eq!(s.regs, expected.regs);
    }

    #[test]
    fn other_lvt_bits_are_kept() {
        let mut s = kvm_lapic_state::default();
        // Masked, level-triggered, vector 0x31, delivery mode fixed (0).
        set_lapic_reg(&mut s, APIC_LVT0, APIC_LVT_MASKED | (1 << 15) | 0x31);
        // Masked, delivery mode SMI (0b010).
        set_lapic_reg(&mut s, APIC_LVT1, APIC_LVT_MASKED | 0x200);
        set_lint_modes(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT0), 0x1_8731);
        assert_eq!(lapic_reg(&s, APIC_LVT1), 0x1_0400);
    }

    #[test]
    fn delivery_mode_only_touches_bits_8_to_10() {
        for lvt in [0, u32::MAX, 0x1_0000, 0xdead_beef] {
            for mode in 0..8 {
                let v = with_delivery_mode(lvt, mode);
                assert_eq!(v & !0x700, lvt & !0x700);
                assert_eq!((v >> 8) & 7, mode);
            }
        }
    }
}
