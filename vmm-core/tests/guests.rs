//! vCPU threads and exit dispatch on a real `/dev/kvm`, with guests of a few
//! hand-assembled real-mode instructions (one comment per instruction).
//!
//! These run on any KVM, the PVM software hypervisor included, in
//! milliseconds. Without a usable `/dev/kvm` they print SKIP, unless
//! `VMM_REQUIRE_KVM=1` (set by `cargo xtask test` where /dev/kvm exists),
//! which turns the skip into a failure.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_core::io::IoHandler;
use vmm_core::kvm::KvmSystem;
use vmm_core::vcpu::{VcpuInit, VcpuRequest, VcpuStartStage, VcpuThreadStart, Vcpus};
use vmm_core::vm::Vm;

use common::kvm;

const CODE: u64 = 0x1000;
const WAIT: Duration = Duration::from_secs(5);

/// Records every access, and answers reads from a fixed byte.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Access>>,
    read_value: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    PioWrite(u16, Vec<u8>),
    PioRead(u16, usize),
    MmioWrite(u64, Vec<u8>),
    MmioRead(u64, usize),
}

impl IoHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(self.read_value);
        self.log
            .lock()
            .unwrap()
            .push(Access::PioRead(port, data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::PioWrite(port, data.to_vec()));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(self.read_value);
        self.log
            .lock()
            .unwrap()
            .push(Access::MmioRead(addr, data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::MmioWrite(addr, data.to_vec()));
    }
}

