//! What the host kernel's vhost devices share (`<linux/vhost.h>`), for
//! [`crate::vsock::VhostVsock`] (`/dev/vhost-vsock`) and
//! [`crate::net::VhostNet`] (`/dev/vhost-net`).
//!
//! A [`VhostFile`] is opened and owned (VHOST_SET_OWNER) on the main
//! thread at build time, and its features read then. When the driver
//! starts the device, the device's worker hands the kernel the accepted
//! features, guest RAM ([`mem_table`], VHOST_SET_MEM_TABLE) and each ring
//! ([`VhostFile::set_vring`]: its size, addresses, next available index,
//! the queue's doorbell eventfd as its kick and an eventfd of ours as its
//! call), then waits on the call eventfds and raises the queues'
//! interrupts ([`forward_calls`]) until it is told to stop. The kernel's
//! threads move the buffers; the guest's doorbells reach them through
//! KVM's ioeventfds without us.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};

use crate::device::VirtioInterrupt;
use crate::worker::{Waiter, STOP_TOKEN};

pub mod dirty_log;
pub use dirty_log::DirtyLog;

/// `VHOST_F_LOG_ALL`: the kernel logs every guest page it writes.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
/// `VHOST_VRING_F_LOG`: the kernel logs its writes of the ring's used area.
const VHOST_VRING_F_LOG: u32 = 0;

/// The ioctl numbers of `<linux/vhost.h>`.
mod nr {
    use super::{VringAddr, VringFile, VringState};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const VHOST: u32 = 0xAF;
    ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST, 0x00, u64);
    ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST, 0x00, u64);
    ioctl_io_nr!(VHOST_SET_OWNER, VHOST, 0x01);
    ioctl_iow_nr!(VHOST_SET_LOG_BASE, VHOST, 0x04, u64);
    // struct vhost_memory's fixed part: nregions, padding.
    ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST, 0x03, [u32; 2]);
    ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST, 0x10, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST, 0x11, VringAddr);
    ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST, 0x20, VringFile);
    ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST, 0x21, VringFile);
    ioctl_iow_nr!(VHOST_NET_SET_BACKEND, VHOST, 0x30, VringFile);
    ioctl_iow_nr!(VHOST_VSOCK_SET_GUEST_CID, VHOST, 0x60, u64);
    ioctl_iow_nr!(VHOST_VSOCK_SET_RUNNING, VHOST, 0x61, i32);
}
use nr::*;

/// The vhost ioctl requests a started device's worker makes whatever the
/// device (the file is opened, owned and asked its features at build
/// time), for the VMM's seccomp lists: the rings set up when the driver
/// starts it (with the dirty log's base during a live migration), and
/// their next available index read back when it stops.
pub fn worker_ioctls() -> [u64; 9] {
    [
        VHOST_SET_FEATURES(),
        VHOST_SET_LOG_BASE(),
        VHOST_SET_MEM_TABLE(),
        VHOST_SET_VRING_NUM(),
        VHOST_SET_VRING_ADDR(),
        VHOST_SET_VRING_BASE(),
        VHOST_GET_VRING_BASE(),
        VHOST_SET_VRING_KICK(),
        VHOST_SET_VRING_CALL(),
    ]
}

/// The ioctl request vhost-net's worker adds (VHOST_NET_SET_BACKEND), for
/// [`crate::net::vhost::worker_ioctls`].
pub(crate) fn net_set_backend_ioctl() -> u64 {
    VHOST_NET_SET_BACKEND()
}

/// The ioctl request vhost-vsock's worker adds (VHOST_VSOCK_SET_RUNNING),
/// for [`crate::vsock::vhost::worker_ioctls`].
pub(crate) fn vsock_running_ioctl() -> u64 {
    VHOST_VSOCK_SET_RUNNING()
}

/// `struct vhost_vring_state`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VringState {
    index: u32,
    num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_vring_addr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VringAddr {
    index: u32,
    flags: u32,
    desc_user_addr: u64,
    used_user_addr: u64,
    avail_user_addr: u64,
    log_guest_addr: u64,
}

