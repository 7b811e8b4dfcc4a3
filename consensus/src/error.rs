//! The one error type of this crate.

/// Everything that can go wrong in the topic log and its storage.
///
/// The variants tell apart what the caller did wrong (a bad name, a sequence
/// out of range: answer the client), what it may retry (`Closed`), and what
/// means this node is broken (`Storage`, `Corrupt`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// A topic name that breaks the naming rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// Any other argument that is out of bounds or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No topic of that name exists (or it was deleted).
    #[error("topic {0:?} not found")]
    TopicNotFound(String),
    /// A Raft group asked about its topic holds none any more (deleted), or
    /// no member holds the group: the caller, who knows the topic's name,
    /// says [`Error::TopicNotFound`] to its own caller.
    #[error("the group's topic was deleted")]
    GroupWithoutTopic,
    /// No handler of that name is bound to the topic.
    #[error("handler {0:?} not found")]
    HandlerNotFound(String),
    /// `create` for a name that is taken.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// A sequence number that was trimmed or has not been written yet.
    #[error("sequence {seq} of topic {topic:?} is out of range: {}", readable(*.first, *.last))]
    OutOfRange {
        topic: String,
        seq: u64,
        first: u64,
        last: u64,
    },
    /// A subscriber still needs elements that were trimmed from the history.
    #[error(
        "subscriber of topic {topic:?} fell behind: it needs sequence {next} but the history now starts at {first}; resume from {first}"
    )]
    FellBehind {
        topic: String,
        next: u64,
        first: u64,
    },
    /// A producer sequence that is neither new nor a retry the node remembers.
    #[error("producer {id:?}: sequence {seq} is {why}")]
    ProducerSeq { id: String, seq: u64, why: String },
    /// A node-wide limit (topic count, queue depth) is reached; retry later.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The node is shutting down, or the topic's writer stopped.
    #[error("the topic log is closed (node shutting down)")]
    Closed,
    /// Another node could not be reached, or did not answer in time.
    #[error("network: {0}")]
    Network(String),
    /// The storage engine failed. The node cannot promise durability.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Bytes on disk that do not decode: a bug or a damaged disk.
    #[error("corrupt data in storage: {0}")]
    Corrupt(String),
}

fn readable(first: u64, last: u64) -> String {
    if last == 0 {
        "the topic is empty".to_string()
    } else {
        format!("the topic holds {first}..={last}")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
