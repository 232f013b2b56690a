//! Consensus with openraft 0.9: the type configuration and the storage of the Raft log and
//! state machine in the node's SQLite file.
//!
//! # Layout
//!
//! - this module: [`TypeConfig`] (log entries carry a [`Batch`] of `jochat_core::Command`s)
//!   and [`Applied`], what applying an entry returns.
//! - [`network`]: openraft's network over tonic, one channel and a deadline per peer call.
//! - [`faults`]: the injectable fault layer every peer call consults (empty outside tests).
//! - [`election`]: the election timer: staggered by id, with a pre-check of the peers.
//! - [`storage`]: [`storage::LogStore`] and [`storage::StateMachineStore`], openraft's v2
//!   storage traits on SQLite.
//! - [`snapshots`]: when snapshots are made (by entries and by size) and how their files are
//!   written (paced, flushed as they grow).
//! - [`commit_gate`]: the leader's own appends reported flushed as they are queued, so
//!   replication overlaps its fsync, and the commit index its followers hear held back
//!   until the leader's copy is durable.
//! - [`writer`]: the writer's two threads, the appender (the log's files: appends in groups,
//!   one fsync for many) and the database writer (the SQLite file: applies, votes, purges),
//!   each running its jobs in order; [`tail`]: the newest entries in memory,
//!   readable before they are written.
//!
//! The peer side of the network is `crate::service::raft`. Wiring into the node's write
//! path builds on these.

pub mod commit_gate;
pub mod election;
pub mod faults;
pub mod log_file;
pub mod network;
pub mod snapshots;
pub mod state_check;
pub mod storage;
pub mod tail;
pub mod writer;

use jochat_core::{ChatError, Command, Outcome};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// JoChat's choice of openraft's generic types: entries carry [`Batch`]es of commands,
    /// nodes are known by a `u64` id and an address, and snapshots are SQLite files.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

/// What one log entry carries: the commands the leader gathered while its log was busy
/// writing the entries before (`crate::proposer`). They are applied in order, each on its own:
/// one refused command changes nothing and the others still apply.
///
/// Serialized as a JSON array of commands; an entry written by an older build, a single
/// command, reads as a batch of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Batch(pub Vec<Command>);

impl From<Command> for Batch {
    fn from(command: Command) -> Self {
        Self(vec![command])
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Many(Vec<Command>),
            One(Box<Command>),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Many(commands) => Self(commands),
            Stored::One(command) => Self(vec![*command]),
        })
    }
}

/// Log entries in one replication message at most (openraft's `max_payload_entries`, set
/// from this in `NodeConfig::raft_config`).
pub const PAYLOAD_ENTRIES_MAX: u64 = 300;

/// Bytes of one command's fields other than its variable data (content, password hash,
/// ids) on the wire, at most: its time, idempotency key (at most
/// `jochat_core::limits::IDEMPOTENCY_KEY_CHARS_MAX` plain characters), session digest, user
/// name and the JSON around them.
const COMMAND_FIXED_WIRE_BYTES_MAX: usize = 1024;

/// How many bytes of JSON one byte of variable data may become: a control character is
/// escaped as `\u0000`.
const JSON_ESCAPE_FACTOR: usize = 6;

/// The largest log entry on the wire: a batch holds at most `proposer::MAX_BATCH_BYTES` of
/// variable data, except that one larger command travels alone (content up to
/// `jochat_core::limits::CONTENT_BYTES_LIMIT`), each byte of which JSON may escape, plus each
/// command's fixed fields.
pub const ENTRY_WIRE_BYTES_MAX: usize = {
    let variable = if crate::proposer::MAX_BATCH_BYTES > jochat_core::limits::CONTENT_BYTES_LIMIT {
        crate::proposer::MAX_BATCH_BYTES
    } else {
        jochat_core::limits::CONTENT_BYTES_LIMIT
    };
    JSON_ESCAPE_FACTOR * variable
        + crate::proposer::MAX_BATCH_COMMANDS * COMMAND_FIXED_WIRE_BYTES_MAX
};

/// The largest internal Raft message a node accepts, either way (requests on the peer
/// service, replies on its client): a full replication message plus 1 MiB for the rest.
/// Snapshot chunks are far smaller (openraft's 3 MiB chunks, at most four bytes of JSON per
/// byte on the older call). A peer announcing more is refused with OUT_OF_RANGE.
pub const RAFT_MESSAGE_BYTES_MAX: usize =
    PAYLOAD_ENTRIES_MAX as usize * ENTRY_WIRE_BYTES_MAX + (1 << 20);

/// What applying one log entry returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Each command's outcome, or the rule it broke (it then changed nothing), in the
    /// batch's order.
    Commands(Vec<Result<Outcome, ChatError>>),
    /// A blank or membership entry, which change no chat state.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use jochat_core::ops::SignUp;
    use jochat_core::types::Username;
    use jochat_core::Action;

    /// The bound on entries holds for the largest entries the proposer can make: one
    /// command of the largest content, all control characters, and a full batch of commands
    /// with the longest fixed fields.
    #[test]
    fn the_largest_entries_fit_the_wire_bound() {
        use jochat_core::limits::{CONTENT_BYTES_LIMIT, IDEMPOTENCY_KEY_CHARS_MAX};
        use jochat_core::ops::SendMessage;
        use jochat_core::types::{Content, IdempotencyKey, SessionToken};

        let send = |content: String| Command {
            at_ms: i64::MIN,
            idempotency_key: IdempotencyKey::optional(&"k".repeat(IDEMPOTENCY_KEY_CHARS_MAX))
                .unwrap(),
            action: Action::SendMessage(SendMessage {
                session: SessionToken::from_random_bytes([9; 32]).digest(),
                recipient: Username::new(&"r".repeat(32)).unwrap(),
                content: Content::new(content, CONTENT_BYTES_LIMIT).unwrap(),
            }),
        };
        let alone = Batch(vec![send("\u{1}".repeat(CONTENT_BYTES_LIMIT))]);
        let bytes = serde_json::to_vec(&alone).unwrap().len();
        assert!(
            bytes <= ENTRY_WIRE_BYTES_MAX,
            "{bytes} > {ENTRY_WIRE_BYTES_MAX}"
        );

        let share = crate::proposer::MAX_BATCH_BYTES / crate::proposer::MAX_BATCH_COMMANDS;
        let full = Batch(
            (0..crate::proposer::MAX_BATCH_COMMANDS)
                .map(|_| send("\u{1}".repeat(share)))
                .collect(),
        );
        let bytes = serde_json::to_vec(&full).unwrap().len();
        assert!(
            bytes <= ENTRY_WIRE_BYTES_MAX,
            "{bytes} > {ENTRY_WIRE_BYTES_MAX}"
        );
    }

    #[test]
    fn a_single_stored_command_reads_as_a_batch_of_one() {
        let command = Command {
            at_ms: 7,
            idempotency_key: None,
            action: Action::SignUp(SignUp {
                username: Username::new("alice").unwrap(),
                password_hash: "$argon2id$stand-in".into(),
            }),
        };
        let one = serde_json::to_vec(&command).unwrap();
        let read: Batch = serde_json::from_slice(&one).unwrap();
        assert_eq!(read, Batch(vec![command.clone()]));
        let many = serde_json::to_vec(&Batch(vec![command.clone(), command.clone()])).unwrap();
        let read: Batch = serde_json::from_slice(&many).unwrap();
        assert_eq!(read.0.len(), 2);
    }
}
