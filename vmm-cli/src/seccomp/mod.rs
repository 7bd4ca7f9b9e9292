//! Seccomp filters, one allow-list per kind of thread (`--seccomp`).
//!
//! The VMM's threads, once the guest can run (`ls /proc/PID/task`): the
//! main thread (the main loop, which also writes out guest serial output
//! that had to wait for its reader), one thread per vCPU (which write
//! COM1's output), and one worker per virtio device (made at build time, parked
//! until the guest activates its device; it installs its list first
//! thing, through vmm-virtio's thread-start hook), with `--qmp` or
//! `--incoming` the migration thread (made as the machine starts, waiting
//! for a `migrate` or an incoming stream; its list first thing, through
//! vmm-pc's hook), and with `--gdb` the
//! gdb stub's thread (it installs its list first thing too). The CPUID thread of start-up has ended by then (it is joined
//! before the vCPU threads start), so it gets no list.
//!
//! Filters are per thread (no TSYNC), and a thread inherits its creator's
//! filter when it is created. So each thread installs its own list where
//! it starts doing its work, after its set-up and before any guest code:
//!
//! - each vCPU thread, through vmm-core's opaque thread-start hook, once
//!   its vCPU is created, set up and its `kvm_run` mapped, and before it
//!   reports back, so before the first `KVM_RUN` (so no `KVM_CREATE_VCPU`
//!   nor `KVM_SET_CPUID2` on its list). With several vCPUs the boot vCPU's
//!   thread, which starts the others, first installs the vCPU list plus
//!   the set-up's calls (`lists::vcpu_spawner`), which the others inherit
//!   from birth; each thread, its vCPU set up, then adds a short filter
//!   refusing exactly those calls (`lists::vcpu_lock`), which leaves the
//!   vCPU list. The kernel's cost of installing a filter grows with its
//!   length (the vCPU list took about 0.18 ms here, the lock 0.05 ms):
//!   64 vCPUs reach their first guest byte 7 ms sooner this way;
//! - the main thread last, once every other thread exists and the front
//!   ends (console, QMP socket) are set up, and once the boot vCPU runs
//!   (off its way to the guest's first instruction), before the main loop
//!   reads anything (`PcMachine::run_with`; with `--incoming`, before the
//!   stream is read). Had it gone in first, every later thread would
//!   inherit it and have to live within it on top of its own list
//!   (filters stack: the strictest answer wins), which would force the
//!   vCPU list to be a subset of the main one. No thread is created after
//!   it.
//!
//! glibc's malloc is settled before any thread starts ([`settle_malloc`]):
//! it would otherwise open files (the CPU count, the overcommit mode) on
//! whichever thread first needed them.
//!
//! Each program starts with a binary search over its list's call numbers
//! ([`dispatch`]), which answers a call off the list, or one allowed
//! whatever its arguments, at once; seccompiler's program behind it holds
//! only the calls with argument rules. Installing a filter costs the
//! kernel less than half as much so (the vCPU list 180 → 79 µs, the main
//! one 242 → 81 µs here). `ioctl`'s requests are searched the same way (a
//! tree over argument 1), which takes the vCPU program from 257 to 154
//! instructions.
//!
//! `--seccomp on` traps a forbidden call and ends the VMM with a line
//! naming it ([`sigsys`]); `log` lets it through and has the kernel log it
//! (`SECCOMP_RET_LOG`: the audit log, or dmesg); `off` installs nothing.
//! seccompiler's `apply_filter` sets `no_new_privs` first, as the kernel
//! requires of an unprivileged process.

mod dispatch;
mod ioctls;
mod lists;
mod names;
pub mod sigsys;

use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use seccompiler::{BpfProgram, SeccompAction};

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
    /// A vCPU thread (of a machine with one vCPU).
    Vcpu,
    /// The boot vCPU's thread of a machine with several, before it starts
    /// the others' threads: the vCPU list and the set-up's calls, which
    /// every vCPU thread inherits (see `lists::vcpu_setup_extras`).
    VcpuSpawner,
    /// A vCPU thread under `VcpuSpawner`'s filter, its vCPU set up: a
    /// filter refusing the set-up's calls, leaving the vCPU list.
    VcpuLock,
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
            Self::VcpuSpawner => "vcpu spawner",
            Self::VcpuLock => "vcpu lock",
            Self::Device => "device",
            Self::Vsock => "vsock",
            Self::Gdb => "gdb",
            Self::Migration => "migration",
        }
    }
}

