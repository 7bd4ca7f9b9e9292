//! virtio-blk on a raw image file (or a host block device).
//!
//! Each request goes through two steps on the device's worker thread:
//! [`request::parse`] turns the descriptor chain into a plain
//! [`request::Request`] (or a [`request::RequestError`] that becomes
//! VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP) before anything touches the
//! image; then the image is read or written with `preadv`/`pwritev` straight
//! into guest memory (through an aligned bounce buffer with `cache=none`,
//! i.e. `O_DIRECT`, when the guest's buffers are not aligned), flushed with
//! `fdatasync`, and discarded or zeroed with `fallocate`.
//!
//! # Host I/O errors
//!
//! An error from the host (EIO, ENOSPC, ...) is handled as QEMU's
//! `rerror`/`werror` say ([`ErrorPolicy`]): `report` fails the request
//! with VIRTIO_BLK_S_IOERR, `ignore` completes it as if it had worked,
//! `stop` holds it (popped, not completed, the queue no longer processed)
//! and `enospc` stops on ENOSPC and reports anything else. Every host
//! error is told to the machine through [`BlockEvents::io_error`] with the
//! action taken, from the worker thread. A held request is tried again
//! when the machine calls [`BlockHandle::retry`] (QEMU: `cont`); a device
//! reset drops it.

mod device;
mod io;
pub mod request;
mod uring;
mod worker;

use std::path::PathBuf;

pub use device::{BlockHandle, VirtioBlk};

/// Bytes per sector: virtio-blk counts in 512-byte sectors whatever the
/// block size.
pub const SECTOR_SIZE: u64 = 512;
/// The device ID string's length (VIRTIO_BLK_T_GET_ID).
pub const ID_BYTES: usize = 20;
/// The queue size offered unless the configuration says otherwise.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// How the image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Through the host's page cache; flush requests are `fdatasync`.
    #[default]
    Writeback,
    /// `O_DIRECT`: around the host's page cache (flush still syncs
    /// metadata and the device's cache).
    None,
}

/// How requests reach the image (QEMU's `aio=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aio {
    /// One request at a time on the disk's worker thread, with
    /// `preadv`/`pwritev`/`fdatasync`.
    Threads,
    /// Reads, writes and flushes through an io_uring, up to the queue's
    /// size in flight; completed in the order the host finishes them. A
    /// host without io_uring is an error.
    IoUring,
    /// The default (no `aio=`): [`Aio::IoUring`] where the host has
    /// io_uring, else [`Aio::Threads`] with a one-line warning.
    #[default]
    Auto,
}

/// What to do about a host I/O error (QEMU's `BlockdevOnError` without
/// `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Fail the request: VIRTIO_BLK_S_IOERR.
    Report,
    /// Complete the request as if it had worked.
    Ignore,
    /// Hold the request and tell the machine (which stops the guest).
    Stop,
    /// Stop on ENOSPC, report anything else.
    Enospc,
}

/// What was done about one host I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOutcome {
    /// The request failed with VIRTIO_BLK_S_IOERR.
    Reported,
    /// The request completed as VIRTIO_BLK_S_OK.
    Ignored,
    /// The request is held until [`BlockHandle::retry`].
    Stopped,
}

impl ErrorAction {
    /// The outcome for an error with `errno`.
    pub fn outcome(self, errno: i32) -> ErrorOutcome {
        match self {
            Self::Report => ErrorOutcome::Reported,
            Self::Ignore => ErrorOutcome::Ignored,
            Self::Stop => ErrorOutcome::Stopped,
            Self::Enospc if errno == libc::ENOSPC => ErrorOutcome::Stopped,
            Self::Enospc => ErrorOutcome::Reported,
        }
    }
}

/// The actions for read errors and for write errors (writes, flushes,
/// discards, write-zeroes), QEMU's `rerror` and `werror`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// `rerror`.
    pub read: ErrorAction,
    /// `werror`.
    pub write: ErrorAction,
}

