//! A PS/2 keyboard that answers commands but has no keys.
//!
//! Without it, Linux's atkbd driver (when the guest does not pass
//! `i8042.dumbkbd`) sends get-ID, set-LEDs and the like to port 0x60 and
//! waits for replies that never come, logging timeouts. Each command gets
//! the reply a real keyboard gives (docs/devices.md §6.2, "Keyboard device").

/// Acknowledge.
const ACK: u8 = 0xFA;
/// "Resend": the answer to an unknown command.
const RESEND: u8 = 0xFE;
/// Basic assurance test passed (after reset).
const BAT_OK: u8 = 0xAA;

const CMD_SET_LEDS: u8 = 0xED;
const CMD_ECHO: u8 = 0xEE;
const CMD_SCANCODE_SET: u8 = 0xF0;
const CMD_GET_ID: u8 = 0xF2;
const CMD_SET_TYPEMATIC: u8 = 0xF3;
const CMD_ENABLE: u8 = 0xF4;
const CMD_DISABLE: u8 = 0xF5;
const CMD_SET_DEFAULTS: u8 = 0xF6;
const CMD_RESEND: u8 = 0xFE;
const CMD_RESET: u8 = 0xFF;

/// Keyboard ID, first byte.
const ID_1: u8 = 0xAB;
/// Keyboard ID, second byte, as sent by the keyboard.
const ID_2: u8 = 0x83;
/// Second ID byte after the controller's set-2 -> set-1 translation.
const ID_2_TRANSLATED: u8 = 0x41;
/// The scan-code set a keyboard starts in.
const DEFAULT_SCANCODE_SET: u8 = 2;

/// The keyboard's state: a command waiting for its parameter byte, and the
/// selected scan-code set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyboardState {
    /// A command (0xED, 0xF0 or 0xF3) whose parameter comes next.
    pub awaiting_param: Option<u8>,
    /// The scan-code set (1, 2 or 3).
    pub scancode_set: u8,
}

impl Default for KeyboardState {
    fn default() -> Self {
        Self {
            awaiting_param: None,
            scancode_set: DEFAULT_SCANCODE_SET,
        }
    }
}

/// Up to three reply bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reply {
    bytes: [u8; 3],
    len: usize,
}

impl Reply {
    fn of(bytes: &[u8]) -> Self {
        let mut reply = Self::default();
        for (slot, b) in reply.bytes.iter_mut().zip(bytes) {
            *slot = *b;
            reply.len += 1;
        }
        reply
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl KeyboardState {
    /// The keyboard receives `byte`; returns its reply. `translated` is the
    /// controller's XLATE bit, which changes how the ID reads.
    pub(crate) fn receive(&mut self, byte: u8, translated: bool) -> Reply {
        if let Some(cmd) = self.awaiting_param.take() {
            return self.parameter(cmd, byte);
        }
        match byte {
            CMD_SET_LEDS | CMD_SCANCODE_SET | CMD_SET_TYPEMATIC => {
                self.awaiting_param = Some(byte);
                Reply::of(&[ACK])
            }
            CMD_ECHO => Reply::of(&[CMD_ECHO]),
            CMD_GET_ID if translated => Reply::of(&[ACK, ID_1, ID_2_TRANSLATED]),
            CMD_GET_ID => Reply::of(&[ACK, ID_1, ID_2]),
            CMD_ENABLE | CMD_DISABLE | CMD_RESEND => Reply::of(&[ACK]),
            CMD_SET_DEFAULTS => {
                self.scancode_set = DEFAULT_SCANCODE_SET;
                Reply::of(&[ACK])
            }
            CMD_RESET => {
                *self = Self::default();
                Reply::of(&[ACK, BAT_OK])
            }
            _ => Reply::of(&[RESEND]),
        }
    }

    fn parameter(&mut self, cmd: u8, param: u8) -> Reply {
        match (cmd, param) {
            // 0xF0 0x00: report the current set.
            (CMD_SCANCODE_SET, 0) => Reply::of(&[ACK, self.scancode_set]),
            (CMD_SCANCODE_SET, 1..=3) => {
                self.scancode_set = param;
                Reply::of(&[ACK])
            }
            (CMD_SCANCODE_SET, _) => Reply::of(&[RESEND]),
            // LEDs and typematic rate: accepted, nothing to show.
            _ => Reply::of(&[ACK]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(kbd: &mut KeyboardState, bytes: &[u8]) -> Vec<u8> {
        bytes
            .iter()
            .flat_map(|b| kbd.receive(*b, false).as_slice().to_vec())
            .collect()
    }

    #[test]
    fn get_id_plain_and_translated() {
        let mut kbd = KeyboardState::default();
        assert_eq!(send(&mut kbd, &[0xF2]), [0xFA, 0xAB, 0x83]);
        assert_eq!(kbd.receive(0xF2, true).as_slice(), [0xFA, 0xAB, 0x41]);
    }

    #[test]
    fn reset_echo_and_enable() {
        let mut kbd = KeyboardState::default();
        assert_eq!(send(&mut kbd, &[0xFF]), [0xFA, 0xAA]);
        assert_eq!(send(&mut kbd, &[0xEE]), [0xEE]);
        assert_eq!(send(&mut kbd, &[0xF4, 0xF5, 0xF6]), [0xFA; 3]);
    }

    #[test]
    fn commands_with_a_parameter() {
        let mut kbd = KeyboardState::default();
        // Set LEDs, then its parameter (which looks like a command).
        assert_eq!(send(&mut kbd, &[0xED, 0xFF]), [0xFA, 0xFA]);
        assert_eq!(kbd.awaiting_param, None);
        assert_eq!(send(&mut kbd, &[0xF3, 0x20]), [0xFA, 0xFA]);
        assert_eq!(send(&mut kbd, &[0xF0, 0x00]), [0xFA, 0xFA, 0x02]);
        assert_eq!(send(&mut kbd, &[0xF0, 0x03]), [0xFA, 0xFA]);
        assert_eq!(kbd.scancode_set, 3);
        assert_eq!(send(&mut kbd, &[0xF0, 0x07]), [0xFA, 0xFE]);
        assert_eq!(send(&mut kbd, &[0xFF]), [0xFA, 0xAA]);
        assert_eq!(kbd, KeyboardState::default());
    }

    #[test]
    fn unknown_commands_ask_for_a_resend() {
        let mut kbd = KeyboardState::default();
        assert_eq!(send(&mut kbd, &[0x00, 0xF7, 0xE0]), [0xFE; 3]);
    }
}
