//! The body of one vCPU thread: create, initialise, then the state machine.

use std::any::Any;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;

use super::exit::run_once;
use super::extint::{before_run, ExtIntSource, KvmWindow};
use super::handle::{Requests, VcpuInit, VcpuStartStage, VcpuThreadStart};
use super::run_map::KvmRunMap;
use super::start::{self, ApFds, Gate, SetUpLimit, SetUpPermit};
use super::VcpuError;
use crate::io::IoHandler;
use crate::vm::Vm;

/// Work the controller hands a vCPU thread, run there with its vCPU (the
/// vCPU ioctls that must not race `KVM_RUN`: its state saved or restored).
pub(crate) type VcpuCall = Box<dyn FnOnce(&VcpuFd) -> Box<dyn Any + Send> + Send>;

/// What the controller tells a vCPU thread.
pub(crate) enum Event {
    /// Run; `clock_stopped`: the guest's clock stood still meanwhile (a
    /// stop, a save, a restore), which the vCPU tells its guest first.
    Resume {
        clock_stopped: bool,
    },
    Pause,
    /// Run the init function again (a machine reset); the vCPU stays parked.
    Reinit,
    /// Queue an NMI (`KVM_NMI`); the vCPU stays running or parked.
    Nmi,
    /// Run this with the vCPU and answer its result; the vCPU stays
    /// running or parked.
    Call(VcpuCall),
    Exit,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Resume { .. } => "Resume",
            Self::Pause => "Pause",
            Self::Reinit => "Reinit",
            Self::Nmi => "Nmi",
            Self::Call(_) => "Call",
            Self::Exit => "Exit",
        })
    }
}

/// What a vCPU thread answers: one response per event, plus `Created`
/// once at start.
#[derive(Debug)]
pub(crate) enum Response {
    /// The vCPU is set up (what a kick needs is in its [`Started`]).
    Created,
    CreateFailed(VcpuError),
    Resumed,
    Paused,
    /// The init function ran again; whether it succeeded.
    Reinitialized(bool),
    /// An NMI was queued; whether KVM took it.
    NmiQueued(bool),
    /// A call's result.
    Called(Box<dyn Any + Send>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Paused,
    Running,
    Exiting,
}

/// What a vCPU thread publishes once its vCPU is set up, before it answers
/// `Created`: what the controller needs to kick it.
#[derive(Debug)]
pub(crate) struct Started {
    /// The second mapping of its `kvm_run`.
    pub(crate) run_map: Arc<KvmRunMap>,
    /// The process's id and the thread's (what `tgkill` takes; read once
    /// here, not at every kick).
    pub(crate) pid: i32,
    pub(crate) tid: i32,
}

/// How a vCPU thread comes by its vCPU.
pub(crate) enum Role {
    /// It creates it: the only vCPU of its machine.
    Own,
    /// The boot vCPU of several: it creates its own, starts the helper
    /// that starts the others' threads (`start.rs`) and shares the others'
    /// creation with it before its vCPU may run.
    Boot {
        others: Vec<VcpuThread>,
        /// When the helper may start the others' threads.
        gate: Arc<Gate>,
        /// How many of them may set up at once.
        limit: Arc<SetUpLimit>,
        /// Where the helper's and the others' join handles go.
        spawned: Sender<JoinHandle<()>>,
    },
    /// Another vCPU, created before the boot vCPU ran, and its place among
    /// those setting up at once.
    Created(VcpuFd, SetUpPermit),
}

pub(crate) struct VcpuThread {
    pub(crate) index: u32,
    pub(crate) vm: Vm,
    pub(crate) init: VcpuInit,
    pub(crate) on_start: Option<VcpuThreadStart>,
    pub(crate) io: Arc<dyn IoHandler>,
    pub(crate) events: Receiver<Event>,
    pub(crate) responses: Sender<Response>,
    pub(crate) requests: Requests,
    pub(crate) mmap_size: usize,
    /// Set once the vCPU is set up, before `Created` is answered.
    pub(crate) started: Arc<OnceLock<Started>>,
    /// Whether it is parked (see the handle's field: this side writes it).
    pub(crate) parked: Arc<AtomicBool>,
    /// The process's id, read by the controller (a vCPU thread's filter
    /// refuses `getpid`).
    pub(crate) pid: i32,
    pub(crate) role: Role,
}

impl VcpuThread {
    /// Creates (or takes) and sets up the vCPU, then runs the state machine
    /// until told to exit (or the controller goes away).
    pub(crate) fn run(mut self) {
        let role = std::mem::replace(&mut self.role, Role::Own);
        let Some((mut vcpu, run_map)) = self.set_up(role) else {
            return;
        };
        // Asked when the vCPU first runs: the machine may complete its I/O
        // only after the threads start (`Vcpus::spawn_unsettled`).
        let mut ext_int = None;
        let mut state = State::Paused;
        while state != State::Exiting {
            state = match state {
                State::Paused => self.paused(&vcpu),
                State::Running => {
                    let ext_int =
                        ext_int.get_or_insert_with(|| self.io.external_interrupts(self.index));
                    self.running(&mut vcpu, &run_map, ext_int.as_deref())
                }
                State::Exiting => State::Exiting,
            };
        }
        log::debug!("vcpu {}: thread exits", self.index);
    }

