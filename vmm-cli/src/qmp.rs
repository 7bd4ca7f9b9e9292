//! QMP commands in terms of the machine: the glue between vmm-qmp's
//! protocol and vmm-pc's [`MachineControl`].
//!
//! Queries that need nothing from the machine answer at once; the rest are
//! submitted to the main loop, which replies when it has run them.

mod jobs;
mod memory;
mod migration;

use serde_json::{json, Map, Value};
use vmm_pc::{Command, MachineControl, MachineEvent, Reply};
use vmm_qmp::{Backend, Outbox, QmpError, Responder, Version};

use crate::monitor;

/// The commands we run, besides `qmp_capabilities`.
const COMMANDS: &[&str] = &[
    "query-status",
    "stop",
    "cont",
    "quit",
    "system_reset",
    "system_powerdown",
    "system_wakeup",
    "query-current-machine",
    "query-version",
    "query-kvm",
    "query-cpus-fast",
    "query-name",
    "query-commands",
    "human-monitor-command",
    "set-action",
    "watchdog-set-action",
    "snapshot-save",
    "snapshot-load",
    "query-jobs",
    "job-dismiss",
    "migrate",
    "migrate-incoming",
    "query-migrate",
    "migrate-set-capabilities",
    "migrate_cancel",
    "migrate-set-parameters",
    "query-migrate-parameters",
    "query-pci",
    "query-block",
    "query-blockstats",
    "pmemsave",
];

/// Our version, as QMP reports it.
pub fn version() -> Version {
    let n = |s: &str| s.parse().unwrap_or(0);
    Version {
        numbers: (
            n(env!("CARGO_PKG_VERSION_MAJOR")),
            n(env!("CARGO_PKG_VERSION_MINOR")),
            n(env!("CARGO_PKG_VERSION_PATCH")),
        ),
        package: format!("vmm {}", env!("CARGO_PKG_VERSION")),
    }
}

/// The machine behind QMP.
#[derive(Debug)]
pub struct MachineBackend {
    control: MachineControl,
}

impl MachineBackend {
    /// Commands go to `control`.
    pub fn new(control: MachineControl) -> Self {
        Self { control }
    }
}

/// QEMU's `query-pci` shape: one bus, its devices with ids, class,
/// interrupt and regions.
fn pci_json(functions: &[vmm_pci::info::FunctionInfo]) -> Value {
    let devices: Vec<Value> = functions
        .iter()
        .map(|f| {
            let class = u16::from(f.class.0) << 8 | u16::from(f.class.1);
            let mut class_info = json!({ "class": class });
            if let Some(desc) = vmm_pci::info::class_name(f.class.0, f.class.1) {
                class_info["desc"] = json!(desc);
            }
            let regions: Vec<Value> = f
                .regions
                .iter()
                .map(|r| {
                    let mut v = json!({
                        "bar": r.bar,
                        "type": if r.kind.is_memory() { "memory" } else { "io" },
                        "address": r.address,
                        "size": r.size,
                    });
                    if let vmm_pci::BarKind::Memory64 { prefetchable } = r.kind {
                        v["prefetch"] = json!(prefetchable);
                        v["mem_type_64"] = json!(true);
                    } else if r.kind.is_memory() {
                        v["prefetch"] = json!(false);
                        v["mem_type_64"] = json!(false);
                    }
                    v
                })
                .collect();
            let mut d = json!({
                "bus": 0,
                "slot": f.slot,
                "function": 0,
                "class_info": class_info,
                "id": {
                    "vendor": f.vendor,
                    "device": f.device,
                    "subsystem-vendor": f.subsystem_vendor,
                    "subsystem": f.subsystem,
                },
                "irq_pin": f.irq_pin,
                "qdev_id": "",
                "regions": regions,
            });
            if f.irq_pin != 0 {
                d["irq"] = json!(f.irq_line);
            }
            d
        })
        .collect();
    json!([{ "bus": 0, "devices": devices }])
}

/// QEMU's `query-block` shape for our raw, non-removable disks.
fn block_json(disks: &[vmm_pc::BlockInfo]) -> Value {
    Value::Array(
        disks
            .iter()
            .map(|d| {
                json!({
                    "device": d.device,
                    "qdev": format!("/machine/peripheral-anon/device[{}]/virtio-backend", d.slot),
                    "locked": false,
                    "removable": false,
                    "type": "unknown",
                    "io-status": if d.failed { "failed" } else { "ok" },
                    "inserted": {
                        "file": d.file,
                        "node-name": d.device,
                        "ro": d.readonly,
                        "drv": "raw",
                        "encrypted": false,
                        "detect_zeroes": "off",
                        "bps": 0, "bps_rd": 0, "bps_wr": 0,
                        "iops": 0, "iops_rd": 0, "iops_wr": 0,
                        "write_threshold": 0,
                        "backing_file_depth": 0,
                        "cache": {"writeback": true, "direct": d.direct, "no-flush": false},
                        "image": {
                            "filename": d.file,
                            "format": "raw",
                            "virtual-size": d.size,
                        },
                    },
                })
            })
            .collect(),
    )
}

