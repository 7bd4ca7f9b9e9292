//! The Virtual clock: host monotonic time plus an offset, frozen while the VM is stopped.

/// The Virtual clock's value as a function of host monotonic time.
///
/// While running, it reads `monotonic + offset`. [`stop`](Self::stop) captures the current value
/// and reads return it unchanged; [`start`](Self::start) picks the offset that continues from the
/// frozen value, so the guest sees no jump across a pause. It starts stopped at 0 (QEMU's ticks
/// are disabled until the first `vm_start`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VirtualClock {
    /// Running: added to monotonic time. Stopped: the frozen value.
    offset: i64,
    running: bool,
}

impl VirtualClock {
    /// The clock's value at monotonic time `mono`.
    pub(crate) fn now(&self, mono: i64) -> i64 {
        if self.running {
            mono.saturating_add(self.offset)
        } else {
            self.offset
        }
    }

    /// Whether the clock is running (not frozen).
    pub(crate) fn is_running(&self) -> bool {
        self.running
    }

    /// Freezes the clock at its value at monotonic time `mono`. No effect if already stopped.
    pub(crate) fn stop(&mut self, mono: i64) {
        if self.running {
            self.offset = self.now(mono);
            self.running = false;
        }
    }

    /// Thaws the clock at monotonic time `mono`, continuing from the frozen value.
    /// No effect if already running.
    pub(crate) fn start(&mut self, mono: i64) {
        if !self.running {
            self.offset = self.offset.saturating_sub(mono);
            self.running = true;
        }
    }

    /// Sets a stopped clock's frozen value (a snapshot's Virtual time put
    /// back); returns false, changing nothing, while it runs.
    pub(crate) fn set_frozen(&mut self, value: i64) -> bool {
        if self.running {
            return false;
        }
        self.offset = value;
        true
    }

    /// The monotonic time at which the clock reaches `expire`, given monotonic time `mono` now.
    ///
    /// While stopped the clock never reaches a later value (`None`); a value it has already
    /// reached is due now.
    pub(crate) fn monotonic_deadline(&self, expire: i64, mono: i64) -> Option<i64> {
        if self.running {
            Some(expire.saturating_sub(self.offset))
        } else if expire <= self.offset {
            Some(mono)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stopped_at_zero() {
        let v = VirtualClock::default();
        assert!(!v.is_running());
        assert_eq!(v.now(12_345), 0);
    }

    #[test]
    fn freezes_and_continues() {
        let mut v = VirtualClock::default();
        v.start(1_000);
        assert_eq!(v.now(1_500), 500);
        v.stop(1_500);
        assert_eq!(v.now(9_000), 500);
        // A second stop does not re-capture.
        v.stop(9_000);
        assert_eq!(v.now(9_500), 500);
        v.start(10_000);
        assert_eq!(v.now(10_100), 600);
        // A second start does not re-base.
        v.start(20_000);
        assert_eq!(v.now(20_000), 10_500);
    }

    #[test]
    fn only_a_stopped_clock_is_set() {
        let mut v = VirtualClock::default();
        v.start(1_000);
        assert!(!v.set_frozen(7));
        assert_eq!(v.now(1_100), 100);
        v.stop(1_100);
        assert!(v.set_frozen(7));
        assert_eq!(v.now(5_000), 7);
        v.start(6_000);
        assert_eq!(v.now(6_010), 17);
    }

    #[test]
    fn converts_deadlines_monotonic_deadline() {
        let mut v = VirtualClock::default();
        v.start(1_000);
        assert_eq!(v.monotonic_deadline(500, 1_200), Some(1_500));
        v.stop(1_200);
        // Frozen at 200: a later deadline is never reached, an earlier one is due now.
        assert_eq!(v.monotonic_deadline(500, 5_000), None);
        assert_eq!(v.monotonic_deadline(200, 5_000), Some(5_000));
    }
}
