//! The snapshot file: a header, named sections, each with a CRC-32, and
//! the guest's RAM as page-aligned images after them.
//!
//! ```text
//! "VMMSNAP\0"   8 bytes, the magic
//! version       u32 little-endian (FORMAT_VERSION)
//! section*      name length u16, name (UTF-8), data length u64, CRC-32 of
//!               the data u32, the data
//! end           name length 0
//! (zeroes)      up to the next multiple of 4096 bytes: the image area
//! image*        each RAM region's bytes, page for page, where its
//!               `ram@<guest address, hex>` section says (RamImage)
//! ```
//!
//! The first section is `shape`: what the machine must be to take the
//! snapshot (vCPU count, RAM regions, which PIT, its devices by id and
//! type, the CPU its vCPUs see: the first vCPU's CPUID table), as JSON. Compatibility rule: a reader takes its own
//! `FORMAT_VERSION` only; a section it does not know is refused, so that
//! nothing in a file is silently dropped. A section added within a version
//! is optional, written only when the machine needs it, so that files
//! without it read as before and older readers refuse files with it
//! (`runstate`, [`super::runstate`], for a guest in S3).
//!
//! RAM is stored so that a restore maps it instead of reading it
//! (`MAP_PRIVATE`: each page comes from the file when the guest first
//! touches it, and a write makes the guest its own copy, as Firecracker's
//! memory file): each region a page-aligned image at a page-aligned
//! offset, its pages of zeroes left as holes, so that untouched RAM costs
//! no disk. The images carry no checksum (checking one would read them
//! all): the VMM never interprets guest RAM, so a damaged page can only
//! mislead the guest, as a damaged disk block does. Everything the VMM
//! does interpret is in the checksummed sections.
//!
//! Reading is for untrusted files: every length is checked against the
//! file's own size and a caller's limit before anything is allocated,
//! and a damaged, cut or foreign file is an error naming what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";
/// The layout this build writes and reads.
///
/// 2 (2026-12-05): RAM as mapped images (version 1 stored it inside its
/// sections, zero pages as bits of a bitmap).
/// 3 (2026-12-05 evening): the shape holds the vCPUs' CPUID.
pub const FORMAT_VERSION: u32 = 3;
/// The longest section name.
const MAX_NAME: usize = 64;

/// What a machine must be to take a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// vCPUs.
    pub cpus: u32,
    /// RAM regions (guest address, bytes), in order.
    pub ram: Vec<(u64, u64)>,
    /// KVM's in-kernel PIT rather than ours.
    pub kvm_pit: bool,
    /// The device list: (id, type), in order.
    pub devices: Vec<(String, String)>,
    /// The CPUID table of vCPU 0 (the others differ from it only in
    /// their APIC IDs, which the vCPU count fixes): the CPU the guest
    /// was told it runs on, from the host's CPU and KVM. A guest moved to
    /// a CPU without a feature it uses would fault, so it must match.
    pub cpuid: Vec<CpuidLeaf>,
}

