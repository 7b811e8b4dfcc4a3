//! Topic names: `/`-separated segments of `[a-z0-9._-]`, at most 255 bytes.

use std::fmt;

use crate::error::{Error, Result};

/// The longest topic name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// A topic name that has been checked. The only way to get one is
/// [`TopicName::new`], so holding one proves the name is valid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct TopicName(String);

impl TopicName {
    /// Checks `name` against the naming rules.
    pub fn new(name: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidName {
            name: shorten(name),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > NAME_BYTES_MAX {
            return Err(bad("it is longer than 255 bytes"));
        }
        for segment in name.split('/') {
            if segment.is_empty() {
                return Err(bad(
                    "it has an empty segment (a leading, trailing or double '/')",
                ));
            }
            if segment == "." || segment == ".." {
                return Err(bad("a segment may not be '.' or '..'"));
            }
            if !segment.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            }) {
                return Err(bad("segments may only hold a-z, 0-9, '.', '_' and '-'"));
            }
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopicName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error messages quote the name; a 1 MB name should not become a 1 MB message.
fn shorten(name: &str) -> String {
    const SHOWN: usize = 64;
    if name.len() <= SHOWN {
        return name.to_string();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &name[..end], name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for ok in [
            "a",
            "farm/north/soil-moisture",
            "x.y_z-1/2",
            "a/b/c/d",
            "..a",
            "a..",
        ] {
            assert_eq!(TopicName::new(ok).unwrap().as_str(), ok);
        }
        assert!(TopicName::new(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            ".",
            "..",
            "a/../b",
            "a/./b",
            "Upper",
            "a b",
            "a\0b",
            "ünï",
            "a\\b",
            long.as_str(),
        ] {
            let err = TopicName::new(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidName { .. }),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn long_names_are_shortened_in_errors() {
        let err = TopicName::new(&"A".repeat(100_000))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains("100000 bytes"), "{err}");
    }
}
