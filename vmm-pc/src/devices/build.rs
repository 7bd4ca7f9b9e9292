//! The default machine's fixed devices, built by type name (QEMU's
//! `qdev_new("isa-serial")` in its board code): each registered fixed type
//! ([`crate::device_types::TYPES`]) has a builder here that makes the
//! device, puts it on its ports, connects its lines and adds it to the
//! device model under a stable id.

use std::sync::{Arc, Mutex};

use vmm_clock::Clocks;
use vmm_devices::acpi_pm::{PM1_CNT_LEN, PM1_EVT_LEN};
use vmm_devices::i6300esb::WINDOW_LEN;
use vmm_devices::serial::SerialOutput;
use vmm_devices::{
    EventFdTrigger, I6300Esb, I6300EsbPci, Ib700, LevelLine, Pit, PitPort61, Pm1Control, Pm1Event,
    Port61, Port80, PvPanic, Rtc, SerialDevice, I8042, IB700_PORT, IB700_PORT_LEN, PIT_PORT_LEN,
    RTC_PORT_LEN,
};
use vmm_pci::PciDevice;
use vmm_sys_util::eventfd::EventFd;

use super::{
    clone_fd, eventfd, Com1, ConsoleEvents, DeviceError, DeviceLines, PcDevices, PcShape,
    RequestLine,
};
use crate::io::PcIo;
use crate::irqchip::IsaLine;
use crate::layout::{self, port};
use crate::model::{DeviceModel, PciHost};

/// Builds one device type into the machine.
pub type Builder = fn(&mut Wiring<'_>) -> Result<(), DeviceError>;

/// The builder of each fixed type, by registry name.
pub const BUILDERS: &[(&str, Builder)] = &[
    ("isa-serial", |w| w.serial()),
    ("i8042", |w| w.i8042()),
    ("acpi-pm1-evt", |w| w.pm1_event()),
    ("acpi-pm1-cnt", |w| w.pm1_control()),
    ("port80", |w| w.port80()),
    ("pvpanic", |w| w.pvpanic()),
    ("mc146818rtc", |w| w.rtc()),
    ("isa-pit", |w| w.pit()),
    ("port61", |w| w.port61()),
    ("pcie-host-bridge", |w| w.pci_host()),
    ("ib700", |w| w.ib700()),
    ("i6300esb", |w| w.i6300esb()),
];

/// The fixed devices the default PC adds, in order; with `our_pit` false
/// KVM's in-kernel PIT serves ports 0x40-0x43 and 0x61 instead of ours.
pub fn fixed_devices(our_pit: bool) -> Vec<&'static str> {
    let mut names = vec![
        "isa-serial",
        "i8042",
        "acpi-pm1-evt",
        "acpi-pm1-cnt",
        "port80",
        "pvpanic",
        "mc146818rtc",
    ];
    if our_pit {
        names.extend(["isa-pit", "port61"]);
    }
    names.push("pcie-host-bridge");
    names
}

/// The machine being wired: what the builders take (lines, the console's
/// output) and what they leave (devices, eventfds, the device model).
pub struct Wiring<'a> {
    io: &'a mut PcIo,
    clocks: &'a Clocks,
    shape: PcShape,
    serial_out: Option<SerialOutput>,
    com1_line: Option<IsaLine>,
    keyboard_line: Option<IsaLine>,
    rtc_line: Option<IsaLine>,
    pit_line: Option<IsaLine>,
    sci: Option<Box<dyn LevelLine>>,
    registry: vmm_qom::Registry,
    model: DeviceModel,
    com1: Option<Arc<Mutex<Com1>>>,
    console_ready_evt: Option<EventFd>,
    i8042: Option<Arc<Mutex<I8042<IsaLine, RequestLine>>>>,
    reset_evt: Option<EventFd>,
    poweroff_evt: Option<EventFd>,
    suspend_evt: Option<EventFd>,
    pm1_event: Option<Arc<Mutex<Pm1Event>>>,
    panic_evt: Option<EventFd>,
    rtc: Option<Arc<Mutex<Rtc<IsaLine>>>>,
    pit: Option<Arc<Mutex<Pit<IsaLine>>>>,
    pci: Option<Arc<Mutex<vmm_pci::PciRoot>>>,
    watchdog_evt: Option<EventFd>,
}

