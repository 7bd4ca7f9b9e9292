//! Notifier lists: QEMU's `NotifierList`, the shape behind its exit notifiers.
//!
//! A [`NotifierList`] holds callbacks that are all called, in the order they
//! were added, when something happens: the VMM is about to exit, the machine
//! was reset, and so on. The machine adds an exit notifier for every resource
//! that must be put back on the way out (the terminal's mode, a socket file),
//! and runs the list on every exit path.
//!
//! Unlike a plain `Vec<Box<dyn FnMut>>`, the list may be changed while it is
//! being notified: a notifier may remove itself (or another) and may add new
//! ones. Each [`NotifierList::notify`] pass walks the notifiers that were in
//! the list when it began; one removed before its turn is skipped, one added
//! during the pass waits for the next pass.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Identifies one notifier in a list, for [`NotifierList::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifierId(u64);

/// A notifier callback. It gets the event's data and its own list and id,
/// so that it can remove itself.
type Callback<D> = Box<dyn FnMut(&D, &NotifierList<D>, NotifierId) + Send>;

struct Entry<D> {
    id: NotifierId,
    /// `None` while the callback is running (it is taken out of the list so
    /// that no lock is held during the call).
    callback: Option<Callback<D>>,
}

struct Inner<D> {
    next_id: u64,
    entries: Vec<Entry<D>>,
}

/// An ordered list of callbacks, shared by cloning (all clones are the same
/// list). `D` is the data passed to every notifier.
pub struct NotifierList<D> {
    inner: Arc<Mutex<Inner<D>>>,
}

impl<D> Clone for NotifierList<D> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<D> Default for NotifierList<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> fmt::Debug for NotifierList<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifierList")
            .field("len", &self.len())
            .finish()
    }
}

impl<D> NotifierList<D> {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 0,
                entries: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<D>> {
        // A notifier that panicked must not disable the exit path for the
        // others: the list's own state is always consistent between calls.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a notifier at the end of the list.
    pub fn add<F>(&self, callback: F) -> NotifierId
    where
        F: FnMut(&D, &NotifierList<D>, NotifierId) + Send + 'static,
    {
        let mut inner = self.lock();
        let id = NotifierId(inner.next_id);
        inner.next_id += 1;
        inner.entries.push(Entry {
            id,
            callback: Some(Box::new(callback)),
        });
        id
    }

    /// Removes a notifier. Returns whether it was in the list. Safe to call
    /// from inside a notifier, for itself or for another.
    pub fn remove(&self, id: NotifierId) -> bool {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| e.id != id);
        inner.entries.len() != before
    }

    /// How many notifiers the list holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the list holds no notifier.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls every notifier that is in the list now, in the order they were
    /// added, with `data`. Returns how many were called.
    ///
    /// No lock is held while a notifier runs, so it may add or remove
    /// notifiers. A notifier that is still running (a nested `notify` from
    /// inside a notifier) is not called again by the inner pass.
    pub fn notify(&self, data: &D) -> usize {
        let ids: Vec<NotifierId> = self.lock().entries.iter().map(|e| e.id).collect();
        let mut called = 0;
        for id in ids {
            let taken = {
                let mut inner = self.lock();
                inner
                    .entries
                    .iter_mut()
                    .find(|e| e.id == id)
                    .and_then(|e| e.callback.take())
            };
            let Some(mut callback) = taken else {
                continue;
            };
            callback(data, self, id);
            called += 1;
            let mut inner = self.lock();
            if let Some(entry) = inner.entries.iter_mut().find(|e| e.id == id) {
                entry.callback = Some(callback);
            }
        }
        called
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<String>>>, NotifierList<u32>) {
        (Arc::new(Mutex::new(Vec::new())), NotifierList::new())
    }

