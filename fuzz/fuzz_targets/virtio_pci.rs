//! A virtio-pci function as the guest's driver reaches it: the transport
//! (`VirtioPciDevice`) around a device with no worker of its own, driven
//! by configuration-space and BAR accesses of any width at any offset
//! (the common configuration, ISR, device configuration, notifications,
//! the MSI-X table and pending bits, the PCI configuration access window),
//! with the device signalling its queues and its configuration or asking
//! for a reset in between, and machine resets. No KVM, no threads: every
//! interrupt comes from this thread, so a crash replays exactly.
//!
//! Checks that nothing panics, that every MSI the function sends is the
//! message of one of its MSI-X table entries while MSI-X is enabled and the
//! function not masked, that the device runs only with DRIVER_OK set and
//! only with features the driver accepted out of those offered, and that a
//! device reset (status 0) stops it.

#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_fuzz::{width, write_data, Input};
use vmm_pci::msix::MsiMessage;
use vmm_pci::PciDevice;
use vmm_sys_util::eventfd::EventFd;
use vmm_virtio::device::read_config_bytes;
use vmm_virtio::{
    ActivateContext, ActivateError, DeviceState, Doorbells, IntxLine, MsiSender, TransportSeams,
    VirtioDevice, VirtioInterrupt, VirtioPciDevice,
};

type Mem = GuestMemoryMmap<()>;

/// Guest RAM, where the driver may put its rings.
const RAM: usize = 64 << 10;
/// The features the device offers: INDIRECT_DESC, EVENT_IDX and a device
/// bit (the transport adds VERSION_1).
const FEATURES: u64 = 1 << 28 | 1 << 29 | 1 << 0;
const VERSION_1: u64 = 1 << 32;
/// Status bits.
const DRIVER_OK: u8 = 4;

/// What the device's side saw, for the checks.
#[derive(Default)]
struct Seen {
    /// The interrupt handle and queue count of the running device.
    running: Option<(Arc<dyn VirtioInterrupt>, usize)>,
    /// The features of the last activation.
    features: u64,
}

/// A device of three queues and a 12-byte configuration space that does
/// nothing with its queues but lets the target signal them.
struct Fake {
    config: [u8; 12],
    seen: Arc<Mutex<Seen>>,
    /// Activations fail while set (a worker that could not start).
    refuse: Arc<Mutex<bool>>,
}

impl VirtioDevice<Mem> for Fake {
    fn device_type(&self) -> u32 {
        4
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![8, 16, 256]
    }

    fn config_len(&self) -> usize {
        self.config.len()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|a| self.config.get_mut(a)) {
                *slot = *b;
            }
        }
    }

    fn activate(&mut self, ctx: ActivateContext<Mem>) -> Result<(), ActivateError> {
        let mut seen = self.seen.lock().unwrap();
        if seen.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if *self.refuse.lock().unwrap() {
            return Err(ActivateError::Worker(std::io::Error::other("refused")));
        }
        for q in &ctx.queues {
            assert!(usize::from(q.index) < 3, "queue {}", q.index);
        }
        seen.features = ctx.features;
        seen.running = Some((ctx.interrupt, ctx.queues.len()));
        Ok(())
    }

    fn reset(&mut self) {
        self.seen.lock().unwrap().running = None;
    }

    fn state(&self) -> DeviceState {
        let seen = self.seen.lock().unwrap();
        DeviceState {
            device_type: 4,
            active: seen.running.is_some(),
            acked_features: if seen.running.is_some() {
                seen.features
            } else {
                0
            },
            completed: 0,
            held: 0,
        }
    }
}

/// Every MSI the function sends.
#[derive(Default)]
struct Msis(Mutex<Vec<MsiMessage>>);

impl MsiSender for Msis {
    fn send(&self, msg: MsiMessage) {
        self.0.lock().unwrap().push(msg);
    }
}

struct Intx;

impl IntxLine for Intx {
    fn set_level(&self, _high: bool) {}
}

/// Doorbells as KVM's ioeventfds would be: registered once per address.
#[derive(Default)]
struct Bells(Mutex<Vec<u64>>);

impl Doorbells for Bells {
    fn register(&self, addr: u64, _evt: &EventFd) -> Result<(), String> {
        let mut b = self.0.lock().unwrap();
        if b.contains(&addr) {
            return Err(format!("doorbell {addr:#x} registered twice"));
        }
        b.push(addr);
        Ok(())
    }

    fn unregister(&self, addr: u64, _evt: &EventFd) {
        self.0.lock().unwrap().retain(|&a| a != addr);
    }
}

/// An offset in BAR 0: mostly in the common configuration, the ISR, the
/// device configuration or the notifications; now and then anywhere.
fn bar0_offset(input: &mut Input) -> u64 {
    let low = u64::from(input.u8());
    match input.u8() % 6 {
        0 | 1 => low % 0x38,
        2 => 0x1000 + low % 4,
        3 => 0x2000 + low % 16,
        4 => 0x3000 + low % 16,
        _ => u64::from(input.u16()),
    }
}

