//! Python handlers for woof, run by RustPython in a sandbox (ADR 12).
//!
//! A node runs each Python handler in a worker process of its own, kept
//! warm: the handler's source is compiled and its module run once, then
//! the worker takes element after element. The worker is the node's own
//! binary started with [`WORKER_ARG`], so nothing else needs installing.
//!
//! Layout:
//! - [`host`]: the node's side: start a worker, load a handler (a syntax
//!   error is refused with its line), invoke it within its time budget,
//!   answer its reads, and tell how it died if it did.
//! - [`worker`]: the worker's side: the interpreter, the `ctx` a handler
//!   sees, and the limits the process puts on itself.
//! - [`modules`]: what a handler may import, and nothing else.
//! - [`wire`]: the messages between the two and their framing.

pub mod host;
pub mod modules;
pub mod wire;
pub mod worker;

pub use host::{Limits, Reads, Worker};
pub use wire::{Answer, Ask, Outcome, Output, Refusal};

/// The hidden subcommand that makes the node's binary a Python worker.
pub const WORKER_ARG: &str = "__python-worker";

/// What can go wrong with a Python handler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The handler cannot be loaded (a syntax error, no `handle`, an
    /// exception while its module ran).
    #[error("{}", refused(.0))]
    Refused(Refusal),
    /// An invocation (or loading) ran past its time budget; the worker was killed.
    #[error("it ran past its time budget of {0} ms and was stopped")]
    Overran(u64),
    /// The worker process died (past its memory cap, a crash).
    #[error("its worker process died: {0}")]
    Died(String),
    /// The worker could not be started.
    #[error("starting a Python worker ({program}): {error}")]
    Start { program: String, error: String },
    /// A message between the node and a worker was broken.
    #[error("talking to the Python worker: {0}")]
    Wire(String),
}

fn refused(r: &Refusal) -> String {
    match r.line {
        Some(line) => format!("line {line}: {}", r.message),
        None => r.message.clone(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
