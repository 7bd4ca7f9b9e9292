//! Detecting jumps of the host wall clock (QEMU's "clock reset" condition).

use crate::NANOS_PER_SEC;

/// A forward step of the host wall clock larger than this counts as a jump (QEMU 2.x's
/// `get_max_clock_jump()`: 60 s).
pub const MAX_FORWARD_JUMP_NS: i64 = 60 * NANOS_PER_SEC;

/// Remembers the last host-clock read and tells whether the next read is a jump.
///
/// A jump is either a read smaller than the previous read (QEMU 1.5), or a read whose advance
/// over the previous one exceeds the monotonic clock's advance by more than
/// [`MAX_FORWARD_JUMP_NS`] (QEMU 2.x compared the reads alone, so a host clock left unread for a
/// minute counted as a jump; comparing against monotonic time avoids that false alarm).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WallJumpDetector {
    /// `(wall, monotonic)` at the last read.
    last: Option<(i64, i64)>,
}

impl WallJumpDetector {
    /// Records a read of the wall clock taken at monotonic time `mono`; returns whether it jumped.
    pub(crate) fn observe(&mut self, wall: i64, mono: i64) -> bool {
        let jumped = match self.last {
            None => false,
            Some((last_wall, last_mono)) => {
                let wall_step = wall.saturating_sub(last_wall);
                let mono_step = mono.saturating_sub(last_mono);
                wall < last_wall || wall_step.saturating_sub(mono_step) > MAX_FORWARD_JUMP_NS
            }
        };
        self.last = Some((wall, mono));
        jumped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_read_is_never_a_jump() {
        assert!(!WallJumpDetector::default().observe(-5, 0));
    }

    #[test]
    fn backwards_read_is_a_jump() {
        let mut d = WallJumpDetector::default();
        d.observe(1_000, 0);
        assert!(d.observe(999, 10));
        // The new value is the reference from now on.
        assert!(!d.observe(999, 20));
    }

    #[test]
    fn forward_step_over_limit_is_a_jump() {
        let mut d = WallJumpDetector::default();
        d.observe(0, 0);
        assert!(!d.observe(MAX_FORWARD_JUMP_NS, 0));
        assert!(d.observe(2 * MAX_FORWARD_JUMP_NS + 1, 0));
    }

    #[test]
    fn long_idle_gap_is_not_a_jump() {
        let mut d = WallJumpDetector::default();
        d.observe(0, 0);
        // Ten minutes pass on both clocks between two reads.
        let ten_min = 600 * NANOS_PER_SEC;
        assert!(!d.observe(ten_min, ten_min));
    }
}
