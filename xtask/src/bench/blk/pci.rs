//! What the PCI bus adds to our start-up, with no device on it.
//!
//! The PC is always built with its PCI bus (there is no option to leave it
//! out, and adding one only for this would be a knob no user needs), so
//! the bus's own set-up is timed inside the VMM: `vmm-pc/src/pci.rs` logs
//! at debug level how long each of its steps took (the root bus with its
//! configuration ports and ECAM window; the MCFG table; `\_SB_.PCI0` in
//! the DSDT). This runs our VMM on the `startup` suite's guest
//! (`hello-exit`, 128 MiB, one vCPU, no disk) with `--log-level debug`,
//! adds those lines up per run, and reports them beside the same runs'
//! start to first guest byte. What a Linux guest spends scanning the bus
//! is not in it (the `startup` guest does not touch PCI).

use anyhow::{bail, Result};

use super::super::report::{Row, Section, Who};
use super::super::{interleaved, ms, quantile, warm_up, Ctx, Program, MESSAGE};

/// Guest RAM, MiB (as the `startup` suite).
const MEMORY_MIB: u32 = 128;
/// What the VMM's PCI set-up lines start with (after the logger's prefix).
const PREFIX: &str = "PCI set-up: ";

/// The PCI set-up steps in `stderr`, as (what, ns).
pub(super) fn setup_steps(stderr: &str) -> Vec<(String, u64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(PREFIX)? + PREFIX.len()..];
            let (what, ns) = rest.rsplit_once(" took ")?;
            let ns = ns.trim().strip_suffix(" ns")?.parse().ok()?;
            Some((what.to_owned(), ns))
        })
        .collect()
}

/// The `blk` suite's PCI section.
pub fn run(ctx: &Ctx) -> Result<Section> {
    let guest = ctx.guest("hello-exit")?;
    let mut ours = Program::ours(ctx, &guest, MEMORY_MIB);
    ours.args.extend(["--log-level".into(), "debug".into()]);
    let mut programs = vec![ours];
    warm_up(&mut programs, MESSAGE, || None)?;
    let mut setup = Row::new("PCI bus set-up, in the VMM (no device)", "µs");
    let mut first = Row::new("start to first guest byte, same runs", "ms");
    let mut steps: Vec<String> = Vec::new();
    interleaved(
        &programs,
        ctx.runs,
        MESSAGE,
        || None,
        |p, o| {
            let s = setup_steps(&String::from_utf8_lossy(&o.stderr));
            if s.is_empty() {
                bail!("{} logged no PCI set-up step at debug level", p.who.name());
            }
            for (what, _) in &s {
                if !steps.contains(what) {
                    steps.push(what.clone());
                }
            }
            setup.push(
                Who::Ours,
                s.iter().map(|(_, ns)| *ns as f64).sum::<f64>() / 1e3,
            );
            if let Some(f) = o.first_output() {
                first.push(Who::Ours, ms(f));
            }
            Ok(())
        },
    )?;
    let mut s = Section::new(
        "blk-pci",
        format!("The PCI bus's start-up cost: minimal PVH guest, {MEMORY_MIB} MiB, this host's /dev/kvm"),
    );
    s.note(format!(
        "The PC always has its PCI bus; the VMM times its set-up steps ({}) and logs them at debug \
         level; the row is their sum per run, our VMM with --log-level debug on the startup \
         suite's guest, {} runs after a warm-up.",
        steps.join("; "),
        ctx.runs
    ));
    if let (Some(a), Some(b)) = (setup.values(Who::Ours), first.values(Who::Ours)) {
        s.note(format!(
            "Median PCI set-up is {:.3}% of the median start to first guest byte.",
            quantile(a, 0.5) / 1e3 / quantile(b, 0.5) * 100.0
        ));
    }
    s.note(
        "What a Linux guest spends enumerating the bus (configuration-space exits) is not here: \
         this guest never touches PCI.",
    );
    s.rows = vec![setup, first];
    Ok(s)
}
