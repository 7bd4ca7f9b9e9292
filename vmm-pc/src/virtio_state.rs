//! The virtio functions in the machine's device list, for snapshots and
//! migration: each disk, network card, entropy and socket device is an
//! entry (`virtio-blk-pci`, `virtio-net-pci`, `virtio-rng-pci`,
//! `virtio-vsock-pci`, `vhost-vsock-pci`; a network card on vhost-net is
//! the same `virtio-net-pci`) whose id names
//! its backing and PCI address (`drive0@00:03.0`), so that the shape check
//! refuses a machine whose virtio devices differ in kind, address or id.
//! Its saved state is the function's [`VirtioPciSnapshot`] and its
//! backing (the image's path, the tap's name and the card's address): a
//! load onto another backing is refused with both named, but a card may
//! come back on another tap (its address must be the same).
//!
//! A socket device's connections are not carried over: they end when its
//! worker stops, and the driver gets a transport reset when it starts
//! again (as Firecracker does after a restore). On vhost-vsock the host
//! kernel keeps them across a save (the machine runs on with them); a
//! load resets the driver's.
//!
//! The disk image itself is not in the snapshot (as with QEMU and a raw
//! file): the file at the same path must hold what it held at the save
//! (a snapshot-load in the same VMM, `--incoming file:` after the source
//! ended, or a live migration whose two VMMs share the file).
//!
//! A save needs every function's worker stopped ([`pause_all`], with the
//! guest stopped); the workers run again with the guest ([`resume_all`]).

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vmm_core::ram::GuestRam;
use vmm_pci::PciRoot;
use vmm_qom::{Device, InvalidState, SavedDevice, StateError};
use vmm_virtio::transport::snapshot::VirtioPciSnapshot;
use vmm_virtio::VirtioPciDevice;

use crate::model::DeviceModel;

/// The layout version of [`SavedVirtio`].
const VERSION: u32 = 1;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One virtio function's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVirtio {
    /// What backs it: the image's path, the tap's name, `getrandom`.
    pub backing: String,
    /// The function.
    pub function: VirtioPciSnapshot,
}

/// A virtio function as an entry of the device list.
#[derive(Debug)]
pub struct VirtioEntry {
    root: Arc<Mutex<PciRoot>>,
    slot: u8,
    kind: &'static str,
    backing: String,
}

/// The function in `slot` of `root`, as a virtio function.
fn function(root: &mut PciRoot, slot: u8) -> Option<&mut VirtioPciDevice<GuestRam>> {
    root.function_mut(slot)?
        .as_any_mut()?
        .downcast_mut::<VirtioPciDevice<GuestRam>>()
}

impl VirtioEntry {
    fn invalid(&self, why: impl Into<String>) -> StateError {
        StateError::Invalid {
            ty: self.kind,
            source: InvalidState(why.into()),
        }
    }
}

impl Device for VirtioEntry {
    fn type_name(&self) -> &'static str {
        self.kind
    }

    fn reset(&mut self) {
        // The PCI root's reset (`pci.0`) resets every function on it.
    }

    fn save(&self) -> Result<SavedDevice, StateError> {
        let mut root = lock(&self.root);
        let f = function(&mut root, self.slot)
            .ok_or_else(|| self.invalid(format!("no virtio function in slot {}", self.slot)))?;
        let saved = SavedVirtio {
            backing: self.backing.clone(),
            function: f.snapshot().map_err(|e| self.invalid(e.to_string()))?,
        };
        let state = serde_json::to_value(saved).map_err(|source| StateError::Encode {
            ty: self.kind,
            source,
        })?;
        Ok(SavedDevice {
            type_name: self.kind.to_owned(),
            version: VERSION,
            state,
        })
    }

    fn load(&mut self, saved: &SavedDevice) -> Result<(), StateError> {
        if saved.type_name != self.kind {
            return Err(StateError::WrongType {
                ty: self.kind,
                found: saved.type_name.clone(),
            });
        }
        if saved.version != VERSION {
            return Err(StateError::Version {
                ty: self.kind,
                found: saved.version,
                expected: VERSION,
            });
        }
        let s: SavedVirtio =
            serde_json::from_value(saved.state.clone()).map_err(|source| StateError::Decode {
                ty: self.kind,
                source,
            })?;
        if backing_key(self.kind, &s.backing) != backing_key(self.kind, &self.backing) {
            return Err(self.invalid(format!(
                "the snapshot's device is backed by {}, this machine's by {}",
                s.backing, self.backing
            )));
        }
        let mut root = lock(&self.root);
        let f = function(&mut root, self.slot)
            .ok_or_else(|| self.invalid(format!("no virtio function in slot {}", self.slot)))?;
        f.restore(&s.function)
            .map_err(|e| self.invalid(e.to_string()))
    }
}