impl Recorder {
    fn taken(&self) -> Vec<Access> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// vCPU `i` starts in real mode at CS:IP = (CODE + i*0x100)/16 : 0.
fn real_mode_init() -> VcpuInit {
    common::real_mode_init(CODE, 0x100)
}

struct Guest {
    vcpus: Vcpus,
    io: Arc<Recorder>,
}

/// A VM with 1 MiB of RAM, `code[i]` at vCPU i's entry, no irqchip.
fn boot(kvm: &KvmSystem, code: &[&[u8]], read_value: u8) -> Guest {
    let vm = Vm::new(kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    for (i, c) in code.iter().enumerate() {
        vm.memory()
            .write_slice(c, GuestAddress(CODE + i as u64 * 0x100))
            .unwrap();
    }
    let io = Arc::new(Recorder {
        read_value,
        ..Default::default()
    });
    let vcpus = Vcpus::spawn(&vm, code.len() as u32, real_mode_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    Guest { vcpus, io }
}

#[rustfmt::skip]
const HELLO: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'H',       // mov al, 'H'
    0xee,             // out dx, al
    0xb0, b'i',       // mov al, 'i'
    0xee,             // out dx, al
    0xf4,             // hlt
];

#[test]
fn pio_writes_reach_the_handler_in_order() {
    let Some(kvm) = kvm() else { return };
    let g = boot(&kvm, &[HELLO], 0);
    assert_eq!(
        g.vcpus.wait_request(WAIT),
        Some(VcpuRequest::Halted { vcpu: 0 })
    );
    assert_eq!(
        g.io.taken(),
        [
            Access::PioWrite(0x3f8, vec![b'H']),
            Access::PioWrite(0x3f8, vec![b'i'])
        ]
    );
}

#[rustfmt::skip]
const STRING_IO: &[u8] = &[
    0x31, 0xc0,             // xor ax, ax
    0x8e, 0xd8,             // mov ds, ax
    0x8e, 0xc0,             // mov es, ax
    0xfc,                   // cld
    0xba, 0xf8, 0x03,       // mov dx, 0x3f8
    0xbe, 0x00, 0x30,       // mov si, 0x3000
    0xb9, 0x05, 0x00,       // mov cx, 5
    0xf3, 0x6e,             // rep outsb
    0xba, 0x60, 0x00,       // mov dx, 0x60
    0xbf, 0x00, 0x40,       // mov di, 0x4000
    0xb9, 0x02, 0x00,       // mov cx, 2
    0xf3, 0x6d,             // rep insw
    0xed,                   // in ax, dx
    0xa3, 0x10, 0x40,       // mov [0x4010], ax
    0xf4,                   // hlt
];

#[test]
fn string_io_is_split_into_single_accesses() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory()
        .write_slice(b"hello", GuestAddress(0x3000))
        .unwrap();
    vm.memory()
        .write_slice(STRING_IO, GuestAddress(CODE))
        .unwrap();
    let io = Arc::new(Recorder {
        read_value: 0xab,
        ..Default::default()
    });
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    assert_eq!(
        vcpus.wait_request(WAIT),
        Some(VcpuRequest::Halted { vcpu: 0 })
    );
    let mut expected: Vec<Access> = b"hello"
        .iter()
        .map(|b| Access::PioWrite(0x3f8, vec![*b]))
        .collect();
    // `rep insw` x2 may come as one exit of 4 bytes: still two 2-byte reads.
    expected.extend([
        Access::PioRead(0x60, 2),
        Access::PioRead(0x60, 2),
        Access::PioRead(0x60, 2),
    ]);
    assert_eq!(io.taken(), expected);
    let stored: [u8; 4] = vm.memory().read_obj(GuestAddress(0x4000)).unwrap();
    assert_eq!(stored, [0xab; 4]);
    let word: u16 = vm.memory().read_obj(GuestAddress(0x4010)).unwrap();
    assert_eq!(word, 0xabab);
}

#[rustfmt::skip]
const MMIO: &[u8] = &[
    0xb8, 0x00, 0xd0,       // mov ax, 0xd000  (data at 0xd0000: not RAM)
    0x8e, 0xd8,             // mov ds, ax
    0xc6, 0x06, 0x10, 0x00, 0x5a, // mov byte [0x10], 0x5a
    0xa1, 0x20, 0x00,       // mov ax, [0x20]
    0x31, 0xdb,             // xor bx, bx
    0x8e, 0xdb,             // mov ds, bx
    0xa3, 0x00, 0x50,       // mov [0x5000], ax
    0xf4,                   // hlt
];

#[test]
fn mmio_outside_ram_reaches_the_handler() {
    let Some(kvm) = kvm() else { return };
    // RAM is 0..0xC0000 here, so 0xD0000 is unbacked: MMIO.
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0xc_0000)]).unwrap();
    vm.memory().write_slice(MMIO, GuestAddress(CODE)).unwrap();
    let io = Arc::new(Recorder {
        read_value: 0x77,
        ..Default::default()
    });
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    assert_eq!(
        vcpus.wait_request(WAIT),
        Some(VcpuRequest::Halted { vcpu: 0 })
    );
    assert_eq!(
        io.taken(),
        [
            Access::MmioWrite(0xd0010, vec![0x5a]),
            Access::MmioRead(0xd0020, 2)
        ]
    );
    let word: u16 = vm.memory().read_obj(GuestAddress(0x5000)).unwrap();
    assert_eq!(word, 0x7777);
}

/// vCPU 0 starts in 32-bit protected mode (flat segments, paging off) at
/// CODE, with an IDT of limit 0: every exception is then a fault in
/// delivering it.
fn protected_mode_no_idt_init() -> VcpuInit {
    Arc::new(|vcpu, _| {
        let mut sregs = vcpu.get_sregs()?;
        let flat = |selector: u16, type_: u8| kvm_bindings::kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = flat(0x8, 0xb);
        sregs.ds = flat(0x10, 0x3);
        sregs.es = sregs.ds;
        sregs.ss = sregs.ds;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 |= 1; // PE
        vcpu.set_sregs(&sregs)?;
        let mut regs = vcpu.get_regs()?;
        regs.rip = CODE;
        regs.rsp = 0x8000;
        regs.rflags = 2;
        vcpu.set_regs(&regs)?;
        Ok(())
    })
}

#[test]
fn triple_fault_becomes_a_reset_request() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x31, 0xc0, // xor eax, eax
        0xf7, 0xf0, // div eax -> #DE; vector 0 is beyond the IDT limit -> #GP -> #DF -> shutdown
    ];
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let io = Arc::new(Recorder::default());
    let vcpus = Vcpus::spawn(&vm, 1, protected_mode_no_idt_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    match vcpus.wait_request(WAIT) {
        Some(VcpuRequest::Reset { vcpu: 0, .. }) => {}
        other => panic!(
            "expected a reset request, got {other:?} (I/O {:?})",
            io.taken()
        ),
    }
}

