//! The topic log's domain: names, settings, elements, producers, and the
//! [`Machine`] that decides what an append does.
//!
//! Nothing here writes or reads the clock: both writers (the standalone
//! [`crate::Topics`] and a group's state machine) pass the time in, decide
//! through the one [`appender`] (which reads producer windows it has not
//! seen through the [`crate::store::Store`] trait), and write the
//! [`crate::store::WriteBatch`] it fills.

pub mod appender;
pub mod directory;
pub mod handlers;
pub(crate) mod machine;
mod name;
mod producer;

pub use machine::{AppendOutcome, BATCH_BYTES_MAX, BATCH_ELEMENTS_MAX, Machine, check_readable};
pub use name::{NAME_BYTES_MAX, TopicName};
pub use producer::{
    NODE_PRODUCER_PREFIX, PRODUCER_ID_BYTES_MAX, PRODUCER_WINDOW, Producer, ProducerWindow,
};

use bytes::Bytes;

use crate::error::{Error, Result};

/// The default largest element, in bytes.
pub const ELEMENT_BYTES_DEFAULT: u32 = 1024 * 1024;
/// The largest `element_max_bytes` a topic may be created with.
pub const ELEMENT_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// The default number of elements kept.
pub const HISTORY_DEFAULT: u64 = 1_000_000;
/// The largest history; far beyond any disk, but keeps arithmetic clear of overflow.
pub const HISTORY_MAX: u64 = 1 << 48;

/// A topic's number inside this node's storage. Never reused, so a deleted
/// topic's leftovers can never be mistaken for a new topic of the same name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TopicId(pub u64);

/// Settings fixed when a topic is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicConfig {
    /// The largest payload of one element.
    pub element_max_bytes: u32,
    /// How many of the newest elements are kept.
    pub history: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            element_max_bytes: ELEMENT_BYTES_DEFAULT,
            history: HISTORY_DEFAULT,
        }
    }
}

impl TopicConfig {
    /// Builds a config from requested values, where 0 means "the default".
    pub fn from_requested(element_max_bytes: u32, history: u64) -> Result<Self> {
        let config = Self {
            element_max_bytes: if element_max_bytes == 0 {
                ELEMENT_BYTES_DEFAULT
            } else {
                element_max_bytes
            },
            history: if history == 0 {
                HISTORY_DEFAULT
            } else {
                history
            },
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.element_max_bytes == 0 || self.element_max_bytes > ELEMENT_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "element_max_bytes must be 1 to {ELEMENT_BYTES_MAX}, not {}",
                self.element_max_bytes
            )));
        }
        if self.history == 0 || self.history > HISTORY_MAX {
            return Err(Error::InvalidArgument(format!(
                "history must be 1 to {HISTORY_MAX}, not {}",
                self.history
            )));
        }
        Ok(())
    }
}

/// What storage keeps about a topic besides its elements.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicMeta {
    pub id: TopicId,
    pub name: TopicName,
    pub config: TopicConfig,
    pub created_at_ms: u64,
    /// Where its replicas live; kept with the topic so that whoever repairs
    /// it places the new replica by the same rule.
    #[serde(default)]
    pub placement: Placement,
}

/// How many replicas a topic has and which nodes may hold them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// 1, 3 or 5.
    pub replication: u32,
    /// A replica constraint such as `tier=edge:1,tier=cloud:2`; `None`
    /// places by Kademlia distance.
    pub constraint: Option<String>,
}

impl Default for Placement {
    /// A local topic: one replica, on the node that holds it.
    fn default() -> Self {
        Self {
            replication: 1,
            constraint: None,
        }
    }
}

/// One committed element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub seq: u64,
    pub payload: Bytes,
    /// Wall-clock time at the node that committed it; informative only.
    pub append_time_ms: u64,
    /// What made it, when a handler appended it (see [`Cause`]).
    pub cause: Option<Cause>,
    /// The handler its append named to run for it alone (one deployed on
    /// demand), if any.
    pub handler: Option<String>,
}

/// Why an element exists, when a handler appended it: the element the
/// handler ran on, which handler, on which node, and when. Kept with the
/// element (and in snapshots), and indexed by its first three fields, so
/// that a trace goes both ways: from an element to its cause, and from an
/// element to what it caused (`Store::effects`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "CauseWire", from = "CauseWire")]
pub struct Cause {
    /// The topic the handler is bound to.
    pub topic: String,
    /// The element of that topic it ran on.
    pub seq: u64,
    pub handler: String,
    /// The node that ran it (its peer id).
    pub node: String,
    /// When it ran there (wall clock, ms); informative only.
    pub time_ms: u64,
}

/// A [`Cause`] as the log and the store carry it: a CBOR array, without
/// field names (every output of a handler carries one).
#[derive(serde::Serialize, serde::Deserialize)]
struct CauseWire(String, u64, String, String, u64);

impl From<Cause> for CauseWire {
    fn from(c: Cause) -> Self {
        Self(c.topic, c.seq, c.handler, c.node, c.time_ms)
    }
}

impl From<CauseWire> for Cause {
    fn from(CauseWire(topic, seq, handler, node, time_ms): CauseWire) -> Self {
        Self {
            topic,
            seq,
            handler,
            node,
            time_ms,
        }
    }
}

/// What an append says of its elements beyond their payloads: kept with
/// each of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tags<'a> {
    /// What made them (a handler appends).
    pub cause: Option<&'a Cause>,
    /// The on-demand handler to run for them (a client names it).
    pub handler: Option<&'a str>,
}

/// The largest encoded [`Cause`]: a topic name, a handler name and a peer id
/// with room to spare.
pub const CAUSE_BYTES_MAX: usize = 1024;

impl Cause {
    /// Checks the sizes a stored cause must keep.
    pub fn check(&self) -> crate::error::Result<()> {
        let size = self.topic.len() + self.handler.len() + self.node.len();
        if size + 32 > CAUSE_BYTES_MAX {
            return Err(crate::error::Error::InvalidArgument(format!(
                "a cause of {size} bytes of names; at most {}",
                CAUSE_BYTES_MAX - 32
            )));
        }
        Ok(())
    }
}

/// The lowest readable sequence number of a topic whose last is `last`, or 0
/// for an empty topic. Follows from `last` and `history` alone, so every
/// replica trims to the same point without being told.
pub fn first_seq(last: u64, history: u64) -> u64 {
    if last == 0 {
        0
    } else {
        last.saturating_sub(history - 1).max(1)
    }
}

/// A readable range of a topic, as published to readers after each commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// Lowest readable seq, 0 when empty.
    pub first: u64,
    /// Highest committed seq, 0 when empty.
    pub last: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_seq_follows_history() {
        assert_eq!(first_seq(0, 10), 0);
        assert_eq!(first_seq(1, 10), 1);
        assert_eq!(first_seq(10, 10), 1);
        assert_eq!(first_seq(11, 10), 2);
        assert_eq!(first_seq(100, 10), 91);
        assert_eq!(first_seq(100, 1), 100);
        assert_eq!(first_seq(5, HISTORY_MAX), 1);
    }

    #[test]
    fn config_defaults_and_bounds() {
        assert_eq!(
            TopicConfig::from_requested(0, 0).unwrap(),
            TopicConfig::default()
        );
        assert!(TopicConfig::from_requested(ELEMENT_BYTES_MAX + 1, 0).is_err());
        assert!(TopicConfig::from_requested(0, HISTORY_MAX + 1).is_err());
        assert_eq!(TopicConfig::from_requested(64, 10).unwrap().history, 10);
    }
}
