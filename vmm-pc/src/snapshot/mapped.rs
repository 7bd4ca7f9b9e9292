//! Guest RAM from a snapshot file's image ([`super::format`]): mapped
//! over the RAM (`MAP_PRIVATE`), so that a restore costs one call however
//! large the guest: each page comes from the file (the page cache) when
//! the guest or a device first touches it, and the first write makes a
//! private copy, the file never changes. Firecracker restores its memory
//! file the same way.
//!
//! The file must then stay as it is while the VM runs (as Firecracker's):
//! a page not yet read comes from it whenever it is touched, and a file
//! cut short under a running VM ends it (`SIGBUS`). The VMM's own saves
//! never write over it in place (see `write_snapshot`: a new file renamed
//! over the old one).
//!
//! A page of such RAM that nobody touched reads from the file, yet the
//! page map shows it as never touched, as a page of zeroes
//! ([`super::pagemap::untouched`]): once RAM came from a file, a page is
//! known to be zeroes only if the page map shows it untouched *and* it
//! lies in a hole of the file ([`RamFile::data_pages`]). A page the page
//! map shows untouched, or still the file's, holds the file's bytes: a
//! save copies those from this file rather than reading them
//! ([`super::image`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;

/// RAM regions mapped from a snapshot file: the file and where each
/// region's image starts in it.
#[derive(Debug)]
pub struct RamFile {
    file: File,
    /// (guest address, offset in the file, length).
    images: Vec<(u64, u64, u64)>,
}

impl RamFile {
    /// `file`, no region yet.
    pub fn new(file: File) -> Self {
        Self {
            file,
            images: Vec::new(),
        }
    }

    /// The region at guest address `gpa`, `len` bytes, is mapped from
    /// `start` in the file.
    pub fn add(&mut self, gpa: u64, start: u64, len: u64) {
        self.images.push((gpa, start, len));
    }

