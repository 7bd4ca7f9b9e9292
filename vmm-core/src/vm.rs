//! The VM: `KVM_CREATE_VM`, guest memory slots, the in-kernel irqchip and
//! interrupt lines (QEMU's `kvm_create_context` and memory listener).

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1,
    kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_pit_config, kvm_userspace_memory_region,
    KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::kvm::{KvmError, KvmSystem};
use crate::ram::GuestRam;
use crate::routing::{NoFreeGsi, Route, RoutingTable};

/// Errors of VM-level operations.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Creating the VM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {size} bytes of guest memory")]
    Memory {
        /// Bytes asked for, in all regions.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The routing table is too large for KVM's interface.
    #[error("cannot build a GSI routing table of {0} entries")]
    Routing(usize),
    /// Every GSI for MSI routes is taken.
    #[error(transparent)]
    NoFreeGsi(#[from] NoFreeGsi),
    /// The GSI is not an allocated MSI route.
    #[error("GSI {0} is not an MSI route of ours")]
    UnknownGsi(u32),
    /// A VM ioctl failed.
    #[error("{what} failed")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// The page size of dirty logs.
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// One RAM slot as KVM knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamSlot {
    /// KVM's slot number.
    pub slot: u32,
    /// Where it starts in guest physical memory.
    pub guest_addr: u64,
    /// Its length in bytes.
    pub size: u64,
}

/// A slot's dirty pages: a bit per 4 KiB page, least significant first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    /// A bitmap of `pages` pages, all clean (or all dirty).
    pub fn new(pages: u64, dirty: bool) -> Self {
        let mut words = vec![if dirty { u64::MAX } else { 0 }; pages.div_ceil(64) as usize];
        if dirty && pages % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (pages % 64)) - 1;
            }
        }
        Self { words, pages }
    }

    /// A bitmap of `pages` pages from its words (a bit per page, least
    /// significant first; bits past `pages` are dropped).
    pub fn from_words(mut words: Vec<u64>, pages: u64) -> Self {
        words.resize(pages.div_ceil(64) as usize, 0);
        if pages % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << (pages % 64)) - 1;
            }
        }
        Self { words, pages }
    }

    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds `other`'s dirty pages to these.
    pub fn merge(&mut self, other: &DirtyBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Marks page `index` dirty (a write KVM did not see: the VMM's own).
    pub fn set(&mut self, index: u64) {
        if index < self.pages {
            if let Some(w) = self.words.get_mut((index / 64) as usize) {
                *w |= 1 << (index % 64);
            }
        }
    }

    /// The dirty pages' indexes, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let pages = self.pages;
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| {
                let mut w = w;
                std::iter::from_fn(move || {
                    if w == 0 {
                        return None;
                    }
                    let bit = u64::from(w.trailing_zeros());
                    w &= w - 1;
                    Some(i as u64 * 64 + bit)
                })
            })
            .filter(move |&p| p < pages)
    }
}

/// A KVM VM with its guest memory registered.
///
/// Cloning shares the same VM (the vCPU threads each hold one).
#[derive(Debug, Clone)]
pub struct Vm {
    fd: Arc<VmFd>,
    memory: GuestRam,
    /// KVM's GSI routing, as last given to it.
    routing: Arc<Mutex<RoutingTable>>,
}

impl Vm {
    /// Creates a VM and gives it `regions` (guest address, size) of
    /// anonymous RAM, one memory slot each.
    pub fn new(kvm: &KvmSystem, regions: &[(GuestAddress, usize)]) -> Result<Self, VmError> {
        let fd = kvm.kvm().create_vm().map_err(KvmError::CreateVm)?;
        let size = regions.iter().map(|r| r.1 as u64).sum();
        let memory =
            GuestRam::from_ranges(regions).map_err(|source| VmError::Memory { size, source })?;
        let vm = Self {
            fd: Arc::new(fd),
            memory,
            routing: Arc::default(),
        };
        vm.register_slots(0)?;
        Ok(vm)
    }

