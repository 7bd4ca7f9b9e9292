//! Each device saved after the guest has programmed it, the save carried
//! through text as a snapshot file would carry it, and loaded into a
//! device fresh from power-on: the same state, and the same behaviour at
//! the ports. Then states a device must refuse.

use vmm_qom::{Device, SavedDevice, StateError};

use super::*;
use crate::test_util::{fired, inb, line, outb, SharedBuf, Sim};
use crate::NoEvents;

/// Saves `dev`, through JSON text.
fn saved(dev: &dyn Device) -> SavedDevice {
    let text = serde_json::to_string(&dev.save().unwrap()).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn serial_state_moves_with_its_fifo_and_keeps_its_line_and_output() {
    let (irq, _) = line();
    let mut a = SerialDevice::new(irq, Box::new(std::io::sink()));
    outb(&mut a, 0x3f8, 7, 0x5a); // scratch
    outb(&mut a, 0x3f8, 3, 0x03); // 8N1
    a.enqueue_input(b"abc");
    let s = saved(&a);
    assert_eq!(s.type_name, "isa-serial");

    let (irq, probe) = line();
    let out = SharedBuf::default();
    let mut b = SerialDevice::new(irq, Box::new(out.clone()));
    b.load(&s).unwrap();
    assert_eq!(b.state(), a.state());
    assert_eq!(inb(&mut b, 0x3f8, 7), 0x5a);
    assert_eq!(inb(&mut b, 0x3f8, 0), b'a', "the FIFO came along");
    // The line is still the one the machine connected (a duplicate of
    // it), and the output still reaches the console.
    fired(&probe);
    outb(&mut b, 0x3f8, 1, 0x02); // THR-empty interrupt on
    assert_eq!(fired(&probe), 1);
    outb(&mut b, 0x3f8, 0, b'z');
    assert_eq!(out.bytes(), b"z");

    // Reset: registers back to power-on, the FIFO empty, output kept.
    Device::reset(&mut b);
    assert_eq!(inb(&mut b, 0x3f8, 7), 0);
    assert_eq!(b.fifo_capacity_left(), RX_FIFO_CAPACITY);
    outb(&mut b, 0x3f8, 0, b'y');
    assert_eq!(out.bytes(), b"zy");
}

#[test]
fn a_serial_fifo_past_its_capacity_is_refused_and_the_uart_is_unchanged() {
    let (irq, _) = line();
    let out = SharedBuf::default();
    let mut dev: SerialDevice<EventFdTrigger, NoEvents> =
        SerialDevice::new(irq, Box::new(out.clone()));
    let mut s = saved(&dev);
    s.state["uart"]["in_buffer"] = serde_json::json!(vec![0u8; RX_FIFO_CAPACITY + 1]);
    let e = dev.load(&s).unwrap_err();
    assert!(matches!(e, StateError::Invalid { .. }), "{e}");
    outb(&mut dev, 0x3f8, 0, b'k');
    assert_eq!(out.bytes(), b"k", "the output stays");
}

#[test]
fn i8042_pm1_ports_and_pvpanic_round_trip() {
    let (reset, _) = line();
    let (kbd, _) = line();
    let mut a = I8042::new(reset, kbd);
    a.write_command(0x60);
    a.write_data(0x47);
    a.write_command(0xAA); // self-test: 0x55 queued
    let (reset, _) = line();
    let (kbd, _) = line();
    let mut b = I8042::new(reset, kbd);
    b.load(&saved(&a)).unwrap();
    assert_eq!(b.state(), a.state());
    assert_eq!(inb(&mut b, 0x60, 0), 0x55);

    let mut evt = Pm1Event::new();
    outb(&mut evt, 0x600, 3, 0x01); // PWRBTN_EN
    evt.press_power_button();
    let mut evt2 = Pm1Event::new();
    evt2.load(&saved(&evt)).unwrap();
    assert_eq!(evt2.state(), evt.state());
    assert!(evt2.sci_level(), "the SCI follows the restored state");
    Device::reset(&mut evt2);
    assert!(!evt2.sci_level());

    let (off, _) = line();
    let mut cnt = Pm1Control::new(off);
    cnt.write_value(3 << 10);
    let (off, _) = line();
    let mut cnt2 = Pm1Control::new(off);
    cnt2.load(&saved(&cnt)).unwrap();
    assert_eq!(cnt2.state().slp_typ, 3);

    let mut p61 = Port61::new();
    p61.write(0x03);
    let mut p61b = Port61::new();
    p61b.load(&saved(&p61)).unwrap();
    assert_eq!(p61b.state(), p61.state());
    let mut bad = saved(&p61);
    bad.state["control"] = serde_json::json!(0x80);
    assert!(p61b.load(&bad).is_err());

    let mut p80 = Port80::new();
    outb(&mut p80, 0x80, 0, 0x42);
    let mut p80b = Port80::new();
    p80b.load(&saved(&p80)).unwrap();
    assert_eq!(p80b.last_code(), Some(0x42));

    let (panicked, _) = line();
    let mut pv = PvPanic::new(panicked);
    let s = saved(&pv);
    assert_eq!(s.state, serde_json::Value::Null);
    pv.load(&s).unwrap();
}

#[test]
fn pit_and_rtc_round_trip_and_refuse_what_they_cannot_hold() {
    let sim = Sim::with_wall(1_700_000_000_000_000_000);
    let (irq, _) = line();
    let pit = Pit::new(&sim.clocks, irq);
    let (irq, _) = line();
    let rtc = Rtc::new(&sim.clocks, irq);
    {
        let mut p = pit.lock().unwrap();
        p.write(3, 0x34); // channel 0, LSB then MSB, mode 2
        p.write(0, 0x9c);
        p.write(0, 0x2e);
        let mut r = rtc.lock().unwrap();
        r.write(0, 0x30);
        r.write(1, 0xab); // a CMOS byte
    }
    let (irq, _) = line();
    let pit2 = Pit::new(&sim.clocks, irq);
    let (irq, _) = line();
    let rtc2 = Rtc::new(&sim.clocks, irq);
    let (sp, sr) = (saved(&*pit.lock().unwrap()), saved(&*rtc.lock().unwrap()));
    pit2.lock().unwrap().load(&sp).unwrap();
    rtc2.lock().unwrap().load(&sr).unwrap();
    assert_eq!(pit2.lock().unwrap().state(), pit.lock().unwrap().state());
    assert_eq!(rtc2.lock().unwrap().state(), rtc.lock().unwrap().state());
    assert_eq!(rtc2.lock().unwrap().state().cmos[0x30], 0xab);

    // A count a channel cannot hold, and CMOS of the wrong size.
    let mut bad = sp.clone();
    bad.state["channels"][1]["count"] = serde_json::json!(0);
    let before = pit2.lock().unwrap().state();
    let e = pit2.lock().unwrap().load(&bad).unwrap_err();
    assert!(e.to_string().contains("channel 1: count 0"), "{e}");
    assert_eq!(pit2.lock().unwrap().state(), before);
    // A count loaded before the Virtual clock's start or after now: its
    // edges would lie far in the past, chased by the timer edge by edge.
    for at in [i64::MIN, -1, i64::MAX] {
        let mut bad = sp.clone();
        bad.state["channels"][0]["load_time_ns"] = serde_json::json!(at);
        let e = pit2.lock().unwrap().load(&bad).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("channel 0: loaded at {at} ns")),
            "{e}"
        );
        assert_eq!(pit2.lock().unwrap().state(), before);
    }
    let mut bad = sr.clone();
    bad.state["cmos"] = serde_json::json!(vec![0u8; CMOS_SIZE - 1]);
    assert!(matches!(
        rtc2.lock().unwrap().load(&bad),
        Err(StateError::Decode { .. })
    ));
    // State of the other device.
    assert!(matches!(
        rtc2.lock().unwrap().load(&sp),
        Err(StateError::WrongType { .. })
    ));
}
