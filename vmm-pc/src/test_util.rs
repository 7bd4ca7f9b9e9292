//! Helpers shared by the table builders' tests: guest RAM and reading
//! little-endian fields back out of it.

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
