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
use vmm_testbed::{Bridges, HostKvm, Job};

use crate::{cmd, guest, target};

mod args;
mod qmp_bridge;

use args::{VmmArgs, Word};

/// Builds the release VMM and returns its path.
pub fn build_vmm() -> Result<PathBuf> {
    // Cargo's own progress shows while a first build runs (a minute or
    // two); a warm build is one "Finished" line.
    eprintln!("xtask run: building the VMM (release)");
    cmd::run_quietly(&mut target::release_build(&["--package", "vmm-cli"])?)?;
    Ok(target::vmm())
}

/// `cargo xtask run`: ends the process with the VMM's exit status.
pub fn task(args: &[String]) -> Result<()> {
    let user: Vec<String> = match args.first().map(String::as_str) {
        Some("--") => args[1..].to_vec(),
        _ => args.to_vec(),
    };
    let mut vmm_args = VmmArgs::parse(&user);
    let vmm = build_vmm()?;
    if vmm_args.wants_help() {
        // Help needs neither KVM nor a guest.
        exit_with(Command::new(&vmm).args(&user).status(), &vmm);
    }
    let host = HostKvm::detect();
    if host == HostKvm::Missing {
        bail!("this host has no /dev/kvm: load kvm_intel or kvm_amd (or enable nested virtualization)");
    }
    let g = guest::ensure()?;
    if !vmm_args.has("--kernel") {
        vmm_args.0.push(Word::Opt(
            "--kernel".into(),
            Some(g.paths.bzimage.display().to_string()),
        ));
        if !vmm_args.has("--initrd") {
            vmm_args.0.push(Word::Opt(
                "--initrd".into(),
                Some(g.paths.initramfs.display().to_string()),
            ));
        }
    }
    match host.why_not_direct() {
        None => exit_with(Command::new(&vmm).args(vmm_args.to_vec()).status(), &vmm),
        Some(why) => {
            eprintln!(
                "xtask run: {why}; running the same VMM and guest nested in the test bed \
                 (QEMU/TCG with a real KVM inside), about 15-30 s to the shell. Ctrl-A x quits. \
                 Nested, the guest kernel warns once about an \"XSAVE consistency problem\": \
                 L1's emulated XSAVE, harmless (QEMU's guests print it too)."
            );
            if vmm_args.has("--paused") {
                eprintln!(
                    "xtask run: --paused: the guest waits for `cont` (Ctrl-A c opens the \
                     monitor, or QMP)"
                );
            }
            let nested = nested_job(&vmm_args)?;
            let _bridge = match &nested.qmp {
                Some(user_path) => Some(qmp_bridge::QmpBridge::start(
                    user_path,
                    nested
                        .bridges
                        .ttys1_socket
                        .as_deref()
                        .unwrap_or(Path::new("")),
                )?),
                None => None,
            };
            let status =
                vmm_testbed::run_nested_interactive(&g.paths, &vmm, &nested.job, &nested.bridges);
            let _ = nested
                .bridges
                .ttys1_socket
                .as_ref()
                .map(std::fs::remove_file);
            drop(_bridge);
            std::process::exit(status?);
        }
    }
}

/// Ends xtask with the VMM's status.
fn exit_with(status: std::io::Result<std::process::ExitStatus>, vmm: &Path) -> ! {
    match status {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask run: cannot start {}: {e}", vmm.display());
            std::process::exit(1)
        }
    }
}

/// A nested run: the job, and what is bridged between L1 and the host.
#[derive(Debug)]
struct Nested {
    job: Job,
    bridges: Bridges,
    /// The user's `--qmp` path on the host.
    qmp: Option<PathBuf>,
}

