//! virtio-rng (device type 4, the "entropy device"): the guest's requests
//! filled from the host's random source, `getrandom(2)` in the machine.
//!
//! One queue (`requestq`), no configuration space, no device features.
//! Each chain the driver makes available is a set of device-writable
//! buffers; the device fills as much of it as it may (at most
//! [`MAX_REQUEST`] bytes) and returns it with that length.
//!
//! # Rate limit
//!
//! QEMU's `max-bytes` and `period`: at most `max-bytes` bytes in each
//! `period` milliseconds. A window opens with the first bytes served and
//! lasts `period`; once its bytes are spent, the chains wait in the ring
//! until the window ends (a timerfd in the worker's epoll), and a request
//! that asks for more than is left gets what is left (a driver takes a
//! short fill as it comes). QEMU's defaults (`max-bytes` 2^63-1 in a
//! 65536 ms period) mean no limit in practice. The budget belongs to the
//! device, not to one activation, so a guest does not refill it by
//! resetting the device.
//!
//! # Untrusted input
//!
//! A chain with a device-readable descriptor, more descriptors than the
//! ring has entries, or a buffer outside guest memory is returned with
//! length 0; a driver whose available index runs more than a ring ahead
//! gets DEVICE_NEEDS_RESET, as the other devices do.

mod device;
mod limit;
mod worker;

pub use device::{RngHandle, VirtioRng};
pub use limit::{RateLimit, RateLimitError};

use std::io;

/// The virtio device ID of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// The queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets (Linux asks for 64 bytes at a time, up
/// to a page for `/dev/hwrng` readers with big buffers).
pub const MAX_REQUEST: usize = 64 << 10;

/// Where the random bytes come from.
pub trait EntropySource: Send + Sync {
    /// Fills `buf` completely.
    fn fill(&self, buf: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's random source, `getrandom(2)` with no flags: the
/// urandom pool, which never blocks once the host has booted.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRandom;

impl EntropySource for HostRandom {
    fn fill(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            let rest = &mut buf[at..];
            // The system call, not libc's wrapper: std declares
            // `getrandom` weak, and in a static musl build with LTO that
            // made our call a weak reference the link left at address 0.
            // SAFETY: the kernel writes at most `rest.len()` bytes into
            // `rest`, which is valid and exclusively ours for that long.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getrandom,
                    rest.as_mut_ptr(),
                    rest.len(),
                    0 as libc::c_uint,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            at += n as usize;
        }
        Ok(())
    }
}

/// Counters, since the device was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RngStats {
    /// Requests filled (some bytes or none).
    pub requests: u64,
    /// Bytes given to the guest.
    pub bytes: u64,
    /// Chains returned unused because they were malformed.
    pub bad_chains: u64,
    /// Times the rate limit held requests back until its window ended.
    pub throttled: u64,
}

#[cfg(test)]
mod tests;
