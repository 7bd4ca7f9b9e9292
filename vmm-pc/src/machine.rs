//! The PC machine put together and run (QEMU's `pc_init1`, then `main_loop`).
//!
//! [`PcMachine::build`] goes through these steps, in this order:
//!
//! 1. check the configuration: vCPU count, memory size against the host;
//! 2. open the kernel and initrd files (so a typo fails before KVM work),
//!    regular files only, without ever blocking (`images.rs`);
//! 3. open `/dev/kvm` and check it; check the vCPU count against KVM's limit;
//! 4. create the VM with its RAM (memory before the irqchip: much faster);
//! 5. the TSS pages, the in-kernel irqchip and PC GSI routing (or, split,
//!    only the local APICs: [`crate::irqchip`]), and KVM's PIT if asked
//!    for ([`PitBackend::Kvm`]);
//! 6. start one thread per vCPU (SIGINT/SIGTERM/SIGHUP blocked first, so
//!    that they inherit the mask), each creating and setting up its vCPU,
//!    then running the thread-start hook if given (a seccomp filter): that
//!    set-up runs beside steps 7 to 9, the boot vCPU waiting for its entry
//!    point (step 7) only for its registers;
//! 7. load the kernel, initrd and command line; write the e820 map, ACPI
//!    and MP tables and the boot parameters (zero page or PVH start info);
//! 8. create the clocks, then the devices (our PIT and RTC arm timers on
//!    the clocks) and connect their interrupts;
//! 9. build the main loop: signals, vCPU requests, reset and poweroff
//!    lines, timers;
//! 10. hand the vCPU threads the finished I/O (they run nothing before the
//!     machine starts) and wait for the boot vCPU's set-up.
//!
//! [`PcMachine::run`] then starts the vCPUs and runs the main loop until
//! the guest resets or powers off, the user quits, a signal arrives or a
//! vCPU fails; every one of those paths runs the exit notifiers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_clock::{Clocks, TimerFdAlarm};
use vmm_core::event_loop::EventLoop;
use vmm_core::kvm::KvmSystem;
use vmm_core::notify::NotifierList;
use vmm_core::signals::SignalSubscriber;
use vmm_core::vcpu::Vcpus;
use vmm_core::vm::Vm;
use vmm_runstate::RunStateMachine;
use vmm_sys_util::eventfd::EventFd;

use crate::control::{Command, MachineEvent, QuitSource, ReplyFn};
use crate::cpu;
use crate::devices::{create_devices, Com1, DeviceError, PcDevices, PcShape};
use crate::images::{open_regular, BootImages};
use crate::io::PcIo;
use crate::irqchip::IrqLines;
use crate::layout::{self, MAX_CPUS};
use crate::memory;

mod commands;
mod cpu_state;
mod gdb;
mod info;
mod live;
mod migration;
mod running;
mod snapshot;
mod suspend;
mod types;
mod vcpu_init;
mod watchdog;

pub use crate::migration::parse_uri as parse_migration_uri;
pub use migration::{parse_incoming, Incoming, MigrationInfo};
pub use types::{BoxError, ExitReason, IrqChipMode, PcConfig, PcError, PitBackend, RebootAction};
pub use watchdog::WatchdogAction;

/// Requests recorded by main-loop subscribers, read after each iteration.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) io_errors: Vec<crate::BlockIoError>,
    signal: Option<i32>,
    reset: bool,
    poweroff: bool,
    /// The guest wrote SLP_TYP = S3 with SLP_EN.
    suspend: bool,
    /// The RTC alarm matched with AIE set (a wake-up source).
    rtc_alarm: bool,
    panic: bool,
    watchdog: bool,
    /// The guest set its RTC: the new offset from host time, seconds.
    rtc_change: Option<i64>,
}

/// A handle for the console and other front ends: ask the machine to
/// quit, or run a [`Command`], from the main-loop thread or any other.
#[derive(Clone)]
pub struct MachineControl {
    quit: Arc<AtomicBool>,
    commands: Arc<Mutex<VecDeque<Queued>>>,
    wake: Arc<EventFd>,
}

/// A command waiting for the main loop, with the claim its sender may
/// withdraw it by ([`MachineControl::submit_withdrawable`]).
type Queued = (Command, ReplyFn, Option<Arc<Claim>>);

