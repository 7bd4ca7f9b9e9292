//! Live migration's parts that are not the machine's: where a stream goes
//! ([`MigrationUri`], [`transport`]), QEMU's parameters ([`Params`]), the
//! pre-copy's decision to stop the guest ([`should_stop`]), its figures
//! for `query-migrate` ([`RamStats`]), and the migration thread that
//! sends ([`send`]) and receives ([`recv`]) streams off the main loop
//! ([`worker`]). The machine's side (stopping the guest, its state) is
//! `machine/migration.rs` and `machine/live.rs`.

use std::path::PathBuf;

pub mod recv;
pub mod send;
pub mod transport;
pub mod worker;

/// Where a migration goes or comes from: QEMU's URIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUri {
    /// `file:PATH`: the guest stops for the whole copy.
    File(PathBuf),
    /// `tcp:HOST:PORT`.
    Tcp {
        /// A host name or address (IPv6 in brackets).
        host: String,
        /// The port.
        port: u16,
    },
    /// `unix:PATH`: a Unix stream socket.
    Unix(PathBuf),
    /// `exec:CMD`: `sh -c CMD`, the stream on its stdin (or, incoming,
    /// its stdout).
    Exec(String),
}

/// Parses QEMU's migration URI (`file:`, `tcp:`, `unix:`, `exec:`).
pub fn parse_uri(uri: &str) -> Result<MigrationUri, String> {
    let (scheme, rest) = uri
        .split_once(':')
        .ok_or_else(|| format!("unknown migration protocol: {uri}"))?;
    match scheme {
        "file" if !rest.is_empty() => Ok(MigrationUri::File(PathBuf::from(rest))),
        "unix" if !rest.is_empty() => Ok(MigrationUri::Unix(PathBuf::from(rest))),
        "exec" if !rest.trim().is_empty() => Ok(MigrationUri::Exec(rest.to_owned())),
        "tcp" => {
            let (host, port) = rest
                .rsplit_once(':')
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| format!("migration URI '{uri}': tcp: needs HOST:PORT"))?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("migration URI '{uri}': '{port}' is not a port"))?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            Ok(MigrationUri::Tcp {
                host: host.to_owned(),
                port,
            })
        }
        "file" | "unix" | "exec" => Err(format!("migration URI '{uri}': {scheme}: needs a value")),
        _ => Err(format!("unknown migration protocol: {uri}")),
    }
}

/// QEMU's default `downtime-limit`, ms.
pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// QEMU's default `max-bandwidth`, bytes/s (128 MiB/s).
pub const DEFAULT_MAX_BANDWIDTH: u64 = 128 << 20;
/// QEMU's largest `downtime-limit`: 2000 s.
pub const MAX_DOWNTIME_LIMIT_MS: u64 = 2_000_000;
/// Passes over the dirty pages before the guest is stopped anyway.
pub const MAX_PASSES: u64 = 30;

/// `migrate-set-parameters` / `query-migrate-parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The longest the guest may stay stopped, ms.
    pub downtime_limit_ms: u64,
    /// The fastest the stream may go, bytes/s (0: no limit).
    pub max_bandwidth: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            downtime_limit_ms: DEFAULT_DOWNTIME_LIMIT_MS,
            max_bandwidth: DEFAULT_MAX_BANDWIDTH,
        }
    }
}

/// Left after a pass, at most this is not worth another: its copy with
/// the guest stopped takes well under a millisecond on any link a
/// migration uses.
pub const WORTH_A_PASS: u64 = 256 << 10;

/// What a pass of the pre-copy did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassOutcome {
    /// Which pass (from 1).
    pub pass: u64,
    /// RAM it sent, bytes (whole pages).
    pub sent: u64,
    /// RAM dirtied meanwhile, to send next, bytes.
    pub remaining: u64,
    /// What it measured, bytes/s.
    pub bandwidth: f64,
}

/// The pre-copy's decision after a pass: stop the guest once what is left
/// goes in `downtime_limit_ms` at the measured bandwidth, unless another
/// pass still pays: while the guest dirtied less than half of what the
/// pass sent, each pass leaves less than half of the one before, so a
/// pass or two more take the stop's copy down to [`WORTH_A_PASS`] (as
/// QEMU's iterations do for a guest that does not dirty RAM faster than
/// it goes). After [`MAX_PASSES`] passes it stops anyway (a guest that
/// dirties memory faster than it can be sent never converges).
pub fn should_stop(p: &PassOutcome, downtime_limit_ms: u64) -> bool {
    if p.remaining == 0 || p.pass >= MAX_PASSES {
        return true;
    }
    if p.bandwidth <= 0.0 {
        return false;
    }
    if expected_downtime_ms(p.remaining, p.bandwidth) > downtime_limit_ms as f64 {
        return false;
    }
    let converging = p.remaining.saturating_mul(2) <= p.sent;
    !(converging && p.remaining > WORTH_A_PASS)
}

