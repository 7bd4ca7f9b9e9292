//! A small writer of "newc" cpio archives (magic `070701`), the format the
//! Linux kernel unpacks as an initramfs.
//!
//! Every entry is a 110-byte ASCII header (the magic and thirteen 8-digit hex
//! fields), the NUL-terminated name padded so that header and name end on a
//! 4-byte boundary, then the data padded to 4 bytes. The archive ends with the
//! entry `TRAILER!!!`. Names are stored without a leading `/`; a parent folder
//! that was not added yet is added (mode 0755) before its first child, since
//! the kernel creates entries in archive order.

use std::collections::BTreeSet;

/// A path or entry that cannot go into the archive.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CpioError(String);

type Result<T> = std::result::Result<T, CpioError>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(CpioError(format!($($arg)*))) };
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { bail!($($arg)*); } };
}

/// The magic of a newc header (no checksum).
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";
/// The length of a header, before the name.
pub const HEADER_LEN: usize = 110;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds a newc archive in memory: add entries, then [`Writer::finish`].
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
    paths: BTreeSet<String>,
    dirs: BTreeSet<String>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Writer {
            buf: Vec::new(),
            next_ino: 1,
            paths: BTreeSet::new(),
            dirs: BTreeSet::new(),
        }
    }

    /// Adds the folder `path` with permission bits `mode` (its parents too).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = self.claim(path)?;
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    /// Adds the regular file `path` with `data` and permission bits `mode`.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let path = self.claim(path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// Adds the symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        ensure!(!target.is_empty(), "empty symlink target for {path}");
        let path = self.claim(path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds the character device `path` (`major`, `minor`) with permission
    /// bits `mode`.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        let path = self.claim(path)?;
        self.entry(&path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        // Cannot fail: the trailer has no data.
        let _ = self.raw_entry(TRAILER, 0, 1, 0, (0, 0), &[]);
        self.buf
    }

    /// Checks and normalises `path`, adds its missing parents, and records it.
    fn claim(&mut self, path: &str) -> Result<String> {
        let norm = normalize(path)?;
        if self.paths.contains(&norm) {
            bail!("{norm} added twice");
        }
        let mut parent = String::new();
        let parts: Vec<&str> = norm.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if !self.dirs.contains(&parent) {
                if self.paths.contains(&parent) {
                    bail!("{parent} is not a folder, cannot hold {norm}");
                }
                self.paths.insert(parent.clone());
                self.dirs.insert(parent.clone());
                self.entry(&parent.clone(), S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
        }
        self.paths.insert(norm.clone());
        Ok(norm)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(name, ino, nlink, mode, rdev, data)
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        nlink: u32,
        mode: u32,
        (rmajor, rminor): (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        let Ok(size) = u32::try_from(data.len()) else {
            bail!("{name} is too large ({} bytes)", data.len());
        };
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime: 0, so that archives are reproducible
            size, 0, // devmajor
            0, // devminor
            rmajor, rminor, namesize, 0, // check
        ];
        let header_start = self.buf.len();
        self.buf.extend_from_slice(MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        debug_assert_eq!(self.buf.len() - header_start, HEADER_LEN);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

/// `path` without leading or trailing `/`; empty, `.` and `..` parts refused.
fn normalize(path: &str) -> Result<String> {
    let trimmed = path.trim_matches('/');
    ensure!(!trimmed.is_empty(), "empty path {path:?}");
    for part in trimmed.split('/') {
        ensure!(
            !part.is_empty() && part != "." && part != "..",
            "bad path {path:?}"
        );
    }
    ensure!(trimmed != TRAILER, "reserved name {TRAILER}");
    ensure!(!trimmed.contains('\0'), "NUL in path {path:?}");
    Ok(trimmed.to_owned())
}

/// A reader of what [`Writer`] writes, for tests (it panics on archives
/// it does not like).
#[cfg(any(test, feature = "test-utils"))]
pub mod read {
    use super::{HEADER_LEN, MAGIC, TRAILER};

    /// One parsed entry.
    #[derive(Debug, Clone)]
    pub struct Entry {
        /// Where its header starts.
        pub offset: usize,
        /// Its name.
        pub name: String,
        /// Inode number.
        pub ino: u32,
        /// Type and permission bits.
        pub mode: u32,
        /// Link count.
        pub nlink: u32,
        /// Device numbers (major, minor).
        pub rdev: (u32, u32),
        /// Contents.
        pub data: Vec<u8>,
    }

    /// Parses `buf`, checking magic, alignment and the trailer; panics on
    /// any defect. The trailer is not returned.
    pub fn parse(buf: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos} not 4-aligned");
            assert!(pos + HEADER_LEN <= buf.len(), "truncated header at {pos}");
            assert_eq!(&buf[pos..pos + 6], MAGIC, "bad magic at {pos}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (ino, mode, nlink, size) = (field(0), field(1), field(4), field(6));
            let (rdev, namesize, check) = ((field(9), field(10)), field(11) as usize, field(12));
            assert_eq!(check, 0);
            let name_start = pos + HEADER_LEN;
            let name_bytes = &buf[name_start..name_start + namesize];
            assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = (name_start + namesize).next_multiple_of(4);
            assert!(buf[name_start + namesize..data_start]
                .iter()
                .all(|&b| b == 0));
            let data_end = data_start + size as usize;
            let data = buf[data_start..data_end].to_vec();
            let next = data_end.next_multiple_of(4);
            assert!(buf[data_end..next].iter().all(|&b| b == 0));
            if name == TRAILER {
                assert_eq!(next, buf.len(), "bytes after the trailer");
                assert_eq!((ino, mode, size), (0, 0, 0));
                return out;
            }
            out.push(Entry {
                offset: pos,
                name,
                ino,
                mode,
                nlink,
                rdev,
                data,
            });
            pos = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read::parse;
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.dir("/dev", 0o755).unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.char_dev("dev/null", 0o666, 1, 3).unwrap();
        w.file("/bin/busybox", b"\x7fELF fake", 0o755).unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.file("/init", b"#!/bin/sh\necho hi\n", 0o755).unwrap();
        w.file("/etc/deep/a", b"", 0o644).unwrap();
        w.finish()
    }

    #[test]
    fn round_trip_fields_and_order() {
        let buf = sample();
        let e = parse(&buf);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "dev/null",
                "bin",
                "bin/busybox",
                "bin/sh",
                "init",
                "etc",
                "etc/deep",
                "etc/deep/a"
            ]
        );
        assert_eq!(e[0].mode, 0o040_755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!((e[1].mode, e[1].rdev), (0o020_600, (5, 1)));
        assert_eq!((e[2].mode, e[2].rdev), (0o020_666, (1, 3)));
        assert_eq!(e[3].mode, 0o040_755, "implicit parent folder");
        assert_eq!(
            (e[4].mode, e[4].data.as_slice()),
            (0o100_755, &b"\x7fELF fake"[..])
        );
        assert_eq!(
            (e[5].mode, e[5].data.as_slice()),
            (0o120_777, &b"busybox"[..])
        );
        assert_eq!(e[6].data, b"#!/bin/sh\necho hi\n");
        assert!(e[9].data.is_empty());
        // Distinct inode numbers, never 0.
        let inos: BTreeSet<u32> = e.iter().map(|e| e.ino).collect();
        assert_eq!(inos.len(), e.len());
        assert!(!inos.contains(&0));
    }

    #[test]
    fn alignment_and_trailer() {
        let buf = sample();
        assert_eq!(buf.len() % 4, 0);
        assert!(parse(&buf).iter().all(|e| e.offset % 4 == 0));
        // Data of every length 0..=8 stays aligned (parse checks the padding).
        let mut w = Writer::new();
        for n in 0..=8 {
            w.file(&format!("f{n}"), &vec![b'x'; n], 0o644).unwrap();
        }
        let buf = w.finish();
        assert_eq!(parse(&buf).len(), 9);
        let tail = String::from_utf8_lossy(&buf[buf.len() - 16..]);
        assert!(tail.contains(TRAILER), "{tail:?}");
        // An empty archive is just the trailer: 110 + 11 bytes, padded to 124.
        let empty = Writer::new().finish();
        assert_eq!(empty.len(), 124);
        assert!(parse(&empty).is_empty());
    }

    #[test]
    fn refuses_bad_paths() {
        let mut w = Writer::new();
        assert!(w.file("", b"", 0o644).is_err());
        assert!(w.file("/", b"", 0o644).is_err());
        assert!(w.file("a/../b", b"", 0o644).is_err());
        assert!(w.file("a//b", b"", 0o644).is_err());
        assert!(w.file(TRAILER, b"", 0o644).is_err());
        w.file("x", b"", 0o644).unwrap();
        assert!(w.file("/x", b"", 0o644).is_err(), "duplicate");
        assert!(w.file("x/y", b"", 0o644).is_err(), "file as a folder");
        assert!(w.dir("d", 0o755).is_ok());
        assert!(w.file("d/y", b"", 0o644).is_ok());
    }

    /// Lists the archive with the system `cpio` tool, where it is installed.
    #[test]
    fn cpio_tool_lists_it() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let child = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipped: no `cpio` tool here (apt-get install cpio to run this check)");
            return;
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listed.lines().collect();
        assert_eq!(names.len(), 10, "{listed}");
        assert!(names.contains(&"bin/busybox") && names.contains(&"dev/console"));
    }
}
