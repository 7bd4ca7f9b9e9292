//! COM port: a 16550A UART, as a bus adapter over [`vm_superio::Serial`].
//!
//! [`SerialDevice`] is eight byte-wide registers at offsets `0..=7` from the
//! port base (COM1 is 0x3F8). vm-superio does the register work; this layer
//! accepts only 1-byte accesses and fills in what a 16550A has and
//! vm-superio lacks, so Linux's 8250 driver probes it as a "16550A" and
//! strict drivers decode IIR correctly.
//!
//! # What this layer changes, and why
//!
//! | register | vm-superio alone | here | why |
//! |---|---|---|---|
//! | FCR (write, off 2) | ignored | bits 7, 6, 3, 0 stored; bit 1, or a change of bit 0, empties the RX FIFO | a 16550A's FIFO enable is visible in IIR, and the guest may flush typed-ahead input |
//! | IIR bits 7:6 | always `11` | `11` iff FCR bit 0 is set, else `00` | Linux's autoconfig writes FCR = 0x01 and expects `11` (16550A); after FCR = 0 a 16550A shows `00` |
//! | IIR id bits 3:0 | pending causes OR-ed: RX + THRE reads `0x6` ("line status") | highest priority wins: `0x4` (RX data); THRE is reported by the next IIR read that finds nothing else | a strict driver takes `0x6` for a line-status interrupt and reads LSR instead of RBR |
//! | MCR (write, off 4) | stored as written | stored `& 0x1F` | bits 7:5 read 0 on a 16550A |
//! | offsets > 7, any access not 1 byte wide | read 0 | read `0xFF`, write ignored, counted, logged once | unclaimed bus lines float high; the 8250 IER probe must fail on junk |
//!
//! Unchanged and already 16550A-like: IER masked to `0x0F` (the "UUE" bit 6
//! never sticks); SCR is a plain scratch byte; MSR mirrors MCR in loopback
//! (`MCR = 0x1A` reads `MSR & 0xF0 = 0x90`); with `LCR & 0x80`, offset 2
//! still reads IIR, which is never 0, so the EFR probes see no 16650; IIR bit
//! 5 stays 0, so no 16750. vm-superio re-raises THRE when IER.THRI is
//! written, so Linux's THRE and TXEN start-up tests pass without setting
//! `UART_BUG_THRE` or `UART_BUG_TXEN`.
//!
//! # What is not modelled (docs/devices.md §3.4)
//!
//! * The interrupt is an **edge**: each new cause fires the [`Trigger`] once
//!   (wire it as an irqfd on an edge-triggered pin, ISA IRQ 4 or 3). There is
//!   no level and no deassert; a THRE cause that was hidden behind RX data
//!   is re-reported in IIR but not re-signalled.
//! * No character-timeout interrupt, no line-status interrupt or LSR error
//!   bits (OE/PE/FE/BI), no modem-status deltas, no RX trigger levels.
//! * The RX buffer holds [`RX_FIFO_CAPACITY`] (64) bytes in FIFO and non-FIFO
//!   mode alike; the console is told how much fits, so nothing overruns.
//! * TX is instant: LSR always shows THRE | TEMT, and each THR byte is written
//!   to the output at once, on the vCPU thread.
//! * Reset LCR reads 0x03 (vm-superio's default), where QEMU reads 0x00.
//!
//! # Output must not block
//!
//! Every THR byte calls `write_all` + `flush` on the `Box<dyn Write + Send>`
//! from the vCPU thread, under the device's lock. The caller owns that
//! `Write` and must make it return promptly: for a pipe or terminal use a
//! non-blocking fd (a full pipe then gives `WouldBlock`, the byte is counted
//! as lost, and the guest carries on) or a bounded in-memory buffer drained by
//! another thread. A `Write` that blocks stalls that vCPU for as long as it
//! blocks.

