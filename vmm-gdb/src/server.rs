//! The stub's thread: one client at a time, as QEMU's gdb chardev.
//!
//! On a terminal device (`--gdb /dev/ttyS1`) there is no connection to
//! accept: a session starts when a packet (`$`) arrives, bytes before it
//! (gdb's `+` acknowledgements of a past session, line noise) being
//! dropped, and ends when gdb detaches or kills; the next packet starts
//! the next.
//!
//! For each client: stop the machine ([`DebugMachine::attach`]), serve the
//! gdb remote protocol with gdbstub until the client detaches, kills or
//! goes away, then [`DebugMachine::detach`] (breakpoints out of guest
//! memory, debugging off, the guest runs on) and wait for the next one.
//! While the guest runs, the thread polls the client's socket (Ctrl-C, or
//! any packet) and the machine's stop eventfd together, so neither waits
//! on the other. It never runs on a vCPU thread or the main loop.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::{DisconnectReason, GdbStub};

use crate::address::GdbAddress;
use crate::target::{StubLoop, VmTarget};
use crate::{DebugMachine, StopReceiver};

/// Listening for gdb clients.
#[derive(Debug)]
pub enum GdbListener {
    /// On a TCP port.
    Tcp(TcpListener),
    /// On a Unix socket; the path is removed when the listener drops,
    /// unless a stub's thread served it (see [`spawn`]).
    Unix(UnixListener, PathBuf),
    /// On a terminal device, opened non-blocking and in raw mode.
    Device(Arc<File>, PathBuf),
}

/// A `--gdb` address that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for gdb on {address}")]
pub struct BindError {
    address: String,
    #[source]
    source: std::io::Error,
}

impl GdbListener {
    /// Listens on `address` now, so that a port in use or a bad host fails
    /// at start-up.
    pub fn bind(address: &GdbAddress) -> Result<Self, BindError> {
        let fail = |source| BindError {
            address: address.to_string(),
            source,
        };
        match address {
            GdbAddress::Tcp { host, port } => {
                let host = if host.is_empty() { "0.0.0.0" } else { host };
                let addrs: Vec<_> = (host, *port).to_socket_addrs().map_err(fail)?.collect();
                TcpListener::bind(&addrs[..]).map(Self::Tcp).map_err(fail)
            }
            GdbAddress::Unix(path) => UnixListener::bind(path)
                .map(|l| Self::Unix(l, path.clone()))
                .map_err(fail),
            GdbAddress::Device(path) => open_terminal(path)
                .map(|f| Self::Device(Arc::new(f), path.clone()))
                .map_err(fail),
        }
    }

    /// The TCP port listened on (the one picked for port 0).
    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Self::Unix(..) | Self::Device(..) => None,
        }
    }

    fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept()?;
                log::info!("gdb: client {peer} attached");
                // Packets are small and answered one by one.
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
            Self::Unix(l, _) => {
                let (s, _) = l.accept()?;
                log::info!("gdb: a client attached");
                Ok(Conn::Unix(s))
            }
            Self::Device(f, path) => {
                wait_for_packet(f)?;
                log::info!("gdb: a client spoke on {}", path.display());
                Ok(Conn::Device {
                    file: Arc::clone(f),
                    pending: Some(b'$'),
                })
            }
        }
    }
}

/// Opens a terminal for the stub: read-write, non-blocking (no wait for a
/// modem's carrier), not our controlling terminal, in raw mode (bytes
/// through unchanged: no echo, no line editing, no CR/LF translation),
/// the modem lines ignored. Anything but a terminal is refused.
fn open_terminal(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_char_device() {
        return Err(std::io::Error::other("not a character device"));
    }
    let fd = file.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open descriptor and a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTTY) {
            return Err(std::io::Error::other("not a terminal"));
        }
        return Err(e);
    }
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cflag |= libc::CLOCAL | libc::CREAD;
    // SAFETY: a valid open descriptor and a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Waits on `fd` for `events` (no time limit; an interrupted wait goes on).
