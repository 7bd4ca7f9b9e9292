//! Fetching Debian packages with `apt-get download` and unpacking them with
//! `dpkg-deb`, as the guest task needs (no installation on the host).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// What to tell a user whose host cannot fetch the default guest.
pub const NO_APT_HINT: &str = "`cargo xtask guest` fetches the default guest kernel and busybox \
with Debian's apt-get and dpkg-deb; on another host, build or fetch a bzImage and an initramfs \
yourself and pass them to the VMM with `--kernel PATH --initrd PATH`";

pub use crate::cmd::which;

/// Fails, with [`NO_APT_HINT`], unless apt-get, apt-cache and dpkg-deb exist.
pub fn require() -> Result<()> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if which(tool).is_none() {
            bail!("`{tool}` not found: this does not look like a Debian host.\n{NO_APT_HINT}");
        }
    }
    Ok(())
}

fn run(c: &mut Command) -> Result<Output> {
    let what = format!("{c:?}");
    c.output().with_context(|| format!("cannot start {what}"))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim().to_owned()
}

/// Runs `apt-get update` (quietly), for hosts whose package lists are
/// missing or stale.
pub fn update() -> Result<()> {
    eprintln!("guest: running apt-get update ...");
    let out = run(Command::new("apt-get").args(["-q", "update"]))?;
    if !out.status.success() {
        bail!(
            "apt-get update failed ({}), is this root?\n{}\n{NO_APT_HINT}",
            out.status,
            text(&out.stderr)
        );
    }
    Ok(())
}

/// The versioned package that metapackage `meta` depends on whose name
/// starts with `prefix`, e.g. `linux-image-6.1.0-NN-cloud-amd64` for
/// `linux-image-cloud-amd64`.
pub fn resolve(meta: &str, prefix: &str) -> Result<String> {
    let mut updated = false;
    loop {
        let out = run(Command::new("apt-cache").args(["depends", meta]))?;
        let found = text(&out.stdout).lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends:")?.trim();
            (dep.starts_with(prefix) && dep != meta && !dep.starts_with('<'))
                .then(|| dep.to_owned())
        });
        match found {
            Some(dep) => return Ok(dep),
            None if !updated => {
                eprintln!("guest: apt-cache does not know {meta} yet");
                update()?;
                updated = true;
            }
            None => bail!(
                "apt-cache depends {meta} names no {prefix}* package:\n{}{}\n{NO_APT_HINT}",
                text(&out.stdout),
                text(&out.stderr)
            ),
        }
    }
}

/// The download size of the candidate of `package`, when apt knows it.
pub fn size(package: &str) -> Option<u64> {
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", package])).ok()?;
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Size:")?.trim().parse().ok())
}

/// Downloads `package` into `dir` (which it creates), retrying once after
/// `apt-get update`; returns the `.deb`.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    let size = match size(package) {
        Some(n) => format!(" ({:.1} MiB)", n as f64 / (1 << 20) as f64),
        None => String::new(),
    };
    eprintln!("guest: downloading {package}{size} ...");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut updated = false;
    loop {
        let out = run(Command::new("apt-get")
            .args(["-q", "download", package])
            .current_dir(dir))?;
        if out.status.success() {
            break;
        }
        if updated {
            bail!(
                "apt-get download {package} failed ({}):\n{}\n{NO_APT_HINT}",
                out.status,
                text(&out.stderr)
            );
        }
        eprintln!(
            "guest: apt-get download {package} failed: {}",
            text(&out.stderr)
        );
        update()?;
        updated = true;
    }
    let mut debs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    match debs.as_slice() {
        [deb] => Ok(deb.clone()),
        _ => bail!(
            "expected one .deb in {} after apt-get download, found {debs:?}",
            dir.display()
        ),
    }
}

/// A control field of a `.deb` (e.g. `Version`).
pub fn field(deb: &Path, name: &str) -> Result<String> {
    let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -f {} {name} failed: {}",
            deb.display(),
            text(&out.stderr)
        );
    }
    Ok(text(&out.stdout))
}

/// Unpacks the files of `deb` into `dir`.
pub fn extract(deb: &Path, dir: &Path) -> Result<()> {
    let out = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            text(&out.stderr)
        );
    }
    Ok(())
}
