//! `vmm`: boots a Linux kernel on the PC machine, with the serial console
//! in this terminal.
//!
//! Parse flags, build the machine, attach the console, run, report. The
//! terminal is put back on every way out: normal exit, guest reset or
//! poweroff, signals, errors (an exit notifier) and panics (a panic hook).

mod args;
mod console;
mod escape;
mod terminal;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use vmm_devices::serial::SerialOutput;
use vmm_pc::{ExitReason, PcConfig, PcMachine};

use crate::args::{Args, Serial};

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .parse_env("VMM_LOG")
        .format_timestamp_micros()
        .init();
    match run(args) {
        Ok(reason) if reason.is_success() => {
            log::info!("{reason}");
            ExitCode::SUCCESS
        }
        Ok(reason) => {
            eprintln!("vmm: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Output that goes to stdout, flushed per write so the guest's console is
/// seen as it is typed.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        let n = out.write(buf)?;
        out.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

fn serial_output(serial: &Serial) -> Result<SerialOutput> {
    Ok(match serial {
        Serial::Stdio => Box::new(Stdout),
        Serial::None => Box::new(io::sink()),
        Serial::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open serial output file {}", path.display()))?,
        ),
    })
}

fn run(args: Args) -> Result<ExitReason> {
    let config = PcConfig {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.append.clone(),
        memory: args.memory,
        cpus: args.cpus,
        serial: serial_output(&args.serial)?,
        in_kernel_pit: true,
    };
    let mut machine = PcMachine::build(config).context("cannot build the machine")?;

    if args.serial == Serial::Stdio {
        let console = console::Console::new(
            machine.com1(),
            machine
                .console_ready_event()
                .context("cannot set up the console")?,
            machine.control(),
        );
        machine.event_loop().add(Arc::new(Mutex::new(console)));
        let stdin = libc::STDIN_FILENO;
        if terminal::is_tty(stdin) {
            let saved =
                terminal::enter_raw_mode(stdin).context("cannot set the terminal to raw mode")?;
            machine.exit_notifiers().add(move |_, _, _| saved.restore());
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                saved.restore();
                previous(info);
            }));
        }
    }
    machine.run().context("the machine failed")
}
