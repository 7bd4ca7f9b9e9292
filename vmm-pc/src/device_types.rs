//! The device types of the PC, registered at start-up (QEMU's
//! `module_call_init(MODULE_INIT_QOM)`): the fixed devices the machine
//! adds itself (built by name through [`crate::devices::build`]), and the
//! ones `--device` may add.

use vmm_qom::{Bus, Category, DeviceType, PropKind, PropSpec, Registry};

const fn fixed(name: &'static str, bus: Bus, category: Category, desc: &'static str) -> DeviceType {
    DeviceType {
        name,
        bus,
        category,
        desc,
        user_creatable: false,
        props: &[],
    }
}

/// `virtio-blk-pci`: a disk on a drive (`--drive …,id=ID`).
pub const VIRTIO_BLK_PCI: DeviceType = DeviceType {
    name: "virtio-blk-pci",
    bus: Bus::Pci,
    category: Category::Storage,
    desc: "Virtio block device (virtio 1.x, modern PCI)",
    user_creatable: true,
    props: &[
        PropSpec {
            name: "drive",
            kind: PropKind::Str,
            default: None,
            required: true,
            help: "the drive (--drive ...,id=ID) to serve",
        },
        PropSpec {
            name: "serial",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "the disk's serial number (at most 20 bytes)",
        },
        PropSpec {
            name: "addr",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "PCI slot (1-31, hex as QEMU: addr=05 or addr=0x5)",
        },
    ],
};

/// `virtio-net-pci`: a network card on a netdev (`--netdev tap,id=ID`).
pub const VIRTIO_NET_PCI: DeviceType = DeviceType {
    name: "virtio-net-pci",
    bus: Bus::Pci,
    category: Category::Network,
    desc: "Virtio network device (virtio 1.x, modern PCI) on a tap",
    user_creatable: true,
    props: &[
        PropSpec {
            name: "netdev",
            kind: PropKind::Str,
            default: None,
            required: true,
            help: "the netdev (--netdev tap,id=ID,...) to use",
        },
        PropSpec {
            name: "mac",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "the card's MAC address (default 52:54:00:12:34:56, :57... by card)",
        },
        PropSpec {
            name: "addr",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "PCI slot (1-31, hex as QEMU: addr=05 or addr=0x5)",
        },
    ],
};

/// `virtio-rng-pci`: an entropy source for the guest, fed from the host's
/// `getrandom`, with QEMU's rate limit properties.
pub const VIRTIO_RNG_PCI: DeviceType = DeviceType {
    name: "virtio-rng-pci",
    bus: Bus::Pci,
    category: Category::Misc,
    desc: "Virtio entropy device (virtio 1.x, modern PCI) fed from the host's getrandom",
    user_creatable: true,
    props: &[
        PropSpec {
            name: "max-bytes",
            kind: PropKind::U64,
            default: Some("9223372036854775807"),
            required: false,
            help: "bytes the guest may take per period (1 to 2^63-1)",
        },
        PropSpec {
            name: "period",
            kind: PropKind::U64,
            default: Some("65536"),
            required: false,
            help: "the rate limit's period in ms",
        },
        PropSpec {
            name: "addr",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "PCI slot (1-31, hex as QEMU: addr=05 or addr=0x5)",
        },
    ],
};

/// `virtio-vsock-pci`: a socket device whose host side is a Unix socket
/// (Firecracker's protocol: `CONNECT <port>` on the socket, `PATH_<port>`
/// for the guest's connections).
pub const VIRTIO_VSOCK_PCI: DeviceType = DeviceType {
    name: "virtio-vsock-pci",
    bus: Bus::Pci,
    category: Category::Misc,
    desc: "Virtio socket device (virtio 1.x, modern PCI) on a Unix socket",
    user_creatable: true,
    props: &[
        PropSpec {
            name: "guest-cid",
            kind: PropKind::U64,
            default: None,
            required: true,
            help: "the guest's context ID (3 to 4294967294), unique on this host",
        },
        PropSpec {
            name: "uds",
            kind: PropKind::Str,
            default: None,
            required: true,
            help: "Unix socket made for host connections (CONNECT <port>); the guest's go to PATH_<port>",
        },
        PropSpec {
            name: "addr",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "PCI slot (1-31, hex as QEMU: addr=05 or addr=0x5)",
        },
    ],
};

/// `vhost-vsock-pci`: a socket device served by the host kernel's
/// vhost-vsock (`/dev/vhost-vsock`): the guest's sockets are the host's
/// AF_VSOCK sockets.
pub const VHOST_VSOCK_PCI: DeviceType = DeviceType {
    name: "vhost-vsock-pci",
    bus: Bus::Pci,
    category: Category::Misc,
    desc: "Virtio socket device (virtio 1.x, modern PCI) on the host kernel's vhost-vsock",
    user_creatable: true,
    props: &[
        PropSpec {
            name: "guest-cid",
            kind: PropKind::U64,
            default: None,
            required: true,
            help: "the guest's context ID (3 to 4294967294), unique on this host",
        },
        PropSpec {
            name: "addr",
            kind: PropKind::Str,
            default: None,
            required: false,
            help: "PCI slot (1-31, hex as QEMU: addr=05 or addr=0x5)",
        },
    ],
};

