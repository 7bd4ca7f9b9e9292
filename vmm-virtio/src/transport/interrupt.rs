//! Where a virtio-pci function's interrupts go: MSI-X when the driver
//! enabled it (through the vector each queue and the configuration are
//! mapped to), else the ISR status byte and the INTx line.
//!
//! Shared between the transport (vCPU thread: register accesses) and the
//! device's worker (used buffers, configuration changes). Each piece of
//! state has its own small lock and none is held while taking another
//! (but the direct lines' lock, which takes the MSI-X lock to read the
//! table), so neither side can wait on the other for long.
//!
//! A queue whose interrupts come from outside the VMM (the kernel's
//! vhost) can be a *direct line* ([`VirtioInterrupt::connect_queue`]):
//! while MSI-X is on and the queue's vector is unmasked, KVM sends the
//! vector's message itself whenever the kernel signals the queue's
//! eventfd (an irqfd on an MSI route, kept in step with the table, the
//! masks and the queue's vector). Otherwise the eventfd stays signalled
//! for the device's worker to read and pass on with `signal_queue`, which
//! sets the pending bit of a masked vector or raises INTx as for any
//! other device.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vmm_pci::msix::{MsiMessage, Msix};

use crate::device::{VirtioInterrupt, VIRTIO_MSI_NO_VECTOR};
use crate::seams::{IntxLine, MsiRoutes, MsiSender};

/// ISR bit 0: a queue interrupt.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit 1: a configuration change.
pub const ISR_CONFIG: u8 = 2;

/// The ISR byte and what the INTx line should be.
#[derive(Debug, Default)]
struct Isr {
    isr: u8,
    /// The line as last driven.
    line: bool,
    /// The command register's INTx disable bit.
    intx_disabled: bool,
    /// MSI-X enabled: INTx is not used.
    msix_enabled: bool,
}

/// The interrupt state of one function.
pub struct InterruptHub {
    msix: Mutex<Msix>,
    msi: Arc<dyn MsiSender>,
    intx: Option<Arc<dyn IntxLine>>,
    isr: Mutex<Isr>,
    config_vector: AtomicU16,
    queue_vectors: Box<[AtomicU16]>,
    generation: AtomicU8,
    needs_reset: AtomicBool,
    routes: Option<Arc<dyn MsiRoutes>>,
    /// Per queue, its direct line if it has one.
    direct: Mutex<Vec<Option<DirectLine>>>,
    /// Signalled when a direct line goes on or off (with routes only).
    changes: Option<Arc<EventFd>>,
}

/// A queue's interrupt eventfd that KVM may serve itself.
struct DirectLine {
    evt: Arc<EventFd>,
    /// The route it is on now, and its message (`None`: not on one; the
    /// worker reads `evt`).
    on: Option<(u32, MsiMessage)>,
}

