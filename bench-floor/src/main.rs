//! `bench-floor GUEST.elf [MEMORY_MIB [CPUS]]`: the floor of the boot benchmark
//! (`cargo xtask bench`), the least any VMM can do on this host to run
//! a PVH ELF guest that prints on COM1 and exits.
//!
//! Everything it does, in order, all in the main thread:
//!
//! 1. read the ELF file (one `read`);
//! 2. open `/dev/kvm` and create the VM (`KVM_CREATE_VM`);
//! 3. map anonymous RAM (default 128 MiB, `MAP_NORESERVE`, from guest
//!    address 0) and register it as slot 0 (`KVM_SET_USER_MEMORY_REGION`),
//!    before the irqchip as our VMM does;
//! 4. keep only the local APICs in the kernel (`KVM_CAP_SPLIT_IRQCHIP`
//!    with 24 IO-APIC pins), as QEMU's microvm and our VMM by default do;
//!    with `BENCH_FLOOR_IRQCHIP=kernel`, create the whole in-kernel
//!    irqchip instead (`KVM_CREATE_IRQCHIP`: PICs, IO-APIC, local APICs),
//!    our VMM's `--irqchip kernel`;
//! 5. copy the ELF's `PT_LOAD` segments into RAM and take the entry point
//!    from its Xen `PHYS32_ENTRY` note (type 18);
//! 6. create the vCPUs (one unless CPUS says more: the others only
//!    created, as the application processors a kernel would start with
//!    INIT/SIPI), and put vCPU 0 in the PVH entry state: 32-bit flat
//!    protected mode (CS, DS, ES, FS, GS, SS base 0, limit 4 GiB; CR0 = PE |
//!    ET; paging off; RFLAGS = 0x2; EIP = the entry);
//! 7. `KVM_RUN` in a loop: each byte written to COM1's data port (0x3f8)
//!    goes to stdout at once (one `write` per guest `out`, as a VMM's serial
//!    console does); the first write to port 0xf4 (QEMU's `isa-debug-exit`)
//!    or 0x64 (the i8042 command port, the PC's reset) ends the program
//!    with status 0.
//!
//! With `BENCH_FLOOR_CPUID=kvm` it also asks KVM what CPUID it supports
//! (`KVM_GET_SUPPORTED_CPUID`, before step 2) and gives every vCPU that
//! table unchanged (`KVM_SET_CPUID2`, in step 6): the CPUID set-up any VMM
//! that boots Linux does, at its least. Where `CPUID` traps to an outer
//! hypervisor (this machine's PVM host runs inside a VM) the question is
//! expensive, which the plain floor leaves out.
//!
//! What it leaves out, because the benchmark guest needs none of it: no
//! CPUID (`KVM_SET_CPUID2`) unless asked, MSRs, FPU or LAPIC set-up, no GDT or IDT in
//! guest memory (the segment registers' hidden parts are set directly,
//! and the guest never reloads them), no `hvm_start_info` (RBX is 0), no
//! ACPI or MP tables, no PIT, no devices, no threads, no event loop, no
//! signal handling. Reads from any port return 0xff; other exits fail.

use std::io::Write;
use std::process::ExitCode;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM, unless the second argument says otherwise (MiB).
const DEFAULT_MEMORY_MIB: usize = 128;
/// COM1's data register: the guest's console output.
const COM1_DATA: u16 = 0x3f8;
/// QEMU's `isa-debug-exit` port.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The i8042 command port (0xFE there resets the PC).
const I8042_COMMAND: u16 = 0x64;

