//! The one error type of the node crate.

use std::path::PathBuf;

/// What can stop a node from starting or a CLI command from succeeding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file cannot be read or parsed, or a setting is bad.
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// A setting given on the command line (or by environment) is bad.
    #[error("{0}")]
    Usage(String),
    /// The gRPC address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Any other I/O failure (reading standard input, creating a directory).
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The overlay could not start, join, or answer.
    #[error(transparent)]
    Overlay(#[from] woof_overlay::Error),
    /// The topic log refused or failed.
    #[error(transparent)]
    Log(#[from] woof_consensus::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A certificate, key or CA file is missing or bad, or TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A task inside the node failed unexpectedly (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// The CLI could not reach the node.
    #[error("cannot reach the woof node at {server}: {reason}")]
    Connect { server: String, reason: String },
    /// The node answered a CLI request with an error. Not a `source`: the
    /// message says it all, and a chained report would say it twice.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc(status)
    }
}

/// The gRPC code as users see it in the spec (`NOT_FOUND`, not `NotFound`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
