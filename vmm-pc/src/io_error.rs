//! A disk's host I/O errors reach the main loop: QEMU's `werror`/`rerror`.
//! The device's worker reports each error (already handled as the drive's
//! policy says: passed to the guest, dropped, or the request held); this
//! notes it for the main loop, which sends `BLOCK_IO_ERROR` and, for a held
//! request, stops the VM in `io-error` until `cont` retries it.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;
use vmm_virtio::blk::{BlockEvents, ErrorOutcome, IoErrorEvent, Operation};

use crate::control::BlockIoError;
use crate::machine::Pending;

/// One drive's ear.
pub(crate) struct DiskEvents {
    id: String,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<EventFd>,
}

impl DiskEvents {
    pub(crate) fn new(id: &str, pending: Arc<Mutex<Pending>>, wake: Arc<EventFd>) -> Self {
        Self {
            id: id.to_owned(),
            pending,
            wake,
        }
    }
}

/// QEMU's `BLOCK_IO_ERROR` fields for `event` on drive `device`.
pub(crate) fn block_io_error(device: &str, event: &IoErrorEvent) -> BlockIoError {
    BlockIoError {
        device: device.to_owned(),
        operation: match event.operation {
            Operation::Read => "read",
            Operation::Write | Operation::Flush | Operation::Discard | Operation::WriteZeroes => {
                "write"
            }
        },
        action: match event.outcome {
            ErrorOutcome::Reported => "report",
            ErrorOutcome::Ignored => "ignore",
            ErrorOutcome::Stopped => "stop",
        },
        nospace: event.nospace,
        reason: std::io::Error::from_raw_os_error(event.errno).to_string(),
    }
}

impl BlockEvents for DiskEvents {
    fn io_error(&self, event: &IoErrorEvent) {
        let note = block_io_error(&self.id, event);
        log::warn!(
            "drive {}: host {} error ({}), action {}",
            self.id,
            note.operation,
            note.reason,
            note.action
        );
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            // A guest that keeps failing cannot grow this without bound: the
            // main loop takes the list on every wake-up; past 64 notes the
            // rest are only logged.
            if p.io_errors.len() < 64 {
                p.io_errors.push(note);
            }
        }
        let _ = self.wake.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_fields() {
        let e = IoErrorEvent {
            operation: Operation::Flush,
            errno: libc::ENOSPC,
            nospace: true,
            outcome: ErrorOutcome::Stopped,
            sector: 0,
            sectors: 0,
        };
        let n = block_io_error("d0", &e);
        assert_eq!((n.operation, n.action, n.nospace), ("write", "stop", true));
        assert!(n.reason.contains("No space left"), "{}", n.reason);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let wake = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        let ear = DiskEvents::new("d0", Arc::clone(&pending), Arc::clone(&wake));
        for _ in 0..100 {
            ear.io_error(&e);
        }
        assert_eq!(pending.lock().unwrap().io_errors.len(), 64, "bounded");
        assert_eq!(wake.read().unwrap(), 100);
    }
}
