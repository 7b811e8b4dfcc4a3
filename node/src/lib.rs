//! The woof node: the daemon, its gRPC service, and the `woof` CLI.
//!
//! Layout:
//! - [`config`]: the node's settings, from a TOML file and command-line flags.
//! - [`server`]: [`server::Node`], which opens the store, loads the topics and
//!   serves gRPC until told to stop; `run(listener, shutdown)` style, so tests
//!   and the demo hand it a socket and a stop signal.
//! - [`shutdown`]: the stop signal and task tracker every part of a node
//!   spawns its tasks through, so that [`server::Node::stop`] awaits them.
//! - [`cluster`]: the node's overlay (libp2p, when it is in a cluster), the
//!   cluster status it reports, and the nodes it knew last time
//!   (`DATA_DIR/peers`), which a restarted node dials to rejoin.
//! - [`api`]: the topic API the node serves (`TopicApi`): its own topics when it is
//!   standalone, or every topic of the cluster, each a Raft group found
//!   through the DHT, written at its leader, read from a replica.
//! - [`groups`]: this node's Raft groups over the overlay, and the
//!   node-to-node requests that create, write, read and list them.
//! - [`handlers`]: handlers bound to topics: the supervisor that runs
//!   them where they are placed, each one's runner (effectively once), and
//!   the native builtins.
//! - [`placement`]: which nodes a topic's replicas go to (Kademlia distance,
//!   or attribute constraints such as `tier=edge:1,tier=cloud:2`).
//! - [`grpc`]: the `woof.v1.Woof` service, and the conversions between its
//!   messages and the domain types of `woof_consensus`, errors included;
//!   the span each request is handled in (rpc, topic, peer); and in
//!   `grpc::health`, `grpc.health.v1` and server reflection.
//! - [`auth`]: capability tokens (biscuit): making, narrowing and checking
//!   them, the replicated revocation list; and TLS on the client API, with
//!   `woof cluster certs` for test clusters.
//! - [`cli`]: the command-line client (`woof topic ...`, `woof append ...`),
//!   which talks gRPC to a node, and its text/JSON output.
//! - [`devices`]: microcontrollers: the device registry, the bridge
//!   gateway, and the device simulator.
//! - [`metrics`]: Prometheus metrics, served at `/metrics` on
//!   `--metrics-listen`: what the node counts and what it reads at each
//!   scrape.
//! - [`dashboard`]: the web dashboard on `--http-listen`: a page bundled
//!   in the binary and the live views it reads (server-sent events), built
//!   by calling the gRPC service in-process with the browser's token.
//! - [`http`]: the small HTTP/1.1 server loop `/metrics` and the dashboard
//!   share (bounded connections, each for a bounded time).
//! - [`demo`]: `woof demo`, an embedded node that shows what woof does.
//! - [`error`]: the crate's one error type.
//!
//! `main.rs` only parses the command line and calls into these.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod devices;
pub mod error;
pub mod groups;
pub mod grpc;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod placement;
pub mod server;
pub mod shutdown;

pub use error::{Error, Result};
