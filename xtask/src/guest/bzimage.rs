//! Taking the ELF `vmlinux` out of an x86 bzImage.
//!
//! The real-mode setup header (Documentation/arch/x86/boot.rst) says where the
//! protected-mode part starts (after `setup_sects` + 1 sectors of 512 bytes)
//! and, from boot protocol 2.08, where in it the compressed kernel lies
//! (`payload_offset`, `payload_length`). The payload ends with the 32-bit
//! little-endian length of the decompressed kernel, which x86's `mkpiggy`
//! reads; the compressed stream is the payload without those 4 bytes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

use super::lz4;

/// Offset of `setup_sects` (u8).
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the header magic "HdrS".
const HEADER_MAGIC_AT: usize = 0x202;
/// Offset of the boot protocol version (u16).
const VERSION_AT: usize = 0x206;
/// Offset of `payload_offset` (u32) and then `payload_length` (u32).
const PAYLOAD_AT: usize = 0x248;

/// The fields of the setup header that locate the compressed kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Size of the real-mode setup in 512-byte sectors, the boot sector not
    /// counted (0 in the image means 4).
    pub setup_sects: u32,
    /// Boot protocol version, e.g. 0x020f for 2.15.
    pub version: u16,
    /// Offset of the payload from the start of the protected-mode code.
    pub payload_offset: u32,
    /// Length of the payload, its 4-byte size trailer included.
    pub payload_length: u32,
}

impl SetupHeader {
    /// Where the protected-mode code starts in the file.
    pub fn protected_mode_start(&self) -> usize {
        (self.setup_sects as usize + 1) * 512
    }
}

/// True when `image` has the bzImage header magic "HdrS" at 0x202.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4) == Some(b"HdrS")
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the setup header of a bzImage.
pub fn parse_header(image: &[u8]) -> Result<SetupHeader> {
    ensure!(
        image.len() >= 0x250,
        "not a bzImage: only {} bytes",
        image.len()
    );
    ensure!(is_bzimage(image), "not a bzImage: no \"HdrS\" at 0x202");
    let version = le16(image, VERSION_AT);
    ensure!(
        version >= 0x0208,
        "boot protocol {}.{:02} has no payload fields (2.08 or later needed)",
        version >> 8,
        version & 0xff
    );
    let setup_sects = match image[SETUP_SECTS] {
        0 => 4,
        n => u32::from(n),
    };
    Ok(SetupHeader {
        setup_sects,
        version,
        payload_offset: le32(image, PAYLOAD_AT),
        payload_length: le32(image, PAYLOAD_AT + 4),
    })
}

/// The compressed kernel: the payload without its size trailer, and the
/// decompressed size that the trailer gives.
pub fn payload(image: &[u8]) -> Result<(&[u8], u32)> {
    let h = parse_header(image)?;
    let start = h.protected_mode_start() + h.payload_offset as usize;
    let end = start + h.payload_length as usize;
    ensure!(
        h.payload_length >= 8 && end <= image.len(),
        "bzImage payload {start:#x}..{end:#x} lies outside the {}-byte file",
        image.len()
    );
    let p = &image[start..end];
    let (stream, trailer) = p.split_at(p.len() - 4);
    Ok((stream, le32(trailer, 0)))
}

/// The compressions a kernel payload can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip, `1f 8b`.
    Gzip,
    /// xz, `fd 37 7a 58 5a 00` (the kernel's uses the x86 BCJ filter and CRC32).
    Xz,
    /// zstd, `28 b5 2f fd`.
    Zstd,
    /// Old lzma ("lzma alone"), `5d 00 00`.
    Lzma,
    /// LZ4 legacy frame, `02 21 4c 18`.
    Lz4,
    /// bzip2, `42 5a 68` ("BZh").
    Bzip2,
    /// lzop, `89 4c 5a 4f`.
    Lzo,
}

impl Compression {
    /// The name used in messages and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lzma => "lzma",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
        }
    }

    /// How the payload is decompressed: a system tool (program, arguments,
    /// Debian package), or `None` for the built-in LZ4 decoder.
    pub fn tool(self) -> Option<(&'static str, &'static [&'static str], &'static str)> {
        match self {
            Compression::Gzip => Some(("gzip", &["-dc"], "gzip")),
            Compression::Xz => Some(("xz", &["-dc"], "xz-utils")),
            Compression::Lzma => Some(("xz", &["--format=lzma", "-dc"], "xz-utils")),
            Compression::Zstd => Some(("zstd", &["-dcq"], "zstd")),
            Compression::Bzip2 => Some(("bzip2", &["-dc"], "bzip2")),
            Compression::Lzo => Some(("lzop", &["-dc"], "lzop")),
            Compression::Lz4 => None,
        }
    }
}

