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

    /// For a snapshot at `now`: the bytes left in the open window and the
    /// time left in it, ms (None: no window open).
    pub(super) fn saved(&mut self, now: Instant) -> (u64, Option<u64>) {
        self.roll(now);
        let ms = self.ends.map(|end| {
            u64::try_from(end.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        });
        (self.left, ms)
    }

    /// Puts back a [`Budget::saved`] at `now`: at most a window's bytes,
    /// and a window that ends at most a period from now.
    pub(super) fn restore(
        &mut self,
        left: u64,
        window_left_ms: Option<u64>,
        now: Instant,
    ) -> Result<(), String> {
        if left > self.limit.max_bytes {
            return Err(format!(
                "{left} bytes left in a window of {}",
                self.limit.max_bytes
            ));
        }
        let ends = match window_left_ms {
            None if left != self.limit.max_bytes => {
                return Err("bytes spent with no window open".into())
            }
            None => None,
            Some(ms) => {
                let d = Duration::from_millis(ms);
                if d > self.limit.period {
                    return Err(format!(
                        "{ms} ms left in a window of {} ms",
                        self.limit.period.as_millis()
                    ));
                }
                now.checked_add(d)
            }
        };
        self.left = left;
        self.ends = ends;
        Ok(())
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
    fn a_saved_budget_comes_back_and_bad_ones_are_refused() {
        let t0 = Instant::now();
        let limit = RateLimit::new(100, 1000).unwrap();
        let mut b = Budget::new(limit);
        assert_eq!(b.saved(t0), (100, None));
        b.take(30, t0);
        let saved = b.saved(t0 + Duration::from_millis(400));
        assert_eq!(saved, (70, Some(600)));
        let mut c = Budget::new(limit);
        let t1 = t0 + Duration::from_secs(50);
        c.restore(saved.0, saved.1, t1).unwrap();
        assert_eq!(c.saved(t1), saved);
        assert_eq!(c.take(100, t1), 70);
        assert_eq!(c.exhausted(t1), Some(t1 + Duration::from_millis(600)));
        let mut d = Budget::new(limit);
        assert!(d.restore(101, Some(10), t1).is_err(), "more than a window");
        assert!(d.restore(50, None, t1).is_err(), "spent with no window");
        assert!(
            d.restore(50, Some(1001), t1).is_err(),
            "longer than a period"
        );
        assert_eq!(d.saved(t1), (100, None), "unchanged");
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
