//! Seccomp filters, one allow-list per kind of thread (`--seccomp`).
//!
//! The VMM's threads, once the guest can run (`ls /proc/PID/task`): the
//! main thread (the main loop), one thread per vCPU, the serial output
//! writer, and one worker per virtio device (made at build time, parked
//! until the guest activates its device; it installs its list first
//! thing, through vmm-virtio's thread-start hook), the migration thread
//! (made at build time too, waiting for a `migrate` or an incoming stream;
//! its list first thing, through vmm-pc's hook), and with `--gdb` the
//! gdb stub's thread (it installs its list first thing too). The CPUID thread of start-up has ended by then (it is joined
//! before the vCPU threads start), so it gets no list.
//!
//! Filters are per thread (no TSYNC), and a thread inherits its creator's
//! filter when it is created. So each thread installs its own list where
//! it starts doing its work, after its set-up and before any guest code:
//!
//! - the serial writer, first thing in its thread, before it takes any
//!   output (it is spawned before the machine is built, from an unfiltered
//!   main thread);
//! - each vCPU thread, through vmm-core's opaque thread-start hook, once
//!   its vCPU is created, set up and its `kvm_run` mapped, and before it
//!   reports back, so before the first `KVM_RUN` (so no `KVM_CREATE_VCPU`
//!   nor `KVM_SET_CPUID2` on its list);
//! - the main thread last, once every other thread exists and the front
//!   ends (console, QMP socket) are set up, just before the main loop. Had
//!   it gone in first, every later thread would inherit it and have to live
//!   within it on top of its own list (filters stack: the strictest
//!   answer wins), which would force the vCPU list to be a subset of the
//!   main one. No thread is created after it.
//!
//! `--seccomp on` traps a forbidden call and ends the VMM with a line
//! naming it ([`sigsys`]); `log` lets it through and has the kernel log it
//! (`SECCOMP_RET_LOG`: the audit log, or dmesg); `off` installs nothing.
//! seccompiler's `apply_filter` sets `no_new_privs` first, as the kernel
//! requires of an unprivileged process.

mod ioctls;
mod lists;
mod names;
pub mod sigsys;

use std::sync::Arc;

use anyhow::{Context, Result};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What `--seccomp` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A forbidden call ends the VMM, with a line naming it.
    On,
    /// A forbidden call goes through; the kernel logs it.
    Log,
    /// No filters.
    Off,
}

/// The kinds of thread, each with its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// The main loop.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The serial output writer.
    SerialOut,
    /// A device's worker (virtio).
    Device,
    /// A socket device's worker (virtio-vsock): a device's list and Unix
    /// sockets.
    Vsock,
    /// The gdb stub (`--gdb`).
    Gdb,
    /// The migration thread.
    Migration,
}

impl Thread {
    fn as_str(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vcpu",
            Self::SerialOut => "serial",
            Self::Device => "device",
            Self::Vsock => "vsock",
            Self::Gdb => "gdb",
            Self::Migration => "migration",
        }
    }
}

/// The compiled filters, ready to install.
#[derive(Debug)]
pub struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
    serial: BpfProgram,
    device: BpfProgram,
    vsock: BpfProgram,
    gdb: BpfProgram,
    migration: BpfProgram,
    /// Debug builds only: the thread that makes a forbidden call once its
    /// filter is in, for the tests (`VMM_SECCOMP_TEST_FORBIDDEN=main|vcpu|
    /// serial|device|migration`).
    forbidden: Option<Thread>,
}

/// The action for calls off the list, by mode.
fn mismatch_action(mode: Mode) -> Option<SeccompAction> {
    match mode {
        Mode::On => Some(SeccompAction::Trap),
        Mode::Log => Some(SeccompAction::Log),
        Mode::Off => None,
    }
}

