//! Test fakes: guest memory, recording interrupt seams and doorbells, a
//! driver-side split virtqueue, and a driver that sets a function up the
//! way Linux's `virtio_pci_modern` does.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_pci::msix::MsiMessage;
use vmm_pci::PciDevice;
use vmm_sys_util::eventfd::EventFd;

use crate::device::VirtioDevice;
use crate::seams::{Doorbells, IntxLine, MsiRoutes, MsiSender};
use crate::transport::{TransportSeams, VirtioPciDevice};

/// Guest memory of the tests: as the machine's, with a dirty bitmap of
/// the writes the devices make.
pub type Mem = GuestMemoryMmap<AtomicBitmap>;

/// How long a test waits for a worker before calling it hung.
pub const HANG: Duration = Duration::from_secs(20);

/// `size` bytes of anonymous guest memory at 0.
pub fn memory(size: usize) -> Arc<Mem> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap())
}

/// The 4 KiB pages of the tests' memory (from 0) that its dirty bitmap
/// has, in order, and the bitmap cleared: what a live migration's pass
/// would take.
pub fn take_dirty_pages(mem: &Mem) -> Vec<u64> {
    use vm_memory::GuestMemoryBackend;
    let region = mem.find_region(GuestAddress(0)).unwrap().get_mmap();
    let words = region.bitmap().get_and_reset();
    (0..words.len() as u64 * 64)
        .filter(|&p| words[(p / 64) as usize] & (1 << (p % 64)) != 0)
        .collect()
}

/// A list other threads append to, and tests wait on.
#[derive(Debug)]
pub struct Recorder<T> {
    items: Mutex<Vec<T>>,
    grew: Condvar,
}

impl<T: Clone> Recorder<T> {
    /// An empty one.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::new(Vec::new()),
            grew: Condvar::new(),
        })
    }

    /// Appends `item`.
    pub fn push(&self, item: T) {
        self.items.lock().unwrap().push(item);
        self.grew.notify_all();
    }

    /// What is there now.
    pub fn items(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits until there are at least `n` items; panics after [`HANG`].
    pub fn wait_len(&self, n: usize) -> Vec<T> {
        let deadline = Instant::now() + HANG;
        let mut items = self.items.lock().unwrap();
        while items.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {HANG:?} for {n} items, have {}",
                items.len()
            );
            items = self.grew.wait_timeout(items, left).unwrap().0;
        }
        items.clone()
    }
}

/// Records the MSI messages sent.
#[derive(Debug)]
pub struct FakeMsi(pub Arc<Recorder<MsiMessage>>);

impl MsiSender for FakeMsi {
    fn send(&self, msg: MsiMessage) {
        self.0.push(msg);
    }
}

/// Records the INTx levels driven.
#[derive(Debug)]
pub struct FakeIntx(pub Arc<Recorder<bool>>);

impl IntxLine for FakeIntx {
    fn set_level(&self, high: bool) {
        self.0.push(high);
    }
}

/// Keeps the doorbells registered, by address and eventfd; may refuse.
#[derive(Debug, Default)]
pub struct FakeDoorbells {
    /// (address, eventfd number).
    pub registered: Mutex<Vec<(u64, i32)>>,
    /// Refuse every registration.
    pub refuse: bool,
    /// Registrations asked for, refused or not.
    pub attempts: std::sync::atomic::AtomicUsize,
}

impl Doorbells for FakeDoorbells {
    fn register(&self, addr: u64, evt: &EventFd) -> Result<(), String> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.refuse {
            return Err("no ioeventfd here".into());
        }
        let mut r = self.registered.lock().unwrap();
        assert!(
            !r.iter().any(|(a, _)| *a == addr),
            "{addr:#x} registered twice"
        );
        r.push((addr, evt.as_raw_fd()));
        Ok(())
    }

    fn unregister(&self, addr: u64, evt: &EventFd) {
        let mut r = self.registered.lock().unwrap();
        let before = r.len();
        r.retain(|&(a, fd)| (a, fd) != (addr, evt.as_raw_fd()));
        assert_eq!(r.len() + 1, before, "{addr:#x} was not registered");
    }
}

/// KVM's irqfds on MSI routes, faked: which eventfd is on which route
/// with which message; KVM's own sends go to the function's recorder.
#[derive(Debug)]
pub struct FakeRoutes {
    /// Route: (eventfd number, message).
    routes: Mutex<std::collections::BTreeMap<u32, (i32, MsiMessage)>>,
    next: Mutex<u32>,
    sent: Arc<Recorder<MsiMessage>>,
}

