//! The timer list of one clock: armed timers ordered by deadline, FIFO among equal deadlines.
//!
//! Pure data: no clocks, no callbacks, no locking.

use std::collections::{BTreeSet, HashMap};

/// Identifies a timer within one [`Clocks`](crate::Clocks). Never reused.
pub(crate) type TimerId = u64;

/// The armed timers of one clock.
///
/// Timers are ordered by `(expire, arm sequence)`, so a timer armed at the same deadline as
/// others goes behind them: timers with equal deadlines fire in the order they were (last) armed.
#[derive(Debug, Default)]
pub(crate) struct TimerList {
    queue: BTreeSet<(i64, u64, TimerId)>,
    /// `id -> (expire, sequence)` for every armed timer.
    armed: HashMap<TimerId, (i64, u64)>,
    next_seq: u64,
}

impl TimerList {
    /// Arms `id` at `expire` (negative values clamp to 0), moving it if already armed.
    pub(crate) fn arm(&mut self, id: TimerId, expire: i64) {
        let expire = expire.max(0);
        self.cancel(id);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((expire, seq, id));
        self.armed.insert(id, (expire, seq));
    }

    /// Arms `id` at `expire` unless it is already armed at or before that time.
    pub(crate) fn arm_if_earlier(&mut self, id: TimerId, expire: i64) {
        match self.expire_of(id) {
            Some(current) if current <= expire.max(0) => {}
            _ => self.arm(id, expire),
        }
    }

    /// Unarms `id`; returns whether it was armed.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        match self.armed.remove(&id) {
            Some((expire, seq)) => {
                self.queue.remove(&(expire, seq, id));
                true
            }
            None => false,
        }
    }

    /// The deadline of `id`, if armed.
    pub(crate) fn expire_of(&self, id: TimerId) -> Option<i64> {
        self.armed.get(&id).map(|&(expire, _)| expire)
    }

    /// The earliest deadline, if any timer is armed.
    pub(crate) fn head(&self) -> Option<i64> {
        self.queue.first().map(|&(expire, _, _)| expire)
    }

    /// Unarms and returns the head timer if its deadline is at or before `now`.
    #[cfg(test)]
    pub(crate) fn pop_expired(&mut self, now: i64) -> Option<TimerId> {
        self.pop_expired_except(now, |_| false)
    }

    /// Unarms and returns the earliest timer due at or before `now` for which `skip` is false;
    /// the skipped ones stay armed where they are. Looks past at most the skipped timers.
    pub(crate) fn pop_expired_except(
        &mut self,
        now: i64,
        skip: impl Fn(TimerId) -> bool,
    ) -> Option<TimerId> {
        let entry = *self
            .queue
            .iter()
            .take_while(|&&(expire, _, _)| expire <= now)
            .find(|&&(_, _, id)| !skip(id))?;
        self.queue.remove(&entry);
        self.armed.remove(&entry.2);
        Some(entry.2)
    }

    /// The number of armed timers.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(list: &mut TimerList, now: i64) -> Vec<TimerId> {
        std::iter::from_fn(|| list.pop_expired(now)).collect()
    }

    #[test]
    fn orders_by_deadline_then_arm_order() {
        let mut l = TimerList::default();
        l.arm(1, 1_000);
        l.arm(2, 1_000);
        l.arm(3, 500);
        assert_eq!(l.head(), Some(500));
        assert_eq!(drain(&mut l, 1_000), [3, 1, 2]);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn rearming_moves_to_the_back() {
        let mut l = TimerList::default();
        l.arm(1, 1_000);
        l.arm(2, 1_000);
        l.arm(1, 1_000);
        assert_eq!(drain(&mut l, 1_000), [2, 1]);
    }

    #[test]
    fn negative_clamps_to_zero() {
        let mut l = TimerList::default();
        l.arm(1, -5);
        assert_eq!(l.expire_of(1), Some(0));
        assert_eq!(drain(&mut l, 0), [1]);
    }

    #[test]
    fn pops_only_due_timers() {
        let mut l = TimerList::default();
        l.arm(1, 100);
        l.arm(2, 200);
        assert_eq!(drain(&mut l, 150), [1]);
        assert_eq!(l.expire_of(1), None);
        assert_eq!(l.expire_of(2), Some(200));
    }

    #[test]
    fn skipped_timers_stay_armed_in_place() {
        let mut l = TimerList::default();
        l.arm(1, 100);
        l.arm(2, 100);
        l.arm(3, 200);
        assert_eq!(l.pop_expired_except(150, |id| id == 1), Some(2));
        assert_eq!(
            l.pop_expired_except(150, |id| id == 1),
            None,
            "3 is not due"
        );
        assert_eq!(l.expire_of(1), Some(100));
        assert_eq!(l.head(), Some(100));
        assert_eq!(drain(&mut l, 200), [1, 3]);
    }

    #[test]
    fn cancel_is_idempotent() {
        let mut l = TimerList::default();
        l.arm(1, 100);
        assert!(l.cancel(1));
        assert!(!l.cancel(1));
        assert_eq!(l.head(), None);
        assert_eq!(drain(&mut l, i64::MAX), []);
    }

    #[test]
    fn arm_if_earlier_only_moves_forward_in_time() {
        let mut l = TimerList::default();
        l.arm_if_earlier(1, 500);
        assert_eq!(l.expire_of(1), Some(500));
        l.arm_if_earlier(1, 800);
        assert_eq!(l.expire_of(1), Some(500));
        l.arm_if_earlier(1, 300);
        assert_eq!(l.expire_of(1), Some(300));
    }
}
