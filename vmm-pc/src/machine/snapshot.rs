//! Snapshots of the running machine into a file and back (QEMU's
//! `snapshot-save` / `snapshot-load` with the VM state in a file; see
//! [`crate::snapshot`] for the format and the jobs).
//!
//! A save stops a running guest (`save-vm`, `STOP`), takes every vCPU's
//! state on its own thread, the in-kernel irqchip (and KVM's PIT), the
//! kvmclock and the Virtual clock, every device of the device list and
//! the RAM, writes them, and runs the guest again (`running`, `RESUME`); a
//! paused guest stays paused. A load reads and checks the whole file
//! first (magic, version, checksums, the machine's shape, every section
//! decoded) so that a bad file changes nothing; then it stops a running
//! guest (`restore-vm`), puts everything back and runs it again from the
//! saved point. A suspended guest (ACPI S3) is saved as such: the machine
//! goes `suspended -> save-vm -> suspended`, the file carries the
//! `runstate` section ([`crate::snapshot::runstate`]), and a load of it
//! leaves the machine `suspended` (a running or suspended one at once, a
//! stopped one at its next `cont`), to wake at the guest's waking vector
//! on `system_wakeup`. Virtio disks, network cards, entropy and socket devices
//! are part of the state (see [`crate::virtio_state`]): their workers
//! stop, with nothing in flight, before the capture and run again with
//! the guest (a card on vhost-net takes its tap back from the kernel's
//! rings, a vhost-vsock-pci stops the kernel's device, and both read
//! where the kernel's rings stopped).

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_clock::ClockType;
use vmm_core::vcpu::VcpuState;
use vmm_runstate::RunState;

use super::{CommandFailure, PcMachine, PitBackend};
use crate::model::SavedEntry;
use crate::snapshot::format::{self, Section, Shape};
use crate::snapshot::runstate::{self, SavedRunState};

/// The longest section a snapshot file may have (vCPU states, devices:
/// RAM is outside the sections).
const MAX_SECTION: u64 = 64 << 20;

/// A file's reads: its sections (the state) in one or two.
const READ_BUFFER: usize = 128 << 10;

/// The latest Virtual-clock time a snapshot may hold: about 146 years.
const MAX_VIRTUAL_NS: i64 = i64::MAX / 2;

/// The clocks at the save.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SavedClocks {
    /// The guest's kvmclock, ns.
    kvmclock: u64,
    /// The Virtual clock (our PIT's, RTC's and watchdogs' time), ns.
    virtual_ns: i64,
}

/// The machine's state but its RAM, decoded and checked: what a snapshot
/// file and a migration stream both carry, in the same sections.
pub(super) struct MachineState {
    vcpus: Vec<VcpuState>,
    irqchip: Vec<kvm_irqchip>,
    pit: Option<kvm_pit_state2>,
    clocks: SavedClocks,
    devices: Vec<SavedEntry>,
    /// The guest is in S3 (the `runstate` section).
    suspended: bool,
}

/// Everything a load puts back, decoded and checked.
pub(super) struct Loaded {
    state: MachineState,
    /// Each RAM region's guest address and where its image is in `file`
    /// (from the file's start), checked to lie inside the file.
    ram: Vec<(u64, u64)>,
    /// The snapshot, open.
    file: File,
}

fn refused(why: impl std::fmt::Display) -> CommandFailure {
    CommandFailure::Refused(why.to_string())
}

fn json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, CommandFailure> {
    serde_json::to_vec(value).map_err(|e| refused(format!("cannot encode the {what}: {e}")))
}

fn section<'a>(sections: &'a [Section], name: &str) -> Result<&'a [u8], CommandFailure> {
    sections
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.data.as_slice())
        .ok_or_else(|| refused(format!("the snapshot has no '{name}' section")))
}

fn decode<T: for<'de> Deserialize<'de>>(
    sections: &[Section],
    name: &str,
) -> Result<T, CommandFailure> {
    serde_json::from_slice(section(sections, name)?)
        .map_err(|e| refused(format!("the snapshot's '{name}' section is malformed: {e}")))
}

