//! A topic as a Raft group (openraft 0.9, storage v2): the type
//! configuration, the commands a group's log carries, and the openraft
//! storage adapters over woof's own storage traits.
//!
//! Layout:
//! - this file: [`TypeConfig`], [`Command`], [`CommandResult`], encoding.
//! - [`log_store`]: openraft's `RaftLogStorage` over a [`RaftLogStore`].
//! - [`state_machine`]: openraft's `RaftStateMachine`: applies commands to
//!   the topic through [`crate::topic::Machine`], snapshots the topic.
//! - [`snapshot`]: a snapshot's bytes (a file, or a buffer for in-memory
//!   stores) and their versioned encoding, read and written in bounded
//!   pieces.
//! - [`network`]: the [`network::Transport`] a node sends Raft messages
//!   over, and the [`network::Router`] that hands received ones to groups.
//! - [`group`]: starting a topic's group on a node, with its [`group::Timing`].
//! - [`runtime`]: openraft's async runtime (tokio's, with random numbers
//!   that the simulator can seed).
//!
//! [`RaftLogStore`]: crate::store::RaftLogStore

pub mod group;
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
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::SnapshotData,
        AsyncRuntime = runtime::WoofRuntime,
);

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

pub(crate) use crate::store::{blocking, quick};
