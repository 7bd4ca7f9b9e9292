//! Command-line flags.

use std::path::PathBuf;

use clap::Parser;

use crate::serial_file::{self, SerialFile};

const EXAMPLES: &str = "\
Examples:
  vmm --kernel bzImage --initrd initramfs.cpio --memory 512M --cpus 2
  vmm --kernel vmlinux --append 'console=ttyS0 reboot=k' --serial file:/tmp/console.log,maxsize=64M
  vmm --kernel bzImage --pit kvm        # KVM's in-kernel PIT instead of ours
  vmm --kernel bzImage --irqchip kernel # KVM's 8259s and IO-APIC instead of ours
  vmm --kernel bzImage --qmp /tmp/vmm.qmp --paused
      then: qmp-shell /tmp/vmm.qmp (from QEMU's python qemu.qmp), cont, stop, quit

Console: Ctrl-A x quits, Ctrl-A h prints help, Ctrl-A c switches between the guest and
the monitor (info status, info cpus, info registers -a, info lapic, stop, cont, system_reset,
system_powerdown, quit),
Ctrl-A Ctrl-A sends Ctrl-A.
Guest reboot or poweroff ends the VMM with status 0.";

/// The default kernel command line: console on COM1, reboot through the
/// i8042 (which ends the VMM), no probing of i8042 ports we do not have.
pub const DEFAULT_APPEND: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp";

/// A KVM virtual machine monitor: QEMU's PC machine in small Rust crates.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, after_help = EXAMPLES)]
pub struct Args {
    /// Linux kernel: a bzImage or an ELF vmlinux (PVH entry when present).
    #[arg(long, value_name = "PATH", required_unless_present = "device")]
    pub kernel: Option<PathBuf>,

    /// A drive, QEMU's -drive: file=PATH[,if=virtio|none][,format=raw]
    /// [,id=ID][,readonly=on][,cache=none|writeback][,aio=threads|io_uring]
    /// [,werror=enospc|stop|report|ignore][,rerror=stop|report|ignore].
    /// if=virtio (the default) adds a virtio-blk-pci for it; if=none waits
    /// for --device virtio-blk-pci,drive=ID. Repeatable.
    #[arg(long, value_name = "OPTS")]
    pub drive: Vec<String>,

    /// A network backend, QEMU's -netdev: tap,id=ID,ifname=NAME[,vhost=on|off]
    /// [,script=no][,downscript=no]. The tap is made if it does not exist
    /// (its address is yours to set); --device virtio-net-pci,netdev=ID
    /// puts a card on it. Repeatable.
    #[arg(long, value_name = "OPTS")]
    pub netdev: Vec<String>,

    /// A device, QEMU's -device: NAME[,prop=value...]
    /// (virtio-blk-pci,drive=ID[,serial=S][,addr=SLOT];
    /// virtio-net-pci,netdev=ID[,mac=MAC][,addr=SLOT]); `help` lists the
    /// types, NAME,help a type's properties. Repeatable.
    #[arg(long, value_name = "OPTS")]
    pub device: Vec<String>,

    /// Initial ramdisk (initramfs) for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_APPEND)]
    pub append: String,

    /// Guest RAM: a number of bytes with an optional K, M, G or T suffix.
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Where the serial console goes: stdio, none, or
    /// file:PATH[,maxsize=SIZE][,follow]: appended to PATH, which grows to
    /// at most SIZE bytes (default 1G; 0: no limit; past it guest output is
    /// dropped with a warning); a symbolic link as PATH is refused unless
    /// `follow` is given. A comma in PATH is written ",,".
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: Serial,

    /// Which i8254 PIT: `userspace` (ours, stops while the VM is paused) or
    /// `kvm` (KVM's in-kernel PIT).
    #[arg(long, value_name = "WHICH", default_value = "userspace")]
    pub pit: PitChoice,

    /// Where the interrupt controllers are, QEMU's -machine
    /// kernel-irqchip=on|split: `split` (only the local APICs in KVM; our
    /// IO-APIC and 8259 pair) or `kernel` (KVM's 8259 pair, IO-APIC and local
    /// APICs). Default: `split`, or `kernel` with `--pit kvm`, which needs it.
    #[arg(long, value_name = "WHERE")]
    pub irqchip: Option<IrqChipChoice>,

    /// Serve QMP (QEMU's JSON control protocol) on a Unix socket at PATH,
    /// created mode 0600 and removed on exit; or, if PATH is a character
    /// device (a serial port), on that device, in raw mode.
    #[arg(long, value_name = "PATH")]
    pub qmp: Option<PathBuf>,

    /// Serve gdb's remote protocol on ADDR, QEMU's -gdb: `tcp:HOST:PORT` (an
    /// empty HOST listens on every interface, as `tcp::1234`) or
    /// `unix:PATH`. A client attaching stops the guest (`paused`); a
    /// breakpoint or a single step stops it in `debug`; detaching runs it.
    #[arg(long, value_name = "ADDR", value_parser = parse_gdb)]
    pub gdb: Option<vmm_gdb::GdbAddress>,

    /// Start with the vCPUs stopped, in `prelaunch`, until QMP `cont`
    /// (QEMU's -S).
    #[arg(long)]
    pub paused: bool,

    /// What a guest reboot (i8042 reset, triple fault) does: `exit` ends the
    /// VMM with status 0 (QEMU's -no-reboot), `reset` resets the machine in
    /// place and boots the guest again.
    #[arg(long, value_name = "ACTION", default_value = "exit")]
    pub reboot: RebootChoice,

    /// Start by loading the machine's state from URI, QEMU's -incoming:
    /// `file:PATH` (a file written by QMP `migrate` with `file:PATH`), or
    /// `defer` to wait in `inmigrate` for QMP `migrate-incoming`.
    #[arg(long, value_name = "URI")]
    pub incoming: Option<String>,

    /// What events do, QEMU's -action: `watchdog=reset|shutdown|poweroff|
    /// pause|debug|none|inject-nmi` (default reset), `reboot=reset|shutdown`
    /// (as --reboot reset|exit). Repeatable; QMP `set-action` changes them
    /// at run time.
    #[arg(long, value_name = "KEY=VALUE")]
    pub action: Vec<String>,

    /// Seccomp filters, one allow-list per thread kind: `on` ends the VMM
    /// on a system call off its list (naming it on stderr), `log` lets it
    /// through and has the kernel log it, `off` installs none.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: crate::seccomp::Mode,

    /// Log level for the VMM's own messages (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
}

impl Args {
    /// What clap cannot check: flags that make no sense together.
    pub fn check(&self) -> Result<(), String> {
        if self.paused && self.qmp.is_none() && self.serial != Serial::Stdio {
            return Err(
                "--paused needs --qmp or --serial stdio (the Ctrl-A c monitor): \
                        nothing else could start the guest"
                    .into(),
            );
        }
        if self.pit == PitChoice::Kvm && self.irqchip == Some(IrqChipChoice::Split) {
            return Err(
                "--pit kvm needs --irqchip kernel: KVM's PIT interrupts through KVM's irqchip"
                    .into(),
            );
        }
        Ok(())
    }

    /// The irqchip in use: as given, else split, or the kernel's for
    /// KVM's PIT (which interrupts only through it).
    pub fn irqchip(&self) -> IrqChipChoice {
        match (self.irqchip, self.pit) {
            (Some(choice), _) => choice,
            (None, PitChoice::Kvm) => IrqChipChoice::Kernel,
            (None, PitChoice::Userspace) => IrqChipChoice::Split,
        }
    }
}

/// The `--irqchip` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IrqChipChoice {
    /// All of the irqchip in KVM.
    Kernel,
    /// Only the local APICs in KVM.
    Split,
}

