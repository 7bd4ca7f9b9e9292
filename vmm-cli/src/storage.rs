//! `--drive` and `--device`, in QEMU's spelling, into the machine's disks.
//!
//! - `--drive file=PATH[,if=virtio|none][,format=raw][,id=ID][,readonly=on]
//!   [,cache=none|writeback][,aio=threads|io_uring][,werror=…][,rerror=…]`:
//!   `if=virtio` (the
//!   default here, since this machine has no IDE) adds a virtio-blk-pci for
//!   the drive, as QEMU's shorthand does; `if=none` waits for a `--device`.
//! - `--device virtio-blk-pci,drive=ID[,serial=S][,addr=SLOT]`: a disk on a
//!   drive given with `if=none`.
//! - `--device ib700`, `--device i6300esb[,addr=SLOT]`: the watchdogs
//!   (one of each at most).
//! - `--device virtio-vsock-pci,guest-cid=N,uds=PATH[,addr=SLOT]`: a
//!   socket device whose host side is a Unix socket made at PATH (which
//!   must not exist) when the VMM starts.
//! - `--device help` and `--device NAME,help` print what the registry knows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use vmm_pc::disks::{Aio, CacheMode, DiskConfig, ErrorAction};
use vmm_pc::nets::{MacAddr, NetConfig};
use vmm_pc::virtio::RngConfig;
use vmm_virtio::rng::RateLimit;

use crate::netdev::Netdev;
use vmm_qom::{parse_opts, Registry};

/// The devices `--drive` and `--device` add to the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    /// The disks to build.
    pub disks: Vec<DiskConfig>,
    /// An ib700 watchdog.
    pub ib700: bool,
    /// An i6300esb watchdog: `Some(slot)`, the slot `None` for the last
    /// free one.
    pub i6300esb: Option<Option<u8>>,
    /// The network cards to build.
    pub nets: Vec<NetConfig>,
    /// The entropy devices to build.
    pub rngs: Vec<RngConfig>,
    /// The socket devices to build.
    pub vsocks: Vec<VsockSpec>,
    /// The socket devices on the host's vhost-vsock.
    pub vhost_vsocks: Vec<vmm_pc::vsocks::VhostVsockConfig>,
}

/// A socket device as `--device virtio-vsock-pci` gives it; its socket is
/// bound when the VMM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's CID.
    pub cid: u64,
    /// The listening socket's path.
    pub uds: PathBuf,
    /// The PCI slot (None: the first free one).
    pub slot: Option<u8>,
}

/// What `--device` asked for: devices, or help printed by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// The devices to build.
    Devices(Devices),
    /// Help text to print, then exit 0.
    Help(String),
}

/// A refused `--drive` or `--device`, as QEMU words it, with the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option} {spec}: {why}")]
pub struct StorageError {
    option: &'static str,
    spec: String,
    why: String,
}

impl StorageError {
    /// `option spec: why`.
    pub fn new(option: &'static str, spec: &str, why: String) -> Self {
        Self {
            option,
            spec: spec.to_owned(),
            why,
        }
    }
}

/// A drive as `--drive` gives it, before a device takes it.
struct Drive {
    disk: DiskConfig,
    interface: Interface,
}

#[derive(PartialEq, Eq)]
enum Interface {
    Virtio,
    None,
}

