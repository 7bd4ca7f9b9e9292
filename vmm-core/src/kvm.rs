//! Opening `/dev/kvm` and checking that it can run our machine
//! (QEMU's `kvm_init`).

use std::io;

use kvm_ioctls::{Cap, Kvm};

/// The KVM API version every kernel since 2.6.22 reports.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the PC machine relies on, each with why.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (
        Cap::UserMemory,
        "guest RAM is registered as user memory slots",
    ),
    (
        Cap::SetTssAddr,
        "Intel hosts need the TSS pages placed below 4 GiB",
    ),
    (
        Cap::Irqchip,
        "the PIC, IO-APIC and local APICs are emulated in the kernel",
    ),
    (Cap::Irqfd, "device interrupts are delivered through irqfds"),
    (
        Cap::ImmediateExit,
        "vCPUs are stopped with immediate_exit plus a signal",
    ),
    (Cap::MpState, "application processors wait for INIT/SIPI"),
    (Cap::ExtCpuid, "CPUID is set per vCPU"),
];

/// Why `/dev/kvm` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node does not exist.
    #[error(
        "/dev/kvm does not exist: load the KVM module for this CPU (modprobe kvm_intel or kvm_amd), \
         enable virtualization in the firmware, or enable nested virtualization if this is a VM"
    )]
    NotFound,
    /// The device exists but this user may not open it.
    #[error(
        "permission denied opening /dev/kvm: add this user to the group owning it \
         (usually `kvm`: sudo usermod -aG kvm $USER, then log in again)"
    )]
    PermissionDenied,
    /// Some other error while opening.
    #[error("cannot open /dev/kvm")]
    Open(#[source] io::Error),
    /// The kernel speaks another KVM API version.
    #[error("KVM API version {found}, expected {KVM_API_VERSION}")]
    ApiVersion {
        /// What the kernel reported.
        found: i32,
    },
    /// A capability the machine needs is missing.
    #[error("KVM lacks capability {cap:?}, needed because {why}")]
    MissingCap {
        /// The capability.
        cap: Cap,
        /// Why the machine needs it.
        why: &'static str,
    },
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Another ioctl on `/dev/kvm` failed.
    #[error("{what} failed")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Which hypervisor module provides `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavor {
    /// Hardware virtualization (Intel VMX).
    Intel,
    /// Hardware virtualization (AMD SVM).
    Amd,
    /// PVM, a software hypervisor: small guests run, unmodified Linux does not.
    Pvm,
    /// None of the above could be told apart.
    Unknown,
}

impl KvmFlavor {
    /// Reads `/sys/module` to tell which module serves `/dev/kvm`.
    pub fn detect() -> Self {
        let has = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
        if has("kvm_pvm") {
            Self::Pvm
        } else if has("kvm_intel") {
            Self::Intel
        } else if has("kvm_amd") {
            Self::Amd
        } else {
            Self::Unknown
        }
    }

    /// Whether this KVM can boot an unmodified Linux kernel.
    pub fn runs_linux(self) -> bool {
        !matches!(self, Self::Pvm)
    }
}

/// An open, checked `/dev/kvm`.
#[derive(Debug)]
pub struct KvmSystem {
    kvm: Kvm,
}

impl KvmSystem {
    /// Opens `/dev/kvm` and checks the API version and [`REQUIRED_CAPS`].
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT => KvmError::NotFound,
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
            _ => KvmError::Open(io::Error::from_raw_os_error(e.errno())),
        })?;
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION {
            return Err(KvmError::ApiVersion { found });
        }
        if let Some((cap, why)) = REQUIRED_CAPS.iter().find(|(c, _)| !kvm.check_extension(*c)) {
            return Err(KvmError::MissingCap { cap: *cap, why });
        }
        Ok(Self { kvm })
    }

    /// The most vCPUs one VM may have.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The CPUID entries this KVM can expose (`KVM_GET_SUPPORTED_CPUID`).
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| KvmError::Ioctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })
    }

    /// The underlying handle, for the few calls not wrapped here.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}

/// The environment variable that makes KVM tests fail instead of skipping
/// when `/dev/kvm` is unusable (`cargo xtask test` sets it wherever
/// `/dev/kvm` exists).
pub const REQUIRE_KVM_ENV: &str = "VMM_REQUIRE_KVM";

/// Whether [`REQUIRE_KVM_ENV`] is `1`: KVM tests must run, not skip.
pub fn required_for_tests() -> bool {
    std::env::var_os(REQUIRE_KVM_ENV).is_some_and(|v| v == "1")
}

/// For tests that need KVM: `true` when `/dev/kvm` is usable. Otherwise
/// prints a SKIP line naming `test` and returns `false`, or panics if
/// [`REQUIRE_KVM_ENV`] is `1`, so that a KVM test never skips silently.
pub fn usable_for_tests(test: &str) -> bool {
    match KvmSystem::open() {
        Ok(_) => true,
        Err(e) if required_for_tests() => {
            panic!("{test}: {REQUIRE_KVM_ENV}=1 but KVM is unusable: {e}")
        }
        Err(e) => {
            eprintln!("SKIP {test}: needs /dev/kvm: {e}");
            false
        }
    }
}
