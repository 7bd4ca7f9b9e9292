//! The console monitor (QEMU's human monitor behind `-nographic`'s Ctrl-A c):
//! a line editor and a few commands, run through the same machine commands
//! as QMP.
//!
//! | command | does |
//! |---|---|
//! | `info status` | prints the run state |
//! | `stop`, `cont` | pause and resume |
//! | `system_reset` | reset in place |
//! | `system_powerdown` | press the ACPI power button |
//! | `quit` (`q`) | end the VMM |
//! | `help` (`?`) | list these |

use vmm_pc::Command;

/// The prompt.
pub const PROMPT: &str = "(vmm) ";

/// What the monitor lists for `help`.
pub const HELP: &str = "\
info status       print the run state\r
stop              pause the guest\r
cont              resume the guest\r
system_reset      reset the machine in place\r
system_powerdown  press the ACPI power button\r
quit              end the VMM\r
help              this list (C-a c goes back to the guest)\r
";

/// The longest line kept; more is ignored (with a bell).
const MAX_LINE: usize = 256;

/// A parsed monitor line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Nothing typed.
    Empty,
    /// A machine command.
    Machine(Command),
    /// `help`.
    Help,
    /// Not a command.
    Unknown(String),
}

/// Parses one monitor line.
pub fn parse(line: &str) -> Line {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Line::Empty,
        ["info", "status"] => Line::Machine(Command::QueryStatus),
        ["stop"] => Line::Machine(Command::Stop),
        ["cont" | "c"] => Line::Machine(Command::Cont),
        ["system_reset"] => Line::Machine(Command::SystemReset),
        ["system_powerdown"] => Line::Machine(Command::SystemPowerdown),
        ["quit" | "q"] => Line::Machine(Command::Quit),
        ["help" | "?"] => Line::Help,
        _ => Line::Unknown(line.trim().to_owned()),
    }
}

/// The line editor: bytes in, echo out, whole lines when Enter comes.
#[derive(Debug, Default)]
pub struct Editor {
    line: Vec<u8>,
}

impl Editor {
    /// Feeds typed bytes; returns what to echo and the completed lines.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Vec<String>) {
        let mut echo = Vec::new();
        let mut lines = Vec::new();
        for &b in input {
            match b {
                b'\r' | b'\n' => {
                    echo.extend_from_slice(b"\r\n");
                    lines.push(
                        String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned(),
                    );
                }
                0x7f | 0x08 => {
                    if self.line.pop().is_some() {
                        echo.extend_from_slice(b"\x08 \x08");
                    }
                }
                b' '..=b'~' if self.line.len() < MAX_LINE => {
                    self.line.push(b);
                    echo.push(b);
                }
                _ => echo.push(0x07),
            }
        }
        (echo, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("info status"), Line::Machine(Command::QueryStatus));
        assert_eq!(parse("  stop "), Line::Machine(Command::Stop));
        assert_eq!(parse("c"), Line::Machine(Command::Cont));
        assert_eq!(parse("system_reset"), Line::Machine(Command::SystemReset));
        assert_eq!(parse("q"), Line::Machine(Command::Quit));
        assert_eq!(parse(""), Line::Empty);
        assert_eq!(parse("?"), Line::Help);
        assert_eq!(parse("info cpus"), Line::Unknown("info cpus".into()));
    }

    #[test]
    fn the_editor_echoes_erases_and_splits_lines() {
        let mut e = Editor::default();
        let (echo, lines) = e.feed(b"stpo\x7f\x7fop\r");
        assert_eq!(lines, ["stop"]);
        assert_eq!(echo, b"stpo\x08 \x08\x08 \x08op\r\n");
        let (_, lines) = e.feed(b"info st");
        assert!(lines.is_empty());
        let (_, lines) = e.feed(b"atus\ncont\r");
        assert_eq!(lines, ["info status", "cont"]);
        // Control bytes ring the bell; the line is bounded.
        let (echo, _) = e.feed(&[0x03]);
        assert_eq!(echo, [0x07]);
        let (_, lines) = e.feed(&[b'x'; 1000]);
        assert!(lines.is_empty());
        let (_, lines) = e.feed(b"\r");
        assert_eq!(lines[0].len(), MAX_LINE);
    }
}
