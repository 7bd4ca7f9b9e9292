//! QMP's snapshot jobs: `snapshot-save` and `snapshot-load` (QEMU's
//! arguments: `job-id`, `tag`, `vmstate`, `devices`; here `vmstate` names
//! the file the VM state goes to, as this VMM has no qcow2 node to hold
//! it, and `devices` must be empty, as it has no disk snapshots),
//! `query-jobs` and `job-dismiss`.

use serde_json::{json, Map, Value};
use vmm_pc::snapshot::jobs::JobInfo;
use vmm_pc::Command;

fn string<'a>(arguments: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match arguments.get(name) {
        None => Err(format!("Parameter '{name}' is missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!(
            "Invalid parameter type for '{name}', expected: string"
        )),
    }
}

/// The machine command for job command `command`, if it is one.
pub fn parse(command: &str, arguments: &Map<String, Value>) -> Option<Result<Command, String>> {
    let allowed: &[&str] = match command {
        "snapshot-save" | "snapshot-load" => &["job-id", "tag", "vmstate", "devices"],
        "job-dismiss" => &["id"],
        "query-jobs" => &[],
        _ => return None,
    };
    Some((|| {
        if let Some(name) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("Parameter '{name}' is unexpected"));
        }
        match command {
            "query-jobs" => Ok(Command::QueryJobs),
            "job-dismiss" => Ok(Command::JobDismiss {
                id: string(arguments, "id")?.to_owned(),
            }),
            _ => {
                let job = string(arguments, "job-id")?.to_owned();
                string(arguments, "tag")?;
                let path = string(arguments, "vmstate")?.into();
                match arguments.get("devices") {
                    None => return Err("Parameter 'devices' is missing".into()),
                    Some(Value::Array(d)) if d.is_empty() => {}
                    Some(Value::Array(_)) => {
                        return Err(
                            "disk snapshots are not supported: 'devices' must be empty".into()
                        )
                    }
                    Some(_) => {
                        return Err("Invalid parameter type for 'devices', expected: array".into())
                    }
                }
                Ok(if command == "snapshot-save" {
                    Command::SnapshotSave { job, path }
                } else {
                    Command::SnapshotLoad { job, path }
                })
            }
        }
    })())
}

/// `query-jobs`'s answer, in QEMU's shape.
pub fn jobs_json(jobs: &[JobInfo]) -> Value {
    Value::Array(
        jobs.iter()
            .map(|j| {
                let mut v = json!({
                    "id": j.id,
                    "type": j.kind,
                    "status": j.status.as_str(),
                    "current-progress": 1,
                    "total-progress": 1,
                });
                if let Some(e) = &j.error {
                    v["error"] = json!(e);
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn qemus_arguments() {
        let save = parse(
            "snapshot-save",
            &args(json!({"job-id": "s", "tag": "t", "vmstate": "/tmp/x", "devices": []})),
        );
        assert_eq!(
            save.unwrap().unwrap(),
            Command::SnapshotSave {
                job: "s".into(),
                path: "/tmp/x".into()
            }
        );
        assert!(parse("stop", &Map::new()).is_none());
        let err = |c: &str, v: Value| parse(c, &args(v)).unwrap().unwrap_err();
        assert_eq!(
            err(
                "snapshot-load",
                json!({"tag": "t", "vmstate": "x", "devices": []})
            ),
            "Parameter 'job-id' is missing"
        );
        assert!(err(
            "snapshot-save",
            json!({"job-id": "s", "tag": "t", "vmstate": "x", "devices": ["disk0"]})
        )
        .contains("must be empty"));
        assert_eq!(err("job-dismiss", json!({})), "Parameter 'id' is missing");
        assert_eq!(
            err("query-jobs", json!({"x": 1})),
            "Parameter 'x' is unexpected"
        );
    }
}
