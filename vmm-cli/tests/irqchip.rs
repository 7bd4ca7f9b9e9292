//! `--irqchip kernel|split`: hand-assembled guests that take interrupts
//! through the IO-APIC (our PIT, the RTC, the ACPI SCI as a level line)
//! or only through the 8259s, and a few of the other small guests, on
//! KVM's irqchip and on the split one (only the local APICs in KVM), on
//! the host's `/dev/kvm`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use vmm_pc::test_guests;

use common::qmp_client::{spawn, Client};

const MODES: [&str; 2] = ["kernel", "split"];

fn serial_file(dir: &TempDir) -> (std::path::PathBuf, String) {
    let log = dir.0.join("serial.log");
    let arg = format!("file:{}", log.display());
    (log, arg)
}

#[test]
fn pit_and_rtc_interrupts_reach_the_guest_through_the_ioapic() {
    if !kvm("irqchip_pit_rtc") {
        return;
    }
    for mode in MODES {
        let dir = TempDir::new("irq-ticks");
        let k = dir.file("irq.elf", &test_guests::ioapic_interrupts(false));
        let o = run_kernel(&k, &["--irqchip", mode]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            test_guests::IOAPIC_INTERRUPTS_OUTPUT[0],
            "{mode}"
        );
        assert!(!stderr(&o).contains("panicked"), "{mode}");
    }
}

/// The `irq` benchmark's guest: PIT one-shots, each waited for in `hlt`
/// and taken through the IO-APIC, then the debug-exit port and the
/// i8042 reset (status 0).
#[test]
fn the_timer_loop_takes_each_one_shot_in_both_modes() {
    if !kvm("irqchip_timer_loop") {
        return;
    }
    for mode in MODES {
        let dir = TempDir::new("irq-timer-loop");
        let k = dir.file("timer.elf", &test_guests::timer_loop(200));
        let o = run_kernel(&k, &["--irqchip", mode]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "<>", "{mode}");
    }
}

#[test]
fn a_level_sci_still_high_at_its_eoi_is_delivered_again() {
    if !kvm("irqchip_sci") {
        return;
    }
    for mode in MODES {
        let dir = TempDir::new("irq-sci");
        let (log, serial) = serial_file(&dir);
        let (child, sock) = spawn(
            &dir,
            &test_guests::ioapic_interrupts(true),
            &["--serial", &serial, "--irqchip", mode],
        );
        let mut c = Client::connect(&sock);
        let want: String = test_guests::IOAPIC_INTERRUPTS_OUTPUT[..2].concat();
        assert_eq!(wait_for_output(&log, want.len()), want.as_bytes(), "{mode}");
        assert_eq!(c.execute("system_powerdown"), json!({"return": {}}));
        let shutdown = c.event("SHUTDOWN");
        assert_eq!(shutdown["data"]["reason"], "guest-shutdown", "{mode}");
        let o = child.wait_within(Duration::from_secs(30));
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let all: String = test_guests::IOAPIC_INTERRUPTS_OUTPUT.concat();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), all, "{mode}");
    }
}

