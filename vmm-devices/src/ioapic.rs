//! The IO-APIC in user space, as the 82093AA behaves and QEMU's `ioapic`
//! (version 0x20) models it: 24 input pins, each with a redirection entry
//! that turns the pin's interrupt into a message to the local APICs.
//! With KVM's split irqchip (only the local APICs in the kernel) the
//! machine puts this device at 0xFEC00000, routes each delivery as an MSI
//! ([`MsiSink`]), and forwards KVM's IO-APIC EOI exits to [`IoApic::eoi`].
//!
//! # Registers
//!
//! Two windows in the 4 KiB page: `IOREGSEL` (offset 0x00; the register
//! index, 8 bits) and `IOWIN` (offset 0x10; the selected register), both
//! 32-bit; and version 0x20's `EOI` register (offset 0x40: a write names
//! a vector, as a local APIC's EOI broadcast would). The indirect
//! registers:
//!
//! | index | register | what the guest may change |
//! |---|---|---|
//! | 0x00 | `IOAPICID` | bits 24-27 |
//! | 0x01 | `IOAPICVER` | nothing: version 0x20, highest entry 23 (bits 16-23) |
//! | 0x02 | `IOAPICARB` | nothing: reads the ID |
//! | 0x10 + 2n, 0x11 + 2n | redirection entry n (low, high dword) | all bits but delivery status (12) and Remote IRR (14) |
//!
//! A redirection entry: vector (0-7), delivery mode (8-10: fixed, lowest
//! priority, SMI, NMI, INIT, ExtINT; 3 and 6 reserved), destination mode
//! (11: physical or logical), delivery status (12), pin polarity (13),
//! Remote IRR (14), trigger mode (15: edge or level), mask (16),
//! destination (56-63). Reset masks every entry and clears the rest.
//!
//! # Pins
//!
//! [`IoApic::set_irq`] takes a pin's logical level (asserted or not), as
//! KVM's and QEMU's IO-APICs take their lines: the polarity bit is kept
//! for the guest to read back, and the machine's lines already say
//! "asserted". An edge-triggered pin delivers on each rising edge while
//! unmasked; a level-triggered pin delivers while asserted, unmasked and
//! its Remote IRR clear, and sets Remote IRR; the EOI of its vector clears
//! Remote IRR and delivers again if the pin is still asserted. A pin
//! asserted while masked (edge or level) is remembered in the IRR and
//! delivered when it is unmasked, as QEMU does.
//!
//! # The message
//!
//! Each delivery is an MSI as a local APIC takes it (the form KVM's
//! `KVM_SIGNAL_MSI` and MSI routes take): address `0xFEE00000 | dest << 12
//! | dest_mode << 2`, data `vector | delivery_mode << 8 | trigger << 15`
//! (bit 14, level assert, set for level-triggered entries). [`IoApic::route`]
//! gives each pin's message for the machine's MSI routes, so that KVM knows
//! which vectors are level-triggered and exits on their EOI.
//!
//! # Untrusted input
//!
//! Any width or offset: a read the device does not decode gives all ones,
//! a write is dropped (each counted and logged once). An index past the
//! table reads all ones. Reserved delivery modes and vectors 0-15 in the
//! fixed and lowest-priority modes (which a local APIC rejects as illegal)
//! are not delivered: counted and logged once.

use serde::{Deserialize, Serialize};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;
use vmm_qom::{InvalidState, Stateful};

use crate::log_once::FaultLog;

/// Where a PC has it.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Its window's size.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Input pins.
pub const NUM_PINS: usize = 24;
/// `IOAPICVER`'s version byte (QEMU's default, with the EOI register).
pub const VERSION: u32 = 0x20;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const REG_ID: u8 = 0x00;
const REG_VER: u8 = 0x01;
const REG_ARB: u8 = 0x02;
const REG_TABLE: u8 = 0x10;

/// Redirection entry bits.
mod entry {
    pub const VECTOR: u64 = 0xFF;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DEST_MODE: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DEST_SHIFT: u32 = 56;
    /// What the guest may not write.
    pub const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
}

/// Delivery modes.
mod mode {
    pub const FIXED: u8 = 0;
    pub const LOWEST: u8 = 1;
    pub const RESERVED_3: u8 = 3;
    pub const RESERVED_6: u8 = 6;
}

/// Where deliveries go: the local APICs, as MSIs.
pub trait MsiSink: Send {
    /// Delivers the message (see the module docs for its form).
    fn send_msi(&mut self, msg: MsiMessage);
}

