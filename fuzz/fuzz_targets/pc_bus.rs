//! The whole PC port bus (vmm-pc's `PcIo`) with every device wired as the
//! machine wires it (`vmm_pc::devices::wire_devices`), on eventfd lines
//! that no irqchip reads and a fake SCI, with fake time; no KVM. Guest
//! accesses go to the PC's ports or anywhere in the 64 KiB port space,
//! mixed with time passing, wall-clock steps, console input, the power
//! button, machine resets and MMIO (the PCI ECAM, the i6300esb's BAR and
//! WDAT window, or anywhere). Checks that ports and MMIO that nothing
//! claims (no fixed device, no BAR the guest has placed) read all ones,
//! and that the reset line fires at most once per machine reset.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_core::io::IoHandler;
use vmm_devices::i6300esb::WINDOW_LEN;
use vmm_devices::{EventFdTrigger, IB700_PORT, IB700_PORT_LEN};
use vmm_fuzz::{wall_time, Input, Level, Output, Sim};
use vmm_pc::devices::{wire_devices, DeviceLines, PcShape};
use vmm_pc::io::PcIo;
use vmm_pc::irqchip::IsaLine;
use vmm_pc::layout::WATCHDOG_WINDOW;
use vmm_pc::pci::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_WATCHDOG_BAR};
use vmm_pc::PitBackend;
use vmm_pci::PciRoot;

/// Every port a device answers, with the PIT's and port 0x61 last.
const PORTS: &[u16] = &[
    0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, // COM1
    0x60, 0x64, // i8042
    0x600, 0x601, 0x602, 0x603, 0x604, 0x605, // ACPI PM1a
    0x80, 0x505, 0x70, 0x71, // POST, pvpanic, RTC
    0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff, // PCI configuration
    0x40, 0x41, 0x42, 0x43, 0x61, // PIT, system control B
];
const PIT_PORTS: usize = 5;

fn line() -> IsaLine {
    IsaLine::from(EventFdTrigger::nonblocking().expect("eventfd"))
}

/// Whether `[start, start + len)` and `[base, base + size)` share a byte.
fn overlaps(start: u64, len: u64, base: u64, size: u64) -> bool {
    len > 0 && start < base.saturating_add(size) && base < start.saturating_add(len)
}

/// Whether a BAR the guest has placed on `root` decodes any of the `len`
/// bytes at `start` (memory, or ports when `memory` is false).
fn bar_claims(root: &PciRoot, memory: bool, start: u64, len: u64) -> bool {
    root.functions().any(|(_, f)| {
        f.config()
            .decoding_regions()
            .any(|r| r.kind.is_memory() == memory && overlaps(start, len, r.base, r.size))
    })
}

/// How often `fd` was written since the last call.
fn count(fd: &vmm_sys_util::eventfd::EventFd) -> u64 {
    fd.read().unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sim = Sim::new(wall_time(&mut input));
    let flags = input.u8();
    let our_pit = flags & 1 == 0;
    let shape = PcShape {
        memory: input.u64(),
        cpus: input.u32(),
        pit: if our_pit {
            PitBackend::Userspace
        } else {
            PitBackend::Kvm
        },
        // The ib700 on 0x441-0x443 too, in half the runs.
        ib700: flags & 2 != 0,
        // The i6300esb (its PCI function and window) in half the runs.
        i6300esb: (flags & 4 != 0).then_some(None),
    };
    let lines = DeviceLines {
        com1: line(),
        keyboard: line(),
        rtc: line(),
        pit: our_pit.then(line),
        sci: Box::new(Level::default()),
    };
    let mut io = PcIo::new();
    let output = if flags & 2 == 0 {
        Output::default()
    } else {
        Output::broken()
    };
    let devices = wire_devices(&mut io, &sim.clocks, Box::new(output), shape, lines)
        .expect("the PC's devices fit on an empty bus");
    let mut mapped = if our_pit {
        PORTS.to_vec()
    } else {
        PORTS[..PORTS.len() - PIT_PORTS].to_vec()
    };
    if shape.ib700 {
        mapped.extend(IB700_PORT..IB700_PORT + IB700_PORT_LEN);
    }
    let window = shape.i6300esb.is_some();
    let root = || devices.pci.lock().unwrap_or_else(|e| e.into_inner());
    let mut resets = 0;
    while !input.is_empty() {
        match input.u8() % 32 {
            0 => sim.run_for(i64::from(input.u32() >> (input.u8() % 32)), || {}),
            1 => sim.leap(input.i64() >> (input.u8() % 64)),
            2 => sim.set_wall(wall_time(&mut input)),
            3 => {
                let len = usize::from(input.u8() % 96);
                devices.com1.lock().unwrap().enqueue_input(input.bytes(len));
            }
            4 => devices.press_power_button(),
            5 => {
                devices.reset();
                resets = 0;
            }
            6 => sim.clocks.vm_stop(),
            7 => sim.clocks.vm_start(),
            8 => {
                let addr = match input.u8() % 4 {
                    0 => input.u64(),
                    1 => PCI_ECAM_START + u64::from(input.u32()) % PCI_ECAM_SIZE,
                    2 => WATCHDOG_WINDOW + u64::from(input.u8()),
                    _ => PCI_WATCHDOG_BAR + u64::from(input.u8()),
                };
                let mut data = [0u8; 8];
                let len = usize::from(input.u8() % 9);
                let n = len as u64;
                let claimed = overlaps(addr, n, PCI_ECAM_START, PCI_ECAM_SIZE)
                    || (window && overlaps(addr, n, WATCHDOG_WINDOW, WINDOW_LEN))
                    || bar_claims(&root(), true, addr, n);
                io.mmio_read(addr, &mut data[..len]);
                if !claimed {
                    assert!(
                        data[..len].iter().all(|&b| b == 0xff),
                        "unmapped MMIO at {addr:#x}"
                    );
                }
                let bytes = input.bytes(len);
                data[..bytes.len()].copy_from_slice(bytes);
                io.mmio_write(addr, &data[..len]);
            }
            op => {
                let shape = input.u8();
                let port = if op & 8 == 0 {
                    PORTS[usize::from(shape) % PORTS.len()]
                } else {
                    input.u16()
                };
                let len = match shape >> 5 {
                    0..=4 => 1,
                    5 => 2,
                    6 => 4,
                    _ => usize::from(input.u8() % 9),
                };
                let mut data = [0u8; 8];
                if op & 1 == 0 {
                    let bar = bar_claims(&root(), false, u64::from(port), len as u64);
                    io.pio_read(port, &mut data[..len]);
                    if !bar && !mapped.contains(&port) {
                        assert!(
                            data[..len].iter().all(|&b| b == 0xff),
                            "unmapped port {port:#x}"
                        );
                    }
                } else {
                    let bytes = input.bytes(len);
                    data[..bytes.len()].copy_from_slice(bytes);
                    io.pio_write(port, &data[..len]);
                }
            }
        }
        resets += count(&devices.reset_evt);
        assert!(
            resets <= 1,
            "i8042 reset line fired twice without a machine reset"
        );
    }
});
