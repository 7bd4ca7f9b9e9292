//! Shared pieces of the fuzz targets: reading operations out of the
//! fuzzer's bytes, fake interrupt lines and outputs, port accesses through
//! the bus interface, and fake time driving real `vmm_clock::Clocks`.
//!
//! Every target turns its input into a sequence of operations a guest (port
//! reads and writes of any size at any offset), the host (console input,
//! machine reset, the power button) or time (advances, late wake-ups,
//! wall-clock steps) could perform, runs them through the crate's public
//! interface, and checks the bounds the crate documents after each one. A
//! panic, an endless loop (libFuzzer's `-timeout`) or a sanitizer report is
//! a finding.

use std::convert::Infallible;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vm_device::bus::PioAddress;
use vm_device::MutDevicePio;
use vmm_clock::{Clocks, FakeTime, TimeSource};
use vmm_devices::{LevelLine, Trigger};

/// The fuzzer's bytes, read front to back; past the end every read is 0.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 at the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `N` bytes, zero-padded at the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A fake edge-triggered line: counts its edges.
#[derive(Debug, Clone, Default)]
pub struct Line(Arc<AtomicU64>);

impl Line {
    /// Edges since the last call.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

impl Trigger for Line {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A fake level-triggered line (the ACPI SCI): remembers its level.
#[derive(Debug, Clone, Default)]
pub struct Level(Arc<AtomicBool>);

impl Level {
    /// The level now.
    pub fn high(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl LevelLine for Level {
    fn set_level(&self, high: bool) {
        self.0.store(high, Ordering::Relaxed);
    }
}

/// A `Write` that counts its bytes, or fails every write (a closed pipe).
#[derive(Debug, Clone, Default)]
pub struct Output {
    bytes: Arc<AtomicU64>,
    broken: bool,
}

impl Output {
    /// An output whose every write fails.
    pub fn broken() -> Self {
        Self {
            bytes: Arc::default(),
            broken: true,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An access width as drivers make them: mostly 1, 2 or 4 bytes, now and
/// then 8, or anything from 0 to 8 (what a broken bus could hand over).
pub fn width(input: &mut Input) -> usize {
    match input.u8() % 8 {
        0 | 1 => 1,
        2 | 3 => 2,
        4 | 5 => 4,
        6 => 8,
        _ => usize::from(input.u8() % 9),
    }
}

/// An access's direction and data: `None` for a read, else the bytes to
/// write, the input's next `len` (zeros past its end).
pub fn write_data(input: &mut Input, len: usize) -> Option<[u8; 8]> {
    if input.u8() & 1 == 0 {
        return None;
    }
    let mut data = [0u8; 8];
    let bytes = input.bytes(len.min(8));
    data[..bytes.len()].copy_from_slice(bytes);
    Some(data)
}

/// One port access as a guest makes it: a read or a write of 0 to 8 bytes
/// at an offset from the device's base.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// A write (else a read).
    pub write: bool,
    /// The offset from the base the bus hands the device.
    pub offset: u16,
    /// The bytes written (the first `len`).
    pub data: [u8; 8],
    /// The access size.
    pub len: usize,
}

impl Access {
    /// Decodes an access: mostly 1-byte, at offsets inside `0..span`;
    /// now and then 2 or 4 bytes, any size from 0 to 8, or any offset.
    pub fn decode(input: &mut Input, span: u16) -> Self {
        let shape = input.u8();
        let write = shape & 1 != 0;
        let len = match (shape >> 1) & 7 {
            0..=4 => 1,
            5 => 2,
            6 => 4,
            _ => usize::from(input.u8() % 9),
        };
        let offset = if shape & 0x10 != 0 {
            input.u16()
        } else {
            u16::from(input.u8()) % span.max(1)
        };
        let mut data = [0u8; 8];
        if write {
            let bytes = input.bytes(len);
            data[..bytes.len()].copy_from_slice(bytes);
        }
        Self {
            write,
            offset,
            data,
            len,
        }
    }

    /// Performs the access on `dev` at `base`; returns what a read read.
    pub fn run(&self, dev: &mut impl MutDevicePio, base: u16) -> [u8; 8] {
        let mut data = self.data;
        if self.write {
            dev.pio_write(PioAddress(base), self.offset, &data[..self.len]);
        } else {
            dev.pio_read(PioAddress(base), self.offset, &mut data[..self.len]);
        }
        data
    }
}

/// The longest stretch [`Sim::run_for`] walks through deadline by deadline
/// (2^26 ns, 67 ms): enough for many periods of every timer, few enough
/// steps to keep an input fast.
pub const MAX_RUN_NS: i64 = 1 << 26;
/// The longest single leap of [`Sim::leap`] (2^48 ns, about 3.3 days).
pub const MAX_LEAP_NS: i64 = 1 << 48;

/// Fake time behind real [`Clocks`]: time moves only when the target says.
#[derive(Debug)]
pub struct Sim {
    /// The time source the clocks read.
    pub time: Arc<FakeTime>,
    /// The clocks the devices run on.
    pub clocks: Clocks,
}

impl Sim {
    /// Clocks at monotonic 0 and wall `wall_ns`, with the VM running.
    pub fn new(wall_ns: i64) -> Self {
        let time = Arc::new(FakeTime::with_wall(wall_ns));
        let clocks = Clocks::new(time.clone() as Arc<dyn TimeSource>);
        clocks.vm_start();
        Self { time, clocks }
    }

    /// Monotonic time now.
    pub fn now(&self) -> i64 {
        self.time.monotonic_ns()
    }

    /// Runs the due timers as the main loop does when its alarm fires, and
    /// checks that the main loop could not spin. vmm-clock runs each timer
    /// at most once a pass, so a timer armed for `now` during a pass (the
    /// RTC's re-arm after a wall-clock step, say) is still due after it and
    /// runs in the next one; what must never happen is a timer due pass
    /// after pass with no time passing (a callback re-arming itself at or
    /// before now without bound): the main loop would never sleep.
    pub fn run_timers(&self) {
        const PASSES: usize = 4;
        for _ in 0..PASSES {
            self.clocks.run_all_timers();
            match self.clocks.alarm_deadline() {
                Some(deadline) if deadline <= self.now() => continue,
                _ => return,
            }
        }
        let now = self.now();
        panic!(
            "a timer is still due at {now} after {PASSES} passes with no time passing: \
             the main loop would spin"
        );
    }

    /// Lets `ns` (at most [`MAX_RUN_NS`]) pass, stopping at every timer
    /// deadline on the way, as the alarm would, and calling `after_each`
    /// after each pass.
    pub fn run_for(&self, ns: i64, mut after_each: impl FnMut()) {
        let end = self.now() + ns.clamp(0, MAX_RUN_NS);
        loop {
            match self.clocks.alarm_deadline() {
                Some(deadline) if deadline <= end => {
                    self.time.advance((deadline - self.now()).max(0));
                    self.run_timers();
                    after_each();
                }
                _ => {
                    self.time.advance(end - self.now());
                    self.run_timers();
                    return;
                }
            }
        }
    }

    /// Lets `ns` (at most [`MAX_LEAP_NS`]) pass at once, then runs the
    /// timers once: a main loop that woke up late (a suspended host, a
    /// stopped process).
    pub fn leap(&self, ns: i64) {
        self.time.advance(ns.clamp(0, MAX_LEAP_NS));
        self.run_timers();
    }

    /// Steps the host's wall clock to `wall_ns` (`settimeofday`), tells the
    /// clocks as the timerfd's cancel-on-set would, and runs the timers.
    pub fn set_wall(&self, wall_ns: i64) {
        self.time.set_wall(wall_ns);
        self.clocks.wall_clock_set();
        self.run_timers();
    }
}

/// A wall-clock time for a fake clock: mostly within a few centuries of
/// 1970 (any date a host may be set to), sometimes at the ends of the
/// `i64` range or anything at all.
pub fn wall_time(input: &mut Input) -> i64 {
    let raw = input.i64();
    match input.u8() % 8 {
        // 1970 ± 2^62 ns (± 146 years).
        0..=2 => raw >> 1,
        // 2027 ± 2^58 ns (± 9 years).
        3 | 4 => 1_800_000_000_000_000_000 + (raw >> 5),
        // Within 2^40 ns (18 minutes) of the end of time, or its start.
        5 => i64::MAX - (raw & 0xFF_FFFF_FFFF),
        6 => i64::MIN + (raw & 0xFF_FFFF_FFFF),
        _ => raw,
    }
}