fn compile(rules: lists::Rules, mismatch: &SeccompAction) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(
        rules,
        mismatch.clone(),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

impl Filters {
    /// Compiles the three lists for `mode` (none for `off`); for `on`,
    /// also installs the SIGSYS handler. Call before any thread starts.
    /// `kick`: the vCPU kick signal, the only one the main and vCPU
    /// threads may send.
    pub fn new(mode: Mode, kick: i32) -> Result<Option<Arc<Self>>> {
        let Some(mismatch) = mismatch_action(mode) else {
            return Ok(None);
        };
        let kick = u32::try_from(kick).context("the vCPU kick signal is not a signal number")?;
        let main = lists::main(std::process::id(), kick).context("the main thread's list")?;
        let filters = Self {
            main: compile(main, &mismatch)?,
            vcpu: compile(lists::vcpu(std::process::id(), kick)?, &mismatch)?,
            serial: compile(lists::serial()?, &mismatch)?,
            device: compile(lists::device()?, &mismatch)?,
            vsock: compile(lists::vsock()?, &mismatch)?,
            gdb: compile(lists::gdb()?, &mismatch)?,
            migration: compile(lists::migration()?, &mismatch)?,
            forbidden: test_forbidden(),
        };
        if mode == Mode::On {
            sigsys::install_handler().context("cannot install the SIGSYS handler")?;
        }
        Ok(Some(Arc::new(filters)))
    }

    /// Installs `thread`'s list on the calling thread, for the rest of its
    /// life.
    pub fn install(&self, thread: Thread) -> Result<(), seccompiler::Error> {
        let program = match thread {
            Thread::Main => &self.main,
            Thread::Vcpu => &self.vcpu,
            Thread::SerialOut => &self.serial,
            Thread::Device => &self.device,
            Thread::Vsock => &self.vsock,
            Thread::Gdb => &self.gdb,
            Thread::Migration => &self.migration,
        };
        let current = std::thread::current();
        sigsys::note_thread(current.name().unwrap_or(thread.as_str()));
        seccompiler::apply_filter(program)?;
        log::debug!("seccomp: {} list installed", thread.as_str());
        if self.forbidden == Some(thread) {
            forbidden_call();
        }
        Ok(())
    }
}

/// `VMM_SECCOMP_TEST_FORBIDDEN`, read in debug builds only: release builds
/// have no way to make the VMM call off its lists on purpose.
fn test_forbidden() -> Option<Thread> {
    if !cfg!(debug_assertions) {
        return None;
    }
    match std::env::var("VMM_SECCOMP_TEST_FORBIDDEN").ok()?.as_str() {
        "main" => Some(Thread::Main),
        "vcpu" => Some(Thread::Vcpu),
        "serial" => Some(Thread::SerialOut),
        "device" => Some(Thread::Device),
        "migration" => Some(Thread::Migration),
        "vsock" => Some(Thread::Vsock),
        _ => None,
    }
}

/// A call on no list, harmless if let through (`--seccomp log`).
fn forbidden_call() {
    // SAFETY: getppid has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    log::warn!("seccomp test: made a forbidden call (getppid: {parent})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_compiles_in_every_mode() {
        for mode in [Mode::On, Mode::Log] {
            let mismatch = mismatch_action(mode).unwrap();
            for rules in [
                lists::main(1, 34),
                lists::vcpu(1, 34),
                lists::serial(),
                lists::device(),
                lists::vsock(),
                lists::gdb(),
                lists::migration(),
            ] {
                let program = compile(rules.unwrap(), &mismatch).unwrap();
                assert!(!program.is_empty());
                // BPF programs are limited to 4096 instructions.
                assert!(program.len() < 4096, "{} instructions", program.len());
            }
        }
        assert!(mismatch_action(Mode::Off).is_none());
    }

    #[test]
    fn the_lists_differ_where_the_threads_do() {
        let main = lists::main(1, 34).unwrap();
        let vcpu = lists::vcpu(1, 34).unwrap();
        let serial = lists::serial().unwrap();
        let has = |r: &lists::Rules, nr| r.contains_key(&nr);
        // Only the main loop accepts clients and reads files.
        for nr in [libc::SYS_accept4, libc::SYS_epoll_wait, libc::SYS_read] {
            assert!(
                has(&main, nr) && !has(&vcpu, nr) && !has(&serial, nr),
                "{nr}"
            );
        }
        // The main loop and the vCPUs kick (a vCPU: the boot vCPU, when
        // it raises the split irqchip's 8259 output); the writer does not.
        assert!(has(&main, libc::SYS_tgkill) && has(&vcpu, libc::SYS_tgkill));
        assert!(!has(&serial, libc::SYS_tgkill));
        // The writer has no ioctl but the terminal's.
        assert_eq!(serial[&libc::SYS_ioctl].len(), 1);
        assert!(vcpu[&libc::SYS_ioctl].len() > main[&libc::SYS_ioctl].len() / 2);
        // Only the main thread opens files, and only in the two ways a
        // snapshot does (File::create, File::open): a rule per way.
        assert_eq!(main[&libc::SYS_openat].len(), 2);
        assert!(!has(&vcpu, libc::SYS_openat) && !has(&serial, libc::SYS_openat));
        // Nobody creates processes, threads or sockets.
        for nr in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_open,
            libc::SYS_ptrace,
            libc::SYS_rt_sigaction,
            libc::SYS_getppid,
        ] {
            assert!(
                !has(&main, nr) && !has(&vcpu, nr) && !has(&serial, nr),
                "{nr}"
            );
        }
        // The migration thread makes sockets (of three families only) and
        // reads the dirty log, and never starts a program.
        let migration = lists::migration().unwrap();
        for nr in [libc::SYS_socket, libc::SYS_connect, libc::SYS_accept4] {
            assert!(has(&migration, nr) && !has(&vcpu, nr), "{nr}");
        }
        assert_eq!(migration[&libc::SYS_socket].len(), 3);
        for nr in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_execve,
        ] {
            assert!(!has(&migration, nr), "{nr}");
        }
        // Only a disk's worker enters io_uring; nobody sets one up or
        // registers anything with it once the filters are in.
        let device = lists::device().unwrap();
        assert!(has(&device, libc::SYS_io_uring_enter));
        for r in [&main, &vcpu, &serial] {
            assert!(!has(r, libc::SYS_io_uring_enter));
        }
        for nr in [libc::SYS_io_uring_setup, libc::SYS_io_uring_register] {
            for r in [&main, &vcpu, &serial, &device] {
                assert!(!has(r, nr), "{nr}");
            }
        }
        // Only a socket device's worker makes sockets (AF_UNIX streams,
        // one rule) and connects them; the other workers do neither.
        let vsock = lists::vsock().unwrap();
        assert_eq!(vsock[&libc::SYS_socket].len(), 1);
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
        ] {
            assert!(has(&vsock, nr) && !has(&device, nr), "{nr}");
        }
        // Its ioctls: the device workers' (the vhost ones included) and
        // FIONBIO and vhost-vsock's SET_RUNNING.
        assert_eq!(
            vsock[&libc::SYS_ioctl].len(),
            device[&libc::SYS_ioctl].len() + 1 + 1
        );
    }
}
