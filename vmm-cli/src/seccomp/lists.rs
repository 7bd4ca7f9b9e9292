//! The allow-lists, one per thread kind, with why each call is there.
//!
//! Each list is the common part ([`common`]) plus the thread's own. A call
//! is allowed outright, or only with the arguments given (a [`Rule`] is a
//! set of conditions that must all hold; a call with several rules is
//! allowed when any one holds). Arguments are checked where that is cheap
//! and meaningful: which `ioctl` requests, no executable memory, which
//! signal may be sent to whom. File descriptor numbers are not checked
//! (they differ from run to run).
//!
//! The lists were made from what each thread does (the code paths named
//! below) and checked with `strace -f` over the test guests' flows (QMP
//! stop/cont/system_reset/query-*/quit, `--reboot reset`, poweroff,
//! SIGTERM, the console) and with `--seccomp log`.

use std::collections::BTreeMap;

use seccompiler::SeccompCmpOp::{self, Eq, MaskedEq};
use seccompiler::{SeccompCmpArgLen, SeccompCondition, SeccompRule};

use super::ioctls::*;

/// A list: calls and their rules (an empty rule list: allowed outright),
/// as seccompiler takes them, and the `ioctl` requests [`allow_ioctls`]
/// added, in order. seccompiler's rules do not show their values, and the
/// filter's front ([`super::dispatch`]) searches the requests instead of
/// trying them one by one, for as long as `ioctl`'s rules are exactly
/// these ([`Rules::ioctl_requests`]). Lists change only through this
/// module's `allow*` functions, which keep the two in step.
#[derive(Debug, Clone, Default)]
pub(super) struct Rules {
    calls: BTreeMap<i64, Vec<SeccompRule>>,
    ioctls: Vec<u64>,
    /// `ioctl` has a rule [`allow_if`] made (not a request).
    ioctl_other: bool,
    /// [`musl_cloexec_again`] added its rule.
    cloexec_again: bool,
}

impl Rules {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// The calls and their rules, for seccompiler.
    pub(super) fn into_calls(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.calls
    }

    /// `ioctl`'s requests, when its rules are exactly those
    /// [`allow_ioctls`] made (one condition each: argument 1's low 32 bits
    /// equal to a request), in order; else None (a rule made another way,
    /// or a list not made here, leaves `ioctl` to seccompiler's rules).
    pub(super) fn ioctl_requests(&self) -> Option<Vec<u32>> {
        let chain = self.calls.get(&libc::SYS_ioctl)?;
        if self.ioctl_other || chain.len() != self.ioctls.len() {
            return None;
        }
        self.ioctls.iter().map(|&r| u32::try_from(r).ok()).collect()
    }

    /// Adds `other`'s calls and rules (after any this list has for a call)
    /// and its `ioctl` requests.
    pub(super) fn merge(&mut self, other: Rules) {
        for (nr, rules) in other.calls {
            self.calls.entry(nr).or_default().extend(rules);
        }
        self.ioctls.extend(other.ioctls);
        self.ioctl_other |= other.ioctl_other;
        self.cloexec_again |= other.cloexec_again;
    }
}

impl std::ops::Deref for Rules {
    type Target = BTreeMap<i64, Vec<SeccompRule>>;

    fn deref(&self) -> &Self::Target {
        &self.calls
    }
}

impl FromIterator<(i64, Vec<SeccompRule>)> for Rules {
    fn from_iter<I: IntoIterator<Item = (i64, Vec<SeccompRule>)>>(calls: I) -> Self {
        Self {
            calls: calls.into_iter().collect(),
            ..Self::default()
        }
    }
}

/// One condition of a rule: (argument index, operation, value), on the
/// argument's low 32 bits (every checked argument is an `int`, or a request
/// number the kernel reads as `unsigned int`).
type Cond = (u8, SeccompCmpOp, u64);

fn allow(rules: &mut Rules, calls: &[i64]) {
    for &nr in calls {
        rules.calls.insert(nr, Vec::new());
        if nr == libc::SYS_ioctl {
            rules.ioctls.clear();
        }
    }
}

