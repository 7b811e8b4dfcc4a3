//! woof's overlay: how nodes find and talk to each other, with libp2p.
//!
//! Layout:
//! - [`key`]: the cluster key (in the file form of a libp2p private
//!   network's pre-shared key).
//! - `psk`: the private network: every connection encrypted under a key
//!   derived from the cluster key before noise runs (XChaCha20; ADR 30).
//! - [`identity`]: a node's keypair, kept across restarts.
//! - [`info`]: what a node advertises: tier, attributes, capabilities.
//! - [`members`]: the live view of the others (alive, suspected, gone), a
//!   plain struct fed with what was heard and the time.
//! - [`distance`]: Kademlia (XOR) distance between keys and peers.
//! - [`network`]: the swarm (TCP, private network, noise, yamux; Kademlia,
//!   Identify, request-response) owned by one event loop, the join (retried
//!   with backoff until a node answers) and the rejoin through nodes known
//!   from an earlier run, and the
//!   [`network::Client`] handle the rest of the node uses.
//! - `link`: one long-lived connection to each peer for requests that must
//!   not wait behind the event loop (the Raft groups' messages), answered
//!   out of order as each is ready ([`network::Client::link_request`]).
//! - `direct`: a link's own TCP connection: its Noise handshake (keyed by
//!   the cluster key, bound to the libp2p identities) and sealed records
//!   (ADR 34).
//! - [`error`]: the crate's one error type.
//!
//! This crate knows nothing of topics or Raft: higher layers send opaque
//! requests through [`network::Client::request`] (or
//! [`network::Client::link_request`]) and answer [`network::Inbound`] ones.

mod direct;
pub mod distance;
pub mod error;
pub mod identity;
pub mod info;
pub mod key;
mod link;
pub mod members;
pub mod network;
mod psk;

pub use error::{Error, Result};
pub use info::{NodeInfo, Tier};
pub use key::ClusterKey;
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, multiaddr};
pub use link::LinkPort;
pub use members::{Liveness, Member, Timing};
pub use network::{Client, Inbound, Overlay, OverlayConfig, start};
