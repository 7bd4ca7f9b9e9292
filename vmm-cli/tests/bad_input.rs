//! Bad input gets a one-line error, a non-zero status and no panic.

mod common;

use std::time::Duration;

use common::*;

/// The hang check for runs that should end at once: killed and failed past it.
const QUICK: Duration = Duration::from_secs(10);

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

/// The vCPU threads start before the kernel is loaded, the boot vCPU's
/// set-up waiting for its entry point: a kernel the loader then refuses
/// ends that wait, so the VMM ends at once (a thread left waiting would
/// hold its exit for the 10 s the vCPUs' join allows).
#[test]
fn a_kernel_refused_after_the_vcpus_started_ends_the_vmm_at_once() {
    if !kvm("kernel_refused_after_vcpus") {
        return;
    }
    let dir = TempDir::new("refused-late");
    let k = dir.file("k", &[0x5a; 4096]);
    for cpus in ["1", "4"] {
        let child = vmm()
            .args(["--kernel", k.to_str().unwrap(), "--cpus", cpus])
            .spawn()
            .unwrap();
        let o = wait_within(child, Duration::from_secs(5));
        assert_one_line_error(&o, "neither a bzImage nor an ELF file");
    }
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
    assert_one_line_error(
        &o,
        "bzImage truncated: the file is 624 bytes, shorter than its 15872 bytes of setup code",
    );
}

