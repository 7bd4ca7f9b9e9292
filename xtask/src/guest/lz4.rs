//! A decoder of the LZ4 "legacy" frame, which is how the kernel compresses
//! itself with `CONFIG_KERNEL_LZ4` (Debian's 6.1 kernels do).
//!
//! The frame is the magic `02 21 4c 18` then blocks, each a little-endian
//! 32-bit compressed length and an independent LZ4 block that expands to at
//! most 8 MiB. A repeated magic starts another frame. Decoding it here, not
//! through the `lz4` tool, spares the host one more package; the blocks
//! themselves are decoded by the `lz4_flex` crate.

use anyhow::{bail, ensure, Result};

/// The magic of the legacy frame.
pub const LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// The largest block output of the legacy frame.
const LEGACY_BLOCK_MAX: usize = 8 << 20;

/// Decodes a whole legacy frame (or several, back to back).
pub fn decode_legacy(input: &[u8]) -> Result<Vec<u8>> {
    ensure!(input.starts_with(&LEGACY_MAGIC), "lz4: not a legacy frame");
    let mut pos = 4;
    let mut out = Vec::with_capacity(input.len() * 4);
    while pos < input.len() {
        ensure!(
            pos + 4 <= input.len(),
            "lz4: truncated block length at {pos}"
        );
        let word: [u8; 4] = input[pos..pos + 4].try_into().unwrap_or_default();
        pos += 4;
        if word == LEGACY_MAGIC {
            continue;
        }
        let len = u32::from_le_bytes(word) as usize;
        ensure!(
            len <= input.len() - pos,
            "lz4: block of {len} bytes at {} overruns the input",
            pos - 4
        );
        let start = out.len();
        decode_block(&input[pos..pos + len], &mut out)?;
        ensure!(
            out.len() - start <= LEGACY_BLOCK_MAX,
            "lz4: block larger than 8 MiB"
        );
        pos += len;
    }
    Ok(out)
}

/// Decodes one LZ4 block (with `lz4_flex`), appending to `out`.
pub fn decode_block(block: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.resize(start + LEGACY_BLOCK_MAX, 0);
    match lz4_flex::block::decompress_into(block, &mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            bail!("lz4: bad block: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decode_block(bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn literals_only() {
        assert_eq!(block(b"\x50hello"), b"hello");
        // 20 literals: 15 in the token, 5 in one extra byte.
        let mut b = vec![0xf0, 5];
        b.extend_from_slice(b"abcdefghijklmnopqrst");
        assert_eq!(block(&b), b"abcdefghijklmnopqrst");
    }

    #[test]
    fn overlapping_match() {
        // "ab", then a match of 6 at offset 2, then a last "!".
        assert_eq!(block(b"\x22ab\x02\x00\x10!"), b"abababab!");
        // "a" then a match of 4 + 15 + 1 = 20 at offset 1, then "b".
        let mut want = vec![b'a'; 21];
        want.push(b'b');
        assert_eq!(block(b"\x1fa\x01\x00\x01\x10b"), want);
    }

    #[test]
    fn bad_blocks() {
        let mut out = Vec::new();
        assert!(
            decode_block(b"\x22ab\x03\x00\x10!", &mut out).is_err(),
            "offset past start"
        );
        assert!(
            decode_block(b"\x22ab\x00\x00\x10!", &mut out).is_err(),
            "offset 0"
        );
        assert!(
            decode_block(b"\x50hel", &mut out).is_err(),
            "short literals"
        );
        assert!(decode_block(b"", &mut out).is_err());
    }

    #[test]
    fn legacy_frame() {
        let mut f = LEGACY_MAGIC.to_vec();
        for b in [&b"\x50hello"[..], &b"\x22ab\x02\x00\x10!"[..]] {
            f.extend_from_slice(&(b.len() as u32).to_le_bytes());
            f.extend_from_slice(b);
        }
        assert_eq!(decode_legacy(&f).unwrap(), b"helloabababab!");
        f.push(0);
        assert!(decode_legacy(&f).is_err(), "trailing byte");
        assert!(
            decode_legacy(b"\x04\x22\x4d\x18").is_err(),
            "modern frame magic"
        );
    }

    /// Round trip through the `lz4` tool's legacy mode, where it is installed.
    #[test]
    fn lz4_tool_round_trip() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        // Text with matches near and far, a long zero run, and more than one
        // 8 MiB legacy block.
        let mut data = vec![0u8; 100_000];
        let mut i = 0u64;
        while data.len() < 9 << 20 {
            data.extend_from_slice(format!("line {} of {}\n", i % 1000, i / 3).as_bytes());
            i += 1;
        }
        let Ok(mut child) = Command::new("lz4")
            .args(["-l", "-c", "-9"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: no `lz4` tool here");
            return;
        };
        let mut stdin = child.stdin.take().unwrap();
        let input = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!(decode_legacy(&out.stdout).unwrap(), data);
    }
}
