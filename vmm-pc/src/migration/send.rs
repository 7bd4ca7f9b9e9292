//! The outgoing pre-copy, on the migration thread: dirty logging on (by
//! the main loop, before the job starts), all of RAM sent while the guest
//! runs, then the pages it dirtied meanwhile,
//! pass after pass, until what is left fits `downtime-limit` at the
//! measured bandwidth (or [`super::MAX_PASSES`] passes); then the main
//! loop stops the guest and hands over its state, and the last dirty
//! pages, the state and the end mark go out. The guest's RAM is read with
//! vm-memory's volatile copies: the guest writes it meanwhile, and a page
//! it writes after being read is in the next pass's log. A pass's dirty
//! pages are those in KVM's log (vCPU writes) or in guest RAM's own bitmap
//! (the VMM's writes: virtio devices' buffers and used rings, gdb's
//! writes), both taken and cleared before the pages are read.

use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_core::ram::{self, GuestRam};
use vmm_core::vm::{DirtyBitmap, RamSlot, Vm, DIRTY_PAGE_SIZE};

use super::transport::{self, Paced, Sink};
use super::worker::{Mailbox, Shared, ToMain};
use super::{expected_downtime_ms, should_stop, MigrationUri, PassOutcome};
use crate::snapshot::format::{Shape, PAGE};
use crate::snapshot::stream::{self, PageChunk};
use vmm_virtio::vhost::DirtyLog;

/// An outgoing migration.
#[derive(Debug)]
pub struct SendJob {
    /// Where to.
    pub uri: MigrationUri,
    /// The VM: its RAM and slots.
    pub vm: Vm,
    /// The machine's shape (the stream's first section).
    pub shape: Shape,
    /// Shared with the main loop.
    pub shared: Arc<Shared>,
    /// Whether `exec:` may start its command.
    pub spawn_allowed: bool,
    /// When `migrate` came (`setup-time` counts from here).
    pub started: Instant,
    /// Per RAM slot (in `vm.ram_slots()`'s order), for a slot mapped from a
    /// snapshot file: which of its pages the file holds data for. The page
    /// map shows those as untouched though they are not zeroes
    /// ([`crate::snapshot::mapped`]).
    pub file_data: Vec<Option<Vec<bool>>>,
    /// The log of what the host kernel writes for the cards on vhost-net
    /// (None without one).
    pub vhost_log: Option<Arc<DirtyLog>>,
}

type Out = BufWriter<Paced<Box<dyn Write + Send>>>;

/// Runs the migration (the main loop turned dirty logging on, with the
/// vCPUs parked for the call); dirty logging is off again however it
/// ends.
pub fn run(job: SendJob, mailbox: &Mailbox) -> Result<(), String> {
    let result = precopy(&job, mailbox);
    if let Err(e) = job.vm.set_dirty_logging(false) {
        log::warn!("migration: cannot turn dirty logging off: {e}");
    }
    if job.shared.cancelled() {
        return Err("cancelled".into());
    }
    result
}

fn io(e: std::io::Error) -> String {
    format!("cannot write the stream: {e}")
}