/// Each vCPU writes its own id to port 0x80 forever.
fn spinner(id: u8) -> Vec<u8> {
    #[rustfmt::skip]
    let code = vec![
        0xb0, id,   // mov al, id
        0xe6, 0x80, // out 0x80, al
        0xeb, 0xfc, // jmp -4 (back to out)
    ];
    code
}

#[test]
fn two_vcpus_both_run() {
    let Some(kvm) = kvm() else { return };
    let (a, b) = (spinner(0xa0), spinner(0xb1));
    let g = boot(&kvm, &[&a, &b], 0);
    let deadline = Instant::now() + WAIT;
    let mut seen = (false, false);
    let mut log = Vec::new();
    while !(seen.0 && seen.1) && Instant::now() < deadline {
        log = g.io.taken();
        for access in &log {
            match access {
                Access::PioWrite(0x80, v) if v == &[0xa0] => seen.0 = true,
                Access::PioWrite(0x80, v) if v == &[0xb1] => seen.1 = true,
                _ => {}
            }
        }
        std::thread::yield_now();
    }
    assert!(seen.0 && seen.1, "both vCPUs must write (last log {log:?})");
    g.vcpus.pause_all().unwrap();
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let Some(kvm) = kvm() else { return };
    let code = spinner(0x42);
    let g = boot(&kvm, &[&code], 0);
    // Running: accesses accumulate.
    let deadline = Instant::now() + WAIT;
    while g.io.log.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(!g.io.taken().is_empty(), "the guest runs");
    // Paused: once pause_all returns, no vCPU touches I/O.
    g.vcpus.pause_all().unwrap();
    g.io.taken();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.io.taken(), [], "no access while paused");
    // Pausing twice is harmless.
    g.vcpus.pause_all().unwrap();
    // Resumed: it runs again.
    g.vcpus.resume_all().unwrap();
    let deadline = Instant::now() + WAIT;
    while g.io.log.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        !g.io.taken().is_empty(),
        "the guest runs again after resume"
    );
}

#[test]
fn dropping_vcpus_stops_a_spinning_guest() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let spin: &[u8] = &[
        0xeb, 0xfe, // jmp $  (no exit ever: only a kick gets the thread out)
    ];
    let g = boot(&kvm, &[spin], 0);
    std::thread::sleep(Duration::from_millis(10));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let vcpus = g.vcpus;
    std::thread::spawn(move || {
        drop(vcpus);
        let _ = done_tx.send(());
    });
    assert!(
        done_rx.recv_timeout(WAIT).is_ok(),
        "drop kicked and joined the thread"
    );
}

/// A set-up that fails for vCPU `failing` only.
fn failing_init(failing: u32) -> VcpuInit {
    Arc::new(move |_, index| {
        if index == failing {
            Err("no registers for you".into())
        } else {
            Ok(())
        }
    })
}

#[test]
fn a_failing_init_is_reported_with_the_vcpu() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    // One other vCPU sets up before the spawn returns (as few as set up
    // side by side), so the spawn reports its failure.
    let err = Vcpus::spawn(&vm, 2, failing_init(1), Arc::new(Recorder::default())).unwrap_err();
    assert_eq!(err.to_string(), "cannot set up vCPU 1");
}

/// More vCPUs than this host sets up side by side (one host CPU fewer
/// than it has): the others' set-up goes on after the spawn returns.
fn many_vcpus() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cpus).unwrap_or(1) + 2
}

/// The spawn returns with the boot vCPU set up; the last vCPU's failure
/// is reported by the first call that waits on it, then as a gone thread.
#[test]
fn a_failing_init_of_a_vcpu_set_up_after_the_spawn_is_reported_at_the_start() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let count = many_vcpus();
    let last = count - 1;
    let init = failing_init(last);
    let vcpus = Vcpus::spawn(&vm, count, init, Arc::new(Recorder::default())).unwrap();
    let err = vcpus.resume_all().unwrap_err();
    assert_eq!(err.to_string(), format!("cannot set up vCPU {last}"));
    let again = vcpus.pause_all().unwrap_err();
    assert_eq!(
        again.to_string(),
        format!("the thread of vCPU {last} is gone")
    );
}

