//! A JoChat server node: the chat state and the Raft log in SQLite, the `jochat.v1` gRPC API,
//! the prototype's `ChatService`, the internal Raft service, the standard gRPC health service
//! and server reflection.
//!
//! Every write becomes a `jochat_core::Command`, replicated through Raft and applied by its
//! state machine; handlers never write SQLite themselves. Reads run on a pool of read-only
//! connections.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables ([`NodeConfig`]); [`config_file`]: `--config`
//!   and `--print-config`.
//! - [`store`]: the SQLite database: schema and migrations, the read pool, applying commands.
//! - [`auth`]: argon2id hashing off the executor, session tokens, the failed-log-in limiter.
//! - [`node`]: [`Node`], the chat operations as the node performs them (one file each under
//!   `node/ops`), the write path and the read path every operation takes, and forming or
//!   joining a cluster (`node/cluster`).
//! - [`proposer`]: gathers concurrent writes into shared Raft entries (bounded queue).
//! - [`request_id`]: a caller's `x-request-id` through the request's log lines.
//! - [`reads`]: shares leadership confirmations among concurrent linearizable reads.
//! - [`raft`]: openraft's type configuration, storage on the same SQLite file, the network
//!   and the election timer.
//! - [`service`]: the gRPC services, thin adapters over [`Node`].
//! - [`server`]: [`serve`], [`spawn`] and [`spawn_ephemeral`].
//! - [`listener`]: the listening socket, with the cap on open connections.
//! - [`error`]: [`NodeError`] and its mapping to gRPC status codes.
//! - [`events`]: what the state machine publishes to live subscribers.
//! - [`subscription`]: Subscribe, one task per subscriber.
//! - [`idle`]: giving caches and freed memory back once the node goes quiet.
//! - [`metrics`]: Prometheus metrics, `/livez` and `/readyz` (`--metrics-addr`).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), jochat_node::NodeError> {
//! let node = jochat_node::spawn_ephemeral().await?;
//! println!("serving at {}", node.address());
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```

// One call needs `unsafe` (`idle::trim_heap`, glibc's `malloc_trim`); it allows it alone.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// The tracing target of the write path's timeline: one `trace` event per stage of a write
/// (`propose`, `append`, `replicate`, `append_entries`, `commit`, `append.flushed`,
/// `replicated`, `apply`, `applied`, `committed`), with the log index. Off unless asked for
/// (`RUST_LOG=jochat::timeline=trace`); `peer-bench --timeline` reads them.
pub const TIMELINE: &str = "jochat::timeline";

pub mod auth;
pub mod config;
pub mod config_file;
pub mod disk;
pub mod error;
pub mod events;
pub mod idle;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod proposer;
pub mod raft;
pub mod reads;
pub mod request_id;
pub mod server;
pub mod service;
pub mod socket;
pub mod store;
pub mod subscription;
pub mod tls;

pub use config::NodeConfig;
pub use error::NodeError;
pub use node::Node;
pub use server::{
    serve, serve_with, spawn, spawn_ephemeral, spawn_ephemeral_with, EphemeralNode, RunningNode,
};
