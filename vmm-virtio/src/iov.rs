//! Guest buffers handed to the kernel as they are: host addresses
//! (iovecs) into guest memory's mappings for one system call to fill or
//! drain, and the dirty bits for what the kernel wrote there behind
//! vm-memory's back (so that a migration copies those pages again).

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use smallvec::SmallVec;
use vm_memory::bitmap::Bitmap;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{GuestMemory, Permissions};

use crate::blk::request::Buffers;

/// The most iovecs in one system call (Linux's `IOV_MAX`).
pub(crate) const IOV_MAX: usize = 1024;

/// Appends the host addresses of the guest's buffers, in order, to
/// `iovs`, for the kernel to read (`write`) or fill. The pointers are
/// into guest memory's mappings: valid for as long as `mem`'s regions
/// stay mapped.
pub(crate) fn push_guest_iovecs<M: GuestMemory>(
    mem: &M,
    data: &Buffers,
    write: bool,
    iovs: &mut impl Extend<libc::iovec>,
) -> io::Result<()> {
    let access = if write {
        Permissions::Read
    } else {
        Permissions::Write
    };
    let mut total = 0u64;
    for s in data.segments() {
        let it = mem
            .get_slices(s.addr, s.len as usize, access)
            .map_err(io::Error::other)?;
        for slice in it.stop_on_error().map_err(io::Error::other)? {
            total += slice.len() as u64;
            iovs.extend(Some(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            }));
        }
    }
    if total != data.len() {
        return Err(io::Error::other("guest buffers are not all in memory"));
    }
    Ok(())
}

/// [`push_guest_iovecs`] into a new vector.
pub(crate) fn guest_iovecs<M: GuestMemory>(
    mem: &M,
    data: &Buffers,
    write: bool,
) -> io::Result<Vec<libc::iovec>> {
    let mut iovs = Vec::with_capacity(data.segments().len());
    push_guest_iovecs(mem, data, write, &mut iovs)?;
    Ok(iovs)
}

/// Marks the first `done` bytes of the guest's buffers dirty (the host
/// wrote them behind vm-memory's back).
pub(crate) fn mark_dirty<M: GuestMemory>(mem: &M, data: &Buffers, done: u64) {
    let mut left = done as usize;
    for s in data.segments() {
        let Ok(it) = mem.get_slices(s.addr, s.len as usize, Permissions::Write) else {
            return;
        };
        for slice in it.flatten() {
            let n = slice.len().min(left);
            slice.bitmap().mark_dirty(0, n);
            left -= n;
        }
    }
}

/// Iovecs into memory that outlives them: guest memory borrowed for `'a`
/// (whose regions stay mapped while it is borrowed) or a buffer borrowed
/// for `'a`. One socket call fills or drains them all.
#[derive(Default)]
pub(crate) struct IoVecs<'a> {
    /// A few in place: most calls take one or two buffers.
    iovs: SmallVec<[libc::iovec; 8]>,
    len: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> IoVecs<'a> {
    /// Appends the guest's buffers `data`, for the kernel to fill
    /// (`write` false) or read.
    pub fn push_guest<M: GuestMemory>(
        &mut self,
        mem: &'a M,
        data: &Buffers,
        write: bool,
    ) -> io::Result<()> {
        let from = self.iovs.len();
        push_guest_iovecs(mem, data, write, &mut self.iovs)?;
        self.count(from);
        Ok(())
    }

    /// Appends a buffer of ours.
    pub fn push_buf(&mut self, buf: &'a mut [u8]) {
        self.iovs.push(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
        self.count(self.iovs.len() - 1);
    }

    /// Counts the iovecs from `from` on that one call takes.
    fn count(&mut self, from: usize) {
        let to = self.iovs.len().min(IOV_MAX);
        self.len += self
            .iovs
            .get(from..to)
            .map_or(0, |v| v.iter().map(|i| i.iov_len).sum());
    }

    /// The bytes one call moves at most (those of the first [`IOV_MAX`]
    /// iovecs).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether they hold none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One `recvmsg` from socket `fd` into them (the first [`IOV_MAX`]):
    /// the bytes read, 0 at end of file; never waits.
    pub fn recv(&self, fd: &impl AsRawFd) -> io::Result<usize> {
        let mut msg = self.msghdr();
        // SAFETY: each iovec is memory borrowed for 'a, which outlives
        // self (guest memory whose regions stay mapped, or a buffer of
        // ours); no name or control buffer.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// One `sendmsg` of them (the first [`IOV_MAX`]) to socket `fd`,
    /// without SIGPIPE: the bytes the socket took; never waits.
    pub fn send(&self, fd: &impl AsRawFd) -> io::Result<usize> {
        let msg = self.msghdr();
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // SAFETY: as in `recv`; the kernel only reads the memory.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// One `writev` of them (the first [`IOV_MAX`]) to `fd` (a tap takes
    /// them as one frame, a datagram socket as one message): the bytes
    /// it took.
    pub fn write(&self, fd: &impl AsRawFd) -> io::Result<usize> {
        let count = self.iovs.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: as in `recv`; the kernel only reads the memory, and
        // `count` iovecs are there.
        let n = unsafe { libc::writev(fd.as_raw_fd(), self.iovs.as_ptr(), count) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// A message of the first [`IOV_MAX`] iovecs, no name or control.
    fn msghdr(&self) -> libc::msghdr {
        // SAFETY: msghdr is plain data; all zeroes is a valid empty one.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = self.iovs.as_ptr().cast_mut();
        msg.msg_iovlen = self.iovs.len().min(IOV_MAX) as _;
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use vm_memory::GuestAddress;

    use crate::testing::{memory, take_dirty_pages};

    #[test]
    fn sockets_read_into_and_write_from_guest_buffers_with_dirty_bits() {
        let mem = memory(1 << 20);
        let mut data = Buffers::default();
        data.push(GuestAddress(0x1000), 3);
        data.push(GuestAddress(0x8000), 5);
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"abcdefghij").unwrap();
        let mut into = IoVecs::default();
        into.push_guest(&*mem, &data, false).unwrap();
        assert_eq!((into.len(), into.iovs.len()), (8, 2));
        assert_eq!(into.recv(&a).unwrap(), 8);
        let mut got = [0u8; 8];
        data.read_into(&*mem, 0, &mut got).unwrap();
        assert_eq!(&got, b"abcdefgh");
        take_dirty_pages(&mem);
        mark_dirty(&*mem, &data, 8);
        assert_eq!(take_dirty_pages(&mem), [1, 8]);
        let mut from = IoVecs::default();
        from.push_guest(&*mem, &data, true).unwrap();
        let mut tail = *b"!";
        from.push_buf(&mut tail);
        assert_eq!(from.send(&a).unwrap(), 9);
        let mut back = [0u8; 9];
        b.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"abcdefgh!");
        assert_eq!(into.recv(&a).unwrap(), 2, "the rest");
        // Nothing waits: WouldBlock, not a wait.
        let e = into.recv(&a).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(b);
        assert_eq!(into.recv(&a).unwrap(), 0, "end of file");
        assert_eq!(
            from.send(&a).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe,
            "no SIGPIPE"
        );
        let mut outside = Buffers::default();
        outside.push(GuestAddress((1 << 20) - 2), 4);
        assert!(IoVecs::default()
            .push_guest(&*mem, &outside, false)
            .is_err());
    }
}
