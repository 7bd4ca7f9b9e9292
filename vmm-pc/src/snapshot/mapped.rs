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
//! ([`super::pagemap::untouched`]): callers must not skip pages by the
//! page map once RAM came from a file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

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
}
