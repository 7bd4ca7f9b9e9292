//! `cargo xtask run [-- VMM-ARGS]`: boot the default guest to a shell.
//!
//! With hardware KVM the VMM runs directly in this terminal. Where
//! `/dev/kvm` is PVM, which cannot run unmodified Linux under any VMM, the
//! same VMM and guest run nested in the test bed (an L1 kernel under
//! QEMU/TCG with a real KVM), this terminal reaching L1's console and so
//! the VMM's; Ctrl-A x still quits.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use vmm_testbed::{HostKvm, Job};

use crate::{cmd, guest};

/// Builds the release VMM and returns its path.
pub fn build_vmm() -> Result<PathBuf> {
    cmd::run(&mut cmd::cargo([
        "build",
        "--release",
        "--quiet",
        "--package",
        "vmm-cli",
    ]))?;
    Ok(cmd::root().join("target/release/vmm"))
}

/// `cargo xtask run`.
pub fn task(args: &[String]) -> Result<()> {
    let user: Vec<String> = match args.first().map(String::as_str) {
        Some("--") => args[1..].to_vec(),
        _ => args.to_vec(),
    };
    let host = HostKvm::detect();
    if host == HostKvm::Missing {
        bail!("this host has no /dev/kvm: load kvm_intel or kvm_amd (or enable nested virtualization)");
    }
    let vmm = build_vmm()?;
    let g = guest::ensure()?;
    let mut vmm_args = user.clone();
    if !user.iter().any(|a| a == "--kernel") {
        vmm_args.extend(["--kernel".into(), g.paths.bzimage.display().to_string()]);
        if !user.iter().any(|a| a == "--initrd") {
            vmm_args.extend(["--initrd".into(), g.paths.initramfs.display().to_string()]);
        }
    }
    match host.why_not_direct() {
        None => {
            let status = Command::new(&vmm)
                .args(&vmm_args)
                .status()
                .with_context(|| format!("cannot start {}", vmm.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Some(why) => {
            eprintln!(
                "xtask run: {why}; running the same VMM and guest nested in the test bed \
                 (QEMU/TCG with a real KVM inside), about 20-30 s to the shell. Ctrl-A x quits."
            );
            let job = nested_job(&vmm_args)?;
            let status = vmm_testbed::run_nested_interactive(&g.paths, &vmm, &job)?;
            std::process::exit(status);
        }
    }
}

/// The nested job: host files named by `--kernel`/`--initrd` travel into L1
/// under their base names.
fn nested_job(args: &[String]) -> Result<Job> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a == "--kernel" || a == "--initrd" {
            let path = Path::new(it.next().with_context(|| format!("{a} needs a path"))?);
            let name = path
                .file_name()
                .with_context(|| format!("{} is not a file", path.display()))?
                .to_string_lossy()
                .into_owned();
            files.push((name.clone(), path.to_owned()));
            out.push(name);
        }
    }
    let mut job = Job::new(out);
    for (name, path) in files {
        job = job.file(&name, &path);
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_become_job_files() {
        let args: Vec<String> = [
            "--kernel",
            "/a/b/bzImage",
            "--cpus",
            "2",
            "--initrd",
            "/c/init.cpio",
        ]
        .map(String::from)
        .to_vec();
        let job = nested_job(&args).unwrap();
        assert_eq!(
            job.args,
            [
                "--kernel",
                "bzImage",
                "--cpus",
                "2",
                "--initrd",
                "init.cpio"
            ]
        );
        assert_eq!(
            job.files,
            [
                ("bzImage".to_owned(), PathBuf::from("/a/b/bzImage")),
                ("init.cpio".to_owned(), PathBuf::from("/c/init.cpio"))
            ]
        );
        assert!(nested_job(&["--kernel".to_owned()]).is_err());
    }
}