/// How long `remaining` bytes take at `bandwidth` bytes/s, ms.
pub fn expected_downtime_ms(remaining: u64, bandwidth: f64) -> f64 {
    if bandwidth <= 0.0 {
        return f64::INFINITY;
    }
    remaining as f64 * 1000.0 / bandwidth
}

/// `query-migrate`'s `ram`: QEMU's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RamStats {
    /// Bytes sent (page data and headers).
    pub transferred: u64,
    /// Dirty bytes not yet sent.
    pub remaining: u64,
    /// Guest RAM, bytes.
    pub total: u64,
    /// Pages sent as zeroes (QEMU's `duplicate`).
    pub duplicate: u64,
    /// Pages sent whole.
    pub normal: u64,
    /// Pages dirtied per second in the last pass.
    pub dirty_pages_rate: u64,
    /// The last pass's throughput, bytes/s (`mbps` in megabits).
    pub bandwidth: u64,
    /// Dirty-log syncs so far (QEMU's `dirty-sync-count`).
    pub dirty_sync_count: u64,
    /// Pages sent per second in the last pass.
    pub pages_per_second: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_uris() {
        assert_eq!(
            parse_uri("tcp:127.0.0.1:4444").unwrap(),
            MigrationUri::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
        assert_eq!(
            parse_uri("tcp:[::1]:5").unwrap(),
            MigrationUri::Tcp {
                host: "::1".into(),
                port: 5
            }
        );
        assert_eq!(
            parse_uri("unix:/tmp/s").unwrap(),
            MigrationUri::Unix("/tmp/s".into())
        );
        assert_eq!(
            parse_uri("exec:cat > f").unwrap(),
            MigrationUri::Exec("cat > f".into())
        );
        assert_eq!(
            parse_uri("file:/x").unwrap(),
            MigrationUri::File("/x".into())
        );
        for bad in [
            "tcp:",
            "tcp:host",
            "tcp::4",
            "tcp:h:0",
            "tcp:h:99999",
            "unix:",
            "exec: ",
            "file:",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_uri("bogus").unwrap_err(),
            "unknown migration protocol: bogus"
        );
        assert_eq!(
            parse_uri("fd:3").unwrap_err(),
            "unknown migration protocol: fd:3"
        );
    }

    #[test]
    fn the_guest_stops_when_the_rest_fits_the_downtime_or_after_the_pass_cap() {
        let outcome = |pass, sent, remaining, bandwidth| PassOutcome {
            pass,
            sent,
            remaining,
            bandwidth,
        };
        let mib = |n: u64| n << 20;
        let rate = mib(100) as f64;
        // 10 MiB left of 12 sent at 100 MiB/s: 100 ms, within 300 ms, and
        // another pass would not halve it.
        assert!(should_stop(&outcome(2, mib(12), mib(10), rate), 300));
        // 100 MiB left at 100 MiB/s: 1 s, not within 300 ms.
        assert!(!should_stop(&outcome(2, mib(200), mib(100), rate), 300));
        // ... unless the cap is reached.
        assert!(should_stop(
            &outcome(MAX_PASSES, mib(200), mib(100), rate),
            300
        ));
        // Fits, but the guest dirtied under half of what went: one more
        // pass, until what is left is not worth one.
        assert!(!should_stop(&outcome(1, mib(16), mib(2), rate), 300));
        assert!(!should_stop(&outcome(2, mib(2), mib(1) / 2, rate), 300));
        assert!(should_stop(
            &outcome(3, mib(1) / 2, WORTH_A_PASS, rate),
            300
        ));
        // Nothing left: stop; no bandwidth measured yet: go on.
        assert!(should_stop(&outcome(1, 0, 0, 0.0), 0));
        assert!(!should_stop(&outcome(1, 4096, 4096, 0.0), 300));
        // A zero limit stops only on nothing left or the cap.
        assert!(!should_stop(&outcome(3, 4096, 4096, 1e9), 0));
        assert_eq!(expected_downtime_ms(1000, 1000.0), 1000.0);
    }
}