fn wait_fd(fd: RawFd, events: libc::c_short) -> std::io::Result<()> {
    loop {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads the terminal until a packet starts (`$`, consumed: the caller
/// puts it back), dropping what comes before it.
fn wait_for_packet(file: &File) -> std::io::Result<()> {
    let mut reader = file;
    let mut b = [0u8];
    loop {
        match reader.read(&mut b) {
            Ok(1) if b[0] == b'$' => return Ok(()),
            Ok(1) => log::debug!("gdb: dropped {:#04x} between sessions", b[0]),
            // A hung-up line: wait a little and look again.
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_fd(file.as_raw_fd(), libc::POLLIN)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Drop for GdbListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            if !path.as_os_str().is_empty() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A client's connection: blocking reads and writes, polled with the stop
/// eventfd while the guest runs. A terminal is non-blocking underneath
/// (reads and writes wait with `poll`), with the byte read ahead (the
/// `$` that started the session, or a peek) kept in `pending`.
#[derive(Debug)]
pub(crate) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    Device {
        file: Arc<File>,
        pending: Option<u8>,
    },
}

impl Conn {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Self::Tcp(s) => s,
            Self::Unix(s) => s,
            Self::Device { file, .. } => file,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
            Self::Device { file, .. } => file.as_raw_fd(),
        }
    }

    /// Whether a byte was read ahead (polling the descriptor would not
    /// show it).
    pub(crate) fn has_buffered(&self) -> bool {
        matches!(
            self,
            Self::Device {
                pending: Some(_),
                ..
            }
        )
    }

    /// One byte from a terminal, without waiting (`None`: nothing yet).
    fn device_read_now(file: &File) -> std::io::Result<Option<u8>> {
        let mut reader = file;
        let mut b = [0u8];
        loop {
            return match reader.read(&mut b) {
                Ok(1) => Ok(Some(b[0])),
                Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Writes all of `buf` to a terminal, waiting while its buffer is full.
    fn device_write_all(file: &File, mut buf: &[u8]) -> std::io::Result<()> {
        let mut writer = file;
        while !buf.is_empty() {
            match writer.write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_fd(file.as_raw_fd(), libc::POLLOUT)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        match self {
            Self::Device { file, .. } => Self::device_write_all(file, buf),
            _ => self.stream().write_all(buf),
        }
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.stream().flush()
    }
}

impl ConnectionExt for Conn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        if let Self::Device { file, pending } = self {
            if let Some(b) = pending.take() {
                return Ok(b);
            }
            loop {
                if let Some(b) = Self::device_read_now(file)? {
                    return Ok(b);
                }
                wait_fd(file.as_raw_fd(), libc::POLLIN)?;
            }
        }
        let mut b = [0u8];
        self.stream().read_exact(&mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if let Self::Device { file, pending } = self {
            if pending.is_none() {
                *pending = Self::device_read_now(file)?;
            }
            return Ok(*pending);
        }
        let mut b = [0u8];
        // SAFETY: `b` is a valid one-byte buffer for the duration of the
        // call, and the descriptor is this connection's open socket.
        let n = unsafe {
            libc::recv(
                self.fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => Ok(Some(b[0])),
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Runs on the stub's thread before it accepts anything (the binary's
/// seccomp filter).
pub type ThreadStart = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

/// Starts the stub's thread on `listener`, serving `machine`, whose stops
/// arrive on `stops`. A Unix socket's path is then the caller's to remove.
pub fn spawn<M: DebugMachine + 'static>(
    listener: GdbListener,
    machine: M,
    stops: StopReceiver,
    on_start: Option<ThreadStart>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gdb".into())
        .spawn(move || {
            if let Some(start) = on_start {
                if let Err(e) = start() {
                    log::error!("gdb: the stub's thread cannot start: {e}");
                    return;
                }
            }
            serve(&listener, machine, stops);
            // The listener drops on this thread, whose seccomp list has no
            // `unlink` (a client's `k` ended the VMM with status 159 here):
            // the path is left to whoever made the stub, who outlives it
            // (the binary removes it at exit).
            listener.keep_path();
        })
}

impl GdbListener {
    /// Leaves a Unix socket's path in place when the listener drops.
    fn keep_path(mut self) {
        if let Self::Unix(_, path) = &mut self {
            *path = PathBuf::new();
        }
    }
}

/// Accepts clients one after another until the machine is gone.
fn serve<M: DebugMachine>(listener: &GdbListener, machine: M, stops: StopReceiver) {
    let mut target = match VmTarget::new(machine, stops) {
        Ok(t) => t,
        Err(e) => {
            log::error!("gdb: {e}");
            return;
        }
    };
    loop {
        let conn = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("gdb: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        match session(&mut target, conn) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => log::warn!("gdb: {e}"),
        }
    }
}

/// One client, from attach to detach: whether to wait for another.
fn session<M: DebugMachine>(
    target: &mut VmTarget<M>,
    conn: Conn,
) -> Result<bool, crate::MachineError> {
    target.attach()?;
    let result = GdbStub::new(conn).run_blocking::<StubLoop<M>>(target);
    let again = match result {
        Ok(DisconnectReason::Kill) => {
            log::info!("gdb: the client killed the target");
            target.kill();
            false
        }
        Ok(reason) => {
            log::info!("gdb: the client went ({reason:?})");
            true
        }
        Err(e) => {
            log::warn!("gdb: the session ended: {e}");
            true
        }
    };
    let gone = target.detach();
    Ok(again && !gone)
}