/// The compression of `payload`, by its magic.
pub fn detect(payload: &[u8]) -> Option<Compression> {
    const MAGICS: &[(&[u8], Compression)] = &[
        (&[0x1f, 0x8b], Compression::Gzip),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], Compression::Xz),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        (&[0x5d, 0x00, 0x00], Compression::Lzma),
        (&lz4::LEGACY_MAGIC, Compression::Lz4),
        (b"BZh", Compression::Bzip2),
        (&[0x89, 0x4c, 0x5a, 0x4f], Compression::Lzo),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| payload.starts_with(m))
        .map(|&(_, c)| c)
}

/// Decompresses `data` (of compression `c`).
pub fn decompress(c: Compression, data: &[u8]) -> Result<Vec<u8>> {
    let Some((program, args, package)) = c.tool() else {
        return lz4::decode_legacy(data);
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "`{program}` is needed to decompress a {} payload: apt-get install {package}",
                c.name()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot start {program}")),
    };
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut out = Vec::new();
    // Feed stdin from a thread while reading stdout here, so neither pipe
    // fills up and blocks the other.
    let result = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(data));
        let read = stdout.read_to_end(&mut out);
        (writer.join(), read)
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "{program} {} failed ({status}): {}",
        args.join(" "),
        err.trim()
    );
    match result {
        (Ok(Ok(())), Ok(_)) => Ok(out),
        (Ok(Err(e)), _) => Err(e).context(format!("writing to {program}")),
        (_, Err(e)) => Err(e).context(format!("reading from {program}")),
        (Err(_), _) => bail!("writer thread to {program} panicked"),
    }
}

/// Checks that `elf` is an ELF64 little-endian x86-64 executable.
pub fn check_vmlinux(elf: &[u8]) -> Result<()> {
    ensure!(elf.len() >= 64, "vmlinux: only {} bytes", elf.len());
    ensure!(
        elf.starts_with(b"\x7fELF"),
        "decompressed kernel is not ELF: starts with {:02x?}",
        &elf[..8]
    );
    ensure!(
        elf[4] == 2 && elf[5] == 1,
        "vmlinux: not ELF64 little-endian"
    );
    ensure!(
        le16(elf, 16) == 2,
        "vmlinux: e_type {} is not ET_EXEC",
        le16(elf, 16)
    );
    ensure!(
        le16(elf, 18) == 0x3e,
        "vmlinux: e_machine {:#x} is not x86-64",
        le16(elf, 18)
    );
    Ok(())
}