/// A snapshot file read, its checksums checked and its state sections
/// decoded: all that needs no machine, so that `--incoming file:` does it
/// beside the machine's build. [`PcMachine::check_parsed`] checks the rest
/// (a state that did not decode is refused there, after the shape, as a
/// whole read would).
pub(super) struct ParsedFile {
    shape: Shape,
    sections: Vec<Section>,
    state: Result<MachineState, String>,
    file: File,
    /// Where the image area starts.
    images_at: u64,
    /// The file's size when read.
    len: u64,
}

/// Reads and decodes the snapshot at `path` (see [`ParsedFile`]): its
/// sections, not its RAM images.
pub(super) fn parse_file(path: &Path) -> Result<ParsedFile, String> {
    // A regular file only, opened without blocking: a FIFO would stop the
    // main loop (`snapshot-load`, `migrate-incoming file:`).
    let file = crate::regular_file::open(path, crate::regular_file::Access::Read)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let (shape, sections, end) =
        format::read_counted(&mut reader, MAX_SECTION).map_err(|e| e.to_string())?;
    let file = reader.into_inner();
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let state = decode_sections(&sections);
    Ok(ParsedFile {
        shape,
        sections,
        state,
        file,
        images_at: format::images_at(end),
        len,
    })
}

/// The state sections decoded, not yet checked against a machine.
fn decode_sections(sections: &[Section]) -> Result<MachineState, String> {
    let why = |e: CommandFailure| match e {
        CommandFailure::Refused(why) => why,
        CommandFailure::Machine(e) => e.to_string(),
    };
    Ok(MachineState {
        vcpus: decode(sections, "vcpus").map_err(why)?,
        irqchip: decode(sections, "irqchip").map_err(why)?,
        pit: decode(sections, "kvm-pit").map_err(why)?,
        clocks: decode(sections, "clocks").map_err(why)?,
        devices: decode(sections, "devices").map_err(why)?,
        suspended: match sections.iter().find(|s| s.name == runstate::SECTION) {
            None => false,
            Some(s) => match SavedRunState::decode(&s.data).map_err(|e| e.to_string())? {
                SavedRunState::Suspended => true,
            },
        },
    })
}

/// A RAM region as bytes, to scan it at memory speed rather than through
/// vm-memory's volatile copies.
fn host_slice(
    region: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
) -> Result<&[u8], CommandFailure> {
    let len = usize::try_from(region.len()).map_err(|_| refused("a RAM region too large"))?;
    let ptr = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .map_err(|e| refused(format!("guest RAM: {e}")))?;
    // SAFETY: the region maps `len` bytes at `ptr` for as long as the
    // machine (and so `region`) lives, which the returned borrow cannot
    // outlast. Only a save reads it this way, with every vCPU paused and
    // every virtio worker stopped (`capture_state` stopped them, and a
    // card on vhost-net took its tap back from the kernel's rings, a
    // vhost-vsock-pci stopped the kernel's device), so
    // nothing writes these bytes while the slice exists.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// What a save wrote: its sections and its RAM pages with data (pages of
/// zeroes are holes, written as nothing).
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    /// Bytes written: the sections and the data pages.
    pub(super) bytes: u64,
    /// RAM pages written.
    pub(super) pages: u64,
}

/// A new file's name beside `path`, for this process.
fn temp_beside(path: &Path) -> Option<std::path::PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.{}.part", std::process::id())))
}

impl PcMachine {
    /// What a snapshot of this machine must match.
    pub(super) fn shape(&self) -> Shape {
        Shape {
            cpus: u32::try_from(self.vcpus.len()).unwrap_or(u32::MAX),
            ram: self
                .vm
                .memory()
                .iter()
                .map(|r| (r.start_addr().0, r.len()))
                .collect(),
            kvm_pit: self.fresh_kvm_pit.is_some(),
            devices: self
                .devices
                .model
                .list()
                .into_iter()
                .map(|(id, ty)| (id, ty.to_owned()))
                .collect(),
            cpuid: self.cpuid_table(),
        }
    }

