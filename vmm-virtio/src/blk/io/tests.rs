//! The image against real temporary files: buffered and `O_DIRECT` paths,
//! the bounce buffer and its read-modify-write, short files, holes,
//! fallbacks, locks, and errors on demand.

use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::blk::Operation;
use crate::testing::memory;

/// A temporary image of `sectors` sectors holding a pattern.
fn image(sectors: u64) -> TempFile {
    let t = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    t.as_file().write_all_at(&bytes, 0).unwrap();
    t
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

fn buffers(segments: &[(u64, u32)]) -> Buffers {
    let mut b = Buffers::default();
    for &(addr, len) in segments {
        b.push(GuestAddress(addr), len);
    }
    b
}

fn read_back(t: &TempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    t.as_file().read_exact_at(&mut v, offset).unwrap();
    v
}

#[test]
fn a_migration_destination_locks_once_the_source_lets_go() {
    let t = image(8);
    let source = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    let dest = Disk::open_with(t.as_path(), false, CacheMode::Writeback, false).unwrap();
    assert!(matches!(dest.lock(t.as_path()), Err(BlockError::Locked(_))));
    source.unlock();
    dest.lock(t.as_path()).unwrap();
    assert!(matches!(
        Disk::open(t.as_path(), true, CacheMode::Writeback),
        Err(BlockError::Locked(_))
    ));
}

#[test]
fn open_checks_the_file() {
    let t = image(8);
    t.as_file().write_all_at(&[1; 100], 4096).unwrap();
    let d = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    assert_eq!(d.capacity(), 8, "the 100-byte tail is not a sector");
    // Exclusive: a second writer (or reader) is refused.
    assert!(matches!(
        Disk::open(t.as_path(), false, CacheMode::Writeback),
        Err(BlockError::Locked(_))
    ));
    assert!(matches!(
        Disk::open(t.as_path(), true, CacheMode::Writeback),
        Err(BlockError::Locked(_))
    ));
    drop(d);
    // Shared: readers together.
    let r1 = Disk::open(t.as_path(), true, CacheMode::Writeback).unwrap();
    let _r2 = Disk::open(t.as_path(), true, CacheMode::Writeback).unwrap();
    assert!(r1.read_only());
    let dir = std::env::temp_dir();
    assert!(matches!(
        Disk::open(&dir, true, CacheMode::Writeback),
        Err(BlockError::NotADisk(_)) | Err(BlockError::Open { .. })
    ));
    assert!(matches!(
        Disk::open(Path::new("/nonexistent/image"), true, CacheMode::Writeback),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn buffered_reads_and_writes_scatter_and_gather() {
    let mem = memory(0x10_0000);
    let t = image(16);
    let d = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    // 1536 bytes at sector 2 into three odd places.
    let b = buffers(&[(0x1003, 100), (0x5000, 1000), (0x9001, 436)]);
    d.read(&*mem, 1024, &b).unwrap();
    let mut got = vec![0; 1536];
    b.read_into(&*mem, 0, &mut got).unwrap();
    assert_eq!(got, pattern(1024, 1536));
    // Write it back one sector further.
    d.write(&*mem, 1536, &b).unwrap();
    assert_eq!(read_back(&t, 1536, 1536), pattern(1024, 1536));
    assert_eq!(read_back(&t, 0, 1536), pattern(0, 1536), "before untouched");
    d.flush().unwrap();
}

#[test]
fn many_segments_go_in_several_calls() {
    let mem = memory(0x20_0000);
    let t = image(8);
    let d = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    // 4096 one-byte segments: more than IOV_MAX.
    let segs: Vec<(u64, u32)> = (0..4096).map(|i| (0x1000 + 2 * i, 1)).collect();
    let b = buffers(&segs);
    d.read(&*mem, 0, &b).unwrap();
    let mut got = vec![0; 4096];
    b.read_into(&*mem, 0, &mut got).unwrap();
    assert_eq!(got, pattern(0, 4096));
}

#[test]
fn reads_past_a_shrunken_file_are_zeroes() {
    let mem = memory(0x10_0000);
    let t = image(8);
    let d = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    t.as_file().set_len(1024 + 100).unwrap();
    mem.write_slice(&[0xaa; 2048], GuestAddress(0x1000))
        .unwrap();
    let b = buffers(&[(0x1000, 2048)]);
    d.read(&*mem, 0, &b).unwrap();
    let mut got = vec![0; 2048];
    b.read_into(&*mem, 0, &mut got).unwrap();
    assert_eq!(got[..1124], pattern(0, 1124)[..]);
    assert!(got[1124..].iter().all(|&x| x == 0));
}

#[test]
fn direct_io_takes_aligned_buffers_and_bounces_the_rest() {
    let mem = memory(0x10_0000);
    let t = image(64);
    let d = Disk::open(t.as_path(), false, CacheMode::None).unwrap();
    assert!(matches!(d.alignment(), 512 | 4096));
    // Aligned (guest memory is page-aligned on the host).
    let aligned = buffers(&[(0x4000, 4096)]);
    d.read(&*mem, 8192, &aligned).unwrap();
    let mut got = vec![0; 4096];
    aligned.read_into(&*mem, 0, &mut got).unwrap();
    assert_eq!(got, pattern(8192, 4096));
    // Not aligned: bounced.
    let odd = buffers(&[(0x8001, 700), (0xa003, 324)]);
    d.read(&*mem, 512, &odd).unwrap();
    let mut got = vec![0; 1024];
    odd.read_into(&*mem, 0, &mut got).unwrap();
    assert_eq!(got, pattern(512, 1024));
    d.write(&*mem, 3 * 512, &odd).unwrap();
    assert_eq!(read_back(&t, 1536, 1024), pattern(512, 1024));
    d.write(&*mem, 16384, &aligned).unwrap();
    assert_eq!(read_back(&t, 16384, 4096), pattern(8192, 4096));
}

#[test]
fn direct_io_on_4k_blocks_reads_before_partial_writes() {
    let mem = memory(0x20_0000);
    let t = image(64);
    let mut d = Disk::open(t.as_path(), false, CacheMode::None).unwrap();
    d.force_alignment(4096);
    mem.write_slice(&[0x5a; 1024], GuestAddress(0x2000))
        .unwrap();
    let b = buffers(&[(0x2000, 1024)]);
    // Sectors 1-2 of the first 4 KiB block: the rest of it must survive.
    d.write(&*mem, 512, &b).unwrap();
    let back = read_back(&t, 0, 8192);
    assert_eq!(back[..512], pattern(0, 512)[..]);
    assert!(back[512..1536].iter().all(|&x| x == 0x5a));
    assert_eq!(back[1536..], pattern(1536, 8192 - 1536)[..]);
    // Reading sectors 1-2 back through the 4 KiB bounce.
    mem.write_slice(&[0; 1024], GuestAddress(0x2000)).unwrap();
    d.read(&*mem, 512, &b).unwrap();
    let mut got = vec![0; 1024];
    b.read_into(&*mem, 0, &mut got).unwrap();
    assert!(got.iter().all(|&x| x == 0x5a));
    // Large and unaligned: several bounce chunks.
    let big = buffers(&[(0x1_0001, (BOUNCE_CHUNK + 4096) as u32)]);
    t.as_file().set_len(4 << 20).unwrap();
    d.read(&*mem, 4096, &big).unwrap();
    let mut got = vec![0; 4096];
    big.read_into(&*mem, 0, &mut got).unwrap();
    assert_eq!(got, pattern(4096, 4096));
    d.write(&*mem, 8192, &big).unwrap();
    assert_eq!(read_back(&t, 8192, 28672), pattern(4096, 28672));
    assert!(read_back(&t, 8192 + BOUNCE_CHUNK as u64, 4096)
        .iter()
        .all(|&x| x == 0));
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    let mem = memory(0x10_0000);
    let t = image(64);
    let d = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    d.write_zeroes(4096, 8192, false).unwrap();
    assert!(read_back(&t, 4096, 8192).iter().all(|&x| x == 0));
    d.write_zeroes(16384, 4096, true).unwrap();
    assert!(read_back(&t, 16384, 4096).iter().all(|&x| x == 0));
    d.discard(20480, 4096).unwrap();
    // Empty ranges are nothing to do (fallocate itself would say EINVAL).
    d.discard(0, 0).unwrap();
    d.write_zeroes(0, 0, false).unwrap();
    d.write_zeroes(0, 0, true).unwrap();
    assert_eq!(read_back(&t, 0, 4096), pattern(0, 4096), "around stays");
    assert_eq!(t.as_file().metadata().unwrap().len(), 64 * 512, "size kept");
    let _ = mem;
}

#[test]
fn without_fallocate_discards_do_nothing_and_zeroes_are_written() {
    for cache in [CacheMode::Writeback, CacheMode::None] {
        let t = image(64);
        let mut d = Disk::open(t.as_path(), false, cache).unwrap();
        d.forget_fallocate();
        d.discard(0, 4096).unwrap();
        assert_eq!(read_back(&t, 0, 4096), pattern(0, 4096));
        d.write_zeroes(512, 1024, true).unwrap();
        let back = read_back(&t, 0, 4096);
        assert!(back[512..1536].iter().all(|&x| x == 0));
        assert_eq!(back[1536..], pattern(1536, 4096 - 1536)[..]);
        if cache == CacheMode::None {
            d.force_alignment(4096);
            d.write_zeroes(2048, 512, false).unwrap();
            let back = read_back(&t, 0, 4096);
            assert!(back[2048..2560].iter().all(|&x| x == 0));
            assert_eq!(back[2560..], pattern(2560, 4096 - 2560)[..]);
        }
    }
}

#[test]
fn injected_faults_come_out_as_host_errors() {
    let mem = memory(0x10_0000);
    let t = image(8);
    let d = Disk::open(t.as_path(), false, CacheMode::Writeback).unwrap();
    let b = buffers(&[(0x1000, 512)]);
    d.inject_fault(Operation::Write, libc::ENOSPC);
    d.inject_fault(Operation::Flush, libc::EIO);
    d.read(&*mem, 0, &b).unwrap();
    assert_eq!(
        d.write(&*mem, 0, &b).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    d.write(&*mem, 0, &b).unwrap();
    assert_eq!(d.flush().unwrap_err().raw_os_error(), Some(libc::EIO));
    d.flush().unwrap();
}

#[test]
fn writes_to_a_file_opened_read_only_fail_on_the_host() {
    let mem = memory(0x10_0000);
    let t = image(8);
    let d = Disk::open(t.as_path(), true, CacheMode::Writeback).unwrap();
    let b = buffers(&[(0x1000, 512)]);
    assert_eq!(
        d.write(&*mem, 0, &b).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
}
