//! The PC's two cascaded 8259A interrupt controllers in user space, as
//! the datasheet describes them and QEMU's `i8259` models them, with the
//! ELCR (edge/level control) of the PIIX: for KVM's split irqchip, where
//! the kernel keeps only the local APICs. Linux uses the PICs only until
//! the IO-APIC is set up (and for the timer check); older or simpler
//! guests use them throughout.
//!
//! # Ports
//!
//! | port | read | write |
//! |---|---|---|
//! | 0x20 / 0xA0 | IRR, or ISR after OCW3 RIS; the poll byte after OCW3 P | ICW1 (bit 4), OCW3 (bit 3), else OCW2 |
//! | 0x21 / 0xA1 | IMR | ICW2-4 during initialisation, else OCW1 (IMR) |
//! | 0x4D0 / 0x4D1 | ELCR | ELCR (IRQ 0-2, 8 and 13 stay edge) |
//!
//! # Behaviour
//!
//! ICW1 starts initialisation (IMR, ISR and the modes cleared, IRR kept
//! for level-triggered lines); ICW2 sets the vector base (bits 3-7);
//! ICW3 is taken and ignored (the cascade is fixed: the slave on the
//! master's IRQ 2); ICW4 sets auto-EOI and special fully nested mode.
//! OCW2 does non-specific, specific and rotating EOIs and sets the lowest
//! priority; OCW3 selects IRR or ISR for reads, polls, and sets or clears
//! special mask mode. An edge-triggered line requests on its rising edge;
//! a level-triggered one (ELCR bit, or ICW1's LTIM) while it is high.
//! The master's INT output is [`PicOutput::set_intr`]; the CPU's
//! interrupt acknowledge is [`Pic::acknowledge`], which gives the vector
//! (the slave's through the cascade; IRQ 7's vector when nothing is
//! pending: the spurious interrupt).
//!
//! # Untrusted input
//!
//! Every sequence of writes leaves each field in range (vectors are a
//! base plus 0-7, the init state machine has four states); accesses of
//! the wrong width are refused (reads give all ones) and logged once.

use serde::{Deserialize, Serialize};
use vmm_qom::{InvalidState, Stateful};

use crate::log_once::FaultLog;

/// The master's command port.
pub const MASTER_PORT: u16 = 0x20;
/// The slave's command port.
pub const SLAVE_PORT: u16 = 0xA0;
/// The ELCR's first port (master; the slave's follows).
pub const ELCR_PORT: u16 = 0x4D0;
/// The master input the slave cascades into.
const CASCADE_IRQ: u8 = 2;
/// What the ELCR may set, master and slave (IRQ 0, 1, 2, 8 and 13 are
/// edge-triggered on a PC).
const ELCR_MASK: [u8; 2] = [0xF8, 0xDE];

/// Where the master's INT output goes (the boot CPU's LINT0, as ExtINT).
pub trait PicOutput: Send {
    /// The INT line is now `high`.
    fn set_intr(&mut self, high: bool);
}

/// One 8259A's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipState {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    /// The line levels last seen (edge detection).
    pub last_irr: u8,
    /// The input with the highest priority is `priority_add` (rotation).
    pub priority_add: u8,
    /// The vector base (ICW2, bits 3-7).
    pub irq_base: u8,
    /// OCW3: reads give the ISR (else the IRR).
    pub read_isr: bool,
    /// OCW3: the next command-port read is a poll.
    pub poll: bool,
    /// OCW3: special mask mode.
    pub special_mask: bool,
    /// 0: initialised; 1, 2, 3: expecting ICW2, ICW3, ICW4.
    pub init_state: u8,
    /// ICW1: ICW4 follows.
    pub init4: bool,
    /// ICW1: single (no ICW3).
    pub single_mode: bool,
    /// ICW1: every line level-triggered.
    pub ltim: bool,
    /// ICW4: automatic EOI.
    pub auto_eoi: bool,
    /// OCW2: rotate on automatic EOI.
    pub rotate_on_auto_eoi: bool,
    /// ICW4: special fully nested mode.
    pub special_fully_nested: bool,
    /// Edge/level control (1: level).
    pub elcr: u8,
}