/// QEMU's `query-blockstats` shape, from the devices' counters.
fn blockstats_json(disks: &[vmm_pc::BlockInfo]) -> Value {
    Value::Array(
        disks
            .iter()
            .map(|d| {
                let s = d.stats;
                json!({
                    "device": d.device,
                    "node-name": d.device,
                    "stats": {
                        "rd_bytes": s.read_bytes,
                        "wr_bytes": s.written_bytes,
                        "rd_operations": s.reads,
                        "wr_operations": s.writes,
                        "flush_operations": s.flushes,
                        "unmap_operations": s.discards,
                        "invalid_rd_operations": 0,
                        "invalid_wr_operations": 0,
                        "failed_rd_operations": 0,
                        "failed_wr_operations": s.host_errors,
                        "invalid_flush_operations": 0,
                        "failed_flush_operations": 0,
                        "account_invalid": true,
                        "account_failed": true,
                        "idle_time_ns": 0,
                        "timed_stats": [],
                    },
                })
            })
            .collect(),
    )
}

fn reply_json(reply: Reply) -> Value {
    match reply {
        Reply::Block(disks) => block_json(&disks),
        Reply::Pci(functions) => pci_json(&functions),
        Reply::Jobs(list) => jobs::jobs_json(&list),
        Reply::Migration(info) => migration::info_json(info.as_ref()),
        Reply::MigrationParameters(params) => migration::params_json(&params),
        Reply::Devices(devices) => Value::Array(
            devices
                .iter()
                .map(|d| json!({"id": d.id, "type": d.type_name, "pci-slot": d.pci_slot}))
                .collect(),
        ),
        // Only the monitor's `info registers` and `info lapic` ask for
        // these (QEMU has no QMP command for them); as text all the same.
        Reply::Registers(cpus) => Value::Array(
            cpus.iter()
                .map(|c| json!({"cpu-index": c.index, "text": c.text}))
                .collect(),
        ),
        Reply::Lapic(c) => json!({"cpu-index": c.index, "text": c.text}),
        // Only the gdb stub asks for these; QMP never does.
        Reply::Done | Reply::GdbRegisters(_) | Reply::GdbMemory(_) | Reply::GdbWritten(_) => {
            json!({})
        }
        Reply::Status { running, status } => json!({
            "running": running,
            "singlestep": false,
            "status": status.to_string(),
        }),
        Reply::Cpus(cpus) => Value::Array(
            cpus.iter()
                .map(|c| {
                    json!({
                        "cpu-index": c.index,
                        "qom-path": format!("/machine/unattached/device[{}]", c.index),
                        "thread-id": c.thread_id,
                        "target": "x86_64",
                        "props": {"socket-id": 0, "core-id": c.index, "thread-id": 0},
                    })
                })
                .collect(),
        ),
    }
}

/// QMP `watchdog-set-action {action}` and `set-action {watchdog?,
/// reboot?}` into the machine's command, checked as QEMU's QAPI checks
/// them (`shutdown` and `panic` are not supported here).
fn set_action(command: &str, arguments: &Map<String, Value>) -> Result<Command, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match arguments.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!(
                "Invalid parameter type for '{name}', expected: string"
            )),
        }
    };
    let refuse =
        |name: &str, value: &str| format!("Parameter '{name}' does not accept value '{value}'");
    let allowed: &[&str] = if command == "watchdog-set-action" {
        &["action"]
    } else {
        &["watchdog", "reboot"]
    };
    if let Some(name) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("Parameter '{name}' is unexpected"));
    }
    let watchdog_key = if command == "watchdog-set-action" {
        "action"
    } else {
        "watchdog"
    };
    let watchdog = match text(watchdog_key)? {
        Some(v) => {
            Some(vmm_pc::WatchdogAction::from_name(v).ok_or_else(|| refuse(watchdog_key, v))?)
        }
        None if command == "watchdog-set-action" => {
            return Err("Parameter 'action' is missing".to_owned())
        }
        None => None,
    };
    let reboot = match text("reboot")? {
        Some("reset") => Some(vmm_pc::RebootAction::Reset),
        Some("shutdown") => Some(vmm_pc::RebootAction::Exit),
        Some(v) => return Err(refuse("reboot", v)),
        None => None,
    };
    Ok(Command::SetAction { watchdog, reboot })
}

