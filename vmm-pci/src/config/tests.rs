use super::*;

fn id() -> Identity {
    Identity {
        vendor: 0x1af4,
        device: 0x1042,
        class: (0x01, 0x00, 0x00),
        revision: 1,
        subsystem_vendor: 0x1af4,
        subsystem: 0x0002,
    }
}

fn write_u32(c: &mut ConfigSpace, off: usize, v: u32) {
    c.write(off, &v.to_le_bytes());
}

#[test]
fn the_header_reads_as_built_and_read_only_bits_stay() {
    let mut c = ConfigSpace::new(id());
    assert_eq!(c.read_u32(0), 0x1042_1af4);
    assert_eq!(c.read_u32(REVISION_ID), 0x0100_0001);
    assert_eq!(c.read_u16(SUBSYSTEM_ID), 2);
    // IDs, class and header type are read-only.
    write_u32(&mut c, 0, 0xdead_beef);
    write_u32(&mut c, REVISION_ID, 0xffff_ffff);
    c.write(HEADER_TYPE, &[0x80]);
    assert_eq!(c.read_u32(0), 0x1042_1af4);
    assert_eq!(c.read_u32(REVISION_ID), 0x0100_0001);
    assert_eq!(c.read(HEADER_TYPE, &mut [0]), ());
    let mut b = [0];
    c.read(HEADER_TYPE, &mut b);
    assert_eq!(b[0], 0);
    // Command: only its defined bits.
    c.write(COMMAND, &0xffffu16.to_le_bytes());
    assert_eq!(c.read_u16(COMMAND), COMMAND_WRITABLE);
    // Interrupt line is the OS's scratch byte.
    c.write(INTERRUPT_LINE, &[11]);
    let mut b = [0];
    c.read(INTERRUPT_LINE, &mut b);
    assert_eq!(b[0], 11);
}

#[test]
fn status_error_bits_clear_when_written_with_ones() {
    let mut c = ConfigSpace::new(id());
    c.set_u16(STATUS, 0x8000 | STATUS_CAPABILITIES);
    c.write(STATUS, &0x0010u16.to_le_bytes());
    assert_eq!(
        c.read_u16(STATUS),
        0x8000 | STATUS_CAPABILITIES,
        "a 1 on a read-only bit does nothing"
    );
    c.write(STATUS, &0x8000u16.to_le_bytes());
    assert_eq!(c.read_u16(STATUS), STATUS_CAPABILITIES);
}

#[test]
fn bars_size_by_all_ones_and_decode_once_enabled() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(
        0,
        Bar {
            kind: BarKind::Memory32,
            size: 0x1000,
        },
    )
    .unwrap();
    c.add_bar(
        1,
        Bar {
            kind: BarKind::Io,
            size: 0x20,
        },
    )
    .unwrap();
    c.add_bar(
        2,
        Bar {
            kind: BarKind::Memory64 { prefetchable: true },
            size: 0x4000,
        },
    )
    .unwrap();
    // The OS's sizing: write all ones, read back the mask with the type.
    for (off, expect) in [
        (BAR0, 0xffff_f000u32),
        (BAR0 + 4, 0xffff_ffe1),
        (BAR0 + 8, 0xffff_c00c),
        (BAR0 + 12, 0xffff_ffff),
    ] {
        write_u32(&mut c, off, 0xffff_ffff);
        assert_eq!(c.read_u32(off), expect, "BAR at {off:#x}");
    }
    // Sizing patterns never decode.
    c.write(COMMAND, &(COMMAND_IO | COMMAND_MEMORY).to_le_bytes());
    assert_eq!(c.decoding_regions().count(), 0);
    write_u32(&mut c, BAR0, 0xfebf_f000);
    write_u32(&mut c, BAR0 + 4, 0xc001);
    write_u32(&mut c, BAR0 + 8, 0x0000_8000);
    write_u32(&mut c, BAR0 + 12, 0x1);
    let regions: Vec<_> = c.decoding_regions().collect();
    assert_eq!(
        regions,
        [
            BarRegion {
                index: 0,
                kind: BarKind::Memory32,
                base: 0xfebf_f000,
                size: 0x1000
            },
            BarRegion {
                index: 1,
                kind: BarKind::Io,
                base: 0xc000,
                size: 0x20
            },
            BarRegion {
                index: 2,
                kind: BarKind::Memory64 { prefetchable: true },
                base: 0x1_0000_8000,
                size: 0x4000
            },
        ]
    );
    assert_eq!(regions[1].offset_of(0xc01f), Some(0x1f));
    assert_eq!(regions[1].offset_of(0xc020), None);
    // Memory decoding off: only the port BAR stays.
    c.write(COMMAND, &COMMAND_IO.to_le_bytes());
    assert_eq!(
        c.decoding_regions().map(|r| r.index).collect::<Vec<_>>(),
        [1]
    );
    // The upper half of a 64-bit BAR and unused BARs read 0 / stay 0.
    write_u32(&mut c, BAR0 + 16, 0xffff_ffff);
    assert_eq!(c.read_u32(BAR0 + 16), 0);
    assert_eq!(c.bars()[3], None);
}

