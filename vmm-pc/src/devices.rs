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
//!
//! With the split irqchip the irqfd (edge) lines go through our 8259s and
//! IO-APIC instead while the guest has an 8259 input unmasked (see
//! [`crate::irqchip`]).

use std::sync::{Arc, Mutex};

use vmm_clock::Clocks;
use vmm_core::vm::{Vm, VmError};
use vmm_devices::serial::SerialOutput;
use vmm_devices::{
    Duplicate, EventFdTrigger, LevelLine, Pit, Pm1Event, Rtc, SerialDevice, SerialEvents, I8042,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::io::{BusError, PcIo};
use crate::irqchip::{IrqLines, IsaLine, PIC_RANGES};
use crate::layout::irq;
use crate::machine::PitBackend;
use crate::model::DeviceModel;
pub use request::RequestLine;

pub mod build;
pub mod request;

/// Errors wiring the devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be made.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// A device could not go on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A device type the machine cannot build (not a registered fixed
    /// type, built twice, or missing what it hangs on).
    #[error("cannot build a '{0}' into this machine")]
    Unbuildable(String),
    /// A device the machine cannot do without was not built.
    #[error("the machine has no '{0}'")]
    Missing(&'static str),
    /// An interrupt line could not be connected.
    #[error("cannot connect the interrupt of {0}")]
    Irq(&'static str, #[source] VmError),
    /// A PCI function could not go on the bus (its slot taken).
    #[error("cannot put the {0} on the PCI bus")]
    Pci(&'static str, #[source] vmm_pci::PciError),
}

/// Tells the console, through an eventfd, that the guest emptied the
/// serial receive FIFO and more input fits.
#[derive(Debug)]
pub struct ConsoleEvents {
    ready: EventFd,
}

impl Duplicate for ConsoleEvents {
    fn duplicate(&self) -> std::io::Result<Self> {
        Ok(Self {
            ready: self.ready.try_clone()?,
        })
    }
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
pub type Com1 = SerialDevice<IsaLine, ConsoleEvents>;

/// The devices, and the eventfds the main loop watches for them.
#[derive(Debug)]
pub struct PcDevices {
    /// COM1, the console.
    pub com1: Arc<Mutex<Com1>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042<IsaLine, RequestLine>>>,
    /// Written when the guest resets through the i8042.
    pub reset_evt: EventFd,
    /// Written when the guest enters S5 through PM1 control.
    pub poweroff_evt: EventFd,
    /// Written when the guest enters S3 through PM1 control.
    pub suspend_evt: EventFd,
    /// Written when COM1's receive FIFO drains.
    pub console_ready_evt: EventFd,
    /// Our i8254, unless KVM's serves.
    pub pit: Option<Arc<Mutex<Pit<IsaLine>>>>,
    /// The RTC and CMOS.
    pub rtc: Arc<Mutex<Rtc<IsaLine>>>,
    /// ACPI PM1 status/enable, with the power button and the SCI.
    pub pm1_event: Arc<Mutex<Pm1Event>>,
    /// Written when the guest reports a panic through pvpanic.
    pub panic_evt: EventFd,
    /// Written when the watchdog expires, if the machine has one.
    pub watchdog_evt: Option<EventFd>,
    /// The PCI root bus.
    pub pci: Arc<Mutex<vmm_pci::PciRoot>>,
    /// Every device above as the device model holds it, by id, in the
    /// order built: what a reset, a save and a load go through.
    pub model: DeviceModel,
}

/// The ACPI SCI: GSI 9, level-triggered, through `KVM_IRQ_LINE` (or our
/// IO-APIC's pin 9 with the split irqchip).
#[derive(Debug)]
struct SciLine(IrqLines);

impl LevelLine for SciLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.0.set_level(irq::ACPI_SCI, high) {
            log::warn!("cannot set the ACPI SCI to {high}: {e}");
        }
    }
}

impl PcDevices {
    /// A machine reset: every device back to its power-on state, in the
    /// order built (the UART's registers and FIFO, the i8042 re-arming its
    /// reset line, the PIT's power-on counts, the RTC's interrupt enables
    /// (its time stays), PM1, the ports, the PCI bus and its functions).
    pub fn reset(&self) {
        self.model.reset();
    }

    /// Wakes PM1 from S3: WAK_STS and the cause's status bit.
    pub fn acpi_wake(&self, cause: vmm_devices::WakeCause) {
        self.pm1_event
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake(cause);
    }

    /// Whether the guest let the RTC alarm wake it (PM1_EN.RTC_EN).
    pub fn rtc_wake_enabled(&self) -> bool {
        self.pm1_event
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rtc_wake_enabled()
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
    /// An ib700 watchdog (`--device ib700`).
    pub ib700: bool,
    /// An i6300esb watchdog (`--device i6300esb`): `Some(slot)`, the slot
    /// `None` for the last free one.
    pub i6300esb: Option<Option<u8>>,
}

/// The interrupt lines the devices drive. [`create_devices`] makes them
/// eventfds registered as irqfds on the VM's irqchip (with the split
/// irqchip, lines that go through our models while the guest uses the
/// 8259s: [`IsaLine`]); a caller without KVM (the fuzz targets) can hand
/// in eventfds that nothing reads (`IsaLine::from`), and any [`LevelLine`]
/// for the SCI.
#[derive(Debug)]
pub struct DeviceLines {
    /// COM1's IRQ 4.
    pub com1: IsaLine,
    /// The i8042's keyboard IRQ 1.
    pub keyboard: IsaLine,
    /// The RTC's IRQ 8.
    pub rtc: IsaLine,
    /// Our PIT's IRQ 0: `Some` puts our i8254 on ports 0x40-0x43 and our
    /// port 0x61 beside it; `None` leaves those ports to KVM's PIT.
    pub pit: Option<IsaLine>,
    /// The ACPI SCI, GSI 9, level-triggered.
    pub sci: Box<dyn LevelLine>,
}

/// Creates the PC's devices, puts them on `io` and connects their
/// interrupts to `vm`'s irqchip through `irq`; timed devices run on
/// `clocks`. With KVM's PIT, ports 0x40-0x43 and 0x61 are left to KVM.
/// With the split irqchip ([`IrqLines::Split`]) the edge lines' irqfds go
/// on IO-APIC pins (and their edges through our models while the guest
/// uses the 8259s), and our IO-APIC goes on the MMIO bus and, with our
/// 8259 pair on their ports, into the device model.
pub fn create_devices(
    vm: &Vm,
    irq: &IrqLines,
    io: &mut PcIo,
    clocks: &Clocks,
    serial_out: SerialOutput,
    pc: PcShape,
) -> Result<PcDevices, DeviceError> {
    let line = |fd: &'static str, device: &'static str, gsi: u32| {
        let line = EventFdTrigger::new(eventfd(fd)?);
        vm.register_irqfd(line.event_fd(), irq.edge_gsi(gsi))
            .map_err(|e| DeviceError::Irq(device, e))?;
        // ISA IRQs are below 16.
        Ok::<_, DeviceError>(irq.isa_line(line, gsi as u8))
    };
    let lines = DeviceLines {
        com1: line("COM1", "COM1", irq::COM1)?,
        keyboard: line("keyboard", "i8042", irq::KEYBOARD)?,
        rtc: line("RTC", "MC146818 RTC", irq::RTC)?,
        pit: match pc.pit {
            PitBackend::Userspace => Some(line("PIT", "i8254 PIT", irq::PIT)?),
            PitBackend::Kvm => None,
        },
        sci: Box::new(SciLine(irq.clone())),
    };
    let mut devices = wire_devices(io, clocks, serial_out, pc, lines)?;
    if let IrqLines::Split(chips) = irq {
        io.add_mmio(
            "IO-APIC",
            vmm_devices::ioapic::IOAPIC_BASE,
            vmm_devices::ioapic::IOAPIC_SIZE,
            chips.ioapic.clone(),
        )?;
        devices.model.add("ioapic", chips.ioapic.clone());
        for (base, len) in PIC_RANGES {
            io.add_pio("i8259", base, len, chips.pic.clone())?;
        }
        devices.model.add("i8259", chips.pic.clone());
    }
    Ok(devices)
}

/// Creates the PC's devices on `lines` and puts them on `io`, without KVM:
/// the part of [`create_devices`] after the irqfds. The default machine's
/// fixed devices ([`build::fixed_devices`]) are built by type name from
/// the registry's builders ([`build::BUILDERS`]). Which PIT serves follows
/// `lines.pit`, not `pc.pit`.
pub fn wire_devices(
    io: &mut PcIo,
    clocks: &Clocks,
    serial_out: SerialOutput,
    pc: PcShape,
    lines: DeviceLines,
) -> Result<PcDevices, DeviceError> {
    let mut names = build::fixed_devices(lines.pit.is_some());
    if pc.ib700 {
        names.push("ib700");
    }
    if pc.i6300esb.is_some() {
        names.push("i6300esb");
    }
    let mut w = build::Wiring::new(io, clocks, serial_out, pc, lines);
    for name in names {
        w.build(name)?;
    }
    w.finish()
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
pub(crate) mod tests {
    use vmm_core::io::IoHandler;

    use crate::layout::port;

    use super::*;

    #[derive(Debug)]
    struct NoSci;

    impl LevelLine for NoSci {
        fn set_level(&self, _high: bool) {}
    }

    pub(crate) fn wired(our_pit: bool) -> (PcIo, PcDevices) {
        let line = || IsaLine::from(EventFdTrigger::nonblocking().unwrap());
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
            ib700: true,
            i6300esb: Some(None),
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
    fn the_i6300esb_answers_in_slot_31_its_bar_and_its_window() {
        let (io, devices) = wired(true);
        let mut id = [0u8; 4];
        lock_root(&devices).config_read(0, 31, 0, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x25ab_8086);
        // Both watchdogs share one expiry eventfd.
        assert!(devices.watchdog_evt.is_some());
        // ESB_LOCK through the window; the same byte in configuration space.
        io.mmio_write(crate::layout::WATCHDOG_WINDOW + 0x10, &[2]);
        let mut b = [0u8];
        lock_root(&devices).config_read(0, 31, 0, 0x68, &mut b);
        assert_eq!(b[0], 2);
        // The BAR decodes at its place: reload's timeout flag reads 0.
        let mut r = [0xffu8; 2];
        io.mmio_read(crate::pci::PCI_WATCHDOG_BAR + 0xc, &mut r);
        assert_eq!(r, [0, 0]);
        io.mmio_write(crate::layout::WATCHDOG_WINDOW + 0x10, &[0]);
    }

    /// The fuzzer's pc_bus oracle once took the ECAM for unmapped MMIO:
    /// what the PCI host and the i6300esb claim answers, the bytes just
    /// beside them read all ones, and so does the BAR while the guest has
    /// memory decoding off.
    #[test]
    fn mmio_past_the_ecam_the_window_and_a_disabled_bar_reads_all_ones() {
        use crate::pci::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_WATCHDOG_BAR};
        use vmm_devices::i6300esb::WINDOW_LEN;
        let (io, _devices) = wired(true);
        let read = |addr| {
            let mut b = [0u8; 4];
            io.mmio_read(addr, &mut b);
            b
        };
        // Slot 31's vendor and device IDs through the ECAM.
        assert_eq!(read(PCI_ECAM_START + (31 << 15)), [0x86, 0x80, 0xab, 0x25]);
        assert_eq!(read(PCI_ECAM_START - 4), [0xff; 4]);
        // The window starts where the ECAM ends.
        assert_eq!(
            PCI_ECAM_START + PCI_ECAM_SIZE,
            crate::layout::WATCHDOG_WINDOW
        );
        assert_ne!(read(crate::layout::WATCHDOG_WINDOW), [0xff; 4]);
        assert_eq!(read(crate::layout::WATCHDOG_WINDOW + WINDOW_LEN), [0xff; 4]);
        // Memory decoding off (the command register's bit 1): nothing there.
        io.mmio_write(PCI_ECAM_START + (31 << 15) + 4, &[0, 0]);
        assert_eq!(read(PCI_WATCHDOG_BAR), [0xff; 4]);
    }

    fn lock_root(devices: &PcDevices) -> std::sync::MutexGuard<'_, vmm_pci::PciRoot> {
        devices.pci.lock().unwrap()
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
    fn the_machines_devices_save_and_load_through_the_model() {
        let (io, a) = wired(true);
        // The guest programs a few devices.
        io.pio_write(port::COM1 + 7, &[0x5a]); // scratch
        io.pio_write(port::RTC, &[0x40]);
        io.pio_write(port::RTC + 1, &[0x99]); // a CMOS byte
        io.pio_write(port::PIT + 3, &[0x34]);
        io.pio_write(port::PIT, &[0x10]);
        io.pio_write(port::PIT, &[0x27]);
        io.pio_write(port::I8042_COMMAND, &[0x60]);
        io.pio_write(port::I8042_DATA, &[0x45]); // the CTR
        io.pio_write(port::POST, &[0x42]);
        io.pio_write(port::SYSTEM_CONTROL_B, &[0x01]);
        let saved = a.model.save().unwrap();
        assert_eq!(saved.len(), a.model.list().len());
        let text = serde_json::to_string(&saved).unwrap();

        let (io2, b) = wired(true);
        b.model
            .load(&serde_json::from_str::<Vec<crate::model::SavedEntry>>(&text).unwrap())
            .unwrap();
        assert_eq!(b.model.save().unwrap(), saved);
        assert_eq!(inb(&io2, port::COM1 + 7), 0x5a);
        io2.pio_write(port::RTC, &[0x40]);
        assert_eq!(inb(&io2, port::RTC + 1), 0x99);
        io2.pio_write(port::I8042_COMMAND, &[0x20]);
        assert_eq!(inb(&io2, port::I8042_DATA), 0x45);
        assert_eq!(inb(&io2, port::SYSTEM_CONTROL_B) & 0x03, 0x01);

        // A machine reset puts the guest-programmed registers back.
        b.reset();
        assert_eq!(inb(&io2, port::COM1 + 7), 0, "the UART is reset too");
        assert_eq!(inb(&io2, port::SYSTEM_CONTROL_B) & 0x03, 0);
        io2.pio_write(port::RTC, &[0x40]);
        assert_eq!(inb(&io2, port::RTC + 1), 0x99, "CMOS survives a reset");

        // A save of another shape (KVM's PIT: no pit, no port61) is
        // refused before any device changes; so is a corrupt device.
        let (_io3, c) = wired(false);
        let before = b.model.save().unwrap();
        let e = b.model.load(&c.model.save().unwrap()).unwrap_err();
        assert!(matches!(e, crate::model::ModelError::Shape(_)), "{e}");
        let mut bad = saved.clone();
        bad[0].saved.state["uart"]["in_buffer"] = serde_json::json!(vec![0u8; 65]);
        let e = b.model.load(&bad).unwrap_err();
        assert!(e.to_string().starts_with("device 'serial0'"), "{e}");
        assert_eq!(b.model.save().unwrap(), before);
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
