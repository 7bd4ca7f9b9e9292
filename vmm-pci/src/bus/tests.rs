use super::*;
use crate::config::{Bar, BarKind, BAR0, COMMAND, COMMAND_IO, COMMAND_MEMORY};

/// A function with a 4 KiB memory BAR 0 and a 32-port BAR 1 that
/// remembers the last write and reads back its offset.
struct Fake {
    config: ConfigSpace,
    last: Option<(usize, u64, Vec<u8>)>,
}

impl Fake {
    fn new() -> Self {
        let mut config = ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1000,
            class: (0xff, 0, 0),
            ..Identity::default()
        });
        config
            .add_bar(
                0,
                Bar {
                    kind: BarKind::Memory32,
                    size: 0x1000,
                },
            )
            .unwrap();
        config
            .add_bar(
                1,
                Bar {
                    kind: BarKind::Io,
                    size: 0x20,
                },
            )
            .unwrap();
        config.set_bar_base(0, 0xc000_0000);
        config.set_bar_base(1, 0xc040);
        config.set_reset_state();
        Self { config, last: None }
    }
}

impl PciDevice for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill((bar as u8) << 7 | offset as u8);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.last = Some((bar, offset, data.to_vec()));
    }
}

fn address(slot: u32, register: u32) -> [u8; 4] {
    (1u32 << 31 | slot << 11 | register).to_le_bytes()
}

fn cf8_read32(m: &mut ConfigMechanism1, root: &mut PciRoot, slot: u32, register: u32) -> u32 {
    m.write(root, 0, &address(slot, register));
    let mut d = [0; 4];
    m.read(root, 4, &mut d);
    u32::from_le_bytes(d)
}

#[test]
fn mechanism_1_finds_the_host_bridge_and_nothing_else() {
    let mut root = PciRoot::new();
    let mut m = ConfigMechanism1::default();
    assert_eq!(cf8_read32(&mut m, &mut root, 0, 0), 0x0008_1b36);
    assert_eq!(
        cf8_read32(&mut m, &mut root, 0, 8) >> 8,
        0x06_0000,
        "class: host bridge"
    );
    assert_eq!(
        cf8_read32(&mut m, &mut root, 1, 0),
        0xffff_ffff,
        "empty slot"
    );
    // The address register reads back whole.
    let mut a = [0; 4];
    m.read(&mut root, 0, &mut a);
    assert_eq!(a, address(1, 0));
    // Byte accesses to 0xCF8-0xCFB are not the address register.
    m.write(&mut root, 0, &[0]);
    m.read(&mut root, 0, &mut a);
    assert_eq!(a, address(1, 0));
    let mut b = [0];
    m.read(&mut root, 1, &mut b);
    assert_eq!(b, [0xff]);
    // Disabled: all ones.
    m.write(&mut root, 0, &0u32.to_le_bytes());
    let mut d = [0; 4];
    m.read(&mut root, 4, &mut d);
    assert_eq!(d, [0xff; 4]);
    // Functions other than 0 and buses other than 0 are absent.
    m.write(&mut root, 0, &(1u32 << 31 | 1 << 8).to_le_bytes());
    m.read(&mut root, 4, &mut d);
    assert_eq!(d, [0xff; 4]);
    m.write(&mut root, 0, &(1u32 << 31 | 1 << 16).to_le_bytes());
    m.read(&mut root, 4, &mut d);
    assert_eq!(d, [0xff; 4]);
}

#[test]
fn the_data_port_takes_sub_dword_accesses_at_its_offset() {
    let mut root = PciRoot::new();
    let mut m = ConfigMechanism1::default();
    m.write(&mut root, 0, &address(0, 0));
    let mut w = [0; 2];
    m.read(&mut root, 6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x0008, "device ID through 0xCFE");
    let mut b = [0];
    m.read(&mut root, 5, &mut b);
    assert_eq!(b, [0x1b]);
    // A 4-byte access at 0xCFD would cross the window: all ones.
    let mut d = [0; 4];
    m.read(&mut root, 5, &mut d);
    assert_eq!(d, [0xff; 4]);
    // Writing the interrupt line through 0xCFC+0 of register 0x3c.
    m.write(&mut root, 0, &address(0, 0x3c));
    m.write(&mut root, 4, &[9]);
    assert_eq!(cf8_read32(&mut m, &mut root, 0, 0x3c) & 0xff, 9);
}

