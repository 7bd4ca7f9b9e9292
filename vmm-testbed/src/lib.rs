//! The test bed: boot Linux guests under our VMM on a real KVM, wherever
//! the tests run.
//!
//! On a host with hardware virtualization the VMM runs directly. On a host
//! whose `/dev/kvm` is PVM (`kvm_pvm`, a software hypervisor that cannot run
//! unmodified Linux under any VMM), it runs nested: an "L1" Debian kernel
//! boots under `qemu-system-x86_64 -accel tcg -cpu max` (which emulates AMD
//! SVM), loads `kvm-amd.ko`, and runs our VMM on the job; the L2 guest's
//! console and the VMM's exit status come back between marker lines on
//! L1's serial console.
//!
//! ```no_run
//! use vmm_testbed::{run_linux, GuestFiles, Job};
//!
//! let guest = GuestFiles::default_location()?;
//! let job = Job::new(["--kernel", "bzImage", "--initrd", "initrd", "--cpus", "2"])
//!     .file("bzImage", &guest.bzimage)
//!     .file("initrd", &guest.initramfs);
//! let outcome = run_linux(&guest, "target/release/vmm".as_ref(), &job)?;
//! println!("{} (status {:?})", outcome.console, outcome.status);
//! # Ok::<(), vmm_testbed::TestbedError>(())
//! ```

#![deny(missing_docs)]

pub mod cores;
pub mod cpio;
mod direct;
mod guest_files;
pub mod heartbeat;
mod host;
pub mod initramfs;
pub mod l1;
pub mod l1_monitor;
pub mod l1_panic;
pub mod l1_pin;
pub mod l1_qemu;
pub mod l2_exits;
pub mod markers;
pub mod process;
pub mod qemu;
pub mod retries;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use direct::run_direct;
pub use guest_files::{default_guest_dir, GuestFiles, GUEST_DIR_ENV};
pub use host::HostKvm;

/// Why a job could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A guest file is missing.
    #[error("guest file {0} is missing or empty: run `cargo xtask guest` first")]
    MissingGuest(PathBuf),
    /// A host tool could not be started.
    #[error("cannot run {0} (install it: apt-get install qemu-system-x86 libc-bin)")]
    Tool(&'static str, #[source] std::io::Error),
    /// A host tool other than QEMU's could not be started.
    #[error("cannot run {0} (apt-get install {1})")]
    HostTool(&'static str, &'static str, #[source] std::io::Error),
    /// The root disk image could not be made.
    #[error("root image: {0}")]
    Rootfs(String),
    /// The job's set-up script ([`Job::setup`]) failed.
    #[error("the job's set-up failed: {0}")]
    Setup(String),
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// The L1 initramfs could not be built.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// No pipe to the child.
    #[error("no pipe to the child process")]
    NoPipe,
    /// The job did not finish in time.
    #[error("the test bed job did not finish within {after:?}; console so far:\n{console}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// What L1 printed.
        console: String,
    },
    /// L1's console stayed silent for longer than the job allows
    /// ([`Job::silence_limit`]): L1 hung.
    #[error("L1's console was silent for {after:?} (L1 hung?); console so far:\n{console}")]
    Silent {
        /// The limit.
        after: Duration,
        /// What L1 printed.
        console: String,
    },
    /// L1's heartbeat ([`heartbeat`]) stopped, or never came, for longer
    /// than its limit: L1 no longer runs its processes (L1 hung).
    #[error("L1 hung: no heartbeat from L1 for {after:?} ({beats} beats before); console so far:\n{console}")]
    NoHeartbeat {
        /// The limit.
        after: Duration,
        /// How many beats came before.
        beats: u64,
        /// What L1 printed.
        console: String,
    },
    /// L1's kernel reported one of its CPUs stuck for longer than
    /// [`qemu::L1_STUCK_LIMIT`] (a soft lockup that does not end: L1
    /// hung, though its console goes on printing the reports).
    #[error("L1 hung: {what}; console so far:\n{console}")]
    L1Stuck {
        /// The soft lockup report, as L1 printed it.
        what: String,
        /// What L1 printed.
        console: String,
    },
    /// QEMU ended before the job did.
    #[error("L1 ended early (QEMU status {status:?}): {qemu_stderr}\nconsole:\n{console}")]
    L1Ended {
        /// QEMU's exit status.
        status: Option<i32>,
        /// QEMU's stderr.
        qemu_stderr: String,
        /// What L1 printed.
        console: String,
    },
    /// The test bed failed inside L1.
    #[error("test bed failure in L1: {0}")]
    InL1(String),
    /// No KVM at all.
    #[error("no /dev/kvm on this host")]
    NoKvm,
    /// A job wants QEMU and the host has none.
    #[error("qemu-system-x86_64 is not in PATH (apt-get install qemu-system-x86)")]
    NoQemu,
    /// A file of the host's QEMU that L1 needs is missing.
    #[error("QEMU file {0} is missing (apt-get install qemu-system-x86 qemu-system-data)")]
    MissingQemuFile(PathBuf),
}

