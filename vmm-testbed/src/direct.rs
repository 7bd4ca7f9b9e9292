//! Running a job directly on the host's KVM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{process, Job, Outcome, TestbedError};

/// Runs `job` with `vmm` on this host, in a temporary folder holding links
/// to the job's files.
pub fn run_direct(vmm: &Path, job: &Job) -> Result<Outcome, TestbedError> {
    let dir = std::env::temp_dir().join(format!(
        "vmm-testbed-direct-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| TestbedError::Write(dir.clone(), e))?;
    let result = run_in(&dir, vmm, job);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, vmm: &Path, job: &Job) -> Result<Outcome, TestbedError> {
    for (name, path) in &job.files {
        let link = dir.join(name);
        let target =
            std::fs::canonicalize(path).map_err(|e| TestbedError::Read(path.clone(), e))?;
        std::os::unix::fs::symlink(&target, &link).map_err(|e| TestbedError::Write(link, e))?;
    }
    let start = Instant::now();
    // A set-up script's mounts live in a namespace of their own, which the
    // VMM and the companion enter.
    let namespace = match &job.setup {
        Some(script) => Some(Namespace::start(dir, script)?),
        None => None,
    };
    let enter = |program: &Path| -> Command {
        match &namespace {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--target={}", ns.0 .0.id()))
                    .arg("--mount")
                    // The holder's folder: the job's, in the namespace.
                    .arg("--wd")
                    .arg("--")
                    .arg(program);
                c
            }
        }
    };
    let mut cmd = enter(vmm);
    cmd.args(&job.args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| TestbedError::Tool("vmm", e))?;
    let out_reader = process::drain(child.stdout.take().ok_or(TestbedError::NoPipe)?);
    let err_reader = process::drain(child.stderr.take().ok_or(TestbedError::NoPipe)?);
    let companion = match &job.companion {
        Some(script) => {
            let mut c = enter(Path::new("sh"));
            c.env(
                "VMM",
                std::fs::canonicalize(vmm).unwrap_or_else(|_| vmm.to_owned()),
            )
            .env("TESTBED_LIVE", "/dev/stdout")
            .env("VMM_PID", child.id().to_string());
            if job.qemu {
                let qemu = crate::l1_qemu::HostQemu::find()?;
                c.env("QEMU", &qemu.binary).env("QEMU_DATA", &qemu.data_dir);
            }
            c.args(["-c", script])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            process::die_with_parent(&mut c);
            let mut child = c.spawn().map_err(|e| TestbedError::Tool("sh", e))?;
            let out = process::drain(child.stdout.take().ok_or(TestbedError::NoPipe)?);
            let err = process::drain(child.stderr.take().ok_or(TestbedError::NoPipe)?);
            Some((child, out, err))
        }
        None => None,
    };
    // With a companion: it runs first to its end; a VMM still running
    // 10 s later gets SIGTERM, so a failed companion cannot leave the job
    // waiting for its time limit.
    let mut companion_output = String::new();
    if let Some((mut c, out, err)) = companion {
        if process::wait_until(&mut c, start, job.timeout).is_none() {
            let _ = c.kill();
        }
        let _ = c.wait();
        companion_output.push_str(&String::from_utf8_lossy(&out.join().unwrap_or_default()));
        companion_output.push_str(&String::from_utf8_lossy(&err.join().unwrap_or_default()));
        let grace = Instant::now();
        if process::wait_until(&mut child, grace, Duration::from_secs(10)).is_none() {
            process::terminate(&child);
        }
    }
    let Some(status) = process::wait_until(&mut child, start, job.timeout) else {
        let console = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
        return Err(TestbedError::Timeout {
            after: job.timeout,
            console,
        });
    };
    let mut console =
        String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).replace('\r', "");
    console.push_str(&companion_output);
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Ok(Outcome {
        console,
        stderr,
        status: status.code(),
        l1_boot: None,
        total: start.elapsed(),
        l1_console: String::new(),
    })
}

/// A private mount namespace held open by a process that sleeps in it
/// after the set-up script ran there; killed and reaped when dropped.
struct Namespace(crate::qemu::Reaper);

impl Namespace {
    /// Runs `script` in `dir` in a new mount namespace (`unshare
    /// --mount`, private propagation), then keeps the namespace.
    fn start(dir: &Path, script: &str) -> Result<Self, TestbedError> {
        use std::io::BufRead;
        let body = format!(
            "if ! ( {script}\n ) >&2; then exit 1; fi\necho {READY}\nexec sleep 2147483647"
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &body])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        process::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| TestbedError::HostTool("unshare", "util-linux", e))?;
        let stdout = child.stdout.take().ok_or(TestbedError::NoPipe)?;
        let stderr = process::drain(child.stderr.take().ok_or(TestbedError::NoPipe)?);
        let holder = crate::qemu::Reaper(child);
        let mut first = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut first);
        if first.trim() != READY {
            drop(holder);
            let why = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            return Err(TestbedError::Setup(format!(
                "{} (as root: unshare --mount needs it)",
                why.trim()
            )));
        }
        Ok(Self(holder))
    }
}

/// What the namespace's holder prints once the set-up is done.
const READY: &str = "@@TESTBED-SETUP-READY";

#[cfg(test)]
mod tests {
    use super::*;

    /// The companion's environment on the host: `$VMM` (resolved),
    /// `$TESTBED_LIVE` reaching the console, and with QEMU asked for (when
    /// installed) `$QEMU` and `$QEMU_DATA`.
    #[test]
    fn companion_environment() {
        let vmm = Path::new("/bin/echo");
        let job = Job::new(["from the vmm"]).companion(
            "echo \"vmm=$VMM\" >>\"$TESTBED_LIVE\"; echo \"qemu=$QEMU data=$QEMU_DATA\"",
        );
        let out = run_direct(vmm, &job).unwrap();
        let echo = std::fs::canonicalize(vmm).unwrap();
        assert!(out.console.starts_with("from the vmm\n"), "{}", out.console);
        assert!(
            out.console.contains(&format!("vmm={}\n", echo.display())),
            "{}",
            out.console
        );
        if let Ok(q) = crate::l1_qemu::HostQemu::find() {
            let out = run_direct(vmm, &job.with_qemu()).unwrap();
            let want = format!(
                "qemu={} data={}\n",
                q.binary.display(),
                q.data_dir.display()
            );
            assert!(out.console.contains(&want), "{}", out.console);
        }
    }

    /// A set-up script's tmpfs is seen by the VMM and the companion
    /// (as root), and is gone from the host afterwards; a failing set-up
    /// ends the job with its output.
    #[test]
    fn setup_mounts_in_a_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP setup_mounts_in_a_private_namespace: not root");
            return;
        }
        let job = Job::new(["/proc/self/mounts"])
            .setup(
                "mkdir small && mount -t tmpfs -o size=1m testbed-small small && echo hi >small/f",
            )
            .companion("cat small/f; grep -c testbed-small /proc/self/mounts");
        let out = run_direct(Path::new("/bin/cat"), &job).unwrap();
        assert!(out.console.contains("testbed-small"), "{}", out.console);
        assert!(out.console.contains("hi\n1\n"), "{}", out.console);
        let host = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!host.contains("testbed-small"), "{host}");
        let e = run_direct(
            Path::new("/bin/true"),
            &Job::new(["x"]).setup("echo no room; false"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, TestbedError::Setup(w) if w.contains("no room")),
            "{e}"
        );
    }
}