#[test]
fn bars_route_mmio_and_ports_once_enabled() {
    let mut root = PciRoot::new();
    assert_eq!(root.add(None, Box::new(Fake::new())), Ok(1));
    assert_eq!(
        root.add(Some(1), Box::new(Fake::new())),
        Err(PciError::SlotTaken(1))
    );
    assert!(root.add(Some(40), Box::new(Fake::new())).is_err());
    let mut d = [0; 4];
    assert!(
        !root.mmio_read(0xc000_0010, &mut d),
        "decoding is off at reset"
    );
    // The OS turns decoding on through ECAM (device 1 = offset 1 << 15).
    let changed = root.ecam_write(
        1 << 15 | COMMAND as u64,
        &(COMMAND_MEMORY | COMMAND_IO).to_le_bytes(),
    );
    assert!(changed, "BARs appeared");
    assert!(root.mmio_read(0xc000_0010, &mut d));
    assert_eq!(d, [0x10; 4]);
    assert!(root.pio_read(0xc05f, &mut d[..1]));
    assert_eq!(d[0], 0x80 | 0x1f);
    assert!(!root.pio_read(0xc060, &mut d[..1]));
    assert!(root.mmio_write(0xc000_0ffc, &[1, 2]));
    assert!(!root.mmio_write(0xc000_1000, &[1, 2]));
    // The OS moves BAR 0.
    assert!(root.ecam_write(1 << 15 | BAR0 as u64, &0xd000_0000u32.to_le_bytes()));
    assert!(!root.mmio_read(0xc000_0010, &mut d));
    assert!(root.mmio_read(0xd000_0010, &mut d));
    // Writing the same value again changes nothing.
    assert!(!root.ecam_write(1 << 15 | BAR0 as u64, &0xd000_0000u32.to_le_bytes()));
    // Reset: back where the machine placed it, decoding off.
    root.reset();
    assert!(!root.mmio_read(0xd000_0010, &mut d));
    let mut v = [0; 4];
    root.ecam_read(1 << 15 | BAR0 as u64, &mut v);
    assert_eq!(u32::from_le_bytes(v), 0xc000_0000);
    let names: Vec<_> = root
        .functions()
        .map(|(s, f)| (s, f.name().to_owned()))
        .collect();
    assert_eq!(
        names,
        [(0, "pcie-host-bridge".to_owned()), (1, "fake".to_owned())]
    );
}

#[test]
fn ecam_reaches_the_extended_space_and_decodes_its_fields() {
    assert_eq!(ecam_decode(0x0123_4567), (0x12, 0x06, 0x4, 0x567));
    let mut root = PciRoot::new();
    let mut d = [0; 4];
    root.ecam_read(0x100, &mut d);
    assert_eq!(d, [0; 4], "no extended capabilities");
    root.ecam_read(1 << 20, &mut d);
    assert_eq!(d, [0xff; 4], "bus 1 is absent");
}

#[test]
fn any_port_or_ecam_access_is_safe() {
    let mut root = PciRoot::new();
    root.add(None, Box::new(Fake::new())).unwrap();
    let mut m = ConfigMechanism1::default();
    let mut x: u64 = 0xdead_beef_cafe_f00d;
    for _ in 0..30_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = ((x >> 3) % 9) as usize;
        let mut buf = vec![(x >> 32) as u8; len];
        match x % 6 {
            0 => {
                m.write(&mut root, ((x >> 8) % 10) as u16, &buf);
            }
            1 => m.read(&mut root, ((x >> 8) % 10) as u16, &mut buf),
            2 => {
                root.ecam_write((x >> 8) % (2 << 20), &buf);
            }
            3 => root.ecam_read((x >> 8) % (2 << 20), &mut buf),
            4 => {
                root.mmio_write(x >> 16, &buf);
            }
            _ => {
                root.pio_read((x >> 16) as u16, &mut buf);
            }
        }
    }
}

/// A function whose register 0x80 counts the reads that reach it.
struct Counting {
    config: ConfigSpace,
    reads: u32,
}

impl PciDevice for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if offset == 0x80 {
            self.reads += 1;
            data.copy_from_slice(&self.reads.to_le_bytes()[..data.len()]);
        } else {
            self.config.read(offset, data);
        }
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

#[test]
fn configuration_reads_go_through_the_device() {
    let mut root = PciRoot::new();
    let counting = Counting {
        config: ConfigSpace::new(Identity::default()),
        reads: 0,
    };
    let slot = root.add(Some(3), Box::new(counting)).unwrap();
    let mut m = ConfigMechanism1::default();
    assert_eq!(cf8_read32(&mut m, &mut root, u32::from(slot), 0x80), 1);
    let mut d = [0; 4];
    root.ecam_read(u64::from(slot) << 15 | 0x80, &mut d);
    assert_eq!(u32::from_le_bytes(d), 2, "ECAM reads reach the device too");
}
