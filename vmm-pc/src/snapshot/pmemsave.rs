//! QMP `pmemsave`: a range of guest physical memory into a file, as
//! QEMU's. Guest RAM is copied as it is; addresses outside RAM (the
//! PCI hole, MMIO) read as zeroes, and no device sees an access. A range
//! past the end of the machine's address space (the top of its RAM) is
//! refused with QEMU's words for a bad range, so that a client cannot
//! keep the main loop writing zeroes for ever.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_core::ram::GuestRam;

/// The bytes written per read and write.
const CHUNK: u64 = 1 << 20;

/// Why a dump failed, in QEMU's words.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    /// The range overflows or goes past the top of RAM.
    #[error("Invalid addr 0x{addr:016x}/size {size} specified")]
    Range {
        /// The first address asked.
        addr: u64,
        /// The length asked.
        size: u64,
    },
    /// The file could not be written.
    #[error("writing memory to '{0}' failed")]
    Write(String),
}

/// The end of the guest's physical address space that holds RAM.
fn top(mem: &GuestRam) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().0.saturating_add(r.len()))
        .max()
        .unwrap_or(0)
}

/// The end of `size` bytes from `addr`, if they are inside the machine's
/// address space (before a file is made for them).
pub fn check_range(mem: &GuestRam, addr: u64, size: u64) -> Result<u64, DumpError> {
    addr.checked_add(size)
        .filter(|&end| end <= top(mem))
        .ok_or(DumpError::Range { addr, size })
}

/// Writes `size` bytes of guest physical memory from `addr` to `out`
/// (`name` is the file's, for the error).
pub fn dump<W: Write>(
    mem: &GuestRam,
    addr: u64,
    size: u64,
    out: &mut W,
    name: &str,
) -> Result<(), DumpError> {
    let end = check_range(mem, addr, size)?;
    let mut buf = vec![0u8; CHUNK.min(size) as usize];
    let mut at = addr;
    while at < end {
        let n = (end - at).min(CHUNK) as usize;
        let chunk = &mut buf[..n];
        fill(mem, at, chunk);
        out.write_all(chunk)
            .map_err(|_| DumpError::Write(name.to_owned()))?;
        at += n as u64;
    }
    out.flush().map_err(|_| DumpError::Write(name.to_owned()))
}

/// `buf` from guest address `at`: RAM where there is RAM, zeroes between.
fn fill(mem: &GuestRam, at: u64, buf: &mut [u8]) {
    let mut done = 0usize;
    while done < buf.len() {
        let here = at + done as u64;
        let rest = &mut buf[done..];
        match mem.find_region(GuestAddress(here)) {
            Some(r) => {
                let in_region = r.start_addr().0 + r.len() - here;
                let n = rest.len().min(in_region as usize);
                if mem.read_slice(&mut rest[..n], GuestAddress(here)).is_err() {
                    rest[..n].fill(0);
                }
                done += n;
            }
            None => {
                // Zeroes up to the next region (or the end of `buf`).
                let next = mem
                    .iter()
                    .map(|r| r.start_addr().0)
                    .filter(|&s| s > here)
                    .min()
                    .unwrap_or(u64::MAX);
                let n = rest
                    .len()
                    .min((next - here).min(usize::MAX as u64) as usize);
                rest[..n].fill(0);
                done += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestRam {
        let mem =
            GuestRam::from_ranges(&[(GuestAddress(0), 0x3000), (GuestAddress(0x10000), 0x2000)])
                .unwrap();
        mem.write_slice(&[0xaa; 0x3000], GuestAddress(0)).unwrap();
        mem.write_slice(&[0xbb; 0x2000], GuestAddress(0x10000))
            .unwrap();
        mem
    }

    #[test]
    fn ram_is_copied_and_the_gap_reads_zeroes() {
        let mem = memory();
        let mut out = Vec::new();
        dump(&mem, 0x2ff0, 0xd020, &mut out, "f").unwrap();
        assert_eq!(out.len(), 0xd020);
        assert!(out[..0x10].iter().all(|&b| b == 0xaa));
        assert!(out[0x10..0xd010].iter().all(|&b| b == 0));
        assert!(out[0xd010..].iter().all(|&b| b == 0xbb));
        // Nothing asked, nothing written.
        let mut out = Vec::new();
        dump(&mem, 0x100, 0, &mut out, "f").unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_range_past_ram_or_overflowing_is_refused() {
        let mem = memory();
        let mut out = Vec::new();
        assert_eq!(
            dump(&mem, 0x11000, 0x1001, &mut out, "f")
                .unwrap_err()
                .to_string(),
            "Invalid addr 0x0000000000011000/size 4097 specified"
        );
        assert!(matches!(
            dump(&mem, u64::MAX, 2, &mut out, "f"),
            Err(DumpError::Range { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn a_write_error_names_the_file() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert_eq!(
            dump(&memory(), 0, 16, &mut Full, "/tmp/x")
                .unwrap_err()
                .to_string(),
            "writing memory to '/tmp/x' failed"
        );
    }
}
