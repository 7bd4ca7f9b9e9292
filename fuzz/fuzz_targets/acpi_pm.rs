//! The ACPI PM1a event and control blocks: guest accesses of any width,
//! power-button presses and machine resets. Checks that only documented
//! bits are stored, that SCI_EN sticks, that the SCI level always equals
//! "a status bit and its enable are both set", that only an S5 request
//! fires the poweroff line and only an S3 request the suspend line, and
//! that wake-ups (WAK_STS and a cause) keep the same invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_devices::{
    Pm1Control, Pm1Event, WakeCause, PM1_CNT_LEN, PM1_EVT_LEN, S3_SLP_TYP, S5_SLP_TYP,
};
use vmm_fuzz::{Access, Input, Level, Line};

/// Status bits whose enable sits at the same position (PWRBTN, SLPBTN, RTC,
/// GBL, TMR).
const SCI_CAUSES: u16 = 0x0721;
const EN_VALID_BITS: u16 = 0x4721;
const STS_VALID_BITS: u16 = 0xC731;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sci = Level::default();
    let mut evt = Pm1Event::with_sci(Box::new(sci.clone()));
    let poweroff = Line::default();
    let suspend = Line::default();
    let mut cnt = Pm1Control::new(poweroff.clone()).with_suspend(suspend.clone());
    while !input.is_empty() {
        match input.u8() % 8 {
            0 => evt.press_power_button(),
            1 if input.u8() & 1 == 0 => evt.reset(),
            1 => evt.wake(match input.u8() % 3 {
                0 => WakeCause::Host,
                1 => WakeCause::PowerButton,
                _ => WakeCause::Rtc,
            }),
            2..=4 => {
                Access::decode(&mut input, PM1_EVT_LEN + 2).run(&mut evt, 0x600);
            }
            _ => {
                let access = Access::decode(&mut input, PM1_CNT_LEN + 2);
                let before = cnt.state();
                access.run(&mut cnt, 0x604);
                let after = cnt.state();
                let fired = poweroff.take();
                if fired > 0 {
                    assert!(access.write, "a read powered off");
                    assert_eq!(
                        after.slp_typ, S5_SLP_TYP,
                        "poweroff without S5: {before:?} -> {after:?}"
                    );
                }
                if suspend.take() > 0 {
                    assert!(access.write, "a read suspended");
                    assert_eq!(
                        after.slp_typ, S3_SLP_TYP,
                        "suspend without S3: {before:?} -> {after:?}"
                    );
                }
            }
        }
        let s = evt.state();
        assert_eq!(s.enable & !EN_VALID_BITS, 0);
        assert_eq!(s.status & !STS_VALID_BITS, 0);
        let want = s.status & s.enable & SCI_CAUSES != 0;
        assert_eq!(evt.sci_level(), want);
        assert_eq!(sci.high(), want);
        assert!(cnt.state().slp_typ <= 7);
        assert_eq!(cnt.read_value() & 1, 1, "SCI_EN cleared");
    }
});
