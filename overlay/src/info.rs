//! What a node advertises about itself: its tier, attributes and
//! capabilities (in the spirit of Calvin's runtime attributes), and where
//! clients reach it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The most attributes or capabilities a node may advertise.
pub const ATTRS_MAX: usize = 32;
/// The longest attribute key or capability.
pub const KEY_BYTES_MAX: usize = 64;
/// The longest attribute value.
pub const VALUE_BYTES_MAX: usize = 128;

/// Where in the device-to-cloud range a node sits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Device,
    Edge,
    Cloud,
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "device" => Ok(Tier::Device),
            "edge" => Ok(Tier::Edge),
            "cloud" => Ok(Tier::Cloud),
            _ => Err(Error::InvalidInfo(format!(
                "tier must be device, edge or cloud, not {s:?}"
            ))),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Device => "device",
            Tier::Edge => "edge",
            Tier::Cloud => "cloud",
        })
    }
}

/// A node's advertisement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub tier: Tier,
    /// `key=value` pairs, such as `site=north`.
    pub attrs: BTreeMap<String, String>,
    /// Named abilities, such as `python` or `gpu`.
    pub capabilities: BTreeSet<String>,
    /// The node's gRPC address for clients, if it serves one.
    pub grpc_addr: Option<String>,
    /// The port the node takes links on (ADR 34), at the address its
    /// libp2p connection has; set by the overlay. A node that does not
    /// advertise one is sent links over the libp2p connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_port: Option<u16>,
    /// Whether the node's CPU has AES in hardware: a peer that has it too
    /// seals its links to the node with AES-256-GCM rather than
    /// ChaCha20-Poly1305 (ADR 44); set by the overlay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_aes: bool,
}

impl NodeInfo {
    pub fn new(tier: Tier) -> Self {
        Self {
            tier,
            attrs: BTreeMap::new(),
            capabilities: BTreeSet::new(),
            grpc_addr: None,
            link_port: None,
            link_aes: false,
        }
    }

    /// Adds an attribute given as `key=value`.
    pub fn with_attr(mut self, pair: &str) -> Result<Self> {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Error::InvalidInfo(format!("an attribute is key=value, not {pair:?}"))
        })?;
        self.attrs.insert(key.to_string(), value.to_string());
        self.validate()?;
        Ok(self)
    }

    /// Checks the bounds; a peer's advertisement that fails is ignored.
    pub fn validate(&self) -> Result<()> {
        if self.attrs.len() > ATTRS_MAX || self.capabilities.len() > ATTRS_MAX {
            return Err(Error::InvalidInfo(format!(
                "at most {ATTRS_MAX} attributes and {ATTRS_MAX} capabilities"
            )));
        }
        for key in self.attrs.keys().chain(self.capabilities.iter()) {
            if key.is_empty()
                || key.len() > KEY_BYTES_MAX
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                return Err(Error::InvalidInfo(format!(
                    "attribute keys and capabilities are 1 to {KEY_BYTES_MAX} of a-z, 0-9, '.', '_', '-', not {key:?}"
                )));
            }
        }
        for value in self.attrs.values() {
            if value.len() > VALUE_BYTES_MAX || value.chars().any(char::is_control) {
                return Err(Error::InvalidInfo(format!(
                    "attribute values are at most {VALUE_BYTES_MAX} printable bytes, not {value:?}"
                )));
            }
        }
        if self.grpc_addr.as_ref().is_some_and(|a| a.len() > 256) {
            return Err(Error::InvalidInfo("gRPC address too long".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_and_attrs() {
        assert_eq!("edge".parse::<Tier>().unwrap(), Tier::Edge);
        assert!("fog".parse::<Tier>().is_err());
        let info = NodeInfo::new(Tier::Cloud).with_attr("site=north").unwrap();
        assert_eq!(info.attrs["site"], "north");
        assert!(NodeInfo::new(Tier::Edge).with_attr("nokey").is_err());
        assert!(NodeInfo::new(Tier::Edge).with_attr("Site=x").is_err());
        assert!(NodeInfo::new(Tier::Edge).with_attr("=x").is_err());
        assert!(
            NodeInfo::new(Tier::Edge)
                .with_attr(&format!("k={}", "v".repeat(200)))
                .is_err()
        );
        let mut many = NodeInfo::new(Tier::Edge);
        for i in 0..=ATTRS_MAX {
            many.attrs.insert(format!("k{i}"), "v".into());
        }
        assert!(many.validate().is_err());
    }
}