use std::fmt;
use std::io::Write;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::serial::{Error as UartError, NoEvents, SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::error::Error;
use crate::irq::EventFdTrigger;
use crate::log_once::FaultLog;

/// Number of ports the UART decodes (offsets `0..=7`).
pub const SERIAL_PORT_LEN: u16 = 8;
/// Bytes the RX FIFO holds (vm-superio's buffer size).
pub const RX_FIFO_CAPACITY: usize = 64;

/// Where the guest's serial output goes.
pub type SerialOutput = Box<dyn Write + Send>;

// Register offsets.
/// RBR (read) / THR (write); DLL when LCR.DLAB = 1.
const DATA: u8 = 0;
/// IER; DLM when LCR.DLAB = 1.
const IER: u8 = 1;
/// IIR (read) / FCR (write), regardless of DLAB.
const IIR_FCR: u8 = 2;
/// LCR: line control; bit 7 is DLAB.
const LCR: u8 = 3;
/// MCR: modem control.
const MCR: u8 = 4;
/// SCR: scratch, the last register.
const LAST_REGISTER: u8 = 7;

/// LCR bit 7: divisor latch access (offsets 0 and 1 become DLL/DLM).
const LCR_DLAB: u8 = 0x80;
/// IER bit 1: interrupt when THR is empty.
const IER_THRI: u8 = 0x02;
/// IIR bit 0: no interrupt pending.
const IIR_NO_INT: u8 = 0x01;
/// IIR id 0x2: THR empty (priority 3).
const IIR_THRI: u8 = 0x02;
/// IIR id 0x4: received data available (priority 2).
const IIR_RDI: u8 = 0x04;
/// IIR bits 3:0: the interrupt id.
const IIR_ID_MASK: u8 = 0x0F;
/// IIR bits 7:6 = 11: FIFOs enabled (a 16550A).
const IIR_FIFO_ENABLED: u8 = 0xC0;
/// FCR bit 0: enable the FIFOs.
const FCR_ENABLE_FIFO: u8 = 0x01;
/// FCR bit 1: empty the RX FIFO (self-clearing).
const FCR_CLEAR_RCVR: u8 = 0x02;
/// FCR bits a 16550A keeps: RX trigger (7:6), DMA mode (3), enable (0).
const FCR_STORED_BITS: u8 = 0xC9;
/// MCR bit 4: loopback.
const MCR_LOOP: u8 = 0x10;
/// MCR bits that exist on a 16550A: DTR, RTS, OUT1, OUT2, LOOP.
const MCR_VALID_BITS: u8 = 0x1F;

const NAME: &str = "serial";

/// Everything a [`SerialDevice`] needs to be rebuilt: vm-superio's registers
/// and RX buffer, plus what this layer adds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    /// vm-superio's registers and RX buffer.
    #[serde(with = "crate::stateful::UartRegisters")]
    pub uart: SerialState,
    /// The FIFO control register as stored (`value & 0xC9`).
    pub fcr: u8,
    /// A THR-empty cause hidden behind RX data, to report in IIR next.
    pub thre_deferred: bool,
}

/// A 16550A UART on eight consecutive ports, interrupting through `T`.
///
/// Register it for [`SERIAL_PORT_LEN`] ports at the COM base; the offset is
/// the register. `E` receives vm-superio's [`SerialEvents`] (for example
/// `in_buffer_empty`, which tells a console it may send more input).
pub struct SerialDevice<T: Trigger = EventFdTrigger, E: SerialEvents = NoEvents> {
    uart: Serial<T, E, SerialOutput>,
    fcr: u8,
    thre_deferred: bool,
    /// Shadow of MCR.LOOP: input is refused while the guest loops back.
    loopback: bool,
    bad_accesses: FaultLog,
    lost_tx: FaultLog,
    irq_faults: FaultLog,
}

impl<T: Trigger> SerialDevice<T, NoEvents> {
    /// A UART in its reset state that writes the guest's output to `out`
    /// (see the module docs: `out` must not block) and signals `irq`.
    pub fn new(irq: T, out: SerialOutput) -> Self {
        SerialDevice::with_events(irq, NoEvents, out)
    }
}

impl<T: Trigger, E: SerialEvents> SerialDevice<T, E> {
    /// Like [`SerialDevice::new`], reporting events to `events`.
    pub fn with_events(irq: T, events: E, out: SerialOutput) -> Self {
        Self::wrap(Serial::with_events(irq, events, out), 0, false)
    }

