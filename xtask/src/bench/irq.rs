//! `irq`: a timer interrupt's round trip on each irqchip. The
//! `timer-loop` guest (`vmm-pc`'s `test_guests::timer_loop`) writes `<`
//! on COM1, then a fixed number of times arms the PIT's channel 0 for a
//! one-shot of two ticks, waits in `hlt` and takes the interrupt through
//! the IO-APIC (pin 2) and its local APIC, then writes `>` and exits. The
//! host times the two marks: the time between them over the count is one
//! round (three port writes that arm the VMM's timer, the timer firing,
//! the interrupt raised on KVM's irqchip or on ours and taken by the
//! halted guest). Ours runs with `--irqchip kernel` and `--irqchip split`
//! in the same rounds, QEMU `-M pc` with `kernel-irqchip=on` (its PIT then
//! KVM's in the kernel) and `-M microvm` with `split` (its own PIT).

use std::ffi::OsString;

use anyhow::Result;

use super::pio::marks_span;
use super::report::{Goal, Row, Section, Who};
use super::{interleaved, warm_up, Ctx, Program};

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 128;
/// Interrupts per run, and with `--quick`.
const COUNT: u32 = 20_000;
const QUICK_COUNT: u32 = 2_000;
/// At most this many runs per program.
const MAX_RUNS: usize = 10;
/// What the split row may cost over the kernel row (issue: 10%).
const SPLIT_OVER_KERNEL: f64 = 1.10;

/// The irqchip modes: our `--irqchip`, and QEMU's machine and
/// `kernel-irqchip=` (its microvm's PIT does not tick here with KVM's
/// irqchip: the guest waits for good; `-M pc` has KVM's PIT then).
const MODES: [(&str, &str, &str); 2] = [("kernel", "pc", "on"), ("split", "microvm", "split")];

/// The `irq` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let count = if ctx.quick { QUICK_COUNT } else { COUNT };
    let guest = ctx.guest(&format!("timer-loop:{count}"))?;
    let mut programs = Vec::new();
    for (ours, machine, qemu) in MODES {
        let mut p = Program::ours(ctx, &guest, MEMORY_MIB);
        p.args.extend(["--irqchip".into(), ours.into()]);
        programs.push(p);
        if let Some(q) = &ctx.qemu {
            let mut p = Program::qemu(q, machine, &guest, MEMORY_MIB);
            for a in &mut p.args {
                if a == "kvm" {
                    *a = OsString::from(format!("kvm,kernel-irqchip={qemu}"));
                }
            }
            programs.push(p);
        }
    }
    warm_up(&mut programs, "<>", || None)?;
    let mut rows: Vec<Row> = MODES
        .iter()
        .map(|(mode, _, _)| Row::new(format!("timer interrupt round trip, {mode} irqchip"), "µs"))
        .collect();
    let runs = ctx.runs.min(MAX_RUNS);
    interleaved(
        &programs,
        runs,
        "<>",
        || None,
        |p, o| {
            let us = marks_span(p, o)?.as_secs_f64() * 1e6 / f64::from(count);
            rows[usize::from(is_split(p))].push(p.who, us);
            Ok(())
        },
    )?;
    let kernel = rows[0].median(Who::Ours);
    let mut s = Section::new(
        "irq",
        format!("Timer interrupts: {count} PIT one-shots taken through the IO-APIC"),
    );
    s.note(format!(
        "The time between the guest's `<` and `>` on the console over {count} rounds of: arm \
         the PIT's channel 0 for two ticks (mode 0; three port writes), `hlt`, take IRQ 0 on \
         IO-APIC pin 2, EOI; {runs} runs per program, the modes in the same rounds. Ours: \
         `--irqchip kernel` (KVM's PIC and IO-APIC) and `--irqchip split` (our IO-APIC: the \
         PIT's irqfd on an MSI route). QEMU: -M pc with -accel kvm,kernel-irqchip=on (its PIT \
         then KVM's in-kernel one) and -M microvm with =split (its own PIT)."
    ));
    if let Some(k) = kernel {
        s.note(format!(
            "Goal of the split row: at most {SPLIT_OVER_KERNEL}x ours on the kernel irqchip \
             ({:.2} µs).",
            k * SPLIT_OVER_KERNEL
        ));
        rows[1].goal = Some(Goal::Below(k * SPLIT_OVER_KERNEL));
    }
    s.rows = rows;
    Ok(vec![s])
}

/// Whether `p` runs the split irqchip (our `--irqchip split`, QEMU's
/// `kernel-irqchip=split`).
fn is_split(p: &Program) -> bool {
    p.args
        .iter()
        .any(|a| a == "split" || a.to_string_lossy().ends_with("kernel-irqchip=split"))
}
