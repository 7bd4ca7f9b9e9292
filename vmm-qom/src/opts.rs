//! QEMU's option syntax, as `-device`, `-drive` and `-netdev` take it:
//! `[implied,]key=value[,key=value...]`, with `,,` standing for a comma
//! inside a value and a bare `key` meaning `key=on`.

use crate::QomError;

/// Parsed options, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opts {
    /// (key, value) pairs; the implied key's value comes first.
    pub pairs: Vec<(String, String)>,
}

impl Opts {
    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `help` (or `?`) was asked for.
    pub fn wants_help(&self) -> bool {
        self.pairs
            .iter()
            .any(|(k, v)| (k == "help" || k == "?") && v == "on")
    }
}

/// Splits at single commas; `,,` is a comma.
fn split(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

/// Parses `s`; a first element with no `=` is the value of `implied` (the
/// driver of `-device`), when given.
pub fn parse(s: &str, implied: Option<&str>) -> Result<Opts, QomError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, part) in split(s).into_iter().enumerate() {
        if part.is_empty() {
            if s.is_empty() {
                break;
            }
            return Err(QomError::Syntax(s.to_owned()));
        }
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => match implied {
                Some(key) if i == 0 && part != "help" && part != "?" => (key.to_owned(), part),
                _ => (part, "on".to_owned()),
            },
        };
        if key.is_empty() {
            return Err(QomError::Syntax(s.to_owned()));
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(QomError::Repeated(key));
        }
        pairs.push((key, value));
    }
    Ok(Opts { pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(o: &Opts) -> Vec<(&str, &str)> {
        o.pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn qemus_spelling() {
        let o = parse("virtio-blk-pci,drive=d0,serial=a,,b", Some("driver")).unwrap();
        assert_eq!(
            pairs(&o),
            [
                ("driver", "virtio-blk-pci"),
                ("drive", "d0"),
                ("serial", "a,b")
            ]
        );
        assert_eq!(o.get("serial"), Some("a,b"));
        let o = parse("file=/tmp/x,,y.img,if=virtio,readonly", None).unwrap();
        assert_eq!(
            pairs(&o),
            [
                ("file", "/tmp/x,y.img"),
                ("if", "virtio"),
                ("readonly", "on")
            ]
        );
        // A value may hold '='.
        assert_eq!(parse("a=b=c", None).unwrap().get("a"), Some("b=c"));
    }

    #[test]
    fn help_in_either_place() {
        assert!(parse("help", Some("driver")).unwrap().wants_help());
        assert!(parse("?", Some("driver")).unwrap().wants_help());
        let o = parse("virtio-blk-pci,help", Some("driver")).unwrap();
        assert!(o.wants_help());
        assert_eq!(o.get("driver"), Some("virtio-blk-pci"));
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert_eq!(parse("a=1,,", None).unwrap().get("a"), Some("1,"));
        assert!(matches!(parse("a=1,", None), Err(QomError::Syntax(_))));
        assert!(matches!(parse(",a=1", None), Err(QomError::Syntax(_))));
        assert!(matches!(parse("=1", None), Err(QomError::Syntax(_))));
        assert_eq!(parse("a=1,a=2", None), Err(QomError::Repeated("a".into())));
        assert_eq!(parse("", None).unwrap().pairs, []);
    }
}
