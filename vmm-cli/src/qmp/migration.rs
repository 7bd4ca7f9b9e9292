//! QMP's migration commands: `migrate` (`uri`; `file:PATH` so far),
//! `migrate-incoming` (after `--incoming defer`),
//! `query-migrate` in QEMU's shape, and `migrate-set-capabilities` for
//! QEMU's `events` capability (the `MIGRATION` events).

use serde_json::{json, Map, Value};
use vmm_pc::{Command, MigrationInfo};

/// The machine command for migration command `command`, if it is one.
pub fn parse(command: &str, arguments: &Map<String, Value>) -> Option<Result<Command, String>> {
    let allowed: &[&str] = match command {
        "migrate" | "migrate-incoming" => &["uri"],
        "query-migrate" => &[],
        "migrate-set-capabilities" => &["capabilities"],
        _ => return None,
    };
    Some((|| {
        if let Some(name) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("Parameter '{name}' is unexpected"));
        }
        match command {
            "query-migrate" => Ok(Command::QueryMigrate),
            "migrate" | "migrate-incoming" => match arguments.get("uri") {
                Some(Value::String(uri)) => {
                    vmm_pc::parse_migration_uri(uri)?;
                    Ok(if command == "migrate" {
                        Command::Migrate { uri: uri.clone() }
                    } else {
                        Command::MigrateIncoming { uri: uri.clone() }
                    })
                }
                Some(_) => Err("Invalid parameter type for 'uri', expected: string".into()),
                None => Err("Parameter 'uri' is missing".into()),
            },
            _ => {
                let Some(Value::Array(caps)) = arguments.get("capabilities") else {
                    return Err("Parameter 'capabilities' is missing or not an array".into());
                };
                let mut events = None;
                for cap in caps {
                    let name = cap.get("capability").and_then(Value::as_str);
                    let state = cap.get("state").and_then(Value::as_bool);
                    match (name, state) {
                        (Some("events"), Some(on)) => events = Some(on),
                        (Some(other), Some(_)) => {
                            return Err(format!("Capability '{other}' is not supported here"))
                        }
                        _ => return Err("a capability needs 'capability' and 'state'".into()),
                    }
                }
                Ok(events.map_or(Command::QueryMigrate, Command::MigrationEvents))
            }
        }
    })())
}

/// `query-migrate`'s answer: `{}` before any migration, as QEMU.
pub fn info_json(info: Option<&MigrationInfo>) -> Value {
    let Some(m) = info else {
        return json!({});
    };
    let pages = m.ram_transferred / 4096;
    let mbps = if m.total_time_ms > 0 {
        (m.ram_transferred as f64 * 8.0 / 1e6) / (m.total_time_ms as f64 / 1e3)
    } else {
        0.0
    };
    let mut v = json!({
        "status": m.status,
        "total-time": m.total_time_ms,
        "downtime": m.downtime_ms,
        "setup-time": 0,
        "ram": {
            "transferred": m.ram_transferred,
            "remaining": 0,
            "total": m.ram_total,
            "duplicate": 0,
            "skipped": 0,
            "normal": pages,
            "normal-bytes": pages * 4096,
            "dirty-sync-count": 1,
            "page-size": 4096,
            "dirty-pages-rate": 0,
            "mbps": mbps,
        },
    });
    if let Some(e) = &m.error {
        v["error-desc"] = json!(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn qemus_arguments_and_shapes() {
        assert_eq!(
            parse("migrate", &args(json!({"uri": "file:/tmp/m"})))
                .unwrap()
                .unwrap(),
            Command::Migrate {
                uri: "file:/tmp/m".into()
            }
        );
        assert!(parse("migrate", &args(json!({"uri": "tcp:h:1"})))
            .unwrap()
            .unwrap_err()
            .contains("only file:PATH"));
        assert_eq!(
            parse(
                "migrate-set-capabilities",
                &args(json!({"capabilities": [{"capability": "events", "state": true}]}))
            )
            .unwrap()
            .unwrap(),
            Command::MigrationEvents(true)
        );
        assert!(parse(
            "migrate-set-capabilities",
            &args(json!({"capabilities": [{"capability": "xbzrle", "state": true}]}))
        )
        .unwrap()
        .is_err());
        assert!(parse("stop", &Map::new()).is_none());
        assert_eq!(info_json(None), json!({}));
        let done = info_json(Some(&MigrationInfo {
            status: "completed",
            total_time_ms: 10,
            downtime_ms: 9,
            ram_total: 8192,
            ram_transferred: 8192,
            error: None,
        }));
        assert_eq!(done["ram"]["normal"], 2);
        assert_eq!(done["status"], "completed");
    }
}