/// One run of the VMM: its arguments and the files they name.
#[derive(Debug, Clone)]
pub struct Job {
    /// VMM arguments; file arguments name entries of `files` (they run in
    /// the folder holding them).
    pub args: Vec<String>,
    /// (name, host path) of each file the job needs.
    pub files: Vec<(String, PathBuf)>,
    /// The limit for the whole run (L1 boot included).
    pub timeout: Duration,
    /// L1's memory in MiB (nested runs only).
    pub l1_memory_mib: u32,
    /// L1's CPUs (nested runs only): None for [`qemu::L1_CPUS`]; the
    /// environment's [`qemu::CPUS_ENV`] wins over both.
    pub l1_cpus: Option<u32>,
    /// A shell script run in the job's folder while the VMM runs (a QMP
    /// client, say); its output follows the VMM's in [`Outcome::console`].
    /// It finds the VMM binary in `$VMM` and the running VMM's process in
    /// `$VMM_PID` (wait for the VMM's end with `kill -0 $VMM_PID`, not
    /// `pidof vmm`: nested, L1 runs another VMM, see [`l1_pin`]), and with [`Job::qemu`] the
    /// host's QEMU in `$QEMU` and QEMU's firmware folder (for `-L`) in
    /// `$QEMU_DATA`, nested or not. What it writes to the file
    /// `$TESTBED_LIVE` reaches [`Outcome::console`] too; nested, that is
    /// L1's console, written at once (among L1's kernel messages), so
    /// that it is also in the console of a [`TestbedError::L1Ended`] or
    /// [`TestbedError::Timeout`].
    pub companion: Option<String>,
    /// Whether the host's QEMU comes along (see [`Job::with_qemu`]).
    pub qemu: bool,
    /// Nested runs: L1's console silent this long ends the run with
    /// [`TestbedError::Silent`] (a hung L1 is not waited for until
    /// [`Job::timeout`]). None: no limit.
    pub silence_limit: Option<Duration>,
    /// Nested runs: L1 gets a second serial port (its `/dev/ttyS1`) whose
    /// other end is a Unix socket at this host path, served by QEMU, which
    /// waits for a client to connect before it starts L1. A host-side
    /// program then talks to whatever the job runs on `/dev/ttyS1` (the
    /// VMM's `--qmp /dev/ttyS1`, say).
    pub l1_serial_socket: Option<PathBuf>,
    /// Nested runs: host disk images L1 gets as virtio disks, in order
    /// (`/dev/vda`, `/dev/vdb`, ... in L1; see [`l1_disk`]), so that the
    /// VMM in L1 serves them with `--drive file=/dev/vdX` and its writes
    /// land in the host's file. Directly on hardware the job names the
    /// host paths itself.
    pub l1_disks: Vec<PathBuf>,
    /// A shell script run as root in the job's folder before the VMM
    /// starts, whose mounts the VMM and the companion see (a small tmpfs
    /// to hold a disk image, say). Nested it runs in L1; directly on the
    /// host, in a private mount namespace (`unshare --mount`, so it needs
    /// root) that the VMM and the companion then enter (`nsenter`), its
    /// mounts gone with the job. If it fails the job ends with
    /// [`TestbedError::Setup`] and its output.
    pub setup: Option<String>,
    /// Nested runs: L1's console (the VMM's output among L1's) is also
    /// appended to this host file as it comes, so that a test can act on
    /// what the guest says while it runs (attach a debugger once the
    /// guest prints that it is ready, say).
    pub live_console: Option<PathBuf>,
}

