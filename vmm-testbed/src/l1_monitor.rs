//! Where L1's own CPUs are, asked of L1's QEMU from the host.
//!
//! A nested run can hang with L1 itself gone quiet: no line on its
//! console, no exit sample, no soft-lockup report (both L1 CPUs lost: one
//! held inside L2 by TCG's SVM fault, the other spinning on it with
//! interrupts off, say). Nothing inside L1 can report that. So a batch L1
//! runs with a QMP socket (see [`qmp_args`]), and a run that ends at its
//! time limit or silence limit first asks QEMU for `info registers -a`
//! (QMP `human-monitor-command`) and adds one line to L1's console:
//! `@@TESTBED-L1-CPUS cpu0=RIP,CPL,HLT ...` ([`CPUS_MARKER`]), with each
//! RIP inside this L1's `__svm_vcpu_run` marked (`@vmrun+0x..`). Under
//! TCG, a CPU running L2 shows L2's registers.
//!
//! Then it presses a key on L1's keyboard ([`press_key`]) and watches
//! L1's console: an L1 asleep because TCG lost its timer interrupt wakes
//! on it and goes on printing ([`POKE_MARKER`] says so). Then it sends L1
//! an NMI (QMP `inject-nmi`, [`inject_nmi`]): L1's kernel
//! panics on an NMI nobody claims (`unknown_nmi_panic` in
//! [`crate::qemu::L1_CMDLINE`]) and, its console verbose for the panic,
//! prints the backtrace of every CPU and the state of every task (what
//! each of the VMM's threads waits on), then its whole log. A silent L1
//! whose CPUs are all halted (seen: a lost wake-up, or a task blocked for
//! ever) and one whose CPU spins with interrupts on both answer; only a
//! CPU that TCG keeps inside L2, or one spinning with NMIs blocked, does
//! not. The run records [`NMI_MARKER`] either way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::l2_exits;

/// L1's console line with its CPUs' registers, added by the test bed.
pub const CPUS_MARKER: &str = "@@TESTBED-L1-CPUS";

/// How long each QMP exchange may take (a hung L1 leaves QEMU's main loop
/// answering; a QEMU that does not answer is left alone).
const ANSWER: Duration = Duration::from_secs(5);

/// QEMU's arguments for a QMP server at `path` that does not wait for a
/// client.
pub fn qmp_args(path: &Path) -> [String; 2] {
    [
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", path.display()),
    ]
}

/// A fresh socket path in the temp folder for this process and thread.
pub fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "vmm-testbed-l1-qmp-{}-{:?}.sock",
        std::process::id(),
        std::thread::current().id()
    ))
}

/// Asks QEMU at `socket` for `info registers -a`; the [`CPUS_MARKER`] line
/// for `console` (whose `__svm_vcpu_run` marks RIPs), or why not.
pub fn l1_cpus_line(socket: &Path, console: &str) -> String {
    match info_registers(socket) {
        Ok(text) => cpus_line(&text, l2_exits::l1_svm_vcpu_run(console)),
        Err(e) => format!("{CPUS_MARKER} none: QEMU's monitor did not answer: {e}"),
    }
}

/// L1's console line after the NMI, added by the test bed.
pub const NMI_MARKER: &str = "@@TESTBED-L1-NMI";

/// Sends L1 an NMI through QEMU at `socket` (QMP `inject-nmi`, to every
/// L1 CPU); the [`NMI_MARKER`] line that says whether it went.
pub fn inject_nmi(socket: &Path) -> String {
    let answer = exchange(socket, "{\"execute\":\"inject-nmi\"}");
    answer_line(NMI_MARKER, &answer, || {
        "sent: L1 panics on it (unknown_nmi_panic) and prints each CPU's backtrace and each \
         task's state above"
            .to_owned()
    })
}

/// Whether `line` (from [`inject_nmi`]) says the NMI went.
pub fn nmi_sent(line: &str) -> bool {
    line.strip_prefix(NMI_MARKER)
        .is_some_and(|rest| rest.starts_with(" sent:"))
}

