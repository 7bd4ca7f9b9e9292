//! Where a migration stream goes and comes from: a TCP or Unix socket,
//! or a command's stdin/stdout (`sh -c CMD`), and the pacing that holds
//! an outgoing stream to `max-bandwidth`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MigrationUri;

/// Why `exec:` is refused in a filtered VMM.
pub const NO_SPAWN: &str = "exec: migration starts a program, which this VMM's seccomp filters \
                            forbid once it runs (use tcp: or unix:, or --seccomp off)";

/// A second handle on an outgoing socket: shutting it down makes a write
/// blocked on a peer that stopped reading fail at once (`migrate_cancel`).
#[derive(Debug)]
pub enum Canceller {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix socket.
    Unix(UnixStream),
    /// `exec:`'s command, by a pidfd (never another process that took its
    /// number once it is reaped).
    Process(OwnedFd),
}

impl Canceller {
    /// Shuts the socket down both ways, or kills the command (its pipe's
    /// writer then fails at once, and waiting for it ends).
    pub fn cancel(&self) {
        let _ = match self {
            Self::Tcp(s) => s.shutdown(Shutdown::Both),
            Self::Unix(s) => s.shutdown(Shutdown::Both),
            Self::Process(pidfd) => {
                // SAFETY: pidfd_send_signal with a pidfd we own, no info
                // struct (NULL) and no flags; it touches no memory of ours.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        };
    }

    /// A canceller for a command just started.
    fn process(child: &Child) -> Option<Self> {
        // SAFETY: pidfd_open of our own child (not reaped yet) with no
        // flags; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` was just returned by pidfd_open and nothing else
        // owns it.
        Some(Self::Process(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// An open outgoing stream.
pub struct Sink {
    /// Where the bytes go.
    pub out: Box<dyn Write + Send>,
    /// `exec:`'s command, waited for at the end.
    pub child: Option<Child>,
    /// A second handle on the socket, if it is one.
    pub canceller: Option<Canceller>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("child", &self.child).finish()
    }
}

fn tcp_addrs(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    // An address needs no resolver (nor its files and sockets).
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![(ip, port).into()]);
    }
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| format!("cannot resolve '{host}': {e}"))
}

/// `sh -c cmd` (`exec:`'s command), with no signal blocked: the VMM's
/// threads block SIGINT, SIGTERM and SIGHUP for its main loop's signalfd,
/// and a child would inherit that mask and could not be ended by them.
fn shell(cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd);
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls may be made: sigemptyset and
    // pthread_sigmask (sigprocmask) are, and it allocates nothing.
    unsafe {
        c.pre_exec(|| {
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            match libc::pthread_sigmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        });
    }
    c
}

/// Connects to (or starts) the destination.
pub fn connect(uri: &MigrationUri, spawn_allowed: bool) -> Result<Sink, String> {
    match uri {
        MigrationUri::Tcp { host, port } => {
            let stream = TcpStream::connect(&tcp_addrs(host, *port)?[..])
                .map_err(|e| format!("Failed to connect to '{host}:{port}': {e}"))?;
            let _ = stream.set_nodelay(true);
            let canceller = stream.try_clone().ok().map(Canceller::Tcp);
            Ok(Sink {
                out: Box::new(stream),
                child: None,
                canceller,
            })
        }
        MigrationUri::Unix(path) => {
            let stream = UnixStream::connect(path)
                .map_err(|e| format!("Failed to connect to '{}': {e}", path.display()))?;
            let canceller = stream.try_clone().ok().map(Canceller::Unix);
            Ok(Sink {
                out: Box::new(stream),
                child: None,
                canceller,
            })
        }
        MigrationUri::Exec(cmd) => {
            if !spawn_allowed {
                return Err(NO_SPAWN.into());
            }
            let mut child = shell(cmd)
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start '{cmd}': {e}"))?;
            let stdin: ChildStdin = child
                .stdin
                .take()
                .ok_or_else(|| format!("'{cmd}' has no stdin"))?;
            // `migrate_cancel` kills a command that stopped reading (its
            // pipe would keep the migration waiting for ever).
            let canceller = Canceller::process(&child);
            Ok(Sink {
                out: Box::new(stdin),
                child: Some(child),
                canceller,
            })
        }
        MigrationUri::File(_) => Err("file: is not a stream".into()),
    }
}

impl Sink {
    /// Flushes, closes the stream and, for `exec:`, waits for the command:
    /// a failed command fails the migration.
    pub fn finish(mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|e| format!("cannot write the stream: {e}"))?;
        drop(self.out);
        if let Some(mut child) = self.child.take() {
            let status = child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("the exec: command ended with {status}"));
            }
        }
        Ok(())
    }
}

/// Where an incoming stream will come from, set up (listening, or the
/// command started) before it is accepted.
#[derive(Debug)]
pub enum Listener {
    /// Listening on TCP.
    Tcp(TcpListener),
    /// Listening on a Unix socket, removed once a peer connects.
    Unix(UnixListener, PathBuf),
    /// `exec:`'s command, its stdout the stream.
    Pipe(ChildStdout, Child),
}

/// Listens at `uri` (or starts its command) for an incoming stream.
pub fn listen(uri: &MigrationUri, spawn_allowed: bool) -> Result<Listener, String> {
    match uri {
        MigrationUri::Tcp { host, port } => {
            let listener = TcpListener::bind(&tcp_addrs(host, *port)?[..])
                .map_err(|e| format!("Failed to bind socket '{host}:{port}': {e}"))?;
            Ok(Listener::Tcp(listener))
        }
        MigrationUri::Unix(path) => {
            // A socket left by an earlier run is in the way; anything else
            // at the path is not ours to remove.
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(path);
            }
            let listener = UnixListener::bind(path)
                .map_err(|e| format!("Failed to bind socket '{}': {e}", path.display()))?;
            Ok(Listener::Unix(listener, path.clone()))
        }
        MigrationUri::Exec(cmd) => {
            if !spawn_allowed {
                return Err(NO_SPAWN.into());
            }
            let mut child = shell(cmd)
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start '{cmd}': {e}"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| format!("'{cmd}' has no stdout"))?;
            Ok(Listener::Pipe(stdout, child))
        }
        MigrationUri::File(_) => Err("file: is not a stream".into()),
    }
}