/// A failure of the boot vCPU's set-up fails the spawn itself.
#[test]
fn a_failing_boot_vcpu_init_fails_the_spawn() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let err = Vcpus::spawn(&vm, 3, failing_init(0), Arc::new(Recorder::default())).unwrap_err();
    assert_eq!(err.to_string(), "cannot set up vCPU 0");
}

/// Without the wait, the spawn returns before the boot vCPU is set up;
/// `settle` waits for it and reports its failure.
#[test]
fn an_unsettled_spawn_reports_the_boot_vcpus_failure_when_settled() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vcpus =
        Vcpus::spawn_unsettled(&vm, 2, failing_init(0), Arc::new(Recorder::default()), None)
            .unwrap();
    assert_eq!(
        vcpus.settle().unwrap_err().to_string(),
        "cannot set up vCPU 0"
    );
}

/// Counts the questions for external interrupts (there are none).
#[derive(Default)]
struct Asked {
    inner: Recorder,
    asked: std::sync::atomic::AtomicU32,
}

impl IoHandler for Asked {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.inner.pio_read(port, data);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.inner.pio_write(port, data);
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.inner.mmio_read(addr, data);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.inner.mmio_write(addr, data);
    }
    fn external_interrupts(&self, _vcpu: u32) -> Option<Arc<dyn vmm_core::vcpu::ExtIntSource>> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        None
    }
}

/// The threads ask their I/O nothing before they first run (a machine
/// finishes its I/O after starting them): the question for external
/// interrupts comes with the first resume, once.
#[test]
fn external_interrupts_are_asked_for_when_the_vcpu_first_runs() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory().write_slice(HELLO, GuestAddress(CODE)).unwrap();
    let io = Arc::new(Asked::default());
    let vcpus = Vcpus::spawn_unsettled(&vm, 1, real_mode_init(), io.clone(), None).unwrap();
    vcpus.settle().unwrap();
    let asked = || io.asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked(), 0, "asked at the set-up");
    vcpus.resume_all().unwrap();
    assert_eq!(
        vcpus.wait_request(WAIT),
        Some(VcpuRequest::Halted { vcpu: 0 })
    );
    assert_eq!(asked(), 1);
    assert_eq!(io.inner.taken().len(), 2, "the guest's two writes");
}

/// The thread-start hook runs once on each vCPU's own thread, after its
/// set-up and before the vCPU answers that it is created (so before any
/// guest code: where the binary installs the thread's seccomp filter); with
/// several vCPUs, first once on the boot vCPU's thread before the others'
/// threads start (which then inherit what the hook put in place).
#[test]
fn the_thread_start_hook_runs_on_each_vcpu_thread_before_it_answers() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let seen: Arc<Mutex<Vec<(VcpuStartStage, i32, String)>>> = Arc::default();
    let s = Arc::clone(&seen);
    let hook: VcpuThreadStart = Arc::new(move |stage| {
        // SAFETY: gettid takes no arguments and cannot fail (the system
        // call: std's libc bindings have no wrapper for it on musl).
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
        let name = std::thread::current().name().unwrap_or("").to_owned();
        s.lock().unwrap().push((stage, tid, name));
        Ok(())
    });
    let io = Arc::new(Recorder::default());
    let vcpus = Vcpus::spawn_with_start(&vm, 3, real_mode_init(), io, Some(hook)).unwrap();
    // The boot vCPU's stages are done when the spawn returns.
    let boot_stages = seen.lock().unwrap().len();
    assert!(boot_stages >= 2, "{boot_stages} stages seen");
    // Waits for every vCPU's answer.
    let tids = vcpus.thread_ids();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    // The spawner stage first, on the boot vCPU's thread, before any other
    // vCPU thread ran the hook.
    assert_eq!(
        seen[0],
        (VcpuStartStage::Spawner, tids[0], "vcpu 0".to_owned())
    );
    let mut ready: Vec<_> = seen[1..].to_vec();
    ready.sort_by_key(|(stage, _, _)| match stage {
        VcpuStartStage::Ready { index, .. } => *index,
        VcpuStartStage::Spawner => u32::MAX,
    });
    let want: Vec<_> = (0..3)
        .map(|index| {
            (
                VcpuStartStage::Ready {
                    index,
                    inherited: true,
                },
                tids[index as usize],
                format!("vcpu {index}"),
            )
        })
        .collect();
    assert_eq!(ready, want);
}

