//! `--action KEY=VALUE[,KEY=VALUE...]`, QEMU's `-action`: what events do.
//!
//! - `watchdog=reset|shutdown|poweroff|pause|debug|none|inject-nmi`: the
//!   watchdog's expiry (default `reset`);
//! - `reboot=reset|shutdown`: a guest reset (`shutdown` is QEMU's
//!   `-no-reboot`, this VMM's `--reboot exit`, the default here).
//!
//! QEMU's `shutdown=` and `panic=` keys are refused with a pointer to what
//! this VMM does instead.

use vmm_pc::{RebootAction, WatchdogAction};
use vmm_qom::parse_opts;

/// What `--action` chose; `None` leaves the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    /// `watchdog=`.
    pub watchdog: Option<WatchdogAction>,
    /// `reboot=`.
    pub reboot: Option<RebootAction>,
}

/// Reads every `--action` (later ones win), or says what is wrong with
/// the first bad one, as QEMU words it.
pub fn parse(specs: &[String]) -> Result<Actions, String> {
    let mut actions = Actions::default();
    for spec in specs {
        let bad = |why: String| format!("--action {spec}: {why}");
        let opts = parse_opts(spec, None).map_err(|e| bad(e.to_string()))?;
        for (key, value) in &opts.pairs {
            let refuse = || bad(format!("Parameter '{key}' does not accept value '{value}'"));
            match key.as_str() {
                "watchdog" => {
                    actions.watchdog = Some(WatchdogAction::from_name(value).ok_or_else(refuse)?);
                }
                "reboot" => {
                    actions.reboot = Some(match value.as_str() {
                        "reset" => RebootAction::Reset,
                        "shutdown" => RebootAction::Exit,
                        _ => return Err(refuse()),
                    });
                }
                "shutdown" | "panic" => {
                    return Err(bad(format!(
                        "'{key}' is not supported here: a guest poweroff ends the VMM, and a \
                         panic stops in guest-panicked with --qmp, else ends the VMM"
                    )))
                }
                _ => return Err(bad(format!("Invalid parameter '{key}'"))),
            }
        }
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> Result<Actions, String> {
        parse(&[spec.to_owned()])
    }

    #[test]
    fn qemus_keys_and_values() {
        assert_eq!(
            one("watchdog=pause").unwrap().watchdog,
            Some(WatchdogAction::Pause)
        );
        assert_eq!(
            one("watchdog=inject-nmi,reboot=reset").unwrap(),
            Actions {
                watchdog: Some(WatchdogAction::InjectNmi),
                reboot: Some(RebootAction::Reset),
            }
        );
        let later = parse(&["watchdog=none".into(), "watchdog=debug".into()]).unwrap();
        assert_eq!(later.watchdog, Some(WatchdogAction::Debug));
        assert_eq!(parse(&[]).unwrap(), Actions::default());
    }

    #[test]
    fn bad_actions_are_one_line_errors_naming_the_option() {
        assert_eq!(
            one("watchdog=bogus").unwrap_err(),
            "--action watchdog=bogus: Parameter 'watchdog' does not accept value 'bogus'"
        );
        assert!(one("reboot=maybe").unwrap_err().contains("'reboot'"));
        assert!(one("frob=1")
            .unwrap_err()
            .contains("Invalid parameter 'frob'"));
        assert!(one("panic=none").unwrap_err().contains("not supported"));
        assert!(
            one("watchdog").is_err(),
            "a bare key means on: not an action"
        );
    }
}
