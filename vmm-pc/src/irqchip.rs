//! Where the devices' interrupt lines go: KVM's irqchip, or, with the
//! split irqchip ([`IrqChipMode::Split`], QEMU's `kernel-irqchip=split`),
//! our IO-APIC and 8259 pair with only the local APICs in KVM.
//!
//! # Kernel mode
//!
//! Edge lines are irqfds on their GSIs, level lines `KVM_IRQ_LINE`; KVM's
//! GSI routing ([`crate::devices::pc_irq_routes`]) sends ISA IRQs to its
//! PICs and IO-APIC, IRQ 0 to IO-APIC pin 2.
//!
//! # Split mode
//!
//! GSIs 0-23 are the IO-APIC's pins. [`SplitIoApic`] keeps one KVM MSI
//! route per unmasked pin, in step with its redirection table (rewritten
//! on each guest write of the table, a reset and a load):
//!
//! - edge lines (COM1, the keyboard, the RTC, our PIT on pin 2) are
//!   [`IsaLine`]s: eventfds registered as irqfds on their pins' GSIs, so
//!   that KVM sends the pin's MSI itself, with no exit (an edge on a
//!   masked pin, which has no route, is lost, as on the 82093AA) — while
//!   the guest keeps the 8259s masked, which Linux with an IO-APIC does;
//! - level lines (the ACPI SCI, the PCI INTx lines 16-23) go to our
//!   IO-APIC ([`IrqLines::set_level`]), and those below 16 (the SCI's
//!   GSI 9) to the 8259s too, as KVM's own routing of a PC has them; the
//!   IO-APIC delivers with
//!   `KVM_SIGNAL_MSI`, sets Remote IRR, and on the EOI of the vector
//!   (`KVM_EXIT_IOAPIC_EOI`, [`IrqLines::eoi`]) delivers again while the
//!   line is still high. KVM exits on those EOIs because the routes of
//!   level-triggered pins say so (it scans the MSI routes of GSIs below
//!   the pin count given to `KVM_CAP_SPLIT_IRQCHIP`).
//!
//! The 8259 pair ([`SplitPic`]) is on its ports (0x20-0x21, 0xA0-0xA1,
//! the ELCR at 0x4D0-0x4D1), saved, loaded and reset with the machine:
//!
//! - **Its inputs.** While the guest has an input unmasked on it
//!   ([`pic_in_use`]: one on the master other than the cascade, or one on
//!   the slave with the cascade open; so also at power-on, before the
//!   guest programs it), every edge of every ISA edge line goes through
//!   the VMM instead of the irqfd: on the thread that raised it, the PIC
//!   sees the pulse on its IRQ and our IO-APIC on its pin (IRQ 0 on pin
//!   2), as both sit on the same ISA line of a PC. The choice is made at
//!   each edge from a flag the PIC updates after each guest write, reset
//!   and load ([`PicLink`]): no irqfd is ever unregistered, nothing polls
//!   the eventfds, and the common case (the PICs fully masked) stays on
//!   KVM's path. Taking all lines while any is unmasked keeps the 8259's
//!   IRR for its masked inputs too while the guest uses it (an edge on a
//!   masked input waits there for its unmask). The PIT is our model
//!   pulsing its line from the Virtual clock's timer, so IRQ 0 follows
//!   the same rule. An edge that comes while the PICs are fully masked
//!   never reaches their IRR (it went to KVM).
//! - **Its output.** The master's INT goes to the boot vCPU as ExtINT
//!   ([`ExtIntOutput`], [`PicExtInt`], vmm-core's `ExtIntSource`): a
//!   rise kicks vCPU 0 (`immediate_exit` and the kick signal, unless on
//!   vCPU 0's own thread), and vCPU 0, before each `KVM_RUN`, while INT
//!   is high, acknowledges the PIC and injects the vector with
//!   `KVM_INTERRUPT` if `ready_for_interrupt_injection` said so at the
//!   last exit, else sets `request_interrupt_window` and injects at the
//!   `KVM_EXIT_IRQ_WINDOW_OPEN` exit. KVM delivers it through the local
//!   APIC's LINT0 rules (LVT0 ExtINT and unmasked, or the APIC disabled;
//!   the boot CPU's LVT0 is ExtINT at reset, see [`crate::cpu::lapic`]).
//!   Other vCPUs never take it.
//!
//! What is left: a vector handed to `KVM_INTERRUPT` and not yet taken by
//! the guest lives in KVM only (`pending_external_vector`, which
//! `KVM_GET_VCPU_EVENTS` does not report and only the vCPU's creation
//! clears), so a snapshot or migration in that window loses it (the PIC
//! has it in service already: after the load that IRQ and every one of
//! lower priority stay blocked until an EOI the guest will never send, so
//! a guest on the 8259s may hang), and a system reset or snapshot load in
//! it leaves it to be delivered once the guest takes interrupts again. The
//! vCPU does not inject while a kick is pending (a pause kicks), which
//! makes that window one `KVM_RUN` entry wide (QEMU's split irqchip has
//! the same window: it hands the 8259's vector to `KVM_INTERRUPT` as we
//! do and does not save it either).