/// The nested job: host files named by `--kernel`/`--initrd` travel into
/// L1 under their base names; `--qmp PATH` and `--serial file:PATH` become
/// L1's serial ports, bridged to PATH on the host.
fn nested_job(args: &VmmArgs) -> Result<Nested> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut bridges = Bridges::default();
    let mut qmp = None;
    let mut disks: Vec<PathBuf> = Vec::new();
    for w in &args.0 {
        let Word::Opt(name, Some(value)) = w else {
            out.push(w.clone());
            continue;
        };
        let value = match name.as_str() {
            "--kernel" | "--initrd" => {
                let path = Path::new(value);
                let base = path
                    .file_name()
                    .with_context(|| format!("{name} {value}: not a file"))?
                    .to_string_lossy()
                    .into_owned();
                files.push((base.clone(), path.to_owned()));
                base
            }
            "--qmp" => {
                qmp = Some(PathBuf::from(value));
                bridges.ttys1_socket = Some(
                    std::env::temp_dir()
                        .join(format!("vmm-xtask-run-{}-ttyS1.sock", std::process::id())),
                );
                vmm_testbed::L1_QMP_TTY.to_owned()
            }
            "--drive" => {
                // file=PATH becomes L1's virtio disk for the host's image
                // (Job::l1_disks): the VMM's writes land in the host file.
                let mut parts = split_options(value);
                for p in parts.iter_mut() {
                    if let Some(path) = p.strip_prefix("file=") {
                        let host = PathBuf::from(path.replace(",,", ","));
                        *p = format!("file={}", disks.len());
                        disks.push(host);
                    }
                }
                parts.join(",")
            }
            "--serial" if value.starts_with("file:") => {
                // PATH[,OPTIONS], a comma in PATH doubled (QEMU's option
                // syntax, which QEMU's own `path=` below reads the same way).
                let spec = &value["file:".len()..];
                let (path, options) = split_first_option(spec);
                bridges.ttys2_file = Some(PathBuf::from(path));
                format!("file:{}{options}", vmm_testbed::L1_SERIAL_FILE_TTY)
            }
            _ => value.clone(),
        };
        out.push(Word::Opt(name.clone(), Some(value)));
    }
    let mut job = Job::new(VmmArgs(out).to_vec()).l1_cpus(l1_cpus_for(args));
    for (name, path) in files {
        job = job.file(&name, &path);
    }
    // The drives' placeholders (file=N) become L1's disk names.
    let names: Vec<String> = disks.iter().map(|d| job.l1_disk(d)).collect();
    for a in job.args.iter_mut() {
        if a.contains("file=") {
            let parts: Vec<String> = split_options(a)
                .into_iter()
                .map(|p| {
                    match p
                        .strip_prefix("file=")
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        Some(i) if i < names.len() => format!("file={}", names[i]),
                        _ => p,
                    }
                })
                .collect();
            *a = parts.join(",");
        }
    }
    Ok(Nested { job, bridges, qmp })
}

/// L1's CPUs for the user's guest: one for a guest of one or two vCPUs,
/// else the test bed's default. A run's guest boots with its kernel's log
/// on the console (verbose), and TCG's SVM fault, which hangs or resets
/// such boots now and then under our VMM and QEMU alike, comes with two L1
/// CPUs only (docs/nested/README.md: two-vCPU verbose boots of ours, 96 of
/// 100 in an L1 of two CPUs, 100 of 100 in one of one CPU, half of each on
/// a busy host; QEMU's 91 and 100); with one the shell came no later
/// (12.2-12.6 s against 13.0-16.8 s for one vCPU, 3 runs each). Larger
/// guests were not measured so and keep two. `VMM_TESTBED_L1_CPUS` still
/// wins.
fn l1_cpus_for(args: &VmmArgs) -> u32 {
    match args.value("--cpus").map(str::trim) {
        None | Some("1" | "2") => 1,
        Some(_) => vmm_testbed::qemu::L1_CPUS,
    }
}