impl Default for ErrorPolicy {
    /// QEMU's defaults: `rerror=report`, `werror=enospc`.
    fn default() -> Self {
        Self {
            read: ErrorAction::Report,
            write: ErrorAction::Enospc,
        }
    }
}

/// A disk as the command line describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image (a regular file or a block device).
    pub path: PathBuf,
    /// Opened read-only and offered with VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Page cache or `O_DIRECT`.
    pub cache: CacheMode,
    /// The ID string (GET_ID): printable ASCII, at most 20 bytes.
    pub serial: Option<String>,
    /// Host I/O error handling.
    pub errors: ErrorPolicy,
    /// The request queue's size: a power of two from 4 to 32768.
    pub queue_size: u16,
    /// How requests reach the image.
    pub aio: Aio,
    /// Whether the image is locked at open (an incoming migration's
    /// destination locks it later, with [`BlockHandle::lock_image`]).
    pub lock: bool,
}

impl BlockConfig {
    /// `path`, writable, write-back cache, no serial, QEMU's error policy.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            cache: CacheMode::Writeback,
            serial: None,
            errors: ErrorPolicy::default(),
            queue_size: DEFAULT_QUEUE_SIZE,
            aio: Aio::default(),
            lock: true,
        }
    }
}

/// Why a disk could not be set up (the user's configuration or the host).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file or a block device.
    #[error("{0} is neither a regular file nor a block device")]
    NotADisk(PathBuf),
    /// Its size cannot be found.
    #[error("cannot find the size of {path}: {source}")]
    Size {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another user (this or another VM) has it open.
    #[error("{0} is in use (locked by another user)")]
    Locked(PathBuf),
    /// A serial that is too long or not printable ASCII.
    #[error("serial {0:?} must be printable ASCII of at most 20 bytes")]
    Serial(String),
    /// A queue size that is not a power of two from 4 to 32768.
    #[error("queue size {0} must be a power of two from 4 to 32768")]
    QueueSize(u16),
    /// `aio=io_uring` on a host that cannot give one.
    #[error("aio=io_uring: {0} (use aio=threads)")]
    IoUring(String),
    /// No eventfd for the worker.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Which kind of host operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A read (VIRTIO_BLK_T_IN).
    Read,
    /// A write (VIRTIO_BLK_T_OUT).
    Write,
    /// A flush.
    Flush,
    /// A discard.
    Discard,
    /// A write-zeroes.
    WriteZeroes,
}

impl Operation {
    /// Whether `rerror` (else `werror`) applies.
    pub fn is_read(self) -> bool {
        self == Self::Read
    }
}

/// A host I/O error, as the machine hears of it (QMP's `BLOCK_IO_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoErrorEvent {
    /// What failed.
    pub operation: Operation,
    /// The host's errno.
    pub errno: i32,
    /// Whether it was ENOSPC (QMP's `nospace`).
    pub nospace: bool,
    /// What the device did about it.
    pub outcome: ErrorOutcome,
    /// The first sector concerned (0 for a flush).
    pub sector: u64,
    /// How many sectors (0 for a flush).
    pub sectors: u64,
}

/// The machine's ear for a disk's events. Called on the device's worker
/// thread: it must not block, and must not reset the device from inside
/// (it may call [`BlockHandle::retry`]).
pub trait BlockEvents: Send + Sync {
    /// A host I/O error happened and was handled as `event.outcome` says.
    fn io_error(&self, event: &IoErrorEvent);
}

/// Counters, since the device was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockStats {
    /// Read requests completed successfully.
    pub reads: u64,
    /// Write requests completed successfully.
    pub writes: u64,
    /// Flushes completed successfully.
    pub flushes: u64,
    /// Discards and write-zeroes completed successfully.
    pub discards: u64,
    /// Bytes read into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest.
    pub written_bytes: u64,
    /// Requests refused before any I/O (malformed, unsupported, read-only).
    pub invalid: u64,
    /// Host I/O errors (each try of a held request counts).
    pub host_errors: u64,
}
