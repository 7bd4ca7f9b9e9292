//! One function's configuration space: the type-0 header, which bits the
//! guest may write (a write mask, and the status bits it clears by writing
//! ones), the six BARs with PCI's sizing protocol, and the capability list.
//!
//! The space is 4 KiB (PCI Express, reachable through ECAM); the first 256
//! bytes are what ports 0xCF8/0xCFC reach. Nothing past the header and the
//! capabilities is implemented: it reads 0 (so the extended capability list
//! at 0x100 is empty), and writes there are dropped.

use crate::PciError;

/// The whole space (PCI Express).
pub const CONFIG_SIZE: usize = 4096;
/// What configuration mechanism #1 reaches.
pub const LEGACY_CONFIG_SIZE: usize = 256;
/// Where the first capability may go (the end of the type-0 header).
pub const FIRST_CAPABILITY: usize = 0x40;

/// Vendor ID (16 bits; 0xFFFF means "no function here").
pub const VENDOR_ID: usize = 0x00;
/// Device ID.
pub const DEVICE_ID: usize = 0x02;
/// Command register.
pub const COMMAND: usize = 0x04;
/// Status register.
pub const STATUS: usize = 0x06;
/// Revision ID, then programming interface, subclass and class (0x09-0x0B).
pub const REVISION_ID: usize = 0x08;
/// Cache line size (read/write, no effect).
pub const CACHE_LINE_SIZE: usize = 0x0c;
/// Latency timer (read/write, no effect).
pub const LATENCY_TIMER: usize = 0x0d;
/// Header type (0: an endpoint; bit 7: multi-function).
pub const HEADER_TYPE: usize = 0x0e;
/// BAR 0; BAR n is at `BAR0 + 4 n`.
pub const BAR0: usize = 0x10;
/// The six BARs' bytes.
const BARS: std::ops::Range<usize> = BAR0..BAR0 + 6 * 4;
/// Subsystem vendor ID.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID.
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Capabilities pointer.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line (read/write: what the OS wrote down for itself).
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin (1 = INTA# .. 4 = INTD#, 0 = none).
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command: respond to I/O space accesses.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command: respond to memory space accesses.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: may master the bus (DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a guest may set: I/O, memory, bus master, parity
/// error response, SERR#, INTx disable.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | 1 << 6 | 1 << 8 | COMMAND_INTX_DISABLE;
/// Status: an INTx is pending (read-only, the device's).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: the capabilities pointer is valid.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// The error bits of status, which the guest clears by writing ones.
const STATUS_WRITE_ONE_TO_CLEAR: u16 = 0xf900;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere (the BAR and the next one hold the address).
    Memory64 {
        /// Whether reads have no side effects (the OS may merge them).
        prefetchable: bool,
    },
}

impl BarKind {
    /// The low bits of the BAR register that say what it is.
    fn type_bits(self) -> u32 {
        match self {
            Self::Io => 0b01,
            Self::Memory32 => 0b0000,
            Self::Memory64 { prefetchable } => 0b0100 | if prefetchable { 0b1000 } else { 0 },
        }
    }

    /// Whether this is memory (else ports).
    pub fn is_memory(self) -> bool {
        !matches!(self, Self::Io)
    }
}

/// A BAR as the device declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Its size in bytes: a power of two, at least 16 for memory (4 KiB
    /// recommended) and 4 for ports.
    pub size: u64,
}

/// Where a BAR is now, as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    /// Which BAR.
    pub index: usize,
    /// What it decodes.
    pub kind: BarKind,
    /// Its base address (memory) or port.
    pub base: u64,
    /// Its size.
    pub size: u64,
}

impl BarRegion {
    /// The offset of `addr` in this region, if it falls inside.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        addr.checked_sub(self.base).filter(|&o| o < self.size)
    }
}

/// A function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CONFIG_SIZE]>,
    /// The bits the guest may write.
    write_mask: Box<[u8; CONFIG_SIZE]>,
    /// The bits the guest clears by writing ones.
    write_one_to_clear: Box<[u8; CONFIG_SIZE]>,
    bars: [Option<Bar>; 6],
    /// Where the next capability goes, and the last one (for its link).
    next_capability: usize,
    last_capability: Option<usize>,
    /// The bytes a reset puts back (see [`ConfigSpace::set_reset_state`]).
    at_reset: Box<[u8; CONFIG_SIZE]>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

/// The identity of a function: what the type-0 header says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code: (class, subclass, programming interface).
    pub class: (u8, u8, u8),
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