/// An ioctl on a vhost device that failed.
#[derive(Debug, thiserror::Error)]
#[error("{name} failed: {source}")]
pub struct IoctlError {
    /// The request.
    pub name: &'static str,
    /// Why.
    #[source]
    pub source: io::Error,
}

fn check(name: &'static str, r: i32) -> Result<(), IoctlError> {
    if r < 0 {
        Err(IoctlError {
            name,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// An owned vhost device file and the features its kernel offers.
#[derive(Debug)]
pub struct VhostFile {
    file: File,
    features: u64,
}

impl VhostFile {
    /// Opens the vhost device at `path`, owns it (VHOST_SET_OWNER) and
    /// reads its features. An error opening is the `io::Error` as is, so
    /// the caller can tell a missing file from a refused one.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(OpenError::Open)?;
        // SAFETY: VHOST_SET_OWNER takes no argument; file is a vhost fd.
        check("VHOST_SET_OWNER", unsafe {
            ioctl(&file, VHOST_SET_OWNER())
        })?;
        let mut features = 0u64;
        // SAFETY: the kernel writes one u64 into `features`.
        check("VHOST_GET_FEATURES", unsafe {
            ioctl_with_mut_ref(&file, VHOST_GET_FEATURES(), &mut features)
        })?;
        Ok(Self { file, features })
    }

    /// The features the kernel's device offers.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// An ioctl that passes `arg` by reference for the kernel to read.
    /// Private: each caller here passes the request's own argument type.
    fn write<T>(&self, name: &'static str, request: u64, arg: &T) -> Result<(), IoctlError> {
        // SAFETY: every caller (in this module) passes the request's own
        // argument type, of which the kernel reads no more than its size;
        // `arg` lives across the call.
        check(name, unsafe { ioctl_with_ref(&self.file, request, arg) })
    }

    /// vhost-net: `fd` (a tap; -1: none) as ring `index`'s backend.
    pub fn net_set_backend(&self, index: u32, fd: RawFd) -> Result<(), IoctlError> {
        let file = VringFile { index, fd };
        self.write("VHOST_NET_SET_BACKEND", VHOST_NET_SET_BACKEND(), &file)
    }

    /// vhost-vsock: the guest's CID.
    pub fn vsock_set_guest_cid(&self, cid: u64) -> Result<(), IoctlError> {
        self.write(
            "VHOST_VSOCK_SET_GUEST_CID",
            VHOST_VSOCK_SET_GUEST_CID(),
            &cid,
        )
    }

    /// vhost-vsock: starts or stops the device.
    pub fn vsock_set_running(&self, on: bool) -> Result<(), IoctlError> {
        let v: i32 = on.into();
        self.write("VHOST_VSOCK_SET_RUNNING", VHOST_VSOCK_SET_RUNNING(), &v)
    }

    /// Tells the kernel the features the driver accepted (those it knows).
    pub fn set_features(&self, features: u64) -> Result<(), IoctlError> {
        self.write("VHOST_SET_FEATURES", VHOST_SET_FEATURES(), &features)
    }

    /// Where the kernel logs the guest pages it writes ([`DirtyLog`]; it
    /// does so once VHOST_F_LOG_ALL is among the features). The log must
    /// outlive every ring that logs into it.
    pub fn set_log_base(&self, log: &DirtyLog) -> Result<(), IoctlError> {
        self.write("VHOST_SET_LOG_BASE", VHOST_SET_LOG_BASE(), &log.base())
    }

    /// Gives the kernel guest RAM.
    pub fn set_mem_table<M: GuestMemory>(&self, mem: &M) -> Result<(), IoctlError> {
        let table = mem_table(mem);
        // SAFETY: `table` is a vhost_memory header (nregions in the low
        // 32 bits of word 0, then padding) followed by nregions regions of
        // four u64 each, all within the vector.
        check("VHOST_SET_MEM_TABLE", unsafe {
            ioctl_with_ptr(&self.file, VHOST_SET_MEM_TABLE(), table.as_ptr())
        })
    }

    /// Gives the kernel ring `index`: its size, where its parts are in
    /// this process (`host` turns a guest address into ours), its next
    /// available index, its doorbell (`kick`) and our interrupt eventfd
    /// (`call`); with `log`, the kernel logs its writes of the used ring
    /// (at its guest address) in the log base's bitmap.
    pub fn set_vring(
        &self,
        index: u32,
        queue: &Queue,
        host: impl Fn(GuestAddress) -> Option<u64>,
        fds: VringFds,
        log: bool,
    ) -> Result<(), IoctlError> {
        let at = |a: u64| {
            host(GuestAddress(a)).ok_or_else(|| IoctlError {
                name: "VHOST_SET_VRING_ADDR",
                source: io::Error::other("a ring outside RAM"),
            })
        };
        let num = VringState {
            index,
            num: u32::from(queue.size()),
        };
        self.write("VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM(), &num)?;
        let addr = VringAddr {
            index,
            flags: if log { 1 << VHOST_VRING_F_LOG } else { 0 },
            desc_user_addr: at(queue.desc_table())?,
            used_user_addr: at(queue.used_ring())?,
            avail_user_addr: at(queue.avail_ring())?,
            log_guest_addr: if log { queue.used_ring() } else { 0 },
        };
        self.write("VHOST_SET_VRING_ADDR", VHOST_SET_VRING_ADDR(), &addr)?;
        let base = VringState {
            index,
            num: u32::from(queue.next_avail()),
        };
        self.write("VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE(), &base)?;
        let kick = VringFile {
            index,
            fd: fds.kick,
        };
        self.write("VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK(), &kick)?;
        let call = VringFile {
            index,
            fd: fds.call,
        };
        self.write("VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL(), &call)
    }

    /// Ring `index`'s next available index, as the kernel left it (read
    /// once its device no longer moves buffers).
    pub fn vring_base(&self, index: u32) -> Result<u16, IoctlError> {
        let mut state = VringState { index, num: 0 };
        // SAFETY: the kernel reads and writes a vhost_vring_state.
        check("VHOST_GET_VRING_BASE", unsafe {
            ioctl_with_mut_ref(&self.file, VHOST_GET_VRING_BASE(), &mut state)
        })?;
        Ok(state.num as u16)
    }
}

/// A ring's eventfds for [`VhostFile::set_vring`]: the queue's doorbell
/// (the kernel's kick) and ours for its interrupts (the kernel's call).
#[derive(Debug, Clone, Copy)]
pub struct VringFds {
    /// The doorbell.
    pub kick: RawFd,
    /// The interrupt.
    pub call: RawFd,
}

/// Stops a ring's kernel side and reads where it stopped: `queue` then
/// holds the kernel's next available index (VHOST_GET_VRING_BASE) and the
/// used index guest RAM holds (the kernel's last write), as a snapshot or
/// the next start needs them. Call with the ring's backend gone (no
/// buffers move). An error leaves `queue` as it was.
pub fn read_back<M: GuestMemory>(
    vhost: &VhostFile,
    index: u32,
    queue: &mut Queue,
    mem: &M,
) -> Result<(), String> {
    let avail = vhost.vring_base(index).map_err(|e| e.to_string())?;
    let used = queue
        .used_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(|e| format!("cannot read ring {index}'s used index: {e}"))?;
    queue.set_next_avail(avail);
    queue.set_next_used(used.0);
    Ok(())
}

/// Why a vhost device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The device file could not be opened.
    #[error(transparent)]
    Open(io::Error),
    /// SET_OWNER or GET_FEATURES failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
}

/// Guest RAM as `struct vhost_memory`: nregions, padding, then each
/// region's guest address, size, host address and flags, as u64 words.
/// Memory with no physical backing gives an empty table.
pub fn mem_table<M: GuestMemory>(mem: &M) -> Vec<u64> {
    let Some(phys) = mem.physical_memory() else {
        return vec![0];
    };
    let regions: Vec<[u64; 4]> = phys
        .iter()
        .filter_map(|r| {
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            Some([r.start_addr().0, r.len(), host as u64, 0])
        })
        .collect();
    let mut table = vec![regions.len() as u64];
    table.extend(regions.iter().flatten());
    table
}

/// Where guest address `addr` is in this process, if in RAM.
pub fn host_address<M: GuestMemory>(mem: &M, addr: GuestAddress) -> Option<u64> {
    mem.physical_memory()
        .and_then(|m| m.get_host_address(addr).ok())
        .map(|p| p as u64)
}

/// Serves the kernel's interrupt eventfds (`calls`, each with its queue)
/// until the worker is told to stop: each becomes a direct line to KVM
/// where the transport can ([`VirtioInterrupt::connect_queue`]), and
/// while a line is off (a masked vector, MSI-X off, no route) its eventfd
/// is read here and what it holds passed on with `signal_queue`. A line
/// that is on is not watched: KVM takes its signals, and watching it
/// would wake this thread for every interrupt for nothing. Returns false
/// when it could not wait on them (at the start or later: interrupts
/// would be lost, so the caller puts the device in its error state).
pub fn forward_calls(
    name: &str,
    waiter: &Waiter,
    calls: &[(&Arc<EventFd>, u16)],
    interrupt: &dyn VirtioInterrupt,
) -> bool {
    let changes = interrupt.direct_changes();
    if let Some(c) = &changes {
        if let Err(e) = waiter.add(c.as_ref(), CHANGES) {
            log::error!("{name}: cannot wait on the interrupt routes: {e}");
            return false;
        }
    }
    for (call, queue) in calls {
        interrupt.connect_queue(*queue, call);
    }
    let mut watched = vec![false; calls.len()];
    let done = watch(name, waiter, calls, interrupt, &mut watched)
        && pass_on(
            name,
            waiter,
            calls,
            interrupt,
            changes.as_deref(),
            &mut watched,
        );
    for (_, queue) in calls {
        interrupt.disconnect_queue(*queue);
    }
    done
}

/// The token of the transport's [`VirtioInterrupt::direct_changes`].
const CHANGES: u64 = STOP_TOKEN - 1;

/// Watches the eventfds of the calls whose direct line is off, and only
/// those (`watched` says which are).
fn watch(
    name: &str,
    waiter: &Waiter,
    calls: &[(&Arc<EventFd>, u16)],
    interrupt: &dyn VirtioInterrupt,
    watched: &mut [bool],
) -> bool {
    for (token, ((call, queue), on)) in calls.iter().zip(watched.iter_mut()).enumerate() {
        let want = !interrupt.is_direct(*queue);
        if want == *on {
            continue;
        }
        let done = if want {
            waiter.add(call.as_ref(), token as u64)
        } else {
            waiter.remove(call.as_ref())
        };
        if let Err(e) = done {
            log::error!("{name}: cannot wait on the kernel's interrupts: {e}");
            return false;
        }
        *on = want;
    }
    true
}

/// [`forward_calls`]' loop.
fn pass_on(
    name: &str,
    waiter: &Waiter,
    calls: &[(&Arc<EventFd>, u16)],
    interrupt: &dyn VirtioInterrupt,
    changes: Option<&EventFd>,
    watched: &mut [bool],
) -> bool {
    loop {
        let tokens = match waiter.wait() {
            Ok(t) => t,
            Err(e) => {
                log::error!("{name}: the worker cannot wait: {e}");
                return false;
            }
        };
        if tokens.contains(&STOP_TOKEN) || waiter.stopping() {
            return true;
        }
        if tokens.contains(&CHANGES) {
            if let Some(c) = changes {
                let _ = c.read();
            }
            if !watch(name, waiter, calls, interrupt, watched) {
                return false;
            }
        }
        for t in tokens {
            if let Some((call, queue)) = calls.get(t as usize) {
                // Empty when KVM took the signal (a line just turned on).
                if call.read().is_ok() {
                    interrupt.signal_queue(*queue);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// A transport whose one line the test turns on and off.
    struct Lines {
        direct: AtomicBool,
        changes: Arc<EventFd>,
        signalled: Mutex<Vec<u16>>,
    }

    impl VirtioInterrupt for Lines {
        fn signal_queue(&self, queue: u16) {
            self.signalled.lock().unwrap().push(queue);
        }
        fn signal_config(&self) {}
        fn set_needs_reset(&self) {}
        fn connect_queue(&self, _queue: u16, _evt: &Arc<EventFd>) -> bool {
            true
        }
        fn is_direct(&self, _queue: u16) -> bool {
            self.direct.load(Ordering::SeqCst)
        }
        fn direct_changes(&self) -> Option<Arc<EventFd>> {
            Some(Arc::clone(&self.changes))
        }
    }

    #[test]
    fn a_call_is_read_only_while_its_direct_line_is_off() {
        let lines = Arc::new(Lines {
            direct: AtomicBool::new(true),
            changes: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            signalled: Mutex::new(Vec::new()),
        });
        let call = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut w = crate::worker::Worker::new("test calls", None).unwrap();
        let (l, c) = (Arc::clone(&lines), Arc::clone(&call));
        w.start(move |waiter| {
            forward_calls("test", &waiter, &[(&c, 5)], &*l);
        })
        .unwrap();
        let signalled = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lines.signalled.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "not passed on");
                std::thread::sleep(Duration::from_millis(1));
            }
            lines.signalled.lock().unwrap().clone()
        };
        // On: the signal is KVM's; the worker does not even wake for it.
        call.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(signalled(0), Vec::<u16>::new());
        // Off: what KVM did not take is passed on, and what comes after.
        lines.direct.store(false, Ordering::SeqCst);
        lines.changes.write(1).unwrap();
        assert_eq!(signalled(1), [5]);
        call.write(1).unwrap();
        assert_eq!(signalled(2), [5, 5]);
        w.stop();
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // From <linux/vhost.h> as the kernel's _IO* macros compute them.
        assert_eq!(VHOST_GET_FEATURES(), 0x8008_af00);
        assert_eq!(VHOST_SET_FEATURES(), 0x4008_af00);
        assert_eq!(VHOST_SET_OWNER(), 0xaf01);
        assert_eq!(VHOST_SET_LOG_BASE(), 0x4008_af04);
        assert_eq!(VHOST_SET_MEM_TABLE(), 0x4008_af03);
        assert_eq!(VHOST_SET_VRING_NUM(), 0x4008_af10);
        assert_eq!(VHOST_SET_VRING_ADDR(), 0x4028_af11);
        assert_eq!(VHOST_SET_VRING_BASE(), 0x4008_af12);
        assert_eq!(VHOST_GET_VRING_BASE(), 0xc008_af12);
        assert_eq!(VHOST_SET_VRING_KICK(), 0x4008_af20);
        assert_eq!(VHOST_SET_VRING_CALL(), 0x4008_af21);
        assert_eq!(VHOST_NET_SET_BACKEND(), 0x4008_af30);
        assert_eq!(VHOST_VSOCK_SET_GUEST_CID(), 0x4008_af60);
        assert_eq!(VHOST_VSOCK_SET_RUNNING(), 0x4004_af61);
    }

    #[test]
    fn guest_ram_becomes_the_kernels_memory_table() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x1_0000_0000), 0x20000),
        ])
        .unwrap();
        let t = mem_table(&mem);
        assert_eq!(t.len(), 1 + 2 * 4);
        assert_eq!(t[0], 2, "nregions, padding 0");
        assert_eq!((t[1], t[2], t[4]), (0, 0x10000, 0));
        assert_eq!((t[5], t[6], t[8]), (0x1_0000_0000, 0x20000, 0));
        let host = mem.get_host_address(GuestAddress(0x1_0000_0000)).unwrap();
        assert_eq!(t[7], host as u64);
        assert_eq!(host_address(&mem, GuestAddress(0x1_0000_0000)), Some(t[7]));
        assert_eq!(host_address(&mem, GuestAddress(0x2_0000_0000)), None);
    }

    #[test]
    fn a_missing_device_file_is_an_open_error() {
        let e = VhostFile::open(Path::new("/nonexistent/vhost-net")).unwrap_err();
        assert!(matches!(e, OpenError::Open(ref e) if e.kind() == io::ErrorKind::NotFound));
        assert_eq!(e.to_string(), "No such file or directory (os error 2)");
        // A file that is no vhost device refuses SET_OWNER.
        let e = VhostFile::open(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().starts_with("VHOST_SET_OWNER failed: "), "{e}");
    }
}
