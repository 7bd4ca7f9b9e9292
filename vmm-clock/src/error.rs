//! Errors of this crate.

use vmm_sys_util::errno;

/// Errors from setting up the host alarm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `CLOCK_MONOTONIC` timerfd could not be created.
    #[error("cannot create the alarm timerfd")]
    CreateTimerFd(#[source] errno::Error),
    /// The alarm timerfd could not be made non-blocking.
    #[error("cannot make the alarm timerfd non-blocking")]
    SetNonBlocking(#[source] errno::Error),
    /// The alarm's kick eventfd (for due deadlines) could not be created.
    #[error("cannot create the alarm's kick eventfd")]
    CreateKick(#[source] std::io::Error),
}
