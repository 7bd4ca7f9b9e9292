//! The console monitor (QEMU's human monitor behind `-nographic`'s Ctrl-A c):
//! a line editor and a few commands, run through the same machine commands
//! as QMP.
//!
//! | command | does |
//! |---|---|
//! | `info status` | prints the run state |
//! | `info cpus` | lists the vCPUs and their host thread ids |
//! | `info registers [-a\|N]` | the current (or every, or vCPU N's) registers |
//! | `info lapic [N]` | the current (or APIC ID N's) local APIC, decoded |
//! | `info pci`, `info block`, `info qtree` | PCI functions, disks, devices |
//! | `stop`, `cont` | pause and resume |
//! | `system_reset` | reset in place |
//! | `system_powerdown` | press the ACPI power button (wakes a suspended guest) |
//! | `system_wakeup` | wake a guest suspended to RAM (S3) |
//! | `quit` (`q`) | end the VMM |
//! | `help` (`?`) | list these |
//!
//! The current CPU (QEMU's `cpu N`) is vCPU 0; QMP's
//! `human-monitor-command` sets it per line with `cpu-index`
//! ([`parse_on`]).

use vmm_pc::{Command, Reply};

/// The prompt.
pub const PROMPT: &str = "(vmm) ";

/// What the monitor lists for `help`.
pub const HELP: &str = "\
info status       print the run state\r
info cpus         list the vCPUs and their host threads\r
info registers [-a|N]  the current vCPU's registers (-a: all; N: vCPU N's)\r
info lapic [N]    the current vCPU's local APIC (N: APIC ID N's)\r
info pci          list the PCI functions\r
info block        list the disks\r
info qtree        list the devices\r
stop              pause the guest\r
cont              resume the guest\r
system_reset      reset the machine in place\r
system_powerdown  press the ACPI power button\r
system_wakeup     wake a guest suspended to RAM\r
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
    /// A command with an argument it cannot take: what to print.
    Invalid(String),
}

/// A CPU number or APIC ID as typed: decimal, or hex with `0x`.
fn number(word: &str) -> Option<u32> {
    match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

/// `what`'s argument `word`, a number, or the line that says it is not.
fn numeric(what: &str, word: &str, command: impl FnOnce(u32) -> Command) -> Line {
    match number(word) {
        Some(n) => Line::Machine(command(n)),
        None => Line::Invalid(format!("{what}: '{word}' is not a number\r\n")),
    }
}

/// Parses one monitor line, vCPU 0 being the current CPU.
pub fn parse(line: &str) -> Line {
    parse_on(line, 0)
}

/// Parses one monitor line with `cpu` as the current CPU (what `info
/// registers` and `info lapic` show without an argument).
pub fn parse_on(line: &str, cpu: u32) -> Line {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Line::Empty,
        ["info", "status"] => Line::Machine(Command::QueryStatus),
        ["info", "cpus"] => Line::Machine(Command::QueryCpus),
        ["info", "registers"] => Line::Machine(Command::QueryRegisters { cpu: Some(cpu) }),
        ["info", "registers", "-a"] => Line::Machine(Command::QueryRegisters { cpu: None }),
        ["info", "registers", n] => numeric("info registers", n, |n| Command::QueryRegisters {
            cpu: Some(n),
        }),
        ["info", "lapic"] => Line::Machine(Command::QueryLapic { apic_id: cpu }),
        ["info", "lapic", n] => numeric("info lapic", n, |apic_id| Command::QueryLapic { apic_id }),
        ["info", "pci"] => Line::Machine(Command::QueryPci),
        ["info", "block"] => Line::Machine(Command::QueryBlock),
        ["info", "qtree"] => Line::Machine(Command::QueryDevices),
        ["stop"] => Line::Machine(Command::Stop),
        ["cont" | "c"] => Line::Machine(Command::Cont),
        ["system_reset"] => Line::Machine(Command::SystemReset),
        ["system_powerdown"] => Line::Machine(Command::SystemPowerdown),
        ["system_wakeup"] => Line::Machine(Command::SystemWakeup),
        ["quit" | "q"] => Line::Machine(Command::Quit),
        ["help" | "?"] => Line::Help,
        _ => Line::Unknown(line.trim().to_owned()),
    }
}

