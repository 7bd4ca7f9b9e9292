//! The VMM's arguments as `cargo xtask run` reads them: which files they
//! name (nested, those travel into L1 or are bridged out of it) and whether
//! they only ask for help. Options are read the way clap reads them:
//! `--name VALUE`, `--name=VALUE`, `-m VALUE`, `-mVALUE`, `-m=VALUE`.

/// The long options of `vmm` that take a value. An option missing here
/// that takes one is still read right in its `--name=VALUE` form; in its
/// `--name VALUE` form its value is left as a word of its own, which is
/// harmless unless it spells one of the options below.
const VALUE_OPTIONS: &[&str] = &[
    "--kernel",
    "--initrd",
    "--append",
    "--memory",
    "--cpus",
    "--serial",
    "--pit",
    "--qmp",
    "--reboot",
    "--log-level",
    "--seccomp",
    "--drive",
    "--device",
];

/// Short options with a value, and the long option each stands for.
const SHORT_VALUE_OPTIONS: &[(&str, &str)] = &[("-m", "--memory")];

/// One word of the command line, options with their values joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// An option (its long name) and its value, if it takes one.
    Opt(String, Option<String>),
    /// Anything else (a flag clap will reject, say), kept as it is.
    Other(String),
}

/// The VMM's command line, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmArgs(pub Vec<Word>);

impl VmmArgs {
    /// Reads `args` as clap would.
    pub fn parse(args: &[String]) -> Self {
        let mut words = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                words.extend(
                    std::iter::once(a)
                        .chain(it.by_ref())
                        .cloned()
                        .map(Word::Other),
                );
                break;
            }
            if let Some((name, value)) = a.split_once('=').filter(|(n, _)| n.starts_with("--")) {
                words.push(Word::Opt(name.to_owned(), Some(value.to_owned())));
            } else if VALUE_OPTIONS.contains(&a.as_str()) {
                words.push(Word::Opt(a.clone(), it.next().cloned()));
            } else if let Some((short, long)) =
                SHORT_VALUE_OPTIONS.iter().find(|(s, _)| a.starts_with(s))
            {
                let rest = &a[short.len()..];
                let value = match rest.strip_prefix('=').unwrap_or(rest) {
                    "" => it.next().cloned(),
                    v => Some(v.to_owned()),
                };
                words.push(Word::Opt((*long).to_owned(), value));
            } else if a.starts_with("--") {
                words.push(Word::Opt(a.clone(), None));
            } else {
                words.push(Word::Other(a.clone()));
            }
        }
        Self(words)
    }

    /// Whether option `name` (long form) is given.
    pub fn has(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|w| matches!(w, Word::Opt(n, _) if n == name))
    }

    /// The value of option `name` (long form), its last one if given twice.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find_map(|w| match w {
            Word::Opt(n, Some(v)) if n == name => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether the command line only asks for help or the version (which
    /// the VMM prints without a KVM or a guest).
    pub fn wants_help(&self) -> bool {
        self.0.iter().any(|w| match w {
            Word::Opt(n, None) => n == "--help" || n == "--version",
            Word::Other(a) => {
                a.starts_with('-') && !a.starts_with("--") && (a.contains('h') || a.contains('V'))
            }
            _ => false,
        })
    }

    /// Back to words, each option and its value as two (`--name VALUE`).
    pub fn to_vec(&self) -> Vec<String> {
        let mut out = Vec::new();
        for w in &self.0 {
            match w {
                Word::Opt(n, v) => {
                    out.push(n.clone());
                    out.extend(v.clone());
                }
                Word::Other(a) => out.push(a.clone()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> VmmArgs {
        VmmArgs::parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn both_spellings_of_an_option() {
        let a = parse(&[
            "--kernel=X",
            "--initrd",
            "Y",
            "-m2G",
            "--cpus=2",
            "-m",
            "1G",
        ]);
        assert_eq!(
            a.0,
            [
                Word::Opt("--kernel".into(), Some("X".into())),
                Word::Opt("--initrd".into(), Some("Y".into())),
                Word::Opt("--memory".into(), Some("2G".into())),
                Word::Opt("--cpus".into(), Some("2".into())),
                Word::Opt("--memory".into(), Some("1G".into())),
            ]
        );
        assert!(a.has("--kernel") && a.has("--initrd") && !a.has("--qmp"));
        assert_eq!(
            a.to_vec(),
            ["--kernel", "X", "--initrd", "Y", "--memory", "2G", "--cpus", "2", "--memory", "1G"]
        );
        assert_eq!(parse(&["-m=3G"]).to_vec(), ["--memory", "3G"]);
    }

    #[test]
    fn values_that_look_like_options_stay_values() {
        // An --append value holding "--kernel" does not name a kernel.
        let a = parse(&["--append", "--kernel", "--paused"]);
        assert!(!a.has("--kernel"));
        assert!(a.has("--paused"));
        let a = parse(&["--append=a=b c", "--", "--kernel"]);
        assert_eq!(a.0[0], Word::Opt("--append".into(), Some("a=b c".into())));
        assert!(!a.has("--kernel"));
        // An option left without its value stays so (clap will say).
        assert_eq!(parse(&["--kernel"]).0, [Word::Opt("--kernel".into(), None)]);
    }

    #[test]
    fn help_and_version() {
        for h in [
            &["--help"][..],
            &["-h"],
            &["--cpus", "2", "-V"],
            &["--version"],
        ] {
            assert!(parse(h).wants_help(), "{h:?}");
        }
        for h in [
            &["--cpus", "2"][..],
            &["--append", "-h"],
            &["--log-level=help"],
        ] {
            assert!(!parse(h).wants_help(), "{h:?}");
        }
    }
}