/// Who has a queued command: still nobody, the main loop (it runs), or
/// nobody ever (its sender gave up waiting before it ran).
#[derive(Debug, Default)]
pub struct Claim(std::sync::atomic::AtomicU8);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Claim {
    /// The main loop takes the command: false if it was withdrawn.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Its sender withdraws it: false if the main loop took it already
    /// (its reply will come).
    pub fn withdraw(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

impl std::fmt::Debug for MachineControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineControl")
            .field("quit", &self.quit)
            .field("pending_commands", &lock(&self.commands).len())
            .finish()
    }
}

impl MachineControl {
    /// Asks the machine to stop, from the console (Ctrl-A x).
    pub fn request_quit(&self) {
        self.quit.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Queues `command`; the main loop runs it at its next wake-up (this
    /// one) and calls `reply` with the outcome.
    pub fn submit(&self, command: Command, reply: ReplyFn) {
        lock(&self.commands).push_back((command, reply, None));
        let _ = self.wake.write(1);
    }

    /// [`MachineControl::submit`], and a claim by which the sender may
    /// withdraw the command while it has not run (a sender that stops
    /// waiting must not have it run later unbeknown to it).
    pub fn submit_withdrawable(&self, command: Command, reply: ReplyFn) -> Arc<Claim> {
        let claim = Arc::new(Claim::default());
        lock(&self.commands).push_back((command, reply, Some(Arc::clone(&claim))));
        let _ = self.wake.write(1);
        claim
    }
}

/// A built PC, ready to run.
pub struct PcMachine {
    vm: Vm,
    vcpus: Vcpus,
    devices: PcDevices,
    event_loop: EventLoop,
    clocks: Clocks,
    runstate: RunStateMachine,
    pending: Arc<Mutex<Pending>>,
    control: MachineControl,
    exit_notifiers: NotifierList<ExitReason>,
    event_listeners: Vec<EventListener>,
    start_paused: bool,
    quit: Option<QuitSource>,
    /// The kvmclock when the VM was paused, put back on resume.
    paused_clock: Option<u64>,
    /// What a reset reloads and puts back.
    images: BootImages,
    entry: Arc<vcpu_init::EntryCell>,
    fresh_irqchip: Vec<kvm_bindings::kvm_irqchip>,
    fresh_kvm_pit: Option<kvm_bindings::kvm_pit_state2>,
    /// What a guest reset does.
    reboot: RebootAction,
    /// What the watchdog's expiry does.
    watchdog_action: WatchdogAction,
    /// Stop in internal-error rather than exit.
    stop_on_error: bool,
    /// The disks.
    disks: Vec<crate::virtio::Disk>,
    /// The MSRs KVM can save (`KVM_GET_MSR_INDEX_LIST`).
    msr_indices: Vec<u32>,
    /// KVM's supported CPUID as the vCPUs' tables derive from it (what a
    /// snapshot's shape records, see [`Self::shape`]).
    supported_cpuid: kvm_bindings::CpuId,
    /// Which PIT serves.
    pit_backend: PitBackend,
    /// Snapshot jobs not yet dismissed.
    jobs: crate::snapshot::jobs::Jobs,
    /// The last migration (`query-migrate`).
    migration: Option<MigrationInfo>,
    /// Live migration: the thread, the parameters, the running one.
    live: live::Live,
    /// `MIGRATION` events wanted (the `events` capability).
    migration_events: bool,
    /// `--incoming`: where the machine's state comes from.
    incoming: Option<Incoming>,
    /// `--incoming file:`'s file, read and decoded during the build
    /// (checked against the machine when loaded).
    incoming_file: Option<Result<snapshot::ParsedFile, String>>,
    /// `--incoming defer`, still waiting for `migrate-incoming`.
    deferred_incoming: bool,
    /// Run once an incoming migration is loaded (no `--paused`, or a
    /// `cont` meanwhile).
    autostart: bool,
    /// The network cards.
    nets: Vec<crate::virtio::Nic>,
    /// The entropy devices.
    rngs: Vec<crate::virtio::Rng>,
    /// The socket devices.
    vsocks: Vec<crate::virtio::Vsock>,
    /// The socket devices on the host's vhost-vsock: (CID, slot).
    vhost_vsocks: Vec<(u64, u8)>,
    /// The gdb stub's client and where its stops go.
    gdb: gdb::GdbState,
    /// The guest asked for S3 while not running (a `stop` came first):
    /// done when it runs again.
    suspend_requested: bool,
    /// The guest is in ACPI S3 though the run state is a stopped one (a
    /// save, a migration or a `--paused` destination of a suspended
    /// guest, or a loaded snapshot of one): the next start goes to
    /// `suspended`, not `running`, and a save or migration carries it.
    asleep: bool,
    /// RAM regions that are a snapshot file's image mapped private
    /// ([`crate::snapshot::mapped`]): there the page map alone no longer
    /// tells untouched pages (zeroes) from pages still in the file.
    ram_file: Option<crate::snapshot::mapped::RamFile>,
}

impl std::fmt::Debug for PcMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcMachine")
            .field("vcpus", &self.vcpus)
            .field("runstate", &self.runstate.state())
            .finish_non_exhaustive()
    }
}