/// What of a function's backing a load must find the same: all of it
/// (a disk's image and mode), but of a network card only its address
/// (`tap NAME (MAC)` → `(MAC)`): a card may come back on another tap, as
/// a QEMU user migrating between two taps of one bridge expects.
fn backing_key<'a>(kind: &str, backing: &'a str) -> &'a str {
    match backing.rfind(" (") {
        Some(i) if kind == "virtio-net-pci" => &backing[i + 1..],
        _ => backing,
    }
}

/// A virtio function as the device list names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the device list (`drive0@00:03.0`).
    pub id: String,
    /// Its PCI slot.
    pub slot: u8,
    /// Its device type.
    pub kind: &'static str,
    /// What backs it.
    pub backing: String,
}

/// The entries of the machine's disks, network cards, entropy and socket
/// devices (ours, then the kernel's vhost-vsock), in that order.
pub fn entries(
    disks: &[crate::virtio::Disk],
    nets: &[crate::virtio::Nic],
    rngs: &[crate::virtio::Rng],
    vsocks: &[crate::virtio::Vsock],
    vhost_vsocks: &[(u64, u8)],
) -> Vec<Entry> {
    let entry = |id: String, slot: u8, kind: &'static str, backing: String| Entry {
        id: format!("{id}@00:{slot:02x}.0"),
        slot,
        kind,
        backing,
    };
    let mut out = Vec::new();
    for d in disks {
        let mode = if d.readonly { " (read-only)" } else { "" };
        out.push(entry(
            d.id.clone(),
            d.slot,
            "virtio-blk-pci",
            format!("{}{mode}", d.path.display()),
        ));
    }
    for n in nets {
        out.push(entry(
            n.id.clone(),
            n.slot,
            "virtio-net-pci",
            format!("tap {} ({})", n.ifname, n.mac),
        ));
    }
    for (i, r) in rngs.iter().enumerate() {
        out.push(entry(
            format!("rng{i}"),
            r.slot,
            "virtio-rng-pci",
            "the host's getrandom".to_owned(),
        ));
    }
    for v in vsocks {
        out.push(entry(
            format!("vsock{}", v.cid),
            v.slot,
            "virtio-vsock-pci",
            format!("uds {} (guest-cid {})", v.uds.display(), v.cid),
        ));
    }
    for &(cid, slot) in vhost_vsocks {
        out.push(entry(
            format!("vhost-vsock{cid}"),
            slot,
            "vhost-vsock-pci",
            format!("the host's vhost-vsock (guest-cid {cid})"),
        ));
    }
    out
}

/// Adds `entries` to `model`, after every other device.
pub fn register(model: &mut DeviceModel, root: &Arc<Mutex<PciRoot>>, entries: Vec<Entry>) {
    for e in entries {
        model.add(
            e.id,
            Arc::new(Mutex::new(VirtioEntry {
                root: Arc::clone(root),
                slot: e.slot,
                kind: e.kind,
                backing: e.backing,
            })),
        );
    }
}

/// Checks, before a load changes anything, that each saved virtio
/// function of `saved` was backed as ours are (the load checks it again).
pub fn check_backings(ours: &[Entry], saved: &[crate::model::SavedEntry]) -> Result<(), String> {
    for s in saved {
        let Some(e) = ours.iter().find(|e| e.id == s.id) else {
            continue;
        };
        let theirs = s.saved.state.get("backing").and_then(|b| b.as_str());
        if theirs.map(|t| backing_key(e.kind, t)) != Some(backing_key(e.kind, &e.backing)) {
            return Err(format!(
                "the snapshot's {} is backed by {}, this machine's by {}",
                e.id,
                theirs.unwrap_or("nothing"),
                e.backing
            ));
        }
    }
    Ok(())
}

