//! Which pages of a RAM mapping were never touched, from
//! `/proc/self/pagemap`: a page neither present nor swapped out has never
//! been written (or was given back), so it reads as zeroes. A snapshot
//! skips those without reading them: reading an untouched page faults
//! in the shared zero page, which costs a page fault per 4 KiB (dear on a
//! software hypervisor) for nothing.
//!
//! RAM mapped privately from a snapshot file has a third kind of page:
//! one read since, still the file's own page (the page map's "file page"
//! bit) rather than a private copy. It and an untouched page both hold
//! what the file holds there ([`Page::is_files`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// "File page or shared anonymous" (Linux 3.5 on).
const FILE_PAGE: u64 = 1 << 61;

/// What the page map says of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Never touched: zeroes, or in a private file mapping the file's bytes.
    Untouched,
    /// Present and not the process's own copy: in a private file mapping,
    /// the file's page as it is in the page cache.
    File,
    /// Written here (a private copy), or swapped out.
    Own,
}

impl Page {
    /// In RAM mapped privately from a file: whether the page still holds
    /// the file's bytes (never written since the mapping was made).
    pub fn is_files(self) -> bool {
        self != Self::Own
    }
}

/// One [`Page`] per 4 KiB page of the `len` bytes at `addr`
/// (page-aligned). An error (no pagemap) is for the caller to treat every
/// page as written.
pub fn pages(addr: usize, len: usize) -> io::Result<Vec<Page>> {
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
            if v & (PRESENT | SWAPPED) == 0 {
                Page::Untouched
            } else if v & (PRESENT | SWAPPED | FILE_PAGE) == PRESENT | FILE_PAGE {
                Page::File
            } else {
                Page::Own
            }
        })
        .collect())
}

/// One flag per 4 KiB page of the `len` bytes at `addr` (page-aligned):
/// `true` for a page never touched (zeroes). An error (no pagemap) is for
/// the caller to treat every page as touched.
pub fn untouched(addr: usize, len: usize) -> io::Result<Vec<bool>> {
    Ok(pages(addr, len)?
        .into_iter()
        .map(|p| p == Page::Untouched)
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

    #[test]
    fn a_private_file_mapping_tells_the_files_pages_from_copies() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("pagemap-test-{}", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.write_all(&[7u8; 3 * 4096]).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let len = 3 * 4096;
        // SAFETY: a new private mapping of the file; no other memory is
        // touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let base = ptr as *mut u8;
        // Page 1 read (the file's page), page 2 written (a copy); page 0
        // untouched. (Fault-around may map the file's page 0 on the read.)
        // SAFETY: bytes of the mapping made above.
        let read = unsafe { std::ptr::read_volatile(base.add(4096)) };
        assert_eq!(read, 7);
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(base.add(2 * 4096), 1) };
        let got = pages(ptr as usize, len).unwrap();
        assert!(got[0].is_files(), "{got:?}");
        assert_eq!(&got[1..], [Page::File, Page::Own]);
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(ptr, len) };
    }
}