/// One CPUID leaf (`function`, subleaf `index`) and its four registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidLeaf {
    /// EAX on entry: the leaf.
    pub function: u32,
    /// ECX on entry: the subleaf (where `flags` says it matters).
    pub index: u32,
    /// KVM's flags for the entry.
    pub flags: u32,
    /// The registers CPUID returns.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidLeaf {
    /// The first leaf where `saved` and `here` differ, in words (a leaf
    /// one of them lacks counts); `None` when they are the same. `saved`
    /// comes from a file or a stream: any size, in any order, in
    /// O(n log n).
    fn difference(saved: &[CpuidLeaf], here: &[CpuidLeaf]) -> Option<String> {
        let by_key = |t: &[CpuidLeaf]| -> BTreeMap<(u32, u32), CpuidLeaf> {
            t.iter().map(|l| ((l.function, l.index), *l)).collect()
        };
        let (saved_map, here_map) = (by_key(saved), by_key(here));
        if saved_map.len() != saved.len() {
            return Some("the snapshot's CPUID table names a leaf twice".to_owned());
        }
        let keys: BTreeSet<&(u32, u32)> = saved_map.keys().chain(here_map.keys()).collect();
        for k in keys {
            let (a, b) = (saved_map.get(k).copied(), here_map.get(k).copied());
            if a == b {
                continue;
            }
            let leaf = format!("CPUID leaf {:#x} subleaf {}", k.0, k.1);
            let what = match (a, b) {
                (Some(a), Some(b)) => {
                    let regs = [
                        ("EAX", a.eax, b.eax),
                        ("EBX", a.ebx, b.ebx),
                        ("ECX", a.ecx, b.ecx),
                        ("EDX", a.edx, b.edx),
                    ];
                    match regs.iter().find(|(_, x, y)| x != y) {
                        Some((reg, x, y)) => {
                            format!("{leaf}: {reg} {x:#010x} in the snapshot, {y:#010x} here")
                        }
                        None => format!(
                            "{leaf}: flags {:#x} in the snapshot, {:#x} here",
                            a.flags, b.flags
                        ),
                    }
                }
                (Some(_), None) => format!("{leaf} is in the snapshot, not here"),
                (None, _) => format!("{leaf} is here, not in the snapshot"),
            };
            return Some(format!(
                "the snapshot's vCPUs saw another CPU ({what}): it needs a host with the same \
                 CPU and KVM"
            ));
        }
        None
    }
}

impl Shape {
    /// What differs from `other` (this file's shape against the
    /// machine's), in words; `None` when they match.
    pub fn difference(&self, machine: &Shape) -> Option<String> {
        if self.cpus != machine.cpus {
            return Some(format!(
                "the snapshot has {} vCPUs, this machine {}",
                self.cpus, machine.cpus
            ));
        }
        if self.ram != machine.ram {
            // Saturating: a file's shape is not to be trusted.
            let total =
                |r: &[(u64, u64)]| r.iter().fold(0u64, |t, (_, s)| t.saturating_add(*s)) >> 20;
            return Some(format!(
                "the snapshot has {} MiB of RAM, this machine {} MiB",
                total(&self.ram),
                total(&machine.ram)
            ));
        }
        if self.kvm_pit != machine.kvm_pit {
            return Some("the snapshot and this machine have different PITs (--pit)".into());
        }
        if self.devices != machine.devices {
            // The first device that differs, by name (a virtio device's id
            // names its drive or netdev and its PCI address).
            let pair = self
                .devices
                .iter()
                .map(Some)
                .chain(std::iter::repeat(None))
                .zip(
                    machine
                        .devices
                        .iter()
                        .map(Some)
                        .chain(std::iter::repeat(None)),
                )
                .take(self.devices.len().max(machine.devices.len()))
                .find(|(a, b)| a != b);
            let name = |d: Option<&(String, String)>| match d {
                Some((id, ty)) => format!("'{id}' ({ty})"),
                None => "nothing".to_owned(),
            };
            if let Some((saved, ours)) = pair {
                return Some(format!(
                    "the snapshot has {} where this machine has {}",
                    name(saved),
                    name(ours)
                ));
            }
        }
        CpuidLeaf::difference(&self.cpuid, &machine.cpuid)
    }
}

/// Why a snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading failed.
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] io::Error),
    /// Not a snapshot (or stream) of this VMM.
    #[error("not a snapshot file or migration stream of this VMM (bad magic)")]
    Magic,
    /// Another layout version.
    #[error("format version {0}, this build reads {1}")]
    Version(u32, u32),
    /// The file ends inside something.
    #[error("the snapshot is cut short ({0})")]
    Truncated(&'static str),
    /// A section name that is not UTF-8 or too long.
    #[error("a section name is malformed")]
    Name,
    /// A section longer than what may be taken.
    #[error("section '{name}' is {len} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The section.
        name: String,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A section whose data does not match its checksum.
    #[error("section '{0}' is damaged (CRC-32 mismatch)")]
    Checksum(String),
    /// The same section twice.
    #[error("section '{0}' appears twice")]
    Duplicate(String),
    /// More sections than any snapshot has.
    #[error("more than {MAX_SECTIONS} sections")]
    TooManySections,
    /// A RAM section that does not match its region.
    #[error("a RAM section does not match its region")]
    Ram,
    /// The file does not start with its shape, or it does not decode.
    #[error("the snapshot's shape is missing or malformed")]
    Shape(#[source] Option<serde_json::Error>),
}

/// A section read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its name.
    pub name: String,
    /// Its data.
    pub data: Vec<u8>,
}

