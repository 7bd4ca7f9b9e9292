//! QMP's migration commands: `migrate` (`uri`: `file:`, `tcp:`, `unix:`,
//! `exec:`), `migrate-incoming` (after `--incoming defer`), `migrate_cancel`,
//! `query-migrate` in QEMU's shape, `migrate-set-parameters` and
//! `query-migrate-parameters` (`downtime-limit`, `max-bandwidth`), and
//! `migrate-set-capabilities` for QEMU's `events` capability (the
//! `MIGRATION` and `MIGRATION_PASS` events).

use serde_json::{json, Map, Value};
use vmm_pc::migration::{Params, MAX_DOWNTIME_LIMIT_MS};
use vmm_pc::{Command, MigrationInfo};

/// The machine command for migration command `command`, if it is one.
pub fn parse(command: &str, arguments: &Map<String, Value>) -> Option<Result<Command, String>> {
    let allowed: &[&str] = match command {
        "migrate" | "migrate-incoming" => &["uri"],
        "query-migrate" | "migrate_cancel" | "query-migrate-parameters" => &[],
        "migrate-set-capabilities" => &["capabilities"],
        "migrate-set-parameters" => &["downtime-limit", "max-bandwidth"],
        _ => return None,
    };
    Some((|| {
        if let Some(name) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("Parameter '{name}' is unexpected"));
        }
        match command {
            "query-migrate" => Ok(Command::QueryMigrate),
            "migrate_cancel" => Ok(Command::MigrateCancel),
            "query-migrate-parameters" => Ok(Command::QueryMigrateParameters),
            "migrate-set-parameters" => set_parameters(arguments),
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

/// `migrate-set-parameters`: QEMU's names, types and ranges (and words).
fn set_parameters(arguments: &Map<String, Value>) -> Result<Command, String> {
    let number = |name: &str| -> Result<Option<u64>, String> {
        match arguments.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                if v.is_number() {
                    format!("Parameter '{name}' expects uint64")
                } else {
                    format!("Invalid parameter type for '{name}', expected: integer")
                }
            }),
        }
    };
    let downtime_limit_ms = number("downtime-limit")?;
    if downtime_limit_ms.is_some_and(|v| v > MAX_DOWNTIME_LIMIT_MS) {
        return Err(format!(
            "Parameter 'downtime_limit' expects an integer in the range of 0 to {} seconds",
            MAX_DOWNTIME_LIMIT_MS / 1000
        ));
    }
    let max_bandwidth = number("max-bandwidth")?;
    if max_bandwidth.is_some_and(|v| usize::try_from(v).is_err()) {
        return Err(format!(
            "Parameter 'max_bandwidth' expects an integer in the range of 0 to {} bytes/second",
            usize::MAX
        ));
    }
    Ok(Command::MigrateSetParameters {
        downtime_limit_ms,
        max_bandwidth,
    })
}

/// `query-migrate-parameters`'s answer (the parameters this VMM has).
pub fn params_json(p: &Params) -> Value {
    json!({
        "downtime-limit": p.downtime_limit_ms,
        "max-bandwidth": p.max_bandwidth,
    })
}

/// `query-migrate`'s answer: `{}` before any migration, as QEMU.
pub fn info_json(info: Option<&MigrationInfo>) -> Value {
    let Some(m) = info else {
        return json!({});
    };
    if m.incoming {
        // QEMU's destination shows its status only.
        let mut v = json!({ "status": m.status });
        if let Some(e) = &m.error {
            v["error-desc"] = json!(e);
        }
        return v;
    }
    let r = &m.ram;
    let mbps = r.bandwidth as f64 * 8.0 / 1e6;
    let mut v = json!({
        "status": m.status,
        "total-time": m.total_time_ms,
        "setup-time": m.setup_time_ms,
        "ram": {
            "transferred": r.transferred,
            "remaining": r.remaining,
            "total": r.total,
            "duplicate": r.duplicate,
            "skipped": 0,
            "normal": r.normal,
            "normal-bytes": r.normal * 4096,
            "dirty-sync-count": r.dirty_sync_count,
            "page-size": 4096,
            "dirty-pages-rate": r.dirty_pages_rate,
            "mbps": mbps,
            "pages-per-second": r.pages_per_second,
        },
    });
    if let Some(d) = m.downtime_ms {
        v["downtime"] = json!(d);
    }
    if let Some(d) = m.expected_downtime_ms {
        v["expected-downtime"] = json!(d);
    }
    if let Some(e) = &m.error {
        v["error-desc"] = json!(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_pc::migration::RamStats;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn qemus_arguments_and_shapes() {
        assert_eq!(
            parse("migrate", &args(json!({"uri": "tcp:127.0.0.1:4444"})))
                .unwrap()
                .unwrap(),
            Command::Migrate {
                uri: "tcp:127.0.0.1:4444".into()
            }
        );
        assert_eq!(
            parse("migrate", &args(json!({"uri": "fd:3"})))
                .unwrap()
                .unwrap_err(),
            "unknown migration protocol: fd:3"
        );
        assert_eq!(
            parse("migrate_cancel", &Map::new()).unwrap().unwrap(),
            Command::MigrateCancel
        );
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
            downtime_ms: Some(9),
            expected_downtime_ms: None,
            setup_time_ms: 1,
            ram: RamStats {
                transferred: 8192,
                total: 8192,
                normal: 2,
                bandwidth: 1_000_000,
                ..RamStats::default()
            },
            error: None,
            incoming: false,
        }));
        assert_eq!(done["ram"]["normal"], 2);
        assert_eq!(done["ram"]["mbps"], 8.0);
        assert_eq!(done["downtime"], 9);
        assert!(done.get("expected-downtime").is_none());
        assert_eq!(done["status"], "completed");
        let destination = MigrationInfo {
            status: "active",
            total_time_ms: 10,
            downtime_ms: None,
            expected_downtime_ms: None,
            setup_time_ms: 0,
            ram: RamStats::default(),
            error: None,
            incoming: true,
        };
        assert_eq!(info_json(Some(&destination)), json!({"status": "active"}));
    }

    #[test]
    fn parameters_in_qemus_names_and_ranges() {
        assert_eq!(
            parse(
                "migrate-set-parameters",
                &args(json!({"downtime-limit": 50, "max-bandwidth": 1024}))
            )
            .unwrap()
            .unwrap(),
            Command::MigrateSetParameters {
                downtime_limit_ms: Some(50),
                max_bandwidth: Some(1024)
            }
        );
        assert_eq!(
            parse(
                "migrate-set-parameters",
                &args(json!({"downtime-limit": 2_000_001}))
            )
            .unwrap()
            .unwrap_err(),
            "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds"
        );
        assert_eq!(
            parse(
                "migrate-set-parameters",
                &args(json!({"max-bandwidth": "x"}))
            )
            .unwrap()
            .unwrap_err(),
            "Invalid parameter type for 'max-bandwidth', expected: integer"
        );
        assert_eq!(
            parse(
                "migrate-set-parameters",
                &args(json!({"xbzrle-cache-size": 1}))
            )
            .unwrap()
            .unwrap_err(),
            "Parameter 'xbzrle-cache-size' is unexpected"
        );
        assert_eq!(
            params_json(&Params::default()),
            json!({"downtime-limit": 300, "max-bandwidth": 134217728})
        );
    }
}
