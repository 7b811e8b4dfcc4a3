//! woof's topic log: the state machine that decides appends, the storage it
//! sits on, and the driver that runs it on a node.
//!
//! Layout:
//! - [`topic`]: the domain (names, settings, elements, producers) and the
//!   [`topic::Machine`] that decides appends. Pure: no I/O, no clock.
//! - [`store`]: the [`store::Store`] trait, the RocksDB and in-memory stores,
//!   and the conformance suite every store passes.
//! - [`topics`]: [`Topics`], which runs one writer task per topic on tokio:
//!   group commit, synced writes, subscriptions, background trimming.
//! - [`error`]: the crate's one error type.
//!
//! Today a topic lives on one node. The cluster issue puts each topic's
//! `Machine` behind an openraft group; the client-facing API of [`Topics`]
//! is shaped so that it does not change when that happens.

pub mod error;
pub mod raft;
pub mod store;
pub mod topic;
pub mod topics;

pub use error::{Error, Result};
pub use topics::{Clock, Start, Subscription, SystemClock, TopicInfo, Topics};