/// `marker` and what came of a command: `done` when QEMU answered with a
/// return, else the refusal or why there was no answer.
fn answer_line(
    marker: &str,
    answer: &std::io::Result<String>,
    done: impl FnOnce() -> String,
) -> String {
    match answer {
        Ok(a) if a.contains("\"return\"") => format!("{marker} {}", done()),
        Ok(a) => format!("{marker} refused: {}", a.trim()),
        Err(e) => format!("{marker} not sent: QEMU's monitor did not answer: {e}"),
    }
}

/// L1's console line after the key press, added by the test bed.
pub const POKE_MARKER: &str = "@@TESTBED-L1-POKE";

/// Presses a key on L1's keyboard (QMP `send-key`): an interrupt that
/// wakes a halted L1 CPU. An L1 asleep for want of a timer interrupt
/// (TCG lost its one-shot wake-up) comes back on it.
pub fn press_key(socket: &Path) -> std::io::Result<String> {
    exchange(
        socket,
        "{\"execute\":\"send-key\",\"arguments\":{\"keys\":[{\"type\":\"qcode\",\"data\":\"shift\"}]}}",
    )
}

/// The [`POKE_MARKER`] line: how much L1's console grew in `waited` after
/// the key press (`answer`: QEMU's, or why there was none).
pub fn poke_line(answer: &std::io::Result<String>, grew: usize, waited: Duration) -> String {
    answer_line(POKE_MARKER, answer, || {
        if grew > 0 {
            format!(
                "a key press woke L1: its console grew {grew} bytes in {} s \
                 (L1 was asleep, its timer interrupt lost)",
                waited.as_secs()
            )
        } else {
            format!("a key press changed nothing in {} s", waited.as_secs())
        }
    })
}

fn info_registers(socket: &Path) -> std::io::Result<String> {
    exchange(
        socket,
        "{\"execute\":\"human-monitor-command\",\
         \"arguments\":{\"command-line\":\"info registers -a\"}}",
    )
}

/// One QMP command on a fresh connection to `socket` (after the greeting
/// and `qmp_capabilities`): QEMU's answer line.
fn exchange(socket: &Path, command: &str) -> std::io::Result<String> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER))?;
    stream.set_write_timeout(Some(ANSWER))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    read_return(&mut reader)?;
    w.write_all(format!("{command}\n").as_bytes())?;
    read_return(&mut reader)
}

/// The next line with a `"return"` (events before it skipped).
fn read_return(reader: &mut impl BufRead) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.contains("\"return\"") || line.contains("\"error\"") {
            return Ok(line);
        }
    }
}

