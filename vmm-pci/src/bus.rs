//! The root bus: up to 32 single-function devices on bus 0, a host bridge
//! at 00:00.0, and the two ways in:
//!
//! - configuration mechanism #1: a 32-bit address register at port 0xCF8
//!   (bit 31 enable, bus in 23:16, device in 15:11, function in 10:8,
//!   register in 7:2) and a data window at 0xCFC-0xCFF taking 1-, 2- and
//!   4-byte accesses at the register plus the port's offset;
//! - ECAM (PCI Express's MMCONFIG): 4 KiB of configuration space per
//!   function at `bus << 20 | device << 15 | function << 12 | register`
//!   from the window's base.
//!
//! A function that is not there reads all ones (vendor 0xFFFF: "nothing
//! here"), and writes to it vanish, as on real hardware.

use crate::config::{BarRegion, ConfigSpace, Identity, LEGACY_CONFIG_SIZE};
use crate::PciError;

/// Devices on one bus.
pub const SLOTS: usize = 32;

/// A PCI function as the bus sees it.
pub trait PciDevice: Send {
    /// Its name (`virtio-blk-pci`, say), for listings.
    fn name(&self) -> &str;
    /// Its configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Its configuration space, to change.
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// The guest reads configuration space; a device whose registers there
    /// have side effects or live elsewhere (virtio's `pci_cfg_data`
    /// window, an interrupt status bit) overrides this.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// The guest writes configuration space; a device that reacts to it
    /// (MSI-X enable, say) overrides this and calls the default's body.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
    /// The guest reads BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// The guest writes BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Back to the power-on state (configuration space included).
    fn reset(&mut self) {
        self.config_mut().reset();
    }
    /// The function as its concrete type, for a machine that saves and
    /// loads state the trait does not describe (a virtio function's
    /// queues); None for functions that have no such state.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// The host bridge at 00:00.0: a function with no BARs, class "host
/// bridge" (06:00:00), Red Hat's ID for a generic PCI Express host bridge
/// (the one QEMU's `gpex` uses), which no OS driver special-cases.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        let config = ConfigSpace::new(Identity {
            vendor: 0x1b36,
            device: 0x0008,
            class: (0x06, 0x00, 0x00),
            revision: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        Self { config }
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        "pcie-host-bridge"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// Bus 0 and its functions.
pub struct PciRoot {
    slots: Vec<Option<Box<dyn PciDevice>>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.functions()
                    .map(|(slot, d)| (slot, d.name().to_owned())),
            )
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Box<dyn PciDevice>>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Box::new(HostBridge::default()));
        Self { slots }
    }

    /// Puts `device` in `slot`, or in the first free one; returns the slot.
    pub fn add(&mut self, slot: Option<u8>, device: Box<dyn PciDevice>) -> Result<u8, PciError> {
        let index = match slot {
            Some(s) => usize::from(s),
            None => self.slots.iter().position(Option::is_none).unwrap_or(SLOTS),
        };
        let Some(place) = self.slots.get_mut(index).filter(|p| p.is_none()) else {
            return Err(PciError::SlotTaken(slot.unwrap_or(SLOTS as u8)));
        };
        *place = Some(device);
        u8::try_from(index).map_err(|_| PciError::SlotTaken(SLOTS as u8))
    }

    /// The first empty slot (slot 0 is the host bridge's).
    pub fn free_slot(&self) -> Option<u8> {
        let i = self.slots.iter().skip(1).position(Option::is_none)?;
        u8::try_from(i + 1).ok()
    }

    /// The functions present, by slot.
    pub fn functions(&self) -> impl Iterator<Item = (u8, &dyn PciDevice)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((u8::try_from(i).ok()?, d.as_deref()?)))
    }

    /// The function at 0:`slot`.`function`, if there is one.
    fn function(&mut self, bus: u8, slot: u8, function: u8) -> Option<&mut Box<dyn PciDevice>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get_mut(usize::from(slot))?.as_mut()
    }

    /// Reads configuration space (absent functions read all ones).
    pub fn config_read(&mut self, bus: u8, slot: u8, function: u8, offset: usize, data: &mut [u8]) {
        match self.function(bus, slot, function) {
            Some(d) => d.config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space; returns whether the function's decoded
    /// BARs changed (moved, appeared or went), which the machine follows
    /// (its notification doorbells, say).
    pub fn config_write(
        &mut self,
        bus: u8,
        slot: u8,
        function: u8,
        offset: usize,
        data: &[u8],
    ) -> bool {
        let Some(d) = self.function(bus, slot, function) else {
            return false;
        };
        let before: Vec<BarRegion> = d.config().decoding_regions().collect();
        d.config_write(offset, data);
        !d.config().decoding_regions().eq(before)
    }

    /// The function and BAR region that decode `addr` (memory, or ports).
    fn decoder(
        &mut self,
        addr: u64,
        memory: bool,
    ) -> Option<(&mut Box<dyn PciDevice>, usize, u64)> {
        self.slots.iter_mut().flatten().find_map(|d| {
            let hit = d
                .config()
                .decoding_regions()
                .filter(|r| r.kind.is_memory() == memory)
                .find_map(|r| Some((r.index, r.offset_of(addr)?)));
            hit.map(|(bar, offset)| (d, bar, offset))
        })
    }

    /// An MMIO read a BAR decodes; false if none does.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.decoder(addr, true) {
            Some((d, bar, offset)) => {
                d.bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// An MMIO write a BAR decodes; false if none does.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.decoder(addr, true) {
            Some((d, bar, offset)) => {
                d.bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// A port read a BAR decodes; false if none does.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        match self.decoder(u64::from(port), false) {
            Some((d, bar, offset)) => {
                d.bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// A port write a BAR decodes; false if none does.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match self.decoder(u64::from(port), false) {
            Some((d, bar, offset)) => {
                d.bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// The function in `slot`, if any.
    pub fn function_mut(&mut self, slot: u8) -> Option<&mut (dyn PciDevice + 'static)> {
        self.slots.get_mut(usize::from(slot))?.as_deref_mut()
    }

    /// Resets every function.
    pub fn reset(&mut self) {
        for d in self.slots.iter_mut().flatten() {
            d.reset();
        }
    }

    /// Reads ECAM at `offset` from the window's base.
    pub fn ecam_read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, slot, function, register) = ecam_decode(offset);
        self.config_read(bus, slot, function, register, data);
    }

    /// Writes ECAM at `offset` from the window's base (see
    /// [`PciRoot::config_write`] for the result).
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) -> bool {
        let (bus, slot, function, register) = ecam_decode(offset);
        self.config_write(bus, slot, function, register, data)
    }
}

/// (bus, device, function, register) of an ECAM offset.
pub fn ecam_decode(offset: u64) -> (u8, u8, u8, usize) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as usize,
    )
}

