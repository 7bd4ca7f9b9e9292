//! A vCPU's state saved from a running guest and put back later: the
//! guest goes back in time. On a real `/dev/kvm` (PVM included), with a
//! real-mode guest whose only state is a register.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_core::io::IoHandler;
use vmm_core::kvm::KvmSystem;
use vmm_core::vcpu::{VcpuInit, VcpuState, Vcpus};
use vmm_core::vm::Vm;

const CODE: u64 = 0x1000;
const WAIT: Duration = Duration::from_secs(5);

/// `inc bx; mov ax, bx; out 0x80, ax; jmp back`: the count on port 0x80.
#[rustfmt::skip]
const COUNTER: &[u8] = &[
    0x43,       // inc bx
    0x89, 0xd8, // mov ax, bx
    0xe7, 0x80, // out 0x80, ax
    0xeb, 0xf9, // jmp -7 (to inc bx)
];

/// The last count written.
#[derive(Default)]
struct Counts(Mutex<Vec<u16>>);

impl IoHandler for Counts {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if let (0x80, [lo, hi]) = (port, data) {
            self.0.lock().unwrap().push(u16::from_le_bytes([*lo, *hi]));
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
}

impl Counts {
    /// Waits for a count above `above`; returns the newest.
    fn wait_above(&self, above: u16) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(&last) = self.0.lock().unwrap().last() {
                if last > above {
                    return last;
                }
            }
            assert!(Instant::now() < deadline, "the guest stopped counting");
            std::thread::yield_now();
        }
    }
}

fn real_mode_init() -> VcpuInit {
    Arc::new(|vcpu, _| {
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs.base = CODE;
        sregs.cs.selector = (CODE >> 4) as u16;
        vcpu.set_sregs(&sregs)?;
        let mut regs = vcpu.get_regs()?;
        regs.rip = 0;
        regs.rflags = 2;
        regs.rbx = 0;
        vcpu.set_regs(&regs)?;
        Ok(())
    })
}

#[test]
fn a_restored_vcpu_counts_on_from_where_it_was_saved() {
    let test = "a_restored_vcpu_counts_on_from_where_it_was_saved";
    if !vmm_core::kvm::usable_for_tests(test) {
        return;
    }
    let kvm = KvmSystem::open().unwrap();
    let msrs: Vec<u32> = kvm.kvm().get_msr_index_list().unwrap().as_slice().to_vec();
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory()
        .write_slice(COUNTER, GuestAddress(CODE))
        .unwrap();
    let counts = Arc::new(Counts::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), counts.clone()).unwrap();
    vcpus.resume_all().unwrap();
    counts.wait_above(100);
    vcpus.pause_all().unwrap();
    let saved_at = *counts.0.lock().unwrap().last().unwrap();

    let list = msrs.clone();
    let mut states = vcpus
        .call_each(move |_| {
            let list = list.clone();
            move |vcpu: &kvm_ioctls::VcpuFd| VcpuState::save(vcpu, false, &list)
        })
        .unwrap();
    let state = states.remove(0).unwrap();
    // The TSC and the kvmclock's two MSRs (the guest's clock source and
    // its wall clock) are among them.
    for (index, what) in [
        (0x10, "IA32_TSC"),
        (0x4b56_4d00, "MSR_KVM_WALL_CLOCK_NEW"),
        (0x4b56_4d01, "MSR_KVM_SYSTEM_TIME_NEW"),
    ] {
        assert!(
            state.msrs.iter().any(|m| m.index == index),
            "{what} ({index:#x}) is not saved: {:x?}",
            state.msrs.iter().map(|m| m.index).collect::<Vec<_>>()
        );
    }
    // The vCPU stopped somewhere in its loop: BX holds the last count
    // written, or one more if it stopped between `inc` and `out`.
    let bx = state.regs.rbx as u16;
    assert!(
        bx == saved_at || bx == saved_at + 1,
        "BX {bx}, written {saved_at}"
    );
    let next = match state.regs.rip {
        1 | 3 => bx,
        _ => bx.wrapping_add(1),
    };
    // Through text, as a snapshot file would carry it.
    let text = serde_json::to_string(&state).unwrap();
    let state: Arc<VcpuState> = Arc::new(serde_json::from_str(&text).unwrap());

    // The guest counts on...
    vcpus.resume_all().unwrap();
    counts.wait_above(saved_at.wrapping_add(1000).min(u16::MAX - 1));
    vcpus.pause_all().unwrap();
    // ...and is put back: its next count follows the saved one.
    let restored = vcpus
        .call_each(|_| {
            let state = Arc::clone(&state);
            move |vcpu: &kvm_ioctls::VcpuFd| state.restore(vcpu, false)
        })
        .unwrap();
    restored.into_iter().for_each(|r| r.unwrap());
    counts.0.lock().unwrap().clear();
    vcpus.resume_all().unwrap();
    counts.wait_above(0);
    vcpus.pause_all().unwrap();
    let after = counts.0.lock().unwrap()[0];
    assert_eq!(after, next, "back in time");

    // A state with a local APIC does not go on a vCPU without one.
    let e = vcpus
        .call_each(|_| {
            let state = Arc::clone(&state);
            move |vcpu: &kvm_ioctls::VcpuFd| state.restore(vcpu, true)
        })
        .unwrap()
        .remove(0)
        .unwrap_err();
    assert!(e.to_string().contains("no local APIC"), "{e}");
}

