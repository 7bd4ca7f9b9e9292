//! What the device needs from the host side of the link.

use std::io;
use std::os::fd::BorrowedFd;

/// The host end of a virtio-net card: frames in and out, each with its
/// 12-byte `virtio_net_hdr_v1` first. Used from the device's worker
/// thread only; it must never block (a tap is opened `O_NONBLOCK`).
pub trait NetBackend: Send + Sync {
    /// Reads one frame, header first, into `buf`: its length, or
    /// `WouldBlock` when none waits. A frame longer than `buf` may be
    /// cut short.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Says what the backend may hand over (`TUN_F_*`, see
    /// [`super::offload_flags`]).
    fn set_offload(&self, flags: u32) -> io::Result<()>;
    /// Readable when a frame waits (for `epoll`); frames are written to
    /// it, header first, with one `writev` each straight from the guest's
    /// buffers, so it must take a `writev` as one frame (a tap, a datagram
    /// socket) and never block.
    fn fd(&self) -> BorrowedFd<'_>;
}
