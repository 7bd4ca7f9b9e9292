//! L1's heartbeat: a byte on a serial port of its own every few seconds,
//! so that a hung L1 is named within a minute instead of at the job's time
//! limit.
//!
//! A batch L1's console carries the guest's output, which may be silent
//! for minutes (a long download, a guest waiting on the host), so its
//! silence says nothing; and a heartbeat on the console could split a
//! guest's marker line. So L1 writes its beat to its third serial port
//! ([`TTY`]), which QEMU appends to a host file; the test bed watches that
//! file's length. (Debian's cloud kernel has no `/dev/port`, so a debug
//! port is out of reach of a shell.) The loop runs in L1's user space,
//! from the start of the job script: a beat that stops means L1 no longer
//! runs its processes (every L1 hang seen so far had both L1 CPUs spinning
//! in L1's kernel, deaf to key presses and NMIs; docs/nested/README.md).
//!
//! An interactive L1 (a nested `cargo xtask run`) beats too, on its fourth
//! port ([`INTERACTIVE_TTY`]), which carries the VMM's exit status after
//! the beats; an L1 that stops beating there is ended as Ctrl-A x would
//! end it (`qemu::run_interactive`), so that the user is told why the
//! terminal went still.

use std::path::Path;
use std::time::{Duration, Instant};

/// How often L1 beats, in seconds.
pub const INTERVAL_S: u32 = 5;

/// L1's serial port for the beat: the third (`ttyS1` is the job's
/// [`crate::Job::l1_serial_socket`], or nothing).
pub const TTY: &str = "/dev/ttyS2";

/// How long L1 may go without a beat, once it has beaten, before it counts
/// as hung: twelve beats missed. Under TCG on a loaded two-core host L1's
/// processes are slow, but a `sleep 5` and a byte written never took a
/// minute.
pub const LIMIT: Duration = Duration::from_secs(60);

/// How long L1 may take to its first beat (QEMU's start, L1's kernel,
/// `/init` loading KVM): L1 is ready in 3 to 30 s here, and the
/// interactive test bed gives its own "L1 up" line 150 s too.
pub const FIRST_LIMIT: Duration = Duration::from_secs(150);

/// An interactive L1's port for the beat: the fourth, which also carries
/// the VMM's exit status at the end (`ttyS1` and `ttyS2` are the
/// [`crate::Bridges`]' QMP socket and serial file). The status is a
/// number after the beats' dots.
pub const INTERACTIVE_TTY: &str = "/dev/ttyS3";

/// The job script's first line: the beat, in the background, on [`TTY`]
/// opened once (raw, so that nothing is added to the byte).
pub fn l1_loop() -> String {
    loop_on(TTY)
}

/// An interactive job script's first line: the beat on
/// [`INTERACTIVE_TTY`], its process in `$heartbeat_pid` (stopped before
/// the status is written).
pub fn interactive_loop() -> String {
    loop_on(INTERACTIVE_TTY) + "heartbeat_pid=$!\n"
}

fn loop_on(tty: &str) -> String {
    format!(
        "( stty -F {tty} raw -echo 2>/dev/null; exec 3>{tty}; \
         while :; do printf . >&3; sleep {INTERVAL_S}; done ) &\n"
    )
}

/// QEMU's serial-port arguments after the console (`ttyS0`): `ttyS1` is
/// the job's if it has one (`serial2`, added by the caller), else nothing
/// (`-serial null`); then [`TTY`] appending to `file`.
pub fn qemu_args(file: &Path, serial2: bool) -> Vec<String> {
    let mut a = Vec::new();
    if !serial2 {
        a.extend(["-serial".into(), "null".into()]);
    }
    a.extend([
        "-chardev".into(),
        format!(
            "file,id=heartbeat,path={}",
            file.display().to_string().replace(',', ",,")
        ),
        "-serial".into(),
        "chardev:heartbeat".into(),
    ]);
    a
}

/// The limits a [`Watch`] holds L1 to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the start to the first beat.
    pub first: Duration,
    /// Between beats.
    pub between: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            first: FIRST_LIMIT,
            between: LIMIT,
        }
    }
}

/// Watches the heartbeat file's length.
#[derive(Debug)]
pub struct Watch {
    limits: Limits,
    start: Instant,
    beats: u64,
    last_beat: Option<Instant>,
}

impl Watch {
    /// A watch starting now.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            start: Instant::now(),
            beats: 0,
            last_beat: None,
        }
    }

    /// Takes the file's length `len` at `now`; the limit L1 went past
    /// without a beat, if it did.
    pub fn check(&mut self, len: u64, now: Instant) -> Option<Duration> {
        if len > self.beats {
            self.beats = len;
            self.last_beat = Some(now);
            return None;
        }
        match self.last_beat {
            None => {
                (now.duration_since(self.start) > self.limits.first).then_some(self.limits.first)
            }
            Some(at) => {
                (now.duration_since(at) > self.limits.between).then_some(self.limits.between)
            }
        }
    }

    /// How many beats came (bytes in the file).
    pub fn beats(&self) -> u64 {
        self.beats
    }
}

/// The length of the heartbeat file (0 before QEMU made it).
pub fn file_len(file: &Path) -> u64 {
    std::fs::metadata(file).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_keep_l1_alive_and_their_end_is_named() {
        let limits = Limits {
            first: Duration::from_secs(150),
            between: Duration::from_secs(60),
        };
        let mut w = Watch::new(limits);
        let t0 = w.start;
        let s = Duration::from_secs;
        // L1's boot: no beat yet, within the first limit.
        assert_eq!(w.check(0, t0 + s(100)), None);
        assert_eq!(w.check(0, t0 + s(150)), None);
        assert_eq!(w.check(1, t0 + s(151)), None);
        assert_eq!(w.beats(), 1);
        // Beats keep it going, however long the job.
        for i in 2..100 {
            assert_eq!(w.check(i, t0 + s(151 + 5 * i)), None);
        }
        let last = t0 + s(151 + 5 * 99);
        assert_eq!(w.check(99, last + s(60)), None);
        assert_eq!(w.check(99, last + s(61)), Some(s(60)));
        // A late beat brings it back.
        assert_eq!(w.check(100, last + s(62)), None);
    }

    #[test]
    fn an_l1_that_never_beats_is_named_after_the_first_limit() {
        let limits = Limits {
            first: Duration::from_secs(150),
            between: Duration::from_secs(60),
        };
        let mut w = Watch::new(limits);
        let t0 = w.start;
        assert_eq!(w.check(0, t0 + Duration::from_secs(149)), None);
        assert_eq!(
            w.check(0, t0 + Duration::from_secs(151)),
            Some(Duration::from_secs(150))
        );
    }

    #[test]
    fn the_l1_loop_and_qemu_arguments_agree_on_the_port() {
        assert!(l1_loop().contains("exec 3>/dev/ttyS2;"), "{}", l1_loop());
        assert!(l1_loop().trim_end().ends_with('&'));
        // Without the job's ttyS1 a null port keeps the beat on ttyS2.
        assert_eq!(
            qemu_args(Path::new("/tmp/a,b"), false).join(" "),
            "-serial null -chardev file,id=heartbeat,path=/tmp/a,,b -serial chardev:heartbeat"
        );
        assert_eq!(
            qemu_args(Path::new("/tmp/h"), true).join(" "),
            "-chardev file,id=heartbeat,path=/tmp/h -serial chardev:heartbeat"
        );
        assert_eq!(
            file_len(Path::new("/nonexistent/heartbeat")),
            0,
            "no file yet: no beat"
        );
    }
}
