//! A topic as a Raft group (openraft 0.10, pinned: ADR 28): the type
//! configuration and the names of openraft's types woof uses, the commands
//! a group's log carries, and the openraft storage adapters over woof's own
//! storage traits.
//!
//! Layout:
//! - this file: [`TypeConfig`], [`Command`], [`CommandResult`], encoding.
//! - [`log_store`]: openraft's `RaftLogStorage` over a [`RaftLogStore`],
//!   keeping a group's recent entries in memory for replication and apply.
//! - [`state_machine`]: openraft's `RaftStateMachine`: applies commands to
//!   the topic through [`crate::topic::Machine`], snapshots the topic.
//! - [`log_bytes`]: the log a group holds, counted in bytes, and when to ask
//!   for a snapshot and a purge because of them.
//! - [`snapshot`]: a snapshot's bytes (a file, or a buffer for in-memory
//!   stores, or a copy still to be made from the store) and their
//!   versioned encoding, read and written in bounded pieces.
//! - [`network`]: the [`network::Transport`] a node sends Raft messages
//!   over, and the [`network::Router`] that hands received ones to groups.
//! - [`group`]: starting a topic's group on a node, with its [`group::Timing`].
//! - [`runtime`]: openraft's async runtime (tokio's, with random numbers
//!   that the simulator can seed).
//!
//! [`RaftLogStore`]: crate::store::RaftLogStore

pub mod group;
pub mod log_bytes;
pub mod log_store;
pub mod network;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;

use crate::error::Error;
use crate::topic::directory::{NameAnswer, NameCommand};
use crate::topic::handlers::{HandlerAnswer, HandlerCommand};
use crate::topic::{AppendOutcome, TopicMeta};

openraft::declare_raft_types!(
    /// woof's Raft types: one group per topic.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = runtime::WoofRuntime,
);

/// A topic's Raft group: openraft's handle, with woof's state machine.
pub type Raft = openraft::Raft<TypeConfig, state_machine::TopicStateMachine>;
/// A position in a group's log: the leader that wrote it, and its index.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// The leader that wrote an entry (a term and a node).
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
/// A node's vote: the leader it granted, and whether a quorum did.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// One entry of a group's log.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// What an entry holds.
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
/// A group's membership, with the entry that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// openraft's error for a failed read or write of a group's storage.
pub type StorageError = openraft::StorageError<TypeConfig>;

/// What openraft says of a group on this node (its role, leader, log).
pub type Metrics = openraft::RaftMetrics<TypeConfig>;
/// Where a group's [`Metrics`] are watched.
pub type MetricsReceiver = openraft::alias::WatchReceiverOf<TypeConfig, Metrics>;
/// A group's role, vote, leader and membership on this node: the part of
/// its [`Metrics`] that changes only when those do, not on every append.
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<TypeConfig>;
/// Where a group's [`ServerMetrics`] are watched. openraft sends them only
/// when they change, where it sends [`Metrics`] on every pass of its loop
/// (several a round): a task that waits on a leader change watches these,
/// and is not woken by every append.
pub type ServerMetricsReceiver = openraft::alias::WatchReceiverOf<TypeConfig, ServerMetrics>;
/// What reads a group's metrics (`borrow_watched`, `changed`): openraft's
/// watch channels are its runtime's.
pub use openraft::async_runtime::WatchReceiver;

/// The log id of entry `index`, written by `node` in `term`.
pub fn log_id(term: u64, node: u64, index: u64) -> LogId {
    use openraft::vote::RaftLeaderId;
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// What a topic's log carries. Applied in log order on every replica, so
/// everything a decision needs (such as the time) is in the command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Creates the topic (the group's first command).
    Create(TopicMeta),
    /// Appends elements, stamped with the leader's clock.
    Append {
        /// Shared with the caller's buffers, not copied (CBOR byte strings,
        /// as `serde_bytes` wrote them).
        payloads: Vec<bytes::Bytes>,
        producer: Option<(String, u64)>,
        time_ms: u64,
        /// Set when a handler appends: what made these elements.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<crate::topic::Cause>,
        /// Set when the client named a handler to run for these elements
        /// alone (one deployed on demand).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handler: Option<String>,
    },
    /// Deletes the topic and its elements.
    Delete,
    /// Several commands in one log entry, applied in order (how a leader
    /// commits the appends of many clients at once).
    Batch(Vec<Command>),
    /// A change to the name directory (only the [`DIRECTORY`] group takes it).
    ///
    /// [`DIRECTORY`]: crate::topic::directory::DIRECTORY
    Name(NameCommand),
    /// A change to the topic's handlers (`crate::topic::handlers`).
    Handler(HandlerCommand),
}

