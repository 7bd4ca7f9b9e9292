//! Part of the `startup` suite: how start-up grows with the machine. The
//! same `hello-exit` guest as `startup`, spawn to its first byte on the
//! console, for 1, 8, 32 and 64 vCPUs (128 MiB) and for 128 MiB, 2, 8 and
//! 16 GiB (1 vCPU): the floor (which creates the extra vCPUs and leaves
//! them waiting, as a kernel's application processors wait for INIT/SIPI),
//! ours and QEMU's microvm, taking turns within each size.
//!
//! Two derived rows sum the curves up per program, from the medians: the
//! first byte at 64 vCPUs over the first byte at 1, and the cost of each
//! GiB past the first 128 MiB.

use anyhow::Result;

use super::report::{Goal, Row, Section, Who};
use super::{interleaved, ms, warm_up, Ctx, Program, MESSAGE};

/// vCPU counts, at [`BASE_MIB`].
const CPUS: [u32; 4] = [1, 8, 32, 64];
/// Guest RAM sizes (MiB), at 1 vCPU.
const MEMORY_MIB: [u32; 4] = [128, 2048, 8192, 16384];
/// The RAM of the vCPU sweep.
const BASE_MIB: u32 = 128;

/// `p` with `cpus` vCPUs, in its own spelling.
fn with_cpus(mut p: Program, cpus: u32) -> Program {
    let n = cpus.to_string();
    match p.who {
        Who::Floor => p.args.push(n.into()),
        Who::Ours => p.args.extend(["--cpus".into(), n.into()]),
        Who::Qemu => {
            if let Some(i) = p.args.iter().position(|a| a == "-smp") {
                p.args[i + 1] = n.into();
            }
        }
    }
    p
}

/// The floor, ours and QEMU on `guest` with `cpus` and `memory_mib`.
fn programs(ctx: &Ctx, guest: &std::path::Path, cpus: u32, memory_mib: u32) -> Vec<Program> {
    let mut programs = vec![
        with_cpus(Program::floor(guest, memory_mib), cpus),
        with_cpus(Program::ours(ctx, guest, memory_mib), cpus),
    ];
    if let Some(q) = &ctx.qemu {
        programs.push(with_cpus(
            Program::qemu(q, "microvm", guest, memory_mib),
            cpus,
        ));
    }
    programs
}

/// First-byte times of every program for one machine size, as a row.
fn sweep_row(ctx: &Ctx, name: String, cpus: u32, memory_mib: u32) -> Result<Row> {
    let guest = ctx.guest("hello-exit")?;
    let mut programs = programs(ctx, &guest, cpus, memory_mib);
    warm_up(&mut programs, MESSAGE, || None)?;
    let mut row = Row::new(name, "ms").goal(Goal::FloorRatio(1.15));
    interleaved(
        &programs,
        ctx.runs,
        MESSAGE,
        || None,
        |p, o| {
            let Some(f) = o.first_output() else {
                anyhow::bail!("{} printed nothing", p.who.name());
            };
            row.push(p.who, ms(f));
            Ok(())
        },
    )?;
    Ok(row)
}

/// The sweeps, as two sections.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let whos = [Who::Floor, Who::Ours, Who::Qemu];
    let mut cpu_rows = Vec::new();
    for cpus in CPUS {
        eprintln!("xtask: startup with {cpus} vCPU(s), {BASE_MIB} MiB");
        let name = format!("first guest byte, {cpus} vCPU(s)");
        cpu_rows.push(sweep_row(ctx, name, cpus, BASE_MIB)?);
    }
    let mut ratio = Row::new("first byte at 64 vCPUs / at 1 vCPU (medians)", "x");
    if let (Some(one), Some(most)) = (cpu_rows.first(), cpu_rows.last()) {
        for who in whos {
            if let (Some(a), Some(b)) = (one.median(who), most.median(who)) {
                ratio.push(who, b / a);
            }
        }
    }
    let mut mem_rows = Vec::new();
    for mib in MEMORY_MIB {
        eprintln!("xtask: startup with 1 vCPU, {mib} MiB");
        let name = format!("first guest byte, {} RAM", size_name(mib));
        mem_rows.push(sweep_row(ctx, name, 1, mib)?);
    }
    let mut per_gib = Row::new(
        "each GiB past 128 MiB, 16 GiB against 128 MiB (medians)",
        "ms",
    )
    .goal(Goal::FloorRatio(1.0));
    if let (Some(small), Some(large)) = (mem_rows.first(), mem_rows.last()) {
        let gib = f64::from(MEMORY_MIB[3] - MEMORY_MIB[0]) / 1024.0;
        for who in whos {
            if let (Some(a), Some(b)) = (small.median(who), large.median(who)) {
                per_gib.push(who, (b - a) / gib);
            }
        }
    }

    let mut cpus = Section::new(
        "startup-cpus",
        format!("Start-up by vCPU count: minimal PVH guest, {BASE_MIB} MiB"),
    );
    cpus.note(
        "Spawn to the guest's first byte, as in `startup`. The floor creates the extra vCPUs \
         and never runs them; ours and QEMU (-smp N) start them as their machines do (waiting \
         for INIT/SIPI). Goal: ours at 64 vCPUs within 1.5x of ours at 1.",
    );
    cpu_rows.push(ratio);
    cpus.rows = cpu_rows;
    let mut mem = Section::new(
        "startup-memory",
        "Start-up by RAM size: minimal PVH guest, 1 vCPU",
    );
    mem.note(
        "Spawn to the guest's first byte, as in `startup`. Every program maps its RAM without \
         touching it (the guest uses a few pages). Goal: ours costs no more per GiB than the \
         floor. Nearly all of that cost is the kernel's: under `strace -T`, registering 16 GiB \
         (`KVM_SET_USER_MEMORY_REGION`) took 6.5-8 ms in each of the three programs; QEMU's \
         per-GiB figure, a difference of two medians of a start some 50 ms long, is inside \
         that start's spread, not a cheaper set-up.",
    );
    mem_rows.push(per_gib);
    mem.rows = mem_rows;
    Ok(vec![cpus, mem])
}

fn size_name(mib: u32) -> String {
    if mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}
