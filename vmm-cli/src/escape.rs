//! The console's escape keys, as in QEMU's `-nographic`: Ctrl-A then a key.
//!
//! | keys        | action                              |
//! |-------------|-------------------------------------|
//! | Ctrl-A x    | quit the VMM                        |
//! | Ctrl-A c    | switch between the guest and the monitor |
//! | Ctrl-A h    | print this help                     |
//! | Ctrl-A Ctrl-A | send one Ctrl-A to the guest      |
//!
//! Any other key after Ctrl-A is sent to the guest with the Ctrl-A before
//! it, so nothing typed is lost.

/// Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// The help text Ctrl-A h prints.
pub const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit the VMM\r\nC-a c    switch between console and monitor\r\nC-a C-a  send C-a to the guest\r\n";

/// What the console should do with a chunk of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the guest's serial input.
    Guest(Vec<u8>),
    /// Print the help.
    Help,
    /// Quit.
    Quit,
    /// Switch between the guest console and the monitor.
    Monitor,
}

/// Splits keyboard input into guest bytes and escape commands. Keeps the
/// "Ctrl-A seen" state across chunks (the two keys may arrive in two reads).
#[derive(Debug, Default)]
pub struct EscapeParser {
    pending_escape: bool,
}

impl EscapeParser {
    /// A parser with no pending Ctrl-A.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `input`; returns the actions in order.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut guest = Vec::new();
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => {
                        flush(&mut guest, &mut actions);
                        actions.push(Action::Quit);
                        // Whatever follows a quit is not for the guest.
                        return actions;
                    }
                    b'c' | b'C' => {
                        flush(&mut guest, &mut actions);
                        actions.push(Action::Monitor);
                    }
                    b'h' | b'H' | b'?' => {
                        flush(&mut guest, &mut actions);
                        actions.push(Action::Help);
                    }
                    ESCAPE => guest.push(ESCAPE),
                    other => guest.extend([ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                guest.push(b);
            }
        }
        flush(&mut guest, &mut actions);
        actions
    }
}

fn flush(guest: &mut Vec<u8>, actions: &mut Vec<Action>) {
    if !guest.is_empty() {
        actions.push(Action::Guest(std::mem::take(guest)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_input_goes_to_the_guest() {
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"ls\r"), [Action::Guest(b"ls\r".to_vec())]);
        assert_eq!(p.feed(b""), []);
    }

    #[test]
    fn ctrl_a_x_quits_and_drops_the_rest() {
        let mut p = EscapeParser::new();
        assert_eq!(
            p.feed(b"ab\x01xcd"),
            [Action::Guest(b"ab".to_vec()), Action::Quit]
        );
    }

    #[test]
    fn escape_split_across_reads() {
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"a\x01"), [Action::Guest(b"a".to_vec())]);
        assert_eq!(p.feed(b"h"), [Action::Help]);
        assert_eq!(p.feed(b"\x01"), []);
        assert_eq!(p.feed(b"x"), [Action::Quit]);
    }

    #[test]
    fn double_ctrl_a_sends_one() {
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"\x01\x01z"), [Action::Guest(b"\x01z".to_vec())]);
    }

    #[test]
    fn unknown_escape_passes_both_bytes() {
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(b"\x01z"), [Action::Guest(b"\x01z".to_vec())]);
    }

    #[test]
    fn ctrl_a_c_switches_to_the_monitor() {
        let mut p = EscapeParser::new();
        assert_eq!(
            p.feed(b"ab\x01cd"),
            [
                Action::Guest(b"ab".to_vec()),
                Action::Monitor,
                Action::Guest(b"d".to_vec())
            ]
        );
    }
}