/// Writes one section: its name (1 to 64 bytes), length, CRC-32, data.
pub fn write_section(w: &mut impl Write, name: &str, data: &[u8]) -> io::Result<()> {
    let len = u16::try_from(name.len())
        .ok()
        .filter(|&l| l > 0 && usize::from(l) <= MAX_NAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad section name"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&(data.len() as u64).to_le_bytes())?;
    w.write_all(&crc32fast::hash(data).to_le_bytes())?;
    w.write_all(data)
}

/// Writes a snapshot's start: the magic, the version and `shape`; the
/// sections follow ([`write_section`]), then [`write_end`].
pub fn write_start(w: &mut impl Write, shape: &Shape) -> io::Result<()> {
    w.write_all(&MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    let shape = serde_json::to_vec(shape).map_err(io::Error::other)?;
    write_section(w, "shape", &shape)
}

/// Ends a snapshot.
pub fn write_end(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&0u16.to_le_bytes())?;
    w.flush()
}

/// Writes a whole snapshot: `shape`, then `sections`.
pub fn write(w: &mut impl Write, shape: &Shape, sections: &[(&str, &[u8])]) -> io::Result<()> {
    write_start(w, shape)?;
    for (name, data) in sections {
        write_section(w, name, data)?;
    }
    write_end(w)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Truncated(what),
        _ => FormatError::Io(e),
    })
}

/// Reads the magic `expected` and the version `version`.
pub fn read_header(r: &mut impl Read, expected: &[u8; 8], version: u32) -> Result<(), FormatError> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic, "magic")?;
    if &magic != expected {
        return Err(FormatError::Magic);
    }
    let mut word = [0u8; 4];
    read_exact(r, &mut word, "version")?;
    let found = u32::from_le_bytes(word);
    if found != version {
        return Err(FormatError::Version(found, version));
    }
    Ok(())
}

/// Reads one section, `None` at the end mark; its data may be no longer
/// than `limit(name)` bytes, checked before anything is allocated.
pub fn read_section(
    r: &mut impl Read,
    limit: impl Fn(&str) -> u64,
) -> Result<Option<Section>, FormatError> {
    let mut len = [0u8; 2];
    read_exact(r, &mut len, "section header")?;
    let name_len = usize::from(u16::from_le_bytes(len));
    if name_len == 0 {
        return Ok(None);
    }
    if name_len > MAX_NAME {
        return Err(FormatError::Name);
    }
    let mut name = vec![0u8; name_len];
    read_exact(r, &mut name, "section name")?;
    let name = String::from_utf8(name).map_err(|_| FormatError::Name)?;
    let mut len = [0u8; 8];
    read_exact(r, &mut len, "section header")?;
    let len = u64::from_le_bytes(len);
    let max = limit(&name);
    if len > max {
        return Err(FormatError::TooLarge {
            name,
            len,
            limit: max,
        });
    }
    let mut word = [0u8; 4];
    read_exact(r, &mut word, "section header")?;
    let crc = u32::from_le_bytes(word);
    // Read through `take` so that a cut file fails before a large
    // allocation is filled with nothing.
    let mut data = Vec::new();
    let got = r.by_ref().take(len).read_to_end(&mut data)?;
    if got as u64 != len {
        return Err(FormatError::Truncated("section data"));
    }
    if crc32fast::hash(&data) != crc {
        return Err(FormatError::Checksum(name));
    }
    Ok(Some(Section { name, data }))
}