/// A read or a write of any width (the input chooses) at `offset` in
/// `bar`.
fn bar_access(dev: &mut dyn PciDevice, input: &mut Input, bar: usize, offset: u64) {
    let len = width(input);
    match write_data(input, len) {
        None => dev.bar_read(bar, offset, &mut [0u8; 8][..len]),
        Some(data) => dev.bar_write(bar, offset, &data[..len]),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), RAM)]).unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let refuse = Arc::new(Mutex::new(false));
    let msis = Arc::new(Msis::default());
    let bells = Arc::new(Bells::default());
    let seams = TransportSeams {
        msi: msis.clone(),
        intx: Some(Arc::new(Intx)),
        doorbells: bells.clone(),
        msi_routes: None,
    };
    let fake = Fake {
        config: [0; 12],
        seen: Arc::clone(&seen),
        refuse: Arc::clone(&refuse),
    };
    let mut dev = VirtioPciDevice::new("fuzz", Box::new(fake), mem, seams).unwrap();
    dev.config_mut().set_bar_base(0, 0xc000_0000);
    dev.config_mut().set_bar_base(2, 0xc000_4000);
    dev.config_mut().set_reset_state();
    dev.config_write(4, &[0x06, 0x00]);
    let cap = dev.config().find_capability(0x11).expect("MSI-X");
    let vectors = usize::from(dev.config().read_u16(cap + 2) & 0x7ff) + 1;
    while !input.is_empty() {
        let before = msis.0.lock().unwrap().len();
        match input.u8() % 16 {
            0..=6 => {
                let offset = bar0_offset(&mut input);
                bar_access(&mut dev, &mut input, 0, offset);
            }
            7 | 8 => {
                // The MSI-X table, its pending bits (past it), or anywhere.
                let offset = match input.u8() % 4 {
                    0..=2 => u64::from(input.u8()) % (vectors as u64 * 16 + 16),
                    _ => u64::from(input.u16()),
                };
                bar_access(&mut dev, &mut input, 2, offset);
            }
            9 | 10 => {
                // Configuration space: the MSI-X control word, the
                // capabilities (the PCI configuration access window among
                // them), or anywhere.
                let offset = match input.u8() % 4 {
                    0 => cap + 2,
                    1 | 2 => 0x40 + usize::from(input.u8()) % 0xc0,
                    _ => usize::from(input.u16()),
                };
                let len = width(&mut input).min(4);
                match write_data(&mut input, len) {
                    None => dev.config_read(offset, &mut [0u8; 8][..len]),
                    Some(data) => dev.config_write(offset, &data[..len]),
                }
            }
            11 | 12 => {
                let running = seen.lock().unwrap().running.clone();
                if let Some((irq, queues)) = running {
                    let pick = usize::from(input.u8());
                    match pick % 8 {
                        0 => irq.signal_config(),
                        1 => irq.set_needs_reset(),
                        _ => irq.signal_queue((pick % queues.max(1)) as u16),
                    }
                }
            }
            13 => {
                let mut r = refuse.lock().unwrap();
                *r = !*r;
            }
            14 => dev.reset(),
            _ => {
                // A queue set up in RAM at once: select, size, areas,
                // enable (what a driver writes, in one step).
                let q = u64::from(input.u8() % 4);
                let size = 1u64 << (input.u8() % 10);
                let at = u64::from(input.u16()) & 0xfff0;
                for (offset, len, value) in [
                    (0x16, 2, q),
                    (0x18, 2, size),
                    (0x20, 8, at),
                    (0x28, 8, at + 0x1000),
                    (0x30, 8, at + 0x2000),
                    (0x1c, 2, 1),
                ] {
                    dev.bar_write(0, offset, &value.to_le_bytes()[..len]);
                }
            }
        }
        // The checks.
        let control = dev.config().read_u16(cap + 2);
        let sent: Vec<MsiMessage> = msis.0.lock().unwrap()[before..].to_vec();
        if !sent.is_empty() {
            assert!(
                control & 0x8000 != 0 && control & 0x4000 == 0,
                "MSIs {sent:?} with MSI-X control {control:#x}"
            );
        }
        for msg in sent {
            let found = (0..vectors).any(|v| {
                let mut e = [0u8; 16];
                dev.bar_read(2, v as u64 * 16, &mut e);
                let address = u64::from_le_bytes(e[..8].try_into().unwrap());
                let data = u32::from_le_bytes(e[8..12].try_into().unwrap());
                let masked = e[12] & 1 != 0;
                !masked && address == msg.address && data == msg.data
            });
            assert!(found, "{msg:?} is no unmasked table entry's");
        }
        let state = dev.state();
        let mut status = [0u8];
        dev.bar_read(0, 0x14, &mut status);
        if state.device.active {
            assert!(
                status[0] & DRIVER_OK != 0,
                "running at status {:#x}",
                status[0]
            );
            let acked = state.device.acked_features;
            assert_eq!(acked & !(FEATURES | VERSION_1), 0, "{acked:#x} not offered");
        }
        if status[0] == 0 {
            assert!(!state.device.active, "running after a device reset");
        }
    }
});
