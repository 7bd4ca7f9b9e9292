//! [`DirtyLog`]: the log of guest pages the host kernel's vhost devices
//! write, for live migration (`<linux/vhost.h>`'s VHOST_SET_LOG_BASE and
//! VHOST_F_LOG_ALL).
//!
//! The kernel writes guest RAM through this process's mapping, which
//! KVM's dirty log never sees. With a log base set and VHOST_F_LOG_ALL
//! accepted, it sets one bit per 4 KiB page of guest physical address
//! space for every buffer it fills, and (with VHOST_VRING_F_LOG on a
//! ring) for the used ring it updates: bit `n % 8` of byte `n / 8` for
//! page `n`, counted from guest address 0, which on x86-64 is bit `n % 64`
//! of 64-bit word `n / 64`. The migration takes the bits with an atomic
//! swap per word ([`DirtyLog::take`]), so a page the kernel marks while a
//! pass reads the log is either in this pass or the next, never lost.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{GuestMemory, GuestMemoryBackend, GuestMemoryRegion};

/// The page size of vhost's log (`VHOST_PAGE_SIZE`).
pub const LOG_PAGE_SIZE: u64 = 0x1000;

/// A dirty-page bitmap over guest physical addresses `[0, end)` that the
/// kernel's vhost devices write.
#[derive(Debug)]
pub struct DirtyLog {
    words: Box<[AtomicU64]>,
}

impl DirtyLog {
    /// A clean log covering guest addresses `[0, end)`.
    pub fn new(end: u64) -> Self {
        let pages = end.div_ceil(LOG_PAGE_SIZE);
        let words = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Self { words }
    }

    /// A clean log covering every region of `mem`.
    pub fn for_memory<M: GuestMemory>(mem: &M) -> Self {
        let end = mem
            .physical_memory()
            .and_then(|m| {
                m.iter()
                    .map(|r| r.start_addr().0.saturating_add(r.len()))
                    .max()
            })
            .unwrap_or(0);
        Self::new(end)
    }

    /// Where the bitmap is in this process (VHOST_SET_LOG_BASE's argument).
    pub fn base(&self) -> u64 {
        self.words.as_ptr() as u64
    }

    /// The pages the log covers.
    pub fn pages(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// Marks `page` dirty (what the kernel does; for tests and fakes).
    pub fn mark(&self, page: u64) {
        if let Some(w) = usize::try_from(page / 64)
            .ok()
            .and_then(|i| self.words.get(i))
        {
            w.fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
    }

    /// Takes and clears the bits of `count` pages from `first`: bit `i` of
    /// the result (word `i / 64`) is page `first + i`. Pages beyond the
    /// log read clean.
    pub fn take(&self, first: u64, count: u64) -> Vec<u64> {
        let mut out = vec![0u64; count.div_ceil(64) as usize];
        let end = first.saturating_add(count).min(self.pages());
        let mut page = first;
        while page < end {
            let (word, bit) = ((page / 64) as usize, page % 64);
            // The bits of this word from `bit` up that are in the range.
            let n = (64 - bit).min(end - page);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            let taken = if mask == u64::MAX {
                self.words[word].swap(0, Ordering::AcqRel)
            } else {
                self.words[word].fetch_and(!mask, Ordering::AcqRel) & mask
            };
            if taken != 0 {
                let i = page - first;
                let bits = taken >> bit;
                let (o, s) = ((i / 64) as usize, i % 64);
                out[o] |= bits << s;
                if s != 0 && o + 1 < out.len() {
                    out[o + 1] |= bits >> (64 - s);
                }
            }
            page += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn pages_of(words: &[u64]) -> Vec<u64> {
        let mut v = Vec::new();
        for (i, w) in words.iter().enumerate() {
            for b in 0..64 {
                if w & 1 << b != 0 {
                    v.push(i as u64 * 64 + b);
                }
            }
        }
        v
    }

    #[test]
    fn the_log_covers_every_region_from_address_0() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x1_0000_0000), 0x20000),
        ])
        .unwrap();
        let log = DirtyLog::for_memory(&mem);
        assert!(log.pages() >= (0x1_0000_0000 + 0x20000) / LOG_PAGE_SIZE);
        assert!(log.pages() < (0x1_0000_0000 + 0x20000) / LOG_PAGE_SIZE + 64);
        // The base is the words' address: what the kernel's set_bit_to_user
        // writes is what take reads.
        let page = 0x1_0000_0000 / LOG_PAGE_SIZE + 3;
        // SAFETY: the byte is inside the log's words, which live as long as
        // `log`; an atomic byte or on it is what the kernel does.
        unsafe {
            let byte = (log.base() + page / 8) as *const std::sync::atomic::AtomicU8;
            (*byte).fetch_or(1 << (page % 8), Ordering::SeqCst);
        }
        assert_eq!(pages_of(&log.take(0x1_0000_0000 / LOG_PAGE_SIZE, 32)), [3]);
        assert_eq!(pages_of(&log.take(0, log.pages())), Vec::<u64>::new());
    }

    #[test]
    fn take_clears_only_the_range_it_reads() {
        let log = DirtyLog::new(1 << 30);
        for p in [0, 5, 63, 64, 100, 127, 128, 1000] {
            log.mark(p);
        }
        // An unaligned range across three words.
        assert_eq!(pages_of(&log.take(5, 124)), [0, 58, 59, 95, 122, 123]);
        // What was outside it stays.
        assert_eq!(pages_of(&log.take(0, 2000)), [0, 1000]);
        assert_eq!(pages_of(&log.take(0, 2000)), Vec::<u64>::new());
    }

    #[test]
    fn pages_beyond_the_log_read_clean() {
        let log = DirtyLog::new(64 * LOG_PAGE_SIZE);
        log.mark(63);
        log.mark(64);
        assert_eq!(pages_of(&log.take(60, 100)), [3]);
        assert_eq!(log.take(u64::MAX - 10, 5), vec![0]);
    }
}