use std::sync::{Arc, Mutex, MutexGuard};

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;
use vmm_core::vm::{Vm, VmError};
use vmm_devices::ioapic::{IoApicState, MsiMessage, MsiSink, NUM_PINS};
use vmm_devices::{EventFdTrigger, IoApic};
use vmm_qom::{InvalidState, Stateful};

mod isa;
mod pic;

pub use isa::{IsaEdges, IsaLine, SplitIsa};
pub use pic::{pic_in_use, ExtIntOutput, Kick, PicExtInt, PicLink, SplitPic, PIC_RANGES};

pub use crate::machine::IrqChipMode;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The IO-APIC's deliveries as `KVM_SIGNAL_MSI`.
#[derive(Debug)]
pub struct KvmMsiSink(Vm);

impl MsiSink for KvmMsiSink {
    fn send_msi(&mut self, msg: MsiMessage) {
        match self.0.signal_msi(msg.address, msg.data) {
            Ok(true) => {}
            Ok(false) => log::debug!("IO-APIC MSI {msg:?} reached no CPU"),
            Err(e) => log::warn!("cannot send the IO-APIC's MSI {msg:?}: {e}"),
        }
    }
}

/// Where a table of pin messages goes: KVM's GSI routing (a seam, so that
/// the routes can be checked without KVM).
pub trait RouteSink: Send {
    /// Replaces the routing with `routes`, as (GSI, address, data).
    fn set_routes(&mut self, routes: &[(u32, u64, u32)]) -> Result<(), VmError>;
}

/// KVM's GSI routing.
#[derive(Debug)]
pub struct KvmRoutes(Vm);

impl RouteSink for KvmRoutes {
    fn set_routes(&mut self, routes: &[(u32, u64, u32)]) -> Result<(), VmError> {
        self.0.set_msi_routing(routes)
    }
}

/// Each pin's message, `None` for a masked pin.
type PinRoutes = [Option<MsiMessage>; NUM_PINS];

/// Our IO-APIC, with KVM's MSI routes for its pins kept in step with its
/// redirection table (see the module docs).
pub struct SplitIoApic<S: MsiSink = KvmMsiSink, R: RouteSink = KvmRoutes> {
    ioapic: IoApic<S>,
    routes: R,
    /// What KVM was last given (`None` before the first time).
    installed: Option<PinRoutes>,
}

impl<S: MsiSink, R: RouteSink> std::fmt::Debug for SplitIoApic<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitIoApic")
            .field("installed", &self.installed)
            .finish_non_exhaustive()
    }
}

impl<S: MsiSink, R: RouteSink> SplitIoApic<S, R> {
    /// An IO-APIC with `id`, every pin masked, its (empty) routes given
    /// to `routes`.
    pub fn new(sink: S, routes: R, id: u8) -> Result<Self, VmError> {
        let mut a = Self {
            ioapic: IoApic::with_id(sink, id),
            routes,
            installed: None,
        };
        a.try_sync()?;
        Ok(a)
    }

    /// The model.
    pub fn ioapic(&self) -> &IoApic<S> {
        &self.ioapic
    }

    /// The routes as the table says now.
    fn table_routes(&self) -> PinRoutes {
        std::array::from_fn(|pin| self.ioapic.route(pin))
    }

    /// Gives KVM the table's routes if they changed.
    fn try_sync(&mut self) -> Result<(), VmError> {
        let now = self.table_routes();
        if self.installed == Some(now) {
            return Ok(());
        }
        let list: Vec<(u32, u64, u32)> = now
            .iter()
            .enumerate()
            .filter_map(|(pin, m)| m.map(|m| (pin as u32, m.address, m.data)))
            .collect();
        self.routes.set_routes(&list)?;
        self.installed = Some(now);
        Ok(())
    }

    fn sync(&mut self) {
        if let Err(e) = self.try_sync() {
            log::warn!("cannot update the IO-APIC's MSI routes: {e}");
        }
    }

    /// Pin `pin`'s line is now `high`.
    pub fn set_irq(&mut self, pin: usize, high: bool) {
        self.ioapic.set_irq(pin, high);
    }

    /// A local APIC's EOI of `vector`.
    pub fn eoi(&mut self, vector: u8) {
        self.ioapic.eoi(vector);
    }
}

impl<S: MsiSink, R: RouteSink> MutDeviceMmio for SplitIoApic<S, R> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.ioapic.read(offset, data);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.ioapic.write(offset, data);
        self.sync();
    }
}

