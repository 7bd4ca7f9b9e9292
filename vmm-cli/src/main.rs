//! `vmm`: boots a Linux kernel on the PC machine, with the serial console
//! in this terminal.
//!
//! Parse flags, build the machine, attach the console, run, report. The
//! terminal is put back on every way out: normal exit, guest reset or
//! poweroff, signals, errors (an exit notifier) and panics (a panic hook).
//!
//! The entry point is `start::main` (the crate is `#![no_main]`: see
//! start.rs for what Rust's own start cost and what is kept of it); the
//! unit tests keep the test harness's own.

#![cfg_attr(not(test), no_main)]

/// The static build's allocator. musl's malloc gives many small blocks a
/// mapping of their own and unmaps it when they are freed: about 50
/// `mmap` and 45 `munmap` calls in one start of the benchmark's guest, each
/// new page zeroed by the kernel again. dlmalloc takes 64 KiB at a time
/// and reuses it: 40 alternating starts each, first guest byte 1.95-2.05
/// against 2.21-2.23 ms, CPU 2.66-2.72 against 3.00-3.03 ms, the same peak
/// RSS. glibc builds keep glibc's malloc (with its per-thread arenas).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

mod actions;
mod args;
mod console;
mod escape;
mod host_check;
mod monitor;
mod netdev;
mod output;
mod qmp;
mod seccomp;
mod serial_file;
#[cfg(not(test))]
mod start;
mod storage;
mod terminal;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use vmm_core::signals::{interruptible, Interrupted, InterruptibleError};
use vmm_pc::{ExitReason, IrqChipMode, PcConfig, PcMachine, PitBackend, RebootAction};

use crate::args::{Args, Serial};

/// The VMM run with the command line `argv` (the program's name first):
/// its exit status.
#[cfg_attr(test, allow(dead_code))]
fn vmm_main(argv: Vec<std::ffi::OsString>) -> libc::c_int {
    // Before any thread starts: SIGINT/SIGTERM/SIGHUP reach the main loop's
    // signalfd only, never a thread's default action.
    if let Err(e) = vmm_core::signals::block_shutdown_signals() {
        eprintln!("vmm: {e}");
        return libc::EXIT_FAILURE;
    }
    seccomp::settle_malloc();
    let args = Args::parse_from(argv);
    env_logger::Builder::new()
        .filter_level(args.log_level)
        // virtio-queue says `error` for what a guest does to its rings (a
        // bad size or alignment, a chain it cannot read), as often as the
        // guest likes; the transport and the workers say it once, in our
        // words. Shown from `debug` on (or with VMM_LOG=virtio_queue=...).
        .filter_module(
            "virtio_queue",
            if args.log_level >= log::LevelFilter::Debug {
                args.log_level
            } else {
                log::LevelFilter::Off
            },
        )
        .parse_env("VMM_LOG")
        .format_timestamp_micros()
        .init();
    log::debug!("start-up: arguments parsed");
    // The slowest question the build asks KVM, asked now on a thread of
    // its own (see vmm_pc::cpu::supported); a thread that cannot be had
    // leaves it to the build.
    let cpuid = vmm_pc::cpu::supported::CpuidPrefetch::start().ok();
    // --netdev, --drive and --device first: `--device help` needs nothing
    // else.
    let netdevs = match netdev::parse_all(&args.netdev) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("vmm: {e}");
            return libc::EXIT_FAILURE;
        }
    };
    let registry = vmm_pc::device_types::registry();
    let disks = match storage::resolve(&args.drive, &args.device, &netdevs, &registry) {
        Ok(storage::Storage::Devices(devices)) => devices,
        Ok(storage::Storage::Help(text)) => {
            print!("{text}");
            return libc::EXIT_SUCCESS;
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            return libc::EXIT_FAILURE;
        }
    };
    match run(args, disks, cpuid) {
        Ok(reason) if reason.is_triple_fault() => {
            log::warn!("{reason}");
            libc::EXIT_SUCCESS
        }
        Ok(reason) if reason.is_success() => {
            log::info!("{reason}");
            libc::EXIT_SUCCESS
        }
        Ok(reason) => {
            eprintln!("vmm: {reason}");
            libc::EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("vmm: {e:#}");
            libc::EXIT_FAILURE
        }
    }
}