#[test]
fn bar_declarations_are_checked() {
    let mut c = ConfigSpace::new(id());
    let m = |size| Bar {
        kind: BarKind::Memory32,
        size,
    };
    assert_eq!(c.add_bar(6, m(0x1000)), Err(PciError::BarSlot(6)));
    assert_eq!(c.add_bar(0, m(0x1001)), Err(PciError::BarSize(0x1001)));
    assert_eq!(c.add_bar(0, m(8)), Err(PciError::BarSize(8)));
    let wide = Bar {
        kind: BarKind::Memory64 {
            prefetchable: false,
        },
        size: 1 << 33,
    };
    assert_eq!(c.add_bar(5, wide), Err(PciError::BarSlot(5)));
    c.add_bar(4, wide).unwrap();
    assert_eq!(c.add_bar(4, m(0x1000)), Err(PciError::BarSlot(4)));
    c.set_bar_base(4, 0x40_0000_0000);
    assert_eq!(c.bar_base(4), Some(0x40_0000_0000));
    // Sizing an 8 GiB BAR: the upper half says so too.
    write_u32(&mut c, BAR0 + 16, 0xffff_ffff);
    write_u32(&mut c, BAR0 + 20, 0xffff_ffff);
    assert_eq!(c.read_u32(BAR0 + 16), 0x0000_0004);
    assert_eq!(c.read_u32(BAR0 + 20), 0xffff_fffe);
}

#[test]
fn capabilities_chain_from_the_pointer() {
    let mut c = ConfigSpace::new(id());
    assert_eq!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
    let a = c.add_capability(0x09, &[14, 1, 2, 3, 4, 5], &[]).unwrap();
    let b = c
        .add_capability(0x11, &[0xaa, 0xbb], &[0xff, 0x00])
        .unwrap();
    assert_eq!((a, b), (0x40, 0x48));
    assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
    let mut p = [0];
    c.read(CAPABILITIES_POINTER, &mut p);
    assert_eq!(p[0], 0x40);
    assert_eq!(c.read_u16(0x40), 0x4809, "ID, then the next capability");
    assert_eq!(c.read_u16(0x48), 0x0011, "the last one ends the list");
    assert_eq!(c.capabilities(), [(0x40, 0x09), (0x48, 0x11)]);
    assert_eq!(c.find_capability(0x11), Some(0x48));
    assert_eq!(c.find_capability(0x05), None);
    // The mask holds: the guest writes the first body byte only.
    c.write(0x4a, &[0x12, 0x34]);
    assert_eq!(c.read_u16(0x4a), 0xbb12);
    // The list pointers are read-only.
    c.write(0x41, &[0x80]);
    assert_eq!(c.read_u16(0x40), 0x4809);
    // No room past 256 bytes.
    assert_eq!(
        c.add_capability(0x09, &[0; 250], &[]),
        Err(PciError::CapabilitySpace)
    );
    assert_eq!(
        c.add_capability(0x09, &[0; 2], &[0]),
        Err(PciError::CapabilitySpace)
    );
}

#[test]
fn reset_puts_back_what_the_machine_placed() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(
        0,
        Bar {
            kind: BarKind::Memory32,
            size: 0x1000,
        },
    )
    .unwrap();
    c.set_bar_base(0, 0xe000_0000);
    c.set_reset_state();
    c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    write_u32(&mut c, BAR0, 0xffff_ffff);
    c.reset();
    assert_eq!(c.read_u16(COMMAND), 0);
    assert_eq!(c.bar_base(0), Some(0xe000_0000));
    // State round trip.
    c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
    let saved = c.state();
    let mut d = ConfigSpace::new(id());
    d.add_bar(
        0,
        Bar {
            kind: BarKind::Memory32,
            size: 0x1000,
        },
    )
    .unwrap();
    d.restore(&saved).unwrap();
    assert_eq!(d.decoding_regions().count(), 1);
    assert_eq!(d.restore(&[0; 3]), Err(PciError::StateSize(3)));
    let mut other = saved.clone();
    other[0x0a] ^= 1; // the class
    assert_eq!(d.restore(&other), Err(PciError::StateIdentity(0x08)));
    // A BAR goes through its write mask, as a guest's write does: the
    // base aligned to the BAR's size, the type bits the function's.
    let mut unaligned = saved.clone();
    unaligned[BAR0..BAR0 + 4].copy_from_slice(&0xfebf_d01fu32.to_le_bytes());
    d.restore(&unaligned).unwrap();
    assert_eq!(d.bar_base(0), Some(0xfebf_d000));
    assert_eq!(d.read_u32(BAR0) & 0xf, 0, "a 32-bit memory BAR");
}

#[test]
fn any_access_anywhere_is_safe() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(
        0,
        Bar {
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            size: 0x1000,
        },
    )
    .unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % 4200) as usize;
        let len = ((x >> 16) % 9) as usize;
        let mut buf = vec![(x >> 24) as u8; len];
        if x & 1 == 0 {
            c.write(off, &buf);
        } else {
            c.read(off, &mut buf);
        }
        let _ = c.decoding_regions().count();
    }
    let mut b = [0; 4];
    c.read(CONFIG_SIZE - 2, &mut b);
    assert_eq!(&b[2..], &[0xff, 0xff], "past the end reads all ones");
    assert_eq!(c.read_u32(0), 0x1042_1af4);
}
