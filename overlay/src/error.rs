//! The one error type of the overlay.

/// What can go wrong joining or using the overlay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A cluster key file or value that is not a libp2p pre-shared key.
    #[error("bad cluster key: {0}")]
    ClusterKey(String),
    /// A node identity file that cannot be read, written or decoded.
    #[error("node identity {path}: {reason}")]
    Identity { path: String, reason: String },
    /// A tier, attribute or capability that breaks the rules.
    #[error("{0}")]
    InvalidInfo(String),
    /// An address that cannot be listened on or dialled.
    #[error("address {addr}: {reason}")]
    Address { addr: String, reason: String },
    /// None of the `--join` addresses answered with a node of this cluster.
    #[error("could not join the cluster: {0}")]
    Join(String),
    /// A request to a peer failed or timed out; the peer may be gone.
    #[error("request to {peer} failed: {reason}")]
    Request { peer: String, reason: String },
    /// A Kademlia record could not be stored or found.
    #[error("record {key}: {reason}")]
    Record { key: String, reason: String },
    /// The overlay is shutting down.
    #[error("the overlay is shut down")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