/// Where COM1's output goes (see output.rs): a pipe, FIFO or terminal
/// through a non-blocking twin of its descriptor, a socket with
/// non-blocking sends, whose writes the main loop finishes when they would
/// block; a regular file directly (its writes never wait for a reader); or
/// nowhere.
fn serial_target(serial: &Serial) -> Result<output::Target> {
    Ok(match serial {
        Serial::None => output::Target::discard(),
        Serial::Stdio => match output::nonblocking_twin(&io::stdout()) {
            Some(twin) => output::Target::nonblocking(twin, |twin| twin),
            None => output::Target::socket(&io::stdout())
                .unwrap_or_else(|| output::Target::blocking(io::stdout())),
        },
        Serial::File(file) => {
            let capped = file.open()?;
            match output::nonblocking_twin(capped.get_ref()) {
                Some(twin) => output::Target::nonblocking(twin, |twin| capped.with_inner(twin)),
                None => output::Target::blocking(capped),
            }
        }
    })
}

/// Runs a start-up step so that SIGINT/SIGTERM/SIGHUP end it, however long
/// it blocks ([`interruptible`]): `Ok(Err(signo))` if a signal came first.
///
/// The signals are blocked from the start of `main` for the main loop's
/// signalfd, so until the main loop runs nobody would answer them; a step
/// before it that may block for ever (opening the serial output file, which
/// waits for a reader if it is a FIFO) runs through here. Building the
/// machine does not: it takes only regular files for the kernel and initrd
/// (a FIFO is refused without waiting for its writer), so it ends within
/// milliseconds, and a thread for it cost every start a thread's creation
/// and exit. A signal between steps stays pending and ends the next one, or
/// the main loop at once.
fn startup_step<T, F>(name: &'static str, step: F) -> Result<Result<T, i32>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match interruptible(name, step) {
        Ok(done) => done.map(Ok),
        Err(InterruptibleError::Interrupted(Interrupted(signo))) => Ok(Err(signo)),
        Err(e) => Err(e.into()),
    }
}