/// The name L1 gives the `index`th of [`Job::l1_disks`] (`/dev/vda`...).
pub fn l1_disk(index: usize) -> String {
    let letter = u8::try_from(index % 26).map_or('a', |i| char::from(b'a' + i));
    format!("/dev/vd{letter}")
}

impl Job {
    /// A job with these VMM arguments, no files, a 5-minute limit.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            files: Vec::new(),
            timeout: Duration::from_secs(300),
            l1_memory_mib: 1536,
            l1_cpus: None,
            companion: None,
            qemu: false,
            silence_limit: None,
            l1_serial_socket: None,
            l1_disks: Vec::new(),
            setup: None,
            live_console: None,
        }
    }

    /// Appends L1's console to `path` as it comes (see
    /// [`Job::live_console`]).
    pub fn live_console(mut self, path: &Path) -> Self {
        self.live_console = Some(path.to_owned());
        self
    }

    /// Adds file `name` (as the VMM will see it) from `path`.
    pub fn file(mut self, name: &str, path: &Path) -> Self {
        self.files.push((name.to_owned(), path.to_owned()));
        self
    }

    /// Bridges L1's `/dev/ttyS1` to a Unix socket at `path` on the host (see
    /// [`Job::l1_serial_socket`]).
    pub fn l1_serial_socket(mut self, path: &Path) -> Self {
        self.l1_serial_socket = Some(path.to_owned());
        self
    }

    /// Gives L1 the host image at `path` as its next virtio disk (see
    /// [`Job::l1_disks`]); returns L1's name for it.
    pub fn l1_disk(&mut self, path: &Path) -> String {
        self.l1_disks.push(path.to_owned());
        l1_disk(self.l1_disks.len() - 1)
    }

    /// Runs `script` before the VMM (see [`Job::setup`]).
    pub fn setup(mut self, script: &str) -> Self {
        self.setup = Some(script.to_owned());
        self
    }

    /// Runs `script` beside the VMM (see [`Job::companion`]).
    pub fn companion(mut self, script: &str) -> Self {
        self.companion = Some(script.to_owned());
        self
    }

    /// Ships the host's QEMU along, for the companion to run beside the
    /// VMM: nested, the binary, its shared libraries and the firmware
    /// `microvm` needs go into L1 (at [`l1_qemu::L1_QEMU`] and
    /// [`l1_qemu::L1_QEMU_DATA`]; L1 gets at least 2 GiB, its initramfs
    /// being some 50 MiB larger); directly on the host, the companion
    /// runs the host's. Either way `$QEMU` and `$QEMU_DATA` name them.
    pub fn with_qemu(mut self) -> Self {
        self.qemu = true;
        self.l1_memory_mib = self.l1_memory_mib.max(2048);
        self
    }

    /// Sets L1's memory (nested runs only).
    pub fn l1_memory_mib(mut self, mib: u32) -> Self {
        self.l1_memory_mib = mib;
        self
    }

    /// Sets L1's CPU count (see [`Job::l1_cpus`]).
    pub fn l1_cpus(mut self, cpus: u32) -> Self {
        self.l1_cpus = Some(cpus);
        self
    }

    /// The guest's vCPUs as the VMM's arguments ask (`--cpus N` or
    /// `--cpus=N`, the last one; one without), or None when the value is
    /// not a number.
    pub fn guest_cpus(&self) -> Option<u32> {
        let mut cpus = Some(1);
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if a == "--cpus" {
                cpus = it.next().and_then(|v| v.trim().parse().ok());
            } else if let Some(v) = a.strip_prefix("--cpus=") {
                cpus = v.trim().parse().ok();
            }
        }
        cpus
    }

    /// Sets the silence limit (see [`Job::silence_limit`]).
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence_limit = Some(limit);
        self
    }

    /// Sets the time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// What a job gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The VMM's standard output: the L2 guest's serial console.
    pub console: String,
    /// The VMM's standard error.
    pub stderr: String,
    /// The VMM's exit status.
    pub status: Option<i32>,
    /// How long L1 took to be ready (nested runs only).
    pub l1_boot: Option<Duration>,
    /// The whole run.
    pub total: Duration,
    /// Everything L1 printed (nested runs only).
    pub l1_console: String,
}