/// `info qtree` as QEMU prints it: the system bus's devices, the PCI bus
/// under its host bridge.
fn qtree_text(devices: &[vmm_pc::DeviceInfo]) -> String {
    let mut s = String::from("bus: main-system-bus\r\n  type System\r\n");
    for d in devices.iter().filter(|d| d.pci_slot.is_none()) {
        s.push_str(&format!("  dev: {}, id \"{}\"\r\n", d.type_name, d.id));
        if d.type_name == "pcie-host-bridge" {
            s.push_str("    bus: pci.0\r\n      type PCI\r\n");
            for f in devices.iter().filter(|d| d.pci_slot.is_some()) {
                s.push_str(&format!(
                    "      dev: {}, id \"{}\"\r\n        addr = {:02x}.0\r\n",
                    f.type_name,
                    f.id,
                    f.pci_slot.unwrap_or_default()
                ));
            }
        }
    }
    s
}

/// `text` with its lines ending in CR LF.
fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// What a machine command's outcome prints, as QEMU's human monitor
/// prints it (lines end in CR LF; commands that only act print nothing).
pub fn reply_text(outcome: Result<Reply, String>) -> String {
    match outcome {
        Ok(Reply::Status { status, .. }) => format!("VM status: {status}\r\n"),
        Ok(Reply::Cpus(cpus)) => cpus
            .iter()
            .map(|c| {
                let current = if c.index == 0 { '*' } else { ' ' };
                format!("{current} CPU #{}: thread_id={}\r\n", c.index, c.thread_id)
            })
            .collect(),
        Ok(Reply::Pci(functions)) => functions
            .iter()
            .map(|f| {
                let class = vmm_pci::info::class_name(f.class.0, f.class.1).unwrap_or("Class");
                let mut s = format!(
                    "  Bus  0, device {:>3}, function 0:\r\n    {class}: PCI device {:04x}:{:04x}\r\n",
                    f.slot, f.vendor, f.device
                );
                if f.irq_pin != 0 {
                    s.push_str(&format!("      IRQ {}, pin {}\r\n", f.irq_line, char::from(b'@' + f.irq_pin)));
                }
                for r in &f.regions {
                    let what = if r.kind.is_memory() { "memory" } else { "I/O" };
                    s.push_str(&format!(
                        "      BAR{}: {what} at 0x{:x} [0x{:x}].\r\n",
                        r.bar,
                        r.address,
                        r.address.wrapping_add(r.size).wrapping_sub(1)
                    ));
                }
                s
            })
            .collect(),
        Ok(Reply::Devices(devices)) => qtree_text(&devices),
        // QEMU's `info registers` heads each vCPU with an empty line and
        // `CPU#N`.
        Ok(Reply::Registers(cpus)) => cpus
            .iter()
            .map(|c| format!("\r\nCPU#{}\r\n{}", c.index, crlf(&c.text)))
            .collect(),
        Ok(Reply::Lapic(cpu)) => crlf(&cpu.text),
        // Only the gdb stub asks for these; the monitor never does.
        Ok(Reply::GdbRegisters(_) | Reply::GdbMemory(_) | Reply::GdbWritten(_)) => String::new(),
        Ok(Reply::Migration(m)) => m.map_or_else(String::new, |m| {
            format!("Migration status: {}\r\ntotal time: {} ms\r\n", m.status, m.total_time_ms)
        }),
        Ok(Reply::MigrationParameters(p)) => format!(
            "downtime-limit: {} ms\r\nmax-bandwidth: {} bytes/second\r\n",
            p.downtime_limit_ms, p.max_bandwidth
        ),
        Ok(Reply::Jobs(jobs)) => jobs
            .iter()
            .map(|j| format!("{} ({}): {}\r\n", j.id, j.kind, j.status.as_str()))
            .collect(),
        Ok(Reply::Block(disks)) => disks
            .iter()
            .map(|d| {
                format!(
                    "{} ({}): {} (raw{})\r\n    Attached to:      virtio-blk-pci, slot {:02x}\r\n    Cache mode:       writeback{}\r\n",
                    d.device,
                    d.device,
                    d.file,
                    if d.readonly { ", read-only" } else { "" },
                    d.slot,
                    if d.direct { ", direct" } else { "" },
                )
            })
            .collect(),
        Ok(Reply::Done) => String::new(),
        Err(why) => format!("Error: {why}\r\n"),
    }
}

