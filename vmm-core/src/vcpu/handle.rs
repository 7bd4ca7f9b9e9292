//! The controller side of the vCPU threads: spawn, pause, resume, exit.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::start::{Gate, SetUpLimit};
use super::thread::{Event, Response, Role, Started, VcpuThread};
use super::VcpuRequest;
use crate::io::IoHandler;
use crate::vm::Vm;

/// Sets up one vCPU for the machine (CPUID, MSRs, registers), on the vCPU's
/// own thread before it first runs (the vCPU may have been created on
/// another: see `start.rs`). Gets the vCPU and its index.
pub type VcpuInit =
    Arc<dyn Fn(&VcpuFd, u32) -> Result<(), Box<dyn StdError + Send + Sync>> + Send + Sync>;

/// Where on a vCPU thread the thread-start hook ([`VcpuThreadStart`]) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStartStage {
    /// Once, on the boot vCPU's thread, before anything else there, and
    /// only when the machine has more than one vCPU: that thread then
    /// starts a helper that creates the other vCPUs and their threads,
    /// which inherit what the hook put in place (a seccomp filter) from
    /// birth, their own set-up included. So a filter compiled once is
    /// installed once, not once per vCPU.
    Spawner,
    /// On vCPU `index`'s thread, after its vCPU is set up and its
    /// `kvm_run` mapped (and, on the boot vCPU's thread, once every other
    /// vCPU exists), before the thread reports the vCPU created: before
    /// it runs guest code. `inherited`: the thread already has what the
    /// `Spawner` stage put in place (every thread of a machine with more
    /// than one vCPU).
    Ready {
        /// The vCPU.
        index: u32,
        /// Whether the `Spawner` stage's work is in place on this thread.
        inherited: bool,
    },
}

/// Runs on the vCPU threads at the stages of [`VcpuStartStage`]. Opaque to
/// this crate: the binary installs the threads' seccomp filters with it
/// (which each thread keeps for the rest of its life, its reset path
/// included). An error fails the spawn like a failed set-up.
pub type VcpuThreadStart =
    Arc<dyn Fn(VcpuStartStage) -> Result<(), Box<dyn StdError + Send + Sync>> + Send + Sync>;

