//! The project's documents stand on their own in a clone: every relative
//! link in README.md and docs/ must lead to a file or folder inside the
//! repository. `cargo xtask lint` checks it, and so does a test.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Result};

/// The Markdown files checked: README.md and everything under docs/.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The targets of `[text](target)` links in `markdown`, anchors dropped;
/// links with a scheme (`https:`, `mailto:`) and pure anchors are left out.
pub fn relative_links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest.find([')', ' ', '\n']).unwrap_or(rest.len());
        let target = rest[..end].split('#').next().unwrap_or("");
        let has_scheme = target
            .split_once(':')
            .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()));
        if !target.is_empty() && !has_scheme {
            out.push(target.to_owned());
        }
    }
    out
}

/// `base/link` with `.` and `..` folded, without touching the disk.
fn join_lexically(base: &Path, link: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(link).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every broken or outward link, as "file -> link (why)".
pub fn broken(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for doc in documents(root) {
        let Ok(text) = std::fs::read_to_string(&doc) else {
            continue;
        };
        let base = doc.parent().unwrap_or(root);
        let name = doc.strip_prefix(root).unwrap_or(&doc).display().to_string();
        for link in relative_links(&text) {
            let target = join_lexically(base, &link);
            if !target.starts_with(root) {
                bad.push(format!("{name} -> {link} (outside the repository)"));
            } else if !target.exists() {
                bad.push(format!("{name} -> {link} (no such file)"));
            }
        }
    }
    bad
}

/// Fails with the list of broken links, if any.
pub fn check(root: &Path) -> Result<()> {
    let bad = broken(root);
    if !bad.is_empty() {
        bail!(
            "links that leave the repository or lead nowhere:\n  {}",
            bad.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_found_and_schemes_skipped() {
        let md = "see [a](docs/a.md#x), [web](https://x.org) and [b](../b.md) \
                  [anchor](#top) ![img](docs/bench/chart.png)";
        assert_eq!(
            relative_links(md),
            ["docs/a.md", "../b.md", "docs/bench/chart.png"]
        );
    }

    #[test]
    fn outward_and_missing_links_are_caught() {
        let root = std::env::temp_dir().join(format!("xtask-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(
            root.join("README.md"),
            "[ok](docs/x.md) [out](../shared/A.md) [gone](docs/none.md)",
        )
        .unwrap();
        std::fs::write(root.join("docs/x.md"), "[up](../README.md)").unwrap();
        let bad = broken(&root);
        assert_eq!(
            bad,
            [
                "README.md -> ../shared/A.md (outside the repository)",
                "README.md -> docs/none.md (no such file)"
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The repository's own documents.
    #[test]
    fn every_link_in_the_readme_and_docs_resolves_inside_the_repository() {
        let bad = broken(&crate::cmd::root());
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