/// Both chips: what a snapshot keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    /// The master (IRQ 0-7).
    pub master: ChipState,
    /// The slave (IRQ 8-15).
    pub slave: ChipState,
    /// The master's INT output as last set.
    pub intr: bool,
}

/// The highest-priority bit in `mask` relative to the rotation, 8 if none.
fn priority(chip: &ChipState, mask: u8) -> u8 {
    if mask == 0 {
        return 8;
    }
    let mut p = 0;
    while mask & (1 << ((p + chip.priority_add) & 7)) == 0 {
        p += 1;
    }
    p
}

impl ChipState {
    /// The input this chip would interrupt with, if any.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let p = priority(self, self.irr & !self.imr);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        (p < priority(self, in_service)).then_some((p + self.priority_add) & 7)
    }

    fn set_line(&mut self, irq: u8, high: bool) {
        let mask = 1 << irq;
        if self.ltim || self.elcr & mask != 0 {
            if high {
                self.irr |= mask;
                self.last_irr |= mask;
            } else {
                self.irr &= !mask;
                self.last_irr &= !mask;
            }
        } else if high {
            if self.last_irr & mask == 0 {
                self.irr |= mask;
            }
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    /// The CPU took input `irq`.
    fn intack(&mut self, irq: u8) {
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= 1 << irq;
        }
        // A level-triggered request stays while its line is high.
        if !self.ltim && self.elcr & (1 << irq) == 0 {
            self.irr &= !(1 << irq);
        }
    }

    /// ICW1's reset of the chip (the ELCR stays: it is the PIIX's).
    fn init_reset(&mut self) {
        *self = Self {
            irr: self.irr & self.elcr,
            elcr: self.elcr,
            ..Self::default()
        };
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.init_reset();
            self.init_state = 1;
            self.init4 = value & 0x01 != 0;
            self.single_mode = value & 0x02 != 0;
            self.ltim = value & 0x08 != 0;
        } else if value & 0x08 != 0 {
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            match value >> 5 {
                0 | 4 => self.rotate_on_auto_eoi = value >> 7 != 0,
                1 | 5 => {
                    let p = priority(self, self.isr);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if value >> 5 == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << (value & 7)),
                6 => self.priority_add = ((value & 7) + 1) & 7,
                7 => {
                    let irq = value & 7;
                    self.isr &= !(1 << irq);
                    self.priority_add = (irq + 1) & 7;
                }
                _ => {} // 2: no operation.
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_state {
            0 => self.imr = value,
            1 => {
                self.irq_base = value & 0xF8;
                self.init_state = match (self.single_mode, self.init4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            2 => self.init_state = if self.init4 { 3 } else { 0 },
            _ => {
                self.special_fully_nested = value & 0x10 != 0;
                self.auto_eoi = value & 0x02 != 0;
                self.init_state = 0;
            }
        }
    }
}

/// The two PICs and the ELCR.
#[derive(Debug)]
pub struct Pic<O: PicOutput> {
    state: PicState,
    output: O,
    faults: FaultLog,
}

const NAME: &str = "i8259";

impl<O: PicOutput> Pic<O> {
    /// Both chips at power-on, INT low.
    pub fn new(output: O) -> Self {
        Self {
            state: PicState::default(),
            output,
            faults: FaultLog::default(),
        }
    }

    /// The output, for the machine (and tests) to look at.
    pub fn output(&self) -> &O {
        &self.output
    }

    /// Whether INT is high.
    pub fn intr(&self) -> bool {
        self.state.intr
    }

    /// ISA line `irq` (0-15) is now `high`.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        match irq {
            0..=7 => self.state.master.set_line(irq, high),
            8..=15 => self.state.slave.set_line(irq - 8, high),
            _ => return,
        }
        self.update();
    }

    /// The cascade and the INT output after a change.
    fn update(&mut self) {
        let slave = self.state.slave.pending(false).is_some();
        self.state.master.set_line(CASCADE_IRQ, slave);
        let intr = self.state.master.pending(true).is_some();
        if intr != self.state.intr {
            self.state.intr = intr;
            self.output.set_intr(intr);
        }
    }

    /// The CPU's interrupt acknowledge: the vector to take (IRQ 7's, or
    /// the slave's IRQ 15's, for a spurious one).
    pub fn acknowledge(&mut self) -> u8 {
        let s = &mut self.state;
        let vector = match s.master.pending(true) {
            Some(CASCADE_IRQ) => {
                s.master.intack(CASCADE_IRQ);
                let irq = match s.slave.pending(false) {
                    Some(irq) => {
                        s.slave.intack(irq);
                        irq
                    }
                    None => 7,
                };
                s.slave.irq_base | irq
            }
            Some(irq) => {
                s.master.intack(irq);
                s.master.irq_base | irq
            }
            None => s.master.irq_base | 7,
        };
        self.update();
        vector
    }

    /// A poll (OCW3 P): the pending input with bit 7 set, or 0; it is
    /// acknowledged as an INTA would.
    fn poll(&mut self, slave: bool) -> u8 {
        let chip = if slave {
            &mut self.state.slave
        } else {
            &mut self.state.master
        };
        chip.poll = false;
        let value = match chip.pending(!slave) {
            Some(irq) => {
                chip.intack(irq);
                0x80 | irq
            }
            None => 0,
        };
        self.update();
        value
    }

    /// A guest read of `port` (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1).
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        let [byte] = data else {
            self.faults.record(
                NAME,
                format_args!("{}-byte read of port {port:#x} refused", data.len()),
            );
            data.fill(0xFF);
            return;
        };
        *byte = match port {
            MASTER_PORT | SLAVE_PORT => {
                let slave = port == SLAVE_PORT;
                let chip = if slave {
                    &self.state.slave
                } else {
                    &self.state.master
                };
                if chip.poll {
                    self.poll(slave)
                } else if chip.read_isr {
                    chip.isr
                } else {
                    chip.irr
                }
            }
            0x21 => self.state.master.imr,
            0xA1 => self.state.slave.imr,
            ELCR_PORT => self.state.master.elcr,
            0x4D1 => self.state.slave.elcr,
            _ => 0xFF,
        };
    }

    /// A guest write of `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        let [value] = *data else {
            self.faults.record(
                NAME,
                format_args!("{}-byte write of port {port:#x} dropped", data.len()),
            );
            return;
        };
        match port {
            MASTER_PORT => self.state.master.write_command(value),
            SLAVE_PORT => self.state.slave.write_command(value),
            0x21 => self.state.master.write_data(value),
            0xA1 => self.state.slave.write_data(value),
            ELCR_PORT => self.state.master.elcr = value & ELCR_MASK[0],
            0x4D1 => self.state.slave.elcr = value & ELCR_MASK[1],
            _ => return,
        }
        self.update();
    }
}