/// Runs `job` nested in L1 under QEMU/TCG.
pub fn run_nested(guest: &GuestFiles, vmm: &Path, job: &Job) -> Result<Outcome, TestbedError> {
    let image = qemu::TempFile::new(&l1::l1_initramfs(guest, vmm, job, false)?)?;
    let mut cmd = qemu::l1_command(&guest.bzimage, &image.0, job.l1_memory_mib, job.l1_cpus);
    qemu::add_l1_disks(&mut cmd, &job.l1_disks);
    qemu::run_batch(
        cmd,
        job.timeout,
        job.l1_serial_socket.as_deref(),
        job.silence_limit,
        job.live_console.as_deref(),
    )
}

/// What an interactive nested run carries between L1 and the host, so
/// that the VMM's files outside its console reach the user's machine.
///
/// L1's serial ports: `ttyS0` is the terminal, `ttyS1` the QMP bridge,
/// `ttyS2` the serial-output file, `ttyS3` L1's heartbeat and then the
/// VMM's exit status ([`heartbeat::INTERACTIVE_TTY`]).
#[derive(Debug, Clone, Default)]
pub struct Bridges {
    /// L1's `/dev/ttyS1` as a Unix socket QEMU serves at this host path;
    /// QEMU waits for a client there before it starts L1 (the host side of
    /// a QMP bridge: the VMM runs with `--qmp /dev/ttyS1`).
    pub ttys1_socket: Option<PathBuf>,
    /// L1's `/dev/ttyS2` appended to this host file, the line in raw mode
    /// (the VMM runs with `--serial file:/dev/ttyS2`).
    pub ttys2_file: Option<PathBuf>,
}

/// L1's serial port a [`Bridges::ttys1_socket`] reaches.
pub const L1_QMP_TTY: &str = "/dev/ttyS1";
/// L1's serial port a [`Bridges::ttys2_file`] reaches.
pub const L1_SERIAL_FILE_TTY: &str = "/dev/ttyS2";

/// Runs `job` interactively nested in L1, the terminal reaching L1's
/// console (and through it the VMM's). Returns the VMM's exit status
/// (carried out of L1 on its fourth serial port).
pub fn run_nested_interactive(
    guest: &GuestFiles,
    vmm: &Path,
    job: &Job,
    bridges: &Bridges,
) -> Result<i32, TestbedError> {
    let image = qemu::TempFile::new(&l1::l1_initramfs(guest, vmm, job, true)?)?;
    let mut cmd = qemu::l1_command(&guest.bzimage, &image.0, job.l1_memory_mib, job.l1_cpus);
    qemu::add_l1_disks(&mut cmd, &job.l1_disks);
    qemu::run_interactive(cmd, bridges)
}

/// Runs `job` where Linux can boot: directly on hardware KVM, nested on
/// PVM.
pub fn run_linux(guest: &GuestFiles, vmm: &Path, job: &Job) -> Result<Outcome, TestbedError> {
    match HostKvm::detect() {
        HostKvm::Hardware => run_direct(vmm, job),
        HostKvm::Pvm => run_nested(guest, vmm, job),
        HostKvm::Missing => Err(TestbedError::NoKvm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_vcpus_from_the_vmm_arguments() {
        assert_eq!(Job::new(["--memory", "256M"]).guest_cpus(), Some(1));
        assert_eq!(Job::new(["--cpus", "2"]).guest_cpus(), Some(2));
        assert_eq!(Job::new(["--cpus=4", "--cpus", "1"]).guest_cpus(), Some(1));
        assert_eq!(Job::new(["--cpus"]).guest_cpus(), None);
        assert_eq!(Job::new(["--cpus", "two"]).guest_cpus(), None);
        // A value that holds the words is not the option.
        assert_eq!(Job::new(["--append", "--cpus 2"]).guest_cpus(), Some(1));
    }
}
