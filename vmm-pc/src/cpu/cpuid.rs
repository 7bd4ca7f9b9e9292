//! Per-vCPU CPUID, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! [`vcpu_cpuid`] starts from what KVM can run and changes only what must
//! differ per vCPU or what we want to present differently:
//!
//! - **Topology**: one socket, one thread per core, `num_vcpus` cores,
//!   initial APIC ID = x2APIC ID = vCPU index (which must be the id the vCPU
//!   was created with, since KVM gives its local APIC that ID). Leaf 1
//!   (APIC ID, logical count, HTT), leaf 4 / 0x8000_001D (cache sharing),
//!   0xB / 0x1F (SMT and core levels), and on AMD 0x8000_0001 (CmpLegacy),
//!   0x8000_0008 ECX (core count) and 0x8000_001E (extended APIC ID) all
//!   tell the same story. Recent KVMs return only subleaf 0 of 0xB (Linux
//!   commit 45e966fcca03, noted by Firecracker), so subleaf 1 is added; KVM
//!   itself answers the higher, invalid subleaves with `ECX = index`,
//!   `EDX` = x2APIC ID once subleaf 1 exists.
//! - **Hypervisor present** (leaf 1 ECX bit 31).
//! - **No PMU**: we do not offer performance monitoring, so leaf 0xA is
//!   zeroed and the PDCM bit (leaf 1 ECX bit 15) cleared; on AMD the
//!   PerfCtrExtCore bit (0x8000_0001 ECX bit 23) and PerfMonV2 leaf
//!   0x8000_0022 go too. An AMD guest still assumes the four legacy K7
//!   counters exist; only `KVM_CAP_PMU_CAPABILITY` (`KVM_PMU_CAP_DISABLE`,
//!   a VM-wide capability set before creating vCPUs) really removes them.
//! - **KVM leaves**: 0x4000_0000 carries the "KVMKVMKVM\0\0\0" signature
//!   with `EAX` = 0x4000_0001, and 0x4000_0001 the paravirt features KVM
//!   reports (kvm-clock, PV EOI, ...), passed through unchanged. KVM always
//!   reports both; should a KVM not, we add them with just the kvm-clock
//!   bits ([`KVM_FEATURES_FALLBACK`]), which every KVM since Linux 2.6.35
//!   implements.
//!
//! Everything else, including address sizes in 0x8000_0008 `EAX` and the
//! TSC-deadline bit, stays as supported. KVM emulates the TSC-deadline timer
//! whenever the irqchip is in the kernel, but kernels before 6.x did not
//! report it in the supported CPUID; QEMU and Cloud Hypervisor set it when
//! `KVM_CAP_TSC_DEADLINE_TIMER` is present. Do so with
//! [`advertise_tsc_deadline`].

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use kvm_ioctls::VcpuFd;

use super::CpuError;

/// The most vCPUs a topology may have.
pub const MAX_VCPUS: u32 = crate::layout::MAX_CPUS;

/// The hypervisor's CPUID range: signature.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// The hypervisor's CPUID range: KVM paravirt features.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMK" "VMKV" "M\0\0\0" as `EBX`, `ECX`, `EDX`.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// KVM feature: kvm-clock at the old MSRs 0x11/0x12.
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
/// KVM feature: port 0x80 delays not needed.
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
/// KVM feature: kvm-clock at MSRs 0x4b564d00/01.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// KVM feature: async page faults.
pub const KVM_FEATURE_ASYNC_PF: u32 = 1 << 4;
/// KVM feature: steal time.
pub const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;
/// KVM feature: paravirtual end-of-interrupt.
pub const KVM_FEATURE_PV_EOI: u32 = 1 << 6;
/// KVM feature: paravirtual spinlock unhalt.
pub const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
/// KVM feature: the guest may trust the pvclock `TSC_STABLE` flag.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
/// What we offer in 0x4000_0001 if KVM supplied no such leaf: kvm-clock.
pub const KVM_FEATURES_FALLBACK: u32 =
    KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

/// Leaf 1 ECX: PDCM (`IA32_PERF_CAPABILITIES` present).
pub const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 ECX: TSC-deadline mode of the local APIC timer.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT, the logical-processor count in `EBX[23:16]` is valid.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// 0x8000_0001 ECX (AMD): CmpLegacy, HTT counts cores rather than threads.
pub const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// 0x8000_0001 ECX (AMD): core performance counter extensions.
pub const EXT1_ECX_PERFCTR_CORE: u32 = 1 << 23;

