//! The allowed run-state transitions, kept as data.
//!
//! [`SEED_TRANSITIONS`] is QEMU 1.5's table (`runstate_transitions_def`),
//! 38 `(from, to)` pairs, unchanged. [`ADDED_TRANSITIONS`] holds the pairs of
//! current QEMU that our machine needs, each with the reason. [`TRANSITIONS`]
//! is their union, and [`is_allowed`] answers from a matrix built from it at
//! compile time.
//!
//! Self-transitions (`X -> X`) are in neither table: the machine treats them
//! as a no-op before it consults the table (see
//! [`RunStateMachine::transition`](crate::RunStateMachine::transition)).

use crate::RunState;
use crate::RunState::{
    Debug, FinishMigrate, GuestPanicked, Inmigrate, InternalError, IoError, Paused, Postmigrate,
    Prelaunch, RestoreVm, Running, SaveVm, Shutdown, Suspended, Watchdog,
};

/// QEMU 1.5's transition table: 38 `(from, to)` pairs, in the seed's order.
///
/// One of them, `guest-panicked -> paused`, is gone from current QEMU (there a
/// reset of a panicked guest goes to `prelaunch`). We keep it: it is a seed
/// edge, it is harmless (nothing in a current-style machine asks for it,
/// since `stop` does nothing in a state that is not live), and keeping it
/// makes this const exactly the 1.5 table.
pub const SEED_TRANSITIONS: &[(RunState, RunState)] = &[
    (Debug, Running),
    (Inmigrate, Running),
    (Inmigrate, Paused),
    (InternalError, Paused),
    (InternalError, FinishMigrate),
    (IoError, Running),
    (IoError, FinishMigrate),
    (Paused, Running),
    (Paused, FinishMigrate),
    (Postmigrate, Running),
    (Postmigrate, FinishMigrate),
    (Prelaunch, Running),
    (Prelaunch, FinishMigrate),
    (Prelaunch, Inmigrate),
    (FinishMigrate, Running),
    (FinishMigrate, Postmigrate),
    (RestoreVm, Running),
    (Running, Debug),
    (Running, InternalError),
    (Running, IoError),
    (Running, Paused),
    (Running, FinishMigrate),
    (Running, RestoreVm),
    (Running, SaveVm),
    (Running, Shutdown),
    (Running, Watchdog),
    (Running, GuestPanicked),
    (SaveVm, Running),
    (Shutdown, Paused),
    (Shutdown, FinishMigrate),
    (Debug, Suspended),
    (Running, Suspended),
    (Suspended, Running),
    (Suspended, FinishMigrate),
    (Watchdog, Running),
    (Watchdog, FinishMigrate),
    (GuestPanicked, Paused),
    (GuestPanicked, FinishMigrate),
];

/// Pairs from current QEMU's table that our machine needs on top of the seed.
///
/// * **Reset of a stopped VM lands in `prelaunch` (10 pairs).** Current QEMU,
///   after a `system_reset` or guest reset, sets `prelaunch` unless the state
///   is `running`, `inmigrate` or `finish-migrate` (in 1.5 it went to
///   `paused`, and only from a needs-reset state). We take today's
///   `X -> prelaunch` edges whose source the reset path can actually be in:
///   every one except `inmigrate` and `finish-migrate` (the reset leaves those
///   alone; today's table has them for migration-failure paths we do not
///   have) and `colo` (not a state we implement). `save-vm -> prelaunch` is in
///   neither table: no reset is serviced while a snapshot is being saved.
///   `restore-vm -> prelaunch` is the reset done while loading a snapshot.
/// * **A failed migration of a paused VM (1 pair):** `finish-migrate ->
///   paused`. Current QEMU puts the source back in the state it left for
///   the migration; from `running` that is the seed's `finish-migrate ->
///   running`, from `paused` this pair.
/// * **`cont` after a guest panic (1 pair):** `guest-panicked -> running`.
///   Current QEMU lets a panicked guest be continued; for that reason
///   `guest-panicked` is no longer a needs-reset state (see
///   [`RunState::needs_reset`]).
///
/// * **A suspended guest is saved, migrated and loaded as such (9 pairs).**
///   Current QEMU keeps a guest in S3 asleep across `snapshot-save`,
///   `snapshot-load` and migration: `suspended -> save-vm -> suspended`,
///   `suspended -> restore-vm -> suspended`, a failed or cancelled migration
///   back with `finish-migrate -> suspended`, a destination (or a loaded
///   snapshot) of a suspended guest into `suspended` from `inmigrate`,
///   `restore-vm`, `paused`, `prelaunch` and `postmigrate` (`cont` of a
///   machine that holds a sleeping guest, which QEMU 9.0's `cont` takes
///   back to `suspended`). The pairs follow that behaviour; they are what
///   this machine's paths take, not a copy of QEMU's list.
///
/// Not taken from today's table: the migration-global-state, postcopy and
/// COLO edges, and `suspended -> paused` (`stop` leaves a suspended guest
/// alone here).
pub const ADDED_TRANSITIONS: &[(RunState, RunState)] = &[
    // A reset of a stopped VM lands in PRELAUNCH (current QEMU's reset path).
    (Debug, Prelaunch),
    (InternalError, Prelaunch),
    (IoError, Prelaunch),
    (Paused, Prelaunch),
    (Postmigrate, Prelaunch),
    (RestoreVm, Prelaunch),
    (Shutdown, Prelaunch),
    (Suspended, Prelaunch),
    (Watchdog, Prelaunch),
    (GuestPanicked, Prelaunch),
    // A failed migration of a paused VM puts it back (current QEMU).
    (FinishMigrate, Paused),
    // QMP `cont` after a guest panic resumes the guest (current QEMU).
    (GuestPanicked, Running),
    // A suspended guest stays asleep across saves, loads and migrations
    // (current QEMU's suspend-preservation edges, but `suspended -> paused`).
    (Suspended, SaveVm),
    (SaveVm, Suspended),
    (Suspended, RestoreVm),
    (RestoreVm, Suspended),
    (FinishMigrate, Suspended),
    (Inmigrate, Suspended),
    (Paused, Suspended),
    (Prelaunch, Suspended),
    (Postmigrate, Suspended),
];

