//! `cargo xtask bench`'s command line.

use anyhow::{bail, Result};

use super::{DEFAULT_RUNS, QUICK_RUNS};

/// The suites, in the order they run.
pub(super) const SUITES: [&str; 14] = [
    "startup", "exit", "memory", "pio", "irq", "density", "watchdog", "snapshot", "linux", "blk",
    "net", "qmp", "suspend", "alarm",
];

/// The parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub(super) suites: Vec<&'static str>,
    pub(super) runs: usize,
    pub(super) quick: bool,
    /// Extra arguments for our VMM (`--vmm-arg`).
    pub(super) vmm_args: Vec<String>,
    /// Arguments for the alarm benchmark (after `--`).
    pub(super) alarm_args: Vec<String>,
}

impl Options {
    pub(super) fn parse(args: &[String]) -> Result<Self> {
        let mut suites = Vec::new();
        let mut runs = None;
        let mut quick = false;
        let mut vmm_args = Vec::new();
        let mut alarm_args = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let runs_value = match a.strip_prefix("--runs") {
                Some("") => Some(it.next().map(String::as_str)),
                Some(v) if v.starts_with('=') => Some(Some(&v[1..])),
                _ => None,
            };
            let vmm_arg = match a.strip_prefix("--vmm-arg") {
                Some("") => Some(it.next().map(String::as_str)),
                Some(v) if v.starts_with('=') => Some(Some(&v[1..])),
                _ => None,
            };
            if let Some(v) = vmm_arg {
                match v {
                    Some(v) => vmm_args.push(v.to_owned()),
                    None => bail!("--vmm-arg needs an argument for the VMM"),
                }
            } else if let Some(v) = runs_value {
                runs = match v.map(str::parse::<usize>) {
                    Some(Ok(n)) if n > 0 => Some(n),
                    _ => bail!("--runs needs a positive number"),
                };
            } else if a == "--quick" {
                quick = true;
            } else if a == "--" {
                alarm_args = it.by_ref().cloned().collect();
            } else {
                // `boot` was this suite's name before the others existed.
                let name = if a == "boot" { "startup" } else { a.as_str() };
                match SUITES.iter().find(|s| **s == name) {
                    Some(s) if !suites.contains(s) => suites.push(*s),
                    Some(_) => {}
                    None => bail!(
                        "unknown argument `{a}` (suites: {}; flags: --runs N, --quick, --vmm-arg ARG)",
                        SUITES.join(", ")
                    ),
                }
            }
        }
        if suites.is_empty() {
            suites = SUITES.iter().copied().filter(|s| *s != "alarm").collect();
        }
        suites.sort_by_key(|s| SUITES.iter().position(|x| x == s));
        let runs = runs.unwrap_or(if quick { QUICK_RUNS } else { DEFAULT_RUNS });
        Ok(Self {
            suites,
            runs,
            quick,
            vmm_args,
            alarm_args,
        })
    }

    pub(super) fn wants(&self, suite: &str) -> bool {
        self.suites.contains(&suite)
    }
}