fn parse_drive(spec: &str, index: usize) -> Result<Drive, String> {
    let opts = parse_opts(spec, None).map_err(|e| e.to_string())?;
    let mut file = None;
    let mut interface = Interface::Virtio;
    let mut id = None;
    let mut readonly = false;
    let mut cache = CacheMode::Writeback;
    let mut werror = ErrorAction::Enospc;
    let mut rerror = ErrorAction::Report;
    let mut aio = Aio::Auto;
    for (key, value) in &opts.pairs {
        let bad = |expected: &str| format!("Parameter '{key}' expects {expected}");
        match key.as_str() {
            "file" => file = Some(PathBuf::from(value)),
            "if" => {
                interface = match value.as_str() {
                    "virtio" => Interface::Virtio,
                    "none" => Interface::None,
                    "ide" | "scsi" | "floppy" | "pflash" | "mtd" | "sd" | "xen" => {
                        return Err(format!(
                            "if={value} is not supported by this machine (use if=virtio or if=none)"
                        ))
                    }
                    _ => return Err(bad("virtio or none")),
                }
            }
            "format" => match value.as_str() {
                "raw" => {}
                "qcow2" => {
                    return Err("format=qcow2 is not supported; only format=raw (convert with qemu-img convert -O raw)".into())
                }
                _ => return Err(bad("raw")),
            },
            "id" => id = Some(value.clone()),
            "readonly" => {
                readonly = match value.as_str() {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => return Err(bad("'on' or 'off'")),
                }
            }
            "cache" => {
                cache = match value.as_str() {
                    "writeback" => CacheMode::Writeback,
                    "none" => CacheMode::None,
                    _ => return Err(bad("none or writeback")),
                }
            }
            "aio" => {
                aio = match value.as_str() {
                    "threads" => Aio::Threads,
                    "io_uring" => Aio::IoUring,
                    "native" => {
                        return Err("aio=native (Linux AIO) is not supported; use aio=io_uring (or aio=threads)".into())
                    }
                    _ => return Err(bad("threads or io_uring")),
                }
            }
            "werror" => {
                werror = match value.as_str() {
                    "enospc" => ErrorAction::Enospc,
                    "stop" => ErrorAction::Stop,
                    "report" => ErrorAction::Report,
                    "ignore" => ErrorAction::Ignore,
                    _ => return Err(bad("enospc, stop, report or ignore")),
                }
            }
            "rerror" => {
                rerror = match value.as_str() {
                    "stop" => ErrorAction::Stop,
                    "report" => ErrorAction::Report,
                    "ignore" => ErrorAction::Ignore,
                    _ => return Err(bad("stop, report or ignore")),
                }
            }
            "media" if value == "disk" => {}
            _ => return Err(format!("Invalid parameter '{key}'")),
        }
    }
    let path = file.ok_or("Parameter 'file' is missing")?;
    // QEMU's names for drives without an id.
    let id = id.unwrap_or_else(|| match interface {
        Interface::Virtio => format!("virtio{index}"),
        Interface::None => format!("none{index}"),
    });
    Ok(Drive {
        disk: DiskConfig {
            id,
            path,
            readonly,
            cache,
            werror,
            rerror,
            serial: None,
            slot: None,
            aio,
        },
        interface,
    })
}

/// A PCI slot as QEMU writes `addr=`: `05`, `0x5`, `05.0` (function 0).
fn parse_slot(addr: &str) -> Option<u8> {
    let slot = addr.strip_suffix(".0").unwrap_or(addr);
    let slot = slot.strip_prefix("0x").unwrap_or(slot);
    u8::from_str_radix(slot, 16)
        .ok()
        .filter(|s| (1..32).contains(s))
}

/// A device's `addr=` property, if given: its PCI slot.
fn requested_slot(
    request: &vmm_qom::DeviceRequest,
    spec: &str,
) -> Result<Option<u8>, StorageError> {
    let Some(addr) = request.str("addr") else {
        return Ok(None);
    };
    parse_slot(addr).map(Some).ok_or_else(|| {
        StorageError::new(
            "--device",
            spec,
            format!("Parameter 'addr' expects a PCI slot 1-31 (hex), not '{addr}'"),
        )
    })
}