impl<S: MsiSink, R: RouteSink> Stateful for SplitIoApic<S, R> {
    const TYPE: &'static str = "ioapic";
    type State = IoApicState;

    fn state(&self) -> IoApicState {
        self.ioapic.state()
    }

    fn restore(&mut self, state: IoApicState) -> Result<(), InvalidState> {
        self.ioapic.restore(state)?;
        self.sync();
        Ok(())
    }

    fn reset(&mut self) {
        Stateful::reset(&mut self.ioapic);
        self.sync();
    }
}

/// The IO-APIC pin of ISA IRQ or GSI `gsi` in split mode: IRQ 0 (the PIT)
/// is pin 2, as the MADT's and MP table's override say; the rest are
/// their own pins.
pub fn split_pin(gsi: u32) -> u32 {
    if gsi == 0 {
        2
    } else {
        gsi
    }
}

/// The split irqchip's models: our IO-APIC and 8259 pair, and what the
/// PIC shares with the boot vCPU and the ISA lines.
#[derive(Debug, Clone)]
pub struct SplitChips {
    /// The IO-APIC, with its KVM routes.
    pub ioapic: Arc<Mutex<SplitIoApic>>,
    /// The 8259 pair.
    pub pic: Arc<Mutex<SplitPic>>,
    /// The PIC's output and masks, as the vCPU and the lines see them.
    pub link: Arc<PicLink>,
}

impl SplitChips {
    /// The PICs as the boot vCPU's external interrupt source.
    pub fn ext_int(&self) -> PicExtInt {
        PicExtInt {
            pic: Arc::clone(&self.pic),
            link: Arc::clone(&self.link),
        }
    }

    /// The ISA lines' way through the models.
    pub fn isa(&self) -> SplitIsa {
        SplitIsa {
            link: Arc::clone(&self.link),
            pic: Arc::clone(&self.pic),
            ioapic: Arc::clone(&self.ioapic),
        }
    }
}

/// How the devices raise their interrupt lines, in either mode. Cloned
/// into every device that drives a level line.
#[derive(Debug, Clone)]
pub enum IrqLines {
    /// KVM's irqchip.
    Kernel(Vm),
    /// Our IO-APIC and 8259s.
    Split(SplitChips),
}

impl IrqLines {
    /// ISA edge line `irq` on `fd`, which the caller registers as an irqfd
    /// on [`IrqLines::edge_gsi`]: with the split irqchip its edges go
    /// through our models instead while the guest uses the 8259s.
    pub fn isa_line(&self, fd: EventFdTrigger, irq: u8) -> IsaLine {
        match self {
            Self::Kernel(_) => IsaLine::from(fd),
            Self::Split(chips) => IsaLine::split(fd, irq, Arc::new(chips.isa())),
        }
    }

    /// The GSI an edge line's irqfd goes on for ISA IRQ or GSI `gsi`.
    pub fn edge_gsi(&self, gsi: u32) -> u32 {
        match self {
            Self::Kernel(_) => gsi,
            Self::Split(_) => split_pin(gsi),
        }
    }

    /// Level line `gsi` is now `high`.
    pub fn set_level(&self, gsi: u32, high: bool) -> Result<(), VmError> {
        match self {
            Self::Kernel(vm) => vm.set_irq_line(gsi, high),
            Self::Split(chips) => {
                isa::set_split_level(&chips.pic, &chips.ioapic, gsi, high);
                Ok(())
            }
        }
    }

    /// The EOI of level-triggered `vector` (split mode's exit).
    pub fn eoi(&self, vector: u8) {
        if let Self::Split(chips) = self {
            lock(&chips.ioapic).eoi(vector);
        }
    }
}

/// Creates `vm`'s interrupt controllers as `mode` says (before any vCPU):
/// KVM's irqchip with the PC's GSI routing, or only its local APICs, our
/// IO-APIC (ID 0, as KVM's) with no route yet and our 8259 pair.
pub fn create(vm: &Vm, mode: IrqChipMode) -> Result<IrqLines, VmError> {
    match mode {
        IrqChipMode::Kernel => {
            vm.create_irqchip()?;
            vm.set_irqchip_routing(&crate::devices::pc_irq_routes())?;
            Ok(IrqLines::Kernel(vm.clone()))
        }
        IrqChipMode::Split => {
            vm.create_split_irqchip(NUM_PINS as u32)?;
            let ioapic = SplitIoApic::new(KvmMsiSink(vm.clone()), KvmRoutes(vm.clone()), 0)?;
            let link = Arc::new(PicLink::default());
            Ok(IrqLines::Split(SplitChips {
                ioapic: Arc::new(Mutex::new(ioapic)),
                pic: Arc::new(Mutex::new(SplitPic::new(Arc::clone(&link)))),
                link,
            }))
        }
    }
}

#[cfg(test)]
mod tests;