/// How long a vCPU may take to answer a pause, resume or creation.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {index}")]
    Create {
        /// The vCPU.
        index: u32,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The machine's set-up of the vCPU failed.
    #[error("cannot set up vCPU {index}")]
    Init {
        /// The vCPU.
        index: u32,
        /// What the machine reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Mapping the vCPU's `kvm_run` failed.
    #[error("cannot map kvm_run of vCPU {index}")]
    RunMap {
        /// The vCPU.
        index: u32,
        /// The mmap error.
        #[source]
        source: std::io::Error,
    },
    /// The thread-start hook ([`VcpuThreadStart`]) failed.
    #[error("the thread-start hook of vCPU {index} failed")]
    ThreadStart {
        /// The vCPU.
        index: u32,
        /// What the hook reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The thread could not be started.
    #[error("cannot start the thread of vCPU {index}")]
    Spawn {
        /// The vCPU.
        index: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The request eventfd could not be created.
    #[error("cannot create the vCPU request eventfd")]
    EventFd(#[source] std::io::Error),
    /// `KVM_GET_VCPU_MMAP_SIZE` failed.
    #[error("cannot read the vCPU mmap size")]
    MmapSize(#[source] kvm_ioctls::Error),
    /// A vCPU did not answer in time.
    #[error("vCPU {index} did not answer `{what}` within {ANSWER_TIMEOUT:?}")]
    Timeout {
        /// The vCPU.
        index: u32,
        /// What it was asked.
        what: &'static str,
    },
    /// A vCPU thread ended unexpectedly.
    #[error("the thread of vCPU {index} is gone")]
    ThreadGone {
        /// The vCPU.
        index: u32,
    },
}

/// The vCPU → main loop request channel; each send also writes the eventfd
/// that the main loop polls.
#[derive(Clone)]
pub(crate) struct Requests {
    tx: Sender<VcpuRequest>,
    evt: Arc<EventFd>,
}

impl Requests {
    pub(crate) fn send(&self, request: VcpuRequest) {
        if self.tx.send(request).is_ok() {
            if let Err(e) = self.evt.write(1) {
                log::error!("cannot wake the main loop for a vCPU request: {e}");
            }
        }
    }
}

/// The kick signal: the first real-time signal, as Firecracker uses. The
/// only signal the controller sends (a seccomp list can allow just it).
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal exists to interrupt KVM_RUN with EINTR.
}

fn install_kick_handler() -> Result<(), VcpuError> {
    // The outcome of the one installation, for every later caller too: a
    // failure must not turn into "installed" on the second try (a kick
    // without a handler would kill the process).
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(|errno| VcpuError::Signal(vmm_sys_util::errno::Error::new(errno)))
}

/// Gets one vCPU's attention from any thread, as the controller's kick
/// does: what a device model outside KVM uses when its interrupt output
/// rises (see [`crate::io::IoHandler::external_interrupts`]). From the
/// vCPU's own thread it does nothing: that thread looks at the output
/// before its next `KVM_RUN` anyway.
///
/// A vCPU whose set-up has not finished has never run: it needs no kick
/// and gets none (it reads what it was told before it first runs).
#[derive(Debug, Clone)]
pub struct VcpuKick {
    index: u32,
    started: Arc<OnceLock<Started>>,
}

impl VcpuKick {
    /// Sets `immediate_exit` and sends the kick signal (`tgkill`), unless
    /// called on the vCPU's own thread.
    pub fn kick(&self) {
        let Some(started) = self.started.get() else {
            return;
        };
        if super::current_tid() == started.tid {
            return;
        }
        started.run_map.set_immediate_exit(true);
        // SAFETY: tgkill takes three integers and touches no memory of
        // ours; it sends the kick signal, whose handler does nothing, to a
        // thread of this process only (the pid is checked by the kernel).
        let r = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::c_long::from(started.pid),
                libc::c_long::from(started.tid),
                libc::c_long::from(kick_signal()),
            )
        };
        if r != 0 {
            log::debug!(
                "vcpu {}: kick failed: {}",
                self.index,
                std::io::Error::last_os_error()
            );
        }
    }
}

struct VcpuHandle {
    index: u32,
    events: Sender<Event>,
    responses: Receiver<Response>,
    /// What the thread publishes once its vCPU is set up.
    started: Arc<OnceLock<Started>>,
    /// Its first answer, `Created` or `CreateFailed`, is still to be read
    /// (see [`VcpuHandle::settle`]).
    owes_created: AtomicBool,
    /// Opened by anything sent to a vCPU or waited for (see [`Gate`]).
    gate: Arc<Gate>,
    /// Parked outside `KVM_RUN`, on its way to or blocked on its channel:
    /// written by the thread alone (true as it parks, whether told to or
    /// on its own; false as it leaves to run), read at each send. Such a
    /// thread reads its next event without a kick; a kick would only cost
    /// a signal and an empty `KVM_RUN` (EINTR) once it runs.
    parked: Arc<AtomicBool>,
}

impl VcpuHandle {
    fn send(&self, event: Event) -> Result<(), VcpuError> {
        self.gate.open();
        self.events.send(event).map_err(|_| self.gone())?;
        // Sent, then looked: the thread stores `false`, then looks at its
        // channel before it runs (`thread.rs`), each with a fence between,
        // so either this load sees it leaving (and kicks) or its look finds
        // the event.
        fence(Ordering::SeqCst);
        if !self.parked.load(Ordering::Relaxed) {
            self.kick();
        }
        Ok(())
    }

    /// Why the thread is gone: its failed set-up, if that is still to be
    /// read (a thread ends right after answering it).
    fn gone(&self) -> VcpuError {
        match self.settle(Instant::now()) {
            Ok(()) | Err(VcpuError::Timeout { .. }) => VcpuError::ThreadGone { index: self.index },
            Err(e) => e,
        }
    }

    /// Makes the thread look at its channel soon, wherever it is.
    fn kick(&self) {
        self.kicker().kick();
    }

    fn kicker(&self) -> VcpuKick {
        VcpuKick {
            index: self.index,
            started: Arc::clone(&self.started),
        }
    }

    /// Reads the thread's first answer if it is still owed, until
    /// `deadline`: its vCPU's set-up, which a vCPU other than the boot one
    /// finishes after [`Vcpus::spawn`] returned. A failed set-up is
    /// reported here, to the first call that waits on the vCPU.
    fn settle(&self, deadline: Instant) -> Result<(), VcpuError> {
        if !self.owes_created.load(Ordering::Acquire) {
            return Ok(());
        }
        // The others' set-up waits for the gate; the boot vCPU's does not.
        if self.index > 0 {
            self.gate.open();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match self.responses.recv_timeout(left) {
            Ok(Response::Created) => Ok(()),
            Ok(Response::CreateFailed(e)) => Err(e),
            Ok(other) => {
                log::error!("vcpu {}: answered {other:?} before its set-up", self.index);
                Err(VcpuError::ThreadGone { index: self.index })
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(VcpuError::Timeout {
                    index: self.index,
                    what: "create",
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::ThreadGone { index: self.index }),
        };
        self.owes_created.store(false, Ordering::Release);
        answer
    }

    /// The next answer, whatever it is, until `deadline`.
    fn answer(&self, what: &'static str, deadline: Instant) -> Result<Response, VcpuError> {
        self.settle(deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match self.responses.recv_timeout(left) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::Timeout {
                index: self.index,
                what,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::ThreadGone { index: self.index }),
        }
    }

    /// Waits for the answer to `what`, until `deadline`.
    fn expect(
        &self,
        what: &'static str,
        want: fn(&Response) -> bool,
        deadline: Instant,
    ) -> Result<(), VcpuError> {
        self.settle(deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match self.responses.recv_timeout(left) {
            Ok(r) if want(&r) => Ok(()),
            Ok(r) => {
                log::error!("vcpu {}: answered {r:?} to {what}", self.index);
                Err(VcpuError::ThreadGone { index: self.index })
            }
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::Timeout {
                index: self.index,
                what,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::ThreadGone { index: self.index }),
        }
    }
}

/// Starts a vCPU thread named after its vCPU.
pub(crate) fn spawn_thread(body: VcpuThread) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu {}", body.index))
        .spawn(move || body.run())
}

/// All vCPU threads of a VM.
///
/// Dropping it stops and joins every thread.
pub struct Vcpus {
    handles: Vec<VcpuHandle>,
    requests: Receiver<VcpuRequest>,
    request_evt: Arc<EventFd>,
    /// The boot vCPU's thread.
    boot_thread: Option<JoinHandle<()>>,
    /// The other threads' join handles (the start helper's and the other
    /// vCPUs'), as they start.
    spawned: Receiver<JoinHandle<()>>,
    /// How many vCPUs, from the boot one, [`Vcpus::settle`] waits for.
    settled: usize,
}

impl fmt::Debug for Vcpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpus")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl Vcpus {
    /// Starts `count` vCPU threads, each setting up its vCPU with `init`,
    /// every vCPU paused (call [`Vcpus::resume_all`] to run them). vCPU `i`
    /// gets APIC ID `i`.
    ///
    /// Returns once the boot vCPU is set up and every vCPU exists
    /// (`KVM_CREATE_VCPU`). With more other vCPUs than set up side by side
    /// (one host CPU fewer than the host has), their set-up goes on beside
    /// the boot vCPU's guest (see `start.rs`), and a failure of it is
    /// reported by the first call that waits on that vCPU
    /// ([`Vcpus::resume_all`] when the machine starts); with as few as
    /// that, this waits for them too and reports their failures itself.
    pub fn spawn(
        vm: &Vm,
        count: u32,
        init: VcpuInit,
        io: Arc<dyn IoHandler>,
    ) -> Result<Self, VcpuError> {
        Self::spawn_with_start(vm, count, init, io, None)
    }

    /// [`Vcpus::spawn`], with `on_start` run on the vCPU threads at the
    /// stages of [`VcpuStartStage`].
    ///
    /// The boot vCPU's thread is started from here; with more than one
    /// vCPU, a helper it starts after the `Spawner` stage starts the
    /// others' threads, so that they inherit what that stage put in place.
    pub fn spawn_with_start(
        vm: &Vm,
        count: u32,
        init: VcpuInit,
        io: Arc<dyn IoHandler>,
        on_start: Option<VcpuThreadStart>,
    ) -> Result<Self, VcpuError> {
        let vcpus = Self::spawn_unsettled(vm, count, init, io, on_start)?;
        vcpus.settle()?;
        Ok(vcpus)
    }

    /// [`Vcpus::spawn_with_start`] without the wait: returns once the boot
    /// vCPU's thread is started, its set-up going on beside the caller's
    /// (a machine's devices, its main loop). [`Vcpus::settle`] then waits
    /// for what `spawn_with_start` waits for and reports a failure; so
    /// does the first call that waits on a vCPU. The threads ask `io`
    /// nothing before their first [`Vcpus::resume_all`].
    pub fn spawn_unsettled(
        vm: &Vm,
        count: u32,
        init: VcpuInit,
        io: Arc<dyn IoHandler>,
        on_start: Option<VcpuThreadStart>,
    ) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        let mmap_size = vm.kvm_run_size().map_err(VcpuError::MmapSize)?;
        let request_evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(VcpuError::EventFd)?);
        let (req_tx, req_rx) = mpsc::channel();
        let requests = Requests {
            tx: req_tx,
            evt: Arc::clone(&request_evt),
        };
        let (spawned_tx, spawned_rx) = mpsc::channel();
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        let gate = Arc::new(Gate::default());
        let mut handles = Vec::new();
        let mut bodies = Vec::new();
        for index in 0..count {
            let (ev_tx, ev_rx) = mpsc::channel();
            let (resp_tx, resp_rx) = mpsc::channel();
            let started = Arc::new(OnceLock::new());
            // A new thread parks until its first event.
            let parked = Arc::new(AtomicBool::new(true));
            bodies.push(VcpuThread {
                index,
                vm: vm.clone(),
                init: Arc::clone(&init),
                on_start: on_start.clone(),
                io: Arc::clone(&io),
                events: ev_rx,
                responses: resp_tx,
                requests: requests.clone(),
                mmap_size,
                started: Arc::clone(&started),
                parked: Arc::clone(&parked),
                pid,
                role: Role::Own,
            });
            handles.push(VcpuHandle {
                index,
                events: ev_tx,
                responses: resp_rx,
                started,
                owes_created: AtomicBool::new(true),
                gate: Arc::clone(&gate),
                parked,
            });
        }
        let mut vcpus = Self {
            handles,
            requests: req_rx,
            request_evt,
            boot_thread: None,
            spawned: spawned_rx,
            settled: 0,
        };
        let mut bodies = bodies.into_iter();
        let Some(mut boot) = bodies.next() else {
            return Ok(vcpus);
        };
        let others: Vec<VcpuThread> = bodies.collect();
        // Asking the host reads /proc and cgroup files (a dozen system
        // calls on the way to the guest's first instruction): only a
        // machine with more than one other vCPU asks; one always fits.
        let limit = Arc::new(if others.len() > 1 {
            SetUpLimit::for_this_host()
        } else {
            SetUpLimit::new(1)
        });
        // As few other vCPUs as set up side by side in one go: waiting
        // for them costs one set-up's time, and their set-up then never
        // runs beside the boot vCPU's guest.
        let wait_for_all = others.len() <= limit.most();
        if !others.is_empty() {
            boot.role = Role::Boot {
                others,
                gate,
                limit,
                spawned: spawned_tx,
            };
        }
        // On a failure, dropping `vcpus` ends whatever threads did start.
        let thread = spawn_thread(boot).map_err(|source| VcpuError::Spawn { index: 0, source })?;
        vcpus.boot_thread = Some(thread);
        vcpus.settled = if wait_for_all { vcpus.handles.len() } else { 1 };
        Ok(vcpus)
    }

    /// Waits for the set-up [`Vcpus::spawn_unsettled`] left going: the boot
    /// vCPU's, and every vCPU's where all set up side by side (see
    /// [`Vcpus::spawn`]); returns the first failure.
    pub fn settle(&self) -> Result<(), VcpuError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        for h in &self.handles[..self.settled] {
            h.settle(deadline)?;
        }
        Ok(())
    }

    /// Runs every vCPU's init function again, on its own thread (a machine
    /// reset: registers, MSRs, LAPIC back to their boot state); the vCPUs
    /// are left parked. Call with the vCPUs paused.
    pub fn reinit_all(&self) -> Result<(), VcpuError> {
        self.broadcast(
            || Event::Reinit,
            "reset",
            |r| matches!(r, Response::Reinitialized(true)),
        )
    }

    /// Queues an NMI on every vCPU (QEMU's `inject-nmi`, a watchdog's
    /// action), running or paused; a paused vCPU takes it when it runs.
    pub fn nmi_all(&self) -> Result<(), VcpuError> {
        self.broadcast(
            || Event::Nmi,
            "NMI",
            |r| matches!(r, Response::NmiQueued(true)),
        )
    }

    /// Runs `make(i)`'s work on vCPU `i`'s own thread, with its vCPU, for
    /// every vCPU at once, and returns the results in vCPU order (the
    /// vCPU ioctls that must not race `KVM_RUN`, such as saving and
    /// restoring its state; call it with the vCPUs paused for a consistent
    /// picture). Fails with the first vCPU that did not answer.
    pub fn call_each<T, F>(&self, make: impl Fn(u32) -> F) -> Result<Vec<T>, VcpuError>
    where
        T: Send + 'static,
        F: FnOnce(&VcpuFd) -> T + Send + 'static,
    {
        let sent: Vec<Result<(), VcpuError>> = self
            .handles
            .iter()
            .map(|h| {
                let work = make(h.index);
                h.send(Event::Call(Box::new(move |vcpu| {
                    Box::new(work(vcpu)) as Box<dyn std::any::Any + Send>
                })))
            })
            .collect();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut results = Vec::with_capacity(self.handles.len());
        let mut first_error = None;
        for (h, sent) in self.handles.iter().zip(sent) {
            let answer = sent.and_then(|()| h.answer("call", deadline));
            match answer {
                Ok(Response::Called(any)) => match any.downcast::<T>() {
                    Ok(value) => results.push(*value),
                    Err(_) => {
                        first_error.get_or_insert(VcpuError::ThreadGone { index: h.index });
                    }
                },
                Ok(other) => {
                    log::error!("vcpu {}: answered {other:?} to a call", h.index);
                    first_error.get_or_insert(VcpuError::ThreadGone { index: h.index });
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// A kick for vCPU `index`, usable from any thread (it keeps the
    /// vCPU's `kvm_run` mapped; once the vCPU's thread has ended, its
    /// signal finds no thread and the failure is logged at debug level).
    pub fn kicker(&self, index: u32) -> Option<VcpuKick> {
        let h = self.handles.iter().find(|h| h.index == index)?;
        Some(h.kicker())
    }

    /// Each vCPU thread's Linux thread id, by vCPU index (waiting for
    /// set-ups still under way; 0 for a vCPU whose set-up failed).
    pub fn thread_ids(&self) -> Vec<i32> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        self.handles
            .iter()
            .map(|h| {
                let _ = h.settle(deadline);
                h.started.get().map_or(0, |s| s.tid)
            })
            .collect()
    }

    /// How many vCPUs there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Sends `event` to every vCPU (all of them, even if one is gone), then
    /// waits for every answer within one overall deadline. Returns the
    /// first error.
    fn broadcast(
        &self,
        event: impl Fn() -> Event,
        what: &'static str,
        want: fn(&Response) -> bool,
    ) -> Result<(), VcpuError> {
        let sent: Vec<Result<(), VcpuError>> =
            self.handles.iter().map(|h| h.send(event())).collect();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut first_error = None;
        for (h, sent) in self.handles.iter().zip(sent) {
            let result = sent.and_then(|()| h.expect(what, want, deadline));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lets every vCPU run; returns once all have acknowledged.
    pub fn resume_all(&self) -> Result<(), VcpuError> {
        self.resume_all_with(false)
    }

    /// [`Vcpus::resume_all`] after the guest's clock stood still (a stop,
    /// a save, a restore, a migration's destination): each vCPU first
    /// tells its guest (`KVM_KVMCLOCK_CTRL`, as QEMU's resume does), so
    /// that the guest's soft-lockup watchdog does not count the pause.
    pub fn resume_all_after_stop(&self) -> Result<(), VcpuError> {
        self.resume_all_with(true)
    }

    fn resume_all_with(&self, clock_stopped: bool) -> Result<(), VcpuError> {
        self.broadcast(
            || Event::Resume { clock_stopped },
            "resume",
            |r| matches!(r, Response::Resumed),
        )
    }

    /// Stops every vCPU; returns once all are parked outside `KVM_RUN`
    /// with any in-flight I/O instruction completed.
    pub fn pause_all(&self) -> Result<(), VcpuError> {
        self.broadcast(|| Event::Pause, "pause", |r| matches!(r, Response::Paused))
    }

    /// The eventfd written whenever a vCPU sends a request: the main loop
    /// polls it, then drains [`Vcpus::try_request`].
    pub fn request_event(&self) -> &EventFd {
        &self.request_evt
    }

    /// The next pending request, if any.
    pub fn try_request(&self) -> Option<VcpuRequest> {
        self.requests.try_recv().ok()
    }

    /// Waits up to `timeout` for the next request.
    pub fn wait_request(&self, timeout: Duration) -> Option<VcpuRequest> {
        self.requests.recv_timeout(timeout).ok()
    }
}

impl Drop for Vcpus {
    /// Tells every thread to exit and joins them, all within one deadline:
    /// a thread that does not come back (stuck outside KVM_RUN, where no
    /// kick reaches it) is left behind with a log line rather than hanging
    /// the VMM's exit.
    fn drop(&mut self) {
        // Threads not started yet never will be.
        if let Some(h) = self.handles.first() {
            h.gate.abandon();
        }
        for h in &self.handles {
            let _ = h.send(Event::Exit);
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        // A thread's end drops its side of the response channel (and a
        // vCPU never started, its body's): waiting for that wakes at once,
        // where polling would sleep.
        let mut all_ended = true;
        for h in &self.handles {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match h.responses.recv_timeout(left) {
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        all_ended = false;
                        break;
                    }
                }
            }
        }
        let mut threads: Vec<JoinHandle<()>> = self.boot_thread.take().into_iter().collect();
        // Every sender is gone once the boot vCPU's set-up and the helper
        // are done.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.spawned.recv_timeout(left) {
                Ok(thread) => threads.push(thread),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    all_ended = false;
                    break;
                }
            }
        }
        for thread in threads {
            let name = thread.thread().name().unwrap_or("vcpu").to_owned();
            // Every thread has left its body (its channel closed): what is
            // left of it is the thread's own exit, which `join` waits for
            // in the kernel. Otherwise only until the deadline, and a
            // thread still running is left behind.
            if all_ended {
                if thread.join().is_err() {
                    log::error!("{name}: thread panicked");
                }
                continue;
            }
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::yield_now();
            }
            if !thread.is_finished() {
                log::error!("{name}: thread did not exit; leaving it behind");
                continue;
            }
            if thread.join().is_err() {
                log::error!("{name}: thread panicked");
            }
        }
    }
}