/// Level type "SMT" in leaves 0xB/0x1F `ECX[15:8]`.
const LEVEL_SMT: u32 = 1;
/// Level type "core" in leaves 0xB/0x1F `ECX[15:8]`.
const LEVEL_CORE: u32 = 2;

/// The topology one vCPU reports.
#[derive(Clone, Copy, Debug)]
struct Topology {
    /// Initial (x2)APIC ID, also the core ID: one thread per core.
    apic_id: u32,
    /// Cores (= logical CPUs) in the one package.
    num_vcpus: u32,
    /// x2APIC ID bits the core level takes: ceil(log2(num_vcpus)).
    core_bits: u32,
}

impl Topology {
    fn new(vcpu_index: u32, num_vcpus: u32) -> Result<Self, CpuError> {
        if num_vcpus == 0 || num_vcpus > MAX_VCPUS || vcpu_index >= num_vcpus {
            return Err(CpuError::Topology {
                vcpu_index,
                num_vcpus,
            });
        }
        Ok(Topology {
            apic_id: vcpu_index,
            num_vcpus,
            core_bits: u32::BITS - (num_vcpus - 1).leading_zeros(),
        })
    }

    /// APIC IDs reserved for the package (a power of two).
    fn ids_per_package(&self) -> u32 {
        1 << self.core_bits
    }
}

/// Sets `value` into bits `shift..shift+width` of `reg`.
fn set_field(reg: &mut u32, shift: u32, width: u32, value: u32) {
    let mask = ((1u64 << width) - 1) as u32;
    *reg = (*reg & !(mask << shift)) | ((value & mask) << shift);
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= bit;
    } else {
        *reg &= !bit;
    }
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    const AUTHENTIC_AMD_EBX: u32 = 0x6874_7541; // "Auth"
    const HYGON_GENUINE_EBX: u32 = 0x6f67_7948; // "Hygo"
    entries
        .iter()
        .find(|e| e.function == 0 && e.index == 0)
        .is_some_and(|e| e.ebx == AUTHENTIC_AMD_EBX || e.ebx == HYGON_GENUINE_EBX)
}

fn max_basic_leaf(entries: &[kvm_cpuid_entry2]) -> u32 {
    entries
        .iter()
        .find(|e| e.function == 0 && e.index == 0)
        .map_or(0, |e| e.eax)
}

/// The entry for `function`/`index`, added (zeroed, with `flags`) if missing.
fn entry_mut(
    entries: &mut Vec<kvm_cpuid_entry2>,
    function: u32,
    index: u32,
    flags: u32,
) -> &mut kvm_cpuid_entry2 {
    let pos = match entries
        .iter()
        .position(|e| e.function == function && e.index == index)
    {
        Some(pos) => pos,
        None => {
            entries.push(kvm_cpuid_entry2 {
                function,
                index,
                flags,
                ..Default::default()
            });
            entries.len() - 1
        }
    };
    &mut entries[pos]
}

