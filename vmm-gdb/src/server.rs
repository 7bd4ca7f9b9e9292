//! The stub's thread: one client at a time, as QEMU's gdb chardev.
//!
//! For each client: stop the machine ([`DebugMachine::attach`]), serve the
//! gdb remote protocol with gdbstub until the client detaches, kills or
//! goes away, then [`DebugMachine::detach`] (breakpoints out of guest
//! memory, debugging off, the guest runs on) and wait for the next one.
//! While the guest runs, the thread polls the client's socket (Ctrl-C, or
//! any packet) and the machine's stop eventfd together, so neither waits
//! on the other. It never runs on a vCPU thread or the main loop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

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
    /// On a Unix socket; the path is removed when the listener drops.
    Unix(UnixListener, PathBuf),
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
        }
    }

    /// The TCP port listened on (the one picked for port 0).
    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Self::Unix(..) => None,
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
        }
    }
}

impl Drop for GdbListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A client's connection: blocking reads and writes, polled with the stop
/// eventfd while the guest runs.
#[derive(Debug)]
pub(crate) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Self::Tcp(s) => s,
            Self::Unix(s) => s,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.stream().write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.stream().write_all(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.stream().flush()
    }
}

impl ConnectionExt for Conn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        let mut b = [0u8];
        self.stream().read_exact(&mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
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
/// arrive on `stops`.
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
        })
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