/// Reads every `--drive` and `--device` into disks (or help to print).
pub fn resolve(
    drives: &[String],
    devices: &[String],
    netdevs: &[Netdev],
    registry: &Registry,
) -> Result<Storage, StorageError> {
    let drive_err = |spec: &str, why: String| StorageError {
        option: "--drive",
        spec: spec.to_owned(),
        why,
    };
    let device_err = |spec: &str, why: String| StorageError {
        option: "--device",
        spec: spec.to_owned(),
        why,
    };
    let mut parsed: Vec<Drive> = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, spec) in drives.iter().enumerate() {
        let d = parse_drive(spec, i).map_err(|why| drive_err(spec, why))?;
        if !ids.insert(d.disk.id.clone()) {
            return Err(drive_err(
                spec,
                format!("Duplicate ID '{}' for drive", d.disk.id),
            ));
        }
        parsed.push(d);
    }
    let mut disks: Vec<DiskConfig> = parsed
        .iter()
        .filter(|d| d.interface == Interface::Virtio)
        .map(|d| d.disk.clone())
        .collect();
    let mut taken = BTreeSet::new();
    let mut ib700 = false;
    let mut i6300esb = None;
    let mut nets: Vec<NetConfig> = Vec::new();
    let mut rngs: Vec<RngConfig> = Vec::new();
    let mut vsocks: Vec<VsockSpec> = Vec::new();
    let mut vhost_vsocks: Vec<vmm_pc::vsocks::VhostVsockConfig> = Vec::new();
    for spec in devices {
        let opts = parse_opts(spec, Some("driver")).map_err(|e| device_err(spec, e.to_string()))?;
        if opts.wants_help() {
            return match opts.get("driver") {
                None => Ok(Storage::Help(registry.help())),
                Some(name) => registry
                    .help_type(name)
                    .map(Storage::Help)
                    .map_err(|e| device_err(spec, e.to_string())),
            };
        }
        let request = registry
            .request(&opts)
            .map_err(|e| device_err(spec, e.to_string()))?;
        match request.driver {
            "virtio-blk-pci" => {
                let id = request.str("drive").unwrap_or_default();
                let drive = parsed
                    .iter()
                    .find(|d| d.disk.id == id && d.interface == Interface::None)
                    .ok_or_else(|| {
                        device_err(
                            spec,
                            format!("Property 'virtio-blk-pci.drive' can't find value '{id}'"),
                        )
                    })?;
                if !taken.insert(id.to_owned()) {
                    return Err(device_err(
                        spec,
                        format!("Drive '{id}' is already in use by another device"),
                    ));
                }
                let mut disk = drive.disk.clone();
                disk.serial = request.str("serial").map(str::to_owned);
                if disk.serial.as_ref().is_some_and(|s| s.len() > 20) {
                    return Err(device_err(spec, "serial is longer than 20 bytes".into()));
                }
                if let Some(slot) = requested_slot(&request, spec)? {
                    disk.slot = Some(slot);
                }
                disks.push(disk);
            }
            "virtio-net-pci" => {
                let id = request.str("netdev").unwrap_or_default();
                let netdev = netdevs.iter().find(|n| n.id == id).ok_or_else(|| {
                    device_err(
                        spec,
                        format!("Property 'virtio-net-pci.netdev' can't find value '{id}'"),
                    )
                })?;
                if nets.iter().any(|n| n.id == id) {
                    return Err(device_err(
                        spec,
                        format!(
                            "Property 'virtio-net-pci.netdev' can't take value '{id}', it's in use"
                        ),
                    ));
                }
                let mac = match request.str("mac") {
                    Some(m) => m.parse::<MacAddr>().map_err(|e| {
                        device_err(spec, format!("Property 'virtio-net-pci.mac': {e}"))
                    })?,
                    None => MacAddr::default_for(nets.len()),
                };
                let slot = requested_slot(&request, spec)?;
                nets.push(NetConfig {
                    id: id.to_owned(),
                    ifname: netdev.ifname.clone(),
                    mac,
                    slot,
                    vhost: netdev.vhost,
                });
            }
            "virtio-rng-pci" => {
                let limit = RateLimit::new(
                    request.u64("max-bytes").unwrap_or(u64::MAX),
                    request.u64("period").unwrap_or(0),
                )
                .map_err(|e| device_err(spec, e.to_string()))?;
                let slot = requested_slot(&request, spec)?;
                rngs.push(RngConfig { limit, slot });
            }
            "virtio-vsock-pci" => {
                let v = vsock(&request, &vsocks).map_err(|why| device_err(spec, why))?;
                if vhost_vsocks.iter().any(|h| h.cid == v.cid) {
                    return Err(device_err(spec, cid_taken(v.cid)));
                }
                vsocks.push(v);
            }
            "vhost-vsock-pci" => {
                let cid = request.u64("guest-cid").unwrap_or_default();
                vmm_pc::vsocks::check_cid(cid).map_err(|e| {
                    device_err(spec, format!("Property 'vhost-vsock-pci.guest-cid': {e}"))
                })?;
                if vsocks.iter().any(|v| v.cid == cid) || vhost_vsocks.iter().any(|v| v.cid == cid)
                {
                    return Err(device_err(spec, cid_taken(cid)));
                }
                let slot = requested_slot(&request, spec)?;
                vhost_vsocks.push(vmm_pc::vsocks::VhostVsockConfig { cid, slot });
            }
            "ib700" => {
                if ib700 {
                    return Err(device_err(spec, "there can be only one ib700".into()));
                }
                ib700 = true;
            }
            "i6300esb" => {
                if i6300esb.is_some() {
                    return Err(device_err(spec, "there can be only one i6300esb".into()));
                }
                let slot = requested_slot(&request, spec)?;
                i6300esb = Some(slot);
            }
            other => {
                return Err(device_err(
                    spec,
                    format!("'{other}' cannot be added with --device"),
                ));
            }
        }
    }
    let mut slots = BTreeSet::new();
    let wanted = disks
        .iter()
        .filter_map(|d| d.slot)
        .chain(nets.iter().filter_map(|n| n.slot))
        .chain(rngs.iter().filter_map(|r| r.slot))
        .chain(vsocks.iter().filter_map(|v| v.slot))
        .chain(vhost_vsocks.iter().filter_map(|v| v.slot))
        .chain(i6300esb.flatten());
    for s in wanted {
        if !slots.insert(s) {
            return Err(StorageError {
                option: "--device",
                spec: format!("addr={s:02x}"),
                why: format!("PCI slot {s:02x} is used twice"),
            });
        }
    }
    for n in netdevs {
        if !nets.iter().any(|c| c.id == n.id) {
            log::warn!(
                "netdev {} has no device (--device virtio-net-pci,netdev={})",
                n.id,
                n.id
            );
        }
    }
    Ok(Storage::Devices(Devices {
        disks,
        ib700,
        i6300esb,
        nets,
        rngs,
        vsocks,
        vhost_vsocks,
    }))
}