    /// Rebuilds a UART from `state`; fires `irq` if an enabled cause is pending.
    pub fn from_state(
        state: &SerialDeviceState,
        irq: T,
        events: E,
        out: SerialOutput,
    ) -> Result<Self, Error> {
        let uart = Serial::from_state(&state.uart, irq, events, out).map_err(|e| match e {
            UartError::Trigger(e) => Error::Trigger(format!("{e:?}")),
            _ => Error::QueueOverflow {
                what: "serial RX FIFO",
                len: state.uart.in_buffer.len(),
                capacity: RX_FIFO_CAPACITY,
            },
        })?;
        let mut dev = Self::wrap(uart, state.fcr & FCR_STORED_BITS, state.thre_deferred);
        dev.loopback = state.uart.modem_control & MCR_LOOP != 0;
        Ok(dev)
    }

    fn wrap(uart: Serial<T, E, SerialOutput>, fcr: u8, thre_deferred: bool) -> Self {
        Self {
            uart,
            fcr,
            thre_deferred,
            loopback: false,
            bad_accesses: FaultLog::default(),
            lost_tx: FaultLog::default(),
            irq_faults: FaultLog::default(),
        }
    }

    /// The current state, for snapshots and tests.
    pub fn state(&self) -> SerialDeviceState {
        SerialDeviceState {
            uart: self.uart.state(),
            fcr: self.fcr,
            thre_deferred: self.thre_deferred,
        }
    }

    /// The interrupt line.
    pub fn irq(&self) -> &T {
        self.uart.interrupt_evt()
    }

    /// The events sink.
    pub fn events(&self) -> &E {
        self.uart.events()
    }

    /// The output, e.g. to flush it.
    pub fn output_mut(&mut self) -> &mut SerialOutput {
        self.uart.writer_mut()
    }

    /// Accesses refused by the bus adapter: wrong size or offset > 7.
    pub fn invalid_accesses(&self) -> u64 {
        self.bad_accesses.count()
    }

    /// THR bytes the output refused (they are lost; the guest is not told).
    pub fn lost_output_bytes(&self) -> u64 {
        self.lost_tx.count()
    }

    /// Bytes [`enqueue_input`](Self::enqueue_input) would accept now: the
    /// free room in the RX FIFO, or 0 while the guest holds the UART in
    /// loopback mode.
    pub fn fifo_capacity_left(&self) -> usize {
        if self.loopback {
            0
        } else {
            self.uart.fifo_capacity()
        }
    }

