//! `--irqchip kernel|split`: hand-assembled guests that take interrupts
//! through the IO-APIC (our PIT, the RTC, the ACPI SCI as a level line),
//! and a few of the other small guests, on KVM's irqchip and on the split
//! one (only the local APICs in KVM), on the host's `/dev/kvm`.

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