/// Decodes a `shape` section.
pub fn decode_shape(section: Option<&Section>) -> Result<Shape, FormatError> {
    let shape = section
        .filter(|s| s.name == "shape")
        .ok_or(FormatError::Shape(None))?;
    serde_json::from_slice(&shape.data).map_err(|e| FormatError::Shape(Some(e)))
}

/// The most sections a file may have: its shape, the machine's state
/// sections and a RAM image per region are a dozen; a file of thousands of
/// small ones (each one's name compared with the others') is damaged or
/// made to stall the main loop, which reads a file to load.
pub const MAX_SECTIONS: usize = 64;

/// Reads a snapshot's sections (not its RAM images); no section may be
/// longer than `max_section` bytes (what the caller is ready to
/// allocate).
pub fn read(r: &mut impl Read, max_section: u64) -> Result<(Shape, Vec<Section>), FormatError> {
    read_counted(r, max_section).map(|(shape, sections, _)| (shape, sections))
}

/// [`read`], also saying where the sections ended: the image area starts
/// at the next page boundary ([`images_at`]).
pub fn read_counted(
    r: &mut impl Read,
    max_section: u64,
) -> Result<(Shape, Vec<Section>, u64), FormatError> {
    let mut counted = Counting { inner: r, read: 0 };
    let (shape, sections) = read_sections(&mut counted, max_section)?;
    Ok((shape, sections, counted.read))
}

/// A reader that counts the bytes it hands out.
struct Counting<'a, R> {
    inner: &'a mut R,
    read: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

