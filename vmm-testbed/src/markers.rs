//! The lines L1 prints on its console around the job's output, and their
//! parsing on the host.

/// L1 has booted and loaded KVM (followed by its uptime in seconds).
pub const L1_READY: &str = "@@TESTBED-L1-READY";
/// The test bed itself failed inside L1.
pub const ERROR: &str = "@@TESTBED-ERROR";
/// The VMM's standard output (the L2 serial console) starts.
pub const OUT_BEGIN: &str = "@@TESTBED-OUT-BEGIN";
/// … ends, followed by the VMM's exit status.
pub const OUT_END: &str = "@@TESTBED-OUT-END";
/// A line of L1's kernel log (a soft-lockup report's, see
/// [`crate::l1`]), printed by the test bed while the VMM runs.
pub const L1_DMESG: &str = "@@TESTBED-L1-DMESG";
/// The VMM's standard error starts.
pub const ERR_BEGIN: &str = "@@TESTBED-ERR-BEGIN";
/// … ends.
pub const ERR_END: &str = "@@TESTBED-ERR-END";

/// What L1's console said about the job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// Whether L1 got ready.
    pub l1_ready: bool,
    /// The test bed's own error, if any.
    pub error: Option<String>,
    /// The VMM's stdout, once complete.
    pub out: Option<String>,
    /// Its exit status.
    pub status: Option<i32>,
    /// The VMM's stderr, once complete.
    pub err: Option<String>,
}

impl Parsed {
    /// Whether nothing more is to come.
    pub fn finished(&self) -> bool {
        self.error.is_some() || self.err.is_some()
    }
}

/// Drops the carriage returns the consoles add (L2's and L1's tty each
/// turn "\n" into "\r\n").
pub fn normalize(console: &str) -> String {
    console.replace('\r', "")
}

/// Where `marker` starts a line of `text`.
fn line_start(text: &str, marker: &str) -> Option<usize> {
    if text.starts_with(marker) {
        return Some(0);
    }
    text.find(&format!("\n{marker}")).map(|i| i + 1)
}

fn between<'a>(text: &'a str, begin: &str, end: &str) -> Option<(&'a str, &'a str)> {
    let start = line_start(text, &format!("{begin}\n"))? + begin.len() + 1;
    // The end marker starts a line: search from the begin line's newline,
    // so that empty content is found too.
    let len = text[start - 1..].find(&format!("\n{end}"))?;
    let rest = &text[start + len + end.len()..];
    Some((&text[start..start + len], rest))
}

/// `out` without the test bed's own lines printed while the VMM ran
/// (whole lines starting with [`crate::l2_exits::EXITS_MARKER`] or
/// [`L1_DMESG`]).
fn without_samples(out: &str) -> String {
    let ours = [crate::l2_exits::EXITS_MARKER, L1_DMESG];
    if !ours.iter().any(|m| out.contains(m)) {
        return out.to_owned();
    }
    out.split_inclusive('\n')
        .filter(|l| !ours.iter().any(|m| l.starts_with(m)))
        .collect()
}

/// Parses everything L1 printed so far.
pub fn parse(console: &str) -> Parsed {
    let text = normalize(console);
    let mut p = Parsed {
        l1_ready: text.contains(L1_READY),
        ..Parsed::default()
    };
    // Only a whole line that starts with the marker counts (guest output
    // could contain the text anywhere).
    if let Some(i) = line_start(&text, ERROR) {
        let after = &text[i + ERROR.len()..];
        if let Some(end) = after.find('\n') {
            p.error = Some(after[..end].trim().to_owned());
        }
    }
    if let Some((out, rest)) = between(&text, OUT_BEGIN, OUT_END) {
        // The script echoes a newline after the VMM, so the last line ends.
        let out = out.strip_suffix('\n').unwrap_or(out);
        p.out = Some(without_samples(out));
        let status_line = rest.lines().next().unwrap_or("");
        p.status = status_line.trim().parse().ok();
        if let Some((err, _)) = between(rest, ERR_BEGIN, ERR_END) {
            p.err = Some(err.to_owned());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_job() {
        let console = "SeaBIOS junk\r\n@@TESTBED-L1-READY 3.1\r\n@@TESTBED-OUT-BEGIN\r\n\
                       Linux boots\r\r\nshell\r\r\n\r\n@@TESTBED-OUT-END 0\r\n\
                       @@TESTBED-ERR-BEGIN\r\nwarn: x\r\n@@TESTBED-ERR-END\r\n";
        let p = parse(console);
        assert!(p.l1_ready && p.finished());
        assert_eq!(p.out.as_deref(), Some("Linux boots\nshell\n"));
        assert_eq!(p.status, Some(0));
        assert_eq!(p.err.as_deref(), Some("warn: x\n"));
    }

    #[test]
    fn markers_count_only_at_line_starts() {
        let p = parse("guest says @@TESTBED-ERROR nonsense\n@@TESTBED-L1-READY 1\n");
        assert!(p.error.is_none());
        assert!(
            parse("@@TESTBED-ERROR half a li").error.is_none(),
            "incomplete line"
        );
        let p = parse("@@TESTBED-OUT-BEGIN\nsays @@TESTBED-OUT-END 1\n\n@@TESTBED-OUT-END 0\n@@TESTBED-ERR-BEGIN\n@@TESTBED-ERR-END\n");
        assert_eq!(p.out.as_deref(), Some("says @@TESTBED-OUT-END 1\n"));
        assert_eq!(p.status, Some(0));
    }

    #[test]
    fn exit_samples_are_not_vmm_output() {
        let p = parse(
            "@@TESTBED-OUT-BEGIN\nboot\n@@TESTBED-L2-EXITS vcpu0=1,hlt,0x1\nmore\n\
             @@TESTBED-L1-DMESG [ 80.5] watchdog: BUG: soft lockup\n\
             \n@@TESTBED-OUT-END 0\n@@TESTBED-ERR-BEGIN\n@@TESTBED-ERR-END\n",
        );
        assert_eq!(p.out.as_deref(), Some("boot\nmore\n"));
    }

    #[test]
    fn partial_and_failed() {
        let p = parse("@@TESTBED-L1-READY 2\n@@TESTBED-OUT-BEGIN\nhalf a li");
        assert!(p.l1_ready && !p.finished() && p.out.is_none());
        let p = parse("@@TESTBED-ERROR L1 has no /dev/kvm\n");
        assert!(p.finished());
        assert_eq!(p.error.as_deref(), Some("L1 has no /dev/kvm"));
        let p = parse("@@TESTBED-OUT-BEGIN\nx\n@@TESTBED-OUT-END 137\n@@TESTBED-ERR-BEGIN\n@@TESTBED-ERR-END\n");
        assert_eq!(p.status, Some(137));
        assert_eq!(p.err.as_deref(), Some(""));
    }
}
