//! How the vCPUs of a machine with several come up without the boot vCPU
//! waiting for the others' set-up.
//!
//! Every vCPU exists (`KVM_CREATE_VCPU`) before the boot vCPU first runs:
//! an INIT or SIPI the guest sends at once is then held in the target's
//! local APIC until that vCPU first enters `KVM_RUN`, as on a machine whose
//! application processors wait in their reset state; a vCPU created later
//! would never see it. The creation is shared by two threads, the boot
//! vCPU's (once its own vCPU is set up) and a short-lived helper it starts,
//! which then starts the other vCPUs' threads once the controller first
//! asks anything of a vCPU (see [`Gate`]). Their set-up (CPUID, MSRs) and
//! their threads' start run beside the boot vCPU's guest, as many at once
//! as [`SetUpLimit`] allows: each answers `Created` when done, which the
//! controller reads the first time it waits on that vCPU (see
//! `handle.rs`; a machine with no more other vCPUs than that limit waits
//! for them before it starts).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;

use super::handle::spawn_thread;
use super::thread::{Response, Role, VcpuThread};
use super::VcpuError;
use crate::vm::Vm;

/// The application processors' vCPUs (1 to `count - 1`), created by
/// whichever of the two threads takes each index first.
pub(crate) struct ApFds {
    vm: Vm,
    count: u32,
    /// The next index to create.
    next: AtomicU32,
    /// Index `i`'s outcome at `i - 1`, once created.
    made: Mutex<Vec<Option<Result<VcpuFd, kvm_ioctls::Error>>>>,
    /// Signalled whenever one is made.
    one_made: Condvar,
}

impl ApFds {
    pub(crate) fn new(vm: Vm, count: u32) -> Self {
        let aps = usize::try_from(count.saturating_sub(1)).unwrap_or(0);
        Self {
            vm,
            count,
            next: AtomicU32::new(1),
            made: Mutex::new((0..aps).map(|_| None).collect()),
            one_made: Condvar::new(),
        }
    }

    /// Creates vCPUs until no index is left to take.
    pub(crate) fn create_some(&self) {
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.count {
                return;
            }
            let fd = self.vm.fd().create_vcpu(u64::from(index));
            let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = made.get_mut(slot_of(index)) {
                *slot = Some(fd);
            }
            self.one_made.notify_all();
        }
    }

    /// Waits until every index has been created (or failed to be).
    pub(crate) fn wait_all(&self) {
        let made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let _all = self
            .one_made
            .wait_while(made, |made| made.iter().any(Option::is_none))
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Every index's outcome, in order (after [`ApFds::wait_all`]).
    fn take_all(&self) -> Vec<Option<Result<VcpuFd, kvm_ioctls::Error>>> {
        std::mem::take(&mut *self.made.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Holds the helper back from starting the other vCPUs' threads until the
/// controller first sends a vCPU anything or waits on one of the others
/// (when a machine starts: the boot vCPU's resume), so that their set-up
/// does not take the host's CPUs from the rest of the machine's build.
/// A controller dropped before that abandons them instead: their threads
/// would only be started to be told to exit.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum GateState {
    #[default]
    Closed,
    Open,
    Abandoned,
}

impl Gate {
    /// Lets the helper go on, unless the vCPUs were abandoned.
    pub(crate) fn open(&self) {
        self.leave_closed(GateState::Open);
    }

    /// Tells the helper to start no thread, unless it already may.
    pub(crate) fn abandon(&self) {
        self.leave_closed(GateState::Abandoned);
    }

    fn leave_closed(&self, to: GateState) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state == GateState::Closed {
            *state = to;
            self.changed.notify_all();
        }
    }

    /// Waits until the gate is opened (true) or abandoned (false).
    fn wait(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self
            .changed
            .wait_while(state, |s| *s == GateState::Closed)
            .unwrap_or_else(PoisonError::into_inner);
        *state == GateState::Open
    }
}

/// How many of the other vCPUs set up at once: one host CPU fewer than
/// there are, at least one, so that one is left for the boot vCPU's guest
/// (their set-up is kernel work of about half a millisecond each on a
/// nested host, and a few dozen of them at once would take every CPU
/// from it).
pub(crate) struct SetUpLimit {
    most: usize,
    running: Mutex<usize>,
    freed: Condvar,
}

impl SetUpLimit {
    pub(crate) fn new(most: usize) -> Self {
        Self {
            most: most.max(1),
            running: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// One host CPU fewer than this process may run on, at least one.
    /// (Reads `/proc` and cgroup files: call it before a thread's seccomp
    /// filter.)
    pub(crate) fn for_this_host() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)))
    }

    /// How many may set up at once.
    pub(crate) fn most(&self) -> usize {
        self.most
    }

    /// Waits for a free place; the permit gives it back when dropped.
    pub(crate) fn acquire(self: &Arc<Self>) -> SetUpPermit {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut running = self
            .freed
            .wait_while(running, |n| *n >= self.most)
            .unwrap_or_else(PoisonError::into_inner);
        *running += 1;
        SetUpPermit(Arc::clone(self))
    }
}

