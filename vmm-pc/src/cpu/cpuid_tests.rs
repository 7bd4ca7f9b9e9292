//! Tests of [`super::vcpu_cpuid`] on fabricated supported CPUIDs.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};

use super::*;

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    let flags = match function {
        0x4 | 0xb | 0x1f | 0x8000_001d => KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        _ => 0,
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// Shaped like an Intel host's KVM_GET_SUPPORTED_CPUID: leaf 4 caches,
/// 0xB and 0x1F with only subleaf 0 (host x2APIC ID 5 leaking through),
/// an architectural PMU, and the KVM leaves.
fn intel() -> CpuId {
    CpuId::from_entries(&[
        entry(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
        entry(
            1,
            0,
            [
                0x806f8,
                0x0510_0800,
                0x7efa_fbff | LEAF1_ECX_PDCM,
                0xbfeb_fbff,
            ],
        ),
        entry(4, 0, [0x1c00_4121, 0x02c0_003f, 0x3f, 0]), // L1d
        entry(4, 1, [0x1c00_4122, 0x01c0_003f, 0x3f, 0]), // L1i
        entry(4, 2, [0x1c00_4143, 0x03c0_003f, 0x7ff, 0]), // L2
        entry(4, 3, [0x1c03_c163, 0x0380_003f, 0xbfff, 4]), // L3
        entry(4, 4, [0, 0, 0, 0]),
        entry(0xa, 0, [0x0804_8602, 0, 0, 0x8603]),
        entry(0xb, 0, [1, 2, 0x100, 5]),
        entry(0x1f, 0, [1, 2, 0x100, 5]),
        entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
        entry(0x8000_0008, 0, [0x3027, 0, 0, 0]),
        entry(
            KVM_CPUID_SIGNATURE,
            0,
            [KVM_CPUID_FEATURES, 0x4b4d_564b, 0x564b_4d56, 0x4d],
        ),
        entry(KVM_CPUID_FEATURES, 0, [0x0100_7efb, 0, 0, 0]),
    ])
    .unwrap()
}

/// Shaped like this project's AMD host under PVM: 0x8000_001D caches,
/// 0x8000_001E zeroed by KVM, 0x8000_0008 ECX with the host's core count,
/// and no KVM leaves (to check they get added).
fn amd() -> CpuId {
    CpuId::from_entries(&[
        entry(0, 0, [0x1c, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
        entry(1, 0, [0x00b0_0f21, 0x0102_0800, 0x8120_2000, 0x078b_fbff]),
        entry(0xb, 0, [0, 0, 0, 1]),
        entry(
            0x8000_0000,
            0,
            [0x8000_0022, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
        ),
        entry(
            0x8000_0001,
            0,
            [
                0x00b0_0f21,
                0,
                0x0040_0393 | EXT1_ECX_PERFCTR_CORE,
                0x23d3_fbff,
            ],
        ),
        entry(0x8000_0008, 0, [0x3030, 0x5002_0005, 0x7001, 0]),
        entry(0x8000_001d, 0, [0x121, 0x02c0_003f, 0x3f, 0]),
        entry(0x8000_001d, 2, [0x143, 0x03c0_003f, 0x3ff, 2]),
        entry(0x8000_001d, 3, [0x0001_c163, 0x03c0_003f, 0x7fff, 1]),
        entry(0x8000_001e, 0, [0, 0, 0, 0]),
        entry(0x8000_0022, 0, [0x7, 0x4, 0, 0]),
    ])
    .unwrap()
}

fn get(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
    *cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .unwrap_or_else(|| panic!("no leaf {function:#x}/{index}"))
}

fn count(cpuid: &CpuId, function: u32, index: u32) -> usize {
    cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function == function && e.index == index)
        .count()
}

#[test]
fn apic_id_per_vcpu() {
    for supported in [intel(), amd()] {
        for index in 0..4 {
            let c = vcpu_cpuid(&supported, index, 4).unwrap();
            assert_eq!(get(&c, 1, 0).ebx >> 24, index);
            assert_eq!(get(&c, 0xb, 0).edx, index);
            assert_eq!(get(&c, 0xb, 1).edx, index);
        }
    }
    let c = vcpu_cpuid(&intel(), 6, 7).unwrap();
    assert_eq!(get(&c, 0x1f, 0).edx, 6);
    assert_eq!(get(&c, 0x1f, 1).edx, 6);
    let c = vcpu_cpuid(&amd(), 2, 3).unwrap();
    assert_eq!(get(&c, 0x8000_001e, 0).eax, 2);
    assert_eq!(get(&c, 0x8000_001e, 0).ebx, 2);
}

#[test]
fn leaf_1_fields() {
    let c = vcpu_cpuid(&intel(), 1, 3).unwrap();
    let l1 = get(&c, 1, 0);
    assert_eq!(
        l1.ebx, 0x0103_0800,
        "APIC ID 1, 3 logical CPUs, CLFLUSH 8 kept"
    );
    assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
    assert_eq!(l1.ecx & LEAF1_ECX_PDCM, 0);
    assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
    // Other feature bits are as supported.
    let s = get(&intel(), 1, 0);
    assert_eq!(l1.eax, s.eax);
    let changed = LEAF1_ECX_PDCM | LEAF1_ECX_HYPERVISOR;
    assert_eq!(l1.ecx & !changed, s.ecx & !changed);

    let single = get(&vcpu_cpuid(&intel(), 0, 1).unwrap(), 1, 0);
    assert_eq!(single.edx & LEAF1_EDX_HTT, 0);
    assert_eq!((single.ebx >> 16) & 0xff, 1);
}

#[test]
fn tsc_deadline_only_when_supported() {
    let plain = get(&vcpu_cpuid(&intel(), 0, 1).unwrap(), 1, 0);
    assert_eq!(plain.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    // The AMD fabrication reports it, as this host's KVM does.
    let amd_l1 = get(&vcpu_cpuid(&amd(), 0, 1).unwrap(), 1, 0);
    assert_ne!(amd_l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);

    let mut supported = intel();
    advertise_tsc_deadline(&mut supported);
    let l1 = get(&vcpu_cpuid(&supported, 0, 1).unwrap(), 1, 0);
    assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
}

#[test]
fn extended_topology_levels() {
    for (num, bits) in [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (254, 8)] {
        let c = vcpu_cpuid(&intel(), num - 1, num).unwrap();
        for leaf in [0xb, 0x1f] {
            let smt = get(&c, leaf, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100), "leaf {leaf:#x}");
            let core = get(&c, leaf, 1);
            assert_eq!(
                (core.eax, core.ebx, core.ecx),
                (bits, num, 0x201),
                "{num} vCPUs"
            );
            assert_eq!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 1);
            assert_eq!(count(&c, leaf, 1), 1);
        }
        // The package ID (x2APIC ID >> core shift) is 0 for every vCPU.
        assert_eq!((num - 1) >> bits, 0);
    }
}

#[test]
fn higher_topology_subleaves_become_invalid() {
    let mut entries = intel().as_slice().to_vec();
    entries.push(entry(0xb, 2, [5, 16, 0x502, 5]));
    let c = vcpu_cpuid(&CpuId::from_entries(&entries).unwrap(), 3, 4).unwrap();
    let e = get(&c, 0xb, 2);
    assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 2, 3));
}

#[test]
fn leaf_0x1f_is_not_invented() {
    let c = vcpu_cpuid(&amd(), 0, 2).unwrap();
    assert!(!c.as_slice().iter().any(|e| e.function == 0x1f));
    // But 0xB (within the max basic leaf 0x1c) gets its core level.
    assert_eq!(get(&c, 0xb, 1).ebx, 2);
}

#[test]
fn intel_cache_sharing() {
    let c = vcpu_cpuid(&intel(), 0, 6).unwrap();
    for (index, sharing) in [(0, 0), (1, 0), (2, 0), (3, 7)] {
        let eax = get(&c, 4, index).eax;
        assert_eq!((eax >> 14) & 0xfff, sharing, "subleaf {index}");
        assert_eq!(eax >> 26, 7, "8 core IDs per package");
        assert_eq!(eax & 0x3fff, get(&intel(), 4, index).eax & 0x3fff);
    }
    assert_eq!(get(&c, 4, 4).eax, 0, "the terminating subleaf stays empty");
}

#[test]
fn amd_topology() {
    let c = vcpu_cpuid(&amd(), 1, 4).unwrap();
    let ext8 = get(&c, 0x8000_0008, 0);
    assert_eq!(ext8.ecx, 0x2003, "ApicIdCoreIdSize 2, NC 3");
    assert_eq!(ext8.eax, 0x3030, "address sizes as supported");
    let ext1 = get(&c, 0x8000_0001, 0);
    assert_ne!(ext1.ecx & EXT1_ECX_CMP_LEGACY, 0);
    assert_eq!(ext1.ecx & EXT1_ECX_PERFCTR_CORE, 0);
    assert_ne!(ext1.ecx & (1 << 22), 0, "TOPOEXT kept");
    for (index, sharing) in [(0, 0), (2, 0), (3, 3)] {
        assert_eq!((get(&c, 0x8000_001d, index).eax >> 14) & 0xfff, sharing);
    }
    let ext1e = get(&c, 0x8000_001e, 0);
    assert_eq!((ext1e.eax, ext1e.ebx, ext1e.ecx, ext1e.edx), (1, 1, 0, 0));

    let single = vcpu_cpuid(&amd(), 0, 1).unwrap();
    assert_eq!(get(&single, 0x8000_0008, 0).ecx, 0);
    assert_eq!(get(&single, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
}

#[test]
fn pmu_is_hidden() {
    let c = vcpu_cpuid(&intel(), 0, 2).unwrap();
    let a = get(&c, 0xa, 0);
    assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
    let c = vcpu_cpuid(&amd(), 0, 2).unwrap();
    assert_eq!(get(&c, 0x8000_0022, 0).eax, 0);
}

#[test]
fn kvm_leaves_pass_through() {
    let c = vcpu_cpuid(&intel(), 0, 2).unwrap();
    let sig = get(&c, KVM_CPUID_SIGNATURE, 0);
    assert_eq!(sig.eax, KVM_CPUID_FEATURES);
    assert_eq!([sig.ebx, sig.ecx, sig.edx], KVM_SIGNATURE);
    assert_eq!(get(&c, KVM_CPUID_FEATURES, 0).eax, 0x0100_7efb);
    assert_eq!(count(&c, KVM_CPUID_SIGNATURE, 0), 1);
    assert_eq!(count(&c, KVM_CPUID_FEATURES, 0), 1);
}

#[test]
fn kvm_leaves_added_if_missing() {
    let c = vcpu_cpuid(&amd(), 0, 1).unwrap();
    let sig = get(&c, KVM_CPUID_SIGNATURE, 0);
    let bytes: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    assert_eq!(&bytes, b"KVMKVMKVM\0\0\0");
    assert_eq!(sig.eax, KVM_CPUID_FEATURES);
    let features = get(&c, KVM_CPUID_FEATURES, 0).eax;
    assert_eq!(features, KVM_FEATURES_FALLBACK);
    assert_ne!(features & KVM_FEATURE_CLOCKSOURCE2, 0);
    assert_ne!(features & KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, 0);
}

#[test]
fn supported_is_not_modified() {
    let supported = intel();
    let before = supported.as_slice().to_vec();
    vcpu_cpuid(&supported, 1, 2).unwrap();
    assert_eq!(supported.as_slice(), &before[..]);
}

#[test]
fn bad_topology_is_refused() {
    for (index, num) in [(0, 0), (2, 2), (0, MAX_VCPUS + 1)] {
        assert!(matches!(
            vcpu_cpuid(&intel(), index, num),
            Err(CpuError::Topology { .. })
        ));
    }
    assert!(vcpu_cpuid(&intel(), MAX_VCPUS - 1, MAX_VCPUS).is_ok());
}

#[test]
fn overflowing_kvm_max_entries_is_an_error() {
    let full: Vec<kvm_cpuid_entry2> = (0..KVM_MAX_CPUID_ENTRIES as u32)
        .map(|i| entry(0x8000_0100 + i, 0, [0; 4]))
        .collect();
    let supported = CpuId::from_entries(&full).unwrap();
    assert!(matches!(
        vcpu_cpuid(&supported, 0, 1),
        Err(CpuError::TooManyEntries("CPUID"))
    ));
}
