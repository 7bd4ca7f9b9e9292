//! The image: opened, locked and sized once, then read and written at
//! offsets (`preadv`/`pwritev` straight into and out of guest memory),
//! synced with `fdatasync`, and discarded or zeroed with `fallocate`.
//!
//! With `O_DIRECT` the host wants offsets, lengths and buffer addresses
//! aligned to its logical block size (probed at open: 512 or 4096). Guest
//! buffers that are aligned go straight through; others go through an
//! aligned bounce buffer of at most [`BOUNCE_CHUNK`] bytes at a time,
//! reading the covering blocks first when a write does not cover them
//! whole.
//!
//! When the host file system cannot punch holes, discards succeed without
//! doing anything (they are hints); when it can neither punch holes nor
//! zero ranges, write-zeroes writes zeroes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::{GuestMemory, Permissions};

use super::request::Buffers;
use super::{BlockError, CacheMode, SECTOR_SIZE};
use crate::iov::{guest_iovecs, mark_dirty, IOV_MAX};

/// The most bytes bounced at a time.
pub const BOUNCE_CHUNK: usize = 1 << 20;

/// An open image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    direct: bool,
    /// What `O_DIRECT` needs offsets, lengths and buffers aligned to.
    align: usize,
    capacity: u64,
    read_only: bool,
    punch_hole: AtomicBool,
    zero_range: AtomicBool,
    #[cfg(test)]
    faults: std::sync::Mutex<Vec<(super::Operation, i32)>>,
    #[cfg(test)]
    gates: std::sync::Mutex<Vec<(super::Operation, std::os::fd::OwnedFd)>>,
}

/// A buffer aligned to `align`, without `unsafe`: a larger vector and the
/// aligned window in it.
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, align: usize) -> Self {
        let bytes = vec![0u8; len + align];
        let start = bytes.as_ptr().align_offset(align);
        Self { bytes, start, len }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// The advisory lock on `file` (at `path`): shared for read-only, else
/// exclusive; never waits.
fn flock(file: &File, path: &Path, read_only: bool) -> Result<(), BlockError> {
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            BlockError::Locked(path.to_owned())
        } else {
            BlockError::Open {
                path: path.to_owned(),
                source: e,
            }
        });
    }
    Ok(())
}

impl Disk {
    /// Opens `path` (read-only or not, through the page cache or not),
    /// takes an advisory lock (shared for read-only, else exclusive) and
    /// finds the size. A size that is not whole sectors loses its tail.
    #[cfg(test)]
    pub fn open(path: &Path, read_only: bool, cache: CacheMode) -> Result<Self, BlockError> {
        Self::open_with(path, read_only, cache, true)
    }

