//! Start-up and exit: the minimal PVH guest on this host's `/dev/kvm`.
//!
//! * `startup`: `hello-exit` (prints a line on COM1, then writes QEMU's
//!   `isa-debug-exit` port and resets through the i8042), 128 MiB, one
//!   vCPU. Per run, on the monotonic clock from just before the spawn: the
//!   first byte on the child's stdout (a thread blocked in `read` on the
//!   pipe takes the time), the exit (`waitid` returns); then `wait4` gives
//!   the CPU time (user + system, all threads) and the peak RSS
//!   (`ru_maxrss`).
//! * `exit`: guest reset to process exit (`hello`: prints its line, then
//!   the i8042 reset; from the line's last byte to the exit), and SIGTERM to process exit (`halt`:
//!   prints its line and halts; the signal goes as soon as the line is
//!   read).

use std::time::Instant;

use anyhow::Result;

use super::report::{Goal, Row, Section, Who};
use super::{interleaved, ms, quantile, sys, warm_up, Ctx, Expect, OnMessage, Program, MESSAGE};

/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 128;

/// The `startup` suite.
pub fn startup(ctx: &Ctx) -> Result<Vec<Section>> {
    let guest = ctx.guest("hello-exit")?;
    let mut programs = vec![
        Program::floor(&guest, MEMORY_MIB),
        Program::ours(ctx, &guest, MEMORY_MIB),
        // The floor with the CPUID set-up every VMM that boots Linux does
        // (its own rows below; the goals stay on the plain floor).
        Program::floor(&guest, MEMORY_MIB).env(FLOOR_CPUID.0, FLOOR_CPUID.1),
    ];
    if let Some(q) = &ctx.qemu {
        programs.push(Program::qemu(q, "microvm", &guest, MEMORY_MIB));
    }
    print_command_lines(&programs);
    warm_up(&mut programs, MESSAGE, || None)?;

    let mut first = Row::new("start to first guest byte", "ms").goal(Goal::FloorRatio(1.15));
    let mut exit = Row::new("start to process exit", "ms");
    let mut cpu = Row::new("CPU time, user + system", "ms").goal(Goal::FloorRatio(1.5));
    let mut rss = Row::new("peak RSS", "MiB").goal(Goal::FloorPlus(1.0));
    let mut cpuid_first = Row::new("start to first guest byte, floor with KVM's CPUID", "ms");
    let mut cpuid_cpu = Row::new("CPU time, floor with KVM's CPUID", "ms");
    interleaved(
        &programs,
        ctx.runs,
        MESSAGE,
        || None,
        |p, o| {
            let Some(f) = o.first_output() else {
                anyhow::bail!("{} printed nothing", p.who.name());
            };
            if p.has_env(FLOOR_CPUID.0) {
                cpuid_first.push(p.who, ms(f));
                cpuid_cpu.push(p.who, ms(o.usage.cpu));
                return Ok(());
            }
            first.push(p.who, ms(f));
            exit.push(p.who, ms(o.exited.duration_since(o.start)));
            cpu.push(p.who, ms(o.usage.cpu));
            rss.push(p.who, o.usage.max_rss_kib as f64 / 1024.0);
            Ok(())
        },
    )?;

    // Where the exit time goes: the floor again with the whole irqchip in
    // the kernel (the PICs and the IO-APIC too, our `--irqchip kernel`),
    // whose teardown at process exit the split floor above leaves out.
    let kernel = [Program::floor(&guest, MEMORY_MIB).env("BENCH_FLOOR_IRQCHIP", "kernel")];
    let mut kernel_exit = Row::new("start to process exit, floor with KVM's irqchip", "ms");
    interleaved(
        &kernel,
        ctx.runs,
        MESSAGE,
        || None,
        |p, o| {
            kernel_exit.push(p.who, ms(o.exited.duration_since(o.start)));
            Ok(())
        },
    )?;

    let mut s = Section::new(
        "startup",
        format!("Start-up: minimal PVH guest, {MEMORY_MIB} MiB, 1 vCPU, this host's /dev/kvm"),
    );
    s.note(
        "The guest prints one line on COM1 and exits (QEMU: isa-debug-exit; ours and the floor: \
         the i8042 reset). Stdin /dev/null, stdout and stderr piped; times from just before the \
         spawn.",
    );
    if programs.iter().any(|p| p.who == Who::Qemu) {
        s.note("QEMU: -M microvm -accel kvm -cpu host,-arch-capabilities -nodefaults -no-reboot.");
    }
    match crate::startup_order::coverage(&crate::target::vmm()) {
        Ok((found, named)) => s.note(format!(
            "Our release binary is linked with the functions a start runs side by side \
             (vmm-cli/startup-order.txt, `cargo xtask startup-order`): it has {found} of the \
             {named} named there{}.",
            if crate::startup_order::is_stale(found, named) {
                ": STALE, so the start maps more of the binary than it should (write the \
                 file again)"
            } else {
                ""
            }
        )),
        Err(e) => s.note(format!(
            "The start-up order file could not be checked: {e:#}."
        )),
    }
    if let Some(kib) = spawn_carry_kib() {
        s.note(format!(
            "Peak RSS is wait4's ru_maxrss; the spawn carries some of xtask's pages into it: \
             `true` spawned the same way reports {:.2} MiB.",
            kib as f64 / 1024.0
        ));
    }
    s.note(
        "The floor keeps only the local APIC in the kernel (KVM_CAP_SPLIT_IRQCHIP), as QEMU's \
         microvm and our VMM (`--irqchip split`, the default) do. The KVM's-irqchip row: \
         bench-floor with BENCH_FLOOR_IRQCHIP=kernel creates the whole in-kernel irqchip; the \
         difference to the floor's exit is what freeing the kernel's PIC and IO-APIC costs at \
         process exit on this host.",
    );
    s.note(cpuid_note(&first, &cpu, &cpuid_first, &cpuid_cpu));
    s.rows = vec![first, cpuid_first, exit, kernel_exit, cpu, cpuid_cpu, rss];
    let mut sections = vec![s];
    sections.extend(super::scale::run(ctx)?);
    Ok(sections)
}