    /// Where the image of the region at `gpa` starts in the file, if the
    /// region is mapped from it.
    pub fn image_start(&self, gpa: u64) -> Option<u64> {
        self.images
            .iter()
            .find(|(g, _, _)| *g == gpa)
            .map(|&(_, start, _)| start)
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether some of guest RAM is mapped from `other` (the same file,
    /// by device and inode); true where that cannot be told.
    pub fn maps_from(&self, other: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.images.is_empty() {
            return false;
        }
        match (other.metadata(), self.file.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => true,
        }
    }

    /// Whether any region is mapped.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// For the region at `gpa` of `len` bytes, if it is mapped from the
    /// file: per page, whether the file may hold anything but zeroes
    /// there (`false`: wholly in a hole). Where the file system cannot
    /// say, every page may.
    pub fn data_pages(&self, gpa: u64, len: u64) -> Option<Vec<bool>> {
        let &(_, start, image_len) = self.images.iter().find(|(g, _, _)| *g == gpa)?;
        let len = len.min(image_len);
        Some(data_pages(&self.file, start, len).unwrap_or_else(|e| {
            log::debug!("snapshot: cannot find the file's holes ({e}): every page may hold data");
            vec![true; len.div_ceil(PAGE) as usize]
        }))
    }
}

/// Per page of the `len` bytes of `file` from `start` (a whole page):
/// whether it overlaps data (`SEEK_DATA`/`SEEK_HOLE`; a file system
/// without holes has data everywhere).
pub fn data_pages(file: &File, start: u64, len: u64) -> io::Result<Vec<bool>> {
    let pages = usize::try_from(len.div_ceil(PAGE))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too large"))?;
    let mut map = vec![false; pages];
    let end = start.saturating_add(len);
    let seek = |from: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let from = libc::off_t::try_from(from)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: lseek on a file we hold; it only moves the file's
        // offset, which nothing else here relies on (reads are pread).
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let e = io::Error::last_os_error();
        // No data at or after `from`.
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let first = ((data - start) / PAGE) as usize;
        let last = ((hole.saturating_sub(start)).div_ceil(PAGE) as usize)
            .min(pages)
            .max(first);
        map[first..last].fill(true);
        if hole <= data {
            break;
        }
        pos = hole;
    }
    Ok(map)
}

/// Maps `len` bytes of `file` from `offset` (both whole pages) over the
/// memory at `addr` (page-aligned), private and writable, in one call.
///
/// # Safety
///
/// `addr..addr + len` must be a mapping of the caller's that nothing
/// reads or writes meanwhile (a machine whose vCPUs and workers are
/// stopped) and whose contents nobody needs any more; references into it
/// stay valid (same addresses) and see the file's bytes afterwards. KVM's
/// memory slot over it follows through its MMU notifier.
pub unsafe fn map_over(addr: usize, len: usize, file: &File, offset: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: MAP_FIXED replaces exactly `addr..addr + len`, which the
    // caller vouches for (see above); no other memory is touched, and the
    // new mapping is private: writes never reach the file.
    let ptr = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if ptr as usize != addr {
        return Err(io::Error::other("the image was mapped elsewhere"));
    }
    Ok(())
}

/// Reads `dst.len()` bytes of `file` from `offset` into `dst`: a restore
/// where the file cannot be mapped (holes read as zeroes).
pub fn read_into(file: &File, offset: u64, dst: &mut [u8]) -> io::Result<()> {
    file.read_exact_at(dst, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const PAGE: usize = 4096;

    /// A file of `len` bytes starting with `bytes` (a hole after them).
    fn temp_file(bytes: &[u8], len: u64) -> (File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "vmm-mapped-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        f.set_len(len).unwrap();
        (File::open(&path).unwrap(), path)
    }

    #[test]
    fn the_file_ram_is_mapped_from_is_known_by_its_inode() {
        let (file, path) = temp_file(b"ram", PAGE as u64);
        let again = File::open(&path).unwrap();
        let mut ram = RamFile::new(file);
        assert!(!ram.maps_from(&again), "no region mapped yet");
        ram.add(0, 0, PAGE as u64);
        assert!(ram.maps_from(&again));
        let other = std::env::temp_dir().join(format!("vmm-mapped-other-{}", std::process::id()));
        std::fs::write(&other, b"x").unwrap();
        assert!(!ram.maps_from(&File::open(&other).unwrap()));
        let _ = std::fs::remove_file(other);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_mapped_image_reads_as_the_file_and_writes_stay_private() {
        // A file: one page of 1s, then the image: a page of 2s and a hole.
        let mut bytes = vec![1u8; PAGE];
        bytes.extend_from_slice(&[2u8; PAGE]);
        let (file, path) = temp_file(&bytes, 3 * PAGE as u64);
        // Two pages of anonymous memory holding 9s.
        // SAFETY: a fresh private anonymous mapping; nothing else touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: the mapping just made, ours alone.
        let mem = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, 2 * PAGE) };
        mem.fill(9);
        // SAFETY: the mapping above; the slice is not used meanwhile.
        unsafe { map_over(ptr as usize, 2 * PAGE, &file, PAGE as u64) }.unwrap();
        // SAFETY: the same addresses, now the file's image.
        let mem = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, 2 * PAGE) };
        assert!(mem[..PAGE].iter().all(|&b| b == 2));
        assert!(
            mem[PAGE..].iter().all(|&b| b == 0),
            "a hole reads as zeroes"
        );
        mem[0] = 5;
        let mut back = [0u8; 1];
        file.read_exact_at(&mut back, PAGE as u64).unwrap();
        assert_eq!(back, [2], "the file is unchanged");
        // Unaligned offsets are refused, not rounded.
        // SAFETY: as above.
        assert!(unsafe { map_over(ptr as usize, PAGE, &file, 1) }.is_err());
        // The fallback reads the same bytes.
        let mut copy = vec![9u8; 2 * PAGE];
        read_into(&file, PAGE as u64, &mut copy).unwrap();
        assert!(copy[..PAGE].iter().all(|&b| b == 2) && copy[PAGE..].iter().all(|&b| b == 0));
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(ptr, 2 * PAGE) };
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn holes_are_found_page_by_page() {
        // Data in pages 1 and 4 of a 6-page file (the rest holes, if this
        // file system keeps holes).
        let (file, path) = temp_file(&[], 6 * PAGE as u64);
        let w = File::options().write(true).open(&path).unwrap();
        w.write_all_at(&[1u8; PAGE], PAGE as u64).unwrap();
        w.write_all_at(&[1u8; 10], 4 * PAGE as u64 + 100).unwrap();
        w.sync_all().unwrap();
        let map = data_pages(&file, 0, 6 * PAGE as u64).unwrap();
        assert!(map[1] && map[4], "{map:?}");
        let holes = map.iter().filter(|&&d| !d).count();
        // tmpfs and ext4 keep holes; a file system that does not reports
        // data everywhere, which is never wrong.
        assert!(holes == 4 || holes == 0, "{map:?}");
        // From an offset, for a length.
        let part = data_pages(&file, PAGE as u64, 2 * PAGE as u64).unwrap();
        assert!(part[0]);
        assert_eq!(part.len(), 2);
        let mut ram = RamFile::new(file);
        assert!(ram.is_empty());
        ram.add(0x10_0000, 3 * PAGE as u64, 3 * PAGE as u64);
        assert_eq!(ram.data_pages(0, 4096), None);
        let region = ram.data_pages(0x10_0000, 3 * PAGE as u64).unwrap();
        assert!(region[1], "page 4 of the file is the region's second");
        std::fs::remove_file(path).unwrap();
    }
}
