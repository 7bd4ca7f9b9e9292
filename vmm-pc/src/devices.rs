//! The wiring file: which device sits on which port and interrupt line.
//!
//! | device | ports | GSI | notes |
//! |---|---|---|---|
//! | COM1 16550 | 0x3f8-0x3ff | 4 | irqfd (edge) |
//! | i8042 | 0x60, 0x64 | 1 | 0xFE on 0x64 pulses the reset line |
//! | ACPI PM1a event | 0x600-0x603 | SCI 9, level, `KVM_IRQ_LINE` | status/enable, the power button |
//! | ACPI PM1a control | 0x604-0x605 | | SLP_EN with S5 = poweroff |
//! | POST port | 0x80 | | writes ignored, reads 0xff |
//! | pvpanic | 0x505 | | the guest's panic report (ACPI `QEMU0001`) |
//! | system control B | 0x61 | | ours, gating PIT channel 2; KVM's with its PIT |
//! | MC146818 RTC + CMOS | 0x70-0x71 | 8 | Host-clock timers, irqfd (edge) |
//! | i8254 PIT | 0x40-0x43 | 0 → IO-APIC pin 2 | ours on the Virtual clock, irqfd (edge); or KVM's |
//! | PCI root bus | 0xcf8-0xcff, ECAM at 0xe000_0000 | INTx: 16-23 | the host bridge; BARs in 0xc000_0000-0xdfff_ffff (see [`crate::pci`]) |

use std::sync::{Arc, Mutex};

use vmm_clock::Clocks;
use vmm_core::vm::{Vm, VmError};
use vmm_devices::acpi_pm::{PM1_CNT_LEN, PM1_EVT_LEN};
use vmm_devices::serial::SerialOutput;
use vmm_devices::PvPanic;
use vmm_devices::{
    EventFdTrigger, LevelLine, Pit, PitPort61, Pm1Control, Pm1Event, Port61, Port80, Rtc,
    SerialDevice, SerialEvents, I8042, PIT_PORT_LEN, RTC_PORT_LEN,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::io::{BusError, PcIo};
use crate::layout::{self, irq, port};
use crate::machine::PitBackend;

/// Errors wiring the devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be made.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// A device could not go on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An interrupt line could not be connected.
    #[error("cannot connect the interrupt of {0}")]
    Irq(&'static str, #[source] VmError),
}

/// Tells the console, through an eventfd, that the guest emptied the
/// serial receive FIFO and more input fits.
#[derive(Debug)]
pub struct ConsoleEvents {
    ready: EventFd,
}

impl SerialEvents for ConsoleEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.ready.write(1) {
            log::debug!("cannot signal console readiness: {e}");
        }
    }
}

/// COM1 as the machine holds it.
pub type Com1 = SerialDevice<EventFdTrigger, ConsoleEvents>;

/// The devices, and the eventfds the main loop watches for them.
#[derive(Debug)]
pub struct PcDevices {
    /// COM1, the console.
    pub com1: Arc<Mutex<Com1>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// Written when the guest resets through the i8042.
    pub reset_evt: EventFd,
    /// Written when the guest enters S5 through PM1 control.
    pub poweroff_evt: EventFd,
    /// Written when COM1's receive FIFO drains.
    pub console_ready_evt: EventFd,
    /// Our i8254, unless KVM's serves.
    pub pit: Option<Arc<Mutex<Pit<EventFdTrigger>>>>,
    /// The RTC and CMOS.
    pub rtc: Arc<Mutex<Rtc<EventFdTrigger>>>,
    /// ACPI PM1 status/enable, with the power button and the SCI.
    pub pm1_event: Arc<Mutex<Pm1Event>>,
    /// Written when the guest reports a panic through pvpanic.
    pub panic_evt: EventFd,
    /// The PCI root bus.
    pub pci: Arc<Mutex<vmm_pci::PciRoot>>,
}

/// The ACPI SCI: GSI 9, level-triggered, through `KVM_IRQ_LINE`.
#[derive(Debug)]
struct SciLine(Vm);