/// The environment that gives the floor the CPUID set-up (bench-floor's
/// `BENCH_FLOOR_CPUID`).
const FLOOR_CPUID: (&str, &str) = ("BENCH_FLOOR_CPUID", "kvm");

/// What the floor's CPUID rows say: what asking KVM costs the floor, and
/// our medians over that floor's.
fn cpuid_note(first: &Row, cpu: &Row, cpuid_first: &Row, cpuid_cpu: &Row) -> String {
    let median = |row: &Row, who| row.median(who).unwrap_or(f64::NAN);
    format!(
        "The floor-with-CPUID rows: bench-floor with {}={} also asks KVM_GET_SUPPORTED_CPUID and \
         gives each vCPU that table (KVM_SET_CPUID2), the CPUID set-up any VMM that boots Linux \
         does and the plain floor leaves out. It costs the floor {:.2} ms to the first byte and \
         {:.2} ms of CPU here (each CPUID traps to an outer hypervisor where /dev/kvm is PVM in a \
         VM; far less on bare metal). Ours over that floor: first byte {:.2}x, CPU {:.2}x. The \
         goals stay on the plain floor.",
        FLOOR_CPUID.0,
        FLOOR_CPUID.1,
        median(cpuid_first, Who::Floor) - median(first, Who::Floor),
        median(cpuid_cpu, Who::Floor) - median(cpu, Who::Floor),
        median(first, Who::Ours) / median(cpuid_first, Who::Floor),
        median(cpu, Who::Ours) / median(cpuid_cpu, Who::Floor),
    )
}

