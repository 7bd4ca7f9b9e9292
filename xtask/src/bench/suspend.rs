//! `cargo xtask bench suspend`: ACPI S3 on our VMM and on QEMU's `-M pc`,
//! in the same run, with the same hand-assembled guest
//! (`test_guests::suspend_cycles`) and 128 MiB.
//!
//! The guest finds the FACS through the ACPI tables, writes its waking
//! vector, prints `z` and writes S3 | SLP_EN into PM1a control; each
//! wake-up prints `w`, then `z`, and suspends again. Per cycle:
//!
//! - wake-up: from `system_wakeup` leaving the client to the `w` byte on
//!   the console (the guest running at its waking vector: on ours the VMM
//!   starts the boot CPU there; on QEMU the machine resets and SeaBIOS's
//!   resume path jumps there);
//! - the whole cycle: from `system_wakeup` leaving the client to the
//!   `SUSPEND` event of the guest's next suspend (the wake-up, a few guest
//!   instructions, the S3 write and the VM stopped in `suspended`). The
//!   suspend alone is not timed from the guest's `z`: our VMM's console
//!   writer lets a busy console's bytes gather for a millisecond, so a
//!   byte's arrival says little about when the guest wrote it.
//!
//! The VMMs take turns, a new process each round.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::qmp::{self, Session, Vmm};
use super::report::{Row, Section, Who};
use super::Ctx;

/// Rounds, each a new process per VMM with this many cycles.
const ROUNDS: usize = 3;
const CYCLES: usize = 50;
const QUICK_ROUNDS: usize = 1;
const QUICK_CYCLES: usize = 10;
/// Guest RAM, MiB.
const MEMORY_MIB: u32 = 128;
/// The pause between cycles: both consoles are idle when a wake-up is
/// sent (ours lets a busy console's bytes gather for 1 ms before it writes
/// again, which would otherwise be in the wake-up's time).
const GAP: Duration = Duration::from_millis(10);
/// How long a byte or an event may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// The console's bytes as they arrive, each with when it was read.
fn console_reader(mut console: impl Read + Send + 'static) -> Receiver<(Instant, u8)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = console.read(&mut buf) {
            let now = Instant::now();
            if buf[..n].iter().any(|&b| tx.send((now, b)).is_err()) {
                break;
            }
        }
    });
    rx
}

/// Waits for the byte `want` on the console; returns when it was read. A
/// `!` (the guest found no FACS) or silence fails.
fn wait_byte(rx: &Receiver<(Instant, u8)>, want: u8, who: &str) -> Result<Instant> {
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok((at, b)) if b == want => return Ok(at),
            Ok((_, b'!')) => bail!("{who}: the guest found no FADT/FACS"),
            Ok(_) => {}
            Err(_) => bail!("{who}: no `{}` from the guest", want as char),
        }
    }
}