impl LevelLine for SciLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.0.set_irq_line(irq::ACPI_SCI, high) {
            log::warn!("cannot set the ACPI SCI to {high}: {e}");
        }
    }
}

impl PcDevices {
    /// A machine reset: the devices that hold reset state go back to it
    /// (the i8042 re-arms its reset line; the PIT reloads its power-on
    /// counts; the RTC drops its interrupt enables but keeps the time).
    pub fn reset(&self) {
        self.i8042.lock().unwrap_or_else(|e| e.into_inner()).reset();
        if let Some(pit) = &self.pit {
            pit.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        self.rtc.lock().unwrap_or_else(|e| e.into_inner()).reset();
        self.pm1_event
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.pci.lock().unwrap_or_else(|e| e.into_inner()).reset();
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn press_power_button(&self) {
        self.pm1_event
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_power_button();
    }
}

fn eventfd(what: &'static str) -> Result<EventFd, DeviceError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| DeviceError::EventFd(what, e))
}

fn clone_fd(what: &'static str, fd: &EventFd) -> Result<EventFd, DeviceError> {
    fd.try_clone().map_err(|e| DeviceError::EventFd(what, e))
}

/// What the devices need to know of the machine.
#[derive(Debug, Clone, Copy)]
pub struct PcShape {
    /// Guest RAM in bytes (for the CMOS memory bytes).
    pub memory: u64,
    /// vCPUs (for the CMOS CPU count).
    pub cpus: u32,
    /// Which PIT.
    pub pit: PitBackend,
}

/// The interrupt lines the devices drive. [`create_devices`] makes them
/// eventfds registered as irqfds on the VM's irqchip; a caller without KVM
/// (the fuzz targets) can hand in eventfds that nothing reads, and any
/// [`LevelLine`] for the SCI.
#[derive(Debug)]
pub struct DeviceLines {
    /// COM1's IRQ 4.
    pub com1: EventFdTrigger,
    /// The i8042's keyboard IRQ 1.
    pub keyboard: EventFdTrigger,
    /// The RTC's IRQ 8.
    pub rtc: EventFdTrigger,
    /// Our PIT's IRQ 0: `Some` puts our i8254 on ports 0x40-0x43 and our
    /// port 0x61 beside it; `None` leaves those ports to KVM's PIT.
    pub pit: Option<EventFdTrigger>,
    /// The ACPI SCI, GSI 9, level-triggered.
    pub sci: Box<dyn LevelLine>,
}

/// Creates the PC's devices, puts them on `io` and connects their
/// interrupts to `vm`'s irqchip; timed devices run on `clocks`. With KVM's
/// PIT, ports 0x40-0x43 and 0x61 are left to KVM.
pub fn create_devices(
    vm: &Vm,
    io: &mut PcIo,
    clocks: &Clocks,
    serial_out: SerialOutput,
    pc: PcShape,
) -> Result<PcDevices, DeviceError> {
    let line = |fd: &'static str, device: &'static str, gsi: u32| {
        let line = EventFdTrigger::new(eventfd(fd)?);
        vm.register_irqfd(line.event_fd(), gsi)
            .map_err(|e| DeviceError::Irq(device, e))?;
        Ok::<_, DeviceError>(line)
    };
    let lines = DeviceLines {
        com1: line("COM1", "COM1", irq::COM1)?,
        keyboard: line("keyboard", "i8042", irq::KEYBOARD)?,
        rtc: line("RTC", "MC146818 RTC", irq::RTC)?,
        pit: match pc.pit {
            PitBackend::Userspace => Some(line("PIT", "i8254 PIT", irq::PIT)?),
            PitBackend::Kvm => None,
        },
        sci: Box::new(SciLine(vm.clone())),
    };
    wire_devices(io, clocks, serial_out, pc, lines)
}

/// Creates the PC's devices on `lines` and puts them on `io`, without KVM:
/// the part of [`create_devices`] after the irqfds. Which PIT serves
/// follows `lines.pit`, not `pc.pit`.
pub fn wire_devices(
    io: &mut PcIo,
    clocks: &Clocks,
    serial_out: SerialOutput,
    pc: PcShape,
    lines: DeviceLines,
) -> Result<PcDevices, DeviceError> {
    // COM1.
    let console_ready_evt = eventfd("console")?;
    let events = ConsoleEvents {
        ready: clone_fd("console", &console_ready_evt)?,
    };
    let com1 = Arc::new(Mutex::new(SerialDevice::with_events(
        lines.com1, events, serial_out,
    )));
    io.add_pio("COM1", port::COM1, 8, com1.clone())?;

    // i8042: two single ports around port 0x61.
    let reset_evt = eventfd("i8042 reset")?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        EventFdTrigger::new(clone_fd("i8042 reset", &reset_evt)?),
        lines.keyboard,
    )));
    io.add_pio("i8042 data", port::I8042_DATA, 1, i8042.clone())?;
    io.add_pio("i8042 command", port::I8042_COMMAND, 1, i8042.clone())?;

    // ACPI PM1a.
    let poweroff_evt = eventfd("ACPI poweroff")?;
    let pm1_event = Arc::new(Mutex::new(Pm1Event::with_sci(lines.sci)));
    io.add_pio(
        "PM1a event",
        port::PM1A_EVT_BLK,
        PM1_EVT_LEN,
        pm1_event.clone(),
    )?;
    io.add_pio(
        "PM1a control",
        port::PM1A_CNT_BLK,
        PM1_CNT_LEN,
        Arc::new(Mutex::new(Pm1Control::new(EventFdTrigger::new(clone_fd(
            "ACPI poweroff",
            &poweroff_evt,
        )?)))),
    )?;

    io.add_pio("POST", port::POST, 1, Arc::new(Mutex::new(Port80::new())))?;

    // pvpanic (the DSDT's QEMU0001 device).
    let panic_evt = eventfd("pvpanic")?;
    io.add_pio(
        "pvpanic",
        port::PVPANIC,
        1,
        Arc::new(Mutex::new(PvPanic::new(EventFdTrigger::new(clone_fd(
            "pvpanic", &panic_evt,
        )?)))),
    )?;

    // RTC and CMOS, with the memory and CPU bytes a PC BIOS fills in.
    let rtc = Rtc::new(clocks, lines.rtc);
    let below_4g = pc.memory.min(layout::MMIO_HOLE_START);
    rtc.lock().unwrap_or_else(|e| e.into_inner()).set_pc_config(
        below_4g,
        pc.memory - below_4g,
        pc.cpus,
    );
    io.add_pio("MC146818 RTC", port::RTC, RTC_PORT_LEN, rtc.clone())?;
    let pit = match lines.pit {
        Some(pit_irq) => {
            let pit = Pit::new(clocks, pit_irq);
            io.add_pio("i8254 PIT", port::PIT, PIT_PORT_LEN, pit.clone())?;
            io.add_pio(
                "system control B",
                port::SYSTEM_CONTROL_B,
                1,
                Arc::new(Mutex::new(Port61::with_pit(PitPort61(pit.clone())))),
            )?;
            Some(pit)
        }
        None => None,
    };
    let pci = crate::pci::create_pci(io)?;

    Ok(PcDevices {
        com1,
        i8042,
        reset_evt,
        poweroff_evt,
        console_ready_evt,
        pit,
        rtc,
        pm1_event,
        panic_evt,
        pci,
    })
}

