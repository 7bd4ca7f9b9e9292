//! A counter for one kind of fault that logs only its first occurrence.
//!
//! A guest can repeat a bad access millions of times; each device counts such
//! events and warns once, so a hostile or buggy guest cannot flood the host log.

use std::fmt;

/// Counts occurrences of one kind of fault; the first is logged at `warn`,
/// the rest at `trace`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultLog {
    count: u64,
}

impl FaultLog {
    /// Counts one occurrence (saturating) and logs it.
    pub(crate) fn record(&mut self, device: &str, what: fmt::Arguments<'_>) {
        if self.count == 0 {
            log::warn!("{device}: {what} (further occurrences are only counted)");
        } else {
            log::trace!("{device}: {what}");
        }
        self.count = self.count.saturating_add(1);
    }

    /// How many occurrences were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_occurrence() {
        let mut log = FaultLog::default();
        assert_eq!(log.count(), 0);
        for _ in 0..3 {
            log.record("dev", format_args!("bad access"));
        }
        assert_eq!(log.count(), 3);
    }

    #[test]
    fn saturates() {
        let mut log = FaultLog { count: u64::MAX };
        log.record("dev", format_args!("bad access"));
        assert_eq!(log.count(), u64::MAX);
    }
}
