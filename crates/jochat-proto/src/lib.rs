//! JoChat's wire format: the `jochat.v1` gRPC package, the prototype's `ChatService`, and
//! their generated tonic/prost code.
//!
//! The `.proto` files live in `proto/` beside this crate and are compiled at build time with
//! a vendored `protoc`, so a fresh machine needs no system `protoc`.
//!
//! # Layout
//!
//! - [`v1`]: the generated messages, the `Chat` client and server.
//! - [`internal`]: the Raft calls between the nodes of a cluster.
//! - [`legacy`]: the prototype's `ChatService`, same wire format, for its old clients.
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

/// Package `jochat.internal.v1`: the Raft calls between nodes of one cluster.
pub mod internal {
    /// Version 1 of the internal calls.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("jochat.internal.v1");
    }
}

/// The Python prototype's service, `ChatService` (no package), from
/// `proto/legacy/chat_service.proto`: the same wire format, served for its old clients.
pub mod legacy {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    // A package-less `.proto` is generated into `_.rs`.
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` in this crate, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jochat_descriptor");
