//! The host's cores, shared out among nested runs.
//!
//! Under TCG each L1 CPU is a host thread that keeps a core busy while it
//! runs, so nested runs side by side are only worth it while their L1s
//! together have no more CPUs than the host has cores: two one-CPU L1s on
//! a two-core host, not two two-CPU ones, which would starve each other
//! (slower boots, and more of TCG's faults, docs/nested/README.md). A run
//! takes as many cores as its L1 has CPUs ([`Cores::take`]) and gives them
//! back when its [`Taken`] is dropped; one that needs more than the host
//! has takes them all.

use std::sync::{Condvar, Mutex, MutexGuard};

/// A pool of cores.
#[derive(Debug)]
pub struct Cores {
    total: u32,
    free: Mutex<u32>,
    changed: Condvar,
}

/// Cores taken from a [`Cores`], returned on drop.
#[derive(Debug)]
pub struct Taken<'a> {
    pool: &'a Cores,
    n: u32,
}

impl Cores {
    /// A pool of `total` cores (at least one).
    pub const fn new(total: u32) -> Self {
        let total = if total == 0 { 1 } else { total };
        Self {
            total,
            free: Mutex::new(total),
            changed: Condvar::new(),
        }
    }

    /// The host's cores (`available_parallelism`, one if unknown).
    pub fn host() -> u32 {
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    }

    fn lock(&self) -> MutexGuard<'_, u32> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `n` cores are free (all of them when `n` is more than
    /// the pool has) and takes them.
    pub fn take(&self, n: u32) -> Taken<'_> {
        let n = n.clamp(1, self.total);
        let mut free = self.lock();
        while *free < n {
            free = self.changed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= n;
        Taken { pool: self, n }
    }

    /// The cores free now.
    pub fn free(&self) -> u32 {
        *self.lock()
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *self.pool.lock() += self.n;
        self.pool.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn takes_and_gives_back() {
        let c = Cores::new(2);
        {
            let _a = c.take(1);
            let _b = c.take(1);
            assert_eq!(c.free(), 0);
        }
        assert_eq!(c.free(), 2);
        // More than the pool: all of it; none: one.
        let all = c.take(8);
        assert_eq!(c.free(), 0);
        drop(all);
        let _one = c.take(0);
        assert_eq!(c.free(), 1);
        assert_eq!(Cores::new(0).take(1).n, 1);
    }

    /// Two one-core runs side by side; a two-core run alone.
    #[test]
    fn never_more_in_use_than_the_pool() {
        let pool = Arc::new(Cores::new(2));
        let in_use = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = [1, 2, 1, 1, 2, 1]
            .into_iter()
            .map(|n| {
                let (pool, in_use, peak) = (pool.clone(), in_use.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _t = pool.take(n);
                    let now = in_use.fetch_add(n, Ordering::SeqCst) + n;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    in_use.fetch_sub(n, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!(pool.free(), 2);
    }
}