/// How many kinds of thread there are ([`Thread`]).
const KINDS: usize = 8;

/// The filters, each compiled the first time a thread of its kind installs
/// it (on that thread: a list no thread of this run needs, such as a
/// device's without devices, is never compiled; the main thread's is
/// compiled where it goes in, off the boot vCPU's way).
#[derive(Debug)]
pub struct Filters {
    mismatch: SeccompAction,
    /// Our pid and the vCPU kick signal, for the main and vCPU lists.
    pid: u32,
    kick: u32,
    compiled: [OnceLock<Result<BpfProgram, String>>; KINDS],
    /// Debug builds only: the thread that makes a forbidden call once its
    /// filter is in, for the tests (`VMM_SECCOMP_TEST_FORBIDDEN=main|vcpu|
    /// device|migration|vcpu-setup`).
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

/// A filter that allows what `rules` match and answers the rest with
/// `mismatch`.
fn compile(rules: lists::Rules, mismatch: &SeccompAction) -> Result<BpfProgram> {
    Ok(dispatch::compile(
        rules,
        mismatch.clone(),
        SeccompAction::Allow,
    )?)
}

/// A filter that refuses what `rules` match (with the mode's action) and
/// lets everything else through to the filters before it.
fn compile_refusals(rules: lists::Rules, refuse: &SeccompAction) -> Result<BpfProgram> {
    Ok(dispatch::compile(
        rules,
        SeccompAction::Allow,
        refuse.clone(),
    )?)
}

impl Thread {
    /// This kind's place in [`Filters::compiled`].
    fn slot(self) -> usize {
        match self {
            Self::Main => 0,
            Self::Vcpu => 1,
            Self::VcpuSpawner => 2,
            Self::VcpuLock => 3,
            Self::Device => 4,
            Self::Vsock => 5,
            Self::Gdb => 6,
            Self::Migration => 7,
        }
    }
}

/// Compiles `thread`'s list for `mismatch` (calls off the list), with `pid`
/// and `kick` for the lists that name them.
fn compile_for(
    thread: Thread,
    mismatch: &SeccompAction,
    pid: u32,
    kick: u32,
) -> Result<BpfProgram> {
    match thread {
        Thread::Main => compile(lists::main(pid, kick)?, mismatch),
        Thread::Vcpu => compile(lists::vcpu(pid, kick)?, mismatch),
        Thread::VcpuSpawner => compile(lists::vcpu_spawner(pid, kick)?, mismatch),
        Thread::VcpuLock => compile_refusals(lists::vcpu_lock()?, mismatch),
        Thread::Device => compile(lists::device()?, mismatch),
        Thread::Vsock => compile(lists::vsock()?, mismatch),
        Thread::Gdb => compile(lists::gdb()?, mismatch),
        Thread::Migration => compile(lists::migration()?, mismatch),
    }
}

impl Filters {
    /// The filters for `mode` (none for `off`); for `on`, also installs the
    /// SIGSYS handler. Call before any thread starts. `kick`: the vCPU kick
    /// signal, the only one the main and vCPU threads may send.
    pub fn new(mode: Mode, kick: i32) -> Result<Option<Arc<Self>>> {
        let Some(mismatch) = mismatch_action(mode) else {
            return Ok(None);
        };
        let kick = u32::try_from(kick).context("the vCPU kick signal is not a signal number")?;
        let filters = Self {
            mismatch,
            pid: std::process::id(),
            kick,
            compiled: std::array::from_fn(|_| OnceLock::new()),
            forbidden: test_forbidden(),
        };
        if mode == Mode::On {
            sigsys::install_handler().context("cannot install the SIGSYS handler")?;
        }
        Ok(Some(Arc::new(filters)))
    }

