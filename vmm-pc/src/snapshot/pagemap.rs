//! Which pages of a RAM mapping were never touched, from
//! `/proc/self/pagemap`: a page neither present nor swapped out has never
//! been written (or was given back), so it reads as zeroes. A snapshot
//! skips those without reading them: reading an untouched page faults
//! in the shared zero page, which costs a page fault per 4 KiB (dear on a
//! software hypervisor) for nothing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;

/// One flag per 4 KiB page of the `len` bytes at `addr` (page-aligned):
/// `true` for a page never touched (zeroes). An error (no pagemap) is for
/// the caller to treat every page as touched.
pub fn untouched(addr: usize, len: usize) -> io::Result<Vec<bool>> {
    const PAGE: usize = 4096;
    if addr % PAGE != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "unaligned"));
    }
    let pages = len.div_ceil(PAGE);
    let file = File::open("/proc/self/pagemap")?;
    let mut raw = vec![0u8; pages * 8];
    let offset = (addr / PAGE * 8) as u64;
    let mut done = 0;
    while done < raw.len() {
        let n = file.read_at(&mut raw[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        done += n;
    }
    Ok(raw
        .chunks_exact(8)
        .map(|e| {
            let v = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
            v & (PRESENT | SWAPPED) == 0
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of fresh private anonymous memory; the caller unmaps it.
    fn anonymous(len: usize) -> *mut libc::c_void {
        // SAFETY: a new private anonymous mapping of `len` bytes; no other
        // memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        ptr
    }

    #[test]
    fn a_written_page_is_touched_and_a_fresh_one_is_not() {
        // Two pages of fresh anonymous memory.
        let len = 2 * 4096;
        let ptr = anonymous(len);
        // SAFETY: the first byte of the mapping made above.
        unsafe { *(ptr as *mut u8) = 1 };
        let flags = untouched(ptr as usize, len).unwrap();
        assert_eq!(flags, [false, true]);
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(ptr, len) };
    }
}