/// CR0: protected mode enable.
const CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always set since the 486).
const CR0_ET: u64 = 1 << 4;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        return Err("usage: bench-floor GUEST.elf [MEMORY_MIB [CPUS]]".into());
    };
    let memory_mib = match args.get(1) {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| format!("'{s}' is not a number of MiB"))?,
        None => DEFAULT_MEMORY_MIB,
    };
    let cpus = match args.get(2) {
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=255).contains(n))
            .ok_or_else(|| format!("'{s}' is not a number of vCPUs (1 to 255)"))?,
        None => 1,
    };

    // 1. The guest.
    let image = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;

    // 2. KVM and the VM.
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let cpuid = match std::env::var_os("BENCH_FLOOR_CPUID") {
        Some(v) if v == "kvm" => Some(
            kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID failed: {e}"))?,
        ),
        _ => None,
    };
    let vm = kvm
        .create_vm()
        .map_err(|e| format!("cannot create a VM (KVM_CREATE_VM): {e}"))?;

    // 3. RAM, slot 0 from guest address 0.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory_mib << 20)])
        .map_err(|e| format!("cannot map {memory_mib} MiB of guest RAM: {e}"))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| format!("guest RAM has no host address: {e}"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: (memory_mib as u64) << 20,
        userspace_addr: host as u64,
    };
    // SAFETY: [host, host + memory_size) is exactly the one live anonymous
    // mapping owned by `mem`. `mem` outlives every KVM_RUN: the vCPU is
    // declared after it, so it is dropped (and never runs again) before
    // `mem` unmaps the RAM.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION failed: {e}"))?;

    // 4. Only the local APIC in the kernel (KVM_CAP_SPLIT_IRQCHIP, as
    //    QEMU's microvm and our VMM do); or, with BENCH_FLOOR_IRQCHIP=kernel,
    //    the whole in-kernel irqchip, to measure what the kernel's PIC and
    //    IO-APIC cost.
    if std::env::var_os("BENCH_FLOOR_IRQCHIP").is_none_or(|v| v != "kernel") {
        let mut cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = 24; // IO-APIC pins routed to userspace
        vm.enable_cap(&cap)
            .map_err(|e| format!("KVM_ENABLE_CAP(SPLIT_IRQCHIP) failed: {e}"))?;
    } else {
        vm.create_irq_chip()
            .map_err(|e| format!("KVM_CREATE_IRQCHIP failed: {e}"))?;
    }

    // 5. The kernel's segments and entry point.
    let entry = load_pvh_elf(&mem, &image)?;

    // 6. The vCPUs, vCPU 0 at the PVH entry; the others are only created
    //    (they would wait for INIT/SIPI) and live until the exit.
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;
    let aps = (1..cpus)
        .map(|id| vm.create_vcpu(id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("KVM_CREATE_VCPU for an application processor failed: {e}"))?;
    if let Some(cpuid) = &cpuid {
        for v in std::iter::once(&vcpu).chain(&aps) {
            v.set_cpuid2(cpuid)
                .map_err(|e| format!("KVM_SET_CPUID2 failed: {e}"))?;
        }
    }
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
    sregs.cs = flat_segment(0x10, 0xb); // code: execute/read, accessed
    let data = flat_segment(0x18, 0x3); // data: read/write, accessed
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS failed: {e}"))?;
    vcpu.set_regs(&kvm_regs {
        rip: entry,
        rflags: 0x2,
        ..Default::default()
    })
    .map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;

    // 7. Run.
    let mut out = std::io::stdout().lock();
    loop {
        match vcpu.run().map_err(|e| format!("KVM_RUN failed: {e}"))? {
            VcpuExit::IoOut(COM1_DATA, bytes) => {
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write to stdout: {e}"))?;
            }
            VcpuExit::IoOut(DEBUG_EXIT_PORT | I8042_COMMAND, _) => return Ok(()),
            VcpuExit::IoOut(..) => {}
            VcpuExit::IoIn(_, bytes) => bytes.fill(0xff),
            VcpuExit::MmioRead(_, bytes) => bytes.fill(0xff),
            VcpuExit::MmioWrite(..) => {}
            VcpuExit::Hlt => return Err("the guest halted before exiting".into()),
            VcpuExit::Shutdown => return Err("the guest triple-faulted".into()),
            other => return Err(format!("unexpected vCPU exit: {other:?}")),
        }
    }
}