    #[test]
    fn notifies_in_order_with_data() {
        let (log, list) = recorder();
        for name in ["a", "b", "c"] {
            let log = Arc::clone(&log);
            list.add(move |d: &u32, _: &NotifierList<u32>, _| {
                log.lock().unwrap().push(format!("{name}{d}"))
            });
        }
        assert_eq!(list.notify(&7), 3);
        assert_eq!(*log.lock().unwrap(), ["a7", "b7", "c7"]);
    }

    #[test]
    fn remove_by_id() {
        let (log, list) = recorder();
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            let log = Arc::clone(&log);
            ids.push(list.add(move |_: &u32, _: &NotifierList<u32>, _| {
                log.lock().unwrap().push(name.to_string())
            }));
        }
        assert!(list.remove(ids[1]));
        assert!(!list.remove(ids[1]), "a second removal finds nothing");
        assert_eq!(list.len(), 2);
        list.notify(&0);
        assert_eq!(*log.lock().unwrap(), ["a", "c"]);
    }

    #[test]
    fn notifier_removes_itself_while_notified() {
        let (log, list) = recorder();
        let log_a = Arc::clone(&log);
        list.add(move |_: &u32, list: &NotifierList<u32>, me| {
            log_a.lock().unwrap().push("once".into());
            assert!(list.remove(me));
        });
        let log_b = Arc::clone(&log);
        list.add(move |_: &u32, _: &NotifierList<u32>, _| {
            log_b.lock().unwrap().push("always".into())
        });
        assert_eq!(list.notify(&0), 2);
        assert_eq!(list.notify(&0), 1);
        assert_eq!(*log.lock().unwrap(), ["once", "always", "always"]);
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn notifier_removes_a_later_one_before_its_turn() {
        let (log, list) = recorder();
        let victim = Arc::new(Mutex::new(None));
        let victim_in = Arc::clone(&victim);
        let log_a = Arc::clone(&log);
        list.add(move |_: &u32, list: &NotifierList<u32>, _| {
            log_a.lock().unwrap().push("a".into());
            if let Some(id) = victim_in.lock().unwrap().take() {
                list.remove(id);
            }
        });
        let log_b = Arc::clone(&log);
        let id_b = list
            .add(move |_: &u32, _: &NotifierList<u32>, _| log_b.lock().unwrap().push("b".into()));
        *victim.lock().unwrap() = Some(id_b);
        assert_eq!(list.notify(&0), 1);
        assert_eq!(*log.lock().unwrap(), ["a"]);
    }

    #[test]
    fn notifier_added_during_a_pass_runs_next_pass() {
        let (log, list) = recorder();
        let log_a = Arc::clone(&log);
        list.add(move |_: &u32, list: &NotifierList<u32>, me| {
            log_a.lock().unwrap().push("a".into());
            let log_new = Arc::clone(&log_a);
            list.add(move |_: &u32, _: &NotifierList<u32>, _| {
                log_new.lock().unwrap().push("new".into())
            });
            list.remove(me);
        });
        assert_eq!(list.notify(&0), 1);
        assert_eq!(list.notify(&0), 1);
        assert_eq!(*log.lock().unwrap(), ["a", "new"]);
    }

    #[test]
    fn a_panicking_notifier_does_not_poison_the_list() {
        let list: NotifierList<u32> = NotifierList::new();
        list.add(|_: &u32, _: &NotifierList<u32>, _| panic!("boom"));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| list.notify(&0)));
        assert!(caught.is_err());
        // The panicking callback was lost with its unwinding; the list stays usable.
        let hits = Arc::new(Mutex::new(0));
        let h = Arc::clone(&hits);
        list.add(move |_: &u32, _: &NotifierList<u32>, _| *h.lock().unwrap() += 1);
        list.notify(&0);
        assert_eq!(*hits.lock().unwrap(), 1);
    }

    #[test]
    fn clones_share_one_list() {
        let list: NotifierList<()> = NotifierList::new();
        let other = list.clone();
        other.add(|_: &(), _: &NotifierList<()>, _| {});
        assert_eq!(list.len(), 1);
        assert!(!list.is_empty());
    }
}
