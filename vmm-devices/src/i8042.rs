//! i8042 keyboard controller: the reset line, and the commands Linux probes.
//!
//! vm-superio's `I8042Device` only knows 0xFE and reads every port as 0, which
//! Linux's i8042 driver would take for a stuck controller; this is a small
//! model of docs/devices.md §6 instead:
//!
//! * port **0x60** (data): reads pop the output queue (0x00 when empty);
//!   writes are the parameter of a pending command, or go to a keyless PS/2
//!   keyboard that answers like a real one (see [`KeyboardState`]);
//! * port **0x64**: reads are the status register (IBF always 0, so Linux's
//!   `kb_wait` never spins), writes are controller commands.
//!
//! Commands: 0x20/0x60 read/write the configuration byte (CTR), 0xA7/0xA8
//! and 0xAD/0xAE disable/enable the AUX and keyboard ports, 0xA9/0xAB
//! interface tests (0x00 = OK), 0xAA self-test (0x55, sets status SYS), 0xC0
//! read input port (0x80), 0xD0/0xD1 read/write the output port, 0xD2/0xD3
//! put the next data byte in the keyboard/AUX output queue (0xD3 is Linux's
//! AUX loopback test), 0xD4 sends a byte to the AUX device (there is none:
//! dropped), 0xDD/0xDF A20 off/on, 0xF0..=0xFF pulse output-port bits (an
//! even value pulses bit 0, the CPU reset). Others are logged and ignored.
//!
//! **Reset:** command 0xFE (any even 0xF0..=0xFE), or 0xD1 with bit 0 of the
//! data clear, fires the reset [`Trigger`] once and latches. Further requests
//! are ignored until the machine calls [`I8042::reset`] as part of resetting
//! the machine (Linux's `reboot=k` writes 0xFE up to ten times, and the vCPU
//! keeps running until the machine stops it). The machine decides what a
//! reset means (reboot, or exit).
//!
//! **IRQ 1:** the keyboard-interrupt [`Trigger`] fires once for each byte of
//! keyboard data that reaches the head of the queue while CTR bit 0 (KBDINT)
//! is set and bit 4 (KBDDIS) clear, and when CTR is changed so that pending
//! data becomes deliverable. Controller replies count as keyboard data, as in
//! QEMU. That is an edge per byte, as a real 8042 gives on an ISA
//! edge-triggered IRQ 1. AUX data (only from 0xD3) raises no IRQ: without an
//! IRQ 12 Linux's AUX probe times out after 250 ms and gives up on the AUX
//! port; guests should pass `i8042.noaux`.
//!
//! **Ports:** the device decodes the absolute port `base + offset`, so it
//! works registered either as one 5-port range at 0x60 or, when 0x61 (system
//! control port B) is another device, as two 1-port ranges at 0x60 and 0x64
//! sharing one instance. Only 1-byte accesses are accepted: others read
//! 0xFF, are ignored when written, and are counted (logged once).

mod keyboard;

use std::collections::VecDeque;

pub use keyboard::KeyboardState;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::error::Error;
use crate::irq::{fire, EventFdTrigger, Trigger};
use crate::log_once::FaultLog;

/// The data port.
pub const DATA_PORT: u16 = 0x60;
/// The command (write) / status (read) port.
pub const COMMAND_PORT: u16 = 0x64;
/// Bytes the output queue holds (Linux flushes at most 16).
pub const OUTPUT_QUEUE_LEN: usize = 16;

// Status register (port 0x64, read).
/// Output buffer full: a byte waits at 0x60.
const STS_OBF: u8 = 0x01;
/// System flag: set by a successful self-test.
const STS_SYS: u8 = 0x04;
/// The last write went to 0x64 (a command), not 0x60.
const STS_CMD: u8 = 0x08;
/// Keyboard not inhibited by the key lock.
const STS_UNLOCKED: u8 = 0x10;
/// The byte at 0x60 comes from the AUX port.
const STS_AUX_OBF: u8 = 0x20;

// Controller configuration byte (CTR).
/// Raise IRQ 1 for keyboard data.
const CTR_KBD_INT: u8 = 0x01;
/// Keyboard port disabled.
const CTR_KBD_DISABLE: u8 = 0x10;
/// AUX port disabled.
const CTR_AUX_DISABLE: u8 = 0x20;
/// Translate set 2 to set 1.
const CTR_XLATE: u8 = 0x40;
/// CTR after reset (QEMU): KBD and AUX interrupts on.
const CTR_RESET_VALUE: u8 = 0x03;