impl FakeRoutes {
    /// No routes; KVM's sends recorded in `sent`.
    pub fn new(sent: Arc<Recorder<MsiMessage>>) -> Self {
        Self {
            routes: Mutex::default(),
            next: Mutex::new(24),
            sent,
        }
    }

    /// The kernel (vhost) signals `evt`: KVM sends its route's message if
    /// it is on one, else `evt` keeps the signal for the device to read.
    pub fn kernel_signal(&self, evt: &EventFd) {
        let fd = evt.as_raw_fd();
        let routed = self
            .routes
            .lock()
            .unwrap()
            .values()
            .find(|(f, _)| *f == fd)
            .map(|(_, m)| *m);
        match routed {
            Some(msg) => self.sent.push(msg),
            None => evt.write(1).unwrap(),
        }
    }

    /// The messages eventfds are routed to now.
    pub fn connected(&self) -> Vec<MsiMessage> {
        self.routes.lock().unwrap().values().map(|r| r.1).collect()
    }
}

impl MsiRoutes for FakeRoutes {
    fn connect(&self, evt: &EventFd, msg: MsiMessage) -> Result<u32, String> {
        let mut routes = self.routes.lock().unwrap();
        let fd = evt.as_raw_fd();
        assert!(
            !routes.values().any(|(f, _)| *f == fd),
            "eventfd {fd} connected twice"
        );
        let mut next = self.next.lock().unwrap();
        *next += 1;
        routes.insert(*next, (fd, msg));
        Ok(*next)
    }

    fn retarget(&self, route: u32, msg: MsiMessage) -> Result<(), String> {
        let mut routes = self.routes.lock().unwrap();
        let r = routes.get_mut(&route).ok_or("no such route")?;
        r.1 = msg;
        Ok(())
    }

    fn disconnect(&self, route: u32, evt: &EventFd) {
        let gone = self.routes.lock().unwrap().remove(&route);
        assert_eq!(gone.map(|r| r.0), Some(evt.as_raw_fd()), "route {route}");
    }
}

/// The fakes of one function.
#[derive(Debug, Clone)]
pub struct Fakes {
    pub msi: Arc<Recorder<MsiMessage>>,
    pub intx: Arc<Recorder<bool>>,
    pub doorbells: Arc<FakeDoorbells>,
    pub routes: Arc<FakeRoutes>,
}

impl Fakes {
    /// Fresh fakes; doorbells refused if `refuse`.
    pub fn new(refuse: bool) -> Self {
        let msi = Recorder::new();
        Self {
            routes: Arc::new(FakeRoutes::new(Arc::clone(&msi))),
            msi,
            intx: Recorder::new(),
            doorbells: Arc::new(FakeDoorbells {
                refuse,
                ..FakeDoorbells::default()
            }),
        }
    }

    /// As the transport takes them.
    pub fn seams(&self) -> TransportSeams {
        TransportSeams {
            msi: Arc::new(FakeMsi(Arc::clone(&self.msi))),
            intx: Some(Arc::new(FakeIntx(Arc::clone(&self.intx)))),
            doorbells: Arc::clone(&self.doorbells) as Arc<dyn Doorbells>,
            msi_routes: Some(Arc::clone(&self.routes) as Arc<dyn MsiRoutes>),
        }
    }
}

/// Descriptor flags.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;

/// A split virtqueue as a driver lays it out: descriptors, then the
/// available ring, then (4-aligned) the used ring.
#[derive(Debug, Clone)]
pub struct Ring {
    pub mem: Arc<Mem>,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    avail_idx: u16,
}