impl Backend for MachineBackend {
    fn commands(&self) -> Vec<String> {
        COMMANDS.iter().map(|c| (*c).to_owned()).collect()
    }

    fn execute(&mut self, command: &str, arguments: &Map<String, Value>, r: Responder) {
        if command == "human-monitor-command" {
            return self.human_monitor_command(arguments, r);
        }
        if let Some(parsed) = jobs::parse(command, arguments)
            .or_else(|| migration::parse(command, arguments))
            .or_else(|| memory::parse(command, arguments))
        {
            return match parsed {
                Ok(command) => self.control.submit(
                    command,
                    Box::new(move |outcome| match outcome {
                        Ok(reply) => r.ok(reply_json(reply)),
                        Err(why) => r.err(&QmpError::generic(why)),
                    }),
                ),
                Err(why) => r.err(&QmpError::generic(why)),
            };
        }
        if command == "set-action" || command == "watchdog-set-action" {
            return match set_action(command, arguments) {
                Ok(command) => self.control.submit(
                    command,
                    Box::new(move |outcome| match outcome {
                        Ok(_) => r.ok(json!({})),
                        Err(why) => r.err(&QmpError::generic(why)),
                    }),
                ),
                Err(why) => r.err(&QmpError::generic(why)),
            };
        }
        // None of our other commands takes arguments (QEMU's wording).
        if let Some(name) = arguments.keys().next() {
            return r.err(&QmpError::generic(format!(
                "Parameter '{name}' is unexpected"
            )));
        }
        let command = match command {
            "query-version" => return r.ok(version().to_json()),
            "query-kvm" => return r.ok(json!({"enabled": true, "present": true})),
            "query-name" => return r.ok(json!({})),
            // ACPI S3 is there, and so are its wake-up sources.
            "query-current-machine" => return r.ok(json!({"wakeup-suspend-support": true})),
            "query-commands" => {
                let names = std::iter::once("qmp_capabilities")
                    .chain(COMMANDS.iter().copied())
                    .map(|name| json!({ "name": name }))
                    .collect();
                return r.ok(Value::Array(names));
            }
            "query-status" => Command::QueryStatus,
            "query-cpus-fast" => Command::QueryCpus,
            "query-pci" => Command::QueryPci,
            "query-block" => Command::QueryBlock,
            "query-blockstats" => {
                return self.control.submit(
                    Command::QueryBlock,
                    Box::new(move |outcome| match outcome {
                        Ok(Reply::Block(disks)) => r.ok(blockstats_json(&disks)),
                        Ok(_) => r.ok(json!([])),
                        Err(why) => r.err(&QmpError::generic(why)),
                    }),
                )
            }
            "stop" => Command::Stop,
            "cont" => Command::Cont,
            "quit" => Command::Quit,
            "system_reset" => Command::SystemReset,
            "system_powerdown" => Command::SystemPowerdown,
            "system_wakeup" => Command::SystemWakeup,
            other => return r.err(&QmpError::generic(format!("{other} is not implemented"))),
        };
        self.control.submit(
            command,
            Box::new(move |outcome| match outcome {
                Ok(reply) => r.ok(reply_json(reply)),
                Err(why) => r.err(&QmpError::generic(why)),
            }),
        );
    }
}

impl MachineBackend {
    /// QEMU's `human-monitor-command`: a console-monitor line, its output
    /// as the reply's string (libvirt's and scripts' way to the monitor).
    fn human_monitor_command(&mut self, arguments: &Map<String, Value>, r: Responder) {
        for name in arguments.keys() {
            if name != "command-line" && name != "cpu-index" {
                return r.err(&QmpError::generic(format!(
                    "Parameter '{name}' is unexpected"
                )));
            }
        }
        let Some(line) = arguments.get("command-line") else {
            return r.err(&QmpError::generic(
                "Parameter 'command-line' is missing".to_owned(),
            ));
        };
        let Some(line) = line.as_str() else {
            return r.err(&QmpError::generic(
                "Invalid parameter type for 'command-line', expected: string".to_owned(),
            ));
        };
        // The monitor's current CPU for this line (`info registers`,
        // `info lapic`); a CPU the machine lacks is their error.
        let cpu = match arguments.get("cpu-index") {
            None => 0,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    return r.err(&QmpError::generic(
                        "Parameter 'cpu-index' expects a CPU number".to_owned(),
                    ))
                }
            },
        };
        let line = monitor::parse_on(line, cpu);
        if let Some(text) = monitor::local_text(&line) {
            return r.ok(Value::String(text));
        }
        if let monitor::Line::Machine(command) = line {
            self.control.submit(
                command,
                Box::new(move |outcome| r.ok(Value::String(monitor::reply_text(outcome)))),
            );
        }
    }
}

