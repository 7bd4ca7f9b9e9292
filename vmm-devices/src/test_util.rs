//! Shared fixtures for the unit tests: output sinks, triggers, port helpers
//! and a fixed-seed pseudo-random generator for the mini-fuzz.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_device::bus::PioAddress;
use vm_device::MutDevicePio;

use crate::irq::EventFdTrigger;

/// A `Write` whose bytes the test can look at after handing it to a device.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` that always fails, like a closed pipe.
#[derive(Debug)]
pub(crate) struct BrokenPipe;

impl Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A trigger for the device and a clone of it for the test to read.
pub(crate) fn line() -> (EventFdTrigger, EventFdTrigger) {
    let line = EventFdTrigger::nonblocking().unwrap();
    let probe = line.try_clone().unwrap();
    (line, probe)
}

/// How many times the line fired since the last call (0 if never).
pub(crate) fn fired(probe: &EventFdTrigger) -> u64 {
    match probe.event_fd().read() {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("eventfd read failed: {e}"),
    }
}

/// `in` of one byte at `base + offset`.
pub(crate) fn inb(dev: &mut impl MutDevicePio, base: u16, offset: u16) -> u8 {
    let mut data = [0u8; 1];
    dev.pio_read(PioAddress(base), offset, &mut data);
    data[0]
}

/// `out` of one byte at `base + offset`.
pub(crate) fn outb(dev: &mut impl MutDevicePio, base: u16, offset: u16, value: u8) {
    dev.pio_write(PioAddress(base), offset, &[value]);
}

/// Xorshift64: a tiny deterministic generator for the mini-fuzz.
#[derive(Debug)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }
}

/// Drives `ops` pseudo-random accesses through the device's bus interface:
/// offsets mostly inside `0..span` (with some anywhere in `u16`), sizes
/// `0..=8`, reads and writes of random bytes. The test passes if nothing
/// panics; `after_each` can check invariants or inject host-side events.
pub(crate) fn fuzz_pio<D: MutDevicePio>(
    dev: &mut D,
    base: u16,
    span: u16,
    seed: u64,
    ops: usize,
    mut after_each: impl FnMut(&mut D, &mut XorShift),
) {
    let mut rng = XorShift::new(seed);
    for _ in 0..ops {
        let offset = if rng.below(16) == 0 {
            u16::try_from(rng.below(0x1_0000)).unwrap()
        } else {
            u16::try_from(rng.below(u64::from(span))).unwrap()
        };
        // Sizes 0..=8, weighted towards the 1-byte accesses real guests use.
        let size = if rng.below(2) == 0 {
            1
        } else {
            usize::try_from(rng.below(9)).unwrap()
        };
        let mut data = [0u8; 8];
        if rng.below(2) == 0 {
            dev.pio_read(PioAddress(base), offset, &mut data[..size]);
        } else {
            for b in &mut data[..size] {
                *b = rng.byte();
            }
            dev.pio_write(PioAddress(base), offset, &data[..size]);
        }
        after_each(dev, &mut rng);
    }
}

/// Fake time driving real [`vmm_clock::Clocks`], for the timer-driven
/// devices: time moves only when the test says, from one timer deadline to
/// the next, so every event is seen at its exact instant.
pub(crate) struct Sim {
    pub(crate) time: Arc<vmm_clock::FakeTime>,
    pub(crate) clocks: vmm_clock::Clocks,
}

impl Sim {
    /// Clocks at monotonic 0 and wall `wall_ns`, with the VM running.
    pub(crate) fn with_wall(wall_ns: i64) -> Self {
        use vmm_clock::TimeSource;
        let time = Arc::new(vmm_clock::FakeTime::with_wall(wall_ns));
        let clocks = vmm_clock::Clocks::new(time.clone() as Arc<dyn TimeSource>);
        clocks.vm_start();
        Self { time, clocks }
    }

    /// Monotonic time now (the Virtual clock too, while the VM runs).
    pub(crate) fn now(&self) -> i64 {
        use vmm_clock::TimeSource;
        self.time.monotonic_ns()
    }

    /// Lets `ns` pass, stopping at every timer deadline on the way to run
    /// the due timers and then call `after_each(now)`.
    pub(crate) fn run_for(&self, ns: i64, mut after_each: impl FnMut(i64)) {
        let end = self.now() + ns;
        loop {
            match self.clocks.alarm_deadline() {
                Some(deadline) if deadline <= end => {
                    let step = (deadline - self.now()).max(0);
                    self.time.advance(step);
                    self.clocks.run_all_timers();
                    after_each(self.now());
                }
                _ => {
                    self.time.advance(end - self.now());
                    self.clocks.run_all_timers();
                    return;
                }
            }
        }
    }

    /// Lets `ns` pass; returns the instants (monotonic ns) at which `probe`
    /// fired.
    pub(crate) fn edges(&self, ns: i64, probe: &EventFdTrigger) -> Vec<i64> {
        let mut edges = Vec::new();
        fired(probe);
        self.run_for(ns, |now| {
            for _ in 0..fired(probe) {
                edges.push(now);
            }
        });
        edges
    }
}
