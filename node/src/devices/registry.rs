//! The device registry: which devices may speak to the gateways, with what
//! key, and which topics each may touch. Pure: records in, state out.
//!
//! The registry is replicated cluster state kept as the elements of one
//! woof-owned topic, [`DEVICES_TOPIC`]: every add, key rotation and removal
//! is an element ([`Record`]), and [`Registry`] is what they say, folded in
//! order. Every node folds the same elements the same way, so any gateway
//! accepts any device, and two nodes adding one id at once cannot both win:
//! the first record in the topic does, and the later one is ignored (its
//! caller learns so by folding up to its own element).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use woof_consensus::topic::TopicName;
use woof_mcu_bridge::crypto::KEY_LEN;
use woof_mcu_bridge::wire::DEVICE_ID_LEN_MAX;

use crate::error::{Error, Result};

/// The topic the registry is kept in.
pub const DEVICES_TOPIC: &str = "_woof/devices";
/// The most devices a cluster registers.
pub const DEVICES_MAX: usize = 10_000;
/// The most topic patterns a device's registration lists, per kind.
pub const PATTERNS_MAX: usize = 16;
/// The longest pattern, in bytes (a topic name's bound).
const PATTERN_BYTES_MAX: usize = 255;

/// One registry change, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    Add {
        id: String,
        /// The pre-shared key, hex.
        key: String,
        topics: Vec<String>,
        #[serde(default)]
        subscribe: Vec<String>,
        at_ms: u64,
    },
    Rotate {
        id: String,
        key: String,
        at_ms: u64,
    },
    Remove {
        id: String,
        at_ms: u64,
    },
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serialises")
    }
}

/// Checks a device id: 1 to 32 bytes of `[A-Za-z0-9._-]` (it travels in
/// every hello and becomes part of its appends' producer id).
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= DEVICE_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "a device id is 1 to {DEVICE_ID_LEN_MAX} characters of [A-Za-z0-9._-], not {id:?}"
        )))
    }
}

/// A key as hex (what `woof device add` prints and the device is given).
pub fn key_hex(key: &[u8; KEY_LEN]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key from its hex form.
pub fn parse_key(text: &str) -> Result<[u8; KEY_LEN]> {
    let text = text.trim();
    let bad = || {
        Error::Usage(format!(
            "a device key is {} hex digits (as `woof device add` printed it)",
            KEY_LEN * 2
        ))
    };
    if text.len() != KEY_LEN * 2 || !text.is_ascii() {
        return Err(bad());
    }
    let mut key = [0; KEY_LEN];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

/// A fresh key from the operating system's random source.
pub fn new_key() -> Result<[u8; KEY_LEN]> {
    let mut key = [0; KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| Error::Internal(format!("no random numbers for a device key: {e}")))?;
    Ok(key)
}

/// The key of device `id` of a fleet registered with `fleet_key`
/// (`woof device add ID --fleet N`, `woof device sim --devices N`).
pub fn fleet_device_key(fleet_key: &[u8; KEY_LEN], id: &str) -> [u8; KEY_LEN] {
    woof_mcu_bridge::crypto::Cipher::new(fleet_key).derive_key(id.as_bytes())
}

/// A topic pattern: a name whose segments may be `*` (any one segment) or,
/// last, `**` (any number of segments, none included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern> {
        let bad = |why: &str| Error::Usage(format!("topic pattern {text:?}: {why}"));
        if text.is_empty() || text.len() > PATTERN_BYTES_MAX {
            return Err(bad("must be 1 to 255 bytes"));
        }
        let segments: Vec<&str> = text.split('/').collect();
        for (i, s) in segments.iter().enumerate() {
            match *s {
                "*" => {}
                "**" if i + 1 == segments.len() => {}
                "**" => return Err(bad("`**` may only be the last segment")),
                s if s.contains('*') => {
                    return Err(bad("`*` stands for a whole segment"));
                }
                _ => {}
            }
        }
        // Literal parts must be what a name may hold.
        let literal = text.replace("**", "x").replace('*', "x");
        TopicName::new(&literal).map_err(|e| bad(&e.to_string()))?;
        if literal.starts_with(woof_consensus::topic::directory::RESERVED_PREFIX) {
            return Err(bad("names under _woof/ are woof's own"));
        }
        Ok(Pattern(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic it names, if it has no wildcard.
    pub fn literal(&self) -> Option<&str> {
        (!self.0.contains('*')).then_some(self.0.as_str())
    }

    pub fn matches(&self, name: &str) -> bool {
        let mut pattern = self.0.split('/');
        let mut name = name.split('/');
        loop {
            match (pattern.next(), name.next()) {
                (Some("**"), _) => return true,
                (None, None) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(n)) if p == n => {}
                _ => return false,
            }
        }
    }
}

/// Patterns from a comma-separated list (or several flags).
pub fn parse_patterns(list: &[String]) -> Result<Vec<Pattern>> {
    let patterns: Vec<Pattern> = list
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Pattern::parse)
        .collect::<Result<_>>()?;
    if patterns.len() > PATTERNS_MAX {
        return Err(Error::Usage(format!(
            "at most {PATTERNS_MAX} topic patterns per device"
        )));
    }
    Ok(patterns)
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub key: [u8; KEY_LEN],
    /// Where it may append; a frame's topic index `i` names the `i`th, if
    /// it has no wildcard.
    pub topics: Vec<Pattern>,
    /// What it may follow.
    pub subscribe: Vec<Pattern>,
    pub added_ms: u64,
    /// When its key last changed (its add, or its last rotation).
    pub keyed_ms: u64,
}

impl Device {
    pub fn may_append(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| p.matches(topic))
    }

    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }

    /// The topic a frame's index names.
    pub fn indexed(&self, index: u8) -> Option<&str> {
        self.topics.get(usize::from(index))?.literal()
    }
}

