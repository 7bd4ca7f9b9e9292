//! Where the stub listens: `tcp:HOST:PORT`, `unix:PATH` or a terminal
//! device `/dev/...` (QEMU's `-gdb tcp::1234`, `-gdb unix:/tmp/gdb.sock`,
//! `-gdb /dev/ttyS0`: QEMU's character device syntax takes a path under
//! `/dev/` for a host terminal). An empty HOST listens on every
//! interface, as QEMU's `tcp::1234` does; `[::1]` is an IPv6 host.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A `--gdb` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddress {
    /// A TCP port on `host` (empty: every interface).
    Tcp {
        /// The host name or address, without IPv6 brackets.
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix socket at this path (created; it must not exist).
    Unix(PathBuf),
    /// A terminal (a serial port, a pseudo-terminal) at this path under
    /// `/dev/`, served in raw mode.
    Device(PathBuf),
}

/// A `--gdb` address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(String);

impl FromStr for GdbAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| AddressError(format!("bad gdb address '{s}': {why}"));
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("unix: needs a path"));
            }
            if path.contains(',') {
                return Err(bad("options after the path are not supported"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if s.starts_with("/dev/") {
            if s.len() == "/dev/".len() {
                return Err(bad("a device path needs a name after /dev/"));
            }
            if s.contains(',') {
                return Err(bad("options after the device are not supported"));
            }
            return Ok(Self::Device(PathBuf::from(s)));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(bad("expected tcp:HOST:PORT, unix:PATH or a /dev/ terminal"));
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(bad("expected tcp:HOST:PORT (HOST may be empty)"));
        };
        if port.contains(',') {
            return Err(bad("options after the port are not supported"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .ok_or_else(|| bad("an IPv6 host needs its closing ']'"))?,
            None if host.contains(':') => return Err(bad("put an IPv6 host in brackets")),
            None => host,
        };
        if host.contains(['[', ']', '/', ' ']) {
            return Err(bad("the host is not a host name or address"));
        }
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for GdbAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Device(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> GdbAddress {
        GdbAddress::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn good_addresses() {
        assert_eq!("tcp::1234".parse(), Ok(tcp("", 1234)));
        assert_eq!("tcp:localhost:1234".parse(), Ok(tcp("localhost", 1234)));
        assert_eq!("tcp:127.0.0.1:0".parse(), Ok(tcp("127.0.0.1", 0)));
        assert_eq!("tcp:[::1]:1234".parse(), Ok(tcp("::1", 1234)));
        assert_eq!(
            "unix:/tmp/gdb.sock".parse(),
            Ok(GdbAddress::Unix("/tmp/gdb.sock".into()))
        );
        assert_eq!(
            "/dev/ttyS1".parse(),
            Ok(GdbAddress::Device("/dev/ttyS1".into()))
        );
        for s in ["tcp::1234", "tcp:[::1]:1", "unix:/x", "/dev/pts/3"] {
            assert_eq!(s.parse::<GdbAddress>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_addresses() {
        for s in [
            "",
            "1234",
            "tcp",
            "tcp:",
            "tcp:1234",
            "tcp::",
            "tcp::65536",
            "tcp::-1",
            "tcp::12x",
            "tcp:host:1234,server=on",
            "tcp:::1:1234",
            "tcp:[::1:1234",
            "tcp:a/b:1",
            "unix:",
            "unix:/tmp/s,server=on",
            "udp::1234",
            "TCP::1234",
            "/dev/",
            "/dev/ttyS1,baud=9600",
            "/tmp/gdb.sock",
            "ttyS1",
        ] {
            let e = s.parse::<GdbAddress>().unwrap_err();
            assert!(e.0.starts_with("bad gdb address"), "{s}: {e}");
        }
    }
}
