//! A RAM region's image in a snapshot file ([`super::format`]), written
//! page run by page run from where each page's bytes are cheapest to get
//! ([`Source`]): nothing at all for pages known to hold zeroes (they stay
//! holes), the guest's RAM for pages written here, and, for RAM mapped
//! from an earlier snapshot file ([`super::mapped`]) that the guest has
//! not written since, that file itself, copied file to file in the kernel
//! (`copy_file_range`). Reading such pages through the mapping instead
//! would fault each in (a page fault per 4 KiB, dear on a software
//! hypervisor, and a disk read if the page cache lost it) only to write
//! the same bytes out again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::format::PAGE;
use super::pagemap::Page;

/// Where a page of the image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Known to hold zeroes without reading it: left a hole.
    Zeroes,
    /// Guest RAM (a page of zeroes found there is left a hole too).
    Ram,
    /// The file the RAM was mapped from, unchanged there since.
    OldFile,
}

/// Each page's [`Source`], from the page map (`pages`; `None`: unknown,
/// every page is read) and, for RAM mapped from a snapshot file, where
/// that file holds data (`file_data`, per page; `None`: not mapped).
pub fn sources(pages: Option<&[Page]>, file_data: Option<&[bool]>, count: usize) -> Vec<Source> {
    let Some(pages) = pages else {
        return vec![Source::Ram; count];
    };
    (0..count)
        .map(|i| match (pages.get(i), file_data) {
            // Anonymous RAM: only a page never touched is known.
            (Some(Page::Untouched), None) => Source::Zeroes,
            // Mapped from a file and not written since: the file's bytes,
            // zeroes where it has a hole.
            (Some(p), Some(data)) if p.is_files() => match data.get(i) {
                Some(true) => Source::OldFile,
                Some(false) => Source::Zeroes,
                None => Source::Ram,
            },
            _ => Source::Ram,
        })
        .collect()
}

/// The file RAM was mapped from and where the region's image starts in it.
#[derive(Debug, Clone, Copy)]
pub struct OldImage<'a> {
    /// The file, open.
    pub file: &'a File,
    /// Where the region's image starts in it.
    pub start: u64,
}

/// Writes `ram`'s image at `at` in `file`, each page from its `sources`
/// entry (a page past the end of `sources` is read from `ram`; an
/// [`Source::OldFile`] page without `old` too). A file system that cannot
/// copy between the two files (another file system, no support) has the
/// pages read from `ram` instead. Returns how many pages were written
/// (copied or read); the rest are holes.
pub fn write_image(
    file: &File,
    at: u64,
    ram: &[u8],
    sources: &[Source],
    old: Option<OldImage<'_>>,
) -> io::Result<u64> {
    let pages = ram.len() / PAGE;
    let source = |i: usize| match sources.get(i).copied().unwrap_or(Source::Ram) {
        Source::OldFile if old.is_none() => Source::Ram,
        s => s,
    };
    let mut copying = old;
    let mut first = 0;
    let mut written = 0u64;
    while first < pages {
        let kind = source(first);
        let end = (first..pages).find(|&i| source(i) != kind).unwrap_or(pages);
        let (from, to) = (first * PAGE, end * PAGE);
        match kind {
            Source::Zeroes => {}
            Source::Ram => written += write_ram(file, at + from as u64, &ram[from..to])?,
            Source::OldFile => {
                let copied = match copying {
                    Some(o) => copy_range(
                        o.file,
                        o.start + from as u64,
                        file,
                        at + from as u64,
                        (to - from) as u64,
                    ),
                    None => Ok(0),
                };
                let done = match copied {
                    Ok(n) => n as usize,
                    Err(e) => {
                        log::debug!("snapshot: cannot copy from the old file ({e}): reading RAM");
                        copying = None;
                        0
                    }
                };
                written += (done / PAGE) as u64;
                if from + done < to {
                    written += write_ram(file, at + (from + done) as u64, &ram[from + done..to])?;
                }
            }
        }
        first = end;
    }
    Ok(written)
}