/// The registry as the records up to [`Registry::applied`] say.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: BTreeMap<String, Device>,
    applied: u64,
}

impl Registry {
    /// The registry's element `seq`; returns whether it changed anything
    /// (false for an add of an id already there, a rotation or removal of
    /// one that is not, an add past [`DEVICES_MAX`], or bytes that are not
    /// a valid record: logged, never fatal).
    pub fn apply(&mut self, seq: u64, payload: &[u8]) -> bool {
        if seq <= self.applied {
            return false;
        }
        self.applied = seq;
        let record: Record = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(seq, "device registry element is not a record: {e}");
                return false;
            }
        };
        match record {
            Record::Add {
                id,
                key,
                topics,
                subscribe,
                at_ms,
            } => {
                if self.devices.contains_key(&id) || self.devices.len() >= DEVICES_MAX {
                    return false;
                }
                let device = (|| {
                    check_id(&id)?;
                    Ok::<_, Error>(Device {
                        key: parse_key(&key)?,
                        topics: parse_patterns(&topics)?,
                        subscribe: parse_patterns(&subscribe)?,
                        id: id.clone(),
                        added_ms: at_ms,
                        keyed_ms: at_ms,
                    })
                })();
                match device {
                    Ok(d) => {
                        self.devices.insert(id, d);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(seq, "device registry element refused: {e}");
                        false
                    }
                }
            }
            Record::Rotate { id, key, at_ms } => {
                match (self.devices.get_mut(&id), parse_key(&key)) {
                    (Some(d), Ok(key)) => {
                        d.key = key;
                        d.keyed_ms = at_ms;
                        true
                    }
                    _ => false,
                }
            }
            Record::Remove { id, .. } => self.devices.remove(&id).is_some(),
        }
    }

    /// The last element folded in.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn get(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: &str, key: u8) -> Vec<u8> {
        Record::Add {
            id: id.into(),
            key: key_hex(&[key; KEY_LEN]),
            topics: vec!["farm/north/*".into(), "farm/pump".into()],
            subscribe: vec!["cmd/**".into()],
            at_ms: 5,
        }
        .to_bytes()
    }

    #[test]
    fn patterns_match_segments() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("farm/north/*").matches("farm/north/soil"));
        assert!(!p("farm/north/*").matches("farm/north/soil/deep"));
        assert!(!p("farm/north/*").matches("farm/north"));
        assert!(p("farm/**").matches("farm"));
        assert!(p("farm/**").matches("farm/a/b/c"));
        assert!(!p("farm/**").matches("farmer/a"));
        assert!(p("a/b").matches("a/b") && !p("a/b").matches("a/bc"));
        assert_eq!(p("a/b").literal(), Some("a/b"));
        assert_eq!(p("a/*").literal(), None);
        for bad in ["", "a/**/b", "a/b*", "A/b", "_woof/devices", "a//b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        assert!(parse_patterns(&many).is_err());
        assert_eq!(parse_patterns(&["a, b/*".into()]).unwrap().len(), 2);
    }

    #[test]
    fn keys_and_ids_are_checked() {
        let key = [0xab; KEY_LEN];
        assert_eq!(parse_key(&key_hex(&key)).unwrap(), key);
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"zz".repeat(KEY_LEN)).is_err());
        assert!(check_id("pump-7.a_b").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(33)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_first_add_wins_and_changes_fold_in_order() {
        let mut r = Registry::default();
        assert!(r.apply(1, &add("pump-7", 1)));
        assert!(
            !r.apply(2, &add("pump-7", 2)),
            "a second add of an id is ignored"
        );
        assert_eq!(r.get("pump-7").unwrap().key, [1; KEY_LEN]);
        assert!(!r.apply(2, &add("other", 2)), "an element is applied once");
        assert!(!r.apply(3, b"not json"));
        let rotate = Record::Rotate {
            id: "pump-7".into(),
            key: key_hex(&[9; KEY_LEN]),
            at_ms: 7,
        };
        assert!(r.apply(4, &rotate.to_bytes()));
        let d = r.get("pump-7").unwrap();
        assert_eq!((d.key, d.keyed_ms, d.added_ms), ([9; KEY_LEN], 7, 5));
        assert!(d.may_append("farm/north/soil") && d.may_append("farm/pump"));
        assert!(!d.may_append("farm/south/soil"));
        assert!(d.may_subscribe("cmd/pump-7/valve") && !d.may_subscribe("farm/pump"));
        assert_eq!(
            (d.indexed(0), d.indexed(1), d.indexed(2)),
            (None, Some("farm/pump"), None)
        );
        let remove = Record::Remove {
            id: "pump-7".into(),
            at_ms: 8,
        };
        assert!(r.apply(5, &remove.to_bytes()));
        assert!(!r.apply(6, &remove.to_bytes()));
        assert!(r.get("pump-7").is_none() && r.is_empty());
        assert_eq!(r.applied(), 6);
        // A bad record (bad pattern) is ignored, not fatal.
        let bad = Record::Add {
            id: "x".into(),
            key: key_hex(&[1; KEY_LEN]),
            topics: vec!["a/**/b".into()],
            subscribe: vec![],
            at_ms: 0,
        };
        assert!(!r.apply(7, &bad.to_bytes()));
    }
}