#[test]
fn small_guests_run_on_the_split_irqchip() {
    if !kvm("irqchip_small_guests") {
        return;
    }
    let dir = TempDir::new("irq-small");
    let hello = dir.file("hello.elf", &test_guests::hello_reset("Hello, split\n"));
    let o = run_kernel(&hello, &["--irqchip", "split"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello, split\n");
    let off = dir.file("off.elf", &test_guests::hello_poweroff("bye\n"));
    let o = run_kernel(&off, &["--irqchip", "split"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bye\n");
    // INIT and SIPI through the in-kernel local APICs.
    let smp = dir.file("smp.elf", &test_guests::two_cpus());
    let o = run_kernel(&smp, &["--irqchip", "split", "--cpus", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "AB");
}

/// The split irqchip's IO-APIC and 8259s are devices of the machine: a
/// reset puts them back to power-on (the guest programs them again and
/// takes its interrupts), and a migration carries them (the destination's
/// IO-APIC, with its KVM routes, delivers the level SCI the guest set up on
/// the source, and again after its EOI). A kernel-irqchip destination
/// refuses the file, naming the devices it lacks.
#[test]
fn the_split_irqchip_resets_and_migrates() {
    if !kvm("irqchip_reset_migrate") {
        return;
    }
    let guest = test_guests::ioapic_interrupts(true);
    let [ticks, waiting, sci] = test_guests::IOAPIC_INTERRUPTS_OUTPUT;
    let dir = TempDir::new("irq-mig-src");
    let (log, serial) = serial_file(&dir);
    let (src, sock) = spawn(&dir, &guest, &["--serial", &serial, "--irqchip", "split"]);
    let mut c = Client::connect(&sock);
    let once = format!("{ticks}{waiting}");
    assert_eq!(wait_for_output(&log, once.len()), once.as_bytes());
    assert_eq!(c.execute("system_reset"), json!({"return": {}}));
    let twice = once.repeat(2);
    assert_eq!(wait_for_output(&log, twice.len()), twice.as_bytes());
    let file = dir.0.join("vm.mig");
    let uri = format!("file:{}", file.display());
    assert_eq!(
        c.execute_with(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]})
        ),
        json!({"return": {}})
    );
    assert_eq!(
        c.execute_with("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    for status in ["setup", "active", "completed"] {
        assert_eq!(c.event("MIGRATION")["data"]["status"], status);
    }
    c.execute("quit");
    assert!(wait(src).status.success());

    let dir2 = TempDir::new("irq-mig-dst");
    let (log2, serial2) = serial_file(&dir2);
    let (dst, sock2) = spawn(
        &dir2,
        &guest,
        &[
            "--serial",
            &serial2,
            "--irqchip",
            "split",
            "--incoming",
            &uri,
        ],
    );
    let mut d = Client::connect(&sock2);
    assert_eq!(d.status()["status"], "running");
    assert_eq!(d.execute("system_powerdown"), json!({"return": {}}));
    d.event("SHUTDOWN");
    let o = dst.wait_within(Duration::from_secs(30));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&log2).unwrap(), sci);

    let k = dir2.file("irq.elf", &guest);
    let o = run_kernel(
        &k,
        &["--memory", "64M", "--irqchip", "kernel", "--incoming", &uri],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // Refused for its device list: the split machine's has our irqchip.
    assert_one_line_error(
        &o,
        "the snapshot has 'ioapic' (ioapic) where this machine has nothing",
    );
}

/// The 8259s' output rising on another vCPU's thread: CPU 1's port write
/// raises COM1's IRQ 4 while the boot CPU is halted, so on the split
/// irqchip CPU 1's vCPU thread must kick the boot vCPU out of `KVM_RUN`
/// (a signal to its thread, which the vCPU threads' seccomp filter must
/// allow, by an id read before the filter) for the vector to go in with
/// `KVM_INTERRUPT`; on KVM's irqchip for comparison. Ten starts each, as a
/// lost kick would show only in some.
#[test]
fn an_irq_raised_on_cpu_1_interrupts_the_halted_boot_cpu_through_the_8259s() {
    if !kvm("irqchip_pic_from_cpu1") {
        return;
    }
    let dir = TempDir::new("irq-pic-cpu1");
    let k = dir.file("pic1.elf", &test_guests::pic_from_cpu1());
    for mode in MODES {
        for start in 0..10 {
            let o = run_kernel(&k, &["--irqchip", mode, "--cpus", "2"]);
            assert!(o.status.success(), "{mode}, start {start}: {}", stderr(&o));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                test_guests::PIC_FROM_CPU1_OUTPUT,
                "{mode}, start {start}"
            );
        }
    }
}

/// A guest that takes its interrupts only from the 8259s (`noapic`): our
/// PIT's IRQ 0 (raised on the main loop's thread), the RTC's IRQ 8
/// through the slave and the cascade, and COM1's IRQ 4 (raised on the
/// vCPU's own thread), ExtINT on the boot CPU's LINT0. With the split irqchip the lines go through our models
/// (the guest unmasked them on the PIC) and the vector goes in with
/// KVM_INTERRUPT; the same guest on KVM's irqchip for comparison.
#[test]
fn the_8259s_interrupt_the_boot_cpu_in_both_modes() {
    if !kvm("irqchip_pic") {
        return;
    }
    for mode in MODES {
        let dir = TempDir::new("irq-pic");
        let k = dir.file("pic.elf", &test_guests::pic_interrupts(false));
        let o = run_kernel(&k, &["--irqchip", mode]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            test_guests::PIC_INTERRUPTS_OUTPUT[..2].concat(),
            "{mode}"
        );
        assert!(!stderr(&o).contains("panicked"), "{mode}");
    }
}