    /// The vCPU by `role`, set up, its `kvm_run` mapped and the hook's
    /// `Ready` stage run; publishes [`Started`] and answers `Created`, or
    /// answers the failure.
    fn set_up(&self, role: Role) -> Option<(VcpuFd, Arc<KvmRunMap>)> {
        let set_up = match role {
            Role::Own => self.create().and_then(|vcpu| {
                let map = self.prepare(&vcpu)?;
                self.thread_start(VcpuStartStage::Ready {
                    index: self.index,
                    inherited: false,
                })?;
                Ok((vcpu, map))
            }),
            Role::Boot {
                others,
                gate,
                limit,
                spawned,
            } => self.boot(others, gate, limit, spawned),
            Role::Created(vcpu, permit) => {
                let set_up = self.prepare(&vcpu).and_then(|map| {
                    // Started by the helper, which the boot vCPU's thread
                    // started after its `Spawner` stage.
                    self.thread_start(VcpuStartStage::Ready {
                        index: self.index,
                        inherited: true,
                    })?;
                    Ok((vcpu, map))
                });
                drop(permit);
                set_up
            }
        };
        match set_up {
            Ok((vcpu, map)) => {
                let tid = super::current_tid();
                let _ = self.started.set(Started {
                    run_map: Arc::clone(&map),
                    pid: self.pid,
                    tid,
                });
                let _ = self.responses.send(Response::Created);
                Some((vcpu, map))
            }
            Err(e) => {
                let _ = self.responses.send(Response::CreateFailed(e));
                None
            }
        }
    }

