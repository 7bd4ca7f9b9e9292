//! The ISA edge lines (COM1, the keyboard, the RTC, our PIT): an irqfd's
//! eventfd, or, with the split irqchip while the guest uses the 8259s,
//! our PIC and IO-APIC models, chosen at each edge (see the parent
//! module's docs).

use std::sync::{Arc, Mutex};

use vmm_devices::ioapic::MsiSink;
use vmm_devices::irq::Trigger;
use vmm_devices::{Duplicate, EventFdTrigger};

use super::pic::{PicLink, SplitPic};
use super::{lock, split_pin, KvmMsiSink, KvmRoutes, RouteSink, SplitIoApic};

/// Where an ISA line's edges go when not to its irqfd (a seam for tests).
pub trait IsaEdges: Send + Sync + std::fmt::Debug {
    /// Whether the edges go through the VMM now (the guest uses the PICs).
    fn through_vmm(&self) -> bool;
    /// One edge (a pulse) on ISA line `irq`, to the PIC and the IO-APIC.
    fn pulse(&self, irq: u8);
}

/// The split irqchip's models, as an ISA line's edges see them.
pub struct SplitIsa<S: MsiSink = KvmMsiSink, R: RouteSink = KvmRoutes> {
    pub(super) link: Arc<PicLink>,
    pub(super) pic: Arc<Mutex<SplitPic>>,
    pub(super) ioapic: Arc<Mutex<SplitIoApic<S, R>>>,
}

impl<S: MsiSink, R: RouteSink> std::fmt::Debug for SplitIsa<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitIsa")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl<S: MsiSink, R: RouteSink> IsaEdges for SplitIsa<S, R> {
    fn through_vmm(&self) -> bool {
        self.link.in_use()
    }

    /// The PIC sees IRQ `irq`, the IO-APIC its pin (IRQ 0 on pin 2), each
    /// rise then fall, one model at a time (no lock held across both).
    fn pulse(&self, irq: u8) {
        {
            let mut pic = lock(&self.pic);
            pic.set_irq(irq, true);
            pic.set_irq(irq, false);
        }
        let pin = split_pin(u32::from(irq)) as usize;
        let mut ioapic = lock(&self.ioapic);
        ioapic.set_irq(pin, true);
        ioapic.set_irq(pin, false);
    }
}

/// Level line `gsi` on the split irqchip is now `high`: GSIs 0-15 (the ISA
/// IRQs; the ACPI SCI is 9) reach the 8259s as well, as in KVM's own
/// routing of a PC (GSI 2 excepted: the cascade), and every line reaches
/// its IO-APIC pin. One model at a time, no lock held across both.
pub(super) fn set_split_level<S: MsiSink, R: RouteSink>(
    pic: &Mutex<SplitPic>,
    ioapic: &Mutex<SplitIoApic<S, R>>,
    gsi: u32,
    high: bool,
) {
    if let Ok(irq @ (0..=1 | 3..=15)) = u8::try_from(gsi) {
        lock(pic).set_irq(irq, high);
    }
    lock(ioapic).set_irq(split_pin(gsi) as usize, high);
}

/// An edge-triggered ISA interrupt line: each [`Trigger::trigger`] is one
/// edge, on the eventfd KVM has as an irqfd, or, while
/// [`IsaEdges::through_vmm`] says so, on our models.
#[derive(Debug)]
pub struct IsaLine {
    fd: EventFdTrigger,
    vmm: Option<(u8, Arc<dyn IsaEdges>)>,
}

impl IsaLine {
    /// Line `irq` on `fd`'s irqfd, or through `edges` when it says so.
    pub fn split(fd: EventFdTrigger, irq: u8, edges: Arc<dyn IsaEdges>) -> Self {
        Self {
            fd,
            vmm: Some((irq, edges)),
        }
    }

    /// The eventfd.
    pub fn event_fd(&self) -> &EventFdTrigger {
        &self.fd
    }
}

/// A line that is only its eventfd (KVM's irqchip, or no KVM at all).
impl From<EventFdTrigger> for IsaLine {
    fn from(fd: EventFdTrigger) -> Self {
        Self { fd, vmm: None }
    }
}

impl Duplicate for IsaLine {
    fn duplicate(&self) -> std::io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            vmm: self.vmm.clone(),
        })
    }
}

impl Trigger for IsaLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        match &self.vmm {
            Some((irq, edges)) if edges.through_vmm() => {
                edges.pulse(*irq);
                Ok(())
            }
            _ => self.fd.trigger(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct Edges {
        vmm: AtomicBool,
        pulses: Mutex<Vec<u8>>,
    }

    impl IsaEdges for Edges {
        fn through_vmm(&self) -> bool {
            self.vmm.load(Ordering::SeqCst)
        }
        fn pulse(&self, irq: u8) {
            lock(&self.pulses).push(irq);
        }
    }

    #[test]
    fn each_edge_goes_where_the_pics_masks_say_at_that_moment() {
        let edges = Arc::new(Edges::default());
        let line = IsaLine::split(EventFdTrigger::nonblocking().unwrap(), 4, edges.clone());
        line.trigger().unwrap();
        assert_eq!(line.event_fd().event_fd().read().unwrap(), 1, "the irqfd");
        assert!(lock(&edges.pulses).is_empty());
        edges.vmm.store(true, Ordering::SeqCst);
        line.trigger().unwrap();
        line.trigger().unwrap();
        assert_eq!(*lock(&edges.pulses), [4, 4]);
        assert!(line.event_fd().event_fd().read().is_err(), "nothing to KVM");
        edges.vmm.store(false, Ordering::SeqCst);
        line.trigger().unwrap();
        assert_eq!(line.event_fd().event_fd().read().unwrap(), 1);
    }

    #[test]
    fn a_plain_line_is_its_eventfd() {
        let line = IsaLine::from(EventFdTrigger::nonblocking().unwrap());
        line.trigger().unwrap();
        assert_eq!(line.event_fd().event_fd().read().unwrap(), 1);
    }
}
