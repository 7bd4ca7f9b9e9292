//! The cache folder's manifest and the checks that decide whether a cached
//! guest can be reused.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::{apt, bzimage, GuestFiles, MANIFEST};

/// One manifest line: file (relative to the cache), package, version,
/// sha256 (or `-`), source.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The file, relative to the cache folder.
    pub file: String,
    /// The Debian package it comes from.
    pub package: String,
    /// That package's version.
    pub version: String,
    /// Its sha256, or `-`.
    pub sha256: String,
    /// Where in the package it was, or how it was made.
    pub source: String,
}

/// Parses `manifest.txt` (blank lines and `#` comments skipped).
pub fn parse_manifest(text: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [file, package, version, sha256, source] = f[..] else {
            bail!("bad manifest line {line:?}");
        };
        out.push(Entry {
            file: file.into(),
            package: package.into(),
            version: version.into(),
            sha256: sha256.into(),
            source: source.into(),
        });
    }
    Ok(out)
}

/// The text of `manifest.txt` for `entries`.
pub fn format_manifest(entries: &[Entry]) -> String {
    let mut s = String::from("# cargo xtask guest: file package version sha256 source\n");
    for e in entries {
        s += &format!(
            "{} {} {} {} {}\n",
            e.file, e.package, e.version, e.sha256, e.source
        );
    }
    s
}

/// A file naming the chosen kernel package when apt could not fetch it and
/// the cache holds the current kernel instead.
pub const FALLBACK: &str = "kernel-fallback.txt";

/// Records the new sha256 of `file` in the manifest of `dir`.
pub fn update_sha256(dir: &Path, file: &str) -> Result<()> {
    let path = dir.join(MANIFEST);
    let mut entries = parse_manifest(&std::fs::read_to_string(&path)?)?;
    for e in entries.iter_mut().filter(|e| e.file == file) {
        e.sha256 = sha256(&dir.join(file));
    }
    write_atomic(&path, format_manifest(&entries).as_bytes())
}

/// The cached guest in `dir`, if its manifest and files are sound and it
/// holds the chosen kernel.
pub fn cached(dir: &Path) -> Result<GuestFiles> {
    cached_with(dir, super::kernel_choice())
}

fn cached_with(dir: &Path, choice: Option<(String, Option<String>)>) -> Result<GuestFiles> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).context("no manifest")?;
    let entries = parse_manifest(&text)?;
    for e in &entries {
        let len = std::fs::metadata(dir.join(&e.file))
            .map(|m| m.len())
            .unwrap_or(0);
        ensure!(len > 0, "{} is missing or empty", e.file);
    }
    let get = |file: &str| {
        entries
            .iter()
            .find(|e| e.file == file)
            .with_context(|| format!("no {file} in the manifest"))
    };
    let (kernel, bb) = (get("bzImage")?, get("busybox")?);
    // A cache of another kernel than the chosen one is rebuilt, unless the
    // chosen one could not be fetched when it was built.
    let fell_back = std::fs::read_to_string(dir.join(FALLBACK)).unwrap_or_default();
    if let Some((package, version)) = choice {
        ensure!(
            (kernel.package == package && version.is_none_or(|v| kernel.version == v))
                || fell_back.trim() == package,
            "it holds {} {}, not the chosen {package}",
            kernel.package,
            kernel.version
        );
    }
    // A cache from before a module was added to the list is rebuilt.
    for m in super::MODULES {
        get(&format!("modules/{m}.ko"))?;
    }
    get("vmlinux")?;
    get("initramfs.cpio")?;
    ensure!(
        bzimage::is_bzimage(&head(&dir.join("bzImage"), 0x210)?),
        "bzImage has no HdrS header"
    );
    ensure!(
        head(&dir.join("vmlinux"), 4)? == b"\x7fELF",
        "vmlinux is not ELF"
    );
    let modules = entries
        .iter()
        .filter(|e| e.file.starts_with("modules/"))
        .map(|e| dir.join(&e.file))
        .collect();
    Ok(files(
        dir,
        modules,
        kernel.package.clone(),
        kernel.version.clone(),
        bb.version.clone(),
    ))
}