impl ConfigSpace {
    /// A type-0 header for `id`: command 0, no BARs, no capabilities,
    /// no interrupt pin.
    pub fn new(id: Identity) -> Self {
        let mut c = Self {
            bytes: Box::new([0; CONFIG_SIZE]),
            write_mask: Box::new([0; CONFIG_SIZE]),
            write_one_to_clear: Box::new([0; CONFIG_SIZE]),
            bars: [None; 6],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
            at_reset: Box::new([0; CONFIG_SIZE]),
        };
        c.set_u16(VENDOR_ID, id.vendor);
        c.set_u16(DEVICE_ID, id.device);
        c.bytes[REVISION_ID] = id.revision;
        c.bytes[REVISION_ID + 1] = id.class.2;
        c.bytes[REVISION_ID + 2] = id.class.1;
        c.bytes[REVISION_ID + 3] = id.class.0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, id.subsystem);
        c.set_mask_u16(COMMAND, COMMAND_WRITABLE);
        c.write_one_to_clear[STATUS..STATUS + 2]
            .copy_from_slice(&STATUS_WRITE_ONE_TO_CLEAR.to_le_bytes());
        c.write_mask[CACHE_LINE_SIZE] = 0xff;
        c.write_mask[LATENCY_TIMER] = 0xff;
        c.write_mask[INTERRUPT_LINE] = 0xff;
        c.at_reset.copy_from_slice(&c.bytes[..]);
        c
    }

    /// Sets the interrupt pin (1 = INTA# .. 4 = INTD#).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[INTERRUPT_PIN] = pin.min(4);
    }

    /// Declares BAR `index`. A 64-bit BAR takes `index + 1` as well.
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), PciError> {
        let wide = matches!(bar.kind, BarKind::Memory64 { .. });
        let min = if bar.kind.is_memory() { 16 } else { 4 };
        let last = index + usize::from(wide);
        if last >= 6 || self.bars[index].is_some() || (wide && self.bars[index + 1].is_some()) {
            return Err(PciError::BarSlot(index));
        }
        let max = match bar.kind {
            BarKind::Io => 1 << 16,
            BarKind::Memory32 => 1 << 31,
            BarKind::Memory64 { .. } => 1 << 62,
        };
        if !bar.size.is_power_of_two() || bar.size < min || bar.size > max {
            return Err(PciError::BarSize(bar.size));
        }
        self.bars[index] = Some(bar);
        let off = BAR0 + 4 * index;
        let low_mask = !(bar.size - 1) as u32 & if bar.kind.is_memory() { !0xf } else { !0x3 };
        self.set_mask_u32(off, low_mask);
        self.set_u32(off, bar.kind.type_bits());
        if wide {
            self.set_mask_u32(off + 4, (!(bar.size - 1) >> 32) as u32);
            // The upper half is no BAR of its own.
            self.bars[index + 1] = None;
        }
        Ok(())
    }

    /// The BARs declared, by index (the upper half of a 64-bit BAR is None).
    pub fn bars(&self) -> &[Option<Bar>; 6] {
        &self.bars
    }

    /// Places BAR `index` at `base` (the machine's initial assignment).
    pub fn set_bar_base(&mut self, index: usize, base: u64) {
        let Some(bar) = self.bars.get(index).copied().flatten() else {
            return;
        };
        let off = BAR0 + 4 * index;
        let low = (base as u32)
            & !((bar.size - 1) as u32)
            & if bar.kind.is_memory() { !0xf } else { !0x3 };
        self.set_u32(off, low | bar.kind.type_bits());
        if matches!(bar.kind, BarKind::Memory64 { .. }) {
            self.set_u32(off + 4, (base >> 32) as u32);
        }
    }

    /// BAR `index`'s base as programmed (whether or not decoding is on).
    pub fn bar_base(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let off = BAR0 + 4 * index;
        let low = u64::from(self.read_u32(off));
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 => low & !0xf,
            BarKind::Memory64 { .. } => (u64::from(self.read_u32(off + 4)) << 32) | (low & !0xf),
        })
    }

    /// The BARs that decode now: the command register enables their space,
    /// and the base is neither 0 nor the sizing pattern.
    pub fn decoding_regions(&self) -> impl Iterator<Item = BarRegion> + '_ {
        let command = self.read_u16(COMMAND);
        (0..6).filter_map(move |index| {
            let bar = self.bars[index]?;
            let enabled = if bar.kind.is_memory() {
                command & COMMAND_MEMORY != 0
            } else {
                command & COMMAND_IO != 0
            };
            let base = self.bar_base(index)?;
            // While the OS sizes a BAR it holds ~(size - 1), which ends at
            // the top of its space: not a place (and 4 GiB's top is the
            // firmware's, never a BAR's).
            let limit = match bar.kind {
                BarKind::Io => 1 << 16,
                BarKind::Memory32 => (1 << 32) - 1,
                BarKind::Memory64 { .. } => u64::MAX,
            };
            let fits = base.checked_add(bar.size).is_some_and(|end| end <= limit);
            (enabled && base != 0 && fits).then_some(BarRegion {
                index,
                kind: bar.kind,
                base,
                size: bar.size,
            })
        })
    }

    /// Appends a capability with ID `id` and `body` (the bytes after the ID
    /// and next pointer); `writable` masks which of the body's bits the guest
    /// may write (as long as `body`, or empty for none). Returns its offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciError> {
        let at = self.next_capability;
        let end = at + 2 + body.len();
        if end > LEGACY_CONFIG_SIZE || (!writable.is_empty() && writable.len() != body.len()) {
            return Err(PciError::CapabilitySpace);
        }
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..end].copy_from_slice(body);
        if !writable.is_empty() {
            self.write_mask[at + 2..end].copy_from_slice(writable);
        }
        let at_u8 = u8::try_from(at).map_err(|_| PciError::CapabilitySpace)?;
        match self.last_capability {
            Some(prev) => self.bytes[prev + 1] = at_u8,
            None => self.bytes[CAPABILITIES_POINTER] = at_u8,
        }
        self.last_capability = Some(at);
        self.next_capability = (end + 3) & !3;
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        Ok(at)
    }

    /// The capability list as a driver walks it: (offset, ID) of each, in
    /// order (at most 48: a list never holds more in 256 bytes).
    pub fn capabilities(&self) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut at = usize::from(self.bytes[CAPABILITIES_POINTER]);
        while at != 0 && at + 1 < LEGACY_CONFIG_SIZE && out.len() < 48 {
            out.push((at, self.bytes[at]));
            at = usize::from(self.bytes[at + 1]);
        }
        out
    }

    /// The offset of the first capability with ID `id`.
    pub fn find_capability(&self, id: u8) -> Option<usize> {
        self.capabilities()
            .into_iter()
            .find(|&(_, cap)| cap == id)
            .map(|(at, _)| at)
    }

    /// Makes the present bytes what a reset restores (the machine calls
    /// this once the function is placed: BARs assigned, capabilities in).
    pub fn set_reset_state(&mut self) {
        self.at_reset.copy_from_slice(&self.bytes[..]);
    }

    /// Back to the reset state: command 0 (no decoding, no DMA), status
    /// errors clear, the BARs where the machine placed them.
    pub fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.at_reset[..]);
    }

    /// The guest reads `data.len()` bytes at `offset`; past the space: 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// The guest writes `data` at `offset`: only writable bits change, ones
    /// written to write-one-to-clear bits clear them; past the space:
    /// dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SIZE) else {
                return;
            };
            let mask = self.write_mask[o];
            let old = self.bytes[o];
            self.bytes[o] = ((old & !mask) | (v & mask)) & !(v & self.write_one_to_clear[o]);
        }
    }

    /// A 16-bit register (the device's view).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// A 32-bit register (the device's view).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets a byte regardless of the write mask (the device's side).
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        if let Some(b) = self.bytes.get_mut(offset) {
            *b = v;
        }
    }

    /// Sets 16 bits regardless of the write mask (the device's side).
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset + i, b);
        }
    }

    /// Sets 32 bits regardless of the write mask (the device's side).
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset + i, b);
        }
    }

    fn set_mask_u16(&mut self, offset: usize, mask: u16) {
        self.write_mask[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    fn set_mask_u32(&mut self, offset: usize, mask: u32) {
        self.write_mask[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// The bytes, for a snapshot (the masks come from the device's type).
    pub fn state(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// Puts back bytes from [`ConfigSpace::state`]; the wrong length, and
    /// bytes of another function (vendor, device, revision, class, header
    /// type or subsystem not this function's), are refused.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), PciError> {
        if bytes.len() != CONFIG_SIZE {
            return Err(PciError::StateSize(bytes.len()));
        }
        const IDENTITY: [std::ops::Range<usize>; 4] =
            [0x00..0x04, 0x08..0x0c, 0x0e..0x0f, 0x2c..0x30];
        if let Some(r) = IDENTITY
            .iter()
            .find(|r| bytes[(*r).clone()] != self.bytes[(*r).clone()])
        {
            return Err(PciError::StateIdentity(r.start));
        }
        let fresh = self.bytes.clone();
        self.bytes.copy_from_slice(bytes);
        // The BARs through their write mask, as a guest's writes go: a base
        // aligned to the BAR's size and its type bits the function's (a
        // file's unaligned base could put a doorbell inside a fixed
        // device's window, where the bus's "fixed devices first" does not
        // reach: KVM takes the write).
        for o in BARS {
            let mask = self.write_mask[o];
            self.bytes[o] = (bytes[o] & mask) | (fresh[o] & !mask);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
