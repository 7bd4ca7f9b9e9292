//! A settable time source for tests.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::TimeSource;

/// A [`TimeSource`] that only moves when told to, so timer tests run without sleeping.
///
/// Available in this crate's tests and, for other crates' tests, with the `test-utils` feature.
/// Share it as an `Arc<FakeTime>`: one clone goes to [`Clocks::new`](crate::Clocks::new), the
/// test keeps the other to move time.
///
/// Both clocks start at 0. [`advance`](FakeTime::advance) moves both, as real time passing
/// does; [`set_wall`](FakeTime::set_wall) steps only the wall clock, as `settimeofday` does.
#[derive(Debug, Default)]
pub struct FakeTime {
    monotonic: AtomicI64,
    wall: AtomicI64,
}

impl FakeTime {
    /// Returns a fake time source with both clocks at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns a fake time source with the monotonic clock at 0 and the wall clock at `wall_ns`.
    pub fn with_wall(wall_ns: i64) -> Self {
        FakeTime {
            monotonic: AtomicI64::new(0),
            wall: AtomicI64::new(wall_ns),
        }
    }

    /// Lets `ns` nanoseconds pass on both the monotonic and the wall clock.
    ///
    /// # Panics
    ///
    /// If `ns` is negative: monotonic time does not go backwards.
    pub fn advance(&self, ns: i64) {
        assert!(
            ns >= 0,
            "FakeTime::advance({ns}): time does not go backwards"
        );
        self.monotonic.fetch_add(ns, Ordering::SeqCst);
        self.wall.fetch_add(ns, Ordering::SeqCst);
    }

    /// Steps the wall clock to `wall_ns` (forwards or backwards); the monotonic clock is unchanged.
    pub fn set_wall(&self, wall_ns: i64) {
        self.wall.store(wall_ns, Ordering::SeqCst);
    }
}

impl TimeSource for FakeTime {
    fn monotonic_ns(&self) -> i64 {
        self.monotonic.load(Ordering::SeqCst)
    }

    fn wall_ns(&self) -> i64 {
        self.wall.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_both_and_set_wall_only_wall() {
        let t = FakeTime::with_wall(1_000);
        t.advance(50);
        assert_eq!((t.monotonic_ns(), t.wall_ns()), (50, 1_050));
        t.set_wall(7);
        assert_eq!((t.monotonic_ns(), t.wall_ns()), (50, 7));
    }

    #[test]
    #[should_panic(expected = "does not go backwards")]
    fn advance_rejects_negative() {
        FakeTime::new().advance(-1);
    }
}