    /// (Re-)registers every RAM region as its slot (slot `i` is region
    /// `i`), with `flags`.
    fn register_slots(&self, flags: u32) -> Result<(), VmError> {
        for (slot, region) in self.memory.iter().enumerate() {
            let mem = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range [as_ptr, as_ptr + len) is a live mmap owned
            // by `memory`. This struct keeps it alive as long as the VM fd: both
            // are dropped together, and every vCPU thread (the only users of
            // vCPU fds, which keep the VM alive) holds a clone of this `Vm`.
            // Registering a slot again with the same range only changes its
            // flags.
            unsafe { self.fd.set_user_memory_region(mem) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// The RAM slots: (slot, guest address, bytes), in guest address order.
    pub fn ram_slots(&self) -> Vec<RamSlot> {
        self.memory
            .iter()
            .enumerate()
            .map(|(slot, region)| RamSlot {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                guest_addr: region.start_addr().raw_value(),
                size: region.len(),
            })
            .collect()
    }

    /// Turns dirty-page logging on or off on every RAM slot
    /// (`KVM_MEM_LOG_DIRTY_PAGES`): while on, KVM records each page a
    /// vCPU writes, for [`Vm::take_dirty_log`]. Turning it on starts with
    /// a clean log.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        self.register_slots(if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })
    }

    /// The pages of `slot` that vCPUs wrote since the last call (or since
    /// logging was turned on), and the log cleared (`KVM_GET_DIRTY_LOG`).
    /// Only while logging is on.
    pub fn take_dirty_log(&self, slot: &RamSlot) -> Result<DirtyBitmap, VmError> {
        let size = usize::try_from(slot.size).unwrap_or(usize::MAX);
        let words = self
            .fd
            .get_dirty_log(slot.slot, size)
            .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
        Ok(DirtyBitmap {
            words,
            pages: slot.size.div_ceil(DIRTY_PAGE_SIZE),
        })
    }

    /// The size of each vCPU's `kvm_run` mapping.
    pub fn kvm_run_size(&self) -> Result<usize, kvm_ioctls::Error> {
        Ok(self.fd.run_size())
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestRam {
        &self.memory
    }

    /// The VM file descriptor, for vCPU creation and the x86 set-up calls.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Places the three TSS pages Intel's VMX needs (below 4 GiB, outside RAM).
    pub fn set_tss_address(&self, addr: u64) -> Result<(), VmError> {
        let addr = usize::try_from(addr).unwrap_or(usize::MAX);
        self.fd
            .set_tss_address(addr)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))
    }

    /// Creates the in-kernel PIC pair, IO-APIC and local APICs
    /// (`KVM_CREATE_IRQCHIP`). Must come before any vCPU is created.
    pub fn create_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(ioctl("KVM_CREATE_IRQCHIP"))
    }

