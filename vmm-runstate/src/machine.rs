//! The run-state machine: current state, checked transitions, listeners.

use core::fmt;

use crate::{is_allowed, InvalidTransition, RunState};

/// A state-change listener: called as `listener(running, new_state)` after
/// every successful change of state, where `running == new_state.is_running()`.
///
/// This is QEMU's VM change-state handler without the opaque pointer (the
/// closure captures what it needs) and without priorities.
pub type Listener = Box<dyn FnMut(bool, RunState) + Send>;

/// Identifies a listener added with [`RunStateMachine::add_listener`], so it
/// can be removed again. Ids are never reused by one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(u64);

/// The current run state of a VM, with its state-change listeners.
///
/// A new machine is in [`RunState::Prelaunch`] and has no listeners. The
/// machine is `Send`, so it can be shared between threads inside a `Mutex`.
///
/// Listeners are called in registration order on every successful, real
/// change of state. That differs from both QEMU versions we model: 1.5
/// called its single list newest-first, and current QEMU orders handlers by
/// priority (and walks the list backwards when stopping). Callers that need
/// an order other than registration order arrange it when registering.
/// Listeners cannot reach the machine while they run (it is mutably
/// borrowed), so they cannot remove themselves during the walk.
pub struct RunStateMachine {
    state: RunState,
    listeners: Vec<(ListenerId, Listener)>,
    next_id: u64,
}

impl RunStateMachine {
    /// A machine in [`RunState::Prelaunch`] with no listeners.
    pub fn new() -> Self {
        RunStateMachine {
            state: RunState::Prelaunch,
            listeners: Vec::new(),
            next_id: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Moves to `to` if the transition table allows it.
    ///
    /// * `to == self.state()`: a no-op success, as in current QEMU. The table
    ///   is not consulted and no listener is called. (QEMU 1.5 treated this as
    ///   an invalid transition.)
    /// * `(self.state(), to)` is in [`TRANSITIONS`](crate::TRANSITIONS): the
    ///   state becomes `to`, then every listener is called with
    ///   `(to.is_running(), to)` in registration order.
    ///
    /// # Errors
    ///
    /// [`InvalidTransition`] naming both states when the pair is not in the
    /// table. The state is unchanged and no listener is called.
    pub fn transition(&mut self, to: RunState) -> Result<(), InvalidTransition> {
        let from = self.state;
        if from == to {
            return Ok(());
        }
        if !is_allowed(from, to) {
            return Err(InvalidTransition { from, to });
        }
        self.state = to;
        let running = to.is_running();
        for (_, listener) in &mut self.listeners {
            listener(running, to);
        }
        Ok(())
    }

    /// Like [`transition`](Self::transition), but treats a refused transition
    /// as the programming error QEMU's `runstate_set` considers it.
    ///
    /// # Panics
    ///
    /// When the transition is invalid, with the [`InvalidTransition`] message
    /// (`invalid runstate transition: 'a' -> 'b'`). QEMU aborts the process at
    /// this point.
    pub fn set(&mut self, to: RunState) {
        if let Err(err) = self.transition(to) {
            panic!("{err}");
        }
    }

    /// True iff the state is exactly [`RunState::Running`]
    /// (see [`RunState::is_running`]).
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// True iff QMP `cont` must be refused until a reset: the state is
    /// [`RunState::InternalError`] or [`RunState::Shutdown`] (current QEMU;
    /// see [`RunState::needs_reset`]).
    pub fn needs_reset(&self) -> bool {
        self.state.needs_reset()
    }

    /// True iff the state is [`RunState::Running`] or
    /// [`RunState::Suspended`] (see [`RunState::is_live`]).
    pub fn is_live(&self) -> bool {
        self.state.is_live()
    }

    /// Adds a listener, called after every later successful change of state.
    /// It goes after all listeners already present.
    pub fn add_listener(&mut self, listener: Listener) -> ListenerId {
        let id = ListenerId(self.next_id);
        self.next_id += 1;
        self.listeners.push((id, listener));
        id
    }

    /// Removes a listener. Returns false if `id` was not registered here (or
    /// was already removed).
    pub fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|(lid, _)| *lid != id);
        self.listeners.len() != before
    }

    /// The number of registered listeners.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }
}