/// What the monitor prints for a line that runs no machine command.
pub fn local_text(line: &Line) -> Option<String> {
    match line {
        Line::Empty => Some(String::new()),
        Line::Help => Some(HELP.to_owned()),
        Line::Unknown(what) => Some(format!("unknown command: '{what}' (try help)\r\n")),
        Line::Invalid(text) => Some(text.clone()),
        Line::Machine(_) => None,
    }
}

/// Where the editor is in a terminal escape sequence (an arrow key, or a
/// terminal's answer to a guest's query such as the cursor position
/// report `ESC [ 50 ; 5 R`, which busybox's shell asks for at its prompt).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// In a CSI (`ESC [`) or SS3 (`ESC O`) sequence, until its final byte.
    Sequence,
}

/// The line editor: bytes in, echo out, whole lines when Enter comes.
/// Escape sequences are swallowed whole, never typed into the line.
#[derive(Debug, Default)]
pub struct Editor {
    line: Vec<u8>,
    escape: Escape,
}

impl Editor {
    /// Feeds typed bytes; returns what to echo and the completed lines.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Vec<String>) {
        let mut echo = Vec::new();
        let mut lines = Vec::new();
        for &b in input {
            match (self.escape, b) {
                (Escape::None, 0x1b) => {
                    self.escape = Escape::Start;
                    continue;
                }
                (Escape::Start, b'[' | b'O') => {
                    self.escape = Escape::Sequence;
                    continue;
                }
                (Escape::Start, _) => {
                    // ESC and one more byte (Alt-key): both dropped.
                    self.escape = Escape::None;
                    continue;
                }
                (Escape::Sequence, 0x40..=0x7e) => {
                    self.escape = Escape::None;
                    continue;
                }
                (Escape::Sequence, _) => continue,
                (Escape::None, _) => {}
            }
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
        assert_eq!(parse("system_wakeup"), Line::Machine(Command::SystemWakeup));
        assert_eq!(parse("q"), Line::Machine(Command::Quit));
        assert_eq!(parse(""), Line::Empty);
        assert_eq!(parse("?"), Line::Help);
        assert_eq!(parse("info cpus"), Line::Machine(Command::QueryCpus));
        assert_eq!(parse("info mtree"), Line::Unknown("info mtree".into()));
    }

    #[test]
    fn registers_and_lapic_parse() {
        let regs = |cpu| Line::Machine(Command::QueryRegisters { cpu });
        let lapic = |apic_id| Line::Machine(Command::QueryLapic { apic_id });
        assert_eq!(parse("info registers"), regs(Some(0)));
        assert_eq!(parse(" info  registers -a "), regs(None));
        assert_eq!(parse("info registers 1"), regs(Some(1)));
        assert_eq!(parse_on("info registers", 3), regs(Some(3)));
        assert_eq!(parse_on("info registers -a", 3), regs(None));
        assert_eq!(parse("info lapic"), lapic(0));
        assert_eq!(parse_on("info lapic", 2), lapic(2));
        assert_eq!(parse("info lapic 99"), lapic(99));
        assert_eq!(parse("info lapic 0x10"), lapic(16));
        assert_eq!(
            local_text(&parse("info lapic x")).unwrap(),
            "info lapic: 'x' is not a number\r\n"
        );
        assert_eq!(
            local_text(&parse("info registers -1")).unwrap(),
            "info registers: '-1' is not a number\r\n"
        );
        assert_eq!(
            parse("info registers 1 2"),
            Line::Unknown("info registers 1 2".into())
        );
        assert!(HELP.contains("info registers") && HELP.contains("info lapic"));
    }

