//! woof's topic log: the state machine that decides appends, the storage it
//! sits on, and the driver that runs it on a node.
//!
//! Layout:
//! - [`topic`]: the domain (names, settings, elements, producers), the
//!   [`topic::Machine`] that decides appends (pure: no I/O, no clock) and
//!   the one [`topic::appender`] both writers below decide through.
//! - [`store`]: the [`store::Store`] (topic data) and [`store::RaftLogStore`]
//!   (Raft logs) traits, the RocksDB and in-memory stores that implement both,
//!   and the conformance suite every store passes.
//! - [`raft`]: a topic as an openraft group: the commands its log carries,
//!   the log store and state machine adapters (which pass openraft's own
//!   suite), the Raft messages with the per-node router of groups, and
//!   starting a group. How messages travel is passed in as a
//!   [`raft::network::Transport`].
//! - [`local`]: [`Topics`], the topics a node holds locally: one writer
//!   task per topic on tokio with group commit and synced writes
//!   (standalone), or what a group's state machine publishes (in a
//!   cluster); reads, subscriptions and background trimming for both.
//! - [`batch`]: filling a batch from a queue, bounded in items and bytes
//!   (the one rule of every group commit).
//! - [`codec`]: every format written to disk or sent to another node,
//!   listed, each with its version.
//! - [`error`]: the crate's one error type.
//! - [`bugs`]: deliberate bugs the simulator can switch on to show that its
//!   checkers bite (compiled in only with the `sim-bugs` feature; ADR 0006).
//!
//! A standalone node serves its topics through [`Topics`] alone; in a
//! cluster every topic is a [`raft`] group whose state machine publishes to
//! the node's [`Topics`], which serves reads and subscriptions. The node
//! crate places groups, forwards requests and carries the Raft messages
//! over the overlay; the simulator (`sim/`) drives this crate directly.

pub mod batch;
pub mod bugs;
pub mod codec;
pub mod error;
pub mod local;
pub mod raft;
pub mod store;
pub mod topic;

pub use error::{Error, Result};
pub use local::{Clock, Start, Subscription, SystemClock, TopicInfo, Topics};
