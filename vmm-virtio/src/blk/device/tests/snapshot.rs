//! Snapshots of a started disk: the worker stops with nothing in flight,
//! the state round-trips (through JSON, as the machine writes it) onto the
//! same device and onto a fresh one on the same guest RAM, the device
//! carries on from the saved indices, and bad states are refused without
//! a change.

use super::*;
use crate::device::{DeviceSnapshot, SnapshotError};
use crate::transport::snapshot::VirtioPciSnapshot;

/// A way to spoil a good state.
type Spoil = Box<dyn Fn(&mut VirtioPciSnapshot)>;

/// Through JSON and back.
fn json(s: &VirtioPciSnapshot) -> VirtioPciSnapshot {
    serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()
}

/// A second disk (on an image of the same size: `b`'s is locked) on
/// `b`'s guest memory, BARs where `b`'s are, not started.
fn twin(b: &Blk, image: &TempFile) -> VirtioPciDevice<Mem> {
    let mut config = BlockConfig::new(image.as_path());
    config.aio = AIO.get();
    let blk = VirtioBlk::new(&config, Arc::new(Events(Recorder::new()))).unwrap();
    placed(
        "virtio-blk-pci",
        Box::new(blk),
        &b.mem,
        Fakes::new(false).seams(),
    )
}

fn a_snapshot_round_trips_and_the_disk_carries_on() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]),
        (OK, 513)
    );
    assert!(
        b.dev.snapshot().is_err(),
        "a running worker is not captured"
    );
    b.dev.pause().unwrap();
    assert!(b.dev.is_paused());
    let saved = b.dev.snapshot().unwrap();
    assert!(saved.active);
    assert_eq!(saved.queues.len(), 1);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[0].next_used),
        (1, 1)
    );
    assert_eq!(
        saved.device,
        DeviceSnapshot::Block {
            capacity: SECTORS,
            read_only: false
        }
    );
    // Onto itself, and onto a fresh device: the same state back.
    b.dev.restore(&json(&saved)).unwrap();
    assert_eq!(b.dev.snapshot().unwrap(), saved);
    let image = new_image();
    let mut other = twin(&b, &image);
    other.restore(&json(&saved)).unwrap();
    assert_eq!(other.snapshot().unwrap(), saved);
    drop(other);
    // The device carries on from the saved indices.
    b.dev.resume();
    assert!(!b.dev.is_paused());
    b.mem.write_slice(&[9; 512], GuestAddress(DATA)).unwrap();
    b.header(VIRTIO_BLK_T_OUT, 5);
    b.ring.set_desc(1, HDR, 16, NEXT, 2);
    b.ring.set_desc(2, DATA, 512, NEXT, 3);
    b.ring.set_desc(3, STATUS, 1, WRITE, 0);
    b.ring.publish(1);
    b.kick();
    assert_eq!(b.complete(), (OK, 1));
    assert_eq!(b.file(5 * 512, 512), [9; 512]);
}

fn a_paused_disk_finishes_what_it_started_first() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    // Four reads at once (with io_uring they are in flight together).
    for i in 0..4u16 {
        let hdr = HDR + 0x40 * u64::from(i);
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&u64::from(i).to_le_bytes());
        b.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let d = 3 * i;
        b.ring.set_desc(d, hdr, 16, NEXT, d + 1);
        b.ring.set_desc(
            d + 1,
            DATA + 0x1000 * u64::from(i),
            4096,
            WRITE | NEXT,
            d + 2,
        );
        b.ring
            .set_desc(d + 2, STATUS + 0x10 * u64::from(i), 1, WRITE, 0);
        b.ring.publish(d);
    }
    b.kick();
    b.dev.pause().unwrap();
    let saved = b.dev.snapshot().unwrap();
    let q = saved.queues[0];
    assert_eq!(
        q.next_avail, q.next_used,
        "every request popped was completed"
    );
    assert_eq!(b.ring.used_idx(), q.next_used);
    b.dev.resume();
    b.ring.wait_used(4);
}

fn bad_snapshots_are_refused_and_change_nothing() {
    let mut b = start(|_| {}, true, NO_EVENT_IDX);
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]),
        (OK, 513)
    );
    b.dev.pause().unwrap();
    let good = b.dev.snapshot().unwrap();
    let image = new_image();
    let mut other = twin(&b, &image);
    let before = other.snapshot().unwrap();
    let bad: Vec<(&str, Spoil)> = vec![
        ("type", Box::new(|s| s.device_type = 1)),
        ("config length", Box::new(|s| s.config.truncate(100))),
        ("identity", Box::new(|s| s.config[0] ^= 1)),
        ("msix", Box::new(|s| s.msix_pending.push(false))),
        ("queue size", Box::new(|s| s.common.queues[0].size = 3)),
        ("queue max", Box::new(|s| s.common.queues[0].max_size = 32)),
        ("vector", Box::new(|s| s.common.queues[0].msix_vector = 7)),
        (
            "ring outside RAM",
            Box::new(|s| {
                s.common.queues[0].desc = 1 << 40;
                s.queues[0].desc = 1 << 40;
            }),
        ),
        (
            "misaligned ring",
            Box::new(|s| {
                s.common.queues[0].device += 2;
                s.queues[0].used += 2;
            }),
        ),
        ("registers differ", Box::new(|s| s.queues[0].desc += 0x1000)),
        ("next used", Box::new(|s| s.queues[0].next_used = 7)),
        ("next avail", Box::new(|s| s.queues[0].next_avail = 900)),
        ("no queue", Box::new(|s| s.queues.clear())),
        (
            "queue twice",
            Box::new(|s| {
                let q = s.queues[0];
                s.queues.push(q);
            }),
        ),
        (
            "features",
            Box::new(|s| s.common.driver_features |= 1 << 50),
        ),
        ("driver ok alone", Box::new(|s| s.common.status = 0x07)),
        (
            "capacity",
            Box::new(|s| {
                s.device = DeviceSnapshot::Block {
                    capacity: 1,
                    read_only: false,
                }
            }),
        ),
        (
            "kind",
            Box::new(|s| s.device = DeviceSnapshot::Net { mac: [0; 6] }),
        ),
    ];
    for (what, spoil) in bad {
        let mut s = good.clone();
        spoil(&mut s);
        let e = other.restore(&s);
        assert!(matches!(e, Err(SnapshotError::Invalid(_))), "{what}: {e:?}");
        assert_eq!(other.snapshot().unwrap(), before, "{what}");
    }
    other.restore(&good).unwrap();
    b.dev.resume();
}

both_aio!(
    a_snapshot_round_trips_and_the_disk_carries_on,
    a_paused_disk_finishes_what_it_started_first,
    bad_snapshots_are_refused_and_change_nothing,
);
