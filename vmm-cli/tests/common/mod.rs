//! Running the `vmm` binary from tests.

#![allow(dead_code)]

pub mod qmp_client;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one VMM run may take before the test gives up on it.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vmm-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn vmm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmm"));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A child process, bare or in a [`Running`] guard, to wait for.
pub trait Waitable {
    /// Waits at most `limit` (see [`wait_within`]); a [`Running`] with a
    /// log gives the log as the output's stderr.
    fn wait_for(self, limit: Duration) -> Output;
}

impl Waitable for Child {
    fn wait_for(self, limit: Duration) -> Output {
        wait_within(self, limit)
    }
}

impl Waitable for Running {
    fn wait_for(mut self, limit: Duration) -> Output {
        let mut o = wait_within(self.0.take().expect("waited once"), limit);
        if let Some(log) = &self.1 {
            o.stderr = std::fs::read(log).unwrap_or_default();
        }
        o
    }
}

/// Waits for `child` at most [`RUN_LIMIT`], killing it if it overstays.
/// Its output pipes are read meanwhile, so a chatty child cannot block.
pub fn wait(child: impl Waitable) -> Output {
    child.wait_for(RUN_LIMIT)
}

/// [`wait`] with another limit: a hang check (the child is killed and the
/// test fails), not a timing assertion.
pub fn wait_within(mut child: Child, limit: Duration) -> Output {
    let out = child.stdout.take().map(vmm_testbed::process::drain);
    let err = child.stderr.take().map(vmm_testbed::process::drain);
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    let Some(status) = vmm_testbed::process::wait_until(&mut child, Instant::now(), limit) else {
        panic!(
            "vmm did not finish within {limit:?}; stderr: {}",
            String::from_utf8_lossy(&collect(err))
        );
    };
    Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }
}

/// A running vmm that is killed if the test fails before waiting for it
/// (a spinning guest must not outlive its test); with a log file (its
/// stderr), the log is printed when the test fails.
pub struct Running(Option<Child>, Option<PathBuf>);

impl Running {
    pub fn new(child: Child) -> Self {
        Self(Some(child), None)
    }

    /// A vmm whose stderr goes to `log`.
    pub fn with_log(child: Child, log: PathBuf) -> Self {
        Self(Some(child), Some(log))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// [`wait_within`].
    pub fn wait_within(self, limit: Duration) -> Output {
        self.wait_for(limit)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // A failing test says whether its vmm had ended on its own
            // (and how) before being killed here.
            if let (true, Ok(Some(status))) = (std::thread::panicking(), child.try_wait()) {
                eprintln!(
                    "--- the vmm (pid {}) had already ended: {status}",
                    child.id()
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let (true, Some(log)) = (std::thread::panicking(), &self.1) {
            eprintln!(
                "--- the vmm's stderr ({}):\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// Runs vmm with `args` to completion (bounded).
pub fn run(args: &[&str]) -> Output {
    wait(vmm().args(args).spawn().unwrap())
}

/// Runs vmm with `kernel` and extra args.
pub fn run_kernel(kernel: &Path, extra: &[&str]) -> Output {
    let k = kernel.to_str().unwrap();
    let mut args = vec!["--kernel", k];
    args.extend_from_slice(extra);
    run(&args)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: non-zero status, exactly one line on stderr
/// starting with "vmm: ", and no panic.
pub fn assert_one_line_error(o: &Output, expect: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got {:?}; stderr: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("vmm: "), "{err}");
    assert!(
        lines[0].contains(expect),
        "error should mention {expect:?}: {err}"
    );
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Reads whatever `r` has, to the end.
pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

pub fn kvm(test: &str) -> bool {
    vmm_core::kvm::usable_for_tests(test)
}

/// Waits until `path` (a serial log) holds at least `n` bytes, within
/// [`RUN_LIMIT`]; returns its contents.
pub fn wait_for_output(path: &Path, n: usize) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        if bytes.len() >= n {
            return bytes;
        }
        assert!(
            start.elapsed() < RUN_LIMIT,
            "only {:?} on the serial port",
            String::from_utf8_lossy(&bytes)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The counting guest's console (`vmm_pc::test_guests::counter`): its
/// complete lines as counts; a first fragment (a line a migration's
/// source began) is not a count of this console's own.
pub fn counts(log: &Path, skip_first_fragment: bool) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut lines: Vec<&str> = complete.lines().collect();
    if skip_first_fragment && !lines.is_empty() {
        lines.remove(0);
    }
    lines
        .iter()
        .filter_map(|l| u32::from_str_radix(l.trim(), 16).ok())
        .collect()
}

/// Waits for `n` counts on the console at `log` ([`counts`]).
pub fn wait_counts(log: &Path, n: usize, skip: bool) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let c = counts(log, skip);
        if c.len() >= n {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {c:?} in {:?}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