impl PcMachine {
    /// Builds the machine (see the module docs for the steps).
    pub fn build(config: PcConfig) -> Result<Self, PcError> {
        // 1. Configuration.
        if config.cpus == 0 || config.cpus > MAX_CPUS {
            return Err(PcError::CpuCount {
                cpus: config.cpus,
                max: MAX_CPUS,
            });
        }
        let host_limit = memory::host_memory_bytes().unwrap_or(u64::MAX);
        let regions = memory::ram_regions(config.memory, host_limit)?;
        config.check_irqchip()?;

        // 2. Files.
        let kernel_file = open_regular("kernel", &config.kernel)?;
        let initrd_file = match &config.initrd {
            Some(p) => Some(open_regular("initrd", p)?),
            None => None,
        };
        let disk_images = config
            .disks
            .iter()
            .map(|d| crate::disks::open_image(d).map(|image| (d.clone(), image.size)))
            .collect::<Result<Vec<_>, _>>()?;
        let taps = config
            .nets
            .iter()
            .map(|n| crate::nets::open_net(n).map(|open| (n.clone(), open)))
            .collect::<Result<Vec<_>, _>>()?;

        // 3. KVM.
        let kvm = KvmSystem::open()?;
        // The MSRs a snapshot saves: read now, before any seccomp filter.
        let msr_indices = kvm
            .kvm()
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .map_err(PcError::MsrIndexList)?;
        let max = u32::try_from(kvm.max_vcpus())
            .unwrap_or(u32::MAX)
            .min(MAX_CPUS);
        if config.cpus > max {
            return Err(PcError::CpuCount {
                cpus: config.cpus,
                max,
            });
        }
        // KVM_GET_SUPPORTED_CPUID is start-up's slowest ioctl where CPUID
        // traps to an outer hypervisor (cpu::supported), so it runs on a
        // thread of its own beside steps 4 and 5 (started here unless the
        // front end started it earlier still; in line if no thread can be
        // had). That thread ends before the vCPU threads start (step 6).
        let prefetch = config
            .cpuid
            .or_else(|| cpu::supported::CpuidPrefetch::start().ok());
        // `--incoming file:`'s file is read, checksummed and decoded on a
        // thread of its own beside steps 4 to 7, joined after them (on a
        // thread with no filter, like the kernel's reading); the checks
        // against the machine come with the load.
        let incoming_path = match &config.incoming {
            Some(Incoming::File(path)) => Some(path.as_path()),
            _ => None,
        };
        let parse = |path: &std::path::Path| snapshot::parse_file(path);
        let (built, incoming_file) = std::thread::scope(|scope| {
            let reading = incoming_path.map(|path| {
                let thread = std::thread::Builder::new()
                    .name("incoming".into())
                    .spawn_scoped(scope, move || parse(path));
                (path, thread)
            });
            let built = (|| -> Result<_, PcError> {
                // 4. VM and RAM.
                let vm = Vm::new(&kvm, &regions)?;
                log::debug!("start-up: VM and RAM made");

                // 5. Interrupt controllers and timers in the kernel (KVM
                //    wants them before any vCPU).
                vm.set_tss_address(layout::KVM_TSS_ADDR)?;
                let irq = crate::irqchip::create(&vm, config.irqchip)?;
                if config.pit == PitBackend::Kvm {
                    vm.create_in_kernel_pit()?;
                }

                // 6. vCPU threads, started now: their set-up (the thread,
                //    KVM_CREATE_VCPU, CPUID, the seccomp filter) runs beside
                //    steps 7 to 9 on another CPU. The boot vCPU waits for
                //    its entry point only for its registers; the threads ask
                //    the I/O (handed over in step 10) nothing before the
                //    machine starts. They inherit the shutdown signals
                //    blocked (the binary blocks them first thing; so does
                //    step 9, for every later thread).
                let supported_cpuid = match prefetch {
                    Some(prefetch) => prefetch.join(),
                    None => cpu::supported::supported_cpuid(&kvm),
                }?;
                log::debug!("start-up: CPUID had");
                vmm_core::signals::block_shutdown_signals()?;
                let (entry, loader) = vcpu_init::EntryCell::loading();
                let io = Arc::new(crate::io::LateIo::default());
                let init = vcpu_init::vcpu_init(
                    &vm,
                    supported_cpuid.clone(),
                    config.cpus,
                    Arc::clone(&entry),
                );
                let vcpus = Vcpus::spawn_unsettled(
                    &vm,
                    config.cpus,
                    init,
                    Arc::clone(&io) as Arc<dyn vmm_core::io::IoHandler>,
                    config.vcpu_thread_start.clone(),
                )?;
                // After `vcpus`, so dropped before it on a failure below:
                // a boot vCPU waiting for its entry gives up before
                // `vcpus` joins its thread.
                let loader = loader;

                // 7. Kernel, initrd, command line, tables.
                let mut images = BootImages {
                    kernel: kernel_file,
                    initrd: initrd_file,
                    cmdline: config.cmdline.clone(),
                    memory: config.memory,
                    cpus: config.cpus,
                    wdat: config.i6300esb.is_some(),
                };
                loader.loaded(images.load(vm.memory())?);
                log::debug!("start-up: kernel and tables loaded");
                // What a reset puts back: the fresh irqchip (and KVM's
                // PIT); with the split irqchip, ours are in the device model.
                let fresh_irqchip = match irq {
                    IrqLines::Kernel(_) => vm.irqchip_state()?,
                    IrqLines::Split(_) => Vec::new(),
                };
                let fresh_kvm_pit = match config.pit {
                    PitBackend::Kvm => Some(vm.pit_state()?),
                    PitBackend::Userspace => None,
                };
                Ok((
                    vm,
                    irq,
                    images,
                    entry,
                    io,
                    vcpus,
                    supported_cpuid,
                    fresh_irqchip,
                    fresh_kvm_pit,
                ))
            })();
            let incoming_file = reading.map(|(path, thread)| match thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|_| Err("the reading thread panicked".to_owned())),
                Err(_) => parse(path),
            });
            (built, incoming_file)
        });
        let (vm, irq, images, entry, late_io, vcpus, supported_cpuid, fresh_irqchip, fresh_kvm_pit) =
            built?;
        log::debug!("start-up: the incoming file had");

        // 8. Devices.
        let mut io = PcIo::new();
        // The clocks come first: the PIT and the RTC arm timers on them.
        let clocks = Clocks::host();
        let shape = PcShape {
            memory: config.memory,
            cpus: config.cpus,
            pit: config.pit,
            ib700: config.ib700,
            i6300esb: config.i6300esb,
        };
        let mut devices = create_devices(&vm, &irq, &mut io, &clocks, config.serial, shape)?;
        io.set_irq_lines(irq.clone());

        // 9. Signals first (blocked in this thread, so every thread made
        //    from here on inherits the mask), then the loop.
        let pending = Arc::new(Mutex::new(Pending::default()));
        let mut event_loop = EventLoop::new()?;
        let p = Arc::clone(&pending);
        let signals = SignalSubscriber::new(move |signo| {
            lock(&p).signal.get_or_insert(signo);
        })?;
        event_loop.add(Arc::new(Mutex::new(signals)));
        let alarm = TimerFdAlarm::new(&clocks).map_err(PcError::Clock)?;
        event_loop.add(Arc::new(Mutex::new(alarm)));
        let wake = Arc::new(
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                .map_err(|e| DeviceError::EventFd("main loop wake-up", e))?,
        );
        let control = MachineControl {
            quit: Arc::new(AtomicBool::new(false)),
            commands: Arc::default(),
            wake: Arc::clone(&wake),
        };
        event_loop.add_eventfd("wake-up", clone_evt(&wake)?, |_| {});
        {
            // The guest setting its clock becomes an RTC_CHANGE event; the
            // RTC calls this on a vCPU thread, so it only notes and wakes.
            let p = Arc::clone(&pending);
            let wake = Arc::clone(&wake);
            lock(&devices.rtc).set_change_listener(Box::new(move |offset| {
                lock(&p).rtc_change = Some(offset);
                let _ = wake.write(1);
            }));
        }
        {
            // The RTC alarm, a wake-up source from S3: noted, the main
            // loop decides (it runs on a timer's or a vCPU's thread).
            let p = Arc::clone(&pending);
            let wake = Arc::clone(&wake);
            lock(&devices.rtc).set_alarm_listener(Box::new(move || {
                lock(&p).rtc_alarm = true;
                let _ = wake.write(1);
            }));
        }
        let p = Arc::clone(&pending);
        event_loop.add_eventfd(
            "ACPI suspend",
            clone_evt(&devices.suspend_evt)?,
            move |_| {
                lock(&p).suspend = true;
            },
        );
        let p = Arc::clone(&pending);
        event_loop.add_eventfd("i8042 reset", clone_evt(&devices.reset_evt)?, move |_| {
            lock(&p).reset = true;
        });
        let p = Arc::clone(&pending);
        event_loop.add_eventfd("pvpanic", clone_evt(&devices.panic_evt)?, move |_| {
            lock(&p).panic = true;
        });
        if let Some(evt) = &devices.watchdog_evt {
            let p = Arc::clone(&pending);
            event_loop.add_eventfd("watchdog", clone_evt(evt)?, move |_| {
                lock(&p).watchdog = true;
            });
        }
        let p = Arc::clone(&pending);
        event_loop.add_eventfd(
            "ACPI poweroff",
            clone_evt(&devices.poweroff_evt)?,
            move |_| {
                lock(&p).poweroff = true;
            },
        );

        let mut slots = crate::virtio::Slots::new(&vm, &irq);
        // The disks: virtio-blk-pci devices on the bus, their worker
        // threads made now (parked until the guest activates them).
        let disks = {
            let p = Arc::clone(&pending);
            let wake = Arc::clone(&wake);
            let events = move |id: &str| -> Arc<dyn vmm_virtio::blk::BlockEvents> {
                Arc::new(crate::io_error::DiskEvents::new(
                    id,
                    Arc::clone(&p),
                    Arc::clone(&wake),
                ))
            };
            crate::virtio::add_disks(
                &vm,
                &mut lock(&devices.pci),
                &mut slots,
                &disk_images,
                config.device_thread_start.clone(),
                &events,
                config.incoming.is_none(),
            )?
        };
        // The network cards, the same way, each on its tap.
        let nets = crate::virtio::add_nets(
            &vm,
            &mut lock(&devices.pci),
            &mut slots,
            taps,
            config.device_thread_start.clone(),
        )?;
        // The socket devices, on the listeners the front end bound.
        let vsocks = crate::virtio::add_vsocks(
            &vm,
            &mut lock(&devices.pci),
            &mut slots,
            config.vsocks,
            config.vsock_thread_start.clone(),
        )?;
        let vhost_vsocks = crate::virtio::add_vhost_vsocks(
            &vm,
            &mut lock(&devices.pci),
            &mut slots,
            &config.vhost_vsocks,
            config.vsock_thread_start.clone(),
        )?;
        // The entropy devices.
        let rngs = crate::virtio::add_rngs(
            &vm,
            &mut lock(&devices.pci),
            &mut slots,
            &config.rngs,
            config.device_thread_start.clone(),
        )?;
        let entries = crate::virtio_state::entries(&disks, &nets, &rngs, &vsocks, &vhost_vsocks);
        crate::virtio_state::register(&mut devices.model, &devices.pci, entries);

        // `--incoming`'s listener or command; the migration thread starts
        // with the machine (`run_with`).
        let live = live::Live::new(
            Arc::clone(&wake),
            config.migration_thread_start.clone(),
            config.spawn_allowed,
            config.migration_control,
            config.incoming.as_ref(),
        )?;

        // 10. The vCPUs get the finished I/O, and the boot vCPU's set-up
        //     (started in step 6) is waited for: a failure of it is the
        //     build's.
        late_io.set(Arc::new(io));
        vcpus.settle()?;
        log::debug!("start-up: vCPU threads made");
        // The split irqchip's 8259s kick the boot vCPU when their output
        // rises (it runs only once the machine starts, after this).
        if let (IrqLines::Split(chips), Some(kick)) = (&irq, vcpus.kicker(0)) {
            chips.link.set_kick(Box::new(kick));
        }
        event_loop.add_eventfd(
            "vCPU requests",
            vcpus
                .request_event()
                .try_clone()
                .map_err(|e| DeviceError::EventFd("vCPU requests", e))?,
            |_| {},
        );

        Ok(Self {
            vm,
            vcpus,
            devices,
            event_loop,
            clocks,
            runstate: RunStateMachine::new(),
            pending,
            control,
            exit_notifiers: NotifierList::new(),
            event_listeners: Vec::new(),
            start_paused: config.start_paused,
            quit: None,
            paused_clock: None,
            images,
            entry,
            fresh_irqchip,
            fresh_kvm_pit,
            reboot: config.reboot,
            watchdog_action: config.watchdog_action,
            stop_on_error: config.stop_on_error,
            disks,
            msr_indices,
            supported_cpuid,
            pit_backend: config.pit,
            jobs: crate::snapshot::jobs::Jobs::default(),
            migration: None,
            live,
            migration_events: false,
            incoming: config.incoming.clone(),
            incoming_file,
            deferred_incoming: false,
            autostart: !config.start_paused,
            nets,
            rngs,
            vsocks,
            vhost_vsocks,
            gdb: gdb::GdbState::default(),
            suspend_requested: false,
            asleep: false,
            ram_file: None,
        })
    }

    /// COM1, for the console to feed input into.
    pub fn com1(&self) -> Arc<Mutex<Com1>> {
        Arc::clone(&self.devices.com1)
    }

    /// A copy of the eventfd written when COM1's receive FIFO drains.
    pub fn console_ready_event(&self) -> std::io::Result<EventFd> {
        self.devices.console_ready_evt.try_clone()
    }

    /// The main loop, to add front-end subscribers (console input, …).
    pub fn event_loop(&mut self) -> &mut EventLoop {
        &mut self.event_loop
    }

    /// A handle to ask the machine to quit.
    pub fn control(&self) -> MachineControl {
        self.control.clone()
    }

    /// Notifiers run once, with the exit reason, on every way out of
    /// [`PcMachine::run`] (QEMU's exit notifiers).
    pub fn exit_notifiers(&self) -> &NotifierList<ExitReason> {
        &self.exit_notifiers
    }

    /// Adds a listener for [`MachineEvent`]s (run on the main-loop thread).
    pub fn add_event_listener<F>(&mut self, listener: F)
    where
        F: FnMut(&MachineEvent) + Send + 'static,
    {
        self.event_listeners.push(Box::new(listener));
    }

    fn emit(&mut self, event: MachineEvent) {
        for listener in &mut self.event_listeners {
            listener(&event);
        }
    }

    /// The guest's memory (for tests and tools).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }
}

/// A [`MachineEvent`] listener.
type EventListener = Box<dyn FnMut(&MachineEvent) + Send>;

/// Why a command did not complete.
enum CommandFailure {
    /// Refused in this state; the machine goes on.
    Refused(String),
    /// The machine failed while carrying it out.
    Machine(PcError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn clone_evt(fd: &EventFd) -> Result<EventFd, PcError> {
    fd.try_clone()
        .map_err(|e| PcError::Devices(DeviceError::EventFd("main loop", e)))
}

#[cfg(test)]
mod tests {
    use super::Claim;

    #[test]
    fn a_command_is_either_withdrawn_or_run() {
        let c = Claim::default();
        assert!(c.take());
        assert!(!c.withdraw(), "taken: its reply comes");
        let c = Claim::default();
        assert!(c.withdraw());
        assert!(!c.take(), "withdrawn: never runs");
        assert!(!c.withdraw());
    }
}
