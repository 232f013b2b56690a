//! Consensus with openraft 0.9: the type configuration and the storage of the Raft log and
//! state machine in the node's SQLite file.
//!
//! # Layout
//!
//! - this module: [`TypeConfig`] (log entries carry `jochat_core::Command`) and [`Applied`],
//!   what applying an entry returns.
//! - [`network`]: openraft's network over tonic, one channel and a deadline per peer call.
//! - [`faults`]: the injectable fault layer every peer call consults (empty outside tests).
//! - [`election`]: the election timer: staggered by id, with a pre-check of the peers.
//! - [`storage`]: [`storage::LogStore`] and [`storage::StateMachineStore`], openraft's v2
//!   storage traits on SQLite.
//!
//! The peer side of the network is `crate::service::raft`. Wiring into the node's write
//! path builds on these.

pub mod election;
pub mod faults;
pub mod network;
pub mod storage;

use jochat_core::{ChatError, Command, Outcome};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// JoChat's choice of openraft's generic types: entries carry [`Command`]s, nodes are
    /// known by a `u64` id and an address, and snapshots are SQLite files.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

/// What applying one log entry returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A chat command's outcome, or the rule it broke (it then changed nothing).
    Command(Result<Outcome, ChatError>),
    /// A blank or membership entry, which change no chat state.
    Internal,
}
