//! Where a vCPU stands between the controller's commands, on a real
//! `/dev/kvm`: a device that stops the vCPU driving it (`stop_current`,
//! QEMU's `cpu_stop_current`: the i8042's reset, ACPI poweroff and S3),
//! and the kick a running vCPU needs, never skipped.
//!
//! Without a usable `/dev/kvm` it prints SKIP, unless `VMM_REQUIRE_KVM=1`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_core::io::IoHandler;
use vmm_core::kvm::KvmSystem;
use vmm_core::vcpu::Vcpus;
use vmm_core::vm::Vm;

use common::{kvm, real_mode_init};

const CODE: u64 = 0x1000;
const WAIT: Duration = Duration::from_secs(5);
/// The port whose writes stop the vCPU (a reset line's device, say).
const STOP_PORT: u16 = 0x64;

/// Records port writes; a write to [`STOP_PORT`] stops the vCPU.
#[derive(Default)]
struct Io {
    writes: Mutex<Vec<u16>>,
}

impl IoHandler for Io {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, _data: &[u8]) {
        self.writes.lock().unwrap().push(port);
        if port == STOP_PORT {
            vmm_core::vcpu::stop_current();
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
}

impl Io {
    fn writes(&self) -> Vec<u16> {
        self.writes.lock().unwrap().clone()
    }

    fn wait_for(&self, n: usize) -> Vec<u16> {
        let deadline = Instant::now() + WAIT;
        while self.writes.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.writes()
    }
}

fn boot(kvm: &KvmSystem, code: &[u8]) -> (Vm, Vcpus, Arc<Io>) {
    let vm = Vm::new(kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let io = Arc::new(Io::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(CODE, 0), io.clone()).unwrap();
    (vm, vcpus, io)
}

/// The guest asks to stop, then writes port 0x80, then spins without exits.
#[rustfmt::skip]
const STOP_THEN_WRITE: &[u8] = &[
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al   (the stop)
    0xe6, 0x80, // out 0x80, al   (past it)
    0xeb, 0xfe, // jmp $
];

#[test]
fn a_device_that_stops_its_vcpu_parks_it_after_that_exit() {
    let Some(kvm) = kvm() else { return };
    let (_vm, vcpus, io) = boot(&kvm, STOP_THEN_WRITE);
    vcpus.resume_all().unwrap();
    assert_eq!(io.wait_for(1), [STOP_PORT]);
    // Parked on its own: nothing past the instruction that asked.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(io.writes(), [STOP_PORT], "the vCPU ran past its stop");
    // The controller's pause finds it parked; a resume runs it on.
    vcpus.pause_all().unwrap();
    assert_eq!(io.writes(), [STOP_PORT]);
    vcpus.resume_all().unwrap();
    assert_eq!(io.wait_for(2), [STOP_PORT, 0x80], "resumed past its stop");
    // Spinning in the guest now: the pause must kick it out.
    vcpus.pause_all().unwrap();
}

/// Writes port 0x80 for ever.
#[rustfmt::skip]
const SPINNER: &[u8] = &[
    0xe6, 0x80, // out 0x80, al
    0xeb, 0xfc, // jmp -4 (back to out)
];

/// Whether the guest goes on writing: 100 more writes within the wait.
fn runs_on(io: &Io) -> bool {
    let seen = io.writes().len();
    io.wait_for(seen + 100).len() >= seen + 100
}

/// A stop asked on a thread that runs no vCPU changes nothing there, and
/// leaves the vCPUs running.
#[test]
fn a_stop_asked_off_a_vcpu_thread_stops_nothing() {
    let Some(kvm) = kvm() else { return };
    let (_vm, vcpus, io) = boot(&kvm, SPINNER);
    vmm_core::vcpu::stop_current();
    vcpus.resume_all().unwrap();
    io.wait_for(1);
    assert!(runs_on(&io), "it runs on");
    vcpus.pause_all().unwrap();
}

/// A stop asked on a vCPU's thread outside an exit (here in a call the
/// controller runs there) does not park the vCPU at its next exit.
#[test]
fn a_stop_asked_outside_an_exit_stops_nothing() {
    let Some(kvm) = kvm() else { return };
    let (_vm, vcpus, io) = boot(&kvm, SPINNER);
    vcpus.resume_all().unwrap();
    io.wait_for(1);
    vcpus
        .call_each(|_| |_: &kvm_ioctls::VcpuFd| vmm_core::vcpu::stop_current())
        .unwrap();
    assert!(runs_on(&io), "it runs on");
    vcpus.pause_all().unwrap();
}

/// A pause sent right after a resume always gets the vCPU out of the
/// guest, whichever of the two is first to look (the thread leaving its
/// parked state, or the controller deciding whether to kick): the guest
/// spins without an exit, so a skipped kick would leave the pause
/// unanswered.
#[test]
fn a_pause_right_after_a_resume_always_reaches_the_running_vcpu() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let spin: &[u8] = &[
        0xeb, 0xfe, // jmp $ (no exit ever: only a kick gets the thread out)
    ];
    let (_vm, vcpus, _io) = boot(&kvm, spin);
    for round in 0..300 {
        vcpus.resume_all().unwrap();
        if round % 2 == 1 {
            // Sometimes in the guest for a while first.
            std::thread::yield_now();
        }
        vcpus
            .pause_all()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}