impl<O: PicOutput> Stateful for Pic<O> {
    const TYPE: &'static str = "i8259";
    type State = PicState;

    fn state(&self) -> PicState {
        self.state
    }

    /// Fields no write sequence can make (an init state past 3, a
    /// rotation past 7, a vector base with low bits, ELCR bits the PIIX
    /// fixes) are refused.
    fn restore(&mut self, state: PicState) -> Result<(), InvalidState> {
        for (name, chip, elcr_mask) in [
            ("master", &state.master, ELCR_MASK[0]),
            ("slave", &state.slave, ELCR_MASK[1]),
        ] {
            if chip.init_state > 3
                || chip.priority_add > 7
                || chip.irq_base & 7 != 0
                || chip.elcr & !elcr_mask != 0
            {
                return Err(InvalidState(format!("the {name} PIC's state: {chip:?}")));
            }
        }
        let intr = self.state.intr;
        self.state = state;
        self.state.intr = intr;
        self.update();
        Ok(())
    }

    fn reset(&mut self) {
        // Power-on, ELCR included (the firmware or the guest programs it
        // again); the lines' levels are the devices' and stay, so an edge
        // line held high through the reset makes no new request.
        for chip in [&mut self.state.master, &mut self.state.slave] {
            let last_irr = chip.last_irr;
            *chip = ChipState {
                last_irr,
                ..ChipState::default()
            };
        }
        self.update();
    }
}

#[cfg(test)]
mod tests;
