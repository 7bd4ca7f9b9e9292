//! Which KVM this host has, and so where Linux guests can boot.

use std::path::Path;

/// The host's `/dev/kvm`, as far as booting Linux is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware virtualization (`kvm_intel` or `kvm_amd`): Linux boots
    /// directly under our VMM.
    Hardware,
    /// PVM (`kvm_pvm`), a software hypervisor: small guests run, unmodified
    /// Linux kernels do not (under any VMM), so Linux boots in the test bed.
    Pvm,
    /// No usable `/dev/kvm`.
    Missing,
}

impl HostKvm {
    /// Looks at `/dev/kvm` and `/sys/module`.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    /// As [`HostKvm::detect`], with `root` standing for `/` (for tests).
    pub fn detect_in(root: &Path) -> Self {
        let module = |m: &str| root.join("sys/module").join(m).exists();
        if !root.join("dev/kvm").exists() {
            Self::Missing
        } else if module("kvm_pvm") {
            Self::Pvm
        } else if module("kvm_intel") || module("kvm_amd") {
            Self::Hardware
        } else {
            // A /dev/kvm from elsewhere (built-in KVM shows no module
            // folder for the vendor part on some kernels): treat it as the
            // real thing.
            Self::Hardware
        }
    }

    /// The reason Linux cannot boot directly here, if it cannot.
    pub fn why_not_direct(self) -> Option<&'static str> {
        match self {
            Self::Hardware => None,
            Self::Pvm => Some(
                "this host's /dev/kvm is PVM (kvm_pvm), a software hypervisor that cannot run \
                 unmodified Linux kernels under any VMM",
            ),
            Self::Missing => Some("this host has no /dev/kvm"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(entries: &[&str]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "vmm-testbed-host-{}-{}",
            std::process::id(),
            entries.join("+").replace('/', "_")
        ));
        let _ = std::fs::remove_dir_all(&root);
        for e in entries {
            let p = root.join(e);
            if e.starts_with("dev/") {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, b"").unwrap();
            } else {
                std::fs::create_dir_all(&p).unwrap();
            }
        }
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn kinds() {
        let cases = [
            (vec![], HostKvm::Missing),
            (vec!["sys/module/kvm_intel"], HostKvm::Missing),
            (vec!["dev/kvm", "sys/module/kvm_pvm"], HostKvm::Pvm),
            (vec!["dev/kvm", "sys/module/kvm_intel"], HostKvm::Hardware),
            (vec!["dev/kvm", "sys/module/kvm_amd"], HostKvm::Hardware),
        ];
        for (entries, want) in cases {
            let root = fake_root(&entries);
            assert_eq!(HostKvm::detect_in(&root), want, "{entries:?}");
            let _ = std::fs::remove_dir_all(&root);
        }
        assert!(HostKvm::Pvm.why_not_direct().unwrap().contains("PVM"));
        assert!(HostKvm::Hardware.why_not_direct().is_none());
    }
}
