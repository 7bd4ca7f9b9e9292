//! Command-line flags.

use std::path::PathBuf;

use clap::Parser;

const EXAMPLES: &str = "\
Examples:
  vmm --kernel bzImage --initrd initramfs.cpio --memory 512M --cpus 2
  vmm --kernel vmlinux --append 'console=ttyS0 reboot=k' --serial file:/tmp/console.log
  vmm --kernel bzImage --pit kvm        # KVM's in-kernel PIT instead of ours
  vmm --kernel bzImage --qmp /tmp/vmm.qmp --paused
      then: qmp-shell /tmp/vmm.qmp (from QEMU's python qemu.qmp), cont, stop, quit

Console: Ctrl-A x quits, Ctrl-A h prints help, Ctrl-A Ctrl-A sends Ctrl-A.
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
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

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

    /// Where the serial console goes: stdio, file:PATH or none.
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: Serial,

    /// Which i8254 PIT: `userspace` (ours, stops while the VM is paused) or
    /// `kvm` (KVM's in-kernel PIT).
    #[arg(long, value_name = "WHICH", default_value = "userspace")]
    pub pit: PitChoice,

    /// Serve QMP (QEMU's JSON control protocol) on a Unix socket at PATH,
    /// created mode 0600 and removed on exit; or, if PATH is a character
    /// device (a serial port), on that device, in raw mode.
    #[arg(long, value_name = "PATH")]
    pub qmp: Option<PathBuf>,

    /// Start with the vCPUs stopped, in `prelaunch`, until QMP `cont`
    /// (QEMU's -S).
    #[arg(long)]
    pub paused: bool,

    /// What a guest reboot (i8042 reset, triple fault) does: `exit` ends the
    /// VMM with status 0 (QEMU's -no-reboot), `reset` resets the machine in
    /// place and boots the guest again.
    #[arg(long, value_name = "ACTION", default_value = "exit")]
    pub reboot: RebootChoice,

    /// Seccomp filters, one allow-list per thread kind: `on` ends the VMM
    /// on a system call off its list (naming it on stderr), `log` lets it
    /// through and has the kernel log it, `off` installs none.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: crate::seccomp::Mode,

    /// Log level for the VMM's own messages (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
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
    /// Output appended to a file; no input.
    File(PathBuf),
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
            Some(p) if !p.is_empty() => Ok(Serial::File(PathBuf::from(p))),
            _ => Err(format!("'{s}': expected stdio, file:PATH or none")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn serial_choices() {
        assert_eq!(parse_serial("stdio"), Ok(Serial::Stdio));
        assert_eq!(parse_serial("none"), Ok(Serial::None));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(Serial::File(PathBuf::from("/tmp/x")))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1").is_err());
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
}