// Output port (P2).
/// CPU reset, active low.
const P2_RESET_N: u8 = 0x01;
/// A20 gate.
const P2_A20: u8 = 0x02;
/// P2 after reset (QEMU): reset high, A20 on.
const P2_RESET_VALUE: u8 = 0xCF;

// Controller commands (port 0x64, write).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xA7;
const CMD_AUX_ENABLE: u8 = 0xA8;
const CMD_AUX_TEST: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_KBD_TEST: u8 = 0xAB;
const CMD_KBD_DISABLE: u8 = 0xAD;
const CMD_KBD_ENABLE: u8 = 0xAE;
const CMD_READ_INPUT: u8 = 0xC0;
const CMD_READ_OUTPUT: u8 = 0xD0;
const CMD_WRITE_OUTPUT: u8 = 0xD1;
const CMD_WRITE_KBD_OBUF: u8 = 0xD2;
const CMD_WRITE_AUX_OBUF: u8 = 0xD3;
const CMD_WRITE_AUX: u8 = 0xD4;
const CMD_A20_OFF: u8 = 0xDD;
const CMD_A20_ON: u8 = 0xDF;
/// 0xF0..=0xFF: pulse the output-port bits whose command bit is 0.
const CMD_PULSE_FIRST: u8 = 0xF0;

// Replies.
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// Input port: keyboard not inhibited.
const INPUT_PORT: u8 = 0x80;

const NAME: &str = "i8042";

/// What the next write to port 0x60 means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PendingWrite {
    /// A byte for the keyboard.
    #[default]
    Keyboard,
    /// The new CTR (after 0x60).
    Ctr,
    /// The new output port (after 0xD1).
    OutputPort,
    /// A byte to queue as keyboard data (after 0xD2).
    KeyboardOutput,
    /// A byte to queue as AUX data (after 0xD3).
    AuxOutput,
    /// A byte for the AUX device (after 0xD4).
    AuxDevice,
}

/// Who a queued byte comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    /// The keyboard port, or the controller itself.
    Keyboard,
    /// The AUX (mouse) port.
    Aux,
}

/// One byte waiting in the output queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputByte {
    /// The byte.
    pub byte: u8,
    /// Its source.
    pub source: Source,
}

/// The controller's whole state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Output port P2.
    pub output_port: u8,
    /// Status SYS: a self-test passed.
    pub self_test_passed: bool,
    /// Status A2: the last write was a command.
    pub last_write_was_command: bool,
    /// The meaning of the next data write.
    pub pending: PendingWrite,
    /// Bytes waiting at port 0x60, next first (at most [`OUTPUT_QUEUE_LEN`]).
    pub output: VecDeque<OutputByte>,
    /// The keyboard behind the controller.
    pub keyboard: KeyboardState,
    /// A reset was requested and not yet carried out.
    pub reset_requested: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            ctr: CTR_RESET_VALUE,
            output_port: P2_RESET_VALUE,
            self_test_passed: false,
            last_write_was_command: true,
            pending: PendingWrite::default(),
            output: VecDeque::new(),
            keyboard: KeyboardState::default(),
            reset_requested: false,
        }
    }
}

/// The i8042 on ports 0x60 and 0x64, with a reset line (`R`: a machine's
/// request, which may be wired apart from the interrupt lines) and IRQ 1.
#[derive(Debug)]
pub struct I8042<T: Trigger = EventFdTrigger, R: Trigger = T> {
    state: I8042State,
    reset_line: R,
    kbd_irq: T,
    /// Whether the last byte at the head of the queue was signalled.
    irq_high: bool,
    bad_accesses: FaultLog,
    dropped: FaultLog,
    unsupported: FaultLog,
    line_faults: FaultLog,
}

impl<T: Trigger, R: Trigger> I8042<T, R> {
    /// A controller in its power-on state. `reset_line` fires on a guest
    /// reset request, `kbd_irq` is IRQ 1.
    pub fn new(reset_line: R, kbd_irq: T) -> Self {
        Self {
            state: I8042State::default(),
            reset_line,
            kbd_irq,
            irq_high: false,
            bad_accesses: FaultLog::default(),
            dropped: FaultLog::default(),
            unsupported: FaultLog::default(),
            line_faults: FaultLog::default(),
        }
    }