impl std::fmt::Debug for Wiring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Takes a one-time input of the wiring, or says which type lacked it.
fn take<T>(slot: &mut Option<T>, ty: &'static str) -> Result<T, DeviceError> {
    slot.take().ok_or(DeviceError::Unbuildable(ty.into()))
}

impl<'a> Wiring<'a> {
    /// A machine with no devices yet.
    pub fn new(
        io: &'a mut PcIo,
        clocks: &'a Clocks,
        serial_out: SerialOutput,
        shape: PcShape,
        lines: DeviceLines,
    ) -> Self {
        Self {
            io,
            clocks,
            shape,
            serial_out: Some(serial_out),
            com1_line: Some(lines.com1),
            keyboard_line: Some(lines.keyboard),
            rtc_line: Some(lines.rtc),
            pit_line: lines.pit,
            sci: Some(lines.sci),
            registry: crate::device_types::registry(),
            model: DeviceModel::default(),
            com1: None,
            console_ready_evt: None,
            i8042: None,
            reset_evt: None,
            poweroff_evt: None,
            suspend_evt: None,
            pm1_event: None,
            panic_evt: None,
            rtc: None,
            pit: None,
            pci: None,
            watchdog_evt: None,
        }
    }

    /// Builds the registered ISA or system type `name` (the fixed ones
    /// and the watchdogs of `--device`). A name the registry does not know, one with
    /// no builder here, and one built twice are refused.
    pub fn build(&mut self, name: &str) -> Result<(), DeviceError> {
        let known = self.registry.get(name).is_some();
        if self.model.list().iter().any(|(_, ty)| *ty == name) {
            return Err(DeviceError::Unbuildable(name.to_owned()));
        }
        let builder = BUILDERS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
        match builder {
            Some(build) if known => build(self),
            _ => Err(DeviceError::Unbuildable(name.to_owned())),
        }
    }

    /// The machine's devices, once every one it needs is built.
    pub fn finish(self) -> Result<PcDevices, DeviceError> {
        let need = |ty: &'static str| DeviceError::Missing(ty);
        Ok(PcDevices {
            com1: self.com1.ok_or(need("isa-serial"))?,
            console_ready_evt: self.console_ready_evt.ok_or(need("isa-serial"))?,
            i8042: self.i8042.ok_or(need("i8042"))?,
            reset_evt: self.reset_evt.ok_or(need("i8042"))?,
            pm1_event: self.pm1_event.ok_or(need("acpi-pm1-evt"))?,
            poweroff_evt: self.poweroff_evt.ok_or(need("acpi-pm1-cnt"))?,
            suspend_evt: self.suspend_evt.ok_or(need("acpi-pm1-cnt"))?,
            panic_evt: self.panic_evt.ok_or(need("pvpanic"))?,
            rtc: self.rtc.ok_or(need("mc146818rtc"))?,
            pit: self.pit,
            pci: self.pci.ok_or(need("pcie-host-bridge"))?,
            watchdog_evt: self.watchdog_evt,
            model: self.model,
        })
    }

    /// COM1 at 0x3f8, IRQ 4: the console.
    fn serial(&mut self) -> Result<(), DeviceError> {
        let irq = take(&mut self.com1_line, "isa-serial")?;
        let out = take(&mut self.serial_out, "isa-serial")?;
        let ready = eventfd("console")?;
        let events = ConsoleEvents {
            ready: clone_fd("console", &ready)?,
        };
        let com1 = Arc::new(Mutex::new(SerialDevice::with_events(irq, events, out)));
        self.io.add_pio("COM1", port::COM1, 8, com1.clone())?;
        self.model.add("serial0", com1.clone());
        self.com1 = Some(com1);
        self.console_ready_evt = Some(ready);
        Ok(())
    }