/// The `--pit` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PitChoice {
    /// Ours, on the Virtual clock.
    Userspace,
    /// KVM's in-kernel PIT.
    Kvm,
}

/// The `--reboot` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RebootChoice {
    /// End the VMM with status 0.
    Exit,
    /// Reset in place and boot again.
    Reset,
}

/// The `--serial` choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// The terminal: output to stdout, stdin to the guest.
    Stdio,
    /// Output appended to a file, capped; no input.
    File(SerialFile),
    /// Output discarded; no input.
    None,
}

/// Parses "512M", "2G", "1048576", "64k".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let not_a_size = || format!("'{s}' is not a size (e.g. 512M, 2G)");
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(not_a_size()),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_serial(s: &str) -> Result<Serial, String> {
    match s {
        "stdio" => Ok(Serial::Stdio),
        "none" => Ok(Serial::None),
        _ => match s.strip_prefix("file:") {
            Some(rest) => parse_serial_file(rest).map(Serial::File),
            None => Err(format!(
                "'{s}': expected stdio, file:PATH[,maxsize=SIZE][,follow] or none"
            )),
        },
    }
}

/// Parses `PATH[,maxsize=SIZE][,follow]` (QEMU's option spelling: ",,"
/// is a comma in PATH; `follow=on|off` and `nofollow=on|off` also work).
fn parse_serial_file(s: &str) -> Result<SerialFile, String> {
    let mut parts = split_options(s).into_iter();
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("file: needs a PATH".into());
    }
    let mut file = SerialFile {
        path: PathBuf::from(path),
        max_size: Some(serial_file::DEFAULT_MAX_SIZE),
        follow: false,
    };
    for option in parts {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option.as_str(), None),
        };
        let on_off = |v: Option<&str>| match v {
            None | Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(other) => Err(format!("'{key}={other}': expected on or off")),
        };
        match key {
            "maxsize" => {
                let size = parse_size(value.unwrap_or_default())?;
                file.max_size = (size > 0).then_some(size);
            }
            "follow" => file.follow = on_off(value)?,
            "nofollow" => file.follow = !on_off(value)?,
            _ => {
                return Err(format!(
                    "'{option}': unknown file: option (maxsize=SIZE, follow)"
                ))
            }
        }
    }
    Ok(file)
}