/// QEMU's option list split at single commas (`,,` stays doubled).
fn split_options(spec: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            if let Some(p) = parts.last_mut() {
                p.push_str(",,");
            }
        } else if c == ',' {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

/// `PATH,OPTIONS` at the first single comma (`,,` is a comma in PATH):
/// (PATH as written, ",OPTIONS" or "").
fn split_first_option(spec: &str) -> (&str, String) {
    let bytes = spec.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                i += 2;
                continue;
            }
            return (&spec[..i], spec[i..].to_owned());
        }
        i += 1;
    }
    (spec, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(a: &[&str]) -> VmmArgs {
        VmmArgs::parse(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn a_guest_of_one_or_two_vcpus_gets_a_one_cpu_l1() {
        assert_eq!(nested_job(&words(&[])).unwrap().job.l1_cpus, Some(1));
        assert_eq!(
            nested_job(&words(&["--cpus", "1"])).unwrap().job.l1_cpus,
            Some(1)
        );
        assert_eq!(
            nested_job(&words(&["--cpus", "2"])).unwrap().job.l1_cpus,
            Some(1)
        );
        let two = nested_job(&words(&["--cpus=4"])).unwrap().job.l1_cpus;
        assert_eq!(two, Some(vmm_testbed::qemu::L1_CPUS));
    }

    #[test]
    fn host_paths_become_job_files() {
        let n = nested_job(&words(&[
            "--kernel=/a/b/bzImage",
            "--cpus",
            "2",
            "--initrd",
            "/c/init.cpio",
        ]))
        .unwrap();
        assert_eq!(
            n.job.args,
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
            n.job.files,
            [
                ("bzImage".to_owned(), PathBuf::from("/a/b/bzImage")),
                ("init.cpio".to_owned(), PathBuf::from("/c/init.cpio"))
            ]
        );
        assert!(n.qmp.is_none() && n.bridges.ttys1_socket.is_none());
        assert!(nested_job(&words(&["--kernel=/"])).is_err());
        // An option without its value is the VMM's to refuse.
        assert_eq!(
            nested_job(&words(&["--kernel"])).unwrap().job.args,
            ["--kernel"]
        );
    }

    #[test]
    fn qmp_and_serial_files_are_bridged_out_of_l1() {
        let n = nested_job(&words(&[
            "--qmp=/tmp/q.sock",
            "--serial",
            "file:/tmp/console.log",
            "--paused",
        ]))
        .unwrap();
        assert_eq!(
            n.job.args,
            [
                "--qmp",
                "/dev/ttyS1",
                "--serial",
                "file:/dev/ttyS2",
                "--paused"
            ]
        );
        assert_eq!(n.qmp.as_deref(), Some(Path::new("/tmp/q.sock")));
        assert!(n.bridges.ttys1_socket.is_some());
        assert_eq!(
            n.bridges.ttys2_file.as_deref(),
            Some(Path::new("/tmp/console.log"))
        );
        // Options after the path stay with the VMM's spec.
        let n = nested_job(&words(&["--serial=file:/x/log,maxsize=1M"])).unwrap();
        assert_eq!(n.job.args, ["--serial", "file:/dev/ttyS2,maxsize=1M"]);
        let n = nested_job(&words(&["--serial=file:/a,,b/log,follow"])).unwrap();
        assert_eq!(n.job.args, ["--serial", "file:/dev/ttyS2,follow"]);
        assert_eq!(
            n.bridges.ttys2_file.as_deref(),
            Some(Path::new("/a,,b/log"))
        );
        let n = nested_job(&words(&[
            "--drive",
            "file=/img/a,,b.img,if=virtio,format=raw",
            "--drive=if=none,id=d1,file=/img/c.img",
        ]))
        .unwrap();
        assert_eq!(
            n.job.args,
            [
                "--drive",
                "file=/dev/vda,if=virtio,format=raw",
                "--drive",
                "if=none,id=d1,file=/dev/vdb"
            ]
        );
        assert_eq!(
            n.job.l1_disks,
            [PathBuf::from("/img/a,b.img"), PathBuf::from("/img/c.img")]
        );
        let n = nested_job(&words(&["--serial", "none"])).unwrap();
        assert_eq!(n.job.args, ["--serial", "none"]);
        assert!(n.bridges.ttys2_file.is_none());
    }
}
