//! External interrupts from a controller outside KVM (what the split
//! irqchip's 8259s use) on a real `/dev/kvm`: a fake controller whose
//! output the test raises from its own thread, a kick, and a real-mode
//! guest halted with interrupts on that must take the vector through
//! `KVM_INTERRUPT` (the boot CPU's LINT0 is ExtINT at reset).
//!
//! Without a usable `/dev/kvm` it prints SKIP, unless `VMM_REQUIRE_KVM=1`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_core::io::IoHandler;
use vmm_core::vcpu::{ExtIntSource, Vcpus};
use vmm_core::vm::Vm;

use common::{kvm, real_mode_init};

const CODE: u64 = 0x1000;
const HANDLER: u64 = 0x2000;
const VECTOR: u8 = 0x40;
const WAIT: Duration = Duration::from_secs(10);

/// One request, high until acknowledged.
#[derive(Default)]
struct Controller {
    high: AtomicBool,
    acks: AtomicUsize,
}

impl ExtIntSource for Controller {
    fn pending(&self) -> bool {
        self.high.load(Ordering::SeqCst)
    }
    fn acknowledge(&self) -> u8 {
        self.acks.fetch_add(1, Ordering::SeqCst);
        self.high.store(false, Ordering::SeqCst);
        VECTOR
    }
}

/// Records port writes; vCPU 0's external interrupts come from `source`.
struct Io {
    writes: Mutex<Vec<(u16, Vec<u8>)>>,
    source: Arc<Controller>,
}

impl IoHandler for Io {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.writes.lock().unwrap().push((port, data.to_vec()));
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
    fn external_interrupts(&self, vcpu: u32) -> Option<Arc<dyn ExtIntSource>> {
        (vcpu == 0).then(|| Arc::clone(&self.source) as Arc<dyn ExtIntSource>)
    }
}

#[rustfmt::skip]
const WAITS: &[u8] = &[
    0xb0, 0x01,       // mov al, 1
    0xe6, 0x80,       // out 0x80, al: waiting
    0xfb,             // sti
    0xf4,             // hlt
    0xeb, 0xfd,       // jmp hlt
];

#[rustfmt::skip]
const TAKEN: &[u8] = &[
    0xb0, VECTOR,     // mov al, VECTOR
    0xe6, 0x80,       // out 0x80, al: taken
    0xfa,             // cli
    0xf4,             // hlt
    0xeb, 0xfd,       // jmp hlt
];

fn writes_until(io: &Io, n: usize) -> Vec<(u16, Vec<u8>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let w = io.writes.lock().unwrap().clone();
        if w.len() >= n || Instant::now() > deadline {
            return w;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_raised_output_and_a_kick_interrupt_a_halted_boot_vcpu() {
    let Some(kvm) = kvm() else { return };
    let vm = Vm::new(&kvm, &[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.create_split_irqchip(24).unwrap();
    let mem = vm.memory();
    mem.write_slice(WAITS, GuestAddress(CODE)).unwrap();
    mem.write_slice(TAKEN, GuestAddress(HANDLER)).unwrap();
    // The real-mode vector table: VECTOR at HANDLER (segment:offset).
    let ivt = [0u8, 0, (HANDLER >> 4) as u8, (HANDLER >> 12) as u8];
    mem.write_slice(&ivt, GuestAddress(u64::from(VECTOR) * 4))
        .unwrap();
    let source = Arc::new(Controller::default());
    let io = Arc::new(Io {
        writes: Mutex::new(Vec::new()),
        source: Arc::clone(&source),
    });
    let vcpus = Vcpus::spawn(&vm, 1, real_mode_init(CODE, 0), io.clone()).unwrap();
    vcpus.resume_all().unwrap();
    assert_eq!(writes_until(&io, 1), [(0x80, vec![1])], "the guest waits");
    assert_eq!(source.acks.load(Ordering::SeqCst), 0, "nothing raised yet");
    // The output rises on this thread; the kick brings the vCPU out of
    // its halt to inject.
    source.high.store(true, Ordering::SeqCst);
    vcpus.kicker(0).unwrap().kick();
    assert_eq!(
        writes_until(&io, 2),
        [(0x80, vec![1]), (0x80, vec![VECTOR])],
        "the vector taken"
    );
    assert_eq!(source.acks.load(Ordering::SeqCst), 1);
}
