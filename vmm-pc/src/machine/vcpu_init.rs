//! Each vCPU's set-up at build time, and again at every machine reset,
//! run on the vCPU's own thread; and the boot CPU's entry point, which the
//! first set-up may wait for.

use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::CpuId;
use vmm_core::vcpu::VcpuInit;
use vmm_core::vm::Vm;

use super::lock;
use crate::cpu::{self, BootEntry};

/// The boot CPU's entry point, shared by the machine and the vCPUs'
/// set-up. The vCPU threads start before the kernel is loaded (their
/// set-up runs beside the loading and the devices' making), so the boot
/// vCPU's first set-up waits here for its entry, and only where it needs
/// it: for its registers, after its CPUID. A reset's reload, or a wake-up
/// from S3, replaces it.
pub(super) struct EntryCell {
    state: Mutex<Entry>,
    loaded: Condvar,
}

#[derive(Clone, Copy)]
enum Entry {
    Loading,
    Loaded(BootEntry),
    /// The build failed before the kernel was loaded.
    Abandoned,
}

impl EntryCell {
    /// A cell whose entry is still being loaded, and what ends the loading
    /// ([`Loader`]).
    pub(super) fn loading() -> (Arc<Self>, Loader) {
        let cell = Arc::new(Self {
            state: Mutex::new(Entry::Loading),
            loaded: Condvar::new(),
        });
        let loader = Loader(Arc::clone(&cell));
        (cell, loader)
    }

    /// The entry, waiting for it while it is loaded; `None` if the build
    /// gave up first.
    fn wait(&self) -> Option<BootEntry> {
        let mut state = lock(&self.state);
        loop {
            match *state {
                Entry::Loaded(entry) => return Some(entry),
                Entry::Abandoned => return None,
                Entry::Loading => {
                    state = self.loaded.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// The entry now, if loaded.
    pub(super) fn get(&self) -> Option<BootEntry> {
        match *lock(&self.state) {
            Entry::Loaded(entry) => Some(entry),
            Entry::Loading | Entry::Abandoned => None,
        }
    }

    /// Sets (or replaces) the entry.
    pub(super) fn set(&self, entry: BootEntry) {
        *lock(&self.state) = Entry::Loaded(entry);
        self.loaded.notify_all();
    }
}

/// The build's end of an [`EntryCell`] being loaded: [`Loader::loaded`]
/// sets the entry; dropped before that (the build failed), it gives the
/// loading up, so that a boot vCPU waiting for its entry fails its set-up
/// instead of waiting for ever.
pub(super) struct Loader(Arc<EntryCell>);

impl Loader {
    /// The kernel is loaded: its entry.
    pub(super) fn loaded(self, entry: BootEntry) {
        self.0.set(entry);
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        if matches!(*state, Entry::Loading) {
            *state = Entry::Abandoned;
            self.0.loaded.notify_all();
        }
    }
}

/// The per-vCPU set-up, run on each vCPU's thread.
/// The first call for a vCPU records its LAPIC as KVM created it; a later
/// call (a machine reset) puts that back and resets the vCPU before setting
/// it up again for `entry`, which a reset may have reloaded.
pub(super) fn vcpu_init(vm: &Vm, cpuid: CpuId, cpus: u32, entry: Arc<EntryCell>) -> VcpuInit {
    let vm = vm.clone();
    let fresh_lapics: Mutex<Vec<Option<kvm_bindings::kvm_lapic_state>>> =
        Mutex::new(vec![None; usize::try_from(cpus).unwrap_or(0)]);
    Arc::new(move |vcpu, index| {
        let slot = usize::try_from(index).unwrap_or(usize::MAX);
        let fresh = lock(&fresh_lapics).get(slot).cloned().flatten();
        // The boot CPU's entry (the others start at INIT/SIPI).
        let entry = || match index {
            0 => entry
                .wait()
                .map(Some)
                .ok_or("the machine's build failed before the kernel was loaded"),
            _ => Ok(None),
        };
        match fresh {
            Some(lapic) => {
                cpu::reset_vcpu(vcpu, &lapic, index)?;
                cpu::set_boot_state(vcpu, vm.memory(), entry()?.as_ref())?;
            }
            None => {
                let lapic = cpu::lapic_state(vcpu)?;
                if let Some(s) = lock(&fresh_lapics).get_mut(slot) {
                    *s = Some(lapic);
                }
                cpu::set_cpuid(vcpu, &cpuid, index, cpus)?;
                cpu::set_boot_state(vcpu, vm.memory(), entry()?.as_ref())?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvh() -> BootEntry {
        BootEntry::Pvh {
            entry: 0x10_0000,
            start_info: 0x6000,
        }
    }

    #[test]
    fn a_waiting_set_up_gets_the_entry_once_loaded() {
        let (cell, loader) = EntryCell::loading();
        assert!(cell.get().is_none());
        let waiter = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || cell.wait())
        };
        loader.loaded(pvh());
        assert!(matches!(
            waiter.join().unwrap(),
            Some(BootEntry::Pvh {
                entry: 0x10_0000,
                ..
            })
        ));
        assert!(cell.get().is_some());
    }

    #[test]
    fn a_build_that_fails_first_ends_the_wait() {
        let (cell, loader) = EntryCell::loading();
        let waiter = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || cell.wait())
        };
        drop(loader);
        assert!(waiter.join().unwrap().is_none());
        // A loaded entry is never given up.
        let (cell, loader) = EntryCell::loading();
        loader.loaded(pvh());
        assert!(cell.wait().is_some());
    }
}
