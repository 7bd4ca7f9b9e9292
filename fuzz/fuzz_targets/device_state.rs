//! Loading saved device state (what a snapshot file or a migration stream
//! will carry) into the PC's devices, wired as the machine wires them
//! (`vmm_pc::devices::wire_devices`) with fake time and no KVM.
//!
//! A machine is driven by a few guest port writes and saved; the save is
//! then damaged field by field (numbers out of range, wrong kinds, arrays
//! of the wrong length, names and versions changed, entries dropped) and
//! loaded into a second machine. Whatever the load says, nothing panics;
//! time then passes for the second machine without a timer running away,
//! its ports answer, and whatever it holds saves and loads again into a
//! third machine (a device never takes state it cannot give back).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use vmm_core::io::IoHandler;
use vmm_devices::EventFdTrigger;
use vmm_fuzz::{Input, Level, Output, Sim};
use vmm_pc::devices::{wire_devices, DeviceLines, PcDevices, PcShape};
use vmm_pc::io::PcIo;
use vmm_pc::irqchip::IsaLine;
use vmm_pc::model::SavedEntry;
use vmm_pc::PitBackend;

/// Ports the guest programs the devices through.
const PORTS: &[u16] = &[
    0x3f9, 0x3fb, 0x3fc, 0x3ff, 0x60, 0x64, 0x602, 0x604, 0x80, 0x70, 0x71, 0x40, 0x42, 0x43, 0x61,
    0x441, 0x443,
];

fn machine(sim: &Sim) -> (PcIo, PcDevices) {
    let line = || IsaLine::from(EventFdTrigger::nonblocking().expect("eventfd"));
    let lines = DeviceLines {
        com1: line(),
        keyboard: line(),
        rtc: line(),
        pit: Some(line()),
        sci: Box::new(Level::default()),
    };
    let shape = PcShape {
        memory: 256 << 20,
        cpus: 2,
        pit: PitBackend::Userspace,
        ib700: true,
        i6300esb: Some(None),
    };
    let mut io = PcIo::new();
    let devices = wire_devices(
        &mut io,
        &sim.clocks,
        Box::new(Output::default()),
        shape,
        lines,
    )
    .expect("the PC's devices fit on an empty bus");
    (io, devices)
}

/// A value to put somewhere in a device's state.
fn junk(input: &mut Input) -> Value {
    match input.u8() % 10 {
        0 => json!(input.u64()),
        1 => json!(input.i64()),
        2 => json!(input.u8()),
        3 => json!(input.u8() & 1 == 0),
        4 => Value::Null,
        5 => json!("junk"),
        6 => {
            let len = usize::from(input.u8());
            Value::Array((0..len).map(|_| json!(input.u8())).collect())
        }
        7 => json!(-1),
        8 => json!(1.5),
        _ => json!({}),
    }
}

/// Replaces a field found by walking `value` with the input's choices.
fn damage(value: &mut Value, input: &mut Input) {
    let pick = usize::from(input.u8());
    match value {
        Value::Object(map) if !map.is_empty() && pick % 4 != 0 => {
            let key = map.keys().nth(pick % map.len()).cloned();
            if let Some(v) = key.and_then(|k| map.get_mut(&k)) {
                return damage(v, input);
            }
        }
        Value::Array(items) if !items.is_empty() && pick % 4 != 0 => {
            let len = items.len();
            return damage(&mut items[pick % len], input);
        }
        _ => {}
    }
    *value = junk(input);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sim = Sim::new(1_700_000_000_000_000_000);
    let (io_a, a) = machine(&sim);
    for _ in 0..input.u8() % 32 {
        let port = PORTS[usize::from(input.u8()) % PORTS.len()];
        io_a.pio_write(port, &[input.u8()]);
    }
    let mut saved = a.model.save().expect("a machine saves");
    while !input.is_empty() {
        match input.u8() % 8 {
            0 if !saved.is_empty() => {
                let i = usize::from(input.u8()) % saved.len();
                saved.remove(i);
            }
            1 if !saved.is_empty() => {
                let i = usize::from(input.u8()) % saved.len();
                saved[i].saved.version = input.u32();
            }
            2 if !saved.is_empty() => {
                let i = usize::from(input.u8()) % saved.len();
                saved[i].saved.type_name = "isa-pit".into();
            }
            _ if !saved.is_empty() => {
                let i = usize::from(input.u8()) % saved.len();
                damage(&mut saved[i].saved.state, &mut input);
            }
            _ => break,
        }
    }
    // Through text, as a file would carry it.
    let text = serde_json::to_string(&saved).expect("a save encodes");
    let saved: Vec<SavedEntry> = serde_json::from_str(&text).expect("a save decodes");

    let (io_b, b) = machine(&sim);
    let _ = b.model.load(&saved);
    // Time passes: a restored timer fires at most once per pass and the
    // harness refuses one that stays due (vmm_fuzz::Sim).
    sim.run_for(50_000_000, || {});
    for &port in PORTS {
        let mut byte = [0u8];
        io_b.pio_read(port, &mut byte);
    }
    let again = b.model.save().expect("what a device took, it gives back");
    let (_io_c, c) = machine(&sim);
    c.model
        .load(&again)
        .expect("what a device gave, a fresh one takes");
});