    /// vCPU 0's CPUID table, as its set-up made it ([`Shape::cpuid`]).
    fn cpuid_table(&self) -> Vec<format::CpuidLeaf> {
        let cpus = u32::try_from(self.vcpus.len()).unwrap_or(u32::MAX);
        // The machine's vCPUs were set up from the same arguments, so this
        // cannot fail here; an empty table would not match a saved one.
        crate::cpu::cpuid::vcpu_cpuid(&self.supported_cpuid, 0, cpus)
            .map(|t| {
                t.as_slice()
                    .iter()
                    .map(|e| format::CpuidLeaf {
                        function: e.function,
                        index: e.index,
                        flags: e.flags,
                        eax: e.eax,
                        ebx: e.ebx,
                        ecx: e.ecx,
                        edx: e.edx,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An outgoing live migration needs every guest page written while
    /// the guest runs to be logged: the host kernel's vhost-vsock does not
    /// log the receive buffers it fills (vhost-net does, and its cards
    /// take a log; ours write through guest RAM's bitmap).
    pub(super) fn check_live_migratable(&self) -> Result<(), CommandFailure> {
        if !self.vhost_vsocks.is_empty() {
            return Err(refused(
                "live migration of a machine with a vhost-vsock-pci device is not supported \
                 (the host kernel's vhost-vsock does not log the guest memory it writes); \
                 migrate to a file:, or use virtio-vsock-pci",
            ));
        }
        Ok(())
    }

    /// The PCI slots of the network cards whose rings the host kernel
    /// serves (vhost=on): what a live migration gives its [`DirtyLog`].
    ///
    /// [`DirtyLog`]: vmm_virtio::vhost::DirtyLog
    pub(super) fn vhost_slots(&self) -> Vec<u8> {
        self.nets
            .iter()
            .filter(|n| n.vhost)
            .map(|n| n.slot)
            .collect()
    }

    /// The PCI slots of the virtio functions a snapshot captures.
    fn virtio_slots(&self) -> Vec<u8> {
        self.disks
            .iter()
            .map(|d| d.slot)
            .chain(self.nets.iter().map(|n| n.slot))
            .chain(self.rngs.iter().map(|r| r.slot))
            .chain(self.vsocks.iter().map(|v| v.slot))
            .chain(self.vhost_vsocks.iter().map(|&(_, slot)| slot))
            .collect()
    }

    /// Before the guest runs (`start`): the disk images' locks taken back
    /// after a completed migration (`cont` in `postmigrate`, or after a
    /// reset there), and the virtio workers a save stopped or a load put
    /// back running again.
    pub(super) fn virtio_before_start(&mut self) {
        self.retake_disk_locks();
        crate::virtio_state::resume_all(&self.devices.pci, &self.virtio_slots());
    }

    /// `snapshot-save`'s work: the machine's state into `path`.
    pub(super) fn snapshot_save(&mut self, path: &Path) -> Result<(), CommandFailure> {
        // A suspended machine stops too (`STOP`): `suspended -> save-vm
        // -> suspended` (`RESUME`), as QEMU's.
        let was_live = self.runstate.is_live();
        if was_live {
            self.stop_with(RunState::SaveVm)
                .map_err(CommandFailure::Machine)?;
        }
        let saved = self.write_snapshot(path).map(|_| ());
        if was_live {
            self.start().map_err(CommandFailure::Machine)?;
            self.emit(crate::MachineEvent::Resume);
        }
        saved
    }

    /// The machine's state but its RAM, as the sections a snapshot file
    /// and a migration stream carry ([`crate::snapshot::stream::STATE_SECTIONS`]
    /// order); every vCPU must be paused.
    pub(super) fn capture_state(&mut self) -> Result<Vec<(&'static str, Vec<u8>)>, CommandFailure> {
        let t0 = std::time::Instant::now();
        let machine = |e: vmm_core::vm::VmError| CommandFailure::Machine(e.into());
        let msrs = Arc::new(self.msr_indices.clone());
        let vcpus = self
            .vcpus
            .call_each(|_| {
                let msrs = Arc::clone(&msrs);
                move |vcpu: &kvm_ioctls::VcpuFd| VcpuState::save(vcpu, true, &msrs)
            })
            .map_err(|e| CommandFailure::Machine(e.into()))?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(format!("cannot save a vCPU: {e}")))?;
        log::debug!("snapshot: vCPUs saved at {:?}", t0.elapsed());
        // KVM's PICs and IO-APIC; none with the split irqchip (whose
        // fresh state is empty): ours are devices.
        let irqchip = if self.fresh_irqchip.is_empty() {
            Vec::new()
        } else {
            self.vm.irqchip_state().map_err(machine)?
        };
        let pit = match self.fresh_kvm_pit {
            Some(_) => Some(self.vm.pit_state().map_err(machine)?),
            None => None,
        };
        let clocks = SavedClocks {
            kvmclock: match self.paused_clock {
                Some(ns) => ns,
                None => self.vm.clock_ns().map_err(machine)?,
            },
            virtual_ns: self.clocks.now(ClockType::Virtual),
        };
        // The virtio workers stop with nothing in flight (they run again
        // when the guest does): their queues and the RAM stay as captured.
        crate::virtio_state::pause_all(&self.devices.pci, &self.virtio_slots()).map_err(refused)?;
        let devices = self.devices.model.save().map_err(refused)?;
        log::debug!("snapshot: devices saved at {:?}", t0.elapsed());
        let mut sections = vec![
            ("vcpus", json("vCPUs", &vcpus)?),
            ("irqchip", json("irqchip", &irqchip)?),
            ("kvm-pit", json("PIT", &pit)?),
            ("clocks", json("clocks", &clocks)?),
            ("devices", json("devices", &devices)?),
        ];
        // Stopped from `suspended` (or still holding a guest in S3): the
        // loaded machine must be suspended too.
        if self.asleep || self.runstate.state() == RunState::Suspended {
            sections.push((runstate::SECTION, SavedRunState::Suspended.encode()));
        }
        Ok(sections)
    }

    /// Writes a snapshot to `path`: the sections, then each RAM region's
    /// image, pages of zeroes and pages never touched left as holes. The
    /// file is written under a new name beside `path` and renamed over it
    /// once synced: a failed save leaves the old file, and RAM mapped from
    /// that file (a restored machine saving to where it came from) keeps
    /// its pages ([`crate::snapshot::mapped`]). Returns what it wrote.
    pub(super) fn write_snapshot(&mut self, path: &Path) -> Result<Written, CommandFailure> {
        let t0 = std::time::Instant::now();
        let state = self.capture_state()?;
        let io = |e: std::io::Error| refused(format!("cannot write {}: {e}", path.display()));
        let mut head = Vec::new();
        format::write_start(&mut head, &self.shape()).map_err(io)?;
        for (name, data) in &state {
            format::write_section(&mut head, name, data).map_err(io)?;
        }
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for region in self.vm.memory().iter() {
            let ram = host_slice(region)?;
            if ram.len() % format::PAGE != 0 {
                return Err(refused("a RAM region is not whole pages"));
            }
            let image = format::RamImage {
                offset,
                len: ram.len() as u64,
            };
            let name = format!("ram@{:x}", region.start_addr().0);
            format::write_section(&mut head, &name, &image.encode()).map_err(io)?;
            offset += image.len;
            regions.push((region.start_addr().0, ram, image));
        }
        format::write_end(&mut head).map_err(io)?;
        let images_at = format::images_at(head.len() as u64);
        let temp = temp_beside(path)
            .ok_or_else(|| refused(format!("{}: not a file name", path.display())))?;
        let written = (|| -> std::io::Result<u64> {
            let file = File::create(&temp)?;
            file.write_all_at(&head, 0)?;
            let mut pages = 0;
            for (gpa, ram, image) in &regions {
                let (sources, old) = self.page_sources(*gpa, ram);
                pages += crate::snapshot::image::write_image(
                    &file,
                    images_at + image.offset,
                    ram,
                    &sources,
                    old,
                )?;
            }
            file.set_len(images_at + offset)?;
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
            Ok(pages)
        })();
        let pages = match written {
            Ok(pages) => pages,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(io(e));
            }
        };
        log::debug!("snapshot: written at {:?}", t0.elapsed());
        Ok(Written {
            bytes: head.len() as u64 + pages * format::PAGE as u64,
            pages,
        })
    }

    /// Reads `path` and checks all of it against this machine.
    pub(super) fn read_snapshot(&self, path: &Path) -> Result<Loaded, CommandFailure> {
        let parsed = parse_file(path).map_err(refused)?;
        self.check_parsed(parsed)
    }

    /// A file read by [`parse_file`], checked against this machine: its
    /// shape, its RAM sections, no unknown section, then its state.
    pub(super) fn check_parsed(&self, parsed: ParsedFile) -> Result<Loaded, CommandFailure> {
        let ParsedFile {
            shape,
            sections,
            state,
            file,
            images_at,
            len,
        } = parsed;
        let ours = self.shape();
        if let Some(why) = shape.difference(&ours) {
            return Err(refused(why));
        }
        let mut known: Vec<String> = Vec::new();
        let mut ram = Vec::new();
        for (gpa, size) in &ours.ram {
            let name = format!("ram@{gpa:x}");
            let data = section(&sections, &name)?;
            let image = format::RamImage::decode(data)
                .ok()
                .filter(|i| i.len == *size)
                .ok_or_else(|| {
                    refused(format!("the snapshot's '{name}' does not match its region"))
                })?;
            // A page past the file's end would end the VMM when touched
            // (SIGBUS), so a cut file is refused here.
            let start = images_at
                .checked_add(image.offset)
                .filter(|&start| start.checked_add(image.len).is_some_and(|end| end <= len))
                .ok_or_else(|| {
                    refused(format!("the snapshot is cut short (the image of '{name}')"))
                })?;
            ram.push((*gpa, start));
            known.push(name);
        }
        if let Some(s) = sections.iter().find(|s| {
            !known.contains(&s.name) && !crate::snapshot::stream::is_state_section(&s.name)
        }) {
            return Err(refused(format!(
                "the snapshot has an unknown section '{}'",
                s.name
            )));
        }
        let state = state.map_err(refused)?;
        self.check_state(&state)?;
        Ok(Loaded { state, ram, file })
    }

    /// The state sections decoded and checked against this machine.
    pub(super) fn decode_state(
        &self,
        sections: &[Section],
    ) -> Result<MachineState, CommandFailure> {
        let state = decode_sections(sections).map_err(refused)?;
        self.check_state(&state)?;
        Ok(state)
    }

    /// A decoded state against this machine: vCPUs, irqchip, PIT, the
    /// virtio devices' backings.
    fn check_state(&self, state: &MachineState) -> Result<(), CommandFailure> {
        if state.vcpus.len() != self.vcpus.len() || state.irqchip.len() != self.fresh_irqchip.len()
        {
            return Err(refused("the snapshot's vCPUs or irqchip do not match"));
        }
        if state.pit.is_some() != matches!(self.pit_backend, PitBackend::Kvm) {
            return Err(refused("the snapshot's PIT does not match"));
        }
        // The devices add periods to the Virtual clock's time: a time near
        // i64::MAX would overflow them (or, saturated, fire their timers
        // for ever). A guest's runs for far less than half of it.
        if !(0..=MAX_VIRTUAL_NS).contains(&state.clocks.virtual_ns) {
            return Err(refused(format!(
                "the snapshot's Virtual clock ({} ns) is out of range",
                state.clocks.virtual_ns
            )));
        }
        let ours = crate::virtio_state::entries(
            &self.disks,
            &self.nets,
            &self.rngs,
            &self.vsocks,
            &self.vhost_vsocks,
        );
        crate::virtio_state::check_backings(&ours, &state.devices).map_err(refused)
    }

    /// Puts a checked snapshot back on the stopped machine: RAM (each
    /// region's image mapped over it, see [`crate::snapshot::mapped`], or
    /// read where the file cannot be mapped), irqchip, KVM's PIT, every
    /// vCPU, the clocks, the devices.
    pub(super) fn apply_snapshot(&mut self, loaded: Loaded) -> Result<(), CommandFailure> {
        let Loaded { state, ram, file } = loaded;
        let mut mapped = crate::snapshot::mapped::RamFile::new(file);
        let mem = self.vm.memory();
        for (gpa, start) in &ram {
            let region = mem
                .find_region(GuestAddress(*gpa))
                .ok_or_else(|| refused(format!("no RAM region at {gpa:#x}")))?;
            let ram = host_slice(region)?;
            let (addr, len) = (ram.as_ptr() as usize, ram.len());
            // SAFETY: one whole RAM region of this machine, whose contents
            // the snapshot replaces; its vCPUs are stopped and its virtio
            // workers too (`snapshot_load` stopped them; on an incoming
            // machine none has started), so nothing reads or writes it
            // until the load is done.
            match unsafe { crate::snapshot::mapped::map_over(addr, len, mapped.file(), *start) } {
                Ok(()) => mapped.add(*gpa, *start, len as u64),
                Err(e) => {
                    log::debug!("snapshot: cannot map the RAM image ({e}): reading it");
                    // SAFETY: as above; `ram` is not used meanwhile.
                    let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
                    crate::snapshot::mapped::read_into(mapped.file(), *start, dst)
                        .map_err(|e| refused(format!("cannot read the RAM image: {e}")))?;
                }
            }
        }
        // What was mapped from an earlier file and is now read in holds
        // every page (the page map shows them all).
        self.ram_file = (!mapped.is_empty()).then_some(mapped);
        self.apply_state(state)
    }

    /// Where a save takes each page of the RAM region at `gpa` (`ram`)
    /// from ([`crate::snapshot::image::sources`]): the page map says which
    /// pages were never touched or, for RAM mapped from a snapshot file,
    /// never written since; the file's holes say which of those hold
    /// zeroes. With the file to copy the others from, if mapped.
    pub(super) fn page_sources(
        &self,
        gpa: u64,
        ram: &[u8],
    ) -> (
        Vec<crate::snapshot::image::Source>,
        Option<crate::snapshot::image::OldImage<'_>>,
    ) {
        let pages = crate::snapshot::pagemap::pages(ram.as_ptr() as usize, ram.len())
            .map_err(|e| log::debug!("snapshot: no pagemap ({e}): every page is read"))
            .ok();
        let mapped = self.ram_file.as_ref().and_then(|f| {
            let data = f.data_pages(gpa, ram.len() as u64)?;
            let start = f.image_start(gpa)?;
            Some((
                data,
                crate::snapshot::image::OldImage {
                    file: f.file(),
                    start,
                },
            ))
        });
        let sources = crate::snapshot::image::sources(
            pages.as_deref(),
            mapped.as_ref().map(|(data, _)| data.as_slice()),
            ram.len() / format::PAGE,
        );
        (sources, mapped.map(|(_, old)| old))
    }

    /// Puts back a checked state (all but the RAM) on the stopped machine:
    /// irqchip, KVM's PIT, every vCPU, the clocks, the devices.
    pub(super) fn apply_state(&mut self, state: MachineState) -> Result<(), CommandFailure> {
        let machine = |e: vmm_core::vm::VmError| CommandFailure::Machine(e.into());
        self.vm.set_irqchip_state(&state.irqchip).map_err(machine)?;
        if let Some(pit) = &state.pit {
            self.vm.set_pit_state(pit).map_err(machine)?;
        }
        let vcpus = Arc::new(state.vcpus);
        self.vcpus
            .call_each(|i| {
                let vcpus = Arc::clone(&vcpus);
                move |vcpu: &kvm_ioctls::VcpuFd| match vcpus.get(i as usize) {
                    Some(state) => state.restore(vcpu, true).map_err(|e| e.to_string()),
                    None => Err("no state for this vCPU".to_owned()),
                }
            })
            .map_err(|e| CommandFailure::Machine(e.into()))?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(format!("cannot restore a vCPU: {e}")))?;
        // The guest's time as it was: the Virtual clock (stopped now) and
        // the kvmclock, put back when the guest runs again.
        self.clocks.set_virtual_ns(state.clocks.virtual_ns);
        self.devices.model.load(&state.devices).map_err(refused)?;
        self.paused_clock = Some(state.clocks.kvmclock);
        // A guest saved in S3 sleeps on: the next start is `suspended`.
        self.asleep = state.suspended;
        Ok(())
    }

    /// `snapshot-load`'s work: the machine back to the state in `path`.
    pub(super) fn snapshot_load(&mut self, path: &Path) -> Result<(), CommandFailure> {
        let loaded = self.read_snapshot(path)?;
        let was_live = self.runstate.is_live();
        let state = self.runstate.state();
        if loaded.state.suspended
            && !was_live
            && !vmm_runstate::is_allowed(state, RunState::Suspended)
        {
            return Err(refused(format!(
                "the snapshot is of a suspended guest, which cannot be resumed from state \
                 '{state}' (system_reset first)"
            )));
        }
        if was_live {
            self.stop_with(RunState::RestoreVm)
                .map_err(CommandFailure::Machine)?;
        } else {
            self.vcpus
                .pause_all()
                .map_err(|e| CommandFailure::Machine(e.into()))?;
        }
        // From here on the machine changes: a failure leaves it stopped
        // (QEMU leaves a failed load's VM stopped too); `system_reset`
        // starts afresh. The virtio workers stop first: a card's (or the
        // host kernel's vhost) would write received frames into the RAM
        // being replaced.
        crate::virtio_state::stop_all_for_load(&self.devices.pci, &self.virtio_slots());
        self.apply_snapshot(loaded)?;
        // A running or suspended machine resumes at once (`RESUME`):
        // `running`, or `suspended` if the snapshot's guest is in S3.
        if was_live {
            self.start().map_err(CommandFailure::Machine)?;
            self.emit(crate::MachineEvent::Resume);
        }
        Ok(())
    }
}

impl PcMachine {
    /// The snapshot jobs' commands: a save or load runs as a job whose
    /// statuses are events; `query-jobs` and `job-dismiss` see them.
    pub(super) fn job_command(
        &mut self,
        command: crate::Command,
    ) -> Result<crate::Reply, CommandFailure> {
        use crate::{Command, Reply};
        let (job, path, kind) = match command {
            Command::QueryJobs => return Ok(Reply::Jobs(self.jobs.list())),
            Command::JobDismiss { id } => {
                self.jobs.dismiss(&id).map_err(CommandFailure::Refused)?;
                self.emit(crate::MachineEvent::JobStatus { id, status: "null" });
                return Ok(Reply::Done);
            }
            Command::SnapshotSave { job, path } => (job, path, "snapshot-save"),
            Command::SnapshotLoad { job, path } => (job, path, "snapshot-load"),
            _ => return Err(refused("not a job command")),
        };
        let started = self
            .jobs
            .start(&job, kind)
            .map_err(CommandFailure::Refused)?;
        self.emit_job(&job, &started);
        let result = if kind == "snapshot-save" {
            self.snapshot_save(&path)
        } else {
            self.snapshot_load(&path)
        };
        let (outcome, machine_error) = match result {
            Ok(()) => (Ok(()), None),
            Err(CommandFailure::Refused(why)) => (Err(why), None),
            Err(CommandFailure::Machine(e)) => (Err(e.to_string()), Some(e)),
        };
        if let Err(why) = &outcome {
            log::warn!("{kind} {job}: {why}");
        }
        let finished = self.jobs.finish(&job, outcome);
        self.emit_job(&job, &finished);
        match machine_error {
            Some(e) => Err(CommandFailure::Machine(e)),
            None => Ok(Reply::Done),
        }
    }

    fn emit_job(&mut self, id: &str, statuses: &[crate::snapshot::jobs::JobStatus]) {
        for status in statuses {
            self.emit(crate::MachineEvent::JobStatus {
                id: id.to_owned(),
                status: status.as_str(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_file_goes_beside_the_target() {
        let t = temp_beside(Path::new("/some/dir/vm.snap")).unwrap();
        assert_eq!(t.parent(), Some(Path::new("/some/dir")));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".vm.snap.") && name.ends_with(".part"),
            "{name}"
        );
        assert_eq!(temp_beside(Path::new("/")), None);
    }
}
