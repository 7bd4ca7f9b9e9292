//! `--netdev`, in QEMU's spelling: `tap,id=ID,ifname=NAME[,vhost=on|off]
//! [,script=no][,downscript=no]`. The tap is opened (made if it does not
//! exist) when the machine is built, as QEMU does with `script=no`: its
//! address and state are the user's to set. A `--device virtio-net-pci,
//! netdev=ID` puts a card on it. With `vhost=on` the host kernel's
//! vhost-net (`/dev/vhost-net`) serves the card's rings.

use vmm_qom::parse_opts;

use crate::storage::StorageError;

/// A netdev as `--netdev` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netdev {
    /// Its id.
    pub id: String,
    /// The tap interface.
    pub ifname: String,
    /// `vhost=on`.
    pub vhost: bool,
}

fn parse(spec: &str) -> Result<Netdev, String> {
    let opts = parse_opts(spec, Some("type")).map_err(|e| e.to_string())?;
    let mut id = None;
    let mut ifname = None;
    let mut vhost = false;
    for (key, value) in &opts.pairs {
        let bad = |expected: &str| format!("Parameter '{key}' expects {expected}");
        match key.as_str() {
            "type" => match value.as_str() {
                "tap" => {}
                other => return Err(format!("netdev type '{other}' is not supported (only tap)")),
            },
            "id" => id = Some(value.clone()),
            "ifname" => {
                vmm_pc::nets::Tap::check_name_str(value).map_err(|e| e.to_string())?;
                ifname = Some(value.clone());
            }
            "vhost" => match value.as_str() {
                "off" | "no" | "false" => vhost = false,
                "on" | "yes" | "true" => vhost = true,
                _ => return Err(bad("'on' or 'off'")),
            },
            "script" | "downscript" => {
                if value != "no" {
                    return Err(format!(
                        "{key}={value} is not supported: only {key}=no (configure the tap yourself)"
                    ));
                }
            }
            _ => return Err(format!("Invalid parameter '{key}'")),
        }
    }
    if opts.get("type").is_none() {
        return Err("Parameter 'type' is missing (tap)".into());
    }
    let id = id.ok_or("Parameter 'id' is missing")?;
    let ifname = ifname.ok_or("Parameter 'ifname' is missing")?;
    Ok(Netdev { id, ifname, vhost })
}

/// Reads every `--netdev`.
pub fn parse_all(specs: &[String]) -> Result<Vec<Netdev>, StorageError> {
    let mut netdevs: Vec<Netdev> = Vec::new();
    for spec in specs {
        let err = |why| StorageError::new("--netdev", spec, why);
        let n = parse(spec).map_err(err)?;
        if netdevs.iter().any(|m| m.id == n.id) {
            return Err(err(format!("Duplicate ID '{}' for netdev", n.id)));
        }
        netdevs.push(n);
    }
    Ok(netdevs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> Result<Netdev, String> {
        parse_all(&[spec.to_owned()])
            .map(|mut v| v.remove(0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_tap_netdev_parses() {
        assert_eq!(
            one("tap,id=n0,ifname=tap0,vhost=off,script=no,downscript=no").unwrap(),
            Netdev {
                id: "n0".into(),
                ifname: "tap0".into(),
                vhost: false,
            }
        );
        for on in ["on", "yes", "true"] {
            let n = one(&format!("tap,id=n0,ifname=tap0,vhost={on}")).unwrap();
            assert!(n.vhost, "{on}");
        }
        assert!(!one("tap,id=n0,ifname=tap0").unwrap().vhost);
    }

    #[test]
    fn bad_netdevs_are_one_line_errors() {
        let cases = [
            (
                "tap,id=n0,ifname=0123456789abcdef",
                "tap name '0123456789abcdef' is not a valid interface name",
            ),
            (
                "tap,id=n0,ifname=tap0,vhost=maybe",
                "Parameter 'vhost' expects 'on' or 'off'",
            ),
            (
                "user,id=n0",
                "netdev type 'user' is not supported (only tap)",
            ),
            ("tap,ifname=tap0", "Parameter 'id' is missing"),
            ("tap,id=n0", "Parameter 'ifname' is missing"),
            (
                "tap,id=n0,ifname=t,script=/etc/qemu-ifup",
                "script=/etc/qemu-ifup is not supported",
            ),
            ("tap,id=n0,ifname=t,fd=3", "Invalid parameter 'fd'"),
        ];
        for (spec, want) in cases {
            let e = one(spec).unwrap_err();
            assert!(e.starts_with(&format!("--netdev {spec}: {want}")), "{e}");
            assert!(!e.contains('\n'));
        }
        let twice = parse_all(&["tap,id=n0,ifname=a".into(), "tap,id=n0,ifname=b".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            twice,
            "--netdev tap,id=n0,ifname=b: Duplicate ID 'n0' for netdev"
        );
    }
}