/// Polls `query-status` until the VM is `suspended` (its first suspend
/// comes before the client connects).
fn wait_suspended(s: &mut Session, who: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let status = s.ask(r#"{"execute":"query-status"}"#)?;
        if status["status"] == "suspended" {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            bail!("{who}: not suspended after boot but {}", status["status"]);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One wake-up and the suspend after it: (wake-up, whole cycle).
fn cycle(s: &mut Session, rx: &Receiver<(Instant, u8)>, who: &str) -> Result<(Duration, Duration)> {
    let sent = Instant::now();
    s.send(r#"{"execute":"system_wakeup"}"#)?;
    let (mut replied, mut suspended) = (false, None);
    while !replied || suspended.is_none() {
        let l = s.line()?;
        let now = Instant::now();
        if l.contains("\"return\"") {
            replied = true;
        } else if l.contains("\"error\"") {
            bail!("{who}: system_wakeup: {l}");
        } else if l.contains("\"SUSPEND\"") {
            suspended = Some(now);
        }
        if sent.elapsed() > PATIENCE {
            bail!("{who}: no SUSPEND after system_wakeup");
        }
    }
    let woke = wait_byte(rx, b'w', who)?;
    wait_byte(rx, b'z', who)?;
    let suspended = suspended.context("no SUSPEND")?;
    Ok((
        woke.saturating_duration_since(sent),
        suspended.saturating_duration_since(sent),
    ))
}

/// The two VMMs' command lines.
fn vmms(ctx: &Ctx, guest: &Path) -> Vec<Vmm> {
    let memory = format!("{MEMORY_MIB}M");
    let ours_sock = ctx.tmp.join("s3-ours.sock");
    let qemu_sock = ctx.tmp.join("s3-qemu.sock");
    let mut vmms = vec![Vmm {
        who: Who::Ours,
        name: "vmm (ours)",
        argv: qmp::ours_argv(ctx, &memory, guest, &ours_sock, &[]),
        socket: ours_sock,
    }];
    if let Some(qemu) = &ctx.qemu {
        vmms.push(Vmm {
            who: Who::Qemu,
            name: "QEMU pc",
            argv: qmp::qemu_argv(
                qemu,
                "pc",
                &memory,
                guest,
                &qemu_sock,
                &["-serial", "stdio"],
            ),
            socket: qemu_sock,
        });
    }
    vmms
}

/// The `suspend` suite.
pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let (rounds, cycles) = if ctx.quick {
        (QUICK_ROUNDS, QUICK_CYCLES)
    } else {
        (ROUNDS, CYCLES)
    };
    let guest = ctx.guest("suspend-cycles")?;
    let vmms = vmms(ctx, &guest);
    eprintln!("xtask: command lines (stdin /dev/null, stdout piped, stderr /dev/null):");
    for v in &vmms {
        eprintln!("  {:<11} {}", v.who.name(), v.argv.join(" "));
    }
    let mut wake = Row::new("system_wakeup → guest running at its waking vector", "µs");
    let mut whole = Row::new(
        "system_wakeup → the next SUSPEND event (a whole cycle)",
        "µs",
    );
    for round in 0..rounds {
        // The first program rotates, as in the other suites.
        for i in 0..vmms.len() {
            let vmm = &vmms[(i + round) % vmms.len()];
            let (mut s, console) = Session::start_with_console(vmm)?;
            let rx = console_reader(console);
            wait_byte(&rx, b'z', vmm.name)?;
            wait_suspended(&mut s, vmm.name)?;
            for _ in 0..cycles {
                std::thread::sleep(GAP);
                let (w, c) = cycle(&mut s, &rx, vmm.name)?;
                wake.push(vmm.who, w.as_secs_f64() * 1e6);
                whole.push(vmm.who, c.as_secs_f64() * 1e6);
            }
            s.quit()?;
        }
    }
    let mut s = Section::new(
        "suspend",
        format!("ACPI S3: suspend and wake-up, {MEMORY_MIB} MiB, 1 vCPU"),
    );
    s.note(format!(
        "A hand-assembled guest that finds the FACS through the ACPI tables, sets its waking \
         vector and suspends again after each wake-up; {rounds} round(s) of {cycles} cycles per \
         VMM, a new process each, the VMMs taking turns, 10 ms between cycles (both consoles \
         idle when the wake-up is sent). Wake-up: from system_wakeup leaving the \
         QMP client to the guest's first byte at its waking vector. A whole cycle: from \
         system_wakeup to the SUSPEND event of the guest's next S3 write, a few instructions \
         after its waking vector."
    ));
    if vmms.iter().any(|v| v.who == Who::Qemu) {
        s.note(
            "QEMU: -M pc (SeaBIOS; microvm has no ACPI S3), -serial stdio: its wake-up resets \
             the machine and goes through SeaBIOS's resume path to the waking vector; ours \
             starts the boot CPU in real mode at the vector directly.",
        );
    }
    s.rows = vec![wake, whole];
    Ok(vec![s])
}