    /// [`Disk::open`], the lock taken only if `lock` (an incoming
    /// migration's destination takes it with [`Disk::lock`] once the
    /// source let it go).
    pub fn open_with(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        lock: bool,
    ) -> Result<Self, BlockError> {
        let direct = cache == CacheMode::None;
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotADisk(path.to_owned()));
        }
        if lock {
            flock(&file, path, read_only)?;
        }
        let size = if kind.is_block_device() {
            let mut f = &file;
            io::Seek::seek(&mut f, io::SeekFrom::End(0)).map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?
        } else {
            meta.len()
        };
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "{}: {size} bytes is not whole sectors; the last {} bytes are not visible",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let align = if direct { probe_alignment(&file) } else { 512 };
        Ok(Self {
            file,
            direct,
            align,
            capacity: size / SECTOR_SIZE,
            read_only,
            punch_hole: AtomicBool::new(true),
            zero_range: AtomicBool::new(true),
            #[cfg(test)]
            faults: std::sync::Mutex::new(Vec::new()),
            #[cfg(test)]
            gates: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Takes the advisory lock (shared for read-only, else exclusive) at
    /// `path` (this image's path, for the error).
    pub fn lock(&self, path: &Path) -> Result<(), BlockError> {
        flock(&self.file, path, self.read_only)
    }

    /// Lets the lock go (a migration's source, once the destination has
    /// the machine).
    pub fn unlock(&self) {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) } != 0 {
            log::warn!(
                "cannot let an image's lock go: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// The capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether it was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The alignment `O_DIRECT` needs (512 without it).
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// The open image (for the io_uring engine's operations).
    pub(super) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Whether guest `data` at byte `offset` can be moved straight from
    /// or to the image (always, unless `O_DIRECT` wants an alignment the
    /// buffers lack: then only through a bounce buffer).
    pub(super) fn direct_ok<M: GuestMemory>(&self, mem: &M, offset: u64, data: &Buffers) -> bool {
        !self.direct || self.aligned(mem, offset, data)
    }

    /// Makes the next `op` that goes through io_uring wait until a byte
    /// can be read from `gate` (tests: completions out of order).
    #[cfg(test)]
    pub fn inject_gate(&self, op: super::Operation, gate: std::os::fd::OwnedFd) {
        self.gates.lock().unwrap().push((op, gate));
    }

    /// The gate for the next io_uring `op`, if a test set one.
    #[cfg(test)]
    pub(super) fn gate(&self, op: super::Operation) -> Option<std::os::fd::OwnedFd> {
        let mut gates = self.gates.lock().unwrap();
        let i = gates.iter().position(|(o, _)| *o == op)?;
        Some(gates.remove(i).1)
    }

    /// Makes the next `op` fail with `errno` (tests: host errors on
    /// demand).
    #[cfg(test)]
    pub fn inject_fault(&self, op: super::Operation, errno: i32) {
        self.faults.lock().unwrap().push((op, errno));
    }

    /// Pretends `O_DIRECT` wants `align` (tests: the read-modify-write
    /// path on a host with 512-byte blocks).
    #[cfg(test)]
    pub fn force_alignment(&mut self, align: usize) {
        self.align = align;
    }

    /// Pretends the host can neither punch holes nor zero ranges.
    #[cfg(test)]
    pub fn forget_fallocate(&self) {
        self.punch_hole.store(false, Ordering::Relaxed);
        self.zero_range.store(false, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn fault(&self, op: super::Operation) -> io::Result<()> {
        let mut faults = self.faults.lock().unwrap();
        match faults.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(io::Error::from_raw_os_error(faults.remove(i).1)),
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    pub(super) fn fault(&self, _: super::Operation) -> io::Result<()> {
        Ok(())
    }

    /// Reads `data.len()` bytes at byte `offset` into guest `data`. Past
    /// the file's end (it shrank) reads zeroes.
    pub fn read<M: GuestMemory>(&self, mem: &M, offset: u64, data: &Buffers) -> io::Result<()> {
        self.fault(super::Operation::Read)?;
        if !self.direct || self.aligned(mem, offset, data) {
            let done = self.vectored(mem, offset, data, false)?;
            if done < data.len() {
                zero_fill(mem, data, done)?;
            }
            return Ok(());
        }
        self.bounced(offset, data.len(), |pos, buf| {
            data.write_from(mem, pos, buf).map_err(io::Error::other)
        })
    }

    /// Writes guest `data` at byte `offset`.
    pub fn write<M: GuestMemory>(&self, mem: &M, offset: u64, data: &Buffers) -> io::Result<()> {
        self.fault(super::Operation::Write)?;
        if !self.direct || self.aligned(mem, offset, data) {
            let done = self.vectored(mem, offset, data, true)?;
            if done < data.len() {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            return Ok(());
        }
        self.bounced_write(offset, data.len(), |pos, buf| {
            data.read_into(mem, pos, buf).map_err(io::Error::other)
        })
    }

    /// Makes completed writes stable.
    pub fn flush(&self) -> io::Result<()> {
        self.fault(super::Operation::Flush)?;
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset` if the host can; a host that
    /// cannot is not an error (discard is a hint).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fault(super::Operation::Discard)?;
        // fallocate refuses a length of 0 (EINVAL): not the host's fault.
        if len == 0 || !self.punch_hole.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE, offset, len) {
            Err(e) if is_unsupported(&e) => {
                log::info!("virtio-blk: the host cannot punch holes; discards do nothing");
                self.punch_hole.store(false, Ordering::Relaxed);
                Ok(())
            }
            other => other,
        }
    }

    /// Makes `len` bytes at `offset` read as zeroes: a hole when `unmap`
    /// allows and the host can, else `FALLOC_FL_ZERO_RANGE`, else written
    /// zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.fault(super::Operation::WriteZeroes)?;
        if len == 0 {
            return Ok(());
        }
        let tries = [
            (unmap, libc::FALLOC_FL_PUNCH_HOLE, &self.punch_hole),
            (true, libc::FALLOC_FL_ZERO_RANGE, &self.zero_range),
        ];
        for (wanted, mode, supported) in tries {
            if !wanted || !supported.load(Ordering::Relaxed) {
                continue;
            }
            match self.fallocate(mode, offset, len) {
                Err(e) if is_unsupported(&e) => supported.store(false, Ordering::Relaxed),
                other => return other,
            }
        }
        let total = usize::try_from(len).map_err(io::Error::other)?;
        if self.direct {
            return self.bounced_write(offset, len, |_, buf| {
                buf.fill(0);
                Ok(())
            });
        }
        let zeroes = vec![0u8; total.min(BOUNCE_CHUNK)];
        let mut pos = 0;
        while pos < total {
            let n = (total - pos).min(zeroes.len());
            self.file.write_all_at(&zeroes[..n], offset + pos as u64)?;
            pos += n;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let off = i64::try_from(offset).map_err(io::Error::other)?;
        let len = i64::try_from(len).map_err(io::Error::other)?;
        loop {
            // SAFETY: fallocate on a descriptor we own; no memory is
            // involved.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Whether `O_DIRECT` can take the guest's buffers as they are.
    fn aligned<M: GuestMemory>(&self, mem: &M, offset: u64, data: &Buffers) -> bool {
        let a = self.align as u64;
        offset % a == 0
            && data.segments().iter().all(|s| {
                u64::from(s.len) % a == 0
                    && mem
                        .get_slices(s.addr, s.len as usize, Permissions::Read)
                        .is_ok_and(|slices| {
                            slices.into_iter().all(|sl| {
                                sl.is_ok_and(|sl| {
                                    sl.ptr_guard().as_ptr() as usize % self.align == 0
                                        && sl.len() % self.align == 0
                                })
                            })
                        })
            })
    }

    /// `preadv`/`pwritev` between the file at `offset` and the guest's
    /// buffers; returns the bytes moved (fewer only at the end of file).
    fn vectored<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        data: &Buffers,
        write: bool,
    ) -> io::Result<u64> {
        let mut iovs = guest_iovecs(mem, data, write)?;
        // The pointers stay valid while `mem` lives (it is borrowed here).
        let done = transfer(&self.file, &mut iovs, offset, write);
        if !write {
            // A failed read may have filled some buffers all the same.
            let filled = done.as_ref().map_or(data.len(), |&n| n);
            mark_dirty(mem, data, filled);
        }
        done
    }

    /// Reads `len` bytes at `offset` through aligned chunks, handing each
    /// to `sink(position in the request, bytes)`.
    fn bounced(
        &self,
        offset: u64,
        len: u64,
        mut sink: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let a = self.align as u64;
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(BOUNCE_CHUNK as u64);
            let start = offset + pos;
            let lo = start - start % a;
            let hi = (start + n).next_multiple_of(a);
            let mut buf = Aligned::new((hi - lo) as usize, self.align);
            read_full_at(&self.file, buf.buf(), lo)?;
            let at = (start - lo) as usize;
            sink(pos, &buf.buf()[at..at + n as usize])?;
            pos += n;
        }
        Ok(())
    }

    /// Writes `len` bytes at `offset` through aligned chunks that
    /// `fill(position in the request, bytes)` provides; blocks only partly
    /// written are read first.
    fn bounced_write(
        &self,
        offset: u64,
        len: u64,
        mut fill: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let a = self.align as u64;
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(BOUNCE_CHUNK as u64);
            let start = offset + pos;
            let lo = start - start % a;
            let hi = (start + n).next_multiple_of(a);
            let mut buf = Aligned::new((hi - lo) as usize, self.align);
            if lo != start || hi != start + n {
                read_full_at(&self.file, buf.buf(), lo)?;
            }
            let at = (start - lo) as usize;
            fill(pos, &mut buf.buf()[at..at + n as usize])?;
            self.file.write_all_at(buf.buf(), lo)?;
            pos += n;
        }
        Ok(())
    }
}

/// Zeroes the guest's buffers from stream byte `from` on.
pub(super) fn zero_fill<M: GuestMemory>(mem: &M, data: &Buffers, from: u64) -> io::Result<()> {
    let zeroes = vec![0u8; (data.len() - from).min(BOUNCE_CHUNK as u64) as usize];
    let mut pos = from;
    while pos < data.len() {
        let n = (data.len() - pos).min(zeroes.len() as u64) as usize;
        data.write_from(mem, pos, &zeroes[..n])
            .map_err(io::Error::other)?;
        pos += n as u64;
    }
    Ok(())
}

/// Reads `buf` at `offset`, zeroes past the end of the file.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves all of `iovs` at `offset`, `IOV_MAX` at a time, resuming after
/// short transfers; returns the bytes moved (fewer only at end of file).
fn transfer(file: &File, iovs: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<u64> {
    let mut idx = 0;
    let mut done = 0u64;
    while idx < iovs.len() {
        let n = (iovs.len() - idx).min(IOV_MAX);
        let at = i64::try_from(offset + done).map_err(io::Error::other)?;
        // SAFETY: the iovecs describe guest memory that stays mapped while
        // the caller's slices live; `n` of them from `idx` are in bounds.
        let r = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), iovs[idx..].as_ptr(), n as i32, at)
            } else {
                libc::preadv(file.as_raw_fd(), iovs[idx..].as_ptr(), n as i32, at)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        let mut left = r as usize;
        done += left as u64;
        while left > 0 && idx < iovs.len() {
            let iov = &mut iovs[idx];
            if left >= iov.iov_len {
                left -= iov.iov_len;
                idx += 1;
            } else {
                // SAFETY: advancing inside the same iovec's buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                iov.iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(done)
}

/// The alignment `O_DIRECT` needs on this file: 512 if a 512-byte read at
/// 0 works, else 4096.
fn probe_alignment(file: &File) -> usize {
    let mut buf = Aligned::new(512, 4096);
    match file.read_at(buf.buf(), 0) {
        Ok(_) => 512,
        Err(_) => 4096,
    }
}

#[cfg(test)]
mod tests;
