//! `watchdog`: how close to its armed period the ib700 fires, ours beside
//! QEMU, on this host's `/dev/kvm`.
//!
//! The guest (`watchdog:14`) prints its line, then arms the ib700 for 2 s
//! (`out 0x443` with index 14) and halts without ever petting it; both
//! VMMs run `--device ib700` / `-device ib700` with the watchdog action
//! `poweroff`, so the process exits when the watchdog fires. Per run: from
//! reading the line's last byte (the arming follows it by a few
//! instructions) to `waitid` seeing the exit, minus the 2 s armed. QEMU
//! runs `-M microvm` (it has the ISA bus the ib700 needs). At most 10
//! runs a program (each takes the 2 s).

use anyhow::Result;

use super::report::{Row, Section, Who};
use super::{interleaved, ms, Ctx, Expect, Program, MESSAGE};

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 128;
/// The ib700 timeout index the guest arms: 30 - 2 * 14 = 2 s.
const INDEX: u8 = 14;
/// What that index arms, ms.
const ARMED_MS: f64 = 2000.0;

/// The `watchdog` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let guest = ctx.guest(&format!("watchdog:{INDEX}"))?;
    let mut ours = Program::ours(ctx, &guest, MEMORY_MIB);
    ours.args.extend(
        ["--device", "ib700", "--action", "watchdog=poweroff"]
            .iter()
            .map(Into::into),
    );
    let mut programs = vec![ours];
    if let Some(q) = &ctx.qemu {
        let mut qemu = Program::qemu(q, "microvm", &guest, MEMORY_MIB).expect(Expect::Code(0));
        qemu.args.extend(
            ["-device", "ib700", "-action", "watchdog=poweroff"]
                .iter()
                .map(Into::into),
        );
        programs.push(qemu);
    }
    eprintln!("xtask: command lines (stdin /dev/null, stdout and stderr piped):");
    for p in &programs {
        eprintln!("  {:<11} {}", p.who.name(), p.command_line());
    }
    // Each run takes the 2 s period: at most 10 runs a program.
    let runs = ctx.runs.min(10);
    let mut late = Row::new("watchdog fired after its 2 s period, late by", "ms");
    interleaved(
        &programs,
        runs,
        MESSAGE,
        || None,
        |p, o| {
            let Some(d) = o.last_output_to_exit() else {
                anyhow::bail!("{} printed nothing", p.who.name());
            };
            late.push(p.who, ms(d) - ARMED_MS);
            Ok(())
        },
    )?;
    let mut s = Section::new(
        "watchdog",
        format!("Watchdog: ib700 armed for 2 s, fired with action poweroff, {MEMORY_MIB} MiB"),
    );
    s.note(
        "The guest prints its line, arms the ib700 for 2 s and halts; timed from reading the \
         line's last byte to waitid seeing the exit, minus the 2 s: how late the watchdog fires, \
         its action (poweroff) and the process exit included.",
    );
    if programs.iter().any(|p| p.who == Who::Qemu) {
        s.note("QEMU: -M microvm -device ib700 -action watchdog=poweroff (exit status 0).");
    }
    s.rows = vec![late];
    Ok(vec![s])
}
