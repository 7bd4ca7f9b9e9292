//! Fetching the kernel and busybox packages and building the cache from
//! them, in a staging folder first so that a failed run leaves no half cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::cache::{self, Entry};
use super::{
    apt, bzimage, initramfs, GuestFiles, BUSYBOX_PACKAGE, DEFAULT_INIT, KERNEL_META, MANIFEST,
    MODULES,
};

/// Downloads the pinned kernel (or the one `VMM_GUEST_KERNEL` names);
/// when apt no longer has the pinned one, the current kernel, loudly.
fn download_kernel(dir: &Path, cache: &Path) -> Result<(String, PathBuf)> {
    let _ = std::fs::remove_file(cache.join(cache::FALLBACK));
    if let Some((package, version)) = super::kernel_choice() {
        let spec = match &version {
            Some(v) => format!("{package}={v}"),
            None => package.clone(),
        };
        match apt::download(&spec, dir) {
            Ok(deb) => return Ok((package, deb)),
            Err(e) => {
                eprintln!(
                    "guest: WARNING: cannot fetch the pinned kernel {spec} ({e:#}); taking the \
                     current {KERNEL_META} instead: the tests were tuned on the pinned one"
                );
                let _ = std::fs::remove_dir_all(dir);
                std::fs::write(cache.join(cache::FALLBACK), format!("{package}\n"))?;
            }
        }
    }
    eprintln!("guest: resolving {KERNEL_META} ...");
    let package = apt::resolve(KERNEL_META, "linux-image-")?;
    let deb = apt::download(&package, dir)?;
    Ok((package, deb))
}

/// Removes the staging folder however `build` ends.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches and builds everything into `dir`.
pub fn build(dir: &Path) -> Result<GuestFiles> {
    apt::require()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    let stage = Staging(dir.join(format!(".staging-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&stage.0);
    let out = stage.0.join("out");
    std::fs::create_dir_all(out.join("modules"))?;
    let mut entries = Vec::new();

    // 1. The kernel package: bzImage and modules.
    let (kpkg, deb) = download_kernel(&stage.0.join("kernel-deb"), dir)?;
    let kver = apt::field(&deb, "Version")?;
    let root = stage.0.join("kernel");
    eprintln!(
        "guest: unpacking {} ...",
        deb.file_name().unwrap_or_default().to_string_lossy()
    );
    apt::extract(&deb, &root)?;
    let vmlinuz = find_vmlinuz(&root)?;
    std::fs::copy(&vmlinuz, out.join("bzImage"))?;
    let mut add = |file: &str, package: &str, version: &str, source: String| {
        entries.push(Entry {
            file: file.into(),
            package: package.into(),
            version: version.into(),
            sha256: cache::sha256(&out.join(file)),
            source,
        })
    };
    add("bzImage", &kpkg, &kver, rel(&root, &vmlinuz));
    let mut modules = Vec::new();
    for name in MODULES {
        let Some(found) = find_module(&root, name)? else {
            eprintln!("guest: warning: {kpkg} has no {name}.ko module");
            continue;
        };
        let file = format!("modules/{name}.ko");
        let data = std::fs::read(&found)?;
        let data = match found.extension().and_then(|e| e.to_str()) {
            Some("xz") => bzimage::decompress(bzimage::Compression::Xz, &data)?,
            Some("zst") => bzimage::decompress(bzimage::Compression::Zstd, &data)?,
            Some("gz") => bzimage::decompress(bzimage::Compression::Gzip, &data)?,
            _ => data,
        };
        ensure!(
            data.starts_with(b"\x7fELF"),
            "{} is not an ELF module",
            found.display()
        );
        std::fs::write(out.join(&file), data)?;
        add(&file, &kpkg, &kver, rel(&root, &found));
        modules.push(dir.join(&file));
    }

    // 2. vmlinux from the bzImage.
    let image = std::fs::read(out.join("bzImage"))?;
    let (stream, size) = bzimage::payload(&image)?;
    let kind = bzimage::detect(stream).map_or("unknown", |c| c.name());
    eprintln!(
        "guest: decompressing vmlinux from the bzImage ({kind}, {:.1} MiB -> {:.1} MiB) ...",
        stream.len() as f64 / 1048576.0,
        f64::from(size) / 1048576.0
    );
    let (elf, c) = bzimage::extract_vmlinux(&image)?;
    std::fs::write(out.join("vmlinux"), elf)?;
    add("vmlinux", &kpkg, &kver, format!("bzImage:{}", c.name()));

    // 3. busybox.
    let deb = apt::download(BUSYBOX_PACKAGE, &stage.0.join("busybox-deb"))?;
    let bver = apt::field(&deb, "Version")?;
    let root = stage.0.join("busybox");
    apt::extract(&deb, &root)?;
    let Some(bb) = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
    else {
        bail!("{BUSYBOX_PACKAGE} has no bin/busybox");
    };
    std::fs::copy(&bb, out.join("busybox"))?;
    add("busybox", BUSYBOX_PACKAGE, &bver, rel(&root, &bb));

    // 4. The initramfs.
    eprintln!("guest: writing initramfs.cpio ...");
    std::fs::write(
        out.join("initramfs.cpio"),
        initramfs(
            &out.join("busybox"),
            DEFAULT_INIT,
            &super::guest_modules(&out.join("modules"))?,
        )?,
    )?;
    add(
        "initramfs.cpio",
        BUSYBOX_PACKAGE,
        &bver,
        "built:busybox+/init".into(),
    );

    // 5. Into place, the manifest last.
    let old_modules = dir.join("modules");
    if old_modules.exists() {
        std::fs::remove_dir_all(&old_modules)?;
    }
    for name in ["bzImage", "vmlinux", "busybox", "initramfs.cpio", "modules"] {
        std::fs::rename(out.join(name), dir.join(name))
            .with_context(|| format!("moving {name} into {}", dir.display()))?;
    }
    cache::write_atomic(
        &dir.join(MANIFEST),
        cache::format_manifest(&entries).as_bytes(),
    )?;
    Ok(cache::files(dir, modules, kpkg, kver, bver))
}

/// `path` relative to `root`, for the manifest.
fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn find_vmlinuz(root: &Path) -> Result<PathBuf> {
    let boot = root.join("boot");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&boot)
        .with_context(|| format!("no boot/ in the kernel package ({})", boot.display()))?
    {
        let p = e?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one boot/vmlinuz-* in the kernel package, found {found:?}"),
    }
}

/// The module `name.ko` (or `.ko.xz`, `.ko.zst`, `.ko.gz`) under the
/// package's `lib/modules` or `usr/lib/modules`.
fn find_module(root: &Path, name: &str) -> Result<Option<PathBuf>> {
    let wanted: Vec<String> = ["", ".xz", ".zst", ".gz"]
        .iter()
        .map(|s| format!("{name}.ko{s}"))
        .collect();
    let mut stack: Vec<PathBuf> = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|p| root.join(p))
        .filter(|p| p.is_dir())
        .collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() && wanted.iter().any(|w| e.file_name() == w.as_str()) {
                return Ok(Some(e.path()));
            }
        }
    }
    Ok(None)
}