/// The CPUID for vCPU `vcpu_index` of `num_vcpus`, from KVM's supported
/// CPUID (see the module docs for what changes).
///
/// # Errors
/// [`CpuError::Topology`] unless `vcpu_index < num_vcpus <= MAX_VCPUS`;
/// [`CpuError::TooManyEntries`] if the added leaves overflow
/// `KVM_MAX_CPUID_ENTRIES`.
pub fn vcpu_cpuid(supported: &CpuId, vcpu_index: u32, num_vcpus: u32) -> Result<CpuId, CpuError> {
    let topo = Topology::new(vcpu_index, num_vcpus)?;
    let mut entries = supported.as_slice().to_vec();
    let amd = is_amd(&entries);
    let max_basic = max_basic_leaf(&entries);

    for e in &mut entries {
        match e.function {
            0x1 => leaf_1(e, &topo),
            0x4 => cache_leaf(e, &topo, true),
            0xa => clear(e),
            0xb | 0x1f => topology_subleaf(e, &topo),
            0x8000_0001 if amd => {
                set_bit(&mut e.ecx, EXT1_ECX_CMP_LEGACY, topo.num_vcpus > 1);
                set_bit(&mut e.ecx, EXT1_ECX_PERFCTR_CORE, false);
            }
            // NC (cores - 1) in ECX[7:0], ApicIdCoreIdSize in ECX[15:12].
            0x8000_0008 if amd => {
                set_field(&mut e.ecx, 0, 8, topo.num_vcpus - 1);
                set_field(&mut e.ecx, 12, 4, topo.core_bits);
            }
            0x8000_001d => cache_leaf(e, &topo, false),
            0x8000_001e => {
                e.eax = topo.apic_id;
                // Threads per compute unit - 1 (0) in EBX[15:8], core ID below.
                e.ebx = topo.apic_id & 0xff;
                // One node per processor, node 0.
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0022 if amd => clear(e),
            _ => {}
        }
    }

    // Leaf 0xB needs subleaves 0 and 1; 0x1F too if KVM reported it at all.
    let has_1f = entries.iter().any(|e| e.function == 0x1f);
    for (function, wanted) in [(0xb, max_basic >= 0xb), (0x1f, has_1f)] {
        if !wanted {
            continue;
        }
        for index in 0..2 {
            let flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
            topology_subleaf(entry_mut(&mut entries, function, index, flags), &topo);
        }
    }

    let sig = entry_mut(&mut entries, KVM_CPUID_SIGNATURE, 0, 0);
    sig.eax = sig.eax.max(KVM_CPUID_FEATURES);
    [sig.ebx, sig.ecx, sig.edx] = KVM_SIGNATURE;
    if !entries.iter().any(|e| e.function == KVM_CPUID_FEATURES) {
        entry_mut(&mut entries, KVM_CPUID_FEATURES, 0, 0).eax = KVM_FEATURES_FALLBACK;
    }

    CpuId::from_entries(&entries).map_err(|_| CpuError::TooManyEntries("CPUID"))
}

fn clear(e: &mut kvm_cpuid_entry2) {
    (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
}

fn leaf_1(e: &mut kvm_cpuid_entry2, topo: &Topology) {
    // EBX[31:24] initial APIC ID; EBX[23:16] addressable logical CPUs in the
    // package (the SDM rounds it up to a power of two itself).
    set_field(&mut e.ebx, 24, 8, topo.apic_id);
    set_field(&mut e.ebx, 16, 8, topo.num_vcpus);
    set_bit(&mut e.edx, LEAF1_EDX_HTT, topo.num_vcpus > 1);
    set_bit(&mut e.ecx, LEAF1_ECX_HYPERVISOR, true);
    set_bit(&mut e.ecx, LEAF1_ECX_PDCM, false);
}

/// Leaf 4 (Intel) and 0x8000_001D (AMD): deterministic cache parameters.
/// L1 and L2 belong to one core (one thread), L3 to the whole package.
fn cache_leaf(e: &mut kvm_cpuid_entry2, topo: &Topology, intel: bool) {
    let cache_type = e.eax & 0x1f;
    if cache_type == 0 {
        return; // No more caches.
    }
    let level = (e.eax >> 5) & 0x7;
    let sharing = if level >= 3 {
        topo.ids_per_package() - 1
    } else {
        0
    };
    // EAX[25:14]: addressable IDs sharing this cache - 1.
    set_field(&mut e.eax, 14, 12, sharing);
    if intel {
        // EAX[31:26]: addressable core IDs in the package - 1.
        set_field(&mut e.eax, 26, 6, (topo.ids_per_package() - 1).min(63));
    }
}

/// Leaves 0xB and 0x1F: subleaf 0 is the SMT level (one thread, no ID
/// bits), subleaf 1 the core level (`num_vcpus` CPUs, `core_bits` bits),
/// anything higher the invalid level that ends the list.
fn topology_subleaf(e: &mut kvm_cpuid_entry2, topo: &Topology) {
    let (shift, count, level_type) = match e.index {
        0 => (0, 1, LEVEL_SMT),
        1 => (topo.core_bits, topo.num_vcpus, LEVEL_CORE),
        _ => (0, 0, 0),
    };
    e.eax = shift;
    e.ebx = count;
    e.ecx = (level_type << 8) | (e.index & 0xff);
    e.edx = topo.apic_id;
    e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
}

/// Sets the TSC-deadline bit (leaf 1 ECX bit 24) in a supported CPUID
/// whose KVM did not report it; call it when `KVM_CAP_TSC_DEADLINE_TIMER`
/// is present and the irqchip is in the kernel.
pub fn advertise_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

/// Sets `cpuid` on `vcpu` (`KVM_SET_CPUID2`; must precede its first run).
pub fn apply_cpuid(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid)
        .map_err(CpuError::ioctl("KVM_SET_CPUID2"))
}

#[cfg(test)]
#[path = "cpuid_tests.rs"]
mod tests;