/// `ib700`: the IB700 watchdog (ISA, ports 0x441-0x443).
pub const IB700: DeviceType = DeviceType {
    name: "ib700",
    bus: Bus::Isa,
    category: Category::Watchdog,
    desc: "iBASE 700 watchdog (ports 0x441-0x443; --action watchdog=...)",
    user_creatable: true,
    props: &[],
};

/// `i6300esb`: the Intel 6300ESB watchdog (PCI), also described by the
/// ACPI WDAT.
pub const I6300ESB: DeviceType = DeviceType {
    name: "i6300esb",
    bus: Bus::Pci,
    category: Category::Watchdog,
    desc: "Intel 6300ESB watchdog (PCI; ACPI WDAT for wdat_wdt; --action watchdog=...)",
    user_creatable: true,
    props: &[PropSpec {
        name: "addr",
        kind: PropKind::Str,
        default: None,
        required: false,
        help: "PCI slot (1-31, hex as QEMU: addr=05 or addr=0x5; default: the last free one)",
    }],
};

/// The machine's fixed devices (listed, not creatable) and the creatable
/// ones.
pub const TYPES: &[DeviceType] = &[
    fixed("isa-serial", Bus::Isa, Category::Misc, "16550A UART (COM1)"),
    fixed("isa-pit", Bus::Isa, Category::Misc, "i8254 PIT"),
    fixed(
        "mc146818rtc",
        Bus::Isa,
        Category::Misc,
        "MC146818 RTC and CMOS",
    ),
    fixed(
        "i8042",
        Bus::Isa,
        Category::Input,
        "i8042 keyboard controller (reset line)",
    ),
    fixed("pvpanic", Bus::Isa, Category::Misc, "pvpanic (port 0x505)"),
    fixed(
        "acpi-pm1-evt",
        Bus::System,
        Category::Misc,
        "ACPI PM1a event block (status, enable, the power button, the SCI)",
    ),
    fixed(
        "acpi-pm1-cnt",
        Bus::System,
        Category::Misc,
        "ACPI PM1a control block (S5 soft-off)",
    ),
    fixed(
        "port61",
        Bus::Isa,
        Category::Misc,
        "system control port B (0x61)",
    ),
    fixed("port80", Bus::Isa, Category::Misc, "POST code port (0x80)"),
    fixed(
        "pcie-host-bridge",
        Bus::Pci,
        Category::Bridge,
        "PCI Express host bridge (00:00.0)",
    ),
    VIRTIO_BLK_PCI,
    VIRTIO_NET_PCI,
    VIRTIO_RNG_PCI,
    VIRTIO_VSOCK_PCI,
    VHOST_VSOCK_PCI,
    IB700,
    I6300ESB,
];

/// A registry of every PC device type.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    for ty in TYPES {
        // The list above has each name once (a test checks it).
        let _ = r.register(*ty);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_registers_once() {
        let mut r = Registry::new();
        for ty in TYPES {
            r.register(*ty).unwrap();
        }
        assert_eq!(registry().types().count(), TYPES.len());
    }

    #[test]
    fn every_fixed_type_has_a_builder_that_makes_a_device_of_its_type() {
        use crate::devices::build::{fixed_devices, BUILDERS};
        let mut fixed: Vec<_> = TYPES
            .iter()
            .filter(|t| !t.user_creatable)
            .map(|t| t.name)
            .collect();
        let mut built: Vec<_> = BUILDERS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "ib700" && *n != "i6300esb")
            .collect();
        fixed.sort_unstable();
        built.sort_unstable();
        assert_eq!(fixed, built, "one builder per fixed type");
        // The default machine with our PIT builds every one of them, and
        // each lands in the device model under its own type.
        let mut names = fixed_devices(true);
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, fixed);
        let (_io, devices) = crate::devices::tests::wired(true);
        let types: Vec<_> = devices.model.list().into_iter().map(|(_, t)| t).collect();
        // The test machine adds an ib700 too, after the fixed devices.
        names.extend(["ib700", "i6300esb"]);
        assert_eq!(types, names);
    }

    #[test]
    fn only_creatable_types_are_offered() {
        let help = registry().help();
        assert!(help.contains("name \"virtio-blk-pci\", bus PCI"), "{help}");
        assert!(!help.contains("isa-serial"), "{help}");
        let opts = vmm_qom::parse_opts("isa-serial", Some("driver")).unwrap();
        assert!(registry().request(&opts).is_err());
    }
}