/// The `exit` suite.
pub fn exit(ctx: &Ctx) -> Result<Vec<Section>> {
    // Guest reset to exit: the i8042 reset. QEMU's microvm has no i8042
    // (nor another reset device), and the triple fault that resets it on
    // hardware fails on PVM (an emulation failure), so QEMU runs the `pc`
    // machine here.
    let guest = ctx.guest("hello")?;
    let mut programs = vec![
        Program::floor(&guest, MEMORY_MIB),
        Program::ours(ctx, &guest, MEMORY_MIB),
    ];
    if let Some(q) = &ctx.qemu {
        programs.push(Program::qemu(q, "pc", &guest, MEMORY_MIB).expect(Expect::Code(0)));
    }
    print_command_lines(&programs);
    warm_up(&mut programs, MESSAGE, || None)?;
    let mut reset = Row::new("guest reset to process exit", "ms").goal(Goal::FloorRatio(1.2));
    interleaved(
        &programs,
        ctx.runs,
        MESSAGE,
        || None,
        |p, o| {
            let Some(d) = o.last_output_to_exit() else {
                anyhow::bail!("{} printed nothing", p.who.name());
            };
            reset.push(p.who, ms(d));
            Ok(())
        },
    )?;
    let qemu_reset = programs.iter().any(|p| p.who == Who::Qemu);

    // SIGTERM to exit: the guest halts for good once it has printed.
    let guest = ctx.guest("halt")?;
    let mut programs = vec![
        // No handler: the kernel ends it.
        Program::floor(&guest, MEMORY_MIB).expect(Expect::Signal(libc::SIGTERM)),
        Program::ours(ctx, &guest, MEMORY_MIB),
    ];
    if let Some(q) = &ctx.qemu {
        programs.push(Program::qemu(q, "microvm", &guest, MEMORY_MIB).expect(Expect::Code(0)));
    }
    print_command_lines(&programs);
    let terminate = || -> Option<OnMessage> {
        Some(Box::new(|pid| {
            let at = Instant::now();
            sys::signal_child(pid, libc::SIGTERM);
            Some(at)
        }))
    };
    warm_up(&mut programs, MESSAGE, terminate)?;
    let mut term = Row::new("SIGTERM to process exit", "ms");
    interleaved(&programs, ctx.runs, MESSAGE, terminate, |p, o| {
        let Some(at) = o.marked else {
            anyhow::bail!("{}: no SIGTERM sent", p.who.name());
        };
        term.push(p.who, ms(o.exited.duration_since(at)));
        Ok(())
    })?;

    let mut s = Section::new(
        "exit",
        format!(
            "Exit: guest reset and SIGTERM to process exit, minimal PVH guest, {MEMORY_MIB} MiB"
        ),
    );
    s.note(
        "Reset: the guest prints its line, then resets through the i8042 and halts; timed from \
         reading the line's last byte to waitid seeing the exit.",
    );
    if qemu_reset {
        s.note(
            "QEMU's reset row runs -M pc -no-reboot (its i8042 resets): microvm has no i8042, \
             and a triple fault, its reset elsewhere, fails on a PVM host; the SIGTERM row runs \
             -M microvm.",
        );
    }
    s.note(
        "SIGTERM: the guest prints its line and halts; the signal goes as soon as the line is \
         read. The floor has no handler, so this is the kernel ending a process that holds a VM.",
    );
    s.rows = vec![reset, term];
    Ok(vec![s])
}

fn print_command_lines(programs: &[Program]) {
    eprintln!("xtask: command lines (stdin /dev/null, stdout and stderr piped):");
    for p in programs {
        eprintln!("  {:<11} {}", p.who.name(), p.command_line());
    }
}

/// The peak RSS `true` reports when spawned as the programs are: what the
/// spawn itself carries into ru_maxrss (see [`super::execute`]), KiB. None
/// when there is no `true` in `PATH`.
fn spawn_carry_kib() -> Option<u64> {
    let p = Program {
        who: Who::Floor,
        program: crate::cmd::which("true")?,
        args: Vec::new(),
        expect: Expect::Code(0),
        env: Vec::new(),
    };
    let kib: Vec<f64> = (0..5)
        .filter_map(|_| super::execute(&p, None).ok())
        .map(|o| o.usage.max_rss_kib as f64)
        .collect();
    (!kib.is_empty()).then(|| quantile(&kib, 0.5) as u64)
}