/// The [`CPUS_MARKER`] line from QEMU's `info registers -a` text (raw or
/// JSON-escaped): each `CPU#N`'s RIP, CPL and HLT, a RIP within
/// [`l2_exits::SVM_WINDOW`] of `svm` marked as at L1's VMRUN code.
pub fn cpus_line(text: &str, svm: Option<u64>) -> String {
    let mut line = String::from(CPUS_MARKER);
    let mut cpus = text.split("CPU#").skip(1).peekable();
    if cpus.peek().is_none() {
        line.push_str(" none: no CPU in QEMU's answer");
        return line;
    }
    for cpu in cpus {
        let n: String = cpu.chars().take_while(char::is_ascii_digit).collect();
        let field = |name: &str| {
            let at = cpu.find(name)? + name.len();
            Some(
                cpu[at..]
                    .chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect::<String>(),
            )
            .filter(|v| !v.is_empty())
        };
        let rip = field("RIP=").unwrap_or_else(|| "?".into());
        let vmrun = u64::from_str_radix(&rip, 16)
            .ok()
            .zip(svm)
            .and_then(|(r, s)| r.checked_sub(s))
            .filter(|&o| o < l2_exits::SVM_WINDOW)
            .map(|o| format!("@vmrun+{o:#x}"))
            .unwrap_or_default();
        line.push_str(&format!(
            " cpu{n}={rip}{vmrun},cpl{},hlt{}",
            field("CPL=").unwrap_or_else(|| "?".into()),
            field("HLT=").unwrap_or_else(|| "?".into())
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "{\"return\": \"\\r\\nCPU#0\\r\\nRAX=0000000000000000 \
        RBX=ffff888003c5c000\\r\\nRIP=ffffffffc0377dcc RFL=00000046 [---Z-P-] CPL=0 II=0 \
        A20=1 SMM=0 HLT=0\\r\\n\\r\\nCPU#1\\r\\nRIP=ffffffff81c3e0c4 RFL=00000246 [---Z-P-] \
        CPL=0 II=0 A20=1 SMM=0 HLT=1\\r\\n\"}";

    #[test]
    fn each_cpu_and_a_rip_at_l1s_vmrun() {
        assert_eq!(
            cpus_line(DUMP, Some(0xffff_ffff_c037_7d30)),
            "@@TESTBED-L1-CPUS cpu0=ffffffffc0377dcc@vmrun+0x9c,cpl0,hlt0 \
             cpu1=ffffffff81c3e0c4,cpl0,hlt1"
        );
        // Without the symbol, nothing is marked.
        assert!(!cpus_line(DUMP, None).contains("@vmrun"));
    }

    #[test]
    fn an_nmi_went_only_when_qemu_answered() {
        let answered: std::io::Result<String> = Ok("{\"return\": {}}".into());
        let sent = answer_line(NMI_MARKER, &answered, || "sent: L1 panics".into());
        assert!(nmi_sent(&sent), "{sent}");
        let gone: std::io::Result<String> = Err(std::io::Error::other("no socket"));
        let not = answer_line(NMI_MARKER, &gone, || "sent: L1 panics".into());
        assert!(!nmi_sent(&not), "{not}");
        assert!(!nmi_sent("@@TESTBED-L1-NMI refused: {}"));
    }

    #[test]
    fn the_key_press_line() {
        let ok: std::io::Result<String> = Ok("{\"return\": {}}".into());
        let ten = Duration::from_secs(10);
        assert_eq!(
            poke_line(&ok, 23118, ten),
            "@@TESTBED-L1-POKE a key press woke L1: its console grew 23118 bytes in 10 s \
             (L1 was asleep, its timer interrupt lost)"
        );
        assert_eq!(
            poke_line(&ok, 0, ten),
            "@@TESTBED-L1-POKE a key press changed nothing in 10 s"
        );
        let refused: std::io::Result<String> = Ok("{\"error\": {}}".into());
        assert!(poke_line(&refused, 5, ten).contains("refused"));
        let gone = press_key(Path::new("/nonexistent/qmp.sock"));
        assert!(poke_line(&gone, 0, ten).contains("not sent"));
    }

    #[test]
    fn odd_answers_say_so() {
        assert_eq!(
            cpus_line("{\"error\": {}}", None),
            "@@TESTBED-L1-CPUS none: no CPU in QEMU's answer"
        );
        assert_eq!(
            cpus_line("CPU#3 RIP=zz CPL=", Some(1)),
            "@@TESTBED-L1-CPUS cpu3=?,cpl?,hlt?"
        );
        let gone = l1_cpus_line(Path::new("/nonexistent/qmp.sock"), "");
        assert!(gone.starts_with("@@TESTBED-L1-CPUS none: QEMU's monitor did not answer"));
    }

    /// The exchange against a fake QEMU on a socket.
    #[test]
    fn asks_qemu_over_qmp() {
        let path =
            std::env::temp_dir().join(format!("vmm-testbed-fake-qmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fake = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"{\"QMP\": {}}\n").unwrap();
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(l.contains("qmp_capabilities"), "{l}");
            w.write_all(b"{\"return\": {}}\n").unwrap();
            l.clear();
            r.read_line(&mut l).unwrap();
            assert!(l.contains("info registers -a"), "{l}");
            w.write_all(b"{\"event\": \"X\"}\n").unwrap();
            w.write_all(format!("{DUMP}\n").as_bytes()).unwrap();
        });
        let line = l1_cpus_line(&path, "@@TESTBED-L1-SVM ffffffffc0377d30\n");
        fake.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(line.contains("cpu0=ffffffffc0377dcc@vmrun+0x9c"), "{line}");
        assert!(line.contains("cpu1=ffffffff81c3e0c4,cpl0,hlt1"), "{line}");
    }
}