impl Default for RunStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RunStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<ListenerId> = self.listeners.iter().map(|(id, _)| *id).collect();
        f.debug_struct("RunStateMachine")
            .field("state", &self.state)
            .field("listeners", &ids)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::thread;

    use super::*;
    use crate::RunState::*;

    type Log = Arc<Mutex<Vec<(u32, bool, RunState)>>>;

    /// Adds a listener that records `(tag, running, state)` into `log`.
    fn record(vm: &mut RunStateMachine, log: &Log, tag: u32) -> ListenerId {
        let log = Arc::clone(log);
        vm.add_listener(Box::new(move |running, state| {
            log.lock().unwrap().push((tag, running, state));
        }))
    }

    fn take(log: &Log) -> Vec<(u32, bool, RunState)> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    /// A machine put into `state` by a path through the table.
    fn machine_in(state: RunState) -> RunStateMachine {
        let mut vm = RunStateMachine::new();
        let path: &[RunState] = match state {
            Prelaunch => &[],
            Inmigrate => &[Inmigrate],
            FinishMigrate => &[FinishMigrate],
            Running => &[Running],
            Postmigrate => &[FinishMigrate, Postmigrate],
            Suspended => &[Running, Suspended],
            other => &[Running, other],
        };
        for &s in path {
            vm.transition(s).unwrap();
        }
        assert_eq!(vm.state(), state);
        vm
    }

    #[test]
    fn machine_is_send() {
        fn check<T: Send>() {}
        check::<RunStateMachine>();
    }

    #[test]
    fn new_machine_is_prelaunch_and_not_running() {
        // the run-state test vectors (docs/devices.md §1) #1.
        let vm = RunStateMachine::new();
        assert_eq!(vm.state(), Prelaunch);
        assert_eq!(vm.state().as_str(), "prelaunch");
        assert!(!vm.is_running());
        assert!(!vm.is_live());
        assert!(!vm.needs_reset());
        assert_eq!(vm.listener_count(), 0);
        assert_eq!(RunStateMachine::default().state(), Prelaunch);
    }

    #[test]
    fn every_pair_through_the_machine() {
        // the run-state test vectors (docs/devices.md §1) #11, for our 15 states: succeeds iff the pair is in
        // the table or from == to; listeners run only on a real change.
        for from in RunState::ALL {
            for to in RunState::ALL {
                let mut vm = machine_in(from);
                let log: Log = Arc::default();
                record(&mut vm, &log, 0);
                let result = vm.transition(to);
                if from == to {
                    assert_eq!(result, Ok(()));
                    assert_eq!(vm.state(), from);
                    assert!(take(&log).is_empty(), "{from} -> {to}");
                } else if is_allowed(from, to) {
                    assert_eq!(result, Ok(()));
                    assert_eq!(vm.state(), to);
                    assert_eq!(take(&log), [(0, to == Running, to)], "{from} -> {to}");
                } else {
                    assert_eq!(result, Err(InvalidTransition { from, to }));
                    assert_eq!(vm.state(), from);
                    assert!(take(&log).is_empty(), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn listeners_called_in_registration_order() {
        let mut vm = RunStateMachine::new();
        let log: Log = Arc::default();
        for tag in 1..=3 {
            record(&mut vm, &log, tag);
        }
        // the run-state test vectors (docs/devices.md §1) #2 and #3 at this level.
        vm.transition(Running).unwrap();
        assert_eq!(
            take(&log),
            [(1, true, Running), (2, true, Running), (3, true, Running)]
        );
        vm.transition(Paused).unwrap();
        assert_eq!(
            take(&log),
            [(1, false, Paused), (2, false, Paused), (3, false, Paused)]
        );
    }

    #[test]
    fn suspended_is_reported_as_not_running() {
        let mut vm = machine_in(Running);
        let log: Log = Arc::default();
        record(&mut vm, &log, 7);
        vm.transition(Suspended).unwrap();
        assert_eq!(take(&log), [(7, false, Suspended)]);
        assert!(!vm.is_running());
        assert!(vm.is_live());
    }

    #[test]
    fn remove_listener_stops_calls_and_keeps_order() {
        let mut vm = RunStateMachine::new();
        let log: Log = Arc::default();
        let a = record(&mut vm, &log, 1);
        let b = record(&mut vm, &log, 2);
        let c = record(&mut vm, &log, 3);
        assert_ne!(a, b);
        assert!(vm.remove_listener(b));
        assert!(!vm.remove_listener(b));
        assert_eq!(vm.listener_count(), 2);
        vm.transition(Running).unwrap();
        assert_eq!(take(&log), [(1, true, Running), (3, true, Running)]);
        // Ids are not reused after a removal.
        let d = record(&mut vm, &log, 4);
        assert!(d != a && d != b && d != c);
        assert!(vm.remove_listener(a));
        assert!(vm.remove_listener(c));
        vm.transition(Paused).unwrap();
        assert_eq!(take(&log), [(4, false, Paused)]);
    }

    #[test]
    fn refusal_changes_nothing_and_calls_no_listener() {
        // the run-state test vectors (docs/devices.md §1) #5.
        let mut vm = RunStateMachine::new();
        let log: Log = Arc::default();
        record(&mut vm, &log, 1);
        let err = vm.transition(Paused).unwrap_err();
        assert_eq!(
            err,
            InvalidTransition {
                from: Prelaunch,
                to: Paused
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid runstate transition: 'prelaunch' -> 'paused'"
        );
        assert_eq!(vm.state(), Prelaunch);
        assert!(take(&log).is_empty());

        // the run-state test vectors (docs/devices.md §1) #6.
        let mut vm = machine_in(Paused);
        record(&mut vm, &log, 2);
        let err = vm.transition(Shutdown).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid runstate transition: 'paused' -> 'shutdown'"
        );
        assert_eq!(vm.state(), Paused);
        assert!(take(&log).is_empty());
    }

    #[test]
    fn self_transition_is_a_silent_no_op() {
        // the run-state test vectors (docs/devices.md §1) #4 (today's semantics), for every state.
        for state in RunState::ALL {
            let mut vm = machine_in(state);
            let log: Log = Arc::default();
            record(&mut vm, &log, 1);
            assert_eq!(vm.transition(state), Ok(()));
            vm.set(state);
            assert_eq!(vm.state(), state);
            assert!(take(&log).is_empty(), "{state}");
        }
    }

    #[test]
    #[should_panic(expected = "invalid runstate transition: 'prelaunch' -> 'paused'")]
    fn set_panics_on_invalid_transition() {
        RunStateMachine::new().set(Paused);
    }

    #[test]
    fn shutdown_reset_cont_sequence() {
        // the run-state test vectors (docs/devices.md §1) #7, the state part.
        let mut vm = machine_in(Running);
        vm.transition(Shutdown).unwrap();
        assert_eq!(vm.state().as_str(), "shutdown");
        assert!(vm.needs_reset());
        vm.transition(Prelaunch).unwrap(); // system_reset while stopped
        assert!(!vm.needs_reset());
        vm.transition(Running).unwrap(); // cont
        assert!(vm.is_running());
    }

    #[test]
    fn cont_after_guest_panic() {
        // the run-state test vectors (docs/devices.md §1) #9 (today's semantics).
        let mut vm = machine_in(Running);
        vm.transition(GuestPanicked).unwrap();
        assert_eq!(vm.state().as_str(), "guest-panicked");
        assert!(!vm.needs_reset());
        vm.transition(Running).unwrap();
        assert!(vm.is_running());
    }

    #[test]
    fn internal_error_needs_reset_then_prelaunch() {
        let mut vm = machine_in(InternalError);
        assert!(vm.needs_reset());
        assert!(vm.transition(Running).is_err());
        vm.transition(Prelaunch).unwrap();
        vm.transition(Running).unwrap();
    }

    #[test]
    fn shared_across_threads_in_a_mutex() {
        let vm = Arc::new(Mutex::new(RunStateMachine::new()));
        let log: Log = Arc::default();
        record(&mut vm.lock().unwrap(), &log, 1);
        let worker = {
            let vm = Arc::clone(&vm);
            thread::spawn(move || vm.lock().unwrap().transition(Running))
        };
        assert_eq!(worker.join().unwrap(), Ok(()));
        assert!(vm.lock().unwrap().is_running());
        assert_eq!(take(&log), [(1, true, Running)]);
    }

    #[test]
    fn debug_shows_state_and_listener_ids() {
        let mut vm = RunStateMachine::new();
        vm.add_listener(Box::new(|_, _| {}));
        let text = format!("{vm:?}");
        assert!(text.contains("state: Prelaunch"), "{text}");
        assert!(text.contains("ListenerId(0)"), "{text}");
    }
}
