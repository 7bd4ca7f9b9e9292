//! Interrupt and request lines: the [`Trigger`] trait and an eventfd behind it.
//!
//! Every device in this crate signals the outside world (an IRQ edge, a reset
//! request, a poweroff request) by calling [`Trigger::trigger`] and nothing
//! else. The machine backs each line with an [`EventFdTrigger`]: for an IRQ it
//! registers the eventfd as a KVM irqfd, so one `write(1)` is one edge on that
//! GSI; for a reset or poweroff request it polls the eventfd in its main loop.
//! Tests use the same type and read the counter back.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub use vm_superio::Trigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::log_once::FaultLog;

/// An [`EventFd`] that implements [`Trigger`] by adding 1 to its counter.
///
/// A newtype because neither the trait nor `EventFd` belongs to this crate.
/// Several writes before the reader wakes up add up in the counter, so the
/// reader sees one wake-up with a count of N.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps an existing eventfd.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }

    /// Creates a fresh non-blocking eventfd (`EFD_NONBLOCK`).
    pub fn nonblocking() -> io::Result<Self> {
        EventFd::new(EFD_NONBLOCK).map(Self)
    }

    /// Duplicates the file descriptor: both values signal the same counter.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }

    /// The inner eventfd, e.g. to register it as an irqfd or with an epoll loop.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }

    /// Gives the inner eventfd back.
    pub fn into_inner(self) -> EventFd {
        self.0
    }
}

impl From<EventFd> for EventFdTrigger {
    fn from(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl AsRawFd for EventFdTrigger {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Fires `line`; a failure is counted in `faults` and logged the first time.
///
/// An eventfd write fails only when its 64-bit counter is about to overflow,
/// which no guest can reach before the machine reads it; the device carries on
/// either way, because a guest access must never fail.
/// A level-triggered interrupt line (the ACPI SCI): held high while the
/// device has a cause pending.
pub trait LevelLine: Send + std::fmt::Debug {
    /// Drives the line to `high`.
    fn set_level(&self, high: bool);
}

pub(crate) fn fire<T: Trigger>(line: &T, faults: &mut FaultLog, device: &str, what: &str) {
    if let Err(e) = line.trigger() {
        faults.record(device, format_args!("cannot signal the {what} line: {e:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_adds_one_per_call_and_clones_share_the_counter() {
        let line = EventFdTrigger::nonblocking().unwrap();
        let clone = line.try_clone().unwrap();
        line.trigger().unwrap();
        clone.trigger().unwrap();
        assert_eq!(line.event_fd().read().unwrap(), 2);
        // Nothing pending: a non-blocking read reports WouldBlock.
        assert_eq!(
            clone.event_fd().read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn wraps_and_unwraps_an_eventfd() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let raw = fd.as_raw_fd();
        let line = EventFdTrigger::from(fd);
        assert_eq!(line.as_raw_fd(), raw);
        assert_eq!(line.into_inner().as_raw_fd(), raw);
    }

    #[test]
    fn fire_counts_nothing_on_success() {
        let line = EventFdTrigger::nonblocking().unwrap();
        let mut faults = FaultLog::default();
        fire(&line, &mut faults, "test", "irq");
        assert_eq!(faults.count(), 0);
        assert_eq!(line.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn fire_counts_a_failing_line() {
        let line = EventFdTrigger::nonblocking().unwrap();
        // The counter's maximum is u64::MAX - 1: a further write would block.
        line.event_fd().write(u64::MAX - 1).unwrap();
        let mut faults = FaultLog::default();
        fire(&line, &mut faults, "test", "irq");
        fire(&line, &mut faults, "test", "irq");
        assert_eq!(faults.count(), 2);
    }
}