impl std::fmt::Debug for InterruptHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptHub")
            .field("isr", &lock(&self.isr).isr)
            .field("config_vector", &self.config_vector)
            .field("queue_vectors", &self.queue_vectors)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InterruptHub {
    /// `queues` queues, MSI-X as `msix`, INTx on `intx` if wired.
    pub fn new(
        msix: Msix,
        msi: Arc<dyn MsiSender>,
        intx: Option<Arc<dyn IntxLine>>,
        queues: usize,
    ) -> Self {
        Self {
            msix: Mutex::new(msix),
            msi,
            intx,
            isr: Mutex::new(Isr::default()),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            generation: AtomicU8::new(0),
            needs_reset: AtomicBool::new(false),
            routes: None,
            direct: Mutex::new((0..queues).map(|_| None).collect()),
            changes: None,
        }
    }

    /// MSI routes for direct lines (without them a queue never has one),
    /// and the eventfd that says when one goes on or off (without it, a
    /// device reads every line all along).
    pub fn with_routes(mut self, routes: Option<Arc<dyn MsiRoutes>>) -> Self {
        self.changes = routes
            .as_ref()
            .and_then(|_| match EventFd::new(EFD_NONBLOCK) {
                Ok(e) => Some(Arc::new(e)),
                Err(e) => {
                    log::warn!("virtio: no eventfd for interrupt route changes: {e}");
                    None
                }
            });
        self.routes = routes;
        self
    }

    /// Says that a direct line went on or off.
    fn changed(&self) {
        if let Some(c) = &self.changes {
            if let Err(e) = c.write(1) {
                log::warn!("virtio: cannot say a direct line changed: {e}");
            }
        }
    }

    /// What queue `queue`'s direct line should send now: its vector's
    /// message, if MSI-X is on and the vector unmasked.
    fn direct_message(&self, queue: usize) -> Option<MsiMessage> {
        let vector = self.queue_vectors.get(queue)?.load(Ordering::Acquire);
        let msix = lock(&self.msix);
        if vector == VIRTIO_MSI_NO_VECTOR || msix.is_masked(vector) {
            return None;
        }
        msix.message(vector)
    }

    /// Puts every direct line on the route its queue's vector wants, or
    /// takes it off (after any change to the table, the masks, MSI-X's
    /// enable bit or the queues' vectors).
    fn sync_direct(&self) {
        let Some(routes) = &self.routes else {
            return;
        };
        let mut direct = lock(&self.direct);
        let mut toggled = false;
        for (queue, line) in direct.iter_mut().enumerate() {
            let Some(line) = line else {
                continue;
            };
            let was_on = line.on.is_some();
            let want = self.direct_message(queue);
            line.on = match (line.on, want) {
                (None, None) => None,
                (Some(on), Some(msg)) if on.1 == msg => Some(on),
                (Some((route, _)), Some(msg)) => match routes.retarget(route, msg) {
                    Ok(()) => Some((route, msg)),
                    Err(e) => {
                        log::warn!("queue {queue}'s interrupt route: {e}; the worker passes it on");
                        routes.disconnect(route, &line.evt);
                        None
                    }
                },
                (None, Some(msg)) => match routes.connect(&line.evt, msg) {
                    Ok(route) => {
                        log::debug!(
                            "queue {queue}'s interrupts go to KVM directly (route {route})"
                        );
                        Some((route, msg))
                    }
                    Err(e) => {
                        log::warn!("queue {queue}'s interrupt route: {e}; the worker passes it on");
                        None
                    }
                },
                (Some((route, _)), None) => {
                    log::debug!("queue {queue}'s interrupts go through the worker (vector masked or unmapped)");
                    routes.disconnect(route, &line.evt);
                    None
                }
            };
            toggled |= line.on.is_some() != was_on;
        }
        drop(direct);
        if toggled {
            self.changed();
        }
    }

    /// Runs `f` on the MSI-X state, then sends the messages of the vectors
    /// it returns (pending vectors the change released).
    pub fn with_msix(&self, f: impl FnOnce(&mut Msix) -> Vec<u16>) {
        let mut msix = lock(&self.msix);
        let released = f(&mut msix);
        let enabled = msix.enabled();
        for vector in released {
            if let Some(msg) = msix.message(vector) {
                self.msi.send(msg);
            }
        }
        drop(msix);
        let mut isr = lock(&self.isr);
        isr.msix_enabled = enabled;
        self.drive_line(&mut isr);
        drop(isr);
        self.sync_direct();
    }

    /// Reads the MSI-X state.
    pub fn msix<R>(&self, f: impl FnOnce(&Msix) -> R) -> R {
        f(&lock(&self.msix))
    }

    /// The vectors the driver mapped (already checked against the table).
    pub fn set_vectors(&self, config: u16, queues: impl IntoIterator<Item = u16>) {
        self.config_vector.store(config, Ordering::Release);
        for (slot, v) in self.queue_vectors.iter().zip(queues) {
            slot.store(v, Ordering::Release);
        }
        self.sync_direct();
    }

    /// The driver reads the ISR: its value, cleared, and the line lowered.
    pub fn read_isr(&self) -> u8 {
        let mut isr = lock(&self.isr);
        let value = std::mem::take(&mut isr.isr);
        self.drive_line(&mut isr);
        value
    }

    /// Whether an INTx is pending (for the PCI status register).
    pub fn intx_pending(&self) -> bool {
        let isr = lock(&self.isr);
        isr.isr != 0 && !isr.msix_enabled
    }

    /// The command register's INTx disable bit changed (or not).
    pub fn set_intx_disabled(&self, disabled: bool) {
        let mut isr = lock(&self.isr);
        isr.intx_disabled = disabled;
        self.drive_line(&mut isr);
    }

    /// `config_generation`.
    pub fn generation(&self) -> u8 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether DEVICE_NEEDS_RESET is set.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The ISR byte as it is (not cleared), for a snapshot.
    pub fn isr(&self) -> u8 {
        lock(&self.isr).isr
    }

    /// Puts back a snapshot's MSI-X table and pending bits (their sizes
    /// checked), the ISR byte, `config_generation` and DEVICE_NEEDS_RESET;
    /// `config` (already restored) gives MSI-X's enable and mask bits and
    /// the command register's INTx disable bit. Nothing is sent: the
    /// line follows the ISR.
    pub fn restore(
        &self,
        msix: &vmm_pci::msix::MsixState,
        config: &vmm_pci::config::ConfigSpace,
        isr: u8,
        generation: u8,
        needs_reset: bool,
    ) -> Result<(), vmm_pci::PciError> {
        let enabled = {
            let mut m = lock(&self.msix);
            m.restore(msix, config)?;
            m.enabled()
        };
        self.generation.store(generation, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
        let command = config.read_u16(vmm_pci::config::COMMAND);
        let mut state = lock(&self.isr);
        state.isr = isr;
        state.msix_enabled = enabled;
        state.intx_disabled = command & vmm_pci::config::COMMAND_INTX_DISABLE != 0;
        self.drive_line(&mut state);
        drop(state);
        self.sync_direct();
        Ok(())
    }

    /// A device reset: ISR clear, the line low, every event unmapped,
    /// DEVICE_NEEDS_RESET clear. MSI-X itself is PCI state and stays.
    pub fn reset(&self) {
        self.set_vectors(
            VIRTIO_MSI_NO_VECTOR,
            std::iter::repeat_n(VIRTIO_MSI_NO_VECTOR, self.queue_vectors.len()),
        );
        self.needs_reset.store(false, Ordering::Release);
        let mut isr = lock(&self.isr);
        isr.isr = 0;
        self.drive_line(&mut isr);
    }

    /// A function reset (the machine's): the above, and MSI-X back to all
    /// masked and disabled.
    pub fn reset_function(&self) {
        self.reset();
        lock(&self.msix).reset();
        let mut isr = lock(&self.isr);
        isr.msix_enabled = false;
        isr.intx_disabled = false;
        self.drive_line(&mut isr);
        drop(isr);
        self.sync_direct();
    }

    fn drive_line(&self, isr: &mut Isr) {
        let level = isr.isr != 0 && !isr.intx_disabled && !isr.msix_enabled;
        if level != isr.line {
            isr.line = level;
            if let Some(intx) = &self.intx {
                intx.set_level(level);
            }
        }
    }

    /// Signals `vector` under MSI-X, or sets `bit` in the ISR and raises
    /// INTx. A configuration change sets its ISR bit either way, as the
    /// specification asks.
    fn signal(&self, vector: u16, bit: u8) {
        let mut msix = lock(&self.msix);
        if msix.enabled() {
            if vector != VIRTIO_MSI_NO_VECTOR {
                if let Some(msg) = msix.signal(vector) {
                    self.msi.send(msg);
                }
            }
            drop(msix);
            if bit == ISR_CONFIG {
                lock(&self.isr).isr |= bit;
            }
            return;
        }
        drop(msix);
        let mut isr = lock(&self.isr);
        isr.isr |= bit;
        self.drive_line(&mut isr);
    }

    /// DEVICE_NEEDS_RESET from the transport (a driver error).
    pub fn raise_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.signal(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }
}

impl VirtioInterrupt for InterruptHub {
    fn signal_queue(&self, queue: u16) {
        let Some(vector) = self.queue_vectors.get(usize::from(queue)) else {
            return;
        };
        self.signal(vector.load(Ordering::Acquire), ISR_QUEUE);
    }

    fn signal_config(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.signal(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }

    fn set_needs_reset(&self) {
        self.raise_needs_reset();
    }

    fn connect_queue(&self, queue: u16, evt: &Arc<EventFd>) -> bool {
        if self.routes.is_none() || usize::from(queue) >= self.queue_vectors.len() {
            return false;
        }
        // A line the device left connected goes first.
        self.disconnect_queue(queue);
        let mut direct = lock(&self.direct);
        let Some(slot) = direct.get_mut(usize::from(queue)) else {
            return false;
        };
        *slot = Some(DirectLine {
            evt: Arc::clone(evt),
            on: None,
        });
        drop(direct);
        self.sync_direct();
        true
    }

    fn disconnect_queue(&self, queue: u16) {
        let old = lock(&self.direct)
            .get_mut(usize::from(queue))
            .and_then(Option::take);
        if let (Some(old), Some(routes)) = (old, &self.routes) {
            if let Some((route, _)) = old.on {
                routes.disconnect(route, &old.evt);
                self.changed();
            }
        }
    }

    fn is_direct(&self, queue: u16) -> bool {
        lock(&self.direct)
            .get(usize::from(queue))
            .is_some_and(|l| l.as_ref().is_some_and(|l| l.on.is_some()))
    }

    fn direct_changes(&self) -> Option<Arc<EventFd>> {
        self.changes.clone()
    }
}