    #[test]
    fn registers_print_each_cpu_under_its_header() {
        use vmm_pc::CpuText;
        let text = reply_text(Ok(Reply::Registers(vec![
            CpuText {
                index: 0,
                text: "RAX=0\nEFER=0\n".into(),
            },
            CpuText {
                index: 1,
                text: "RAX=1\n".into(),
            },
        ])));
        assert_eq!(
            text,
            "\r\nCPU#0\r\nRAX=0\r\nEFER=0\r\n\r\nCPU#1\r\nRAX=1\r\n"
        );
        let lapic = reply_text(Ok(Reply::Lapic(CpuText {
            index: 1,
            text: "ISR\t(none)\n".into(),
        })));
        assert_eq!(lapic, "ISR\t(none)\r\n");
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

    #[test]
    fn escape_sequences_are_swallowed_whole() {
        let mut e = Editor::default();
        // A cursor position report and an arrow key amid typing.
        let (echo, lines) = e.feed(b"in\x1b[50;5Rfo\x1b[A \x1bOPcpus\r");
        assert_eq!(lines, ["info cpus"]);
        assert_eq!(echo, b"info cpus\r\n");
        // Split across reads.
        let (echo, _) = e.feed(b"\x1b");
        assert!(echo.is_empty());
        let (echo, _) = e.feed(b"[12;");
        assert!(echo.is_empty());
        let (_, lines) = e.feed(b"40Rstop\r");
        assert_eq!(lines, ["stop"]);
    }

    #[test]
    fn qtree_puts_pci_functions_under_the_host_bridge() {
        let dev = |id: &str, ty: &str, slot| vmm_pc::DeviceInfo {
            id: id.into(),
            type_name: ty.into(),
            pci_slot: slot,
        };
        let text = reply_text(Ok(Reply::Devices(vec![
            dev("serial0", "isa-serial", None),
            dev("pci.0", "pcie-host-bridge", None),
            dev("d0", "virtio-blk-pci", Some(3)),
        ])));
        assert_eq!(
            text,
            "bus: main-system-bus\r\n  type System\r\n  dev: isa-serial, id \"serial0\"\r\n\
             \x20 dev: pcie-host-bridge, id \"pci.0\"\r\n    bus: pci.0\r\n      type PCI\r\n\
             \x20     dev: virtio-blk-pci, id \"d0\"\r\n        addr = 03.0\r\n"
        );
        assert_eq!(parse("info qtree"), Line::Machine(Command::QueryDevices));
    }

    #[test]
    fn replies_print_as_qemus_monitor_does() {
        use vmm_pc::CpuInfo;
        let cpus = Reply::Cpus(vec![
            CpuInfo {
                index: 0,
                thread_id: 11,
            },
            CpuInfo {
                index: 1,
                thread_id: 12,
            },
        ]);
        assert_eq!(
            reply_text(Ok(cpus)),
            "* CPU #0: thread_id=11\r\n  CPU #1: thread_id=12\r\n"
        );
        let status = Reply::Status {
            running: true,
            status: vmm_runstate::RunState::Running,
        };
        assert_eq!(reply_text(Ok(status)), "VM status: running\r\n");
        assert_eq!(reply_text(Ok(Reply::Done)), "");
        assert_eq!(reply_text(Err("no".into())), "Error: no\r\n");
        assert_eq!(
            local_text(&parse("frob")).unwrap(),
            "unknown command: 'frob' (try help)\r\n"
        );
        assert!(local_text(&parse("stop")).is_none());
    }
}
