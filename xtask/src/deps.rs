//! `cargo xtask check-deps`: the crate boundaries that the design promises.
//!
//! `vmm-runstate`, `vmm-clock`, `vmm-devices`, `vmm-pci`, `vmm-virtio`,
//! `vmm-qmp` and `vmm-gdb` must not reach KVM, not even through another crate: that is
//! what lets their tests run anywhere. And `vmm-runstate` has no dependency
//! at all.

use anyhow::{bail, Result};

use crate::cmd;

/// Crates that must not depend on KVM (when they are workspace members).
const KVM_FREE: &[&str] = &[
    "vmm-runstate",
    "vmm-clock",
    "vmm-devices",
    "vmm-pci",
    "vmm-qom",
    "vmm-virtio",
    "vmm-qmp",
    "vmm-gdb",
];
/// Crates that must not appear below a KVM-free crate.
const KVM_CRATES: &[&str] = &["kvm-ioctls", "kvm-bindings"];
/// Crates that must have no normal dependencies at all.
const NO_DEPS: &[&str] = &["vmm-runstate"];

/// The crate names in the normal-dependency tree of `package`, itself included.
fn normal_deps(package: &str) -> Result<Vec<String>> {
    let out = cmd::output(&mut cmd::cargo([
        "tree",
        "--package",
        package,
        "--edges",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn members() -> Result<Vec<String>> {
    let out = cmd::output(&mut cmd::cargo([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Only names of members are needed; avoid a JSON dependency by checking
    // each candidate's `"name":"<crate>"` in the metadata.
    Ok(KVM_FREE
        .iter()
        .filter(|c| text.contains(&format!("\"name\":\"{c}\"")))
        .map(|c| (*c).to_owned())
        .collect())
}

/// The rules that `krate`, whose dependency tree holds `deps`, breaks.
fn violations(krate: &str, deps: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for kvm in KVM_CRATES {
        if deps.iter().any(|d| d == kvm) {
            problems.push(format!("{krate} depends on {kvm}"));
        }
    }
    if NO_DEPS.contains(&krate) {
        let others: Vec<_> = deps.iter().filter(|d| *d != krate).collect();
        if !others.is_empty() {
            problems.push(format!("{krate} must have no dependencies, has {others:?}"));
        }
    }
    problems
}

/// Fails if a KVM-free crate reaches a KVM crate or a no-deps crate has deps.
pub fn check() -> Result<()> {
    let mut problems = Vec::new();
    for krate in members()? {
        let deps = normal_deps(&krate)?;
        let found = violations(&krate, &deps);
        if found.is_empty() {
            eprintln!("xtask: check-deps: {krate}: {} crates, no KVM", deps.len());
        }
        problems.extend(found);
    }
    if !problems.is_empty() {
        bail!("dependency rules broken:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn kvm_below_a_kvm_free_crate_is_refused() {
        let deps = names(&["vmm-clock", "event-manager", "kvm-bindings"]);
        assert_eq!(
            violations("vmm-clock", &deps),
            ["vmm-clock depends on kvm-bindings"]
        );
    }

    #[test]
    fn runstate_may_have_no_dependency() {
        assert!(violations("vmm-runstate", &names(&["vmm-runstate"])).is_empty());
        let found = violations("vmm-runstate", &names(&["vmm-runstate", "libc"]));
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("libc"));
    }

    #[test]
    fn clean_tree_passes() {
        let deps = names(&["vmm-devices", "vm-superio", "vmm-sys-util", "libc"]);
        assert!(violations("vmm-devices", &deps).is_empty());
    }
}
