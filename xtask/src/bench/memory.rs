//! `memory`: the VMM's own memory, outside guest RAM, as Cloud Hypervisor's
//! CI measures it: the sum of `Rss` over the process's mappings in
//! `/proc/PID/smaps`, less the mappings that hold guest RAM (those at
//! least as large as the guest's memory). The `halt` guest (prints a line,
//! halts) runs with 256 MiB and 2 GiB; the mappings are read 200 ms after
//! its line arrives, then the VMM gets SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::report::{Goal, Row, Section, Who};
use super::{interleaved, sys, warm_up, Ctx, Expect, OnMessage, Program, MESSAGE};

/// Guest sizes, MiB.
const SIZES_MIB: [u32; 2] = [256, 2048];
/// How long after the guest's line the mappings are read.
const SETTLE: Duration = Duration::from_millis(200);

/// Resident memory of a process, split at guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    /// KiB resident in mappings smaller than guest RAM.
    pub outside_kib: u64,
    /// KiB resident in the guest RAM mappings.
    pub guest_kib: u64,
    /// Of `outside_kib`, the anonymous (private to this process, not file
    /// pages that every VMM process shares): what one more VM costs.
    pub anon_outside_kib: u64,
}

/// Splits the `Rss` of `smaps` (the text of `/proc/PID/smaps`) into guest
/// RAM (mappings of at least `guest_bytes`) and the rest.
pub fn split_smaps(smaps: &str, guest_bytes: u64) -> Split {
    let mut split = Split::default();
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        let kib = |v: Option<&str>| -> u64 { v.and_then(|v| v.parse().ok()).unwrap_or(0) };
        if first == "Rss:" {
            let k = kib(words.next());
            if in_guest {
                split.guest_kib += k;
            } else {
                split.outside_kib += k;
            }
        } else if first == "Anonymous:" {
            if !in_guest {
                split.anon_outside_kib += kib(words.next());
            }
        } else if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                in_guest = e.saturating_sub(s) >= guest_bytes;
            }
        }
    }
    split
}

/// The `memory` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let guest = ctx.guest("halt")?;
    let mut s = Section::new(
        "memory",
        "Memory: the VMM's resident memory outside guest RAM (/proc/PID/smaps)",
    );
    s.note(format!(
        "The minimal PVH guest prints a line and halts; smaps is read {} ms after the line \
         arrives. Guest RAM = the mappings at least as large as the guest's memory; the rest \
         is the VMM's own (code, heap, stacks, KVM's shared pages).",
        SETTLE.as_millis()
    ));
    s.note(
        "Our goal: under 3 MiB outside guest RAM for a 256 MiB Linux guest; measured \
         here with the minimal guest (Linux cannot run on a PVM host).",
    );
    for size in SIZES_MIB {
        let mut programs = vec![
            Program::floor(&guest, size).expect(Expect::Signal(libc::SIGTERM)),
            Program::ours(ctx, &guest, size),
        ];
        if let Some(q) = &ctx.qemu {
            programs.push(Program::qemu(q, "microvm", &guest, size).expect(Expect::Code(0)));
        }
        let slot: Arc<Mutex<Option<Result<Split>>>> = Arc::default();
        let bytes = u64::from(size) << 20;
        let measure = || -> Option<OnMessage> {
            let slot = Arc::clone(&slot);
            Some(Box::new(move |pid| {
                std::thread::sleep(SETTLE);
                let path = format!("/proc/{pid}/smaps");
                let r = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {path}"))
                    .map(|t| split_smaps(&t, bytes));
                if let Ok(mut s) = slot.lock() {
                    *s = Some(r);
                }
                let at = Instant::now();
                sys::signal_child(pid, libc::SIGTERM);
                Some(at)
            }))
        };
        warm_up(&mut programs, MESSAGE, measure)?;
        let mut outside = Row::new(format!("{size} MiB guest: RSS outside guest RAM"), "MiB");
        if size == 256 {
            outside = outside.goal(Goal::Below(3.0));
        }
        let mut anon = Row::new(
            format!("{size} MiB guest: of which anonymous (not shared file pages)"),
            "MiB",
        );
        let mut inside = Row::new(format!("{size} MiB guest: guest RAM resident"), "MiB");
        interleaved(&programs, ctx.runs.min(10), MESSAGE, measure, |p, _| {
            let taken = slot.lock().ok().and_then(|mut s| s.take());
            let split = match taken {
                Some(r) => r?,
                None => bail!("{}: smaps was not read", p.who.name()),
            };
            outside.push(p.who, split.outside_kib as f64 / 1024.0);
            anon.push(p.who, split.anon_outside_kib as f64 / 1024.0);
            inside.push(p.who, split.guest_kib as f64 / 1024.0);
            Ok(())
        })?;
        if programs.iter().all(|p| p.who != Who::Qemu) && ctx.qemu.is_some() {
            s.note(format!("{size} MiB: QEMU could not run the guest here."));
        }
        s.rows.push(outside);
        s.rows.push(anon);
        s.rows.push(inside);
    }
    if ctx.runs > 10 {
        s.note("At most 10 runs per program and size: the figures barely move between runs.");
    }
    Ok(vec![s])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123 /usr/bin/vmm
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
Anonymous:             0 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:                  12 kB
Anonymous:            12 kB
7fff00000000-7fff00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  24 kB
Anonymous:            24 kB
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn guest_ram_is_the_mappings_as_large_as_the_guest() {
        assert_eq!(
            split_smaps(SMAPS, 256 << 20),
            Split {
                outside_kib: 824,
                guest_kib: 12,
                anon_outside_kib: 24,
            }
        );
        // A guest larger than every mapping: all of it counts as the VMM's.
        let all = split_smaps(SMAPS, 1 << 30);
        assert_eq!((all.outside_kib, all.anon_outside_kib), (836, 36));
        assert_eq!(split_smaps("", 1), Split::default());
        assert_eq!(split_smaps("Rss: junk kB\nzz-yy\n", 1), Split::default());
    }
}
