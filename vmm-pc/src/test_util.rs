//! Helpers shared by the unit tests: guest RAM and reading little-endian
//! fields back out of it (the table builders'), a scratch folder (the
//! file openers').

use vm_memory::{Bytes, GuestAddress};
use vmm_core::ram::GuestRam;

/// 2 MiB of RAM from address 0: low memory, the EBDA and the BIOS area.
pub fn low_memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

/// `len` bytes of guest memory at `addr`.
pub fn read(mem: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

/// The little-endian u16 at `offset`.
pub fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
}

/// The little-endian u32 at `offset`.
pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// The little-endian u64 at `offset`.
pub fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// The byte sum (a table with a correct checksum sums to 0).
pub fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// A scratch folder of this process and thread, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new, empty one; `tag` tells the tests' apart.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vmm-pc-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes a FIFO at `path` (mode 0600).
pub fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}