/// A present, ring-0, 32-bit segment with base 0 and a 4 GiB limit.
fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Copies the `PT_LOAD` segments of an ELF64 x86-64 image into `mem` (at
/// their physical addresses) and returns the 32-bit PVH entry point from
/// its Xen `PHYS32_ENTRY` note.
fn load_pvh_elf(mem: &GuestMemoryMmap, image: &[u8]) -> Result<u64, String> {
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let bad = |what: &str| format!("not a PVH ELF64 x86-64 kernel: {what}");
    if image.get(..6) != Some(b"\x7fELF\x02\x01") || u16_at(image, 18) != Some(62) {
        return Err(bad("wrong ELF header"));
    }
    let phoff = u64_at(image, 32).ok_or_else(|| bad("truncated header"))?;
    let phentsize = u16_at(image, 54).ok_or_else(|| bad("truncated header"))?;
    let phnum = u16_at(image, 56).ok_or_else(|| bad("truncated header"))?;
    let mut entry = None;
    for i in 0..u64::from(phnum) {
        let ph = usize::try_from(phoff + i * u64::from(phentsize))
            .map_err(|_| bad("program header out of range"))?;
        let field = |off: usize| u64_at(image, ph + off).ok_or_else(|| bad("truncated header"));
        let p_type = u32_at(image, ph).ok_or_else(|| bad("truncated header"))?;
        let offset = usize::try_from(field(8)?).map_err(|_| bad("bad offset"))?;
        let paddr = field(24)?;
        let filesz = usize::try_from(field(32)?).map_err(|_| bad("bad size"))?;
        let bytes = offset
            .checked_add(filesz)
            .and_then(|end| image.get(offset..end))
            .ok_or_else(|| bad("segment past the end of the file"))?;
        match p_type {
            PT_LOAD => mem
                .write_slice(bytes, GuestAddress(paddr))
                .map_err(|e| format!("cannot load a segment at {paddr:#x}: {e}"))?,
            PT_NOTE => {
                // Notes: namesz, descsz, type, name, desc (4-byte aligned).
                let mut at = 0;
                while at + 12 <= bytes.len() {
                    let word = |o: usize| u32_at(bytes, at + o).unwrap_or(0) as usize;
                    let (namesz, descsz, kind) = (word(0), word(4), word(8));
                    let name = at + 12;
                    let desc = name + namesz.next_multiple_of(4);
                    if bytes.get(name..name + namesz) == Some(b"Xen\0")
                        && kind as u32 == XEN_ELFNOTE_PHYS32_ENTRY
                    {
                        entry = u32_at(bytes, desc).map(u64::from);
                    }
                    at = desc + descsz.next_multiple_of(4);
                }
            }
            _ => {}
        }
    }
    entry.ok_or_else(|| bad("no Xen PHYS32_ENTRY note"))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_pc::test_guests::{hello_exit, hello_reset, LOAD_ADDR};

    use super::load_pvh_elf;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    #[test]
    fn loads_the_segments_and_finds_the_pvh_entry() {
        // hello_exit's note is 4-byte aligned, hello_reset's says 0x10.
        for image in [hello_exit("hi\n"), hello_reset("hi\n")] {
            let mem = mem();
            assert_eq!(load_pvh_elf(&mem, &image), Ok(LOAD_ADDR));
            let first: [u8; 2] = mem.read_obj(GuestAddress(LOAD_ADDR)).unwrap();
            assert_eq!(first, [0x66, 0xba], "mov dx, COM1 at the entry");
        }
    }

    #[test]
    fn rejects_what_is_not_a_pvh_elf() {
        let mem = mem();
        assert!(load_pvh_elf(&mem, b"MZ not an ELF").is_err());
        let mut image = hello_exit("hi\n");
        image.truncate(100); // the program headers are cut off
        assert!(load_pvh_elf(&mem, &image).is_err());
        // No PHYS32_ENTRY note: change the note's type.
        let mut image = hello_exit("hi\n");
        let note = 64 + 2 * 56;
        image[note + 8] = 17;
        assert!(load_pvh_elf(&mem, &image)
            .unwrap_err()
            .contains("no Xen PHYS32_ENTRY note"));
    }
}
