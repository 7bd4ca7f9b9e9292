//! Every device of this crate as a [`Stateful`] device of the device model
//! (vmm-qom): its registry type name, its plain state, a checked restore
//! and its reset. The machine keeps them as [`vmm_qom::Device`]s to reset,
//! save and load them all alike.
//!
//! | type | device | state |
//! |---|---|---|
//! | `isa-serial` | [`SerialDevice`] | [`SerialDeviceState`] |
//! | `i8042` | [`I8042`] | [`I8042State`] |
//! | `acpi-pm1-evt` | [`Pm1Event`] | [`Pm1EventState`] |
//! | `acpi-pm1-cnt` | [`Pm1Control`] | [`Pm1ControlState`] |
//! | `isa-pit` | [`Pit`] | [`PitState`] |
//! | `mc146818rtc` | [`Rtc`] | [`RtcState`] |
//! | `port61` | [`Port61`] | [`Port61State`] |
//! | `port80` | [`Port80`] | [`Port80State`] |
//! | `pvpanic` | [`PvPanic`] | none (nothing guest-visible is kept) |
//! | `ib700` | [`crate::Ib700`] (in its own module) | [`crate::Ib700State`] |
//! | `ioapic` | [`crate::IoApic`] (in its own module) | [`crate::IoApicState`] |
//! | `i8259` | [`crate::Pic`] (in its own module) | [`crate::PicState`] |

use std::io;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::Trigger;
use vmm_qom::{InvalidState, Stateful};

use crate::acpi_pm::{Pm1ControlState, Pm1EventState};
use crate::pit::{Pit, PitState};
use crate::port61::PitChannel2;
use crate::rtc::{Rtc, RtcState, CMOS_SIZE};
use crate::serial::{SerialDevice, SerialDeviceState, RX_FIFO_CAPACITY};
use crate::{
    EventFdTrigger, I8042State, Pm1Control, Pm1Event, Port61, Port61State, Port80, Port80State,
    PvPanic, I8042,
};
use vm_superio::serial::SerialEvents;

/// A host-side handle a device can duplicate, so that the device can be
/// rebuilt around its duplicate (an eventfd's duplicate signals the same
/// counter, so an irqfd registered for it still fires).
pub trait Duplicate: Sized {
    /// Another handle to the same thing.
    fn duplicate(&self) -> io::Result<Self>;
}

impl Duplicate for EventFdTrigger {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl Duplicate for vm_superio::serial::NoEvents {
    fn duplicate(&self) -> io::Result<Self> {
        Ok(Self)
    }
}

fn invalid(e: impl std::fmt::Display) -> InvalidState {
    InvalidState(e.to_string())
}

/// The largest count a PIT channel holds (a written 0).
const PIT_CHANNEL_COUNT_MAX: u32 = 0x1_0000;

/// vm-superio's UART registers, field by field, for serde.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
pub(crate) struct UartRegisters {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// The CMOS bytes as a list of exactly [`CMOS_SIZE`] numbers.
pub(crate) mod cmos_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::CMOS_SIZE;

    pub fn serialize<S: Serializer>(bytes: &[u8; CMOS_SIZE], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(bytes.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; CMOS_SIZE], D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        let len = v.len();
        v.try_into()
            .map_err(|_| D::Error::invalid_length(len, &"the 128 CMOS bytes"))
    }
}

impl<T, E> Stateful for SerialDevice<T, E>
where
    T: Trigger + Duplicate,
    E: SerialEvents + Duplicate,
{
    const TYPE: &'static str = "isa-serial";
    type State = SerialDeviceState;

    fn state(&self) -> SerialDeviceState {
        SerialDevice::state(self)
    }

    /// Rebuilds the UART around duplicates of its line and events and its
    /// own output. The FIFO is checked first; the one failure left after
    /// that is the interrupt line refusing a write, which leaves the UART
    /// restored but its output discarded (and is reported).
    fn restore(&mut self, state: SerialDeviceState) -> Result<(), InvalidState> {
        if state.uart.in_buffer.len() > RX_FIFO_CAPACITY {
            return Err(InvalidState(format!(
                "the RX FIFO holds {} bytes, more than {RX_FIFO_CAPACITY}",
                state.uart.in_buffer.len()
            )));
        }
        let irq = self.irq().duplicate().map_err(invalid)?;
        let events = self.events().duplicate().map_err(invalid)?;
        let out = std::mem::replace(self.output_mut(), Box::new(io::sink()));
        let rebuilt = SerialDevice::from_state(&state, irq, events, out).map_err(invalid)?;
        let empty = rebuilt.state().uart.in_buffer.is_empty();
        *self = rebuilt;
        if empty {
            // The console may hold input for a FIFO that is empty now.
            self.events().in_buffer_empty();
        }
        Ok(())
    }

    fn reset(&mut self) {
        if let Err(e) = Stateful::restore(self, SerialDeviceState::default()) {
            log::warn!("serial: cannot reset the UART: {e}");
        }
    }
}

impl<T: Trigger, R: Trigger> Stateful for I8042<T, R> {
    const TYPE: &'static str = "i8042";
    type State = I8042State;

