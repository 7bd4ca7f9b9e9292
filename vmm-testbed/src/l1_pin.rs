//! A paused VM that L1 keeps for its whole session, so that the guests
//! the jobs boot do not make L1's kernel rewrite its own code.
//!
//! L1's KVM switches some of its code paths with static keys, and a
//! static key changes by patching kernel text live: an `int3` written
//! over the site, every CPU made to serialize by an IPI, the new bytes,
//! another IPI. Two of those keys follow the VMs: `apic_sw_disabled`
//! counts local APICs that are software-disabled (each new vCPU's is, until
//! its guest enables it through the spurious-vector register; the count
//! drops back a second later, deferred), and the scheduler's
//! `preempt_notifier_key` counts VMs. With no other VM in L1, every L2 boot
//! flips both: once when the VMM creates the VM and its vCPUs, and once a
//! second after the guest's kernel enables its APICs, that is in the middle
//! of its boot, while its vCPU threads run the patched interrupt-delivery
//! code on the other L1 CPU. TCG then has to notice, on that other CPU,
//! code changed under it; a soak on 2026-12-04 caught an L1 soft lockup
//! with one L1 CPU spinning for 65 s at the `apic_sw_disabled` site in
//! `__apic_accept_irq` and the other in `asm_exc_int3` next to it
//! (docs/nested/README.md).
//!
//! A VM that exists for the whole session, with one vCPU whose APIC is
//! never enabled, keeps both counts above zero, so no L2 boot moves either
//! key across zero and L1's text is left alone. The VM is our VMM itself,
//! started `--paused` (its vCPU never runs) on [`pin_kernel`], a few
//! bytes of ELF. `VMM_TESTBED_L1_PIN=0` leaves it out (to measure what it
//! changes).

/// The environment variable that, set to `0`, leaves the pin out.
pub const PIN_ENV: &str = "VMM_TESTBED_L1_PIN";

/// Where the pin's kernel goes in L1's initramfs.
pub const PIN_KERNEL: &str = "pin.elf";

/// Whether L1 starts the pin (see the module docs).
pub fn wanted() -> bool {
    std::env::var(PIN_ENV).map_or(true, |v| v != "0")
}

/// The line of L1's init that starts the pin in the background: our VMM,
/// paused, one vCPU, the smallest memory, no console; its errors (L1
/// without `/dev/kvm`, say) go to `/tmp/pin.err` and nothing else depends
/// on it.
pub fn init_line() -> String {
    format!(
        "/bin/vmm --kernel /{PIN_KERNEL} --memory 16M --cpus 1 --paused --qmp /tmp/pin.qmp \
         --serial none </dev/null >/dev/null 2>/tmp/pin.err &\n"
    )
}

/// Where the pin's code is loaded: the first address a 64-bit ELF kernel
/// may use (1 MiB).
const LOAD_ADDRESS: u64 = 0x10_0000;

/// The pin's kernel: an x86-64 ELF executable with one loadable segment
/// at 1 MiB, `hlt; jmp .-1`. The pin never runs it (it stays paused); the
/// VMM only needs a kernel to load.
pub fn pin_kernel() -> Vec<u8> {
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    let code = [0xf4u8, 0xeb, 0xfd];
    let mut v = Vec::with_capacity(usize::from(EHDR + PHDR) + code.len());
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    v.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    v.extend_from_slice(&1u32.to_le_bytes()); // e_version
    v.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // e_entry
    v.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    v.extend_from_slice(&EHDR.to_le_bytes()); // e_ehsize
    v.extend_from_slice(&PHDR.to_le_bytes()); // e_phentsize
    v.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    v.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    v.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    v.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    debug_assert_eq!(v.len(), usize::from(EHDR));
    v.extend_from_slice(&1u32.to_le_bytes()); // p_type: LOAD
    v.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R X
    v.extend_from_slice(&u64::from(EHDR + PHDR).to_le_bytes()); // p_offset
    v.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    v.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    v.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    v.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    v.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    v.extend_from_slice(&code);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn the_pin_kernel_is_one_loadable_segment_at_1_mib() {
        let k = pin_kernel();
        assert_eq!(&k[..4], b"\x7fELF");
        assert_eq!((k[4], k[5]), (2, 1), "64-bit little-endian");
        assert_eq!(u16_at(&k, 18), 0x3e, "x86-64");
        assert_eq!(u64_at(&k, 24), LOAD_ADDRESS, "entry");
        let phoff = usize::try_from(u64_at(&k, 32)).unwrap();
        assert_eq!((u16_at(&k, 54), u16_at(&k, 56)), (56, 1));
        assert_eq!(u16_at(&k, 52), 64, "e_ehsize");
        let ph = &k[phoff..phoff + 56];
        assert_eq!(
            u32::from_le_bytes(ph[..4].try_into().unwrap()),
            1,
            "PT_LOAD"
        );
        let (off, paddr, filesz) = (u64_at(ph, 8), u64_at(ph, 24), u64_at(ph, 32));
        assert_eq!(paddr, LOAD_ADDRESS);
        let off = usize::try_from(off).unwrap();
        let len = usize::try_from(filesz).unwrap();
        assert_eq!(&k[off..off + len], [0xf4, 0xeb, 0xfd], "hlt; jmp .-1");
        assert_eq!(k.len(), off + len);
    }

    #[test]
    fn the_pin_runs_paused_and_quiet() {
        let line = init_line();
        assert!(line.starts_with("/bin/vmm --kernel /pin.elf "), "{line}");
        for flag in [
            "--paused",
            "--qmp /tmp/pin.qmp",
            "--serial none",
            "--cpus 1",
        ] {
            assert!(line.contains(flag), "{flag}: {line}");
        }
        assert!(line.trim_end().ends_with('&'), "in the background: {line}");
    }
}