    /// Creates only the local APICs in the kernel (`KVM_ENABLE_CAP` of
    /// `KVM_CAP_SPLIT_IRQCHIP`): the PICs and the IO-APIC are the VMM's,
    /// and GSIs below `ioapic_pins` are the IO-APIC's pins, whose MSI
    /// routes ([`Vm::set_msi_routing`]) tell KVM which vectors are
    /// level-triggered (their EOIs exit with `KVM_EXIT_IOAPIC_EOI`). Must
    /// come before any vCPU is created; instead of [`Vm::create_irqchip`].
    pub fn create_split_irqchip(&self, ioapic_pins: u32) -> Result<(), VmError> {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = u64::from(ioapic_pins);
        self.fd
            .enable_cap(&cap)
            .map_err(ioctl("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))
    }

    /// Creates KVM's in-kernel i8254 PIT. `KVM_PIT_SPEAKER_DUMMY` makes KVM
    /// also serve port 0x61 (the speaker gate and channel 2's output), so
    /// the machine must not put a device there.
    pub fn create_in_kernel_pit(&self) -> Result<(), VmError> {
        let config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(config)
            .map_err(ioctl("KVM_CREATE_PIT2"))
    }

    /// Sets the interrupt controllers' routes to `routes`: each (GSI,
    /// irqchip, pin) sends that GSI to a pin of the in-kernel PIC master
    /// (0), PIC slave (1) or IO-APIC (2). A GSI may be listed for several
    /// chips. The MSI routes of [`Vm::add_msi_route`] stay.
    pub fn set_irqchip_routing(&self, routes: &[(u32, u32, u32)]) -> Result<(), VmError> {
        let base = routes
            .iter()
            .map(|&(gsi, chip, pin)| (gsi, Route::Irqchip { chip, pin }))
            .collect();
        self.change_routing(|t| t.set_base(base))
    }

    /// Sets the interrupt controllers' routes to `routes`: each (GSI,
    /// address, data) makes that GSI an MSI, as [`Vm::signal_msi`] sends
    /// it (the split irqchip's IO-APIC pins; an irqfd on such a GSI sends
    /// the MSI inside KVM). The MSI routes of [`Vm::add_msi_route`] stay.
    pub fn set_msi_routing(&self, routes: &[(u32, u64, u32)]) -> Result<(), VmError> {
        let base = routes
            .iter()
            .map(|&(gsi, address, data)| (gsi, Route::Msi { address, data }))
            .collect();
        self.change_routing(|t| t.set_base(base))
    }

    /// A GSI of its own that KVM routes to MSI message (`address`,
    /// `data`), for an irqfd ([`Vm::register_irqfd`]).
    pub fn add_msi_route(&self, address: u64, data: u32) -> Result<u32, VmError> {
        self.change_routing(|t| t.allocate(address, data))?
            .map_err(VmError::from)
    }

    /// Points `gsi` (from [`Vm::add_msi_route`]) at another message.
    pub fn update_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<(), VmError> {
        if self.change_routing(|t| t.update(gsi, address, data))? {
            Ok(())
        } else {
            Err(VmError::UnknownGsi(gsi))
        }
    }

    /// Frees `gsi` (from [`Vm::add_msi_route`]); its irqfd must be gone.
    pub fn remove_msi_route(&self, gsi: u32) -> Result<(), VmError> {
        if self.change_routing(|t| t.release(gsi))? {
            Ok(())
        } else {
            Err(VmError::UnknownGsi(gsi))
        }
    }

    /// Changes the routing table with `f` and gives KVM the result
    /// (`KVM_SET_GSI_ROUTING`); if KVM refuses it, the table stays as it
    /// was.
    fn change_routing<R>(&self, f: impl FnOnce(&mut RoutingTable) -> R) -> Result<R, VmError> {
        let mut table = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        let before = table.clone();
        let r = f(&mut table);
        if *table != before {
            if let Err(e) = self.set_routing(table.entries().into_iter().map(kvm_entry)) {
                *table = before;
                return Err(e);
            }
        }
        Ok(r)
    }

    /// Replaces KVM's GSI routing with `entries` (`KVM_SET_GSI_ROUTING`).
    fn set_routing(
        &self,
        entries: impl ExactSizeIterator<Item = kvm_irq_routing_entry>,
    ) -> Result<(), VmError> {
        let len = entries.len();
        let mut table = KvmIrqRouting::new(0).map_err(|_| VmError::Routing(len))?;
        for entry in entries {
            table.push(entry).map_err(|_| VmError::Routing(len))?;
        }
        self.fd
            .set_gsi_routing(&table)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))
    }

