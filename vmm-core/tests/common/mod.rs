//! What the `/dev/kvm` test files share: KVM or a SKIP, and a vCPU's start
//! in real mode.

#![allow(dead_code)] // each test file uses a part

use std::sync::Arc;

use vmm_core::kvm::KvmSystem;
use vmm_core::vcpu::VcpuInit;

/// `/dev/kvm`, or `None` after printing SKIP (a failure instead with
/// `VMM_REQUIRE_KVM=1`).
pub fn kvm() -> Option<KvmSystem> {
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    vmm_core::kvm::usable_for_tests(&test).then(|| KvmSystem::open().unwrap())
}

/// vCPU `i` starts in real mode at CS:IP = (`code` + i * `stride`)/16 : 0.
pub fn real_mode_init(code: u64, stride: u64) -> VcpuInit {
    Arc::new(move |vcpu, index| {
        let mut sregs = vcpu.get_sregs()?;
        let entry = code + u64::from(index) * stride;
        sregs.cs.base = entry;
        sregs.cs.selector = u16::try_from(entry >> 4)?;
        vcpu.set_sregs(&sregs)?;
        let mut regs = vcpu.get_regs()?;
        regs.rip = 0;
        regs.rflags = 2;
        vcpu.set_regs(&regs)?;
        Ok(())
    })
}