/// An MSI as a local APIC takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsiMessage {
    /// `0xFEE00000 | dest << 12 | dest_mode << 2`.
    pub address: u64,
    /// `vector | delivery_mode << 8 | level << 14 | trigger << 15`.
    pub data: u32,
}

/// The IO-APIC's state: what a snapshot keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApicState {
    /// `IOAPICID`'s ID (bits 24-27 of the register, shifted down).
    pub id: u8,
    /// `IOREGSEL`.
    pub ioregsel: u8,
    /// Pins asserted (bit n: pin n) and not yet delivered, or held high.
    pub irr: u32,
    /// The pins' current levels (bit n: pin n asserted).
    pub levels: u32,
    /// The redirection table.
    pub table: [u64; NUM_PINS],
}

impl Default for IoApicState {
    fn default() -> Self {
        Self {
            id: 0,
            ioregsel: 0,
            irr: 0,
            levels: 0,
            table: [entry::MASKED; NUM_PINS],
        }
    }
}

/// Counters of what the guest got wrong, each logged once.
#[derive(Debug, Default)]
struct Faults {
    access: FaultLog,
    delivery: FaultLog,
}

/// The IO-APIC.
#[derive(Debug)]
pub struct IoApic<S: MsiSink> {
    state: IoApicState,
    sink: S,
    faults: Faults,
    /// Messages sent, for tests and statistics.
    delivered: u64,
}

const NAME: &str = "ioapic";

impl<S: MsiSink> IoApic<S> {
    /// An IO-APIC with ID 0 (the PC's MADT gives the IO-APIC the ID after
    /// the CPUs'; the guest writes it if it cares), every pin masked.
    pub fn new(sink: S) -> Self {
        Self {
            state: IoApicState::default(),
            sink,
            faults: Faults::default(),
            delivered: 0,
        }
    }

    /// An IO-APIC with `id` in `IOAPICID`.
    pub fn with_id(sink: S, id: u8) -> Self {
        let mut a = Self::new(sink);
        a.state.id = id & 0xF;
        a
    }