/// Extracts the ELF vmlinux from a bzImage; returns it and the compression.
pub fn extract_vmlinux(image: &[u8]) -> Result<(Vec<u8>, Compression)> {
    let (stream, size) = payload(image)?;
    let Some(c) = detect(stream) else {
        bail!(
            "unknown kernel payload compression (magic {:02x?})",
            &stream[..stream.len().min(6)]
        );
    };
    let elf =
        decompress(c, stream).with_context(|| format!("decompressing the {} payload", c.name()))?;
    ensure!(
        elf.len() == size as usize,
        "decompressed {} bytes, the bzImage says {size}",
        elf.len()
    );
    check_vmlinux(&elf)?;
    Ok((elf, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 executable header.
    fn fake_elf() -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[6] = 1;
        e[16] = 2;
        e[18] = 0x3e;
        e
    }

    /// A bzImage with `setup_sects` and the given compressed stream (the size
    /// trailer is appended here).
    fn fake_bzimage(setup_sects: u8, stream: &[u8], size: u32) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let pm = (sects + 1) * 512;
        let mut img = vec![0u8; pm + 0x40];
        img[SETUP_SECTS] = setup_sects;
        img[HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4].copy_from_slice(b"HdrS");
        img[VERSION_AT..VERSION_AT + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[PAYLOAD_AT..PAYLOAD_AT + 4].copy_from_slice(&0x40u32.to_le_bytes());
        let len = stream.len() as u32 + 4;
        img[PAYLOAD_AT + 4..PAYLOAD_AT + 8].copy_from_slice(&len.to_le_bytes());
        img.extend_from_slice(stream);
        img.extend_from_slice(&size.to_le_bytes());
        img.extend_from_slice(&[0xcc; 100]); // whatever follows the payload
        img
    }

    /// `elf` as an LZ4 legacy frame of one literals-only block.
    fn lz4_literals(elf: &[u8]) -> Vec<u8> {
        let mut block = vec![0xf0];
        let mut n = elf.len() - 15;
        while n >= 255 {
            block.push(255);
            n -= 255;
        }
        block.push(n as u8);
        block.extend_from_slice(elf);
        let mut f = lz4::LEGACY_MAGIC.to_vec();
        f.extend_from_slice(&(block.len() as u32).to_le_bytes());
        f.extend_from_slice(&block);
        f
    }

    #[test]
    fn header_fields() {
        let img = fake_bzimage(27, b"\x1f\x8bxxxx", 64);
        let h = parse_header(&img).unwrap();
        assert_eq!(
            h,
            SetupHeader {
                setup_sects: 27,
                version: 0x020f,
                payload_offset: 0x40,
                payload_length: 10
            }
        );
        assert_eq!(h.protected_mode_start(), 28 * 512);
        let (stream, size) = payload(&img).unwrap();
        assert_eq!((stream, size), (&b"\x1f\x8bxxxx"[..], 64));
        // setup_sects 0 means 4.
        let img = fake_bzimage(0, b"\x1f\x8bxxxx", 64);
        assert_eq!(parse_header(&img).unwrap().protected_mode_start(), 5 * 512);
        assert_eq!(payload(&img).unwrap().0, b"\x1f\x8bxxxx");
    }

    #[test]
    fn header_errors() {
        let mut img = fake_bzimage(27, b"\x1f\x8bxxxx", 64);
        assert!(is_bzimage(&img));
        img[PAYLOAD_AT + 4] = 0xff; // payload past the end
        assert!(payload(&img).is_err());
        img[VERSION_AT] = 0x06; // protocol 2.06
        assert!(parse_header(&img).unwrap_err().to_string().contains("2.06"));
        img[HEADER_MAGIC_AT] = b'X';
        assert!(!is_bzimage(&img) && parse_header(&img).is_err());
        assert!(parse_header(&[0u8; 100]).is_err());
    }

    #[test]
    fn magics() {
        let cases: &[(&[u8], Option<Compression>)] = &[
            (b"\x1f\x8b\x08\x00", Some(Compression::Gzip)),
            (b"\xfd7zXZ\x00\x00\x01", Some(Compression::Xz)),
            (b"\x28\xb5\x2f\xfd\x04", Some(Compression::Zstd)),
            (b"\x5d\x00\x00\x80\x00", Some(Compression::Lzma)),
            (b"\x02\x21\x4c\x18\x00", Some(Compression::Lz4)),
            (b"BZh91AY", Some(Compression::Bzip2)),
            (b"\x89LZO\x00", Some(Compression::Lzo)),
            (b"\x7fELF", None),
            (b"\xfd7zXZ", None), // xz magic cut short
            (b"", None),
        ];
        for &(bytes, want) in cases {
            assert_eq!(detect(bytes), want, "{bytes:02x?}");
        }
    }

    #[test]
    fn vmlinux_checks() {
        assert!(check_vmlinux(&fake_elf()).is_ok());
        let mut e = fake_elf();
        e[18] = 0xb7; // aarch64
        assert!(check_vmlinux(&e).is_err());
        let mut e = fake_elf();
        e[4] = 1; // ELF32
        assert!(check_vmlinux(&e).is_err());
        let err = check_vmlinux(&[0u8; 64]).unwrap_err().to_string();
        assert!(err.contains("not ELF"), "{err}");
    }

    #[test]
    fn extracts_lz4_payload() {
        let elf = fake_elf();
        let img = fake_bzimage(30, &lz4_literals(&elf), elf.len() as u32);
        let (got, c) = extract_vmlinux(&img).unwrap();
        assert_eq!((got, c), (elf.clone(), Compression::Lz4));
        // A wrong size trailer is caught.
        let img = fake_bzimage(30, &lz4_literals(&elf), 65);
        assert!(extract_vmlinux(&img).is_err());
        // A payload that is not an ELF is refused clearly.
        let img = fake_bzimage(30, &lz4_literals(&[0u8; 64]), 64);
        assert!(format!("{:#}", extract_vmlinux(&img).unwrap_err()).contains("not ELF"));
    }

    #[test]
    fn extracts_gzip_payload_with_the_tool() {
        let elf = fake_elf();
        let Ok(mut child) = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: no `gzip` tool here");
            return;
        };
        child.stdin.take().unwrap().write_all(&elf).unwrap();
        let gz = child.wait_with_output().unwrap().stdout;
        let img = fake_bzimage(30, &gz, elf.len() as u32);
        assert_eq!(extract_vmlinux(&img).unwrap(), (elf, Compression::Gzip));
    }
}