/// The other vCPUs' threads start once the controller first asks anything
/// of a vCPU: a controller dropped before that starts none of them (their
/// hook never runs), and its drop still returns.
#[test]
fn vcpus_dropped_before_anything_was_asked_start_no_other_thread() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let readies = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&readies);
    let hook: VcpuThreadStart = Arc::new(move |stage| {
        if let VcpuStartStage::Ready { index, .. } = stage {
            r.lock().unwrap().push(index);
        }
        Ok(())
    });
    let io = Arc::new(Recorder::default());
    let count = many_vcpus();
    let vcpus = Vcpus::spawn_with_start(&vm, count, real_mode_init(), io, Some(hook)).unwrap();
    drop(vcpus);
    assert_eq!(*readies.lock().unwrap(), [0]);
}

/// With one vCPU there is no spawner stage: the vCPU's thread runs the hook
/// once, with nothing inherited.
#[test]
fn a_single_vcpu_runs_the_hook_once_with_nothing_inherited() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let seen: Arc<Mutex<Vec<VcpuStartStage>>> = Arc::default();
    let s = Arc::clone(&seen);
    let hook: VcpuThreadStart = Arc::new(move |stage| {
        s.lock().unwrap().push(stage);
        Ok(())
    });
    let io = Arc::new(Recorder::default());
    let _vcpus = Vcpus::spawn_with_start(&vm, 1, real_mode_init(), io, Some(hook)).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [VcpuStartStage::Ready {
            index: 0,
            inherited: false
        }]
    );
}

/// `count` real-mode vCPUs with `hook`, a start that must fail (the spawn,
/// or else the first resume): its error.
fn spawn_failing(vm: &Vm, count: u32, hook: VcpuThreadStart) -> vmm_core::vcpu::VcpuError {
    let io = Arc::new(Recorder::default());
    match Vcpus::spawn_with_start(vm, count, real_mode_init(), io, Some(hook)) {
        Ok(vcpus) => vcpus.resume_all().unwrap_err(),
        Err(e) => e,
    }
}

/// A failing thread-start hook fails the start. The vCPUs other than the
/// boot one come up side by side after the spawn: when some fail and others
/// succeed, the first resume reports the lowest failing index, and the drop
/// ends the threads that did start (it returns rather than hangs).
#[test]
fn a_failing_thread_start_hook_fails_the_spawn_with_the_first_failing_vcpu() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let hook: VcpuThreadStart = Arc::new(|stage| match stage {
        VcpuStartStage::Ready { index, .. } if index == 3 || index == 6 => {
            Err(format!("no filter for {index}").into())
        }
        _ => Ok(()),
    });
    let err = spawn_failing(&vm, 8, hook);
    assert_eq!(err.to_string(), "the thread-start hook of vCPU 3 failed");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("no filter for 3"));
}

/// A failing spawner stage fails the spawn on the boot vCPU, and no other
/// vCPU thread is started (none would have what the stage puts in place).
#[test]
fn a_failing_spawner_stage_fails_the_spawn_on_the_boot_vcpu() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    let readies = Arc::new(Mutex::new(0));
    let r = Arc::clone(&readies);
    let hook: VcpuThreadStart = Arc::new(move |stage| match stage {
        VcpuStartStage::Spawner => Err("no spawner filter".into()),
        VcpuStartStage::Ready { .. } => {
            *r.lock().unwrap() += 1;
            Ok(())
        }
    });
    let err = spawn_failing(&vm, 4, hook);
    assert_eq!(err.to_string(), "the thread-start hook of vCPU 0 failed");
    assert_eq!(*readies.lock().unwrap(), 0);
}