fn run(
    args: Args,
    devices: storage::Devices,
    cpuid: Option<vmm_pc::cpu::supported::CpuidPrefetch>,
) -> Result<ExitReason> {
    args.check().map_err(anyhow::Error::msg)?;
    let actions = actions::parse(&args.action).map_err(anyhow::Error::msg)?;
    let incoming = match &args.incoming {
        Some(uri) => Some(
            vmm_pc::parse_incoming(uri).map_err(|e| anyhow::anyhow!("--incoming {uri}: {e}"))?,
        ),
        None => None,
    };
    // Listening now: a port in use fails before any KVM work.
    let gdb_listener = match &args.gdb {
        Some(address) => Some(vmm_gdb::GdbListener::bind(address)?),
        None => None,
    };
    // The socket devices' sockets, made now (a taken path fails before
    // any KVM work) and removed on every way out of here (and by an exit
    // notifier below, for the ways out that end the process at once):
    // only while each path still names the socket made.
    let mut vsock_sockets = OwnedSockets(Vec::new());
    let mut vsocks = Vec::new();
    for v in &devices.vsocks {
        let (listener, socket) = vmm_qmp::endpoint::bind(&v.uds).with_context(|| {
            format!(
                "virtio-vsock-pci: cannot make a socket at {}",
                v.uds.display()
            )
        })?;
        vsock_sockets.0.push(socket);
        vsocks.push(vmm_pc::vsocks::VsockConfig {
            cid: v.cid,
            uds: v.uds.clone(),
            listener,
            slot: v.slot,
        });
    }
    let kernel = args
        .kernel
        .clone()
        .context("the following required arguments were not provided: --kernel <PATH>")?;
    let serial = args.serial.clone();
    // Only a file may block (a FIFO waits for its reader); stdout and the
    // sink are had at once, without a thread to wait on.
    let target = match serial {
        Serial::File(_) => match startup_step("serial open", move || serial_target(&serial))? {
            Ok(target) => target,
            Err(signo) => return Ok(ExitReason::Signal(signo)),
        },
        Serial::Stdio | Serial::None => serial_target(&serial)?,
    };
    let (sink, output) = output::new(target).context("cannot set up the serial output")?;
    // Set up before any thread starts; each thread compiles (the first of
    // its kind) and installs its own list (see seccomp/mod.rs for the
    // order and why).
    let filters = seccomp::Filters::new(args.seccomp, vmm_core::vcpu::kick_signal())
        .context("cannot set up seccomp")?;
    log::debug!("start-up: seccomp set up");
    let vcpu_thread_start = filters.as_ref().map(|f| {
        let f = Arc::clone(f);
        let start: vmm_core::vcpu::VcpuThreadStart = Arc::new(move |stage| {
            use vmm_core::vcpu::VcpuStartStage;
            let list = match stage {
                VcpuStartStage::Spawner => seccomp::Thread::VcpuSpawner,
                VcpuStartStage::Ready {
                    inherited: true, ..
                } => seccomp::Thread::VcpuLock,
                VcpuStartStage::Ready {
                    inherited: false, ..
                } => seccomp::Thread::Vcpu,
            };
            Ok(f.install(list)?)
        });
        start
    });
    let device_thread_start = filters.as_ref().map(|f| {
        let f = Arc::clone(f);
        let start: vmm_virtio::worker::ThreadStart =
            Arc::new(move || f.install(seccomp::Thread::Device).map_err(io::Error::other));
        start
    });
    let migration_thread_start = filters.as_ref().map(|f| {
        let f = Arc::clone(f);
        let start: vmm_pc::migration::worker::ThreadStart = Arc::new(move || {
            f.install(seccomp::Thread::Migration)
                .map_err(io::Error::other)
        });
        start
    });
    let vsock_thread_start = filters.as_ref().map(|f| {
        let f = Arc::clone(f);
        let start: vmm_virtio::worker::ThreadStart =
            Arc::new(move || f.install(seccomp::Thread::Vsock).map_err(io::Error::other));
        start
    });
    let config = PcConfig {
        kernel: kernel.clone(),
        disks: devices.disks,
        nets: devices.nets,
        rngs: devices.rngs,
        vsocks,
        vhost_vsocks: devices.vhost_vsocks,
        initrd: args.initrd.clone(),
        cmdline: args.append.clone(),
        memory: args.memory,
        cpus: args.cpus,
        serial: Box::new(sink),
        pit: match args.pit {
            args::PitChoice::Userspace => PitBackend::Userspace,
            args::PitChoice::Kvm => PitBackend::Kvm,
        },
        irqchip: match args.irqchip() {
            args::IrqChipChoice::Kernel => IrqChipMode::Kernel,
            args::IrqChipChoice::Split => IrqChipMode::Split,
        },
        start_paused: args.paused,
        reboot: actions.reboot.unwrap_or(match args.reboot {
            args::RebootChoice::Exit => RebootAction::Exit,
            args::RebootChoice::Reset => RebootAction::Reset,
        }),
        ib700: devices.ib700,
        incoming,
        i6300esb: devices.i6300esb,
        watchdog_action: actions.watchdog.unwrap_or_default(),
        // With QMP a user can look at a KVM internal error and reset or
        // quit; without, stopping would only hang.
        stop_on_error: args.qmp.is_some(),
        vcpu_thread_start,
        cpuid,
        device_thread_start,
        migration_thread_start,
        // Only QMP starts migrations (the console monitor has no
        // `migrate`).
        migration_control: args.qmp.is_some(),
        // A filtered VMM cannot start programs (`exec:` migration).
        spawn_allowed: filters.is_none(),
        vsock_thread_start,
    };
    let mut machine = PcMachine::build(config).context("cannot build the machine")?;
    if let Some(drain) = output.drain() {
        machine.event_loop().add(Arc::new(Mutex::new(drain)));
    }

    if args.serial == Serial::Stdio {
        let console = console::Console::new(
            machine.com1(),
            machine
                .console_ready_event()
                .context("cannot set up the console")?,
            machine.control(),
            output.sink(),
        );
        machine.event_loop().add(Arc::new(Mutex::new(console)));
        let stdin = libc::STDIN_FILENO;
        if terminal::is_tty(stdin) {
            let saved =
                terminal::enter_raw_mode(stdin).context("cannot set the terminal to raw mode")?;
            machine.exit_notifiers().add(move |_, _, _| saved.restore());
            let (fd, termios) = saved.parts();
            seccomp::sigsys::restore_terminal_on_trap(fd, termios);
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                saved.restore();
                previous(info);
            }));
        }
    }
    for socket in vsock_sockets.0.clone() {
        machine.exit_notifiers().add(move |_, _, _| {
            socket.remove();
        });
    }
    if let Some(path) = &args.qmp {
        let server = vmm_qmp::QmpServer::bind(
            path,
            qmp::version(),
            qmp::MachineBackend::new(machine.control()),
        )
        .context("cannot start QMP")?;
        machine.add_event_listener(qmp::forward_events(server.outbox()));
        // The server removes its socket when dropped; this covers every
        // exit path that ends the process before that. Only the socket it
        // created: a device given as --qmp, or a file someone put at the
        // path meanwhile, stays.
        if let Some(socket) = server.socket() {
            machine.exit_notifiers().add(move |_, _, _| {
                socket.remove();
            });
        }
        machine.event_loop().add(Arc::new(Mutex::new(server)));
    }
    if let Some(listener) = gdb_listener {
        start_gdb(&mut machine, listener, args.cpus, filters.as_ref())?;
    }
    if args.paused && args.serial == Serial::Stdio {
        eprintln!(
            "vmm: paused in prelaunch: Ctrl-A c opens the monitor, where `cont` starts the guest{}",
            if args.qmp.is_some() {
                " (or QMP cont)"
            } else {
                ""
            }
        );
    }
    // Last, once the boot vCPU runs (off its way to the first guest
    // instruction) and before the main loop reads anything: every other
    // thread exists and the front ends are set up; from here on the main
    // thread only runs the loop and the way out.
    let lockdown = || -> Result<(), vmm_pc::BoxError> {
        if let Some(warning) = host_check::linux_on_pvm(vmm_core::kvm::KvmFlavor::detect(), &kernel)
        {
            log::warn!("{warning}");
        }
        if let Some(f) = &filters {
            f.install(seccomp::Thread::Main)
                .context("cannot install the main thread's seccomp filter")?;
        }
        Ok(())
    };
    let result = machine
        .run_then_exit(lockdown)
        .context("the machine failed");
    let dropped = output.finish(Duration::from_secs(2));
    if dropped > 0 {
        log::warn!("{dropped} bytes of guest serial output were dropped (not read in time)");
    }
    result
}