    /// The sink, for the machine (and tests) to look at.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Redirection entry `pin` (None past the table).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.state.table.get(pin).copied()
    }

    /// Pin `pin`'s line is now `asserted` (see the module docs).
    pub fn set_irq(&mut self, pin: usize, asserted: bool) {
        let Some(&e) = self.state.table.get(pin) else {
            return;
        };
        let bit = 1u32 << pin;
        let was = self.state.levels & bit != 0;
        if asserted {
            self.state.levels |= bit;
        } else {
            self.state.levels &= !bit;
        }
        if e & entry::LEVEL != 0 {
            if asserted {
                self.state.irr |= bit;
            } else {
                self.state.irr &= !bit;
            }
        } else if asserted && !was {
            self.state.irr |= bit;
        }
        self.service(pin);
    }

    /// The local APICs' EOI of `vector` (KVM's IO-APIC EOI exit, or a
    /// write to the EOI register): level-triggered entries with this
    /// vector and Remote IRR set clear it, and deliver again if their pin
    /// is still asserted.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..NUM_PINS {
            let e = self.state.table[pin];
            if e & entry::LEVEL == 0
                || e & entry::REMOTE_IRR == 0
                || (e & entry::VECTOR) as u8 != vector
            {
                continue;
            }
            self.state.table[pin] &= !entry::REMOTE_IRR;
            if self.state.levels & (1 << pin) != 0 {
                self.state.irr |= 1 << pin;
            }
            self.service(pin);
        }
    }

    /// Pin `pin`'s message as its entry says now (for the machine's MSI
    /// routes), or None for a masked pin or one past the table.
    pub fn route(&self, pin: usize) -> Option<MsiMessage> {
        let e = *self.state.table.get(pin)?;
        (e & entry::MASKED == 0).then(|| message(e))
    }

    /// Delivers pin `pin`'s pending interrupt if its entry lets it.
    fn service(&mut self, pin: usize) {
        let bit = 1u32 << pin;
        let e = self.state.table[pin];
        if self.state.irr & bit == 0 || e & entry::MASKED != 0 {
            return;
        }
        let level = e & entry::LEVEL != 0;
        if level && e & entry::REMOTE_IRR != 0 {
            return;
        }
        let delivery = delivery_mode(e);
        let vector = (e & entry::VECTOR) as u8;
        let illegal = matches!(delivery, mode::RESERVED_3 | mode::RESERVED_6)
            || (matches!(delivery, mode::FIXED | mode::LOWEST) && vector < 16);
        if illegal {
            self.faults.delivery.record(
                NAME,
                format_args!(
                    "pin {pin}: delivery mode {delivery} with vector {vector} not delivered"
                ),
            );
            // An edge is spent; a level stays pending until fixed.
            if !level {
                self.state.irr &= !bit;
            }
            return;
        }
        if level {
            self.state.table[pin] |= entry::REMOTE_IRR;
        } else {
            self.state.irr &= !bit;
        }
        self.delivered += 1;
        self.sink.send_msi(message(e));
    }

    /// The indirect register `index`.
    fn read_register(&self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.state.id) << 24,
            REG_VER => ((NUM_PINS as u32 - 1) << 16) | VERSION,
            i if i >= REG_TABLE => {
                let n = usize::from((i - REG_TABLE) / 2);
                match self.state.table.get(n) {
                    Some(&e) if (i - REG_TABLE) % 2 == 0 => e as u32,
                    Some(&e) => (e >> 32) as u32,
                    None => u32::MAX,
                }
            }
            _ => u32::MAX,
        }
    }

    /// A write of the indirect register `index`.
    fn write_register(&mut self, index: u8, value: u32) {
        match index {
            REG_ID => self.state.id = ((value >> 24) & 0xF) as u8,
            REG_VER | REG_ARB => {}
            i if i >= REG_TABLE => {
                let n = usize::from((i - REG_TABLE) / 2);
                let Some(&old) = self.state.table.get(n) else {
                    return;
                };
                let new = if (i - REG_TABLE) % 2 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(value)
                } else {
                    (old & 0xFFFF_FFFF) | (u64::from(value) << 32)
                };
                let mut e = (new & !entry::READ_ONLY) | (old & entry::READ_ONLY);
                // An edge-triggered entry has no Remote IRR.
                if e & entry::LEVEL == 0 {
                    e &= !entry::REMOTE_IRR;
                }
                self.state.table[n] = e;
                // A level pin still asserted, or a pin asserted while
                // masked, goes out once its entry lets it.
                if e & entry::LEVEL != 0 && self.state.levels & (1 << n) != 0 {
                    self.state.irr |= 1 << n;
                }
                self.service(n);
            }
            _ => {}
        }
    }

    /// A guest read at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (IOREGSEL, 4) => u32::from(self.state.ioregsel),
            (IOWIN, 4) => self.read_register(self.state.ioregsel),
            _ => {
                self.faults.access.record(
                    NAME,
                    format_args!("{}-byte read at {offset:#x} refused", data.len()),
                );
                data.fill(0xFF);
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.faults.access.record(
                NAME,
                format_args!("{}-byte write at {offset:#x} dropped", data.len()),
            );
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.state.ioregsel = value as u8,
            IOWIN => self.write_register(self.state.ioregsel, value),
            EOI => self.eoi(value as u8),
            _ => self
                .faults
                .access
                .record(NAME, format_args!("write at {offset:#x} dropped")),
        }
    }
}

fn delivery_mode(e: u64) -> u8 {
    ((e >> entry::DELIVERY_MODE_SHIFT) & 0x7) as u8
}

/// The MSI a redirection entry sends.
fn message(e: u64) -> MsiMessage {
    let dest = (e >> entry::DEST_SHIFT) & 0xFF;
    let logical = u64::from(e & entry::DEST_MODE != 0);
    let level = e & entry::LEVEL != 0;
    let mut data = (e & entry::VECTOR) as u32 | u32::from(delivery_mode(e)) << 8;
    if level {
        data |= 1 << 15 | 1 << 14;
    }
    MsiMessage {
        address: 0xFEE0_0000 | dest << 12 | logical << 2,
        data,
    }
}

impl<S: MsiSink> MutDeviceMmio for IoApic<S> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

impl<S: MsiSink> Stateful for IoApic<S> {
    const TYPE: &'static str = "ioapic";
    type State = IoApicState;

    fn state(&self) -> IoApicState {
        self.state
    }

    /// Any ID and table a guest could have written is taken; bits no
    /// guest can set (an ID past 4 bits, pins past 24) are refused.
    fn restore(&mut self, state: IoApicState) -> Result<(), InvalidState> {
        if state.id > 0xF {
            return Err(InvalidState(format!("IO-APIC ID {} past 4 bits", state.id)));
        }
        let pins = (1u64 << NUM_PINS) - 1;
        if u64::from(state.irr | state.levels) & !pins != 0 {
            return Err(InvalidState("IO-APIC pins past 24".into()));
        }
        self.state = state;
        Ok(())
    }

    fn reset(&mut self) {
        // The lines keep their levels: they are the devices', not ours.
        self.state = IoApicState {
            levels: self.state.levels,
            ..IoApicState::default()
        };
    }
}

#[cfg(test)]
mod tests;