/// The kvmclock can be read and put back: what the machine does around a
/// pause so that no guest time passes while paused.
#[test]
fn kvmclock_is_put_back_after_a_pause() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.create_irqchip().unwrap();
    let before = vm.clock_ns().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let later = vm.clock_ns().unwrap();
    assert!(
        later >= before + 150_000_000,
        "the clock runs: {before} -> {later}"
    );
    vm.set_clock_ns(before).unwrap();
    let back = vm.clock_ns().unwrap();
    assert!(
        back >= before && back < before + 100_000_000,
        "set back to {before}, reads {back}"
    );
}

/// A doorbell registered with KVM_IOEVENTFD: the guest's write lands in
/// the eventfd inside KVM and never reaches the handler; unregistered, the
/// same write is an ordinary MMIO exit again.
#[test]
fn an_mmio_doorbell_writes_its_eventfd_without_an_exit() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0xc_0000)]).unwrap();
    vm.memory().write_slice(MMIO, GuestAddress(CODE)).unwrap();
    let bell = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    vm.register_mmio_doorbell(&bell, 0xd0010).unwrap();
    let io = Arc::new(Recorder::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    assert_eq!(
        vcpus.wait_request(WAIT),
        Some(VcpuRequest::Halted { vcpu: 0 })
    );
    assert_eq!(bell.read().unwrap(), 1, "the doorbell rang once");
    assert_eq!(
        io.taken(),
        [Access::MmioRead(0xd0020, 2)],
        "no exit for the write"
    );
    vm.unregister_mmio_doorbell(&bell, 0xd0010).unwrap();
    assert!(
        vm.unregister_mmio_doorbell(&bell, 0xd0010).is_err(),
        "gone already"
    );
    drop(vcpus);
}

/// KVM_SIGNAL_MSI reaches the in-kernel local APIC (which, disabled in a
/// fresh vCPU, may decline it: the call still succeeds).
#[test]
fn an_msi_can_be_signalled_from_any_thread() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.create_irqchip().unwrap();
    let io = Arc::new(Recorder::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), io).unwrap();
    let other = vm.clone();
    let sent = std::thread::spawn(move || other.signal_msi(0xfee0_0000, 0x30))
        .join()
        .unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    drop(vcpus);
}

/// Dirty logging: the page a vCPU writes is in the slot's log once, and
/// the log is clean again after it is taken.
#[test]
fn the_dirty_log_has_the_page_the_guest_wrote() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xc6, 0x06, 0x00, 0x50, 0x01, // mov byte [0x5000], 1
        0xb0, 0x01,                   // mov al, 1
        0xe6, 0x80,                   // out 0x80, al
        0xeb, 0xfe,                   // jmp $
    ];
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let slot = vm.ram_slots()[0];
    assert_eq!((slot.guest_addr, slot.size), (0, 0x10_0000));
    vm.set_dirty_logging(true).unwrap();
    // The VMM's own write above is not a vCPU's: not in the log.
    assert_eq!(vm.take_dirty_log(&slot).unwrap().count(), 0);
    let io = Arc::new(Recorder::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    let deadline = Instant::now() + WAIT;
    while io.log.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(io.taken(), [Access::PioWrite(0x80, vec![1])]);
    let dirty: Vec<u64> = vm.take_dirty_log(&slot).unwrap().iter().collect();
    assert_eq!(dirty, [5], "page 0x5000 only");
    // Spinning writes nothing more.
    assert_eq!(vm.take_dirty_log(&slot).unwrap().count(), 0);
    vm.set_dirty_logging(false).unwrap();
    drop(vcpus);
}

/// A page written again after its log was taken is in the next log.
#[test]
fn the_dirty_log_sees_a_page_written_again() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xfe, 0x06, 0x00, 0x50, // top: inc byte [0x5000]
        0xe6, 0x80,             // out 0x80, al
        0xeb, 0xf8,             // jmp top
    ];
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let slot = vm.ram_slots()[0];
    vm.set_dirty_logging(true).unwrap();
    let io = Arc::new(Recorder::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        let dirty: Vec<u64> = vm.take_dirty_log(&slot).unwrap().iter().collect();
        assert_eq!(dirty, [5], "round {round}");
        io.taken();
    }
    drop(vcpus);
}