/// One vCPU's place among those setting up at once (see [`SetUpLimit`]).
pub(crate) struct SetUpPermit(Arc<SetUpLimit>);

impl Drop for SetUpPermit {
    fn drop(&mut self) {
        let mut running = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *running = running.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

fn slot_of(index: u32) -> usize {
    usize::try_from(index).map_or(usize::MAX, |i| i.wrapping_sub(1))
}

/// The helper thread's work: create its share of the vCPUs, then, once
/// `gate` opens, start each application processor's thread with its vCPU
/// as [`SetUpLimit`] allows, handing the join handles
/// to `spawned`. A vCPU that could not be created or whose thread could not
/// start answers its failure on its own channel, where the controller
/// waits for its `Created`.
pub(crate) fn start_others(
    fds: &ApFds,
    gate: &Gate,
    limit: &Arc<SetUpLimit>,
    others: Vec<VcpuThread>,
    spawned: &Sender<JoinHandle<()>>,
) {
    fds.create_some();
    fds.wait_all();
    if !gate.wait() {
        // Dropping the bodies hangs up their channels: the controller
        // sees those threads gone.
        return;
    }
    for (mut body, made) in others.into_iter().zip(fds.take_all()) {
        let index = body.index;
        let responses = body.responses.clone();
        let failure = match made {
            Some(Ok(fd)) => {
                body.role = Role::Created(fd, limit.acquire());
                match spawn_thread(body) {
                    Ok(thread) => {
                        let _ = spawned.send(thread);
                        continue;
                    }
                    Err(source) => VcpuError::Spawn { index, source },
                }
            }
            Some(Err(source)) => VcpuError::Create { index, source },
            // Unreachable after `wait_all`; reported rather than assumed.
            None => VcpuError::ThreadGone { index },
        };
        let _ = responses.send(Response::CreateFailed(failure));
    }
}

/// Starts the helper thread (named `vcpu start`), which inherits what the
/// boot vCPU's thread has in place (its seccomp filter).
pub(crate) fn spawn_helper(
    fds: Arc<ApFds>,
    gate: Arc<Gate>,
    limit: Arc<SetUpLimit>,
    others: Vec<VcpuThread>,
    spawned: Sender<JoinHandle<()>>,
) -> std::io::Result<()> {
    let to_join = spawned.clone();
    let helper = std::thread::Builder::new()
        .name("vcpu start".to_owned())
        .spawn(move || start_others(&fds, &gate, &limit, others, &spawned))?;
    let _ = to_join.send(helper);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{slot_of, Gate, SetUpLimit};

    #[test]
    fn application_processors_fill_the_slots_from_zero() {
        assert_eq!(slot_of(1), 0);
        assert_eq!(slot_of(63), 62);
        // Index 0 (the boot vCPU) has no slot: out of any list's range.
        assert_eq!(slot_of(0), usize::MAX);
    }

    #[test]
    fn the_gate_holds_its_waiter_until_opened_and_stays_open() {
        let gate = Arc::new(Gate::default());
        let (tx, rx) = mpsc::channel();
        let g = Arc::clone(&gate);
        let waiter = std::thread::spawn(move || {
            let first = g.wait();
            tx.send(()).unwrap();
            // Open already: no second wait.
            first && g.wait()
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        gate.open();
        gate.open();
        // Too late to abandon.
        gate.abandon();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn the_set_up_limit_lets_so_many_at_once_and_the_next_when_one_is_done() {
        let limit = Arc::new(SetUpLimit::new(2));
        let first = limit.acquire();
        let _second = limit.acquire();
        let (tx, rx) = mpsc::channel();
        let l = Arc::clone(&limit);
        let third = std::thread::spawn(move || {
            let permit = l.acquire();
            tx.send(()).unwrap();
            drop(permit);
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(first);
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
        third.join().unwrap();
        // At least one at a time, whatever the host.
        let one = Arc::new(SetUpLimit::new(0));
        drop(one.acquire());
        drop(one.acquire());
    }

    #[test]
    fn an_abandoned_gate_releases_its_waiter_with_no_and_stays_shut() {
        let gate = Arc::new(Gate::default());
        let g = Arc::clone(&gate);
        let waiter = std::thread::spawn(move || g.wait());
        gate.abandon();
        gate.open();
        assert!(!waiter.join().unwrap());
        assert!(!gate.wait());
    }
}