/// Splits at single commas; ",," stands for a comma.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                parts.last_mut().unwrap_or(&mut String::new()).push(',');
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().unwrap_or(&mut String::new()).push(c),
        }
    }
    parts
}

/// `--gdb ADDR`.
fn parse_gdb(s: &str) -> Result<vmm_gdb::GdbAddress, String> {
    s.parse()
        .map_err(|e: vmm_gdb::address::AddressError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["vmm", "--kernel", "k"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn the_irqchip_is_split_unless_kvms_pit_or_the_user_says_otherwise() {
        assert_eq!(parse(&[]).irqchip(), IrqChipChoice::Split);
        assert_eq!(parse(&["--pit", "kvm"]).irqchip(), IrqChipChoice::Kernel);
        let kernel = parse(&["--irqchip", "kernel"]);
        assert_eq!(kernel.irqchip(), IrqChipChoice::Kernel);
        assert!(kernel.check().is_ok());
        let both = parse(&["--pit", "kvm", "--irqchip", "split"]);
        assert!(both
            .check()
            .unwrap_err()
            .contains("--pit kvm needs --irqchip kernel"));
        assert!(Args::try_parse_from(["vmm", "--kernel", "k", "--irqchip", "bogus"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    fn file(path: &str, max_size: Option<u64>, follow: bool) -> Result<Serial, String> {
        Ok(Serial::File(SerialFile {
            path: PathBuf::from(path),
            max_size,
            follow,
        }))
    }

    #[test]
    fn serial_choices() {
        const GIB: u64 = 1 << 30;
        assert_eq!(parse_serial("stdio"), Ok(Serial::Stdio));
        assert_eq!(parse_serial("none"), Ok(Serial::None));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            file("/tmp/x", Some(GIB), false)
        );
        assert_eq!(
            parse_serial("file:/tmp/x,maxsize=64M"),
            file("/tmp/x", Some(64 << 20), false)
        );
        assert_eq!(
            parse_serial("file:/tmp/x,follow,maxsize=0"),
            file("/tmp/x", None, true)
        );
        assert_eq!(
            parse_serial("file:/tmp/x,nofollow=off"),
            file("/tmp/x", Some(GIB), true)
        );
        assert_eq!(
            parse_serial("file:/tmp/a,,b,follow=off"),
            file("/tmp/a,b", Some(GIB), false)
        );
        for bad in [
            "file:",
            "file:,maxsize=1M",
            "file:/x,maxsize=lots",
            "file:/x,maxsize",
            "file:/x,follow=maybe",
            "file:/x,append",
            "tcp:1",
        ] {
            assert!(parse_serial(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "vmm", "--kernel", "k", "--memory", "1G", "--cpus", "2", "--serial", "none",
        ])
        .unwrap();
        assert_eq!(a.memory, 1 << 30);
        assert_eq!(a.cpus, 2);
        assert_eq!(a.serial, Serial::None);
        assert!(a.append.contains("console=ttyS0"));
        assert_eq!(a.seccomp, crate::seccomp::Mode::On, "on by default");
        let a = Args::try_parse_from(["vmm", "--kernel", "k", "--seccomp", "log"]).unwrap();
        assert_eq!(a.seccomp, crate::seccomp::Mode::Log);
        assert!(Args::try_parse_from(["vmm", "--kernel", "k", "--seccomp", "maybe"]).is_err());
        assert!(
            Args::try_parse_from(["vmm"]).is_err(),
            "--kernel is required"
        );
    }

    #[test]
    fn paused_needs_a_way_to_continue() {
        let check = |extra: &[&str]| {
            let mut argv = vec!["vmm", "--kernel", "k", "--paused"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap().check()
        };
        assert!(check(&[]).is_ok(), "stdio: the monitor");
        assert!(check(&["--serial", "none", "--qmp", "/tmp/q"]).is_ok());
        let err = check(&["--serial", "none"]).unwrap_err();
        assert!(err.starts_with("--paused needs --qmp"), "{err}");
    }
}