/// A bzImage header (protocol 2.15, 64-bit entry) with `setup_sects` and
/// `syssize` as given, then `payload` bytes after 4 sectors of setup code.
fn bzimage(setup_sects: u8, syssize: u32, payload: usize) -> Vec<u8> {
    let mut image = vec![0u8; 5 * 512];
    image[0x1f1] = setup_sects;
    image[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // XLF_KERNEL_64 | above 4G
    image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
                                                                 // ud2 throughout: loaded and entered, it triple-faults (no IDT), which
                                                                 // the VMM takes for a guest reboot and exits with 0.
    let ud2 = [0x0f, 0x0b].into_iter().cycle().take(payload);
    image.extend(ud2);
    image
}

/// Issue 15: the first 64 KiB of a 3 MB kernel used to load, and the guest
/// triple-faulted with status 0.
#[test]
fn bzimage_cut_short_of_its_payload() {
    if !kvm("bzimage_cut_short_of_its_payload") {
        return;
    }
    let dir = TempDir::new("cut");
    let payload = 3 << 20;
    let whole = bzimage(4, payload / 16, payload as usize);
    let k = dir.file("bzImage", &whole[..64 << 10]);
    let o = run_kernel(&k, &["--serial", "none"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_one_line_error(
        &o,
        "bzImage truncated: header says 3145728 bytes of payload after 2560 bytes of setup code \
         (setup_sects 4, syssize 196608), the file has 62976",
    );
}

/// Issue 15: setup_sects=255 in a kernel of ~40 setup sectors loaded the
/// payload from the wrong offset and ended in a KVM internal error.
#[test]
fn bzimage_with_setup_sects_255() {
    if !kvm("bzimage_with_setup_sects_255") {
        return;
    }
    let dir = TempDir::new("sects");
    // 4 sectors of setup and 1 MiB of payload, as syssize says; but 255
    // sectors put the payload's start 128 KiB in.
    let k = dir.file("bzImage", &bzimage(255, 0x10000, 1 << 20));
    let o = run_kernel(&k, &["--serial", "none"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_one_line_error(
        &o,
        "bzImage truncated: header says 1048576 bytes of payload after 131072 bytes of setup code \
         (setup_sects 255, syssize 65536), the file has 920064",
    );
}

/// A truncated ELF (its segment past the end of the file) is refused.
#[test]
fn elf_cut_short_of_its_segment() {
    if !kvm("elf_cut_short_of_its_segment") {
        return;
    }
    let dir = TempDir::new("elfcut");
    let elf = vmm_pc::test_guests::hello_reset("x");
    let k = dir.file("hello.elf", &elf[..elf.len() - 1]);
    let o = run_kernel(&k, &["--serial", "none"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_one_line_error(&o, "ELF truncated: segment");
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
    assert!(stderr(&o).contains("expected stdio, file:PATH"));
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

/// Issue 15: `open` of a FIFO waits for a writer, so a FIFO as --kernel or
/// --initrd hung the VMM for ever (and, the shutdown signals being blocked
/// for the main loop, SIGTERM and Ctrl-C did nothing). Both are refused.
#[test]
fn a_fifo_as_kernel_or_initrd_is_refused() {
    let dir = TempDir::new("fifo");
    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    let o = wait_within(vmm().args(["--kernel", f]).spawn().unwrap(), QUICK);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_one_line_error(&o, &format!("kernel {f} is not a regular file (a FIFO)"));

    let k = dir.file("k", b"kernel");
    let args = ["--kernel", k.to_str().unwrap(), "--initrd", f];
    let o = wait_within(vmm().args(args).spawn().unwrap(), QUICK);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_one_line_error(&o, &format!("initrd {f} is not a regular file (a FIFO)"));
}

/// Issue 15: a signal ends the VMM at any phase, not only in the main loop.
/// The slow phase here is the serial output's open: a FIFO as
/// `--serial file:` waits for its reader (as QEMU's `file:` does), and
/// nobody reads this one. Before, SIGTERM stayed pending for a main loop
/// that never came; now the wait ends on it, as the main loop does: status
/// 0 and "terminating on signal SIGTERM". (Kernel and initrd can no longer
/// block: only regular files are taken, and KVM and memory set-up finish in
/// well under a second even for 20 GiB, so this FIFO is the slow phase a
/// test can make.)
#[test]
fn sigterm_ends_the_wait_for_a_serial_fifo_reader() {
    let dir = TempDir::new("sigfifo");
    let fifo = dir.0.join("console");
    mkfifo(&fifo);
    let k = dir.file("k", b"kernel");
    let serial = format!("file:{}", fifo.display());
    let child = vmm()
        .args(["--kernel", k.to_str().unwrap(), "--serial", &serial])
        .args(["--log-level", "info"])
        .spawn()
        .unwrap();
    // Give it time to reach the open (a signal sent earlier stays pending
    // and ends the same wait at once, so the outcome is the same).
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sends SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = wait_within(child, QUICK);
    let err = stderr(&o);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(err.contains("terminating on signal SIGTERM"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Issue 15: `--serial file:` wrote through a symbolic link. Now the last
/// component is opened with O_NOFOLLOW: refused, the target untouched;
/// `follow` writes through it.
#[test]
fn a_symlink_as_serial_file_is_refused() {
    let dir = TempDir::new("seriallink");
    let target = dir.file("precious", b"keep me\n");
    let link = dir.0.join("console.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let k = dir.file("k", b"kernel");
    let serial = format!("file:{}", link.display());
    let o = run_kernel(&k, &["--serial", &serial]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_one_line_error(
        &o,
        &format!(
            "serial output file {} is a symbolic link: refused (add ,follow to --serial to \
             follow it)",
            link.display()
        ),
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me\n");
    // A dangling link is not created through either.
    std::fs::remove_file(&target).unwrap();
    let o = run_kernel(&k, &["--serial", &serial]);
    assert_one_line_error(&o, "is a symbolic link: refused");
    assert!(!target.exists());
}

/// How a bad command line must fail.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// clap's usage error: status 2, "error: ..." first.
    Usage,
    /// Ours: status 1, one line "vmm: ...".
    Vmm,
}

/// Bad command lines, each refused: the expected words, clap's or ours,
/// status != 0, no panic, and within [`QUICK`] (a hang check: the process
/// is killed and the test fails past it). `K` stands for a junk kernel
/// file, `ELF` for a good one, `DIR` for a directory, `FIFO` for a FIFO,
/// `LINK` for a symbolic link to a file, `FILE` for an existing file.
#[test]
fn bad_command_lines_are_refused() {
    use Refusal::{Usage, Vmm};
    #[rustfmt::skip]
    let table: &[(&[&str], Refusal, &str, bool)] = &[
        // (arguments, how, expected text, needs KVM)
        (&[], Usage, "--kernel <PATH>", false),
        (&["--kernel"], Usage, "a value is required for '--kernel <PATH>'", false),
        (&["--kernel", "K", "--kernel", "K"], Usage, "cannot be used multiple times", false),
        (&["--kernel", "K", "extra"], Usage, "unexpected argument 'extra'", false),
        (&["--kernel", "K", "--frobnicate"], Usage, "unexpected argument '--frobnicate'", false),
        (&["--kernel", "K", "--memory", "lots"], Usage, "'lots' is not a size", false),
        (&["--kernel", "K", "--memory", "12X"], Usage, "'12X' is not a size", false),
        (&["--kernel", "K", "--memory=-1G"], Usage, "'-1G' is not a size", false),
        (&["--kernel", "K", "--memory", "99999999999T"], Usage, "is too large", false),
        (&["--kernel", "K", "--cpus", "two"], Usage, "invalid value 'two' for '--cpus <N>'", false),
        (&["--kernel", "K", "--cpus=-1"], Usage, "invalid value '-1' for '--cpus <N>'", false),
        (&["--kernel", "K", "--cpus", "4294967296"], Usage, "invalid value '4294967296'", false),
        (&["--kernel", "K", "--serial", "tcp:1234"], Usage, "expected stdio, file:PATH", false),
        (&["--kernel", "K", "--serial", "file:"], Usage, "file: needs a PATH", false),
        (&["--kernel", "K", "--serial", "file:/tmp/x,maxsize=lots"], Usage, "'lots' is not a size", false),
        (&["--kernel", "K", "--serial", "file:/tmp/x,rotate"], Usage, "'rotate': unknown file: option", false),
        (&["--kernel", "K", "--serial", "file:/tmp/x,follow=perhaps"], Usage, "expected on or off", false),
        (&["--kernel", "K", "--pit", "hpet"], Usage, "invalid value 'hpet' for '--pit <WHICH>'", false),
        (&["--kernel", "K", "--irqchip", "bogus"], Usage, "invalid value 'bogus' for '--irqchip <WHERE>'", false),
        (&["--kernel", "K", "--pit", "kvm", "--irqchip", "split"], Vmm, "--pit kvm needs --irqchip kernel", false),
        (&["--kernel", "K", "--reboot", "maybe"], Usage, "invalid value 'maybe' for '--reboot <ACTION>'", false),
        (&["--kernel", "K", "--log-level", "loud"], Usage, "invalid value 'loud' for '--log-level <LEVEL>'", false),
        (&["--kernel", "K", "--qmp"], Usage, "a value is required for '--qmp <PATH>'", false),
        // --gdb on a terminal (QEMU's -gdb /dev/ttyS0): only /dev/ paths,
        // no options, and only a terminal.
        (&["--kernel", "K", "--gdb", "/tmp/gdb.sock"], Usage, "expected tcp:HOST:PORT, unix:PATH or a /dev/ terminal", false),
        (&["--kernel", "K", "--gdb", "/dev/"], Usage, "a device path needs a name after /dev/", false),
        (&["--kernel", "K", "--gdb", "/dev/ttyS1,baud=9600"], Usage, "options after the device are not supported", false),
        (&["--kernel", "K", "--gdb", "/dev/nonexistent-tty"], Vmm, "cannot listen for gdb on /dev/nonexistent-tty: No such file or directory", false),
        (&["--kernel", "K", "--gdb", "/dev/null"], Vmm, "cannot listen for gdb on /dev/null: not a terminal", false),
        (&["--kernel", "/nonexistent/bzImage"], Vmm, "cannot open kernel /nonexistent/bzImage", false),
        (&["--kernel", "DIR"], Vmm, "is not a regular file (a directory)", false),
        (&["--kernel", "FIFO"], Vmm, "is not a regular file (a FIFO)", false),
        (&["--kernel", "/dev/zero"], Vmm, "kernel /dev/zero is not a regular file (a character device)", false),
        (&["--kernel", "K", "--initrd", "/nonexistent/initrd"], Vmm, "cannot open initrd /nonexistent/initrd", false),
        (&["--kernel", "K", "--initrd", "DIR"], Vmm, "is not a regular file (a directory)", false),
        (&["--kernel", "K", "--memory", "0"], Vmm, "memory", false),
        (&["--kernel", "K", "--memory", "64T"], Vmm, "memory", false),
        (&["--kernel", "K", "--cpus", "0"], Vmm, "cannot run 0 vCPUs", false),
        (&["--kernel", "K", "--cpus", "100000"], Vmm, "cannot run 100000 vCPUs", false),
        (&["--kernel", "K", "--serial", "file:/nonexistent/dir/log"], Vmm, "cannot open serial output file", false),
        (&["--kernel", "K", "--serial", "file:DIR"], Vmm, "cannot open serial output file", false),
        (&["--kernel", "K", "--serial", "file:LINK"], Vmm, "is a symbolic link: refused", false),
        (&["--kernel", "K", "--serial", "none", "--paused"], Vmm, "--paused needs --qmp or --serial stdio", false),
        (&["--kernel", "EMPTY"], Vmm, "the kernel image is empty", true),
        (&["--kernel", "K"], Vmm, "neither a bzImage nor an ELF file", true),
        (&["--kernel", "ELF", "--initrd", "EMPTY"], Vmm, "the initrd is empty", true),
        (&["--kernel", "ELF", "--append", "caf\u{e9}"], Vmm, "invalid kernel command line", true),
        (&["--kernel", "ELF", "--append", "LONG"], Vmm, "more than 2048", true),
        (&["--kernel", "ELF", "--serial", "none", "--qmp", "FILE"], Vmm, "the path exists", true),
        (&["--kernel", "ELF", "--serial", "none", "--qmp", "/nonexistent/dir/qmp"], Vmm, "cannot create the QMP socket", true),
        // Disks (--drive, --device), refused before anything is built.
        (&["--kernel", "K", "--drive", "file=/nonexistent.img"], Vmm, "drive virtio0: could not open '/nonexistent.img'", false),
        (&["--kernel", "K", "--drive", "file=DIR"], Vmm, "is not a regular file or block device", false),
        (&["--kernel", "K", "--drive", "file=EMPTY"], Vmm, "has 0 bytes, not a positive multiple of 512", false),
        (&["--kernel", "K", "--drive", "file=ODD"], Vmm, "has 1000 bytes, not a positive multiple of 512", false),
        (&["--kernel", "K", "--drive", "file=QCOW"], Vmm, "is a qcow2 image; only format=raw", false),
        (&["--kernel", "K", "--drive", "file=ROFILE"], Vmm, "is read-only; give readonly=on", false),
        (&["--kernel", "K", "--drive", "file=a,id=x", "--drive", "file=b,id=x"], Vmm, "Duplicate ID 'x' for drive", false),
        (&["--kernel", "K", "--drive", "file=a,cache=maybe"], Vmm, "Parameter 'cache' expects none or writeback", false),
        (&["--kernel", "K", "--drive", "file=a,format=qcow2"], Vmm, "only format=raw", false),
        (&["--kernel", "K", "--drive", "file=a,aio=native"], Vmm, "aio=native (Linux AIO) is not supported; use aio=io_uring (or aio=threads)", false),
        (&["--kernel", "K", "--drive", "file=a,aio=posix"], Vmm, "Parameter 'aio' expects threads or io_uring", false),
        (&["--kernel", "K", "--drive", "if=virtio"], Vmm, "Parameter 'file' is missing", false),
        (&["--kernel", "K", "--device", "frob-pci"], Vmm, "'frob-pci' is not a valid device model name", false),
        (&["--kernel", "K", "--drive", "file=a,if=none,id=d", "--device", "virtio-blk-pci,drive=d,foo=1"], Vmm, "Property 'virtio-blk-pci.foo' not found", false),
        (&["--kernel", "K", "--device", "virtio-blk-pci,drive=nope"], Vmm, "can't find value 'nope'", false),
        (&["--kernel", "K", "--device", "virtio-blk-pci"], Vmm, "Property 'virtio-blk-pci.drive' is required", false),
        (&["--kernel", "K", "--device", "ib700", "--device", "ib700"], Vmm, "there can be only one ib700", false),
        // Network cards (--netdev, --device virtio-net-pci), refused before
        // any tap is opened.
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=0123456789abcdef"], Vmm, "tap name '0123456789abcdef' is not a valid interface name (1-15 bytes", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=a/b"], Vmm, "tap name 'a/b' is not a valid interface name", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=t0", "--netdev", "tap,id=n0,ifname=t1"], Vmm, "Duplicate ID 'n0' for netdev", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=t0,vhost=maybe"], Vmm, "Parameter 'vhost' expects 'on' or 'off'", false),
        (&["--kernel", "K", "--netdev", "user,id=n0"], Vmm, "netdev type 'user' is not supported (only tap)", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0"], Vmm, "Parameter 'ifname' is missing", false),
        (&["--kernel", "K", "--device", "virtio-net-pci,netdev=nope"], Vmm, "Property 'virtio-net-pci.netdev' can't find value 'nope'", false),
        (&["--kernel", "K", "--device", "virtio-net-pci"], Vmm, "Property 'virtio-net-pci.netdev' is required", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=t0", "--device", "virtio-net-pci,netdev=n0,mac=52:54:00:zz:00:01"], Vmm, "'52:54:00:zz:00:01' is not a MAC address", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=t0", "--device", "virtio-net-pci,netdev=n0,mac=01:00:5e:00:00:01"], Vmm, "is a multicast address", false),
        (&["--kernel", "K", "--netdev", "tap,id=n0,ifname=t0", "--device", "virtio-net-pci,netdev=n0", "--device", "virtio-net-pci,netdev=n0"], Vmm, "can't take value 'n0', it's in use", false),
        // Entropy devices (--device virtio-rng-pci), QEMU's words.
        (&["--kernel", "K", "--device", "virtio-rng-pci,period=0"], Vmm, "'period' parameter expects a positive integer", false),
        (&["--kernel", "K", "--device", "virtio-rng-pci,max-bytes=0"], Vmm, "'max-bytes' parameter must be non-zero", false),
        (&["--kernel", "K", "--device", "virtio-rng-pci,max-bytes=lots"], Vmm, "Parameter 'max-bytes' expects a number", false),
        // Socket devices (--device virtio-vsock-pci), refused before anything
        // is built; the socket is made before the kernel is read.
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=2,uds=/tmp/vmm-bad-v.sock"], Vmm, "guest CID 2 is out of range (3 to 4294967294)", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=4294967296,uds=/tmp/vmm-bad-v.sock"], Vmm, "guest CID 4294967296 is out of range", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,uds=/tmp/vmm-bad-v.sock"], Vmm, "Property 'virtio-vsock-pci.guest-cid' is required", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=3"], Vmm, "Property 'virtio-vsock-pci.uds' is required", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=3,uds=FILE"], Vmm, "already exists", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=3,uds=LONG"], Vmm, "a socket path is 1 to 107 bytes, not 5000", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=3,uds=/tmp/vmm-bad-a.sock", "--device", "virtio-vsock-pci,guest-cid=3,uds=/tmp/vmm-bad-b.sock"], Vmm, "guest-cid=3 is used by another virtio-vsock-pci or vhost-vsock-pci", false),
        (&["--kernel", "K", "--device", "virtio-vsock-pci,guest-cid=3,uds=/nonexistent/dir/v.sock"], Vmm, "virtio-vsock-pci: cannot make a socket at /nonexistent/dir/v.sock", false),
        (&["--kernel", "K", "--device", "vhost-vsock-pci,guest-cid=2"], Vmm, "guest CID 2 is out of range", false),
        (&["--kernel", "K", "--device", "vhost-vsock-pci,guest-cid=3", "--device", "virtio-vsock-pci,guest-cid=3,uds=/tmp/vmm-bad-c.sock"], Vmm, "guest-cid=3 is used by another virtio-vsock-pci or vhost-vsock-pci", false),
        (&["--kernel", "K", "--action", "watchdog=bogus"], Vmm, "Parameter 'watchdog' does not accept value 'bogus'", false),
        (&["--kernel", "K", "--action", "frob=1"], Vmm, "Invalid parameter 'frob'", false),
        (&["--kernel", "K", "--incoming", "bogus"], Vmm, "--incoming bogus: unknown migration protocol: bogus", false),
        (&["--kernel", "K", "--incoming", "fd:3"], Vmm, "unknown migration protocol: fd:3", false),
        (&["--kernel", "K", "--incoming", "tcp:"], Vmm, "tcp: needs HOST:PORT", false),
        (&["--kernel", "K", "--incoming", "tcp:127.0.0.1"], Vmm, "tcp: needs HOST:PORT", false),
        (&["--kernel", "K", "--incoming", "tcp::4444"], Vmm, "tcp: needs HOST:PORT", false),
        (&["--kernel", "K", "--incoming", "tcp:127.0.0.1:http"], Vmm, "'http' is not a port", false),
        (&["--kernel", "K", "--incoming", "tcp:127.0.0.1:70000"], Vmm, "'70000' is not a port", false),
        (&["--kernel", "K", "--incoming", "tcp:127.0.0.1:0"], Vmm, "'0' is not a port", false),
        (&["--kernel", "K", "--incoming", "unix:"], Vmm, "unix: needs a value", false),
        (&["--kernel", "K", "--incoming", "exec:"], Vmm, "exec: needs a value", false),
        (&["--kernel", "ELF", "--incoming", "unix:/nonexistent/dir/mig.sock"], Vmm, "--incoming: Failed to bind socket '/nonexistent/dir/mig.sock'", true),
        (&["--kernel", "ELF", "--incoming", "file:/nonexistent/vm.mig"], Vmm, "load of migration from /nonexistent/vm.mig failed: cannot open", false),
        (&["--kernel", "ELF", "--incoming", "file:FIFO"], Vmm, "not a regular file (a FIFO)", false),
    ];
    assert!(table.len() >= 25);
    let dir = TempDir::new("table");
    let junk = dir.file("k", b"not a kernel at all");
    let elf = dir.file("hello.elf", &vmm_pc::test_guests::hello_reset("x"));
    let empty = dir.file("empty", b"");
    let file = dir.file("file", b"");
    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let sub = dir.0.join("d");
    std::fs::create_dir(&sub).unwrap();
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let long = "x".repeat(5000);
    let odd = dir.file("odd.img", &[0u8; 1000]);
    let mut qcow2 = vec![0u8; 4096];
    qcow2[..4].copy_from_slice(b"QFI\xfb");
    let qcow = dir.file("qcow.img", &qcow2);
    let rofile = dir.file("ro.img", &[0u8; 4096]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rofile, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let subst = |arg: &str| -> String {
        let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
        match arg {
            "K" => path(&junk),
            "ELF" => path(&elf),
            "EMPTY" => path(&empty),
            "FILE" => path(&file),
            "FIFO" => path(&fifo),
            "DIR" => path(&sub),
            "LONG" => long.clone(),
            "file:DIR" => format!("file:{}", path(&sub)),
            "file:LINK" => format!("file:{}", path(&link)),
            "file:FIFO" => format!("file:{}", path(&fifo)),
            "file=DIR" => format!("file={}", path(&sub)),
            "file=EMPTY" => format!("file={}", path(&empty)),
            "file=ODD" => format!("file={}", path(&odd)),
            "file=QCOW" => format!("file={}", path(&qcow)),
            "file=ROFILE" => format!("file={}", path(&rofile)),
            a if a.ends_with(",uds=FILE") => {
                a.replace(",uds=FILE", &format!(",uds={}", path(&file)))
            }
            a if a.ends_with(",uds=LONG") => a.replace(",uds=LONG", &format!(",uds={long}")),
            other => other.to_owned(),
        }
    };
    let have_kvm = kvm("bad_command_lines_are_refused (the rows that load a kernel)");
    for &(args, how, expect, needs_kvm) in table {
        if needs_kvm && !have_kvm {
            continue;
        }
        let args: Vec<String> = args.iter().map(|a| subst(a)).collect();
        let o = wait_within(vmm().args(&args).spawn().unwrap(), QUICK);
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: panic: {err}");
        match how {
            Usage => {
                assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
                assert!(err.starts_with("error: "), "{args:?}: {err}");
                assert!(err.contains(expect), "{args:?}: want {expect:?}: {err}");
            }
            Vmm => {
                assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
                assert_one_line_error(&o, expect);
            }
        }
    }
}

/// A vhost-vsock-pci on a host without `/dev/vhost-vsock` (this one) is a
/// one-line error naming the device, status 1.
#[test]
fn vhost_vsock_without_the_host_device_is_one_line() {
    if std::path::Path::new("/dev/vhost-vsock").exists() {
        eprintln!("SKIP vhost_vsock_without_the_host_device_is_one_line: this host has one");
        return;
    }
    if !kvm("vhost_vsock_without_the_host_device_is_one_line") {
        return;
    }
    let dir = TempDir::new("vhost");
    let elf = dir.file("hello.elf", &vmm_pc::test_guests::hello_reset("x"));
    let o = run_kernel(
        &elf,
        &[
            "--serial",
            "none",
            "--device",
            "vhost-vsock-pci,guest-cid=3",
        ],
    );
    assert_one_line_error(
        &o,
        "vhost-vsock-pci with guest-cid=3: cannot open /dev/vhost-vsock: No such file or directory",
    );
}

/// A card with vhost=on on a host without `/dev/vhost-net` (this one) is
/// QEMU's one-line error naming the netdev, status 1, and no tap is made
/// (vhost-net is opened first).
#[test]
fn vhost_net_without_the_host_device_is_one_line() {
    if std::path::Path::new("/dev/vhost-net").exists() {
        eprintln!("SKIP vhost_net_without_the_host_device_is_one_line: this host has one");
        return;
    }
    let dir = TempDir::new("vhost-net");
    let elf = dir.file("hello.elf", &vmm_pc::test_guests::hello_reset("x"));
    let o = run_kernel(
        &elf,
        &[
            "--serial",
            "none",
            "--netdev",
            "tap,id=n0,ifname=vmmbad0,vhost=on",
            "--device",
            "virtio-net-pci,netdev=n0",
        ],
    );
    assert_one_line_error(
        &o,
        "netdev n0: vhost-net requested but could not be initialized: cannot open /dev/vhost-net: No such file or directory",
    );
}