    fn state(&self) -> I8042State {
        I8042::state(self)
    }

    fn restore(&mut self, state: I8042State) -> Result<(), InvalidState> {
        I8042::restore(self, &state).map_err(invalid)
    }

    fn reset(&mut self) {
        I8042::reset(self);
    }
}

impl Stateful for Pm1Event {
    const TYPE: &'static str = "acpi-pm1-evt";
    type State = Pm1EventState;

    fn state(&self) -> Pm1EventState {
        Pm1Event::state(self)
    }

    fn restore(&mut self, state: Pm1EventState) -> Result<(), InvalidState> {
        Pm1Event::restore(self, &state);
        Ok(())
    }

    fn reset(&mut self) {
        Pm1Event::reset(self);
    }
}

impl<T: Trigger> Stateful for Pm1Control<T> {
    const TYPE: &'static str = "acpi-pm1-cnt";
    type State = Pm1ControlState;

    fn state(&self) -> Pm1ControlState {
        Pm1Control::state(self)
    }

    fn restore(&mut self, state: Pm1ControlState) -> Result<(), InvalidState> {
        Pm1Control::restore(self, &state);
        Ok(())
    }

    fn reset(&mut self) {
        Pm1Control::restore(self, &Pm1ControlState::default());
    }
}

impl<T: Trigger> Stateful for Pit<T> {
    const TYPE: &'static str = "isa-pit";
    type State = PitState;

    fn state(&self) -> PitState {
        Pit::state(self)
    }

    /// Every field in the range the PIT itself keeps it in: counts
    /// 1..=65536, modes 0..=7, access states 0..=4, RW modes 0..=3.
    fn restore(&mut self, state: PitState) -> Result<(), InvalidState> {
        for (i, ch) in state.channels.iter().enumerate() {
            let bad = |what: &str, v: u64| Err(InvalidState(format!("channel {i}: {what} {v}")));
            if !(1..=PIT_CHANNEL_COUNT_MAX).contains(&ch.count) {
                return bad("count", ch.count.into());
            }
            if ch.mode > 7 {
                return bad("mode", ch.mode.into());
            }
            if ch.rw_mode > 3 {
                return bad("access mode", ch.rw_mode.into());
            }
            for (what, v) in [
                ("latch state", ch.count_latched),
                ("read state", ch.read_state),
                ("write state", ch.write_state),
            ] {
                if v > 4 {
                    return bad(what, v.into());
                }
            }
            // Loaded at a time of the Virtual clock so far: a load long
            // before its start (or after now) makes the count's edges lie
            // far in the past, which the timer would chase at once, edge
            // after edge.
            let now = self.now();
            if !(0..=now).contains(&ch.load_time_ns) {
                return Err(InvalidState(format!(
                    "channel {i}: loaded at {} ns, the Virtual clock at {now} ns",
                    ch.load_time_ns
                )));
            }
        }
        Pit::restore(self, &state);
        Ok(())
    }

    fn reset(&mut self) {
        Pit::reset(self);
    }
}

impl<T: Trigger> Stateful for Rtc<T> {
    const TYPE: &'static str = "mc146818rtc";
    type State = RtcState;

    fn state(&self) -> RtcState {
        Rtc::state(self)
    }

    /// The index is kept to 7 bits (as a guest write would); any CMOS
    /// contents and offsets are values the guest could have written.
    fn restore(&mut self, state: RtcState) -> Result<(), InvalidState> {
        Rtc::restore(self, &state);
        Ok(())
    }

    fn reset(&mut self) {
        Rtc::reset(self);
    }
}

impl<P: PitChannel2> Stateful for Port61<P> {
    const TYPE: &'static str = "port61";
    type State = Port61State;

    fn state(&self) -> Port61State {
        Port61::state(self)
    }

    fn restore(&mut self, state: Port61State) -> Result<(), InvalidState> {
        if state.control > 3 {
            return Err(InvalidState(format!(
                "control bits {:#x} beyond bits 1:0",
                state.control
            )));
        }
        Port61::restore(self, &state);
        Ok(())
    }

    fn reset(&mut self) {
        Port61::restore(self, &Port61State::default());
    }
}

impl Stateful for Port80 {
    const TYPE: &'static str = "port80";
    type State = Port80State;

    fn state(&self) -> Port80State {
        Port80::state(self)
    }

    fn restore(&mut self, state: Port80State) -> Result<(), InvalidState> {
        Port80::restore(self, &state);
        Ok(())
    }

    fn reset(&mut self) {
        Port80::restore(self, &Port80State::default());
    }
}

impl<T: Trigger> Stateful for PvPanic<T> {
    const TYPE: &'static str = "pvpanic";
    /// The port reads a constant and a write only reports: no state.
    type State = ();

    fn state(&self) {}

    fn restore(&mut self, _state: ()) -> Result<(), InvalidState> {
        Ok(())
    }

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests;