/// An accepted incoming stream.
pub struct Source {
    /// The bytes.
    pub input: Box<dyn Read + Send>,
    /// `exec:`'s command, reaped at the end.
    pub child: Option<Child>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("child", &self.child)
            .finish()
    }
}

impl Listener {
    /// Waits for the source: one connection (the listener then closes).
    pub fn accept(self) -> Result<Source, String> {
        match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
                Ok(Source {
                    input: Box::new(s),
                    child: None,
                })
            }
            Self::Unix(l, path) => {
                let accepted = l.accept();
                let _ = std::fs::remove_file(&path);
                let (s, _) = accepted.map_err(|e| format!("accept: {e}"))?;
                Ok(Source {
                    input: Box::new(s),
                    child: None,
                })
            }
            Self::Pipe(out, child) => Ok(Source {
                input: Box::new(out),
                child: Some(child),
            }),
        }
    }
}

/// A writer held to `max_bandwidth` bytes/s (read at each write, so a
/// `migrate-set-parameters` during the migration takes effect), failing
/// once `cancel` is set.
#[derive(Debug)]
pub struct Paced<W> {
    inner: W,
    max_bandwidth: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
    /// No pacing (the last copy, with the guest stopped).
    unlimited: bool,
    window: Instant,
    window_bytes: u64,
    window_rate: u64,
}

/// The longest write: pacing and cancellation act between pieces.
const PIECE: usize = 64 << 10;
/// The most a paced stream may send at once, at its start or after being
/// idle, in time at its rate.
const BURST: Duration = Duration::from_millis(100);
/// The longest nap between two pieces, so a cancel is seen soon.
const NAP: Duration = Duration::from_millis(20);

impl<W: Write> Paced<W> {
    /// Paces `inner`.
    pub fn new(inner: W, max_bandwidth: Arc<AtomicU64>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            max_bandwidth,
            cancel,
            unlimited: false,
            window: Instant::now(),
            window_bytes: 0,
            window_rate: 0,
        }
    }

    /// No more pacing.
    pub fn set_unlimited(&mut self) {
        self.unlimited = true;
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn cancelled(&self) -> io::Result<()> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(io::Error::other("cancelled"));
        }
        Ok(())
    }

    fn pace(&mut self) -> io::Result<()> {
        loop {
            self.cancelled()?;
            let rate = self.max_bandwidth.load(Ordering::Relaxed);
            if self.unlimited || rate == 0 {
                return Ok(());
            }
            if rate != self.window_rate {
                // A new rate (the first write, too) starts with one burst
                // to spend, as QEMU's first 100 ms window may send at once.
                self.window = Instant::now()
                    .checked_sub(BURST)
                    .unwrap_or_else(Instant::now);
                self.window_bytes = 0;
                self.window_rate = rate;
            }
            let due = Duration::from_secs_f64(self.window_bytes as f64 / rate as f64);
            let elapsed = self.window.elapsed();
            if elapsed >= due {
                // Time not used (the stream idle between passes) is lost
                // beyond one burst: the rate holds over any stretch.
                let behind = elapsed - due;
                if behind > BURST {
                    self.window += behind - BURST;
                }
                return Ok(());
            }
            std::thread::sleep((due - elapsed).min(NAP));
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pace()?;
        // Pieces of a tenth of a second's worth at most, so that even a
        // small stream is spread over its time.
        let rate = self.max_bandwidth.load(Ordering::Relaxed);
        let piece = if self.unlimited || rate == 0 {
            PIECE
        } else {
            usize::try_from(rate / 10).unwrap_or(PIECE).clamp(1, PIECE)
        };
        let n = self.inner.write(&buf[..buf.len().min(piece)])?;
        self.window_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.cancelled()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_holds_the_rate_and_a_cancel_stops_it() {
        let rate = Arc::new(AtomicU64::new(1 << 20));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut w = Paced::new(Vec::new(), Arc::clone(&rate), Arc::clone(&cancel));
        let t = Instant::now();
        w.write_all(&vec![0u8; 512 << 10]).unwrap();
        // 512 KiB at 1 MiB/s, a burst of 100 ms (two 64 KiB pieces) at
        // once: the last piece waits for ~340 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        // Idle time is not saved up beyond a burst (100 ms at the rate).
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        w.write_all(&vec![0u8; 256 << 10]).unwrap();
        // (Two pieces go at once, the third waits: ~100 ms, never 0.)
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
        rate.store(0, Ordering::Relaxed);
        let t = Instant::now();
        w.write_all(&vec![0u8; 4 << 20]).unwrap();
        assert!(t.elapsed() < Duration::from_millis(150));
        cancel.store(true, Ordering::SeqCst);
        assert!(w.write_all(b"x").is_err());
        assert_eq!(w.into_inner().len(), (768 << 10) + (4 << 20));
    }

    #[test]
    fn exec_is_refused_without_spawning() {
        let uri = MigrationUri::Exec("cat".into());
        assert_eq!(connect(&uri, false).unwrap_err(), NO_SPAWN);
        assert_eq!(listen(&uri, false).unwrap_err(), NO_SPAWN);
    }
}