    /// `thread`'s program, compiled now if no thread of its kind has yet.
    fn program(&self, thread: Thread) -> Result<&BpfProgram> {
        self.compiled[thread.slot()]
            .get_or_init(|| {
                compile_for(thread, &self.mismatch, self.pid, self.kick)
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the {} list: {e}", thread.as_str()))
    }

    /// Installs `thread`'s list on the calling thread, for the rest of its
    /// life.
    pub fn install(&self, thread: Thread) -> Result<()> {
        let program = self.program(thread)?;
        let current = std::thread::current();
        sigsys::note_thread(current.name().unwrap_or(thread.as_str()));
        seccompiler::apply_filter(program)?;
        log::debug!("seccomp: {} list installed", thread.as_str());
        // A vCPU thread's list is in place once its lock is.
        let settled = match thread {
            Thread::VcpuLock => Thread::Vcpu,
            other => other,
        };
        if self.forbidden == Some(settled) && thread != Thread::VcpuSpawner {
            forbidden_call();
        }
        if self.forbidden == Some(Thread::VcpuLock) && thread == Thread::VcpuLock {
            setup_call_after_lock();
        }
        Ok(())
    }
}

/// Settles the two things glibc's malloc would otherwise find out by
/// opening a file, on whichever thread first needs them, filtered or not
/// (no list but the main thread's allows `openat`). Call before any thread
/// starts. Not glibc: nothing to do.
///
/// - The arena limit, at glibc's own default (8 per CPU this process may
///   run on): glibc 2.36 (Debian 12) works it out the first time a ninth
///   arena is wanted by reading `/sys/devices/system/cpu/online` (seen: a
///   vCPU thread of a 64-vCPU machine trapped on it).
/// - No trimming of a heap's top (`M_TRIM_THRESHOLD` out of reach): when a
///   thread's arena shrinks its heap, glibc first reads
///   `/proc/sys/vm/overcommit_memory` (once per process), which a filtered
///   thread cannot (seen: a virtio-net worker trapped on it after a guest
///   reboot). Freed memory stays in the heaps for reuse; large blocks are
///   mapped and unmapped on their own and are not affected.
pub fn settle_malloc() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel
        // writes at most size_of::<cpu_set_t>() bytes into it.
        let cpus = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                libc::CPU_COUNT(&set)
            } else {
                0
            }
        };
        let arenas = cpus.max(1).saturating_mul(8);
        for (param, value, what) in [
            (libc::M_ARENA_MAX, arenas, "arena limit"),
            (libc::M_TRIM_THRESHOLD, libc::c_int::MAX, "trim threshold"),
        ] {
            // SAFETY: both parameters take a plain integer; mallopt touches
            // only malloc's own settings.
            if unsafe { libc::mallopt(param, value) } != 1 {
                log::debug!("malloc: cannot set the {what} to {value}");
            }
        }
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
        "device" => Some(Thread::Device),
        "migration" => Some(Thread::Migration),
        "vsock" => Some(Thread::Vsock),
        // A vCPU thread's set-up call once its lock is in.
        "vcpu-setup" => Some(Thread::VcpuLock),
        _ => None,
    }
}

