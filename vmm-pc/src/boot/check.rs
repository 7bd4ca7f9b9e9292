//! Checks of a kernel image against its own headers, before anything is
//! loaded: a truncated or inconsistent file is refused with what is wrong,
//! instead of being copied into the guest to fault there.
//!
//! linux-loader takes a bzImage's payload to be "the rest of the file" and
//! reads an ELF's segments as they come, so on its own a bzImage cut short
//! (the first 64 KiB or 3 MB of a real one) loads, and the guest
//! triple-faults; a wrong `setup_sects` loads the payload from the wrong
//! offset, and KVM reports an internal error. The boot protocol
//! (`Documentation/arch/x86/boot.rst`) says how big each part is: the
//! setup code is `(setup_sects + 1) * 512` bytes (`setup_sects` 0 means 4)
//! and the protected-mode payload that follows is `syssize * 16` bytes
//! (the kernel's `arch/x86/boot/tools/build.c` writes it so, with the CRC
//! in the last 4 bytes). A file may be longer than that (a signed kernel
//! carries its signature after the payload), never shorter.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{LOADED_HIGH, XLF_KERNEL_64};

use super::BootError;

/// `setup_sects`: sectors of real-mode setup code after the boot sector.
const SETUP_SECTS: usize = 0x1f1;
/// `syssize`: the protected-mode payload in 16-byte paragraphs.
const SYSSIZE: usize = 0x1f4;
/// `boot_flag`, and the boot-sector signature it must hold.
const BOOT_FLAG: usize = 0x1fe;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `version`: the boot protocol, major in the high byte.
const VERSION: usize = 0x206;
/// `loadflags`.
const LOADFLAGS: usize = 0x211;
/// `xloadflags` (protocol 2.12+).
const XLOADFLAGS: usize = 0x236;
/// The first byte past the fields read here.
const HEADER_END: usize = XLOADFLAGS + 2;
/// Protocol 2.12 added `xloadflags` and its `XLF_KERNEL_64`: the 64-bit
/// entry this VMM uses.
pub(super) const PROTOCOL_64BIT_ENTRY: u16 = 0x20c;

/// The parts of a bzImage file, from its setup header, checked against the
/// file's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BzImageLayout {
    /// Bytes of setup code, the boot sector included: where the payload starts.
    pub setup: u64,
    /// Bytes of protected-mode payload.
    pub payload: u64,
}

/// Checks a bzImage's setup header and sizes against the file, so that only
/// a complete image with a 64-bit entry at `entry_offset` into its payload
/// is loaded. Reads the header itself; leaves the position anywhere.
pub(super) fn check_bzimage<F: Read + Seek>(
    kernel: &mut F,
    entry_offset: u64,
) -> Result<BzImageLayout, BootError> {
    let len = file_len(kernel)?;
    let head = read_at(kernel, 0, HEADER_END)?;
    // The magic was found at 0x202, so `setup_sects` (0x1f1) is there.
    let setup_sects = head[SETUP_SECTS];
    let sectors = if setup_sects == 0 { 4 } else { setup_sects };
    let setup = (u64::from(sectors) + 1) * 512;
    // The setup code holds the whole header, so this also covers a file
    // that ends inside the header.
    if len < setup || head.len() < HEADER_END {
        return Err(BootError::BzImageSetupTruncated {
            setup_sects,
            setup,
            len,
        });
    }
    let boot_flag = u16_at(&head, BOOT_FLAG);
    if boot_flag != BOOT_FLAG_MAGIC {
        return Err(BootError::BzImageBootFlag(boot_flag));
    }
    let version = u16_at(&head, VERSION);
    if version < PROTOCOL_64BIT_ENTRY {
        return Err(BootError::BzImageProtocolTooOld { version });
    }
    let loadflags = head[LOADFLAGS];
    if loadflags & LOADED_HIGH == 0 {
        return Err(BootError::BzImageNotLoadedHigh(loadflags));
    }
    if u16_at(&head, XLOADFLAGS) & XLF_KERNEL_64 == 0 {
        return Err(BootError::NotA64BitKernel);
    }
    let syssize = u32_at(&head, SYSSIZE);
    let payload = u64::from(syssize) * 16;
    if payload == 0 {
        return Err(BootError::BzImageEmptyPayload);
    }
    let available = len - setup;
    if available < payload {
        return Err(BootError::BzImageTruncated {
            setup_sects,
            syssize,
            setup,
            payload,
            available,
        });
    }
    if payload <= entry_offset {
        return Err(BootError::BzImagePayloadTooSmall {
            payload,
            entry: entry_offset,
        });
    }
    Ok(BzImageLayout { setup, payload })
}

