//! Device types and their registry.
//!
//! A [`DeviceType`] says what `-device NAME` builds: the bus it sits on,
//! the category `-device help` lists it under, and its properties with
//! their kinds, defaults and help. The [`Registry`] checks a request
//! against its type ([`Registry::request`]: unknown properties and values
//! of the wrong kind are refused with QEMU's messages, defaults filled in)
//! and prints the help texts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::opts::Opts;
use crate::QomError;

/// The bus a device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The machine's own (fixed ports, not user-creatable on another bus).
    System,
    /// ISA: fixed ports and IRQs.
    Isa,
    /// PCI: a slot on the root bus.
    Pci,
}

impl Bus {
    fn name(self) -> &'static str {
        match self {
            Self::System => "System",
            Self::Isa => "ISA",
            Self::Pci => "PCI",
        }
    }
}

/// The groups of `-device help`, in QEMU's order and words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Controllers, bridges, hubs.
    Bridge,
    /// Disks.
    Storage,
    /// Network cards.
    Network,
    /// Input devices.
    Input,
    /// Displays.
    Display,
    /// Watchdogs.
    Watchdog,
    /// Everything else.
    Misc,
}

impl Category {
    fn title(self) -> &'static str {
        match self {
            Self::Bridge => "Controller/Bridge/Hub devices",
            Self::Storage => "Storage devices",
            Self::Network => "Network devices",
            Self::Input => "Input devices",
            Self::Display => "Display devices",
            Self::Watchdog => "Watchdog devices",
            Self::Misc => "Misc devices",
        }
    }
}

/// What a property holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropKind {
    /// Any text.
    Str,
    /// `on`/`off` (also `yes`/`no`, `true`/`false`).
    Bool,
    /// A number (decimal or `0x` hexadecimal).
    U64,
    /// One of these words.
    Enum(&'static [&'static str]),
}

impl PropKind {
    fn placeholder(self) -> String {
        match self {
            Self::Str => "<str>".into(),
            Self::Bool => "<bool>".into(),
            Self::U64 => "<uint64>".into(),
            Self::Enum(words) => format!("<{}>", words.join("|")),
        }
    }

    fn parse(self, prop: &str, text: &str) -> Result<Value, QomError> {
        let bad = |expected: &str| QomError::BadValue {
            prop: prop.to_owned(),
            expected: expected.to_owned(),
        };
        match self {
            Self::Str => Ok(Value::Str(text.to_owned())),
            Self::Bool => match text {
                "on" | "yes" | "true" => Ok(Value::Bool(true)),
                "off" | "no" | "false" => Ok(Value::Bool(false)),
                _ => Err(bad("'on' or 'off'")),
            },
            Self::U64 => {
                let n = match text.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => text.parse(),
                };
                n.map(Value::U64).map_err(|_| bad("a number"))
            }
            Self::Enum(words) => {
                if words.contains(&text) {
                    Ok(Value::Str(text.to_owned()))
                } else {
                    Err(bad(&format!("one of {}", words.join(", "))))
                }
            }
        }
    }
}

/// A property's value, checked against its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text or an enum's word.
    Str(String),
    /// A flag.
    Bool(bool),
    /// A number.
    U64(u64),
}

/// One property of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropSpec {
    /// Its name.
    pub name: &'static str,
    /// What it holds.
    pub kind: PropKind,
    /// Its default, in option syntax; None: unset unless given.
    pub default: Option<&'static str>,
    /// Whether a request must give it.
    pub required: bool,
    /// One line of help.
    pub help: &'static str,
}

/// A device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    /// Its name (`virtio-blk-pci`).
    pub name: &'static str,
    /// The bus it sits on.
    pub bus: Bus,
    /// Where `-device help` lists it.
    pub category: Category,
    /// One line about it.
    pub desc: &'static str,
    /// Whether `--device` may create it (the PC's fixed devices may not:
    /// the machine adds them itself).
    pub user_creatable: bool,
    /// Its properties.
    pub props: &'static [PropSpec],
}

