//! A socket device's event queue, ours and vhost-vsock's alike: only a
//! transport reset (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET) is ever sent on
//! it, when the device starts again after its connections were lost (a
//! snapshot stopped our worker, or a snapshot was loaded).

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};

use super::EVENT_QUEUE;
use crate::device::{ActiveQueue, QueueHome, VirtioInterrupt};

/// The event queue of a started device, and whether the driver must hear
/// of lost connections when it next starts.
#[derive(Debug, Default)]
pub(super) struct EventQueue {
    queue: Option<Queue>,
    home: Option<QueueHome>,
    /// The next start sends a transport reset.
    pub(super) reset_transport: bool,
}

impl EventQueue {
    /// At activation: takes the event queue out of `queues` (the others
    /// are returned), sends the transport reset owed, and keeps the queue
    /// with the activation's `home`.
    pub(super) fn start<M: GuestMemory>(
        &mut self,
        queues: Vec<ActiveQueue>,
        home: QueueHome,
        mem: &M,
        interrupt: &dyn VirtioInterrupt,
    ) -> Vec<ActiveQueue> {
        let (event, data): (Vec<_>, Vec<_>) =
            queues.into_iter().partition(|q| q.index == EVENT_QUEUE);
        let mut event = event.into_iter().next().map(|q| q.queue);
        if self.reset_transport {
            if let Some(q) = event.as_mut() {
                send_transport_reset(q, mem, interrupt);
            }
        }
        self.reset_transport = false;
        self.queue = event;
        self.home = Some(home);
        data
    }

    /// For a snapshot, with the worker stopped: the queue goes home.
    pub(super) fn park(&mut self) {
        if let (Some(q), Some(home)) = (&self.queue, &self.home) {
            home.put(EVENT_QUEUE, q.state());
        }
        self.queue = None;
    }

    /// At a device reset: the queue goes (`reset_transport` stays: a
    /// restore sets it before the transport resets the device, and a
    /// transport reset to a driver with no connections is harmless).
    pub(super) fn reset(&mut self) {
        self.queue = None;
        self.home = None;
    }
}

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the driver drops every connection.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Sends a transport reset on the event queue `q` (a buffer of the
/// driver's, `struct virtio_vsock_event`: a little-endian `u32` id), and
/// its interrupt. Without a usable buffer nothing is sent: the driver's
/// stale connections then get a reset from the muxer when they are used.
fn send_transport_reset<M: GuestMemory>(q: &mut Queue, mem: &M, interrupt: &dyn VirtioInterrupt) {
    if !crate::ring::avail_sane(q, mem) {
        log::warn!("virtio-vsock: the event queue is broken; no transport reset sent");
        return;
    }
    let Some(chain) = q.pop_descriptor_chain(mem) else {
        log::warn!("virtio-vsock: no event buffer for the transport reset");
        return;
    };
    let head = chain.head_index();
    let mut len = 0;
    if let Some(d) = chain.take(1).find(|d| d.is_write_only() && d.len() >= 4) {
        if mem
            .write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr())
            .is_ok()
        {
            len = 4;
        }
    }
    if q.add_used(mem, head, len).is_err() {
        log::warn!("virtio-vsock: the event queue is broken; no transport reset sent");
        return;
    }
    if q.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_queue(EVENT_QUEUE);
    }
}