/// `sizeof(Elf64_Ehdr)`, `sizeof(Elf64_Phdr)`.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: u64 = 56;
/// `e_phoff`, `e_phentsize`, `e_phnum`.
const E_PHOFF: usize = 0x20;
const E_PHENTSIZE: usize = 0x36;
const E_PHNUM: usize = 0x38;
/// `p_type` values whose file bytes are read: loaded segments and notes
/// (where the PVH entry is).
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Checks that a 64-bit ELF file holds its header, its program headers and
/// the file bytes of every loaded segment and note. Leaves the position
/// anywhere.
pub(super) fn check_elf<F: Read + Seek>(kernel: &mut F) -> Result<(), BootError> {
    let len = file_len(kernel)?;
    let ehdr = read_at(kernel, 0, EHDR_SIZE)?;
    if ehdr.len() < EHDR_SIZE {
        return Err(BootError::ElfTruncated {
            part: "its header".into(),
            start: 0,
            end: EHDR_SIZE as u64,
            len,
        });
    }
    let phoff = u64_at(&ehdr, E_PHOFF);
    let phentsize = u16_at(&ehdr, E_PHENTSIZE);
    let phnum = u16_at(&ehdr, E_PHNUM);
    if phnum > 0 && u64::from(phentsize) != PHDR_SIZE {
        return Err(BootError::ElfBadProgramHeaderSize(phentsize));
    }
    let table = u64::from(phnum) * PHDR_SIZE;
    let table_end = phoff.checked_add(table).filter(|&end| end <= len);
    let Some(table_end) = table_end else {
        return Err(BootError::ElfTruncated {
            part: format!("the program header table ({phnum} entries)"),
            start: phoff,
            end: phoff.saturating_add(table),
            len,
        });
    };
    let phdrs = read_at(
        kernel,
        phoff,
        usize::try_from(table_end - phoff).unwrap_or(0),
    )?;
    for (i, phdr) in phdrs.chunks_exact(PHDR_SIZE as usize).enumerate() {
        let p_type = u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]);
        let (offset, filesz) = (u64_at(phdr, 8), u64_at(phdr, 32));
        if !matches!(p_type, PT_LOAD | PT_NOTE) || filesz == 0 {
            continue;
        }
        let end = offset.checked_add(filesz);
        if end.is_none_or(|end| end > len) {
            let kind = if p_type == PT_LOAD { "segment" } else { "note" };
            return Err(BootError::ElfTruncated {
                part: format!("{kind} {i}"),
                start: offset,
                end: end.unwrap_or(u64::MAX),
                len,
            });
        }
    }
    Ok(())
}

fn file_len<F: Seek>(kernel: &mut F) -> Result<u64, BootError> {
    kernel.seek(SeekFrom::End(0)).map_err(BootError::KernelRead)
}

/// Up to `count` bytes from `offset` (fewer at the end of the file).
fn read_at<F: Read + Seek>(
    kernel: &mut F,
    offset: u64,
    count: usize,
) -> Result<Vec<u8>, BootError> {
    kernel
        .seek(SeekFrom::Start(offset))
        .map_err(BootError::KernelRead)?;
    let mut bytes = Vec::with_capacity(count);
    kernel
        .by_ref()
        .take(count as u64)
        .read_to_end(&mut bytes)
        .map_err(BootError::KernelRead)?;
    Ok(bytes)
}