fn precopy(job: &SendJob, mailbox: &Mailbox) -> Result<(), String> {
    let t0 = job.started;
    let shared = &job.shared;
    let Sink {
        out,
        child,
        canceller,
    } = transport::connect(&job.uri, job.spawn_allowed)?;
    *shared.canceller.lock().unwrap_or_else(|e| e.into_inner()) = canceller;
    if shared.cancelled() {
        return Err("cancelled".into());
    }
    let paced = Paced::new(
        out,
        Arc::clone(&shared.max_bandwidth),
        Arc::clone(&shared.cancel),
    );
    let mut w: Out = BufWriter::with_capacity(256 << 10, paced);
    stream::write_start(&mut w, &job.shape).map_err(io)?;
    log::debug!("migration: connected at {:?}", t0.elapsed());
    let slots = job.vm.ram_slots();
    // What the VMM wrote before is in the first pass (every page in use,
    // read after this): its bitmap starts clean.
    ram::clear_written(job.vm.memory());
    // The first pass: every page but those never touched (zeroes on both
    // sides), read from /proc/self/pagemap.
    let mut dirty: Vec<DirtyBitmap> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let file_data = job.file_data.get(i).and_then(Option::as_deref);
            touched_pages(job.vm.memory(), s, file_data)
        })
        .collect();
    log::debug!("migration: pages to send found at {:?}", t0.elapsed());
    shared
        .setup_time_ms
        .store(ms(t0.elapsed().as_millis()), Ordering::Relaxed);
    mailbox.post(ToMain::Active);
    let mut pass = 0u64;
    loop {
        pass += 1;
        mailbox.post(ToMain::Pass(pass));
        let to_send: u64 = dirty.iter().map(DirtyBitmap::count).sum();
        shared.update(|s| s.remaining = to_send * DIRTY_PAGE_SIZE);
        let started = Instant::now();
        let bytes = send_pages(&mut w, job, &slots, &dirty)?;
        // Out, not buffered: the pass's time is the wire's.
        w.flush().map_err(io)?;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        let bandwidth = bytes as f64 / secs;
        dirty = sync(job, &slots)?;
        let pages: u64 = dirty.iter().map(DirtyBitmap::count).sum();
        let remaining = pages * DIRTY_PAGE_SIZE;
        let limit = shared.downtime_limit_ms.load(Ordering::Relaxed);
        let expected = expected_downtime_ms(remaining, bandwidth);
        shared
            .expected_downtime_ms
            .store(expected.min(u64::MAX as f64) as u64, Ordering::Relaxed);
        shared.update(|s| {
            s.remaining = remaining;
            s.dirty_sync_count = pass;
            s.bandwidth = bandwidth as u64;
            s.dirty_pages_rate = (pages as f64 / secs) as u64;
            s.pages_per_second = ((bytes / PAGE as u64) as f64 / secs) as u64;
        });
        log::debug!(
            "migration: pass {pass}: {bytes} bytes in {secs:.3} s, {pages} pages dirtied, \
             {expected:.0} ms expected"
        );
        let outcome = PassOutcome {
            pass,
            sent: to_send * DIRTY_PAGE_SIZE,
            remaining,
            bandwidth,
        };
        if should_stop(&outcome, limit) {
            break;
        }
    }
    // Stop the guest (the main loop does) and take its state.
    let (tx, rx) = mpsc::channel();
    mailbox.post(ToMain::WantStop(tx));
    let state = rx
        .recv()
        .map_err(|_| "the machine went away".to_owned())??;
    w.get_mut().set_unlimited();
    let last = sync(job, &slots)?;
    let mut all = dirty;
    for (a, b) in all.iter_mut().zip(&last) {
        a.merge(b);
    }
    mailbox.post(ToMain::Pass(pass + 1));
    send_pages(&mut w, job, &slots, &all)?;
    stream::write_state(&mut w, &state).map_err(io)?;
    shared.update(|s| {
        s.remaining = 0;
        s.dirty_sync_count = pass + 1;
    });
    let paced = w.into_inner().map_err(|e| io(e.into_error()))?;
    Sink {
        out: paced.into_inner(),
        child,
        canceller: None,
    }
    .finish()
}