/// A request for a device, checked against its type: every property known
/// and of its kind, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The type's name.
    pub driver: &'static str,
    /// Its `id`, if given.
    pub id: Option<String>,
    /// Property values by name.
    pub props: BTreeMap<&'static str, Value>,
}

impl DeviceRequest {
    /// A text property (or an enum's word).
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.props.get(name) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A flag (false when unset).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.props.get(name), Some(Value::Bool(true)))
    }

    /// A number.
    pub fn u64(&self, name: &str) -> Option<u64> {
        match self.props.get(name) {
            Some(Value::U64(n)) => Some(*n),
            _ => None,
        }
    }
}

/// The device types the machine can build.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    types: BTreeMap<&'static str, DeviceType>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `ty`; a name registered twice is a machine bug.
    pub fn register(&mut self, ty: DeviceType) -> Result<(), QomError> {
        if self.types.insert(ty.name, ty).is_some() {
            return Err(QomError::Duplicate(ty.name.to_owned()));
        }
        Ok(())
    }

    /// The type called `name`.
    pub fn get(&self, name: &str) -> Option<&DeviceType> {
        self.types.get(name)
    }

    /// Every type, by name.
    pub fn types(&self) -> impl Iterator<Item = &DeviceType> {
        self.types.values()
    }

    /// Checks `opts` (from `-device`, the driver under the key `driver`)
    /// against its type.
    pub fn request(&self, opts: &Opts) -> Result<DeviceRequest, QomError> {
        let driver = opts.get("driver").ok_or(QomError::NoDriver)?;
        let ty = self
            .types
            .get(driver)
            .filter(|t| t.user_creatable)
            .ok_or_else(|| QomError::UnknownType(driver.to_owned()))?;
        let mut props = BTreeMap::new();
        let mut id = None;
        for (key, text) in &opts.pairs {
            match key.as_str() {
                "driver" => {}
                "id" => id = Some(text.clone()),
                _ => {
                    let spec = ty.props.iter().find(|p| p.name == key).ok_or_else(|| {
                        QomError::UnknownProperty {
                            ty: ty.name.to_owned(),
                            prop: key.clone(),
                        }
                    })?;
                    props.insert(spec.name, spec.kind.parse(spec.name, text)?);
                }
            }
        }
        for spec in ty.props {
            if props.contains_key(spec.name) {
                continue;
            }
            if spec.required {
                return Err(QomError::Missing {
                    ty: ty.name.to_owned(),
                    prop: spec.name.to_owned(),
                });
            }
            if let Some(default) = spec.default {
                props.insert(spec.name, spec.kind.parse(spec.name, default)?);
            }
        }
        Ok(DeviceRequest {
            driver: ty.name,
            id,
            props,
        })
    }

    /// `-device help`: the user-creatable types by category, as QEMU lists
    /// them.
    pub fn help(&self) -> String {
        let mut by_category: BTreeMap<Category, Vec<&DeviceType>> = BTreeMap::new();
        for ty in self.types.values().filter(|t| t.user_creatable) {
            by_category.entry(ty.category).or_default().push(ty);
        }
        let mut out = String::new();
        for (category, types) in by_category {
            let _ = writeln!(out, "{}:", category.title());
            for ty in types {
                let _ = writeln!(
                    out,
                    "name \"{}\", bus {}, desc \"{}\"",
                    ty.name,
                    ty.bus.name(),
                    ty.desc
                );
            }
            out.push('\n');
        }
        out
    }

    /// `-device NAME,help`: its properties, as QEMU lists them.
    pub fn help_type(&self, name: &str) -> Result<String, QomError> {
        let ty = self
            .types
            .get(name)
            .ok_or_else(|| QomError::UnknownType(name.to_owned()))?;
        let mut out = format!("{} options:\n", ty.name);
        for p in ty.props {
            let left = format!("  {}={}", p.name, p.kind.placeholder());
            let default = p
                .default
                .map(|d| format!(" (default: {d})"))
                .unwrap_or_default();
            let _ = writeln!(out, "{left:<24} - {}{default}", p.help);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::parse;

    const BLK: DeviceType = DeviceType {
        name: "virtio-blk-pci",
        bus: Bus::Pci,
        category: Category::Storage,
        desc: "virtio block device",
        user_creatable: true,
        props: &[
            PropSpec {
                name: "drive",
                kind: PropKind::Str,
                default: None,
                required: true,
                help: "the drive (its id) to use as a backend",
            },
            PropSpec {
                name: "serial",
                kind: PropKind::Str,
                default: None,
                required: false,
                help: "the disk's serial number",
            },
            PropSpec {
                name: "num-queues",
                kind: PropKind::U64,
                default: Some("1"),
                required: false,
                help: "request queues",
            },
            PropSpec {
                name: "discard",
                kind: PropKind::Bool,
                default: Some("on"),
                required: false,
                help: "offer discard",
            },
        ],
    };

    const SERIAL: DeviceType = DeviceType {
        name: "isa-serial",
        bus: Bus::Isa,
        category: Category::Misc,
        desc: "16550A UART",
        user_creatable: false,
        props: &[],
    };

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(BLK).unwrap();
        r.register(SERIAL).unwrap();
        r
    }

    fn device(s: &str) -> Result<DeviceRequest, QomError> {
        registry().request(&parse(s, Some("driver"))?)
    }

    #[test]
    fn requests_are_checked_and_defaults_filled() {
        let d = device("virtio-blk-pci,drive=d0,id=disk1,serial=abc,discard=off").unwrap();
        assert_eq!(d.driver, "virtio-blk-pci");
        assert_eq!(d.id.as_deref(), Some("disk1"));
        assert_eq!(d.str("drive"), Some("d0"));
        assert_eq!(d.str("serial"), Some("abc"));
        assert_eq!(d.u64("num-queues"), Some(1));
        assert!(!d.flag("discard"));
        assert!(device("virtio-blk-pci,drive=d0").unwrap().flag("discard"));
        assert_eq!(
            device("virtio-blk-pci,drive=d0,num-queues=0x4")
                .unwrap()
                .u64("num-queues"),
            Some(4)
        );
    }

    #[test]
    fn qemus_refusals() {
        let e = |s| device(s).unwrap_err().to_string();
        assert_eq!(
            e("virtio-blk-pcx,drive=d0"),
            "'virtio-blk-pcx' is not a valid device model name"
        );
        assert_eq!(
            e("virtio-blk-pci,drive=d0,foo=1"),
            "Property 'virtio-blk-pci.foo' not found"
        );
        assert_eq!(
            e("virtio-blk-pci,drive=d0,discard=maybe"),
            "Parameter 'discard' expects 'on' or 'off'"
        );
        assert_eq!(
            e("virtio-blk-pci,drive=d0,num-queues=x"),
            "Parameter 'num-queues' expects a number"
        );
        assert_eq!(
            e("virtio-blk-pci"),
            "Property 'virtio-blk-pci.drive' is required"
        );
        assert_eq!(
            e("isa-serial"),
            "'isa-serial' is not a valid device model name"
        );
        assert_eq!(e("drive=d0"), "Parameter 'driver' is missing");
        let mut r = registry();
        assert_eq!(
            r.register(BLK),
            Err(QomError::Duplicate("virtio-blk-pci".into()))
        );
    }

    #[test]
    fn help_texts() {
        let r = registry();
        assert_eq!(
            r.help(),
            "Storage devices:\nname \"virtio-blk-pci\", bus PCI, desc \"virtio block device\"\n\n"
        );
        let h = r.help_type("virtio-blk-pci").unwrap();
        assert!(h.starts_with("virtio-blk-pci options:\n"), "{h}");
        assert!(
            h.contains("  drive=<str>            - the drive (its id) to use as a backend\n"),
            "{h}"
        );
        assert!(
            h.contains("num-queues=<uint64>") && h.contains("(default: 1)"),
            "{h}"
        );
        assert!(r.help_type("nope").is_err());
    }
}
