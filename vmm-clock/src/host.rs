//! The host time source: the only code in this crate that reads host time.

use crate::{TimeSource, NANOS_PER_SEC};

/// Host time from `clock_gettime`: `CLOCK_MONOTONIC` and `CLOCK_REALTIME`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostTime;

impl HostTime {
    /// Returns the host time source.
    pub const fn new() -> Self {
        HostTime
    }
}

/// Reads `clock_id` in nanoseconds.
fn read_clock(clock_id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and `clock_id` is one of
    // the two clocks every Linux kernel supports.
    let ret = unsafe { libc::clock_gettime(clock_id, &mut ts) };
    // clock_gettime can only fail with EFAULT or EINVAL, which the two lines above rule out.
    assert_eq!(ret, 0, "clock_gettime({clock_id}) failed");
    // Both fields are i64 on x86-64, the only architecture we build for.
    ts.tv_sec
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(ts.tv_nsec)
}

impl TimeSource for HostTime {
    fn monotonic_ns(&self) -> i64 {
        read_clock(libc::CLOCK_MONOTONIC)
    }

    fn wall_ns(&self) -> i64 {
        read_clock(libc::CLOCK_REALTIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_does_not_go_backwards() {
        let host = HostTime::new();
        let a = host.monotonic_ns();
        let b = host.monotonic_ns();
        assert!(a > 0);
        assert!(b >= a);
    }

    #[test]
    fn wall_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z.
        assert!(HostTime::new().wall_ns() > 1_577_836_800 * NANOS_PER_SEC);
    }
}