/// The in-kernel irqchip ids of `KVM_SET_GSI_ROUTING`.
const PIC_MASTER: u32 = 0;
const PIC_SLAVE: u32 = 1;
const IOAPIC: u32 = 2;
/// IO-APIC input pins.
pub const IOAPIC_PINS: u32 = 24;

/// The PC's GSI routing, as (GSI, irqchip, pin): ISA IRQs 0-15 reach the
/// 8259 pair and the IO-APIC; IRQ 0 (the PIT) reaches IO-APIC pin 2, as the
/// MADT's and MP table's interrupt override say; IRQ 2 is the PICs'
/// cascade and goes nowhere else; GSIs 16-23 reach the IO-APIC only.
pub fn pc_irq_routes() -> Vec<(u32, u32, u32)> {
    let mut routes = Vec::new();
    for gsi in 0..16 {
        if gsi == 2 {
            continue;
        }
        if gsi < 8 {
            routes.push((gsi, PIC_MASTER, gsi));
        } else {
            routes.push((gsi, PIC_SLAVE, gsi - 8));
        }
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => routes.push((0, IOAPIC, 2)),
            2 => {}
            _ => routes.push((gsi, IOAPIC, gsi)),
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use vmm_core::io::IoHandler;

    use super::*;

    #[derive(Debug)]
    struct NoSci;

    impl LevelLine for NoSci {
        fn set_level(&self, _high: bool) {}
    }

    fn wired(our_pit: bool) -> (PcIo, PcDevices) {
        let line = || EventFdTrigger::nonblocking().unwrap();
        let lines = DeviceLines {
            com1: line(),
            keyboard: line(),
            rtc: line(),
            pit: our_pit.then(line),
            sci: Box::new(NoSci),
        };
        let shape = PcShape {
            memory: 512 << 20,
            cpus: 2,
            pit: PitBackend::Kvm,
        };
        let mut io = PcIo::new();
        let devices = wire_devices(
            &mut io,
            &Clocks::host(),
            Box::new(std::io::sink()),
            shape,
            lines,
        )
        .unwrap();
        (io, devices)
    }

    fn inb(io: &PcIo, port: u16) -> u8 {
        let mut b = [0u8];
        io.pio_read(port, &mut b);
        b[0]
    }

    #[test]
    fn wire_devices_puts_every_device_on_the_bus_without_kvm() {
        let (io, devices) = wired(true);
        assert_eq!(
            inb(&io, port::COM1 + 5) & 0x60,
            0x60,
            "COM1's LSR: THR empty"
        );
        io.pio_write(port::RTC, &[0x0A]);
        assert_eq!(inb(&io, port::RTC + 1), 0x26, "the RTC's register A");
        assert_eq!(
            inb(&io, port::PIT + 3),
            0,
            "our PIT: its control port reads 0"
        );
        assert_ne!(inb(&io, port::SYSTEM_CONTROL_B), 0xff, "our port 0x61");
        assert_eq!(inb(&io, port::PVPANIC), 0x03);
        io.pio_write(port::I8042_COMMAND, &[0xFE]);
        assert_eq!(devices.reset_evt.read().unwrap(), 1);
    }

    #[test]
    fn without_a_pit_line_the_pit_ports_stay_unmapped() {
        // `lines.pit`, not `PcShape::pit`, decides (the shape says KVM in
        // both tests).
        let (io, _devices) = wired(false);
        assert_eq!(inb(&io, port::PIT + 3), 0xff);
        assert_eq!(inb(&io, port::SYSTEM_CONTROL_B), 0xff);
    }

    #[test]
    fn irq0_goes_to_ioapic_pin_2_and_irq2_is_the_cascade() {
        let r = pc_irq_routes();
        assert!(r.contains(&(0, IOAPIC, 2)));
        assert!(r.contains(&(0, PIC_MASTER, 0)));
        assert!(!r.iter().any(|e| e.0 == 2));
        assert!(!r.iter().any(|e| e.1 == IOAPIC && e.2 == 0));
        assert!(r.contains(&(4, IOAPIC, 4)));
        assert!(r.contains(&(4, PIC_MASTER, 4)));
        assert!(r.contains(&(9, PIC_SLAVE, 1)));
        assert!(r.contains(&(23, IOAPIC, 23)));
        // 15 ISA lines on the PICs + 23 IO-APIC pins (all but pin 0's GSI 2).
        assert_eq!(r.len(), 15 + 23);
    }
}