impl Command {
    /// About how many bytes the command takes encoded: its payloads and
    /// names, and a little for each element's framing. Cheap (no
    /// encoding); for bounding what one message carries.
    pub fn approx_bytes(&self) -> usize {
        const PER_ITEM: usize = 16;
        match self {
            Command::Append {
                payloads,
                producer,
                cause,
                handler,
                ..
            } => {
                payloads.iter().map(|p| p.len() + PER_ITEM).sum::<usize>()
                    + producer.as_ref().map_or(0, |(id, _)| id.len() + PER_ITEM)
                    + cause.as_ref().map_or(0, |c| {
                        c.topic.len() + c.handler.len() + c.node.len() + 2 * PER_ITEM
                    })
                    + handler.as_ref().map_or(0, String::len)
                    + PER_ITEM
            }
            Command::Batch(commands) => {
                commands.iter().map(Command::approx_bytes).sum::<usize>() + PER_ITEM
            }
            // Small, or rare: a topic's metadata, a name, a handler's code.
            Command::Create(_) | Command::Delete | Command::Name(_) | Command::Handler(_) => 256,
        }
    }
}

/// How openraft's logs name a command: its kind and size, never payloads.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Create(meta) => write!(f, "create({})", meta.name),
            Command::Append { payloads, .. } => write!(f, "append({} elements)", payloads.len()),
            Command::Delete => write!(f, "delete"),
            Command::Batch(commands) => write!(f, "batch({} commands)", commands.len()),
            Command::Name(_) => write!(f, "name"),
            Command::Handler(_) => write!(f, "handler"),
        }
    }
}

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing to answer.
    None,
    Created,
    Appended(AppendOutcome),
    Deleted,
    /// One result per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
    /// The directory's answer to a [`Command::Name`].
    Name(NameAnswer),
    /// What a [`Command::Handler`] did.
    Handler(HandlerAnswer),
    /// The command was refused (a bad producer sequence, an unknown topic);
    /// the log still holds it, and every replica refuses it the same way.
    Refused(Error),
}

pub(crate) use crate::store::{
    blocking, quick, quick_unless_large, start_blocking, storage_inline,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    /// The shapes openraft 0.9 stored votes and log ids in (its default,
    /// "advanced" leader ids: a term and a node).
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct LeaderId09 {
        term: u64,
        node_id: u64,
    }
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Vote09 {
        leader_id: LeaderId09,
        committed: bool,
    }
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct LogId09 {
        leader_id: LeaderId09,
        index: u64,
    }

    /// A node's storage written before openraft 0.10 reads the same, and
    /// the other way round: votes and log ids kept their shape (ADR 28).
    #[test]
    fn votes_and_log_ids_are_stored_as_before_openraft_0_10() {
        let old = Vote09 {
            leader_id: LeaderId09 {
                term: 3,
                node_id: 5,
            },
            committed: true,
        };
        let vote: Vote = decode(&encode(&old).unwrap()).unwrap();
        assert_eq!(vote, Vote::new_committed(3, 5));
        let back: Vote09 = decode(&encode(&Vote::new(4, 6)).unwrap()).unwrap();
        assert_eq!(
            back,
            Vote09 {
                leader_id: LeaderId09 {
                    term: 4,
                    node_id: 6
                },
                committed: false
            }
        );
        let old = LogId09 {
            leader_id: LeaderId09 {
                term: 2,
                node_id: 7,
            },
            index: 41,
        };
        let id: LogId = decode(&encode(&old).unwrap()).unwrap();
        assert_eq!(id, log_id(2, 7, 41));
        let back: LogId09 = decode(&encode(&id).unwrap()).unwrap();
        assert_eq!(back, old);
    }
}
