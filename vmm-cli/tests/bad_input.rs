//! Bad input gets a one-line error, a non-zero status and no panic.

mod common;

use common::*;

#[test]
fn missing_kernel_file() {
    let o = run(&["--kernel", "/nonexistent/bzImage"]);
    assert_one_line_error(&o, "cannot open kernel /nonexistent/bzImage");
}

#[test]
fn no_kernel_flag() {
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--kernel"));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn zero_memory() {
    let dir = TempDir::new("mem0");
    let k = dir.file("k", b"whatever");
    let o = run_kernel(&k, &["--memory", "0"]);
    assert_one_line_error(&o, "memory");
}

#[test]
fn more_memory_than_the_host_has() {
    let dir = TempDir::new("memhuge");
    let k = dir.file("k", b"whatever");
    let o = run_kernel(&k, &["--memory", "64T"]);
    assert_one_line_error(&o, "memory");
}

#[test]
fn malformed_memory_size() {
    let o = run(&["--kernel", "k", "--memory", "lots"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a size"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn zero_vcpus() {
    let dir = TempDir::new("cpu0");
    let k = dir.file("k", b"whatever");
    let o = run_kernel(&k, &["--cpus", "0"]);
    assert_one_line_error(&o, "cannot run 0 vCPUs");
}

#[test]
fn more_vcpus_than_allowed() {
    let dir = TempDir::new("cpumany");
    let k = dir.file("k", b"whatever");
    let o = run_kernel(&k, &["--cpus", "100000"]);
    assert_one_line_error(&o, "cannot run 100000 vCPUs");
}

#[test]
fn empty_kernel_file() {
    if !kvm("empty_kernel_file") {
        return;
    }
    let dir = TempDir::new("empty");
    let k = dir.file("empty", b"");
    let o = run_kernel(&k, &[]);
    assert_one_line_error(&o, "empty");
}

#[test]
fn random_bytes_as_kernel() {
    if !kvm("random_bytes_as_kernel") {
        return;
    }
    let dir = TempDir::new("random");
    // A fixed xorshift stream: reproducible "random" bytes.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let k = dir.file("random", &bytes);
    let o = run_kernel(&k, &[]);
    assert_one_line_error(&o, "kernel");
}

#[test]
fn truncated_bzimage() {
    if !kvm("truncated_bzimage") {
        return;
    }
    let dir = TempDir::new("trunc");
    // A bzImage setup header that promises 30 setup sectors and a
    // protected-mode kernel, in a file that ends right after the header.
    let mut image = vec![0u8; 0x270];
    image[0x1f1] = 30; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH
    image[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // XLF_KERNEL_64 | above 4G
    let k = dir.file("bzImage", &image);
    let o = run_kernel(&k, &[]);
    assert_one_line_error(&o, "kernel");
}

#[test]
fn unreadable_initrd() {
    if !kvm("unreadable_initrd") {
        return;
    }
    let dir = TempDir::new("initrd");
    let k = dir.file("hello.elf", &vmm_pc::test_guests::hello_reset("x"));
    // A directory opens but cannot be read as a file.
    let o = run_kernel(&k, &["--initrd", dir.0.to_str().unwrap()]);
    assert_one_line_error(&o, "initrd");
    let o = run_kernel(&k, &["--initrd", "/nonexistent/initrd"]);
    assert_one_line_error(&o, "cannot open initrd /nonexistent/initrd");
}

#[test]
fn bad_serial_and_unwritable_serial_file() {
    let o = run(&["--kernel", "k", "--serial", "tcp:1234"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("expected stdio, file:PATH or none"));
    let dir = TempDir::new("serial");
    let k = dir.file("k", b"x");
    let o = run_kernel(&k, &["--serial", "file:/nonexistent/dir/log"]);
    assert_one_line_error(&o, "cannot open serial output file");
}

#[test]
fn unknown_pit_choice() {
    let o = run(&["--kernel", "k", "--pit", "hpet"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--pit") && err.contains("userspace"), "{err}");
    assert!(!err.contains("panicked"));
}