/// Writes the pages of `ram` that hold anything at `at` in `file`, one
/// write per run; pages of zeroes stay holes. Returns the pages written.
fn write_ram(file: &File, at: u64, ram: &[u8]) -> io::Result<u64> {
    let pages = ram.len() / PAGE;
    let mut run: Option<usize> = None;
    let mut written = 0u64;
    for index in 0..=pages {
        let data = index < pages
            && ram[index * PAGE..(index + 1) * PAGE]
                .iter()
                .any(|&b| b != 0);
        match (data, run) {
            (true, None) => run = Some(index),
            (false, Some(first)) => {
                file.write_all_at(&ram[first * PAGE..index * PAGE], at + (first * PAGE) as u64)?;
                written += (index - first) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Copies `len` bytes of `from` at `from_at` to `to` at `to_at` in the
/// kernel; returns how many were copied (fewer only at the end of
/// `from`). An error before any byte went is for the caller to copy
/// otherwise.
fn copy_range(from: &File, from_at: u64, to: &File, to_at: u64, len: u64) -> io::Result<u64> {
    let offset = |v: u64| {
        libc::loff_t::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
    };
    let (mut off_in, mut off_out) = (offset(from_at)?, offset(to_at)?);
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // The system call, not libc's wrapper: std declares
        // `copy_file_range` weak, and in a static musl build with LTO that
        // made our call a weak reference the link left at address 0.
        // SAFETY: both descriptors are open files we hold; the offsets
        // are our own variables, which the kernel advances; no memory of
        // ours is read or written.
        let n = unsafe {
            libc::syscall(
                libc::SYS_copy_file_range,
                from.as_raw_fd(),
                &mut off_in as *mut libc::loff_t,
                to.as_raw_fd(),
                &mut off_out as *mut libc::loff_t,
                want,
                0 as libc::c_uint,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as u64,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done == 0 {
                    return Err(e);
                }
                break;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("vmm-image-{name}-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    fn read_back(file: &File, at: u64, len: usize) -> Vec<u8> {
        let mut back = vec![0xffu8; len];
        file.read_exact_at(&mut back, at).unwrap();
        back
    }

    #[test]
    fn an_image_keeps_data_pages_and_leaves_zeroes_as_holes() {
        // Six pages: data, zeroes, data, data, "known zeroes" holding
        // data (skipped unread), zeroes.
        let mut ram = vec![0u8; 6 * PAGE];
        ram[..PAGE].fill(1);
        ram[2 * PAGE..4 * PAGE].fill(2);
        ram[4 * PAGE..5 * PAGE].fill(9);
        let mut known = vec![Source::Ram; 6];
        known[4] = Source::Zeroes;
        let (path, file) = temp("holes");
        let at = PAGE as u64;
        // Pages 0, 2 and 3 written.
        assert_eq!(write_image(&file, at, &ram, &known, None).unwrap(), 3);
        file.set_len(at + ram.len() as u64).unwrap();
        let mut expected = ram.clone();
        expected[4 * PAGE..5 * PAGE].fill(0);
        assert_eq!(read_back(&file, at, ram.len()), expected);
        let data = super::super::mapped::data_pages(&file, at, ram.len() as u64).unwrap();
        // A file system that keeps holes shows them; one that does not
        // has data everywhere.
        let holes: Vec<usize> = (0..6).filter(|&i| !data[i]).collect();
        assert!(holes == [1, 4, 5] || holes.is_empty(), "{data:?}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn pages_unchanged_since_the_mapping_come_from_the_old_file() {
        // The old file's image (at one page in): pages of 5s. RAM holds
        // 6s where the guest wrote and stale bytes (7s) where the page
        // map says the file's page is still mapped: those must come out
        // as the old file's, unread.
        let (old_path, old) = temp("old");
        old.write_all_at(&vec![5u8; 4 * PAGE], PAGE as u64).unwrap();
        let mut ram = vec![7u8; 4 * PAGE];
        ram[PAGE..2 * PAGE].fill(6);
        let sources = [
            Source::OldFile,
            Source::Ram,
            Source::OldFile,
            Source::Zeroes,
        ];
        let (path, file) = temp("new");
        let at = 2 * PAGE as u64;
        let o = OldImage {
            file: &old,
            start: PAGE as u64,
        };
        // Two pages copied and one read: three of four.
        assert_eq!(write_image(&file, at, &ram, &sources, Some(o)).unwrap(), 3);
        file.set_len(at + ram.len() as u64).unwrap();
        let back = read_back(&file, at, ram.len());
        assert!(back[..PAGE].iter().all(|&b| b == 5));
        assert!(back[PAGE..2 * PAGE].iter().all(|&b| b == 6));
        assert!(back[2 * PAGE..3 * PAGE].iter().all(|&b| b == 5));
        assert!(back[3 * PAGE..].iter().all(|&b| b == 0));
        // Without the old file, the same pages are read from RAM.
        assert_eq!(write_image(&file, at, &ram, &sources, None).unwrap(), 3);
        assert!(read_back(&file, at, PAGE).iter().all(|&b| b == 7));
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(old_path).unwrap();
    }

    #[test]
    fn sources_follow_the_page_map_and_the_files_holes() {
        use Page::{File as F, Own as O, Untouched as U};
        let pages = [U, F, O, U, F];
        // Anonymous RAM: untouched pages are zeroes, the rest is read.
        assert_eq!(
            sources(Some(&pages), None, 5),
            [
                Source::Zeroes,
                Source::Ram,
                Source::Ram,
                Source::Zeroes,
                Source::Ram
            ]
        );
        // Mapped from a file with a hole at page 3 (and a short map).
        let data = [true, true, true, false];
        assert_eq!(
            sources(Some(&pages), Some(&data), 5),
            [
                Source::OldFile,
                Source::OldFile,
                Source::Ram,
                Source::Zeroes,
                Source::Ram
            ]
        );
        // No page map: every page is read.
        assert_eq!(sources(None, Some(&data), 2), [Source::Ram, Source::Ram]);
    }
}