fn ms(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A slot's pages that may hold anything: all but those never touched
/// (every page if the page map cannot be read) and, for a slot mapped
/// from a snapshot file, in a hole of it (`file_data[i]` false).
fn touched_pages(mem: &GuestRam, slot: &RamSlot, file_data: Option<&[bool]>) -> DirtyBitmap {
    let pages = slot.size.div_ceil(DIRTY_PAGE_SIZE);
    let untouched = mem
        .get_host_address(GuestAddress(slot.guest_addr))
        .ok()
        .and_then(|p| {
            let len = usize::try_from(slot.size).ok()?;
            crate::snapshot::pagemap::untouched(p as usize, len).ok()
        });
    let Some(untouched) = untouched else {
        return DirtyBitmap::new(pages, true);
    };
    let mut map = DirtyBitmap::new(pages, false);
    for (index, never) in (0..pages).zip(untouched) {
        let in_file = file_data.is_some_and(|d| d.get(index as usize).copied().unwrap_or(true));
        if !never || in_file {
            map.set(index);
        }
    }
    map
}

/// Every slot's dirty pages, taken and cleared: KVM's log (the vCPUs'
/// writes) merged with guest RAM's bitmap (the VMM's) and the vhost log
/// (the host kernel's, for cards on vhost-net); all of RAM if the VMM
/// wrote it where no bitmap sees (`resend_all`, a reset's reload). All
/// are taken before any page is read again: a write that lands after its
/// bit was taken is marked anew (devices and the kernel's vhost mark after
/// writing; KVM write-protects the page as it clears its bit), so the
/// next sync has it.
fn sync(job: &SendJob, slots: &[RamSlot]) -> Result<Vec<DirtyBitmap>, String> {
    let resend = job.shared.resend_all.swap(false, Ordering::SeqCst);
    let vm = &job.vm;
    slots
        .iter()
        .map(|slot| {
            let log = vm
                .take_dirty_log(slot)
                .map_err(|e| format!("cannot read the dirty log: {e}"))?;
            let vhost = job.vhost_log.as_deref();
            Ok(pass_pages(log, vm.memory(), vhost, slot, resend))
        })
        .collect()
}

/// A slot's pages for the next pass: those in KVM's `log`, in guest RAM's
/// bitmap or in the `vhost` log (both taken and cleared here), or all of
/// them on `resend`.
fn pass_pages(
    mut log: DirtyBitmap,
    mem: &GuestRam,
    vhost: Option<&DirtyLog>,
    slot: &RamSlot,
    resend: bool,
) -> DirtyBitmap {
    log.merge(&ram::take_written(mem, slot));
    if let Some(vhost) = vhost {
        let pages = slot.size.div_ceil(DIRTY_PAGE_SIZE);
        let first = slot.guest_addr / DIRTY_PAGE_SIZE;
        log.merge(&DirtyBitmap::from_words(vhost.take(first, pages), pages));
    }
    if resend {
        DirtyBitmap::new(slot.size.div_ceil(DIRTY_PAGE_SIZE), true)
    } else {
        log
    }
}

/// Sends the pages `dirty` marks; returns the bytes written.
fn send_pages(
    w: &mut Out,
    job: &SendJob,
    slots: &[RamSlot],
    dirty: &[DirtyBitmap],
) -> Result<u64, String> {
    let mem = job.vm.memory();
    let mut chunk = PageChunk::default();
    let mut page = [0u8; PAGE];
    let mut written = 0u64;
    let (mut normal, mut zero) = (0u64, 0u64);
    let mut flush = |chunk: &mut PageChunk, w: &mut Out, normal: &mut u64, zero: &mut u64| {
        let n = chunk.flush(w).map_err(io)?;
        written += n;
        let (nn, zz) = (std::mem::take(normal), std::mem::take(zero));
        job.shared.update(|s| {
            s.transferred += n;
            s.normal += nn;
            s.duplicate += zz;
            s.remaining = s.remaining.saturating_sub((nn + zz) * PAGE as u64);
        });
        Ok::<(), String>(())
    };
    for (slot, map) in slots.iter().zip(dirty) {
        for index in map.iter() {
            let gpa = slot.guest_addr + index * DIRTY_PAGE_SIZE;
            mem.read_slice(&mut page, GuestAddress(gpa))
                .map_err(|e| format!("cannot read guest RAM at {gpa:#x}: {e}"))?;
            if chunk.push(gpa, &page) {
                zero += 1;
            } else {
                normal += 1;
            }
            if chunk.is_full() {
                flush(&mut chunk, w, &mut normal, &mut zero)?;
            }
        }
    }
    flush(&mut chunk, w, &mut normal, &mut zero)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_sends_the_pages_in_kvms_log_or_written_by_the_vmm_once() {
        let base = 0x10_0000u64;
        let mem = GuestRam::from_ranges(&[(GuestAddress(base), 16 << 12)]).unwrap();
        let slot = RamSlot {
            slot: 0,
            guest_addr: base,
            size: 16 << 12,
        };
        let kvm = |pages: &[u64]| {
            let mut b = DirtyBitmap::new(16, false);
            pages.iter().for_each(|&p| b.set(p));
            b
        };
        let page = |p: u64| GuestAddress(base + p * DIRTY_PAGE_SIZE);
        // A device's write (a used ring, a received frame) and a vCPU's.
        mem.write_obj(1u16, page(5)).unwrap();
        let pass = pass_pages(kvm(&[1, 5]), &mem, None, &slot, false);
        assert_eq!(pass.iter().collect::<Vec<_>>(), [1, 5]);
        mem.write_slice(&[1; 2], page(9)).unwrap();
        let pass = pass_pages(kvm(&[]), &mem, None, &slot, false);
        assert_eq!(pass.iter().collect::<Vec<_>>(), [9]);
        // Taken: the next pass has only what came since.
        assert_eq!(pass_pages(kvm(&[2]), &mem, None, &slot, false).count(), 1);
        // A wholesale rewrite: everything, the bitmap cleared as well.
        mem.write_obj(1u8, page(3)).unwrap();
        assert_eq!(pass_pages(kvm(&[]), &mem, None, &slot, true).count(), 16);
        assert_eq!(pass_pages(kvm(&[]), &mem, None, &slot, false).count(), 0);
    }

    #[test]
    fn a_pass_sends_the_pages_the_kernels_vhost_logged_once() {
        // A slot at 4 GiB + 64 KiB: its pages are not word-aligned in the
        // log, which counts from guest address 0.
        let base = 0x1_0001_0000u64;
        let mem = GuestRam::from_ranges(&[(GuestAddress(base), 100 << 12)]).unwrap();
        let slot = RamSlot {
            slot: 1,
            guest_addr: base,
            size: 100 << 12,
        };
        let vhost = DirtyLog::new(base + (100 << 12));
        let first = base / DIRTY_PAGE_SIZE;
        for p in [0, 63, 64, 99] {
            vhost.mark(first + p);
        }
        // A page below the slot (another slot's) is not this slot's.
        vhost.mark(first - 1);
        let none = DirtyBitmap::new(100, false);
        let pass = pass_pages(none.clone(), &mem, Some(&vhost), &slot, false);
        assert_eq!(pass.iter().collect::<Vec<_>>(), [0, 63, 64, 99]);
        let pass = pass_pages(none, &mem, Some(&vhost), &slot, false);
        assert_eq!(pass.count(), 0);
        assert_eq!(vhost.take(first - 1, 1), [1]);
    }
}