const TRANSITION_COUNT: usize = SEED_TRANSITIONS.len() + ADDED_TRANSITIONS.len();

const fn concat_tables() -> [(RunState, RunState); TRANSITION_COUNT] {
    let mut out = [(Prelaunch, Prelaunch); TRANSITION_COUNT];
    let mut i = 0;
    while i < SEED_TRANSITIONS.len() {
        out[i] = SEED_TRANSITIONS[i];
        i += 1;
    }
    let mut j = 0;
    while j < ADDED_TRANSITIONS.len() {
        out[i + j] = ADDED_TRANSITIONS[j];
        j += 1;
    }
    out
}

const ALL_TRANSITIONS: [(RunState, RunState); TRANSITION_COUNT] = concat_tables();

/// Every allowed `(from, to)` pair: [`SEED_TRANSITIONS`] followed by
/// [`ADDED_TRANSITIONS`]. This is the table [`is_allowed`] uses.
pub const TRANSITIONS: &[(RunState, RunState)] = &ALL_TRANSITIONS;

type Matrix = [[bool; RunState::COUNT]; RunState::COUNT];

const fn build_matrix(table: &[(RunState, RunState)]) -> Matrix {
    let mut matrix = [[false; RunState::COUNT]; RunState::COUNT];
    let mut i = 0;
    while i < table.len() {
        let (from, to) = table[i];
        matrix[from.index()][to.index()] = true;
        i += 1;
    }
    matrix
}

/// `MATRIX[from][to]` is true iff `(from, to)` is in [`TRANSITIONS`].
const MATRIX: Matrix = build_matrix(TRANSITIONS);