/// The rule that all of `conditions` hold.
fn rule(conditions: &[Cond]) -> Result<SeccompRule, seccompiler::Error> {
    let conditions = conditions
        .iter()
        .map(|(arg, op, value)| {
            SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SeccompRule::new(conditions)?)
}

fn allow_if(rules: &mut Rules, nr: i64, any_of: &[&[Cond]]) -> Result<(), seccompiler::Error> {
    rules.ioctl_other |= nr == libc::SYS_ioctl;
    let entry = rules.calls.entry(nr).or_default();
    for conditions in any_of {
        entry.push(rule(conditions)?);
    }
    Ok(())
}

/// `ioctl` with one of `requests` (argument 1), on any descriptor.
fn allow_ioctls(rules: &mut Rules, requests: &[u64]) -> Result<(), seccompiler::Error> {
    for &request in requests {
        let rule = rule(&[(1, Eq, request)])?;
        rules.calls.entry(libc::SYS_ioctl).or_default().push(rule);
        rules.ioctls.push(request);
    }
    Ok(())
}

/// `openat` with one of `flags` (argument 2), as glibc's `open(3)` makes
/// it. musl's (the static build's) makes `open` instead, with the flags as
/// argument 1 and `O_LARGEFILE` added, and then `fcntl(F_SETFD,
/// FD_CLOEXEC)` on the new descriptor when they hold `O_CLOEXEC`: those
/// too where the C library is musl.
fn allow_open(rules: &mut Rules, flags: &[u64]) -> Result<(), seccompiler::Error> {
    for &f in flags {
        allow_if(rules, libc::SYS_openat, &[&[(2, Eq, f)]])?;
    }
    if cfg!(target_env = "musl") {
        for &f in flags {
            let f = f | libc::O_LARGEFILE as u64;
            allow_if(rules, libc::SYS_open, &[&[(1, Eq, f)]])?;
        }
        musl_cloexec_again(rules)?;
    }
    Ok(())
}

/// A descriptor's duplicate (`try_clone`: `fcntl(F_DUPFD_CLOEXEC)`); musl
/// then sets `FD_CLOEXEC` on it again (`fcntl(F_SETFD)`).
fn allow_dup(rules: &mut Rules) -> Result<(), seccompiler::Error> {
    allow_if(
        rules,
        libc::SYS_fcntl,
        &[&[(1, Eq, libc::F_DUPFD_CLOEXEC as u64)]],
    )?;
    if cfg!(target_env = "musl") {
        musl_cloexec_again(rules)?;
    }
    Ok(())
}

/// `fcntl(F_SETFD, FD_CLOEXEC)`, which musl makes after an open or a
/// duplicate that already asked for it (for kernels that ignored the
/// flag); once per list.
fn musl_cloexec_again(rules: &mut Rules) -> Result<(), seccompiler::Error> {
    if !rules.cloexec_again {
        rules.cloexec_again = true;
        allow_if(
            rules,
            libc::SYS_fcntl,
            &[&[
                (1, Eq, libc::F_SETFD as u64),
                (2, Eq, libc::FD_CLOEXEC as u64),
            ]],
        )?;
    }
    Ok(())
}

/// A file's metadata by its path, as std asks for it: `statx`, or
/// `newfstatat` where that is missing (glibc); musl asks with `stat` and
/// `lstat`.
fn allow_stat(rules: &mut Rules) {
    allow(rules, &[libc::SYS_statx, libc::SYS_newfstatat]);
    if cfg!(target_env = "musl") {
        allow(rules, &[libc::SYS_stat, libc::SYS_lstat]);
    }
}

/// std's `thread::sleep`: glibc's `nanosleep(3)` is `clock_nanosleep`,
/// musl's is `nanosleep`.
fn allow_sleep(rules: &mut Rules) {
    allow(rules, &[libc::SYS_clock_nanosleep]);
    if cfg!(target_env = "musl") {
        allow(rules, &[libc::SYS_nanosleep]);
    }
}

/// No `PROT_EXEC` in argument 2 (`prot` of `mmap` and `mprotect`).
const NO_EXEC: &[Cond] = &[(2, MaskedEq(libc::PROT_EXEC as u64), 0)];

/// What every thread does.
pub(super) fn common() -> Result<Rules, seccompiler::Error> {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            // Locks, condition variables, channels (std's mpsc), joins.
            libc::SYS_futex,
            // stderr (log lines, the SIGSYS line), eventfd signals, serial
            // output.
            libc::SYS_write,
            // Instant/SystemTime and log timestamps when the vDSO falls
            // back to the system call (some clock sources, some hosts).
            libc::SYS_clock_gettime,
            // The SIGSYS line names the thread; vCPU threads report theirs.
            libc::SYS_gettid,
            // Memory: the allocator (arenas, large buffers, trimming), a
            // thread's stack released at its end, guest RAM and kvm_run
            // unmapped when the last user drops them (which may be a vCPU
            // thread). Never executable: see NO_EXEC below.
            libc::SYS_munmap,
            libc::SYS_brk,
            libc::SYS_mremap,
            // Returning from a signal handler: the vCPU kick.
            libc::SYS_rt_sigreturn,
            // glibc blocks signals around pthread_kill and at thread exit.
            libc::SYS_rt_sigprocmask,
            // Dropping descriptors: vCPU fds, eventfds, files, sockets.
            libc::SYS_close,
            // std's HashMap keys, made once per thread.
            libc::SYS_getrandom,
            // A waiting futex interrupted by the kick signal restarts.
            libc::SYS_restart_syscall,
            // Joining threads spins with yield_now.
            libc::SYS_sched_yield,
            // The end of a thread, and of the process (also the SIGSYS
            // handler's _exit).
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    allow_if(&mut r, libc::SYS_mmap, &[NO_EXEC])?;
    allow_if(&mut r, libc::SYS_mprotect, &[NO_EXEC])?;
    // glibc gives freed memory and a dead thread's stack back this way.
    allow_if(
        &mut r,
        libc::SYS_madvise,
        &[&[(2, Eq, libc::MADV_DONTNEED as u64)]],
    )?;
    // Debug builds check that a descriptor is still open before closing it.
    allow_if(&mut r, libc::SYS_fcntl, &[&[(1, Eq, libc::F_GETFD as u64)]])?;
    // The SIGSYS handler puts the terminal back (tcsetattr, TCSANOW).
    allow_ioctls(&mut r, &[TCSETS])?;
    Ok(r)
}

/// The vCPU threads' `ioctl`s, once their vCPUs are set up.
pub(super) const VCPU_IOCTLS: &[u64] = &[
    // Running the guest.
    KVM_RUN,
    // Reset: registers, segments, FPU back to the boot state.
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_SET_FPU,
    // Reset: the local APIC as created, APIC base and
    // paravirtual MSRs, runnable or waiting for SIPI, no pending
    // events.
    KVM_GET_LAPIC,
    KVM_SET_LAPIC,
    KVM_SET_MSRS,
    KVM_SET_MP_STATE,
    KVM_SET_VCPU_EVENTS,
    // Exits: the ACPI SCI is a level line the PM1 registers drive;
    // so is a virtio device's INTA# (its ISR read lowers it).
    KVM_IRQ_LINE,
    // Exits: a virtio driver's DRIVER_OK (or reset) adds (removes)
    // its queues' doorbells; unmasking an MSI-X vector sends what
    // was pending.
    KVM_IOEVENTFD,
    KVM_SIGNAL_MSI,
    // Exits, with the split irqchip: the guest writes our IO-APIC's
    // table, whose pins are KVM MSI routes. A vhost ring's
    // interrupt, an irqfd on an MSI route, follows its MSI-X
    // vector's message and mask as the guest writes them.
    KVM_SET_GSI_ROUTING,
    KVM_IRQFD,
    // A watchdog's inject-nmi action.
    KVM_NMI,
    // With the split irqchip, the boot vCPU injects the vector of
    // our 8259s (ExtINT) before it runs the guest.
    KVM_INTERRUPT,
    // The gdb stub: single step, breakpoints and watchpoints set
    // before a resume, cleared at detach. (Its x87/SSE registers
    // are read and written with KVM_GET_XSAVE and KVM_SET_XSAVE,
    // below.)
    KVM_SET_GUEST_DEBUG,
    // A snapshot saves the vCPU's state and puts it back (the
    // setters the reset path uses too, and these). The monitor's
    // `info registers` and `info lapic` save it the same way, while
    // the guest runs too: these getters and the reset path's
    // KVM_GET_REGS, KVM_GET_SREGS and KVM_GET_LAPIC.
    KVM_GET_MP_STATE,
    KVM_GET_XSAVE,
    KVM_SET_XSAVE,
    KVM_GET_XCRS,
    KVM_SET_XCRS,
    KVM_GET_DEBUGREGS,
    KVM_SET_DEBUGREGS,
    KVM_GET_MSRS,
    KVM_GET_VCPU_EVENTS,
    // A resume after a stop, a save or a load tells the guest its
    // kvmclock stood still (PVCLOCK_GUEST_STOPPED).
    KVM_KVMCLOCK_CTRL,
];

/// A vCPU thread, from the end of its set-up (see
/// `vmm_core::vcpu::VcpuThreadStart`): `KVM_RUN` and its exits (the
/// devices run on this thread), pause/resume/exit on its channel, and the
/// machine reset, which sets the vCPU up again on this thread
/// (`vmm-pc`'s `reset_vcpu` and `set_boot_state`), and the calls run on
/// it (`Vcpus::call_each`: snapshots, the monitor's vCPU state).
/// `pid` and `kick`: as for [`main`] (the only signal it may send, and to
/// whom).
pub(super) fn vcpu(pid: u32, kick: u32) -> Result<Rules, seccompiler::Error> {
    let mut r = common()?;
    allow_ioctls(&mut r, VCPU_IOCTLS)?;
    // Exits: a virtio device's activation hands its worker the queues'
    // eventfds (dup).
    allow_dup(&mut r)?;
    allow(
        &mut r,
        &[
            // Exits: the guest programs our PIT or RTC; the clocks re-arm
            // the main loop's timerfd from whichever thread armed a timer.
            libc::SYS_timerfd_settime,
            // Exits: COM1's output waits a little for a full pipe or
            // terminal to take more (vmm-cli's output.rs).
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
    // Exits: COM1's output to a socket stdout, sent without blocking
    // (vmm-cli's output.rs, `SocketOut`); the main loop writes out what
    // had to wait the same way (its list has this for QMP).
    allow_if(
        &mut r,
        libc::SYS_sendto,
        &[&[(3, Eq, (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64)]],
    )?;
    // Exits, with the split irqchip: a line this vCPU raises on our 8259s
    // (a port write to COM1, the PIT, the RTC, the i8042 or the PIC itself)
    // kicks the boot vCPU; only the kick, only to our own threads.
    allow_if(
        &mut r,
        libc::SYS_tgkill,
        &[&[(0, Eq, u64::from(pid)), (2, Eq, u64::from(kick))]],
    )?;
    Ok(r)
}

/// What the vCPU threads of a machine with several vCPUs do before their
/// set-up is done, on top of [`vcpu`]: the boot vCPU's thread installs
/// `vcpu` plus this ([`vcpu_spawner`]) once and starts the other vCPUs'
/// threads, which inherit it from birth; each thread, its vCPU set up,
/// then adds a filter that refuses exactly these calls ([`vcpu_lock`]), so
/// what is left is [`vcpu`]'s list. One filter compiled and installed per
/// machine, not per vCPU (the kernel's cost grows with a filter's length:
/// about 0.18 ms for `vcpu`'s, against 0.05 ms for the lock).
pub(super) fn vcpu_setup_extras() -> Result<Rules, seccompiler::Error> {
    let mut r = Rules::new();
    // Starting a thread (the boot vCPU's thread, for the others): glibc's
    // pthread_create (clone3, or clone with CLONE_THREAD where the kernel
    // has no clone3).
    allow(&mut r, &[libc::SYS_clone3]);
    let thread = libc::CLONE_THREAD as u64;
    allow_if(&mut r, libc::SYS_clone, &[&[(0, MaskedEq(thread), thread)]])?;
    // A new thread's first steps: glibc registers its restartable
    // sequences and robust futex list; std names the thread and finds its
    // stack's guard page (pthread_getattr_np reads the CPU affinity).
    allow(
        &mut r,
        &[
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
            libc::SYS_sched_getaffinity,
        ],
    );
    allow_if(
        &mut r,
        libc::SYS_prctl,
        &[
            &[(0, Eq, libc::PR_SET_NAME as u64)],
            // Then each thread adds its lock: `no_new_privs` (set already;
            // seccompiler sets it again) and the filter.
            &[(0, Eq, libc::PR_SET_NO_NEW_PRIVS as u64)],
        ],
    )?;
    allow_if(
        &mut r,
        libc::SYS_seccomp,
        &[&[(0, Eq, u64::from(libc::SECCOMP_SET_MODE_FILTER))]],
    )?;
    // Each thread creates its vCPU and gives it its CPUID; the rest of the
    // set-up (MSRs, LAPIC, registers) is on `vcpu`'s list for resets.
    allow_ioctls(&mut r, SETUP_IOCTLS)?;
    Ok(r)
}

/// The set-up's own `ioctl`s, never on [`vcpu`]'s list.
pub(super) const SETUP_IOCTLS: &[u64] = &[KVM_CREATE_VCPU, KVM_SET_CPUID2];

/// [`vcpu`] and [`vcpu_setup_extras`]: the boot vCPU's thread's filter on
/// a machine with several vCPUs, which every vCPU thread inherits.
pub(super) fn vcpu_spawner(pid: u32, kick: u32) -> Result<Rules, seccompiler::Error> {
    let mut r = vcpu(pid, kick)?;
    r.merge(vcpu_setup_extras()?);
    Ok(r)
}

/// The calls [`vcpu_lock`]'s filter refuses once a vCPU is set up: its
/// rules match them (with the mode's action), anything else passes it.
pub(super) fn vcpu_lock() -> Result<Rules, seccompiler::Error> {
    vcpu_setup_extras()
}

/// A device's worker thread (vmm-virtio): made at build time and parked
/// until the guest activates its device, then it waits on its queues'
/// doorbells (epoll over eventfds), moves data between guest memory and
/// the disk image, the tap or the host's random source, and interrupts
/// the guest.
pub(super) fn device() -> Result<Rules, seccompiler::Error> {
    let mut r = common()?;
    allow(
        &mut r,
        &[
            // Each activation: a fresh epoll over the stop eventfd and the
            // queues' doorbells, then waiting on it.
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            // Doorbells and the retry eventfd; the image.
            libc::SYS_read,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_writev,
            // Flush, discard and write-zeroes.
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_fallocate,
            // aio=io_uring: submitting to and waiting on the disk's ring
            // (made, and its completion eventfd registered, at build time
            // on the main thread, so no io_uring_setup/io_uring_register
            // here). The reads, writes and fsyncs it starts run in the
            // kernel: this filter sees the io_uring_enter, not them.
            libc::SYS_io_uring_enter,
            // virtio-rng's rate limit: its timer (made at build time)
            // armed when a window is spent. (Its random bytes come from
            // getrandom, which every thread may call.)
            libc::SYS_timerfd_settime,
        ],
    );
    // aio=io_uring: a submission the kernel refuses for now (EAGAIN) with
    // nothing else in flight is tried again a millisecond later.
    allow_sleep(&mut r);
    // Interrupts: MSI-X messages, or INTA# when the guest left MSI-X off.
    // A network card's worker sets the tap's offloads from what the driver
    // accepted when it starts (TUNSETOFFLOAD, by value); its frames are
    // read and write on the tap (read above, write in the common part).
    allow_ioctls(&mut r, &[KVM_SIGNAL_MSI, KVM_IRQ_LINE, TUNSETOFFLOAD])?;
    // A network card on vhost-net (vhost=on): its worker gives the
    // kernel's vhost-net the features, guest RAM, rings and the tap when
    // the guest starts the card, and takes the tap back and reads the
    // rings' indexes back when it stops (the device file is opened and
    // owned on the main thread at build time). The vhost-vsock worker
    // (a device worker too) makes the same ones.
    allow_ioctls(&mut r, &vmm_virtio::vhost::worker_ioctls())?;
    allow_ioctls(&mut r, &vmm_virtio::net::vhost::worker_ioctls())?;
    // A vhost worker, as it starts and stops, puts each ring's interrupt
    // eventfd on an MSI route of its own as an irqfd and takes it off.
    allow_ioctls(&mut r, &[KVM_IRQFD, KVM_SET_GSI_ROUTING])?;
    Ok(r)
}

/// A socket device's worker (vmm-virtio's vsock): a device worker that
/// also serves Unix sockets. It accepts host connections on the listening
/// socket bound at start-up (accept4, then FIONBIO to make each
/// non-blocking), reads them and writes them (the `CONNECT` line and the
/// bytes that wait with `recvfrom` and `sendto`, std's `read` and `write`
/// on a socket; a payload straight between the socket and guest memory
/// with `recvmsg` and `sendmsg`, MSG_NOSIGNAL on every send), shuts a
/// write side when the guest is done sending, and, for a guest's REQUEST
/// to host port P, makes a non-blocking AF_UNIX stream socket and
/// connects it to `PATH_P`. No other socket family or type.
pub(super) fn vsock() -> Result<Rules, seccompiler::Error> {
    let mut r = device()?;
    allow(
        &mut r,
        &[
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
        ],
    );
    let stream = (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
    allow_if(
        &mut r,
        libc::SYS_socket,
        &[&[(0, Eq, libc::AF_UNIX as u64), (1, Eq, stream)]],
    )?;
    allow_ioctls(&mut r, &[FIONBIO])?;
    // A vhost-vsock-pci's worker gives the kernel's vhost-vsock the
    // features, guest RAM and rings when the guest starts the device (the
    // device workers' vhost ioctls), and starts and stops it (the device
    // file is opened, owned and given its CID on the main thread at build
    // time).
    allow_ioctls(&mut r, &vmm_virtio::vsock::vhost::worker_ioctls())?;
    Ok(r)
}

/// The gdb stub's thread (vmm-gdb, `--gdb`): accepts one client at a
/// time on the listening socket made at start-up (or reads the terminal
/// opened and put in raw mode at start-up: `read`, `write`, `poll`), reads
/// and writes its packets, polls it beside the stop eventfd while the
/// guest runs, and
/// hands every request to the main loop (an eventfd write, then a wait on
/// a channel).
pub(super) fn gdb() -> Result<Rules, seccompiler::Error> {
    let mut r = common()?;
    allow(
        &mut r,
        &[
            // A client connects (accept4); a failed accept waits 100 ms
            // (allow_sleep, below).
            libc::SYS_accept4,
            // The client's packets (read, or recv for reads and the
            // peek gdbstub makes), the stop eventfd.
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_writev,
            // Waiting on the client and the stop eventfd together.
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
    allow_sleep(&mut r);
    // TCP_NODELAY on a client's socket.
    allow_if(
        &mut r,
        libc::SYS_setsockopt,
        &[&[
            (1, Eq, libc::IPPROTO_TCP as u64),
            (2, Eq, libc::TCP_NODELAY as u64),
        ]],
    )?;
    Ok(r)
}

/// The migration thread (vmm-pc's `migration::worker`): sends a live
/// migration over a TCP or Unix socket it connects (reading guest RAM,
/// /proc/self/pagemap for the pages never touched, the dirty log), or
/// receives one on a socket it listens on (or from `--incoming exec:`'s
/// command, started before the filters, waited for at the end), writing
/// the pages into guest RAM. It never starts a program: `exec:` is
/// refused while filters are on.
pub(super) fn migration() -> Result<Rules, seccompiler::Error> {
    let mut r = common()?;
    allow(
        &mut r,
        &[
            // The stream: read/recv in, send/writev out.
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_writev,
            // Connecting to the destination, or listening for the source.
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept4,
            // Pacing to max-bandwidth: allow_sleep, below.
            // /proc/self/pagemap: the pages never touched are not sent.
            libc::SYS_pread64,
            // A stale Unix socket removed before listening, and the one
            // listened on once the source connected (symlink_metadata:
            // allow_stat, below; unlink).
            libc::SYS_unlink,
            // `--incoming exec:`'s command waited for.
            libc::SYS_wait4,
        ],
    );
    allow_sleep(&mut r);
    allow_stat(&mut r);
    // Stream sockets of the three families only.
    let family = |f: i32| [(0, Eq, f as u64)];
    allow_if(
        &mut r,
        libc::SYS_socket,
        &[
            &family(libc::AF_INET),
            &family(libc::AF_INET6),
            &family(libc::AF_UNIX),
        ],
    )?;
    // TCP_NODELAY on the connection; SO_REUSEADDR on a TCP listener.
    allow_if(
        &mut r,
        libc::SYS_setsockopt,
        &[
            &[
                (1, Eq, libc::IPPROTO_TCP as u64),
                (2, Eq, libc::TCP_NODELAY as u64),
            ],
            &[
                (1, Eq, libc::SOL_SOCKET as u64),
                (2, Eq, libc::SO_REUSEADDR as u64),
            ],
        ],
    )?;
    // The socket's second handle (try_clone), for migrate_cancel.
    allow_dup(&mut r)?;
    // The page map, read only.
    allow_open(&mut r, &[(libc::O_RDONLY | libc::O_CLOEXEC) as u64])?;
    allow_ioctls(&mut r, &[KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG])?;
    Ok(r)
}

/// The main thread, from just before the main loop until the process
/// ends: the event-manager loop and what its subscribers do, the machine's
/// commands (QMP, the console's monitor), the reset path, and the way out.
/// `pid`: this process, the only one the vCPU kick may go to; `kick`: the
/// kick signal.
pub(super) fn main(pid: u32, kick: u32) -> Result<Rules, seccompiler::Error> {
    let mut r = common()?;
    allow(
        &mut r,
        &[
            // The loop itself (event-manager), and subscribers coming and
            // going (the QMP client).
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            // signalfd, timerfds, eventfds, console stdin, the QMP client;
            // the reset path reads the kernel and initrd again from the
            // files kept open, from their start.
            libc::SYS_read,
            libc::SYS_lseek,
            libc::SYS_writev,
            // The timer alarm (vmm-clock's TimerFdAlarm).
            libc::SYS_timerfd_settime,
            // COM1's output that waited for its reader: written out at
            // the end, waiting for room (output.rs).
            libc::SYS_poll,
            libc::SYS_ppoll,
            // system_reset: a virtio device's doorbells go with its reset.
            // (KVM_IOEVENTFD, below.)
            // QMP: a client connects; a failed write drops it.
            libc::SYS_accept4,
            libc::SYS_shutdown,
            // The reset path sizes the initrd (File::metadata: statx, or
            // fstat where statx is missing); at exit the QMP socket is
            // removed if it still is one (symlink_metadata: allow_stat,
            // below; unlink).
            libc::SYS_fstat,
            libc::SYS_unlink,
            // Kicking a vCPU: pthread_kill is tgkill(getpid(), tid, sig).
            libc::SYS_getpid,
        ],
    );
    allow_stat(&mut r);
    // Only the kick, only to our own threads.
    allow_if(
        &mut r,
        libc::SYS_tgkill,
        &[&[(0, Eq, u64::from(pid)), (2, Eq, u64::from(kick))]],
    )?;
    // QMP: replies and events go out without blocking and without SIGPIPE
    // (send with MSG_NOSIGNAL | MSG_DONTWAIT on the client socket).
    allow_if(
        &mut r,
        libc::SYS_sendto,
        &[&[(3, Eq, (libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u64)]],
    )?;
    // QMP: the client's second handle (try_clone).
    allow_dup(&mut r)?;
    // snapshot-save creates its file (File::create) and syncs it, and
    // reads the page map (File::open); snapshot-load and `migrate-incoming
    // file:` open theirs to read, and `pmemsave` its to write (made if
    // missing, not truncated until checked), only if it is a regular file
    // (O_NONBLOCK, so that a FIFO cannot block the open; cleared once
    // fstat says it is a regular file: F_GETFL, F_SETFL). Only those ways.
    let quiet = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    allow_open(
        &mut r,
        &[
            (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            (libc::O_RDONLY | quiet) as u64,
            (libc::O_WRONLY | libc::O_CREAT | quiet) as u64,
        ],
    )?;
    allow_if(
        &mut r,
        libc::SYS_fcntl,
        &[
            &[(1, Eq, libc::F_GETFL as u64)],
            &[(1, Eq, libc::F_SETFL as u64)],
        ],
    )?;
    // ...and reads /proc/self/pagemap to skip RAM never touched. A save
    // writes a new file beside the old one (the sections, then each run
    // of RAM pages at its place, the tail's holes by its length) and
    // renames it over the old (glibc's rename(3) is rename(2) on x86-64;
    // renameat and renameat2 for C libraries that use those); a restore
    // maps RAM images private (mmap, allowed above without PROT_EXEC).
    // RAM still mapped from the file it was restored from is copied from
    // that file to the new one in the kernel (copy_file_range).
    allow(
        &mut r,
        &[
            libc::SYS_fsync,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_copy_file_range,
            libc::SYS_ftruncate,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
        ],
    );
    // A migration's disk images change hands: the source lets their
    // locks go when it completes, the destination takes them once loaded,
    // trying again every 20 ms until the source has (std's sleep).
    allow(&mut r, &[libc::SYS_flock]);
    allow_sleep(&mut r);
    // QMP: the client's write timeout.
    allow_if(
        &mut r,
        libc::SYS_setsockopt,
        &[&[
            (1, Eq, libc::SOL_SOCKET as u64),
            (2, Eq, libc::SO_SNDTIMEO as u64),
        ]],
    )?;
    allow_ioctls(
        &mut r,
        &[
            // stop/cont: the guest's kvmclock saved and put back.
            KVM_GET_CLOCK,
            KVM_SET_CLOCK,
            // system_reset: the irqchip and KVM's PIT as they were fresh.
            KVM_SET_IRQCHIP,
            KVM_SET_PIT2,
            // system_powerdown: the SCI line.
            KVM_IRQ_LINE,
            // system_reset and snapshot-load with the split irqchip: our
            // IO-APIC's pins as KVM MSI routes again; and a vhost ring's
            // irqfd on its MSI route following the MSI-X state put back.
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            // snapshot-save: the irqchip and KVM's PIT read.
            KVM_GET_IRQCHIP,
            KVM_GET_PIT2,
            // migrate: dirty logging turned on (the migration thread
            // turns it off).
            KVM_SET_USER_MEMORY_REGION,
            // system_reset: virtio devices remove their doorbells; cont
            // after io-error: a retried request may interrupt the guest;
            // a snapshot-load puts a virtio device's doorbells back, and
            // its worker, started again with the guest, gets an interrupt
            // per queue.
            KVM_IOEVENTFD,
            KVM_SIGNAL_MSI,
            // QMP: the client socket made blocking (set_nonblocking).
            FIONBIO,
            // The terminal: checked and put back on the way out.
            TCGETS,
        ],
    )?;
    Ok(r)
}