/// A call the set-up of a vCPU thread makes, and its lock refuses:
/// renaming the thread (to its own name: harmless if let through).
fn setup_call_after_lock() {
    let name = std::thread::current()
        .name()
        .and_then(|n| std::ffi::CString::new(n).ok())
        .unwrap_or_default();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel takes
    // at most 16 bytes of it); `name` lives across the call.
    let r = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    log::warn!("seccomp test: made a set-up call after the lock (prctl: {r})");
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

    /// Each kind of thread has its own slot and its list compiles there.
    #[test]
    fn every_kind_has_a_slot_and_compiles() {
        let kinds = [
            Thread::Main,
            Thread::Vcpu,
            Thread::VcpuSpawner,
            Thread::VcpuLock,
            Thread::Device,
            Thread::Vsock,
            Thread::Gdb,
            Thread::Migration,
        ];
        let mut slots: Vec<usize> = kinds.iter().map(|k| k.slot()).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..KINDS).collect::<Vec<_>>());
        for mode in [Mode::On, Mode::Log] {
            let mismatch = mismatch_action(mode).unwrap();
            for kind in kinds {
                assert!(!compile_for(kind, &mismatch, 1, 34).unwrap().is_empty());
            }
        }
    }

    /// The boot vCPU's filter is the vCPU list plus the set-up's calls, and
    /// the lock refuses exactly those: what a vCPU thread is left with is
    /// the vCPU list, as with one vCPU.
    #[test]
    fn the_vcpu_lock_leaves_exactly_the_vcpu_list() {
        let vcpu = lists::vcpu(1, 34).unwrap();
        let extras = lists::vcpu_setup_extras().unwrap();
        let spawner = lists::vcpu_spawner(1, 34).unwrap();
        for (nr, rules) in extras.iter() {
            assert!(!rules.is_empty() || !vcpu.contains_key(nr), "{nr}");
            if let Some(v) = vcpu.get(nr) {
                // Only ioctl is on both, by request: conditional on both.
                assert_eq!(*nr, libc::SYS_ioctl);
                assert!(!v.is_empty() && !rules.is_empty());
            }
            let on_vcpu = vcpu.get(nr).map_or(0, Vec::len);
            assert_eq!(spawner[nr].len(), on_vcpu + rules.len(), "{nr}");
        }
        for (nr, rules) in vcpu.iter() {
            // Nothing allowed outright became conditional.
            assert_eq!(rules.is_empty(), spawner[nr].is_empty(), "{nr}");
        }
        for request in lists::SETUP_IOCTLS {
            assert!(!lists::VCPU_IOCTLS.contains(request), "{request:#x}");
        }
        // Threads are started and filters installed only before the lock.
        for nr in [libc::SYS_clone3, libc::SYS_seccomp, libc::SYS_prctl] {
            assert!(extras.contains_key(&nr) && !vcpu.contains_key(&nr), "{nr}");
        }
        for mode in [Mode::On, Mode::Log] {
            let action = mismatch_action(mode).unwrap();
            let lock = compile_refusals(lists::vcpu_lock().unwrap(), &action).unwrap();
            // Short: it is installed once per vCPU.
            assert!(lock.len() < 100, "{} instructions", lock.len());
        }
    }

    #[test]
    fn the_lists_differ_where_the_threads_do() {
        let main = lists::main(1, 34).unwrap();
        let vcpu = lists::vcpu(1, 34).unwrap();
        let has = |r: &lists::Rules, nr| r.contains_key(&nr);
        // Only the main loop accepts clients and reads files.
        for nr in [libc::SYS_accept4, libc::SYS_epoll_wait, libc::SYS_read] {
            assert!(has(&main, nr) && !has(&vcpu, nr), "{nr}");
        }
        // The main loop and the vCPUs kick (a vCPU: the boot vCPU, when
        // it raises the split irqchip's 8259 output).
        assert!(has(&main, libc::SYS_tgkill) && has(&vcpu, libc::SYS_tgkill));
        assert!(vcpu[&libc::SYS_ioctl].len() > main[&libc::SYS_ioctl].len() / 2);
        // Only the main thread opens files, and only in the four ways
        // snapshots and `pmemsave` do (File::create and File::open; a
        // regular file to read or write without blocking): a rule per way.
        assert_eq!(main[&libc::SYS_openat].len(), 4);
        assert!(!has(&vcpu, libc::SYS_openat));
        // musl's open(3) is open(2), the same four ways; glibc's never is.
        let musl = cfg!(target_env = "musl");
        assert_eq!(
            main.get(&libc::SYS_open).map_or(0, Vec::len),
            4 * musl as usize
        );
        assert!(!has(&vcpu, libc::SYS_open));
        // Nobody creates processes, threads or sockets.
        for nr in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_ptrace,
            libc::SYS_rt_sigaction,
            libc::SYS_getppid,
        ] {
            assert!(!has(&main, nr) && !has(&vcpu, nr), "{nr}");
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
        for r in [&main, &vcpu] {
            assert!(!has(r, libc::SYS_io_uring_enter));
        }
        for nr in [libc::SYS_io_uring_setup, libc::SYS_io_uring_register] {
            for r in [&main, &vcpu, &device] {
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
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
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