    /// Offers console input to the guest. Returns how many leading bytes of
    /// `input` were taken (at most [`fifo_capacity_left`](Self::fifo_capacity_left));
    /// the caller keeps the rest and offers it again after
    /// [`SerialEvents::in_buffer_empty`], which fires when the guest drains
    /// the FIFO or leaves loopback mode. Nothing is dropped.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.fifo_capacity_left();
        let take = input.len().min(room);
        if take == 0 {
            return 0;
        }
        let Some(chunk) = input.get(..take) else {
            return 0;
        };
        if let Err(e) = self.uart.enqueue_raw_bytes(chunk) {
            self.uart_error(&e);
        }
        // The bytes are in the FIFO even when raising the interrupt failed.
        room.saturating_sub(self.uart.fifo_capacity())
    }

    /// A register read at `offset` (`0..=7`; anything else reads 0xFF).
    pub fn read(&mut self, offset: u8) -> u8 {
        match offset {
            IIR_FCR => self.read_iir(),
            0..=LAST_REGISTER => self.uart.read(offset),
            _ => 0xFF,
        }
    }

    /// A register write at `offset` (`0..=7`; anything else is ignored).
    pub fn write(&mut self, offset: u8, value: u8) {
        let result = match offset {
            DATA if !self.dlab() => {
                // Writing THR acknowledges a THR-empty cause.
                self.thre_deferred = false;
                self.uart.write(DATA, value)
            }
            IER if !self.dlab() => {
                // vm-superio re-evaluates THRE itself on every IER write.
                self.thre_deferred = false;
                self.uart.write(IER, value)
            }
            IIR_FCR => {
                self.write_fcr(value);
                Ok(())
            }
            MCR => self.write_mcr(value),
            0..=LAST_REGISTER => self.uart.write(offset, value),
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.uart_error(&e);
        }
    }

    fn dlab(&mut self) -> bool {
        // Reading LCR has no side effect.
        self.uart.read(LCR) & LCR_DLAB != 0
    }

    /// IIR with the FIFO bits following FCR and the id in priority order.
    fn read_iir(&mut self) -> u8 {
        // Reading IIR in vm-superio clears every pending indication.
        let raw = self.uart.read(IIR_FCR);
        // Offset 1 reads DLM while DLAB is set: then take IER from the state
        // (a copy, so only in that rare case).
        let ier = if self.dlab() {
            self.uart.state().interrupt_enable
        } else {
            self.uart.read(IER)
        };
        let thri_enabled = ier & IER_THRI != 0;
        let id = match raw & IIR_ID_MASK {
            // Both RX data and THRE pending: RX data has the higher priority;
            // THRE stays pending until an IIR read shows it (or THR is written).
            id if id == IIR_RDI | IIR_THRI => {
                self.thre_deferred = thri_enabled;
                IIR_RDI
            }
            IIR_NO_INT if self.thre_deferred => {
                self.thre_deferred = false;
                if thri_enabled {
                    IIR_THRI
                } else {
                    IIR_NO_INT
                }
            }
            IIR_THRI => {
                self.thre_deferred = false;
                IIR_THRI
            }
            id => id,
        };
        let fifo = if self.fcr & FCR_ENABLE_FIFO != 0 {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        fifo | id
    }

    fn write_fcr(&mut self, value: u8) {
        let toggled = (self.fcr ^ value) & FCR_ENABLE_FIFO != 0;
        if toggled || value & FCR_CLEAR_RCVR != 0 {
            self.clear_rx_fifo();
        }
        // TX is instant, so the TX FIFO is always empty: FCR bit 2 has nothing
        // to clear.
        self.fcr = value & FCR_STORED_BITS;
    }

    /// Empties the RX FIFO by reading RBR until it is empty (vm-superio has
    /// no flush). Its `in_buffer_empty` event tells the console to resume.
    fn clear_rx_fifo(&mut self) {
        let lcr = self.uart.read(LCR);
        let mut result = Ok(());
        if lcr & LCR_DLAB != 0 {
            // With DLAB set, offset 0 is DLL: drop DLAB for the drain.
            result = self.uart.write(LCR, lcr & !LCR_DLAB);
        }
        for _ in 0..RX_FIFO_CAPACITY {
            if self.uart.fifo_capacity() >= RX_FIFO_CAPACITY {
                break;
            }
            self.uart.read(DATA);
        }
        if lcr & LCR_DLAB != 0 {
            result = result.and(self.uart.write(LCR, lcr));
        }
        if let Err(e) = result {
            self.uart_error(&e);
        }
    }

    fn write_mcr(&mut self, value: u8) -> Result<(), UartError<T::E>> {
        let value = value & MCR_VALID_BITS;
        let was_loopback = self.loopback;
        self.loopback = value & MCR_LOOP != 0;
        let result = self.uart.write(MCR, value);
        if was_loopback && !self.loopback && self.uart.fifo_capacity() > 0 {
            // Input was refused during loopback: let the console retry.
            self.uart.events().in_buffer_empty();
        }
        result
    }

    fn uart_error(&mut self, e: &UartError<T::E>) {
        match e {
            UartError::IOError(e) => self
                .lost_tx
                .record(NAME, format_args!("output byte lost: {e}")),
            UartError::Trigger(e) => self
                .irq_faults
                .record(NAME, format_args!("cannot signal the interrupt: {e:?}")),
            UartError::FullFifo => self
                .bad_accesses
                .record(NAME, format_args!("input offered to a full FIFO")),
        }
    }
}

impl<T: Trigger, E: SerialEvents> fmt::Debug for SerialDevice<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialDevice")
            .field("state", &self.state())
            .field("invalid_accesses", &self.bad_accesses.count())
            .field("lost_output_bytes", &self.lost_tx.count())
            .field("irq_faults", &self.irq_faults.count())
            .finish_non_exhaustive()
    }
}

impl<T: Trigger, E: SerialEvents> MutDevicePio for SerialDevice<T, E> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (register(offset), &mut *data) {
            (Some(reg), [byte]) => *byte = self.read(reg),
            _ => self.bad_accesses.refuse_read(NAME, base, offset, data),
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (register(offset), data) {
            (Some(reg), [byte]) => self.write(reg, *byte),
            _ => self.bad_accesses.refuse_write(NAME, base, offset, data),
        }
    }
}

/// The register at a bus offset, if the offset is one.
fn register(offset: PioAddressOffset) -> Option<u8> {
    u8::try_from(offset).ok().filter(|r| *r <= LAST_REGISTER)
}

#[cfg(test)]
mod tests;