/// The [`GuestFiles`] of a cache in `dir`.
pub fn files(
    dir: &Path,
    modules: Vec<PathBuf>,
    kernel_package: String,
    kernel_version: String,
    busybox_version: String,
) -> GuestFiles {
    GuestFiles {
        paths: vmm_testbed::GuestFiles::layout(dir),
        modules,
        kernel_package,
        kernel_version,
        busybox_version,
    }
}

/// The first `n` bytes of `path` (fewer if it is shorter).
fn head(path: &Path, n: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Writes `path` through a temporary file and a rename, so that readers
/// never see half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The sha256 of `path` by `sha256sum`, or `-` where that tool is missing.
pub fn sha256(path: &Path) -> String {
    let out =
        apt::which("sha256sum").and_then(|s| std::process::Command::new(s).arg(path).output().ok());
    match out {
        Some(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("-")
            .to_owned(),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip() {
        let entries = vec![Entry {
            file: "bzImage".into(),
            package: "linux-image-6.1.0-56-cloud-amd64".into(),
            version: "6.1.192-2".into(),
            sha256: "-".into(),
            source: "boot/vmlinuz-6.1.0-56-cloud-amd64".into(),
        }];
        assert_eq!(parse_manifest(&format_manifest(&entries)).unwrap(), entries);
        assert!(parse_manifest("a b c\n").is_err());
    }

    #[test]
    fn cache_check_refuses_broken_caches() {
        let dir = std::env::temp_dir().join(format!("xtask-guest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(cached(&dir).is_err(), "no manifest");
        let (pkg, ver) = super::super::KERNEL_PIN;
        let pin = Some((pkg.to_owned(), Some(ver.to_owned())));
        let cached = |dir: &Path| cached_with(dir, pin.clone());
        let line = |f: &str| format!("{f} {pkg} {ver} - src\n");
        let mut files: Vec<String> = ["bzImage", "vmlinux", "busybox", "initramfs.cpio"]
            .map(String::from)
            .to_vec();
        let modules: Vec<String> = super::super::MODULES
            .iter()
            .map(|m| format!("modules/{m}.ko"))
            .collect();
        // A cache from before the last module was added is refused.
        let old: String = files
            .iter()
            .chain(&modules[..modules.len() - 1])
            .map(|f| line(f))
            .collect();
        files.extend(modules);
        let manifest: String = files.iter().map(|f| line(f)).collect();
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        for f in files
            .iter()
            .filter(|f| !f.starts_with("bzImage") && *f != "vmlinux")
        {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::fs::write(dir.join(MANIFEST), old).unwrap();
        std::fs::write(dir.join("vmlinux"), b"\x7fELF....").unwrap();
        std::fs::write(dir.join("bzImage"), vec![0u8; 0x300]).unwrap();
        assert!(format!("{:#}", cached(&dir).unwrap_err()).contains("modules/"));
        std::fs::write(dir.join(MANIFEST), manifest).unwrap();
        std::fs::write(dir.join("vmlinux"), b"\x7fELF....").unwrap();
        let mut kernel = vec![0u8; 0x300];
        std::fs::write(dir.join("bzImage"), &kernel).unwrap();
        assert!(format!("{:#}", cached(&dir).unwrap_err()).contains("HdrS"));
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("bzImage"), &kernel).unwrap();
        assert_eq!(cached(&dir).unwrap().kernel_version, ver);
        // Another kernel than the chosen one is refused, unless the chosen
        // one could not be fetched.
        let other = Some(("linux-image-other".to_owned(), None));
        let err = cached_with(&dir, other.clone()).unwrap_err();
        assert!(format!("{err:#}").contains("not the chosen linux-image-other"));
        std::fs::write(dir.join(FALLBACK), "linux-image-other\n").unwrap();
        assert!(cached_with(&dir, other).is_ok());
        assert!(cached_with(&dir, None).is_ok());
        std::fs::remove_file(dir.join(FALLBACK)).unwrap();
        std::fs::write(dir.join("busybox"), b"").unwrap();
        assert!(format!("{:#}", cached(&dir).unwrap_err()).contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