/// Sockets the VMM made, removed when dropped if their paths still name
/// them ([`vmm_qmp::SocketPath::remove`]).
struct OwnedSockets(Vec<vmm_qmp::SocketPath>);

impl Drop for OwnedSockets {
    fn drop(&mut self) {
        for s in &self.0 {
            s.remove();
        }
    }
}

/// The gdb stub's thread on `listener` (`--gdb`), with its seccomp list;
/// its Unix socket, if any, is removed on the way out.
fn start_gdb(
    machine: &mut PcMachine,
    listener: vmm_gdb::GdbListener,
    cpus: u32,
    filters: Option<&Arc<seccomp::Filters>>,
) -> Result<()> {
    let (stops, stop_rx) = vmm_gdb::stop_channel().context("cannot start the gdb stub")?;
    machine.set_gdb_stops(stops);
    if let vmm_gdb::GdbListener::Unix(_, path) = &listener {
        let path = path.clone();
        machine.exit_notifiers().add(move |_, _, _| {
            let _ = std::fs::remove_file(&path);
        });
    }
    let on_start: Option<vmm_gdb::server::ThreadStart> = filters.map(|f| {
        let f = Arc::clone(f);
        let start: vmm_gdb::server::ThreadStart =
            Box::new(move || f.install(seccomp::Thread::Gdb).map_err(io::Error::other));
        start
    });
    let link = vmm_pc::gdb::GdbLink::new(machine.control(), cpus);
    vmm_gdb::spawn(listener, link, stop_rx, on_start).context("cannot start the gdb stub")?;
    Ok(())
}