fn read_sections(
    r: &mut impl Read,
    max_section: u64,
) -> Result<(Shape, Vec<Section>), FormatError> {
    read_header(r, &MAGIC, FORMAT_VERSION)?;
    let mut sections: Vec<Section> = Vec::new();
    while let Some(section) = read_section(r, |_| max_section)? {
        if sections.len() == MAX_SECTIONS {
            return Err(FormatError::TooManySections);
        }
        if sections.iter().any(|s| s.name == section.name) {
            return Err(FormatError::Duplicate(section.name));
        }
        sections.push(section);
    }
    let shape = decode_shape(sections.first())?;
    sections.remove(0);
    Ok((shape, sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            cpus: 2,
            ram: vec![(0, 128 << 20)],
            kvm_pit: false,
            devices: vec![("serial0".into(), "isa-serial".into())],
            cpuid: vec![leaf(0, 0, 0xd), leaf(7, 0, 0x029c_6fbf)],
        }
    }

    fn leaf(function: u32, index: u32, ebx: u32) -> CpuidLeaf {
        CpuidLeaf {
            function,
            index,
            flags: 0,
            eax: 1,
            ebx,
            ecx: 0,
            edx: 0,
        }
    }

    #[test]
    fn another_cpu_is_named_by_its_first_different_leaf() {
        let here = shape();
        assert_eq!(shape().difference(&here), None);
        let mut other = shape();
        other.cpuid[1].ebx &= !(1 << 5);
        assert_eq!(
            other.difference(&here).as_deref(),
            Some(
                "the snapshot's vCPUs saw another CPU (CPUID leaf 0x7 subleaf 0: EBX \
                 0x029c6f9f in the snapshot, 0x029c6fbf here): it needs a host with the same \
                 CPU and KVM"
            )
        );
        let mut fewer = shape();
        fewer.cpuid.pop();
        let why = fewer.difference(&here).unwrap();
        assert!(
            why.contains("(CPUID leaf 0x7 subleaf 0 is here, not in the snapshot)"),
            "{why}"
        );
        let why = here.difference(&fewer).unwrap();
        assert!(
            why.contains("(CPUID leaf 0x7 subleaf 0 is in the snapshot, not here)"),
            "{why}"
        );
        // The order of the table does not matter; a flag does.
        let mut reordered = shape();
        reordered.cpuid.reverse();
        assert_eq!(reordered.difference(&here), None);
        let mut flagged = shape();
        flagged.cpuid[0].flags = 1;
        assert!(flagged
            .difference(&here)
            .unwrap()
            .contains("flags 0x1 in the snapshot, 0x0 here"));
        // A table from a file may be of any size: compared in O(n log n),
        // a leaf named twice refused.
        let mut huge = shape();
        huge.cpuid = (0..200_000).map(|i| leaf(0x4000_0000 + i, 0, 0)).collect();
        assert!(huge
            .difference(&here)
            .unwrap()
            .contains("CPUID leaf 0x0 subleaf 0"));
        let mut twice = shape();
        twice.cpuid.push(twice.cpuid[0]);
        assert_eq!(
            twice.difference(&here).as_deref(),
            Some("the snapshot's CPUID table names a leaf twice")
        );
        // The vCPU count is named first: it also changes the table.
        let mut two = other.clone();
        two.cpus = 4;
        assert_eq!(
            two.difference(&here).as_deref(),
            Some("the snapshot has 4 vCPUs, this machine 2")
        );
    }

    fn file() -> Vec<u8> {
        let mut out = Vec::new();
        write(
            &mut out,
            &shape(),
            &[("vcpus", b"[1,2]"), ("ram", &[7u8; 1000])],
        )
        .unwrap();
        out
    }

    #[test]
    fn a_written_snapshot_reads_back() {
        let (s, sections) = read(&mut file().as_slice(), 1 << 20).unwrap();
        assert_eq!(s, shape());
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].name, "vcpus");
        assert_eq!(sections[1].data, vec![7u8; 1000]);
    }

    #[test]
    fn damaged_cut_and_foreign_files_are_refused() {
        let good = file();
        let err = |bytes: &[u8]| read(&mut &bytes[..], 1 << 20).unwrap_err().to_string();
        assert!(err(b"ELF\x7f1234567").contains("bad magic"));
        for old in [1u8, 2] {
            let mut v = good.clone();
            v[8] = old;
            assert_eq!(err(&v), format!("format version {old}, this build reads 3"));
        }
        // Every cut is an error, never a panic.
        for cut in 0..good.len() {
            assert!(read(&mut &good[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        let last = flipped.len() - 10;
        flipped[last] ^= 1;
        assert_eq!(err(&flipped), "section 'ram' is damaged (CRC-32 mismatch)");
        // A section larger than the caller allows is refused before it is
        // read.
        let e = read(&mut good.as_slice(), 500).unwrap_err().to_string();
        assert!(
            e.contains("section 'ram' is 1000 bytes, more than the 500"),
            "{e}"
        );
        // No shape first.
        let mut no_shape = Vec::new();
        no_shape.extend_from_slice(&MAGIC);
        no_shape.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        write_section(&mut no_shape, "ram", b"x").unwrap();
        no_shape.extend_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            err(&no_shape),
            "the snapshot's shape is missing or malformed"
        );
        // Thousands of small sections: refused past the most a snapshot has
        // (each name is compared with the others', so a long list would
        // stall the main loop).
        let many = |n: usize| {
            let mut v = Vec::new();
            let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
            let sections: Vec<(&str, &[u8])> =
                names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
            write(&mut v, &shape(), &sections).unwrap();
            v
        };
        // The shape is one of them.
        assert_eq!(
            read(&mut many(MAX_SECTIONS - 1).as_slice(), 1 << 20)
                .unwrap()
                .1
                .len(),
            MAX_SECTIONS - 1
        );
        assert_eq!(
            err(&many(MAX_SECTIONS)),
            format!("more than {MAX_SECTIONS} sections")
        );
        assert_eq!(
            err(&many(100_000)),
            format!("more than {MAX_SECTIONS} sections")
        );
    }

    #[test]
    fn shapes_say_how_they_differ() {
        let a = shape();
        assert_eq!(a.difference(&a), None);
        let mut b = a.clone();
        b.cpus = 1;
        assert_eq!(
            a.difference(&b).unwrap(),
            "the snapshot has 2 vCPUs, this machine 1"
        );
        let mut c = a.clone();
        c.ram = vec![(0, 64 << 20)];
        assert_eq!(
            a.difference(&c).unwrap(),
            "the snapshot has 128 MiB of RAM, this machine 64 MiB"
        );
        // A file's RAM that overflows when summed: words, not a panic.
        let mut huge = a.clone();
        huge.ram = vec![(0, u64::MAX), (0, 1)];
        assert!(huge.difference(&a).unwrap().contains(" MiB of RAM"));
        let mut d = a.clone();
        d.devices.push(("watchdog0".into(), "ib700".into()));
        assert_eq!(
            a.difference(&d).unwrap(),
            "the snapshot has nothing where this machine has 'watchdog0' (ib700)"
        );
        let mut e = a.clone();
        e.devices
            .push(("drive0@00:03.0".into(), "virtio-blk-pci".into()));
        let mut f = a.clone();
        f.devices
            .push(("drive0@00:04.0".into(), "virtio-blk-pci".into()));
        assert_eq!(
            e.difference(&f).unwrap(),
            "the snapshot has 'drive0@00:03.0' (virtio-blk-pci) where this machine has \
             'drive0@00:04.0' (virtio-blk-pci)"
        );
    }
}

/// The page size of RAM images.
pub const PAGE: usize = 4096;

/// Where the image area of a file whose sections end at byte `end`
/// starts: the next page boundary.
pub fn images_at(end: u64) -> u64 {
    end.div_ceil(PAGE as u64) * PAGE as u64
}

/// Where a RAM region's image is: the `ram@<guest address, hex>`
/// section's 16 bytes, `offset` then `len` (u64 little-endian), `len`
/// bytes from `offset` into the image area, both whole pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamImage {
    /// From the start of the image area.
    pub offset: u64,
    /// The region's size.
    pub len: u64,
}

impl RamImage {
    /// The section's length.
    pub const SIZE: usize = 16;

    /// The section's data.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Checks a section's data: 16 bytes, whole pages, no overflow.
    pub fn decode(data: &[u8]) -> Result<Self, FormatError> {
        let bytes: &[u8; Self::SIZE] = data.try_into().map_err(|_| FormatError::Ram)?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let image = Self {
            offset: word(0),
            len: word(8),
        };
        let page = PAGE as u64;
        if image.offset % page != 0 || image.len % page != 0 || image.end().is_none() {
            return Err(FormatError::Ram);
        }
        Ok(image)
    }

    /// Where it ends in the image area (`None`: past `u64`).
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

#[cfg(test)]
mod ram_tests {
    use super::*;

    #[test]
    fn images_start_on_a_page_and_their_places_round_trip() {
        assert_eq!(images_at(0), 0);
        assert_eq!(images_at(1), 4096);
        assert_eq!(images_at(4096), 4096);
        assert_eq!(images_at(4097), 8192);
        let image = RamImage {
            offset: 3 * 4096,
            len: 128 << 20,
        };
        assert_eq!(RamImage::decode(&image.encode()).unwrap(), image);
    }

    #[test]
    fn a_place_off_a_page_short_or_overflowing_is_refused() {
        let bad = |offset: u64, len: u64| {
            RamImage::decode(&RamImage { offset, len }.encode())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(bad(1, 4096), "a RAM section does not match its region");
        bad(4096, 4095);
        bad(u64::MAX - 4095, 8192);
        let good = RamImage {
            offset: 0,
            len: 4096,
        }
        .encode();
        assert!(RamImage::decode(&good[..15]).is_err());
        assert!(RamImage::decode(&[good.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn the_image_area_follows_the_sections_read() {
        let mut out = Vec::new();
        let image = RamImage {
            offset: 0,
            len: 4096,
        }
        .encode();
        write(&mut out, &tests_shape(), &[("ram@0", &image)]).unwrap();
        let sections_end = out.len() as u64;
        out.resize(images_at(sections_end) as usize + 4096, 7);
        let (_, sections, end) = read_counted(&mut out.as_slice(), 1 << 20).unwrap();
        assert_eq!(end, sections_end);
        assert_eq!(sections[0].data, image);
    }

    fn tests_shape() -> Shape {
        Shape {
            cpus: 1,
            ram: vec![(0, 4096)],
            kvm_pit: false,
            devices: Vec::new(),
            cpuid: Vec::new(),
        }
    }
}