    /// The i8042 on two single ports around port 0x61, IRQ 1 and the reset
    /// line.
    fn i8042(&mut self) -> Result<(), DeviceError> {
        let irq = take(&mut self.keyboard_line, "i8042")?;
        let reset = eventfd("i8042 reset")?;
        let dev = Arc::new(Mutex::new(I8042::new(
            RequestLine::new(clone_fd("i8042 reset", &reset)?),
            irq,
        )));
        self.io
            .add_pio("i8042 data", port::I8042_DATA, 1, dev.clone())?;
        self.io
            .add_pio("i8042 command", port::I8042_COMMAND, 1, dev.clone())?;
        self.model.add("i8042", dev.clone());
        self.i8042 = Some(dev);
        self.reset_evt = Some(reset);
        Ok(())
    }

    /// ACPI PM1a status/enable, driving the SCI.
    fn pm1_event(&mut self) -> Result<(), DeviceError> {
        let sci = take(&mut self.sci, "acpi-pm1-evt")?;
        let dev = Arc::new(Mutex::new(Pm1Event::with_sci(sci)));
        self.io
            .add_pio("PM1a event", port::PM1A_EVT_BLK, PM1_EVT_LEN, dev.clone())?;
        self.model.add("pm1-evt", dev.clone());
        self.pm1_event = Some(dev);
        Ok(())
    }

    /// ACPI PM1a control: S5 fires the poweroff line, S3 the suspend line.
    fn pm1_control(&mut self) -> Result<(), DeviceError> {
        let poweroff = eventfd("ACPI poweroff")?;
        let suspend = eventfd("ACPI suspend")?;
        let dev = Pm1Control::new(RequestLine::new(clone_fd("ACPI poweroff", &poweroff)?))
            .with_suspend(RequestLine::new(clone_fd("ACPI suspend", &suspend)?));
        let dev = Arc::new(Mutex::new(dev));
        self.io
            .add_pio("PM1a control", port::PM1A_CNT_BLK, PM1_CNT_LEN, dev.clone())?;
        self.model.add("pm1-cnt", dev);
        self.poweroff_evt = Some(poweroff);
        self.suspend_evt = Some(suspend);
        Ok(())
    }

    /// The POST-code port.
    fn port80(&mut self) -> Result<(), DeviceError> {
        let dev = Arc::new(Mutex::new(Port80::new()));
        self.io.add_pio("POST", port::POST, 1, dev.clone())?;
        self.model.add("port80", dev);
        Ok(())
    }

    /// pvpanic (the DSDT's QEMU0001 device).
    fn pvpanic(&mut self) -> Result<(), DeviceError> {
        let panicked = eventfd("pvpanic")?;
        let dev = Arc::new(Mutex::new(PvPanic::new(EventFdTrigger::new(clone_fd(
            "pvpanic", &panicked,
        )?))));
        self.io.add_pio("pvpanic", port::PVPANIC, 1, dev.clone())?;
        self.model.add("pvpanic", dev);
        self.panic_evt = Some(panicked);
        Ok(())
    }

    /// The RTC and CMOS, with the memory and CPU bytes a PC BIOS fills in.
    fn rtc(&mut self) -> Result<(), DeviceError> {
        let irq = take(&mut self.rtc_line, "mc146818rtc")?;
        let rtc = Rtc::new(self.clocks, irq);
        let below_4g = self.shape.memory.min(layout::MMIO_HOLE_START);
        rtc.lock().unwrap_or_else(|e| e.into_inner()).set_pc_config(
            below_4g,
            self.shape.memory - below_4g,
            self.shape.cpus,
        );
        self.io
            .add_pio("MC146818 RTC", port::RTC, RTC_PORT_LEN, rtc.clone())?;
        self.model.add("rtc", rtc.clone());
        self.rtc = Some(rtc);
        Ok(())
    }

