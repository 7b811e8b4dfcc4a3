//! woof's gRPC API, generated from `proto/woof/v1/woof.proto`.
//!
//! Layout:
//! - `proto/woof/v1/woof.proto`: the service `woof.v1.Woof`, documented field
//!   by field; the source of truth for clients in any language.
//! - `build.rs`: compiles it with protox (no `protoc` needed), and encodes
//!   its descriptors for [`FILE_DESCRIPTOR_SET`].
//! - [`v1`]: the generated messages, the `woof_client::WoofClient` and the
//!   `woof_server::Woof` trait with its `WoofServer`.
//!
//! This crate depends on nothing else in the workspace. The node converts
//! between these messages and its domain types (`woof_consensus::topic`).

/// Version 1 of the API (`package woof.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("woof.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `woof.proto` (with
/// source info): what a node serves through gRPC server reflection, so that
/// tools such as grpcurl need no `.proto`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/woof_descriptor.bin"));

/// The largest gRPC message a node accepts or a client sends, in bytes. An
/// `AppendBatch` is at most 8 MiB of payload; this leaves room for framing.
pub const MESSAGE_BYTES_MAX: usize = 10 * 1024 * 1024;
