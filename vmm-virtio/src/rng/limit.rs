//! The rate limit, as plain arithmetic over instants given to it (so that
//! tests need no clock).

use std::time::{Duration, Instant};

/// QEMU's default `max-bytes`: `INT64_MAX`.
pub const DEFAULT_MAX_BYTES: u64 = i64::MAX as u64;
/// QEMU's default `period`, ms.
pub const DEFAULT_PERIOD_MS: u64 = 1 << 16;

/// At most `max_bytes` in each window of `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    max_bytes: u64,
    period: Duration,
}

/// Why a rate limit was refused (QEMU's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// `period=0`.
    #[error("'period' parameter expects a positive integer")]
    Period,
    /// `max-bytes=0`.
    #[error("'max-bytes' parameter must be non-zero, and less than 2^63")]
    MaxBytes,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            period: Duration::from_millis(DEFAULT_PERIOD_MS),
        }
    }
}

impl RateLimit {
    /// `max_bytes` per `period_ms` milliseconds.
    pub fn new(max_bytes: u64, period_ms: u64) -> Result<Self, RateLimitError> {
        if period_ms == 0 {
            return Err(RateLimitError::Period);
        }
        if max_bytes == 0 || max_bytes > DEFAULT_MAX_BYTES {
            return Err(RateLimitError::MaxBytes);
        }
        Ok(Self {
            max_bytes,
            period: Duration::from_millis(period_ms),
        })
    }

    /// Bytes per window.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The window's length.
    pub fn period(&self) -> Duration {
        self.period
    }
}

/// The budget of the current window.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    limit: RateLimit,
    left: u64,
    /// When the open window ends; None: no window open (full budget).
    ends: Option<Instant>,
}

impl Budget {
    pub(super) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            left: limit.max_bytes,
            ends: None,
        }
    }

    /// Closes a window that has ended by `now`.
    fn roll(&mut self, now: Instant) {
        if self.ends.is_some_and(|end| now >= end) {
            self.ends = None;
            self.left = self.limit.max_bytes;
        }
    }

    /// Whether nothing may be served before the window ends; if so, when
    /// that is.
    pub(super) fn exhausted(&mut self, now: Instant) -> Option<Instant> {
        self.roll(now);
        if self.left == 0 {
            self.ends
        } else {
            None
        }
    }

    /// Takes up to `want` bytes from the budget at `now`: what may be
    /// served (0 when spent).
    pub(super) fn take(&mut self, want: u64, now: Instant) -> u64 {
        self.roll(now);
        if want == 0 || self.left == 0 {
            return 0;
        }
        if self.ends.is_none() {
            self.ends = now.checked_add(self.limit.period);
        }
        let n = want.min(self.left);
        self.left -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_defaults_and_refusals() {
        let d = RateLimit::default();
        assert_eq!(d.max_bytes(), i64::MAX as u64);
        assert_eq!(d.period(), Duration::from_millis(65536));
        assert_eq!(RateLimit::new(1, 0), Err(RateLimitError::Period));
        assert_eq!(RateLimit::new(0, 1000), Err(RateLimitError::MaxBytes));
        assert_eq!(RateLimit::new(1 << 63, 1000), Err(RateLimitError::MaxBytes));
        assert!(RateLimit::new(1024, 1000).is_ok());
    }

    #[test]
    fn a_window_gives_its_bytes_then_waits_for_its_end() {
        let t0 = Instant::now();
        let mut b = Budget::new(RateLimit::new(100, 1000).unwrap());
        assert_eq!(b.exhausted(t0), None);
        assert_eq!(b.take(64, t0), 64);
        assert_eq!(b.take(64, t0), 36, "a short fill for what is left");
        assert_eq!(b.take(64, t0), 0);
        let end = t0 + Duration::from_millis(1000);
        assert_eq!(b.exhausted(t0 + Duration::from_millis(999)), Some(end));
        // The window ends: a new one opens with the next bytes served.
        assert_eq!(b.exhausted(end), None);
        let t1 = end + Duration::from_millis(5);
        assert_eq!(b.take(100, t1), 100);
        assert_eq!(
            b.exhausted(t1),
            Some(t1 + Duration::from_millis(1000)),
            "the new window runs from its first bytes"
        );
    }

    #[test]
    fn nothing_asked_opens_no_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(RateLimit::new(10, 1000).unwrap());
        assert_eq!(b.take(0, t0), 0);
        assert_eq!(b.ends, None);
    }

    #[test]
    fn the_default_limit_never_runs_dry_in_practice() {
        let t0 = Instant::now();
        let mut b = Budget::new(RateLimit::default());
        for _ in 0..1000 {
            assert_eq!(b.take(1 << 20, t0), 1 << 20);
        }
        assert_eq!(b.exhausted(t0), None);
    }
}
