//! ACPI S3 under Debian's kernel on 2 vCPUs: the guest offers `mem` in
//! `/sys/power/state` (`deep` in `/sys/power/mem_sleep`), sets an RTC wake
//! alarm 8 s ahead (room for a slow nested suspend: an alarm that fires
//! before the guest is asleep wakes nothing) and suspends to RAM with
//! `echo mem > /sys/power/state`; the VMM parks the vCPUs in `suspended`,
//! the RTC alarm wakes it (the guest enabled RTC_EN), the boot CPU
//! restarts at Linux's real-mode waking vector, the other vCPU comes back
//! through INIT/SIPI, and the guest counts the suspend as a success.
//! Nested in the test bed on PVM hosts; directly on hardware KVM.

mod common;
mod linux_common;

use linux_common::{debian_job, guest, nested_retry, run, test_initrd, QUIET_APPEND};

#[test]
fn debian_suspends_to_ram_and_the_rtc_alarm_wakes_it() {
    let test = "debian_suspends_to_ram_and_the_rtc_alarm_wakes_it";
    nested_retry(test, || {
        let Some(g) = guest(test) else {
            return;
        };
        let dir = common::TempDir::new(test);
        let script = "\
            echo \"@@STATE $(cat /sys/power/state)\"\n\
            echo \"@@MEMSLEEP $(cat /sys/power/mem_sleep)\"\n\
            echo 0 > /sys/class/rtc/rtc0/wakealarm\n\
            echo +8 > /sys/class/rtc/rtc0/wakealarm\n\
            echo @@SUSPENDING\n\
            echo mem > /sys/power/state && echo @@RESUMED\n\
            echo \"@@SUCCESS $(cat /sys/power/suspend_stats/success)\"\n\
            echo \"@@CPUS $(cat /sys/devices/system/cpu/online)\"\n\
            dmesg | grep -i -E 'PM:|ACPI|suspend|resume|wake|rtc|smpboot|CPU1' | tail -60\n\
            poweroff -f";
        let initrd = test_initrd(&g, &dir, script, &[], false);
        let job = debian_job(
            &g,
            &initrd,
            [
                "--cpus",
                "2",
                "--memory",
                "256M",
                "--log-level",
                "info",
                "--append",
                &format!("{QUIET_APPEND} no_console_suspend"),
            ],
        )
        .timeout(std::time::Duration::from_secs(420));
        let out = run(test, &g, &job);
        let c = &out.console;
        let why = || format!("{test}:\nconsole:\n{c}\nvmm stderr:\n{}", out.stderr);
        let line = |marker: &str| {
            c.lines()
                .find(|l| l.starts_with(marker))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("@@STATE").contains("mem"), "{}", why());
        assert!(line("@@MEMSLEEP").contains("deep"), "{}", why());
        assert!(c.contains("@@RESUMED"), "{}", why());
        assert!(c.contains("@@SUCCESS 1"), "{}", why());
        assert!(c.contains("@@CPUS 0-1"), "{}", why());
        assert!(
            out.stderr.contains("guest suspended to RAM (S3)"),
            "{}",
            why()
        );
        assert!(
            out.stderr.contains("the RTC alarm wakes the guest from S3"),
            "{}",
            why()
        );
        assert_eq!(out.status, Some(0), "{}", why());
    });
}