    /// Rebuilds a controller from `state`; fires IRQ 1 if keyboard data is
    /// deliverable.
    pub fn from_state(state: &I8042State, reset_line: R, kbd_irq: T) -> Result<Self, Error> {
        if state.output.len() > OUTPUT_QUEUE_LEN {
            return Err(Error::QueueOverflow {
                what: "i8042 output queue",
                len: state.output.len(),
                capacity: OUTPUT_QUEUE_LEN,
            });
        }
        let mut dev = Self::new(reset_line, kbd_irq);
        dev.state = state.clone();
        dev.update_irq();
        Ok(dev)
    }

    /// The current state.
    pub fn state(&self) -> I8042State {
        self.state.clone()
    }

    /// Replaces the state (a snapshot restore) after checking it; fires
    /// IRQ 1 if keyboard data is deliverable. On an error nothing changes.
    pub fn restore(&mut self, state: &I8042State) -> Result<(), Error> {
        if state.output.len() > OUTPUT_QUEUE_LEN {
            return Err(Error::QueueOverflow {
                what: "i8042 output queue",
                len: state.output.len(),
                capacity: OUTPUT_QUEUE_LEN,
            });
        }
        if !(1..=3).contains(&state.keyboard.scancode_set) {
            return Err(Error::OutOfRange {
                what: "keyboard scan-code set",
                value: u64::from(state.keyboard.scancode_set),
            });
        }
        self.state = state.clone();
        self.irq_high = false;
        self.update_irq();
        Ok(())
    }

    /// Back to the power-on state; re-arms the reset line. The machine calls
    /// this when it resets the machine.
    pub fn reset(&mut self) {
        self.state = I8042State::default();
        self.irq_high = false;
    }

    /// A reset was requested since the last [`reset`](Self::reset).
    pub fn reset_requested(&self) -> bool {
        self.state.reset_requested
    }

    /// The reset line.
    pub fn reset_line(&self) -> &R {
        &self.reset_line
    }

    /// The IRQ 1 line.
    pub fn keyboard_irq(&self) -> &T {
        &self.kbd_irq
    }

    /// Accesses refused by the bus adapter (wrong size or port).
    pub fn invalid_accesses(&self) -> u64 {
        self.bad_accesses.count()
    }

    /// Bytes dropped because the output queue was full.
    pub fn dropped_output_bytes(&self) -> u64 {
        self.dropped.count()
    }

    /// A read of the status register (port 0x64).
    pub fn read_status(&self) -> u8 {
        let s = &self.state;
        let mut status = STS_UNLOCKED;
        if s.self_test_passed {
            status |= STS_SYS;
        }
        if s.last_write_was_command {
            status |= STS_CMD;
        }
        if let Some(head) = s.output.front() {
            status |= STS_OBF;
            if head.source == Source::Aux {
                status |= STS_AUX_OBF;
            }
        }
        status
    }

    /// A read of the data port (0x60): the next queued byte, or 0x00.
    pub fn read_data(&mut self) -> u8 {
        match self.state.output.pop_front() {
            Some(OutputByte { byte, .. }) => {
                // The output buffer emptied; the next byte, if any, is a new
                // arrival and gets its own edge.
                self.irq_high = false;
                self.update_irq();
                byte
            }
            None => 0x00,
        }
    }

    /// A write to the data port (0x60).
    pub fn write_data(&mut self, value: u8) {
        self.state.last_write_was_command = false;
        match std::mem::take(&mut self.state.pending) {
            PendingWrite::Keyboard => {
                let translated = self.state.ctr & CTR_XLATE != 0;
                let reply = self.state.keyboard.receive(value, translated);
                for &byte in reply.as_slice() {
                    self.push(byte, Source::Keyboard);
                }
            }
            PendingWrite::Ctr => self.set_ctr(value),
            PendingWrite::OutputPort => {
                self.state.output_port = value;
                if value & P2_RESET_N == 0 {
                    self.request_reset("output port bit 0 cleared");
                }
            }
            PendingWrite::KeyboardOutput => self.push(value, Source::Keyboard),
            PendingWrite::AuxOutput => self.push(value, Source::Aux),
            PendingWrite::AuxDevice => {
                log::debug!("{NAME}: byte {value:#04x} for the absent AUX device")
            }
        }
    }