/// Sends the machine's events to the QMP client.
pub fn forward_events(outbox: Outbox) -> impl FnMut(&MachineEvent) + Send + 'static {
    move |event| match event {
        MachineEvent::Stop => outbox.event("STOP", None),
        MachineEvent::Resume => outbox.event("RESUME", None),
        MachineEvent::Powerdown => outbox.event("POWERDOWN", None),
        MachineEvent::Suspend => outbox.event("SUSPEND", None),
        MachineEvent::Wakeup => outbox.event("WAKEUP", None),
        MachineEvent::RtcChange { offset } => outbox.event(
            "RTC_CHANGE",
            Some(json!({"offset": offset, "qom-path": "/machine/unattached/device[0]"})),
        ),
        MachineEvent::GuestPanicked { paused } => outbox.event(
            "GUEST_PANICKED",
            Some(json!({"action": if *paused { "pause" } else { "poweroff" }})),
        ),
        MachineEvent::BlockIoError(e) => outbox.event(
            "BLOCK_IO_ERROR",
            Some(json!({
                "device": e.device,
                "node-name": e.device,
                "operation": e.operation,
                "action": e.action,
                "nospace": e.nospace,
                "reason": e.reason,
            })),
        ),
        MachineEvent::Reset { guest } => outbox.event(
            "RESET",
            Some(json!({
                "guest": guest,
                "reason": if *guest { "guest-reset" } else { "host-qmp-system-reset" },
            })),
        ),
        MachineEvent::Migration { status } => {
            outbox.event("MIGRATION", Some(json!({ "status": status })))
        }
        MachineEvent::MigrationPass { pass } => {
            outbox.event("MIGRATION_PASS", Some(json!({ "pass": pass })))
        }
        MachineEvent::JobStatus { id, status } => outbox.event(
            "JOB_STATUS_CHANGE",
            Some(json!({"id": id, "status": status})),
        ),
        MachineEvent::Watchdog { action } => {
            outbox.event("WATCHDOG", Some(json!({ "action": action })))
        }
        MachineEvent::Shutdown(cause) => outbox.event(
            "SHUTDOWN",
            Some(json!({"guest": cause.is_guest(), "reason": cause.as_str()})),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_action_reads_qemus_arguments() {
        let args = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            set_action("watchdog-set-action", &args(json!({"action": "pause"}))).unwrap(),
            Command::SetAction {
                watchdog: Some(vmm_pc::WatchdogAction::Pause),
                reboot: None
            }
        );
        assert_eq!(
            set_action(
                "set-action",
                &args(json!({"watchdog": "inject-nmi", "reboot": "shutdown"}))
            )
            .unwrap(),
            Command::SetAction {
                watchdog: Some(vmm_pc::WatchdogAction::InjectNmi),
                reboot: Some(vmm_pc::RebootAction::Exit)
            }
        );
        let err = |c: &str, v: Value| set_action(c, &args(v)).unwrap_err();
        assert_eq!(
            err("watchdog-set-action", json!({"action": "bogus"})),
            "Parameter 'action' does not accept value 'bogus'"
        );
        assert_eq!(
            err("watchdog-set-action", json!({})),
            "Parameter 'action' is missing"
        );
        assert_eq!(
            err("set-action", json!({"panic": "none"})),
            "Parameter 'panic' is unexpected"
        );
        assert!(err("set-action", json!({"watchdog": 1})).contains("expected: string"));
    }

    use super::*;
    use vmm_pc::CpuInfo;
    use vmm_runstate::RunState;

    #[test]
    fn replies_have_qmp_shapes() {
        assert_eq!(reply_json(Reply::Done), json!({}));
        let s = reply_json(Reply::Status {
            running: false,
            status: RunState::Paused,
        });
        assert_eq!(
            s,
            json!({"running": false, "singlestep": false, "status": "paused"})
        );
        let c = reply_json(Reply::Cpus(vec![CpuInfo {
            index: 1,
            thread_id: 42,
        }]));
        assert_eq!(c[0]["cpu-index"], 1);
        assert_eq!(c[0]["thread-id"], 42);
    }
}