    /// Our i8254 on the Virtual clock, IRQ 0.
    fn pit(&mut self) -> Result<(), DeviceError> {
        let irq = take(&mut self.pit_line, "isa-pit")?;
        let pit = Pit::new(self.clocks, irq);
        self.io
            .add_pio("i8254 PIT", port::PIT, PIT_PORT_LEN, pit.clone())?;
        self.model.add("pit", pit.clone());
        self.pit = Some(pit);
        Ok(())
    }

    /// System control port B, gating our PIT's channel 2.
    fn port61(&mut self) -> Result<(), DeviceError> {
        let pit = self
            .pit
            .clone()
            .ok_or(DeviceError::Unbuildable("port61".into()))?;
        let dev = Arc::new(Mutex::new(Port61::with_pit(PitPort61(pit))));
        self.io
            .add_pio("system control B", port::SYSTEM_CONTROL_B, 1, dev.clone())?;
        self.model.add("port61", dev);
        Ok(())
    }

    /// The IB700 watchdog on 0x441-0x443, its expiry an eventfd for the
    /// main loop (which carries out the watchdog action).
    fn ib700(&mut self) -> Result<(), DeviceError> {
        let line = self.watchdog_line()?;
        let dev = Ib700::new(self.clocks, line);
        self.io
            .add_pio("ib700 watchdog", IB700_PORT, IB700_PORT_LEN, dev.clone())?;
        self.model.add("watchdog0", dev);
        Ok(())
    }

    /// The watchdogs' shared expiry eventfd (one action path for both).
    fn watchdog_line(&mut self) -> Result<EventFdTrigger, DeviceError> {
        if self.watchdog_evt.is_none() {
            self.watchdog_evt = Some(eventfd("watchdog")?);
        }
        let evt = self
            .watchdog_evt
            .as_ref()
            .ok_or(DeviceError::Unbuildable("watchdog".into()))?;
        Ok(EventFdTrigger::new(clone_fd("watchdog", evt)?))
    }

    /// The 6300ESB watchdog: a function on the root bus (in the slot asked
    /// for, else the last free one) with its BAR at
    /// [`crate::pci::PCI_WATCHDOG_BAR`], and its fixed window at
    /// [`layout::WATCHDOG_WINDOW`] for the ACPI WDAT.
    fn i6300esb(&mut self) -> Result<(), DeviceError> {
        let line = self.watchdog_line()?;
        let chip = I6300Esb::new(self.clocks, line);
        let pci = self
            .pci
            .clone()
            .ok_or(DeviceError::Unbuildable("i6300esb".into()))?;
        let mut function = I6300EsbPci::new(chip.clone());
        function
            .config_mut()
            .set_bar_base(0, crate::pci::PCI_WATCHDOG_BAR);
        function.config_mut().set_reset_state();
        {
            let mut root = pci.lock().unwrap_or_else(|e| e.into_inner());
            let slot = match self.shape.i6300esb.flatten() {
                Some(slot) => Some(slot),
                None => (1..vmm_pci::bus::SLOTS as u8)
                    .rev()
                    .find(|s| root.function_mut(*s).is_none()),
            };
            root.add(slot, Box::new(function))
                .map_err(|e| DeviceError::Pci("i6300esb", e))?;
        }
        self.io.add_mmio(
            "i6300esb WDAT window",
            layout::WATCHDOG_WINDOW,
            WINDOW_LEN,
            chip.clone(),
        )?;
        let id = if self.shape.ib700 {
            "watchdog1"
        } else {
            "watchdog0"
        };
        self.model.add(id, chip);
        Ok(())
    }

    /// The PCI root bus and its host bridge.
    fn pci_host(&mut self) -> Result<(), DeviceError> {
        let pci = crate::pci::create_pci(self.io)?;
        self.model
            .add("pci.0", Arc::new(Mutex::new(PciHost(pci.clone()))));
        self.pci = Some(pci);
        Ok(())
    }
}