/// Configuration mechanism #1: ports 0xCF8-0xCFF (offsets 0-7 here).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigMechanism1 {
    /// The address register at 0xCF8.
    pub address: u32,
}

/// The address register's enable bit.
const ENABLE: u32 = 1 << 31;

impl ConfigMechanism1 {
    /// (bus, device, function, register) the address register selects, if
    /// enabled, with the data port's byte offset added to the register.
    fn target(&self, data_offset: u16) -> Option<(u8, u8, u8, usize)> {
        (self.address & ENABLE != 0).then(|| {
            let a = self.address;
            let register = (a & 0xfc) as usize + usize::from(data_offset);
            (
                ((a >> 16) & 0xff) as u8,
                ((a >> 11) & 0x1f) as u8,
                ((a >> 8) & 0x7) as u8,
                register,
            )
        })
    }

    /// A read at `offset` from 0xCF8.
    pub fn read(&mut self, root: &mut PciRoot, offset: u16, data: &mut [u8]) {
        match (offset, data.len()) {
            // Only whole 32-bit accesses reach the address register.
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (4..=7, 1 | 2 | 4) if usize::from(offset - 4) + data.len() <= 4 => {
                match self.target(offset - 4) {
                    Some((bus, slot, function, register)) if register < LEGACY_CONFIG_SIZE => {
                        root.config_read(bus, slot, function, register, data);
                    }
                    _ => data.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    /// A write at `offset` from 0xCF8; returns what
    /// [`PciRoot::config_write`] returns (false for the address register).
    pub fn write(&mut self, root: &mut PciRoot, offset: u16, data: &[u8]) -> bool {
        match (offset, data) {
            (0, &[a, b, c, d]) => {
                self.address = u32::from_le_bytes([a, b, c, d]);
                false
            }
            (4..=7, _)
                if matches!(data.len(), 1 | 2 | 4) && usize::from(offset - 4) + data.len() <= 4 =>
            {
                match self.target(offset - 4) {
                    Some((bus, slot, function, register)) if register < LEGACY_CONFIG_SIZE => {
                        root.config_write(bus, slot, function, register, data)
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