    /// The boot vCPU of several (see [`Role::Boot`]): the `Spawner` stage
    /// first, then its own vCPU, the helper, and its share of the others'
    /// creation; it waits for all of them to exist before its `Ready`
    /// stage (see `start.rs` for why).
    fn boot(
        &self,
        others: Vec<VcpuThread>,
        gate: Arc<Gate>,
        limit: Arc<SetUpLimit>,
        spawned: Sender<JoinHandle<()>>,
    ) -> Result<(VcpuFd, Arc<KvmRunMap>), VcpuError> {
        self.thread_start(VcpuStartStage::Spawner)?;
        // The boot vCPU first, as ever (KVM's first vCPU, set up before
        // any other exists); then the others, by two threads.
        let vcpu = self.create()?;
        let map = self.prepare(&vcpu)?;
        let count = u32::try_from(others.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let fds = Arc::new(ApFds::new(self.vm.clone(), count));
        start::spawn_helper(Arc::clone(&fds), gate, limit, others, spawned).map_err(|source| {
            VcpuError::Spawn {
                index: self.index,
                source,
            }
        })?;
        fds.create_some();
        fds.wait_all();
        // Last, so that the hook (a seccomp filter) sees only what the
        // thread does from here on: its loop, exits, resets.
        self.thread_start(VcpuStartStage::Ready {
            index: self.index,
            inherited: true,
        })?;
        Ok((vcpu, map))
    }

    fn create(&self) -> Result<VcpuFd, VcpuError> {
        self.vm
            .fd()
            .create_vcpu(u64::from(self.index))
            .map_err(|source| VcpuError::Create {
                index: self.index,
                source,
            })
    }

    /// The machine's set-up of the vCPU, and the second `kvm_run` mapping.
    fn prepare(&self, vcpu: &VcpuFd) -> Result<Arc<KvmRunMap>, VcpuError> {
        (self.init)(vcpu, self.index).map_err(|source| VcpuError::Init {
            index: self.index,
            source,
        })?;
        KvmRunMap::new(vcpu, self.mmap_size)
            .map(Arc::new)
            .map_err(|source| VcpuError::RunMap {
                index: self.index,
                source,
            })
    }

    fn thread_start(&self, stage: VcpuStartStage) -> Result<(), VcpuError> {
        match &self.on_start {
            Some(on_start) => on_start(stage).map_err(|source| VcpuError::ThreadStart {
                index: self.index,
                source,
            }),
            None => Ok(()),
        }
    }

    fn answer(&self, vcpu: &VcpuFd, event: Event) -> State {
        match event {
            Event::Reinit => {
                let ok = match (self.init)(vcpu, self.index) {
                    Ok(()) => true,
                    Err(e) => {
                        log::error!("vcpu {}: reset failed: {e}", self.index);
                        false
                    }
                };
                let _ = self.responses.send(Response::Reinitialized(ok));
                State::Paused
            }
            Event::Resume { clock_stopped } => {
                if clock_stopped {
                    tell_clock_stopped(vcpu, self.index);
                }
                let _ = self.responses.send(Response::Resumed);
                State::Running
            }
            Event::Pause => {
                let _ = self.responses.send(Response::Paused);
                State::Paused
            }
            // Only `paused` and `running` reach here with an NMI, and
            // each stays where it was (see there).
            Event::Nmi => {
                self.queue_nmi(vcpu);
                State::Paused
            }
            Event::Call(call) => {
                let _ = self.responses.send(Response::Called(call(vcpu)));
                State::Paused
            }
            Event::Exit => State::Exiting,
        }
    }

    fn queue_nmi(&self, vcpu: &VcpuFd) {
        let ok = match vcpu.nmi() {
            Ok(()) => true,
            Err(e) => {
                log::error!("vcpu {}: cannot queue an NMI: {e}", self.index);
                false
            }
        };
        let _ = self.responses.send(Response::NmiQueued(ok));
    }

    fn paused(&self, vcpu: &VcpuFd) -> State {
        self.parked.store(true, Ordering::Relaxed);
        let state = match self.events.recv() {
            Ok(event) => self.answer(vcpu, event),
            Err(_) => State::Exiting,
        };
        if state == State::Running {
            // Leaving: from here on a sender kicks. The fence orders the
            // store before the running loop's first look at the channel
            // (the sender's side: `VcpuHandle::send`).
            self.parked.store(false, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        state
    }

    fn running(
        &self,
        vcpu: &mut VcpuFd,
        run_map: &KvmRunMap,
        ext_int: Option<&dyn ExtIntSource>,
    ) -> State {
        match self.events.try_recv() {
            Ok(Event::Nmi) => {
                self.queue_nmi(vcpu);
                State::Running
            }
            Ok(Event::Call(call)) => {
                let _ = self.responses.send(Response::Called(call(vcpu)));
                State::Running
            }
            Ok(event @ (Event::Pause | Event::Reinit)) => {
                complete_pending_io(vcpu, run_map);
                self.answer(vcpu, event)
            }
            Ok(event) => self.answer(vcpu, event),
            Err(TryRecvError::Disconnected) => State::Exiting,
            Err(TryRecvError::Empty) => {
                if let Some(source) = ext_int {
                    before_run(source, &KvmWindow { vcpu, run_map });
                }
                // Only a stop asked while this exit is handled counts (not
                // one some other code on this thread asked before it).
                super::take_stop_request();
                match run_once(vcpu, run_map, self.io.as_ref(), self.index) {
                    // A device asked the machine to stop the guest
                    // (`stop_current`): park, as the main loop's pause would.
                    None if super::take_stop_request() => {
                        log::debug!("vcpu {}: stopped by the device it drove", self.index);
                        complete_pending_io(vcpu, run_map);
                        State::Paused
                    }
                    None => State::Running,
                    Some(request) => {
                        log::debug!("vcpu {}: {request:?}", self.index);
                        self.requests.send(request);
                        // Park until the main loop decides.
                        State::Paused
                    }
                }
            }
        }
    }
}

/// Before parking, re-enter KVM_RUN once with `immediate_exit` set: KVM
/// then finishes an I/O instruction whose data userspace just supplied (an
/// `in` must land in its register) and returns without running the guest.
/// Without this a vCPU paused right after a PIO read would lose it, which
/// matters for saving state and for resuming after a reset.
fn complete_pending_io(vcpu: &mut VcpuFd, run_map: &KvmRunMap) {
    run_map.set_immediate_exit(true);
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        Ok(exit) => log::debug!("pending I/O completion gave exit {exit:?}"),
        Err(e) => log::debug!("pending I/O completion failed: {e}"),
    }
    run_map.set_immediate_exit(false);
}

/// Tells the guest its kvmclock stood still (`KVM_KVMCLOCK_CTRL`: KVM
/// sets `PVCLOCK_GUEST_STOPPED` in the vCPU's clock page), as QEMU does
/// when a stopped VM runs again, so that its watchdogs do not take the
/// pause for a soft lockup. A guest without kvmclock (KVM answers
/// `EINVAL`) has nothing to be told.
fn tell_clock_stopped(vcpu: &VcpuFd, index: u32) {
    match vcpu.kvmclock_ctrl() {
        Ok(()) => {}
        Err(e) if e.errno() == libc::EINVAL => {}
        Err(e) => log::warn!("vcpu {index}: cannot tell the guest its clock stopped: {e}"),
    }
}