/// True iff `(from, to)` is in [`TRANSITIONS`].
///
/// This is the table lookup only: `is_allowed(s, s)` is false for every
/// state, although the machine accepts a self-transition as a no-op.
pub const fn is_allowed(from: RunState, to: RunState) -> bool {
    MATRIX[from.index()][to.index()]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The expected matrix, written out by hand from the seed table plus the
    /// pairs this crate adds (not derived from the consts above): for each
    /// source state, every allowed target.
    const EXPECTED: [(RunState, &[RunState]); RunState::COUNT] = [
        (Debug, &[Running, Suspended, Prelaunch]),
        (Inmigrate, &[Running, Paused, Suspended]),
        (InternalError, &[Paused, FinishMigrate, Prelaunch]),
        (IoError, &[Running, FinishMigrate, Prelaunch]),
        (Paused, &[Running, FinishMigrate, Prelaunch, Suspended]),
        (Postmigrate, &[Running, FinishMigrate, Prelaunch, Suspended]),
        (Prelaunch, &[Running, FinishMigrate, Inmigrate, Suspended]),
        (FinishMigrate, &[Running, Postmigrate, Paused, Suspended]),
        (RestoreVm, &[Running, Prelaunch, Suspended]),
        (
            Running,
            &[
                Debug,
                InternalError,
                IoError,
                Paused,
                FinishMigrate,
                RestoreVm,
                SaveVm,
                Shutdown,
                Watchdog,
                GuestPanicked,
                Suspended,
            ],
        ),
        (SaveVm, &[Running, Suspended]),
        (Shutdown, &[Paused, FinishMigrate, Prelaunch]),
        (
            Suspended,
            &[Running, FinishMigrate, Prelaunch, SaveVm, RestoreVm],
        ),
        (Watchdog, &[Running, FinishMigrate, Prelaunch]),
        (GuestPanicked, &[Paused, FinishMigrate, Prelaunch, Running]),
    ];

    fn expected_allows(from: RunState, to: RunState) -> bool {
        let row = EXPECTED.iter().find(|(f, _)| *f == from).unwrap();
        row.1.contains(&to)
    }

    /// The edges ACPI S3 takes in vmm-pc: suspend, wake-up, a reset of a
    /// suspended guest, and its saves, loads and migrations; `stop` leaves
    /// a suspended guest alone, so no edge to `paused`.
    #[test]
    fn s3_edges() {
        assert!(is_allowed(Running, Suspended));
        assert!(is_allowed(Suspended, Running));
        assert!(is_allowed(Suspended, Prelaunch));
        assert!(!is_allowed(Suspended, Paused));
        // suspended -> finish-migrate -> postmigrate, and back on failure.
        assert!(is_allowed(Suspended, FinishMigrate));
        assert!(is_allowed(FinishMigrate, Postmigrate));
        assert!(is_allowed(FinishMigrate, Suspended));
        // snapshot-save and snapshot-load of a suspended guest.
        assert!(is_allowed(Suspended, SaveVm) && is_allowed(SaveVm, Suspended));
        assert!(is_allowed(Suspended, RestoreVm) && is_allowed(RestoreVm, Suspended));
        // A destination of a suspended source, at once or after `cont`.
        assert!(is_allowed(Inmigrate, Suspended));
        assert!(is_allowed(Paused, Suspended));
        assert!(!is_allowed(Shutdown, Suspended));
        assert!(!Suspended.is_running() && Suspended.is_live());
    }

    #[test]
    fn expected_matrix_has_one_row_per_state() {
        let sources: HashSet<_> = EXPECTED.iter().map(|(f, _)| *f).collect();
        assert_eq!(sources.len(), RunState::COUNT);
    }

    #[test]
    fn whole_matrix_matches_expected() {
        for from in RunState::ALL {
            for to in RunState::ALL {
                assert_eq!(
                    is_allowed(from, to),
                    expected_allows(from, to),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn seed_table_has_38_unique_pairs() {
        assert_eq!(SEED_TRANSITIONS.len(), 38);
        let unique: HashSet<_> = SEED_TRANSITIONS.iter().copied().collect();
        assert_eq!(unique.len(), 38);
    }

    #[test]
    fn added_pairs_are_new_and_unique() {
        let seed: HashSet<_> = SEED_TRANSITIONS.iter().copied().collect();
        let added: HashSet<_> = ADDED_TRANSITIONS.iter().copied().collect();
        assert_eq!(added.len(), ADDED_TRANSITIONS.len());
        assert!(seed.is_disjoint(&added));
        let expected_added: usize = EXPECTED.iter().map(|(_, to)| to.len()).sum::<usize>() - 38;
        assert_eq!(ADDED_TRANSITIONS.len(), expected_added);
    }

    #[test]
    fn transitions_is_seed_then_added() {
        assert_eq!(
            TRANSITIONS.len(),
            SEED_TRANSITIONS.len() + ADDED_TRANSITIONS.len()
        );
        assert_eq!(&TRANSITIONS[..SEED_TRANSITIONS.len()], SEED_TRANSITIONS);
        assert_eq!(&TRANSITIONS[SEED_TRANSITIONS.len()..], ADDED_TRANSITIONS);
        for &(from, to) in TRANSITIONS {
            assert!(is_allowed(from, to), "{from} -> {to}");
        }
        let allowed = RunState::ALL
            .into_iter()
            .flat_map(|f| RunState::ALL.into_iter().map(move |t| (f, t)))
            .filter(|&(f, t)| is_allowed(f, t))
            .count();
        assert_eq!(allowed, TRANSITIONS.len());
    }

    #[test]
    fn no_self_transitions_in_table() {
        for state in RunState::ALL {
            assert!(!is_allowed(state, state), "{state}");
        }
    }

    #[test]
    fn reset_of_a_stopped_vm_can_reach_prelaunch() {
        // Current QEMU's reset rule: PRELAUNCH unless RUNNING, INMIGRATE or
        // FINISH_MIGRATE. SAVE_VM is never reset mid-save; PRELAUNCH is a no-op.
        for from in RunState::ALL {
            let skip = matches!(
                from,
                Running | Inmigrate | FinishMigrate | SaveVm | Prelaunch
            );
            assert_eq!(is_allowed(from, Prelaunch), !skip, "{from}");
        }
    }

    #[test]
    fn guest_panicked_edges() {
        assert!(is_allowed(GuestPanicked, Running)); // added: cont after panic
        assert!(is_allowed(GuestPanicked, Paused)); // seed edge, kept
    }

    #[test]
    fn qemu_vectors_at_table_level() {
        // the run-state test vectors (docs/devices.md §1) #5 and #6.
        assert!(!is_allowed(Prelaunch, Paused));
        assert!(!is_allowed(Paused, Shutdown));
    }
}