    /// Makes every write to `fd` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(fd, gsi).map_err(ioctl("KVM_IRQFD"))
    }

    /// Undoes [`Vm::register_irqfd`] for `fd` on `gsi`.
    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .unregister_irqfd(fd, gsi)
            .map_err(ioctl("KVM_IRQFD"))
    }

    /// The in-kernel irqchip's state: PIC master, PIC slave, IO-APIC
    /// (`KVM_GET_IRQCHIP`), to put back with [`Vm::set_irqchip_state`].
    pub fn irqchip_state(&self) -> Result<Vec<kvm_bindings::kvm_irqchip>, VmError> {
        (0..3)
            .map(|chip_id| {
                let mut chip = kvm_bindings::kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                self.fd
                    .get_irqchip(&mut chip)
                    .map_err(ioctl("KVM_GET_IRQCHIP"))?;
                Ok(chip)
            })
            .collect()
    }

    /// Puts back irqchip state read by [`Vm::irqchip_state`] (a reset puts
    /// back the state of a fresh irqchip).
    pub fn set_irqchip_state(&self, chips: &[kvm_bindings::kvm_irqchip]) -> Result<(), VmError> {
        for chip in chips {
            self.fd
                .set_irqchip(chip)
                .map_err(ioctl("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    /// KVM's in-kernel PIT state (`KVM_GET_PIT2`).
    pub fn pit_state(&self) -> Result<kvm_bindings::kvm_pit_state2, VmError> {
        self.fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))
    }

    /// Puts back KVM's PIT state (`KVM_SET_PIT2`).
    pub fn set_pit_state(&self, state: &kvm_bindings::kvm_pit_state2) -> Result<(), VmError> {
        self.fd.set_pit2(state).map_err(ioctl("KVM_SET_PIT2"))
    }

    /// The kvmclock's current value (`KVM_GET_CLOCK`), in ns.
    pub fn clock_ns(&self) -> Result<u64, VmError> {
        self.fd
            .get_clock()
            .map(|c| c.clock)
            .map_err(ioctl("KVM_GET_CLOCK"))
    }

    /// Sets the kvmclock (`KVM_SET_CLOCK`): guests reading it continue from
    /// `ns`. With the value read when the VM was paused, no guest time
    /// passes while paused (QEMU's kvmclock does this on stop and cont).
    pub fn set_clock_ns(&self, ns: u64) -> Result<(), VmError> {
        let data = kvm_bindings::kvm_clock_data {
            clock: ns,
            ..Default::default()
        };
        self.fd.set_clock(&data).map_err(ioctl("KVM_SET_CLOCK"))
    }

    /// Sends an MSI (`KVM_SIGNAL_MSI`): the message a PCI function's MSI-X
    /// vector writes, delivered by the in-kernel local APICs. Returns
    /// whether it reached a CPU (false: blocked, e.g. no such APIC).
    /// Callable from any thread: device threads use it.
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<bool, VmError> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|n| n > 0)
            .map_err(ioctl("KVM_SIGNAL_MSI"))
    }

    /// Makes guest writes to MMIO `addr` write `fd` inside KVM, with no
    /// exit to user space (`KVM_IOEVENTFD`, any value, any width): a
    /// device's doorbell.
    pub fn register_mmio_doorbell(&self, fd: &EventFd, addr: u64) -> Result<(), VmError> {
        self.fd
            .register_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_mmio_doorbell`].
    pub fn unregister_mmio_doorbell(&self, fd: &EventFd, addr: u64) -> Result<(), VmError> {
        self.fd
            .unregister_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }

    /// Sets the level of interrupt line `gsi`.
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(ioctl("KVM_IRQ_LINE"))
    }
}

/// KVM's form of one route.
fn kvm_entry((gsi, route): (u32, Route)) -> kvm_irq_routing_entry {
    match route {
        Route::Irqchip { chip, pin } => kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
            },
            ..Default::default()
        },
        Route::Msi { address, data } => kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: address as u32,
                    address_hi: (address >> 32) as u32,
                    data,
                    ..Default::default()
                },
            },
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_lists_and_counts_its_dirty_pages() {
        let mut b = DirtyBitmap::new(70, false);
        assert_eq!(b.count(), 0);
        b.set(3);
        b.set(64);
        b.set(69);
        b.set(70); // past the end: ignored
        assert_eq!(b.iter().collect::<Vec<_>>(), [3, 64, 69]);
        assert_eq!(b.count(), 3);
        let all = DirtyBitmap::new(70, true);
        assert_eq!(all.count(), 70);
        b.merge(&all);
        assert_eq!(b.iter().count(), 70);
        let w = DirtyBitmap::from_words(vec![u64::MAX, u64::MAX, 1], 70);
        assert_eq!(w.count(), 70);
    }
}
