//! JoChat's wire format: the `jochat.v1` gRPC package and its generated tonic/prost code.
//!
//! The `.proto` files live in `proto/` beside this crate and are compiled at build time with
//! a vendored `protoc`, so a fresh machine needs no system `protoc`.
//!
//! # Layout
//!
//! - [`v1`]: the generated messages, the `Chat` client and server.
//! - [`codec`]: the codec every generated method uses; it reports requests that cannot be
//!   decoded (malformed frames, invalid UTF-8 in a string field) as `INVALID_ARGUMENT`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

#![forbid(unsafe_code)]

pub mod codec;

/// Package `jochat.v1`: the chat API.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("jochat.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` in this crate, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jochat_v1_descriptor");
