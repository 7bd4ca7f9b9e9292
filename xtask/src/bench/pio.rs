//! `pio`: the cost of one port-I/O exit to userspace. The `pio-loop` guest
//! writes `<` on COM1, then writes a byte to a port no device claims (see
//! `test_guests::PIO_LOOP_PORT`) a fixed number of times, one exit each,
//! then `>`, and exits. The host times the two marks on the console: the
//! time between them over the count is one exit's round trip (KVM_RUN
//! returning to the VMM, the VMM finding no device, KVM_RUN again). The
//! floor program's loop is the bare minimum: `KVM_RUN`, a match on the
//! exit, `KVM_RUN`; no bus, no locks, no threads.

use std::time::Duration;

use anyhow::{bail, Result};

use super::report::{Goal, Row, Section};
use super::{interleaved, warm_up, Ctx, Outcome, Program};

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 128;
/// Port writes per run, and with `--quick`.
const COUNT: u32 = 200_000;
const QUICK_COUNT: u32 = 20_000;
/// At most this many runs per program (each run is a couple of seconds).
const MAX_RUNS: usize = 10;

/// The `pio` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let count = if ctx.quick { QUICK_COUNT } else { COUNT };
    let guest = ctx.guest(&format!("pio-loop:{count}"))?;
    let mut programs = vec![
        Program::floor(&guest, MEMORY_MIB),
        Program::ours(ctx, &guest, MEMORY_MIB),
    ];
    if let Some(q) = &ctx.qemu {
        programs.push(Program::qemu(q, "microvm", &guest, MEMORY_MIB));
    }
    warm_up(&mut programs, "<>", || None)?;
    let mut row = Row::new("one PIO exit, round trip", "µs").goal(Goal::FloorRatio(1.1));
    let runs = ctx.runs.min(MAX_RUNS);
    interleaved(
        &programs,
        runs,
        "<>",
        || None,
        |p, o| {
            row.push(
                p.who,
                marks_span(p, o)?.as_secs_f64() * 1e6 / f64::from(count),
            );
            Ok(())
        },
    )?;
    let mut s = Section::new(
        "pio",
        format!("PIO exit cost: {count} guest writes to a port with no device"),
    );
    s.note(format!(
        "The time between the guest's `<` and `>` on the console over {count} `out` \
         instructions; {runs} runs per program. The floor is a bare KVM_RUN loop with no device \
         dispatch: the limit on this host."
    ));
    s.note(
        "QEMU: -M microvm (the write goes to its unassigned-I/O handler). On a PVM host every \
         exit is a software world switch, so the absolute figures are far above hardware KVM's.",
    );
    s.rows.push(row);
    Ok(vec![s])
}

/// The time between the guest's `<` and `>` on the console in `o`.
pub(super) fn marks_span(p: &Program, o: &Outcome) -> Result<Duration> {
    let begin = o.stdout.iter().position(|&b| b == b'<');
    let end = o.stdout.iter().position(|&b| b == b'>');
    let (Some(b), Some(e)) = (begin, end) else {
        bail!("{}: no < and > marks", p.who.name());
    };
    let (Some(tb), Some(te)) = (o.time_of_byte(b), o.time_of_byte(e)) else {
        bail!("{}: the marks were not timed", p.who.name());
    };
    Ok(te.duration_since(tb))
}