fn cid_taken(cid: u64) -> String {
    format!("guest-cid={cid} is used by another virtio-vsock-pci or vhost-vsock-pci")
}

/// A `virtio-vsock-pci` request, checked against the devices before it.
fn vsock(request: &vmm_qom::DeviceRequest, before: &[VsockSpec]) -> Result<VsockSpec, String> {
    use vmm_pc::vsocks::{check_cid, MAX_UDS_PATH};
    let cid = request.u64("guest-cid").unwrap_or_default();
    check_cid(cid).map_err(|e| format!("Property 'virtio-vsock-pci.guest-cid': {e}"))?;
    if before.iter().any(|v| v.cid == cid) {
        return Err(cid_taken(cid));
    }
    let uds = PathBuf::from(request.str("uds").unwrap_or_default());
    let len = uds.as_os_str().len();
    if len == 0 || len > MAX_UDS_PATH {
        return Err(format!(
            "Property 'virtio-vsock-pci.uds': a socket path is 1 to {MAX_UDS_PATH} bytes, not {len}"
        ));
    }
    if std::fs::symlink_metadata(&uds).is_ok() {
        return Err(format!(
            "Property 'virtio-vsock-pci.uds': '{}' already exists",
            uds.display()
        ));
    }
    if before.iter().any(|v| v.uds == uds) {
        return Err(format!(
            "Property 'virtio-vsock-pci.uds': '{}' is used by another virtio-vsock-pci",
            uds.display()
        ));
    }
    let slot = match request.str("addr") {
        Some(addr) => Some(parse_slot(addr).ok_or_else(|| {
            format!("Parameter 'addr' expects a PCI slot 1-31 (hex), not '{addr}'")
        })?),
        None => None,
    };
    Ok(VsockSpec { cid, uds, slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn run(drives: &[&str], devices: &[&str]) -> Result<Storage, StorageError> {
        resolve(
            &strings(drives),
            &strings(devices),
            &[],
            &vmm_pc::device_types::registry(),
        )
    }

    fn disks(drives: &[&str], devices: &[&str]) -> Vec<DiskConfig> {
        match run(drives, devices).unwrap() {
            Storage::Devices(d) => d.disks,
            Storage::Help(h) => panic!("{h}"),
        }
    }

    fn err(drives: &[&str], devices: &[&str]) -> String {
        run(drives, devices).unwrap_err().to_string()
    }

    #[test]
    fn the_shorthand_and_the_long_form() {
        let d = disks(&["file=/a.img,if=virtio,format=raw"], &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].id.as_str(), d[0].path.to_str()),
            ("virtio0", Some("/a.img"))
        );
        assert_eq!(
            (d[0].cache, d[0].werror, d[0].rerror, d[0].aio),
            (
                CacheMode::Writeback,
                ErrorAction::Enospc,
                ErrorAction::Report,
                Aio::Auto
            )
        );
        let d = disks(
            &[
                "file=/b,,c.img,if=none,id=d0,readonly=on,cache=none,werror=stop,rerror=ignore,aio=io_uring",
                "file=/x.img",
            ],
            &["virtio-blk-pci,drive=d0,serial=SN1,addr=05.0"],
        );
        assert_eq!(d.len(), 2, "the if=virtio one first, then the device's");
        assert_eq!(d[1].path.to_str(), Some("/b,c.img"));
        assert!(d[1].readonly);
        assert_eq!(
            (d[1].cache, d[1].werror, d[1].rerror),
            (CacheMode::None, ErrorAction::Stop, ErrorAction::Ignore)
        );
        assert_eq!((d[1].serial.as_deref(), d[1].slot), (Some("SN1"), Some(5)));
        assert_eq!(d[1].aio, Aio::IoUring);
        assert_eq!(disks(&["file=/a,aio=threads"], &[])[0].aio, Aio::Threads);
        // A drive with if=none and no device is not a disk.
        assert!(disks(&["file=/a.img,if=none,id=x"], &[]).is_empty());
    }

    #[test]
    fn bad_drives_and_devices_are_named() {
        assert_eq!(
            err(&["if=virtio"], &[]),
            "--drive if=virtio: Parameter 'file' is missing"
        );
        assert!(err(&["file=/a,cache=maybe"], &[])
            .ends_with("Parameter 'cache' expects none or writeback"));
        assert!(err(&["file=/a,format=qcow2"], &[]).contains("only format=raw"));
        assert!(err(&["file=/a,aio=native"], &[]).ends_with(
            "aio=native (Linux AIO) is not supported; use aio=io_uring (or aio=threads)"
        ));
        assert!(err(&["file=/a,aio=uring"], &[])
            .ends_with("Parameter 'aio' expects threads or io_uring"));
        assert!(err(&["file=/a,if=ide"], &[]).contains("not supported by this machine"));
        assert!(err(&["file=/a,bogus=1"], &[]).ends_with("Invalid parameter 'bogus'"));
        assert!(err(&["file=/a,id=x", "file=/b,id=x"], &[]).ends_with("Duplicate ID 'x' for drive"));
        assert_eq!(
            err(&[], &["virtio-blk-pci,drive=nope"]),
            "--device virtio-blk-pci,drive=nope: Property 'virtio-blk-pci.drive' can't find value 'nope'"
        );
        assert!(err(
            &["file=/a,if=none,id=d"],
            &["virtio-blk-pci,drive=d", "virtio-blk-pci,drive=d"]
        )
        .contains("already in use"));
        assert!(err(&[], &["virtio-blk-pcx,drive=d"])
            .ends_with("'virtio-blk-pcx' is not a valid device model name"));
        assert!(
            err(&["file=/a,if=none,id=d"], &["virtio-blk-pci,drive=d,foo=1"])
                .ends_with("Property 'virtio-blk-pci.foo' not found")
        );
        assert!(err(
            &["file=/a,if=none,id=d"],
            &["virtio-blk-pci,drive=d,addr=40"]
        )
        .contains("expects a PCI slot"));
        assert!(err(
            &["file=/a,if=none,id=d"],
            &["virtio-blk-pci,drive=d,serial=123456789012345678901"]
        )
        .contains("longer than 20"));
        assert!(err(
            &["file=/a,if=none,id=d", "file=/b,if=none,id=e"],
            &[
                "virtio-blk-pci,drive=d,addr=3",
                "virtio-blk-pci,drive=e,addr=0x3"
            ]
        )
        .contains("used twice"));
        assert!(err(&[], &["isa-serial"]).contains("not a valid device model name"));
    }

    #[test]
    fn one_i6300esb_at_most_in_a_free_slot() {
        match run(&[], &["i6300esb"]).unwrap() {
            Storage::Devices(d) => assert_eq!(d.i6300esb, Some(None)),
            other => panic!("{other:?}"),
        }
        match run(&[], &["i6300esb,addr=0x1f", "ib700"]).unwrap() {
            Storage::Devices(d) => assert_eq!((d.i6300esb, d.ib700), (Some(Some(31)), true)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(&[], &["i6300esb", "i6300esb"]),
            "--device i6300esb: there can be only one i6300esb"
        );
        assert!(err(&[], &["i6300esb,addr=40"]).contains("expects a PCI slot"));
        assert!(err(
            &["file=/dev/null,if=none,id=d0"],
            &["virtio-blk-pci,drive=d0,addr=5", "i6300esb,addr=5"]
        )
        .contains("is used twice"));
    }

    #[test]
    fn one_ib700_at_most() {
        match run(&[], &["ib700"]).unwrap() {
            Storage::Devices(d) => assert!(d.ib700 && d.disks.is_empty()),
            Storage::Help(h) => panic!("{h}"),
        }
        assert_eq!(
            err(&[], &["ib700", "ib700"]),
            "--device ib700: there can be only one ib700"
        );
        assert!(err(&[], &["ib700,timeout=3"]).contains("Property 'ib700.timeout' not found"));
    }

    #[test]
    fn help_is_asked_for_in_qemus_ways() {
        let Storage::Help(h) = run(&[], &["help"]).unwrap() else {
            panic!()
        };
        assert!(h.contains("name \"virtio-blk-pci\", bus PCI"), "{h}");
        let Storage::Help(h) = run(&[], &["virtio-blk-pci,help"]).unwrap() else {
            panic!()
        };
        assert!(h.starts_with("virtio-blk-pci options:"), "{h}");
        assert!(run(&[], &["nope,help"]).is_err());
        assert_eq!(parse_slot("1f"), Some(31));
        assert_eq!(parse_slot("0"), None);
    }

    #[test]
    fn entropy_devices_take_qemus_rate_limit() {
        let Storage::Devices(d) = run(
            &[],
            &[
                "virtio-rng-pci",
                "virtio-rng-pci,max-bytes=1024,period=1000,addr=0x9",
            ],
        )
        .unwrap() else {
            panic!("help?")
        };
        assert_eq!(d.rngs.len(), 2);
        assert_eq!(d.rngs[0].limit, RateLimit::default());
        assert_eq!(d.rngs[0].slot, None);
        assert_eq!(d.rngs[1].limit, RateLimit::new(1024, 1000).unwrap());
        assert_eq!(d.rngs[1].slot, Some(9));
        assert!(err(&[], &["virtio-rng-pci,period=0"])
            .contains("'period' parameter expects a positive integer"));
        assert!(err(&[], &["virtio-rng-pci,max-bytes=0"])
            .contains("'max-bytes' parameter must be non-zero"));
        assert!(err(&[], &["virtio-rng-pci,rng=rng0"])
            .contains("Property 'virtio-rng-pci.rng' not found"));
        assert!(
            err(&[], &["virtio-rng-pci,addr=3", "ib700", "i6300esb,addr=3"])
                .contains("is used twice")
        );
    }

    #[test]
    fn socket_devices_are_checked_before_anything_is_made() {
        let dir = std::env::temp_dir().join(format!("vmm-storage-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.sock");
        let b = dir.join("b.sock");
        let spec = |cid: &str, path: &std::path::Path| {
            format!("virtio-vsock-pci,guest-cid={cid},uds={}", path.display())
        };
        let Storage::Devices(d) =
            run(&[], &[&spec("3", &a), &(spec("0x10", &b) + ",addr=6")]).unwrap()
        else {
            panic!("help?")
        };
        assert_eq!(
            d.vsocks,
            [
                VsockSpec {
                    cid: 3,
                    uds: a.clone(),
                    slot: None
                },
                VsockSpec {
                    cid: 16,
                    uds: b.clone(),
                    slot: Some(6)
                },
            ]
        );
        for (cid, want) in [
            ("2", "guest CID 2 is out of range (3 to 4294967294)"),
            ("0", "guest CID 0 is out of range"),
            ("4294967296", "guest CID 4294967296 is out of range"),
        ] {
            let e = err(&[], &[&spec(cid, &a)]);
            assert!(e.contains(want), "{e}");
        }
        assert!(err(&[], &[&spec("3", &a), &spec("3", &b)])
            .ends_with("guest-cid=3 is used by another virtio-vsock-pci or vhost-vsock-pci"));
        assert!(err(&[], &["vhost-vsock-pci,guest-cid=5", &spec("5", &a)])
            .ends_with("guest-cid=5 is used by another virtio-vsock-pci or vhost-vsock-pci"));
        assert!(err(&[], &[&spec("5", &a), "vhost-vsock-pci,guest-cid=5"])
            .ends_with("guest-cid=5 is used by another virtio-vsock-pci or vhost-vsock-pci"));
        assert!(err(&[], &["vhost-vsock-pci,guest-cid=1"]).contains("guest CID 1 is out of range"));
        let Storage::Devices(d) = run(&[], &["vhost-vsock-pci,guest-cid=9,addr=4"]).unwrap() else {
            panic!("help?")
        };
        assert_eq!(
            d.vhost_vsocks,
            [vmm_pc::vsocks::VhostVsockConfig {
                cid: 9,
                slot: Some(4)
            }]
        );
        assert!(err(&[], &[&spec("3", &a), &spec("4", &a)])
            .contains("is used by another virtio-vsock-pci"));
        let long = dir.join("x".repeat(120));
        assert!(err(&[], &[&spec("3", &long)]).contains("a socket path is 1 to 107 bytes"));
        std::fs::write(&a, b"").unwrap();
        assert!(err(&[], &[&spec("3", &a)]).contains("already exists"));
        assert!(err(&[], &["virtio-vsock-pci,guest-cid=3"]).contains("uds"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn network_cards_get_their_netdev_and_a_mac_each() {
        let netdevs = crate::netdev::parse_all(&strings(&[
            "tap,id=n0,ifname=tap0",
            "tap,id=n1,ifname=tap1,vhost=on",
            "tap,id=n2,ifname=tap2,vhost=off",
        ]))
        .unwrap();
        let got = resolve(
            &[],
            &strings(&[
                "virtio-net-pci,netdev=n1",
                "virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc,addr=07",
                "virtio-net-pci,netdev=n2",
            ]),
            &netdevs,
            &vmm_pc::device_types::registry(),
        )
        .unwrap();
        let Storage::Devices(d) = got else {
            panic!("help?")
        };
        let cards: Vec<_> = d
            .nets
            .iter()
            .map(|n| {
                let mac = n.mac.to_string();
                (n.id.as_str(), n.ifname.as_str(), mac, n.slot, n.vhost)
            })
            .collect();
        assert_eq!(
            cards,
            [
                ("n1", "tap1", "52:54:00:12:34:56".to_owned(), None, true),
                ("n0", "tap0", "52:54:00:aa:bb:cc".to_owned(), Some(7), false),
                ("n2", "tap2", "52:54:00:12:34:58".to_owned(), None, false),
            ]
        );
        // A slot a disk has too.
        let e = resolve(
            &strings(&["file=a,if=none,id=d"]),
            &strings(&[
                "virtio-blk-pci,drive=d,addr=07",
                "virtio-net-pci,netdev=n0,addr=07",
            ]),
            &netdevs,
            &vmm_pc::device_types::registry(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("PCI slot 07 is used twice"), "{e}");
    }
}