impl Ring {
    /// A ring of `size` at `base`, zeroed.
    pub fn new(mem: &Arc<Mem>, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        let end = used + 6 + 8 * u64::from(size);
        mem.write_slice(&vec![0; (end - base) as usize], GuestAddress(base))
            .unwrap();
        Self {
            mem: Arc::clone(mem),
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_desc(&self.mem, self.desc, i, addr, len, flags, next);
    }

    /// Makes `head` available (and bumps `avail.idx`).
    pub fn publish(&mut self, head: u16) {
        self.publish_all(&[head]);
    }

    /// Makes `heads` available together: their ring slots first, then
    /// `avail.idx` moved once, so that a device never sees some of them
    /// without the rest (a worker starting up takes what is available
    /// without waiting for a notification).
    pub fn publish_all(&mut self, heads: &[u16]) {
        for (k, &head) in heads.iter().enumerate() {
            let at = self.avail_idx.wrapping_add(k as u16) % self.size;
            let slot = self.avail + 4 + 2 * u64::from(at);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(heads.len() as u16);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes `avail.idx` as is (a driver may lie).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The driver's `used_event` (with VIRTIO_RING_F_EVENT_IDX).
    pub fn set_used_event(&self, idx: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(idx, GuestAddress(at)).unwrap();
    }

    /// The device's `avail_event` (with VIRTIO_RING_F_EVENT_IDX): the
    /// available index past which it wants a notification.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// `used.idx`.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// Waits until `used.idx` reaches `n`; panics after [`HANG`].
    pub fn wait_used(&self, n: u16) {
        let deadline = Instant::now() + HANG;
        while self.used_idx() != n {
            assert!(
                Instant::now() < deadline,
                "used.idx stuck at {}",
                self.used_idx()
            );
            std::thread::yield_now();
        }
    }
}

/// Writes descriptor `i` of the table at `table`.
pub fn write_desc(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(table + 16 * u64::from(i));
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&d, at).unwrap();
}

/// Common configuration offsets, for drivers in tests.
pub mod reg {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const ISR: u64 = 0x1000;
    pub const DEVICE_CFG: u64 = 0x2000;
    pub const NOTIFY: u64 = 0x3000;
}

/// Status bits.
pub const ACKNOWLEDGE: u8 = 1;
pub const DRIVER: u8 = 2;
pub const DRIVER_OK: u8 = 4;
pub const FEATURES_OK: u8 = 8;
pub const NEEDS_RESET: u8 = 0x40;

/// BAR 0 access of `len` bytes.
pub fn read(d: &mut dyn PciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.bar_read(0, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// BAR 0 write of `len` bytes.
pub fn write(d: &mut dyn PciDevice, offset: u64, len: usize, v: u64) {
    d.bar_write(0, offset, &v.to_le_bytes()[..len]);
}

/// Configuration space write of `len` bytes.
pub fn cfg_write(d: &mut dyn PciDevice, offset: usize, len: usize, v: u32) {
    d.config_write(offset, &v.to_le_bytes()[..len]);
}

/// Configuration space read of `len` bytes.
pub fn cfg_read(d: &mut dyn PciDevice, offset: usize, len: usize) -> u32 {
    let mut b = [0u8; 4];
    d.config_read(offset, &mut b[..len]);
    u32::from_le_bytes(b)
}

/// The MSI-X capability's offset.
pub fn msix_cap(d: &dyn PciDevice) -> usize {
    d.config()
        .find_capability(0x11)
        .expect("no MSI-X capability")
}

/// Enables MSI-X and programs vector `v` to write `data` at 0xfee00000
/// (unmasked).
pub fn msix_vector(d: &mut dyn PciDevice, v: u64, data: u32) {
    let cap = msix_cap(d);
    cfg_write(d, cap + 2, 2, 0x8000);
    let e = v * 16;
    d.bar_write(2, e, &0xfee0_0000u64.to_le_bytes());
    d.bar_write(2, e + 8, &data.to_le_bytes());
    d.bar_write(2, e + 12, &0u32.to_le_bytes());
}

/// `device` as PCI function `name` on `mem`, its BARs where every test
/// puts them (0 at 0xc000_0000, 2 at 0xc000_4000), not yet decoding.
pub fn placed(
    name: &str,
    device: Box<dyn VirtioDevice<Mem>>,
    mem: &Arc<Mem>,
    seams: TransportSeams,
) -> VirtioPciDevice<Mem> {
    let mut dev = VirtioPciDevice::new(name, device, Arc::clone(mem), seams).unwrap();
    dev.config_mut().set_bar_base(0, 0xc000_0000);
    dev.config_mut().set_bar_base(2, 0xc000_4000);
    dev.config_mut().set_reset_state();
    dev
}

/// [`placed`], decoding memory, with MSI-X on and its vectors
/// `0..vectors` sending data 0x40 + v.
pub fn plugged(
    name: &str,
    device: Box<dyn VirtioDevice<Mem>>,
    mem: &Arc<Mem>,
    seams: TransportSeams,
    vectors: u64,
) -> VirtioPciDevice<Mem> {
    let mut dev = placed(name, device, mem, seams);
    cfg_write(&mut dev, 4, 2, u32::from(vmm_pci::config::COMMAND_MEMORY));
    for v in 0..vectors {
        msix_vector(&mut dev, v, 0x40 + v as u32);
    }
    dev
}

/// How a test driver sets a queue up.
#[derive(Debug, Clone, Copy)]
pub struct QueueSetup {
    pub size: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub vector: u16,
}

impl From<&Ring> for QueueSetup {
    fn from(r: &Ring) -> Self {
        Self {
            size: r.size,
            desc: r.desc,
            driver: r.avail,
            device: r.used,
            vector: 0xffff,
        }
    }
}

/// Linux's `virtio_pci_modern` sequence up to DRIVER_OK: reset (and wait
/// for 0), ACKNOWLEDGE, DRIVER, read both feature words, accept
/// `offered & want`, FEATURES_OK and read it back, the configuration
/// vector, then each queue (select, size, areas as 32-bit halves, notify
/// offset, vector read back) and enable, then DRIVER_OK. Returns the
/// features accepted, or None if the device refused FEATURES_OK.
pub fn linux_init(
    d: &mut dyn PciDevice,
    want: u64,
    config_vector: u16,
    queues: &[QueueSetup],
) -> Option<u64> {
    use reg::*;
    write(d, DEVICE_STATUS, 1, 0);
    assert_eq!(read(d, DEVICE_STATUS, 1), 0);
    write(d, DEVICE_STATUS, 1, u64::from(ACKNOWLEDGE));
    write(d, DEVICE_STATUS, 1, u64::from(ACKNOWLEDGE | DRIVER));
    write(d, DEVICE_FEATURE_SELECT, 4, 0);
    let low = read(d, DEVICE_FEATURE, 4);
    write(d, DEVICE_FEATURE_SELECT, 4, 1);
    let high = read(d, DEVICE_FEATURE, 4);
    let accepted = (high << 32 | low) & want;
    write(d, DRIVER_FEATURE_SELECT, 4, 0);
    write(d, DRIVER_FEATURE, 4, accepted & 0xffff_ffff);
    write(d, DRIVER_FEATURE_SELECT, 4, 1);
    write(d, DRIVER_FEATURE, 4, accepted >> 32);
    let s = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    write(d, DEVICE_STATUS, 1, u64::from(s));
    if read(d, DEVICE_STATUS, 1) as u8 & FEATURES_OK == 0 {
        write(d, DEVICE_STATUS, 1, u64::from(s | 0x80));
        return None;
    }
    write(d, CONFIG_MSIX_VECTOR, 2, u64::from(config_vector));
    assert_eq!(read(d, CONFIG_MSIX_VECTOR, 2), u64::from(config_vector));
    for (i, q) in queues.iter().enumerate() {
        write(d, QUEUE_SELECT, 2, i as u64);
        let max = read(d, QUEUE_SIZE, 2);
        assert!(max >= u64::from(q.size) && read(d, QUEUE_ENABLE, 2) == 0);
        write(d, QUEUE_SIZE, 2, u64::from(q.size));
        for (reg, v) in [
            (QUEUE_DESC, q.desc),
            (QUEUE_DRIVER, q.driver),
            (QUEUE_DEVICE, q.device),
        ] {
            write(d, reg, 4, v & 0xffff_ffff);
            write(d, reg + 4, 4, v >> 32);
        }
        assert_eq!(read(d, QUEUE_NOTIFY_OFF, 2), i as u64);
        write(d, QUEUE_MSIX_VECTOR, 2, u64::from(q.vector));
        assert_eq!(read(d, QUEUE_MSIX_VECTOR, 2), u64::from(q.vector));
    }
    for i in 0..queues.len() {
        write(d, QUEUE_SELECT, 2, i as u64);
        write(d, QUEUE_ENABLE, 2, 1);
    }
    write(d, DEVICE_STATUS, 1, u64::from(s | DRIVER_OK));
    Some(accepted)
}

/// A xorshift generator for the mini-fuzzers.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `saved` (a snapshot of `dev`) survives JSON and restores to itself,
/// and the same with another device's state (`other`) is refused as
/// invalid, leaving `dev` as it was.
pub fn restores_and_refuses_another_device(
    dev: &mut VirtioPciDevice<Mem>,
    saved: &crate::transport::snapshot::VirtioPciSnapshot,
    other: crate::device::DeviceSnapshot,
) {
    let text = serde_json::to_string(saved).unwrap();
    dev.restore(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(&dev.snapshot().unwrap(), saved);
    let mut bad = saved.clone();
    bad.device = other;
    assert!(matches!(
        dev.restore(&bad),
        Err(crate::device::SnapshotError::Invalid(_))
    ));
    assert_eq!(&dev.snapshot().unwrap(), saved, "unchanged");
}