/// Stops the workers of the virtio functions in `slots` for a save (the
/// guest is stopped). A function that cannot be captured (a request held
/// after a host error) refuses: the others run again and the reason is
/// given.
pub fn pause_all(root: &Arc<Mutex<PciRoot>>, slots: &[u8]) -> Result<(), String> {
    let mut root = lock(root);
    for (n, &slot) in slots.iter().enumerate() {
        let Some(f) = function(&mut root, slot) else {
            continue;
        };
        if let Err(e) = f.pause() {
            let why = format!("the virtio device in slot {slot:#04x}: {e}");
            for &done in &slots[..n] {
                if let Some(f) = function(&mut root, done) {
                    f.resume();
                }
            }
            return Err(why);
        }
    }
    Ok(())
}

/// Starts again the workers of the functions in `slots` that a save or a
/// load stopped.
pub fn resume_all(root: &Arc<Mutex<PciRoot>>, slots: &[u8]) {
    let mut root = lock(root);
    for &slot in slots {
        if let Some(f) = function(&mut root, slot) {
            f.resume();
        }
    }
}

/// Stops the workers of the functions in `slots` before a load replaces
/// guest RAM (see [`VirtioPciDevice::stop_for_load`]).
pub fn stop_all_for_load(root: &Arc<Mutex<PciRoot>>, slots: &[u8]) {
    let mut root = lock(root);
    for &slot in slots {
        if let Some(f) = function(&mut root, slot) {
            f.stop_for_load();
        }
    }
}

/// A live migration's log for the host kernel's writes to the functions
/// in `slots` (those on vhost; None: the migration ended). Each running
/// one restarts its worker at once to take it (see
/// [`VirtioPciDevice::set_dirty_log`]).
pub fn set_dirty_log(
    root: &Arc<Mutex<PciRoot>>,
    slots: &[u8],
    log: Option<&Arc<vmm_virtio::vhost::DirtyLog>>,
) {
    let mut root = lock(root);
    for &slot in slots {
        if let Some(f) = function(&mut root, slot) {
            f.set_dirty_log(log.cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SavedEntry;

    fn saved(id: &str, kind: &str, backing: &str) -> SavedEntry {
        SavedEntry {
            id: id.to_owned(),
            saved: SavedDevice {
                type_name: kind.to_owned(),
                version: VERSION,
                state: serde_json::json!({ "backing": backing }),
            },
        }
    }

    fn entry(id: &str, kind: &'static str, backing: &str) -> Entry {
        Entry {
            id: id.to_owned(),
            slot: 3,
            kind,
            backing: backing.to_owned(),
        }
    }

    #[test]
    fn a_card_may_come_back_on_another_tap_but_not_with_another_address() {
        let ours = [entry(
            "n0@00:03.0",
            "virtio-net-pci",
            "tap tap1 (52:54:00:ab:cd:05)",
        )];
        let moved = saved(
            "n0@00:03.0",
            "virtio-net-pci",
            "tap tap0 (52:54:00:ab:cd:05)",
        );
        assert_eq!(check_backings(&ours, &[moved]), Ok(()));
        let other = saved(
            "n0@00:03.0",
            "virtio-net-pci",
            "tap tap1 (52:54:00:ab:cd:06)",
        );
        let e = check_backings(&ours, &[other]).unwrap_err();
        assert!(e.contains("52:54:00:ab:cd:06"), "{e}");
    }

    #[test]
    fn a_disk_must_come_back_on_the_same_image() {
        let ours = [entry("d0@00:04.0", "virtio-blk-pci", "/img/a (read-only)")];
        let same = saved("d0@00:04.0", "virtio-blk-pci", "/img/a (read-only)");
        assert_eq!(check_backings(&ours, &[same]), Ok(()));
        // A disk's "(read-only)" is not an address: the path counts.
        let other = saved("d0@00:04.0", "virtio-blk-pci", "/img/b (read-only)");
        assert!(check_backings(&ours, &[other]).is_err());
    }
}