/// Where the kvmclock guest keeps its clock page.
const CLOCK_PAGE: u64 = 0x5000;

/// `wrmsr MSR_KVM_SYSTEM_TIME_NEW, CLOCK_PAGE | enable`, then the counter:
/// a guest with kvmclock on.
#[rustfmt::skip]
const KVMCLOCK_COUNTER: &[u8] = &[
    0x66, 0xb9, 0x01, 0x4d, 0x56, 0x4b, // mov ecx, 0x4b564d01
    0x66, 0xb8, 0x01, 0x50, 0x00, 0x00, // mov eax, 0x5001
    0x66, 0x31, 0xd2,                   // xor edx, edx
    0x0f, 0x30,                         // wrmsr
    0x43,                               // inc bx
    0x89, 0xd8,                         // mov ax, bx
    0xe7, 0x80,                         // out 0x80, ax
    0xeb, 0xf9,                         // jmp -7 (to inc bx)
];

/// A resume after a stop tells a guest with kvmclock that its clock
/// stood still (`KVM_KVMCLOCK_CTRL`): KVM sets `PVCLOCK_GUEST_STOPPED` in
/// the guest's clock page, which Linux's watchdogs read so as not to take
/// the pause for a soft lockup. A plain pause and resume does not.
#[test]
fn a_resume_after_a_stop_tells_the_guest_its_clock_stood_still() {
    let test = "a_resume_after_a_stop_tells_the_guest_its_clock_stood_still";
    if !vmm_core::kvm::usable_for_tests(test) {
        return;
    }
    // pvclock_vcpu_time_info: version u32, pad u32, tsc_timestamp u64,
    // system_time u64, tsc_to_system_mul u32, tsc_shift i8, flags u8.
    const FLAGS: u64 = CLOCK_PAGE + 29;
    const GUEST_STOPPED: u8 = 1 << 1;
    let kvm = KvmSystem::open().unwrap();
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.memory()
        .write_slice(KVMCLOCK_COUNTER, GuestAddress(CODE))
        .unwrap();
    let counts = Arc::new(Counts::default());
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(), counts.clone()).unwrap();
    let flags = || vm.memory().read_obj::<u8>(GuestAddress(FLAGS)).unwrap();
    let version = || {
        vm.memory()
            .read_obj::<u32>(GuestAddress(CLOCK_PAGE))
            .unwrap()
    };
    vcpus.resume_all().unwrap();
    let counted = counts.wait_above(10);
    assert_ne!(version(), 0, "KVM wrote the clock page");
    vcpus.pause_all().unwrap();
    vcpus.resume_all().unwrap();
    counts.wait_above(counted + 10);
    vcpus.pause_all().unwrap();
    assert_eq!(flags() & GUEST_STOPPED, 0, "a plain resume tells nothing");
    let counted = *counts.0.lock().unwrap().last().unwrap();
    vcpus.resume_all_after_stop().unwrap();
    // KVM writes the flag as the vCPU enters the guest again.
    counts.wait_above(counted.wrapping_add(10));
    assert_eq!(flags() & GUEST_STOPPED, GUEST_STOPPED);
}
