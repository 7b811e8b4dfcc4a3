//! The node-to-node requests of [`super::Groups`] besides Raft's own, and
//! what they answer. CBOR on the wire, behind [`super::TAG_CONTROL`].

use bytes::Bytes;
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::GroupId;
use woof_consensus::topic::handlers::Handlers;
use woof_consensus::topic::{Cause, Element, TopicMeta};

use crate::error::{Error, Result};

/// Node-to-node requests besides Raft's own.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Control {
    /// Start `group` here; with `initialize`, also make it a group of `members`.
    StartGroup {
        group: GroupId,
        members: Vec<String>,
        initialize: bool,
    },
    /// Write `command` through `group`, if this node leads it.
    Write { group: GroupId, command: Command },
    /// Read `topic` (the topic of `group`), if this node leads it.
    Read {
        group: GroupId,
        topic: String,
        read: Read,
    },
    /// This node's replicas, as its groups see them.
    Replicas,
    /// This node's replica of `group`, if it holds one (answered with
    /// [`ControlReply::Replicas`], empty or of one).
    Replica { group: GroupId },
    /// Stop `group` here and remove everything it stored.
    RemoveGroup { group: GroupId },
    /// Remove this node's copy of `group` if a repair left it behind: the
    /// membership committed at log index `evidence_at` leaves this node
    /// out, and the copy holds nothing from there on (see
    /// [`super::Groups::remove_left_behind`]). Answered with
    /// [`ControlReply::Removed`] or [`ControlReply::Kept`].
    RemoveLeftBehind { group: GroupId, evidence_at: u64 },
    /// The leader of `groups` puts them to sleep: stop running them here
    /// (their storage stays; any message for one wakes it).
    Sleep { groups: Vec<GroupId> },
    /// A topic's leader asks this node to run one of its handlers for a
    /// while (its placement chose this node); renewed while it holds.
    Lease(HandlerLease),
    /// The runner of an `adaptive()` handler asks this node to run it on
    /// one element and send back what it gave.
    Invoke(HandlerInvoke),
}

/// "Run this handler on this element, tell me what it gave": one
/// invocation an `adaptive()` handler's runner sends where it measured the
/// shortest time to result. The node runs it as the handler's own runner
/// would (fetching the handler by name and version) and appends nothing:
/// the runner appends the outputs, under their keys.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandlerInvoke {
    pub topic: String,
    pub handler: String,
    pub version: u64,
    pub seq: u64,
    pub time_ms: u64,
    pub payload: Bytes,
}

/// What an invocation elsewhere gave.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InvokeReply {
    /// (topic, payload) of each output, or why it failed.
    pub outputs: std::result::Result<Vec<(String, Bytes)>, String>,
    pub logs: Vec<String>,
    /// It ran past its time budget.
    pub overran: bool,
}

/// "Run this handler here for `lease_ms`": what a topic's leader sends the
/// node its placement chose. The group layer only carries it up (to the
/// node's handler supervisor, [`super::Groups::take_leases`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandlerLease {
    pub group: GroupId,
    pub topic: String,
    /// The handler as the leader has it (its progress included).
    pub handler: woof_consensus::topic::handlers::Handler,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum ControlReply {
    Started,
    Written(CommandResult),
    Read(ReadReply),
    Replicas(Vec<ReplicaStatus>),
    Removed,
    /// A copy asked to go was kept: it is a member again.
    Kept,
    Asleep,
    Leased,
    Invoked(InvokeReply),
    /// Not the leader; the leader's peer id if known.
    NotLeader(Option<String>),
    NoGroup,
    /// The request was understood and refused (a topic error).
    Refused(woof_consensus::Error),
    Failed(String),
}

/// An element on the wire: sequence number, append time, payload, cause,
/// handler named.
pub type WireElement = (u64, u64, Bytes, Option<Cause>, Option<String>);

/// A read served by a topic's leader.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Read {
    /// One element.
    Get { seq: u64 },
    /// Up to `limit` consecutive elements from `from`.
    Scan { from: u64, limit: u32 },
    /// The range held, confirmed by a quorum (a linearizable read).
    Latest,
    /// Up to `max` elements from `from`, waiting up to `wait_ms` for the
    /// first of them (how a node that holds no replica follows a topic).
    Follow { from: u64, max: u32, wait_ms: u64 },
    /// The leader's [`ReplicaStatus`].
    Describe,
    /// The handlers bound to the topic, as the leader applied them.
    Handlers,
    /// Up to `limit` elements that handler `handler` of topic `cause_topic`
    /// appended to this topic when it ran on element `cause_seq`.
    Effects {
        cause_topic: String,
        handler: String,
        cause_seq: u64,
        limit: u32,
    },
}

/// What a [`Read`] gave.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ReadReply {
    /// (sequence number, append time, payload, cause, handler named), in
    /// order.
    Elements(Vec<WireElement>),
    Range {
        first: u64,
        last: u64,
    },
    Status(Box<ReplicaStatus>),
    /// The handlers, and the topic's last sequence number (for their lag).
    Handlers(Box<Handlers>, u64),
}

impl ReadReply {
    /// The wire form of `elements`.
    pub fn elements(elements: Vec<Element>) -> Self {
        ReadReply::Elements(
            elements
                .into_iter()
                .map(|e| (e.seq, e.append_time_ms, e.payload, e.cause, e.handler))
                .collect(),
        )
    }

    /// The elements, from the wire form.
    pub fn into_elements(self) -> Result<Vec<Element>> {
        match self {
            ReadReply::Elements(v) => Ok(v
                .into_iter()
                .map(|(seq, time, payload, cause, handler)| Element {
                    seq,
                    payload,
                    append_time_ms: time,
                    cause,
                    handler,
                })
                .collect()),
            other => Err(Error::Internal(format!("expected elements, got {other:?}"))),
        }
    }
}

/// One replica of a topic, as the node holding it sees its group.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    pub group: u64,
    pub meta: TopicMeta,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Peer ids of the group's voters.
    pub members: Vec<String>,
    /// Peer ids of the group's learners (nodes being added), as this
    /// replica's membership names them; none for a sleeping replica.
    #[serde(default)]
    pub learners: Vec<String>,
    /// Peer id of the leader this replica knows, if any.
    pub leader: Option<String>,
    /// Whether this replica leads.
    pub is_leader: bool,
    /// The last log index this replica applied (on the leader: committed).
    pub applied_index: u64,
    /// The log index of the membership `members` come from, if this
    /// replica knows it committed (applied); 0 if not. A committed
    /// membership that leaves a node out, newer than anything that node's
    /// copy holds, shows the copy was left behind by a repair.
    pub members_at: u64,
    /// The highest log index this replica holds (applied or not).
    pub last_log_index: u64,
    pub term: u64,
    /// On the leader: each voter's peer id and the highest log index it
    /// holds matching the leader's (the leader's own last index for itself).
    pub progress: Vec<(String, u64)>,
}
