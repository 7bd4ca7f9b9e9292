//! The split irqchip's 8259 pair: on its ports, its INT output to the
//! boot vCPU as ExtINT, and the flag that sends the ISA lines through the
//! VMM while the guest uses it (see the parent module's docs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vmm_core::vcpu::{ExtIntSource, VcpuKick};
use vmm_devices::pic::{PicOutput, PicState};
use vmm_devices::Pic;
use vmm_qom::{InvalidState, Stateful};

use super::lock;

/// Gets the boot vCPU's attention (a seam: [`VcpuKick`] on KVM).
pub trait Kick: Send + Sync + std::fmt::Debug {
    /// Makes the vCPU look at the PIC's output before it runs the guest
    /// again.
    fn kick(&self);
}

impl Kick for VcpuKick {
    fn kick(&self) {
        VcpuKick::kick(self);
    }
}

/// What the PIC, the boot vCPU and the ISA lines share.
#[derive(Debug, Default)]
pub struct PicLink {
    /// The master's INT output.
    intr: AtomicBool,
    /// The guest has an input unmasked ([`pic_in_use`]): the ISA edge
    /// lines go through the VMM.
    in_use: AtomicBool,
    /// The boot vCPU's kick, from when it runs.
    kick: OnceLock<Box<dyn Kick>>,
}

impl PicLink {
    /// Whether the guest has an input of the 8259s unmasked.
    pub fn in_use(&self) -> bool {
        self.in_use.load(Ordering::Acquire)
    }

    /// Whether the INT output is high.
    pub fn intr(&self) -> bool {
        self.intr.load(Ordering::Acquire)
    }

    /// Gives the boot vCPU's kick (once; a second one is ignored).
    pub fn set_kick(&self, kick: Box<dyn Kick>) {
        if self.kick.set(kick).is_err() {
            log::debug!("the PIC's vCPU kick was already set");
        }
    }
}

/// Whether the guest uses the 8259s: an input other than the cascade
/// unmasked on the master, or one on the slave with the cascade unmasked.
/// At power-on (every IMR bit clear) they are in use; Linux with an
/// IO-APIC masks them all.
pub fn pic_in_use(state: &PicState) -> bool {
    let cascade = 1u8 << 2;
    let master = !state.master.imr & !cascade;
    let slave = if state.master.imr & cascade == 0 {
        !state.slave.imr
    } else {
        0
    };
    master != 0 || slave != 0
}

/// The PIC's INT output: kept in the link, and a rise kicks the boot vCPU
/// (from whichever thread raised it), which acknowledges the PIC and
/// injects the vector on its own thread.
#[derive(Debug)]
pub struct ExtIntOutput(Arc<PicLink>);

impl PicOutput for ExtIntOutput {
    fn set_intr(&mut self, high: bool) {
        self.0.intr.store(high, Ordering::Release);
        if high {
            if let Some(kick) = self.0.kick.get() {
                kick.kick();
            }
        }
    }
}

/// Our 8259 pair and ELCR on the port bus (which gives offsets from each
/// range's base); after every change the link's [`PicLink::in_use`].
#[derive(Debug)]
pub struct SplitPic {
    pic: Pic<ExtIntOutput>,
    link: Arc<PicLink>,
}

impl SplitPic {
    /// Both chips at power-on, their output on `link`.
    pub fn new(link: Arc<PicLink>) -> Self {
        let pic = Pic::new(ExtIntOutput(Arc::clone(&link)));
        let mut p = Self { pic, link };
        p.note_masks();
        p
    }

    fn note_masks(&mut self) {
        let in_use = pic_in_use(&self.pic.state());
        self.link.in_use.store(in_use, Ordering::Release);
    }

    /// ISA line `irq` (0-15) is now `high`.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        self.pic.set_irq(irq, high);
    }

    /// The CPU's interrupt acknowledge: the vector.
    pub fn acknowledge(&mut self) -> u8 {
        self.pic.acknowledge()
    }
}

impl MutDevicePio for SplitPic {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.pic.read(base.0.wrapping_add(offset), data);
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.pic.write(base.0.wrapping_add(offset), data);
        self.note_masks();
    }
}

impl Stateful for SplitPic {
    const TYPE: &'static str = "i8259";
    type State = PicState;

    fn state(&self) -> PicState {
        self.pic.state()
    }

    fn restore(&mut self, state: PicState) -> Result<(), InvalidState> {
        let r = self.pic.restore(state);
        self.note_masks();
        r
    }

    fn reset(&mut self) {
        Stateful::reset(&mut self.pic);
        self.note_masks();
    }
}

/// The 8259s as the boot vCPU's external interrupt source.
#[derive(Debug, Clone)]
pub struct PicExtInt {
    pub(super) pic: Arc<Mutex<SplitPic>>,
    pub(super) link: Arc<PicLink>,
}

impl ExtIntSource for PicExtInt {
    fn pending(&self) -> bool {
        self.link.intr()
    }

    fn acknowledge(&self) -> u8 {
        lock(&self.pic).acknowledge()
    }
}

/// The ports of [`SplitPic`]: (base, length).
pub const PIC_RANGES: [(u16, u16); 3] = [
    (vmm_devices::pic::MASTER_PORT, 2),
    (vmm_devices::pic::SLAVE_PORT, 2),
    (vmm_devices::pic::ELCR_PORT, 2),
];