// The readers below are only given offsets inside slices checked to be
// long enough.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::test_images::{bzimage, elf, file_with, BZ_PAYLOAD_LEN, BZ_SETUP_SECTS};

    const ENTRY: u64 = 0x200;
    const SETUP: u64 = (BZ_SETUP_SECTS as u64 + 1) * 512;

    fn bz(image: &[u8]) -> Result<BzImageLayout, BootError> {
        check_bzimage(&mut file_with(image), ENTRY)
    }

    fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
        image[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn a_complete_bzimage_passes_and_may_be_longer() {
        let layout = BzImageLayout {
            setup: SETUP,
            payload: BZ_PAYLOAD_LEN as u64,
        };
        assert_eq!(bz(&bzimage()).unwrap(), layout);
        // A signature appended after the payload (signed kernels) is fine.
        let mut signed = bzimage();
        signed.extend_from_slice(&[0x55; 1472]);
        assert_eq!(bz(&signed).unwrap(), layout);
    }

    #[test]
    fn a_payload_cut_short_names_both_sizes() {
        let image = bzimage();
        for cut in [1, 16, BZ_PAYLOAD_LEN - 1] {
            let err = bz(&image[..image.len() - cut]).unwrap_err();
            let available = (BZ_PAYLOAD_LEN - cut) as u64;
            assert!(
                matches!(err, BootError::BzImageTruncated { payload, available: a, .. }
                    if payload == BZ_PAYLOAD_LEN as u64 && a == available),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "bzImage truncated: header says {BZ_PAYLOAD_LEN} bytes of payload after \
                     {SETUP} bytes of setup code (setup_sects {BZ_SETUP_SECTS}, syssize {}), \
                     the file has {available}",
                    BZ_PAYLOAD_LEN / 16
                )
            );
        }
    }

    #[test]
    fn a_file_ending_in_the_setup_code_or_header_is_truncated() {
        let image = bzimage();
        for len in [0x206, 0x212, 0x237, 0x400, SETUP as usize - 1] {
            let err = bz(&image[..len]).unwrap_err();
            assert!(
                matches!(err, BootError::BzImageSetupTruncated { setup: SETUP, len: l, .. }
                    if l == len as u64),
                "{len:#x}: {err:?}"
            );
        }
    }

    #[test]
    fn setup_sects_255_reaches_past_the_file() {
        // A real kernel's setup is ~40 sectors; 255 puts the payload's start
        // 128 KiB in, past where this file's payload ends.
        let mut image = bzimage();
        image[SETUP_SECTS] = 255;
        let err = bz(&image).unwrap_err();
        assert!(
            matches!(err, BootError::BzImageSetupTruncated { setup_sects: 255, setup, .. }
                if setup == 256 * 512),
            "{err:?}"
        );
        // Padded so the setup code fits, the payload is still missing.
        image.resize(256 * 512 + 100, 0);
        let err = bz(&image).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::BzImageTruncated {
                    setup_sects: 255,
                    available: 100,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn setup_sects_0_means_4() {
        let mut image = bzimage();
        assert_eq!(BZ_SETUP_SECTS, 4);
        image[SETUP_SECTS] = 0;
        assert_eq!(bz(&image).unwrap().setup, SETUP);
    }

    #[test]
    fn header_fields_are_checked() {
        let mut image = bzimage();
        put(&mut image, SYSSIZE, &0u32.to_le_bytes());
        assert!(matches!(bz(&image), Err(BootError::BzImageEmptyPayload)));

        let mut image = bzimage();
        put(&mut image, SYSSIZE, &0x10u32.to_le_bytes()); // 256 bytes: before 0x200
        assert!(matches!(
            bz(&image),
            Err(BootError::BzImagePayloadTooSmall {
                payload: 256,
                entry: ENTRY
            })
        ));

        let mut image = bzimage();
        put(&mut image, BOOT_FLAG, &0x1234u16.to_le_bytes());
        assert!(matches!(
            bz(&image),
            Err(BootError::BzImageBootFlag(0x1234))
        ));

        let mut image = bzimage();
        put(&mut image, VERSION, &0x20bu16.to_le_bytes());
        let err = bz(&image).unwrap_err();
        assert!(matches!(
            err,
            BootError::BzImageProtocolTooOld { version: 0x20b }
        ));
        assert!(err.to_string().contains("2.11"), "{err}");

        let mut image = bzimage();
        image[LOADFLAGS] = 0;
        assert!(matches!(
            bz(&image),
            Err(BootError::BzImageNotLoadedHigh(0))
        ));

        let mut image = bzimage();
        put(&mut image, XLOADFLAGS, &0u16.to_le_bytes());
        assert!(matches!(bz(&image), Err(BootError::NotA64BitKernel)));
    }

    #[test]
    fn a_complete_elf_passes() {
        check_elf(&mut file_with(&elf(true))).unwrap();
        check_elf(&mut file_with(&elf(false))).unwrap();
    }

    #[test]
    fn a_truncated_elf_names_the_part_cut_off() {
        let image = elf(true);
        let err = check_elf(&mut file_with(&image[..40])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ELF truncated: its header needs file bytes 0x0..0x40, the file has 0x28"
        );
        let err = check_elf(&mut file_with(&image[..100])).unwrap_err();
        assert!(
            matches!(&err, BootError::ElfTruncated { part, .. } if part.starts_with("the program header table")),
            "{err:?}"
        );
        // The last byte belongs to the loaded segment.
        let err = check_elf(&mut file_with(&image[..image.len() - 1])).unwrap_err();
        assert!(
            matches!(&err, BootError::ElfTruncated { part, end, len, .. }
                if part.starts_with("segment") && *end == *len + 1),
            "{err:?}"
        );
    }

    #[test]
    fn a_segment_offset_past_the_end_is_refused_without_overflow() {
        let mut image = elf(false);
        let phoff = u64_at(&image, E_PHOFF) as usize;
        put(&mut image, phoff + 8, &u64::MAX.to_le_bytes()); // p_offset
        let err = check_elf(&mut file_with(&image)).unwrap_err();
        assert!(
            matches!(&err, BootError::ElfTruncated { end: u64::MAX, .. }),
            "{err:?}"
        );
        let mut image = elf(false);
        put(&mut image, E_PHENTSIZE, &32u16.to_le_bytes());
        assert!(matches!(
            check_elf(&mut file_with(&image)),
            Err(BootError::ElfBadProgramHeaderSize(32))
        ));
    }
}