    /// A write to the command port (0x64).
    pub fn write_command(&mut self, cmd: u8) {
        self.state.last_write_was_command = true;
        // A new command abandons a parameter that never came.
        self.state.pending = PendingWrite::Keyboard;
        let ctr = self.state.ctr;
        match cmd {
            CMD_READ_CTR => self.push(ctr, Source::Keyboard),
            CMD_WRITE_CTR => self.state.pending = PendingWrite::Ctr,
            CMD_AUX_DISABLE => self.set_ctr(ctr | CTR_AUX_DISABLE),
            CMD_AUX_ENABLE => self.set_ctr(ctr & !CTR_AUX_DISABLE),
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(INTERFACE_OK, Source::Keyboard),
            CMD_SELF_TEST => {
                self.state.self_test_passed = true;
                self.push(SELF_TEST_OK, Source::Keyboard);
            }
            CMD_KBD_DISABLE => self.set_ctr(ctr | CTR_KBD_DISABLE),
            CMD_KBD_ENABLE => self.set_ctr(ctr & !CTR_KBD_DISABLE),
            CMD_READ_INPUT => self.push(INPUT_PORT, Source::Keyboard),
            CMD_READ_OUTPUT => self.push(self.state.output_port, Source::Keyboard),
            CMD_WRITE_OUTPUT => self.state.pending = PendingWrite::OutputPort,
            CMD_WRITE_KBD_OBUF => self.state.pending = PendingWrite::KeyboardOutput,
            CMD_WRITE_AUX_OBUF => self.state.pending = PendingWrite::AuxOutput,
            CMD_WRITE_AUX => self.state.pending = PendingWrite::AuxDevice,
            CMD_A20_OFF => self.state.output_port &= !P2_A20,
            CMD_A20_ON => self.state.output_port |= P2_A20,
            CMD_PULSE_FIRST..=u8::MAX => {
                // A 0 bit in the low nibble pulses that output-port line low.
                if cmd & P2_RESET_N == 0 {
                    self.request_reset("pulse command");
                }
            }
            _ => self
                .unsupported
                .record(NAME, format_args!("unsupported command {cmd:#04x} ignored")),
        }
    }

    fn set_ctr(&mut self, value: u8) {
        self.state.ctr = value;
        self.update_irq();
    }

    fn push(&mut self, byte: u8, source: Source) {
        if self.state.output.len() >= OUTPUT_QUEUE_LEN {
            self.dropped.record(
                NAME,
                format_args!("output queue full, byte {byte:#04x} dropped"),
            );
            return;
        }
        self.state.output.push_back(OutputByte { byte, source });
        self.update_irq();
    }

    /// Fires IRQ 1 when keyboard data at the head of the queue becomes
    /// deliverable.
    fn update_irq(&mut self) {
        let ctr = self.state.ctr;
        let level = matches!(
            self.state.output.front(),
            Some(OutputByte {
                source: Source::Keyboard,
                ..
            })
        ) && ctr & CTR_KBD_INT != 0
            && ctr & CTR_KBD_DISABLE == 0;
        if level && !self.irq_high {
            fire(&self.kbd_irq, &mut self.line_faults, NAME, "IRQ 1");
        }
        self.irq_high = level;
    }

    fn request_reset(&mut self, why: &str) {
        if self.state.reset_requested {
            log::debug!("{NAME}: reset already requested ({why})");
            return;
        }
        self.state.reset_requested = true;
        log::info!("{NAME}: guest requested a system reset ({why})");
        fire(&self.reset_line, &mut self.line_faults, NAME, "reset");
    }
}

impl<T: Trigger, R: Trigger> MutDevicePio for I8042<T, R> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (base.0.checked_add(offset), &mut *data) {
            (Some(DATA_PORT), [byte]) => *byte = self.read_data(),
            (Some(COMMAND_PORT), [byte]) => *byte = self.read_status(),
            _ => self.bad_accesses.refuse_read(NAME, base, offset, data),
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (base.0.checked_add(offset), data) {
            (Some(DATA_PORT), [byte]) => self.write_data(*byte),
            (Some(COMMAND_PORT), [byte]) => self.write_command(*byte),
            _ => self.bad_accesses.refuse_write(NAME, base, offset, data),
        }
    }
}

#[cfg(test)]
mod tests;
