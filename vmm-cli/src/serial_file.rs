//! `--serial file:PATH`: the file guest output is appended to, opened
//! without following a symbolic link, and capped in size.
//!
//! A guest that prints for ever would otherwise fill the host's disk, so
//! the file grows to at most `maxsize` bytes (its length when opened
//! included; default [`DEFAULT_MAX_SIZE`]); past that, output is dropped,
//! with one warning. The last path component is opened with `O_NOFOLLOW`
//! unless `follow` is given: a symbolic link planted where the log goes
//! (`/tmp/console.log` -> a file of the user's) is refused, not written
//! through.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The default `maxsize`: 1 GiB. A Linux boot log is about 100 KiB and a
/// busy console rarely writes tens of MiB over a long run, so 1 GiB keeps
/// everything real (debug dumps included) while bounding what a runaway
/// guest can take from the host's disk (our UART is not throttled: a guest
/// writes MiB/s). Firecracker bounds its serial output too, by rate (an
/// optional token bucket on `serial_out_path`).
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

/// How `--serial file:` was spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialFile {
    /// Where the output goes (appended).
    pub path: PathBuf,
    /// The most the file may hold, in bytes; `None`: no limit (`maxsize=0`).
    pub max_size: Option<u64>,
    /// Follow a symbolic link as the last component (`follow`).
    pub follow: bool,
}

impl SerialFile {
    /// Opens the file for appending (created if missing; a FIFO waits for
    /// its reader) and caps what is written to it.
    pub fn open(&self) -> Result<CappedWriter<File>> {
        let path = &self.path;
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        if !self.follow {
            options.custom_flags(libc::O_NOFOLLOW);
        }
        let file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) && is_symlink(path) => bail!(
                "serial output file {} is a symbolic link: refused (add ,follow to \
                 --serial to follow it)",
                path.display()
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open serial output file {}", path.display()))
            }
        };
        // What is there already counts: the cap is on the file's size. A
        // FIFO or device has none.
        let already = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.len());
        Ok(CappedWriter::new(
            file,
            self.max_size,
            already,
            path.display().to_string(),
        ))
    }
}

fn is_symlink(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
}

/// A writer that passes on at most `limit` bytes in all (counting `already`
/// as written), then drops the rest and says so once.
#[derive(Debug)]
pub struct CappedWriter<W> {
    inner: W,
    limit: Option<u64>,
    written: u64,
    dropped: u64,
    name: String,
}

impl<W: Write> CappedWriter<W> {
    /// Caps `inner` at `limit` bytes (`None`: no cap), `already` of which
    /// are used; `name` is for the warning.
    pub fn new(inner: W, limit: Option<u64>, already: u64, name: String) -> Self {
        Self {
            inner,
            limit,
            written: already,
            dropped: 0,
            name,
        }
    }

    /// The writer capped.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The same cap (and what it counted so far) on another writer to the
    /// same file: its non-blocking twin.
    pub fn with_inner<V: Write>(self, inner: V) -> CappedWriter<V> {
        CappedWriter {
            inner,
            limit: self.limit,
            written: self.written,
            dropped: self.dropped,
            name: self.name,
        }
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self
            .limit
            .map_or(u64::MAX, |l| l.saturating_sub(self.written));
        if room == 0 {
            if self.dropped == 0 && !buf.is_empty() {
                log::warn!(
                    "serial output file {} reached its maxsize ({} bytes): further guest \
                     output is dropped",
                    self.name,
                    self.limit.unwrap_or(0)
                );
            }
            self.dropped = self.dropped.saturating_add(buf.len() as u64);
            // Dropped bytes count as written: the guest must not stall.
            return Ok(buf.len());
        }
        let take = usize::try_from(room).map_or(buf.len(), |room| buf.len().min(room));
        let n = self.inner.write(&buf[..take])?;
        self.written = self.written.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what reaches it, in writes of at most `chunk` bytes.
    #[derive(Default)]
    struct Counter {
        bytes: u64,
        chunk: usize,
    }

    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk.max(1));
            self.bytes += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn counter(chunk: usize) -> Counter {
        Counter { bytes: 0, chunk }
    }

    #[test]
    fn output_stops_at_the_cap_and_the_rest_is_dropped() {
        let mut w = CappedWriter::new(counter(7), Some(1000), 0, "t".into());
        let block = [b'x'; 300];
        for _ in 0..10 {
            // write_all retries partial writes, as the writer thread does.
            w.write_all(&block).unwrap();
        }
        assert_eq!(w.inner.bytes, 1000, "exactly the cap");
        assert_eq!(w.dropped, 2000);
    }

    #[test]
    fn what_the_file_holds_already_counts() {
        let mut w = CappedWriter::new(counter(4096), Some(100), 90, "t".into());
        w.write_all(&[0; 50]).unwrap();
        assert_eq!((w.inner.bytes, w.dropped), (10, 40));
        let mut full = CappedWriter::new(counter(4096), Some(100), 500, "t".into());
        full.write_all(&[0; 50]).unwrap();
        assert_eq!((full.inner.bytes, full.dropped), (0, 50));
    }

    #[test]
    fn no_cap_passes_everything() {
        let mut w = CappedWriter::new(counter(4096), None, u64::MAX - 10, "t".into());
        w.write_all(&[0; 100_000]).unwrap();
        assert_eq!((w.inner.bytes, w.dropped), (100_000, 0));
    }

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-serial-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlink_is_refused_unless_followed() {
        let dir = tmp("link");
        let target = dir.join("target");
        std::fs::write(&target, b"").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut spec = SerialFile {
            path: link.clone(),
            max_size: Some(16),
            follow: false,
        };
        let err = spec.open().unwrap_err().to_string();
        assert!(err.contains("is a symbolic link: refused"), "{err}");
        spec.follow = true;
        let mut w = spec.open().unwrap();
        w.write_all(b"0123456789abcdefXYZ").unwrap();
        drop(w);
        assert_eq!(std::fs::read(&target).unwrap(), b"0123456789abcdef");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cap_holds_across_runs_on_the_same_file() {
        let dir = tmp("append");
        let spec = SerialFile {
            path: dir.join("log"),
            max_size: Some(10),
            follow: false,
        };
        for _ in 0..3 {
            spec.open().unwrap().write_all(b"1234567").unwrap();
        }
        assert_eq!(std::fs::read(&spec.path).unwrap(), b"1234567123");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
