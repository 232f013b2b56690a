//! The one error type of the node crate, and how it becomes a gRPC status.

use jochat_core::ChatError;
use thiserror::Error;
use tonic::{Code, Status};

/// Metadata naming the leader's server id on a NOT-LEADER answer.
pub const LEADER_ID_HEADER: &str = "jochat-leader-id";
/// Metadata naming the leader's address on a NOT-LEADER answer.
pub const LEADER_ADDRESS_HEADER: &str = "jochat-leader-addr";

/// Everything that can go wrong in a node. The variants say what the caller should do:
/// [`NodeError::Chat`] carries the domain's verdict (final unless it is a storage error),
/// [`NodeError::RateLimited`] means wait, [`NodeError::ShuttingDown`] means try another node.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The chat core refused the request (bad input, unknown session, name taken, ...).
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The caller may not do this (for example ResetDB by someone other than the
    /// administrator, or the prototype's internal replication calls).
    #[error("{0}")]
    PermissionDenied(String),
    /// Too many failed log-ins for one username; retry after the given time.
    #[error("too many failed log-ins for this username: try again in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until log-ins for the name are accepted again.
        retry_after_secs: u64,
    },
    /// A configuration flag has a value it may not have.
    #[error("--{flag}: {rule}")]
    Config {
        /// The flag, without dashes.
        flag: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// No read connection could be had.
    #[error("read connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// The database file is damaged (the start-up check found it so).
    #[error("database file {} is corrupted ({detail}): restore it from a backup, or move it aside and let the node join its cluster again as a new member (remove it with `jochat cluster remove`, then add it back)", path.display())]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What the check found.
        detail: String,
    },
    /// The database file's schema cannot be used.
    #[error("database schema: {0}")]
    Schema(String),
    /// This node is not the leader: send writes to the leader (named when known).
    #[error("not the leader: {}", match (leader_id, leader_address) {
        (Some(id), Some(address)) => format!("the leader is node {id} at {address}"),
        _ => "no leader is known right now".to_owned(),
    })]
    NotLeader {
        /// The leader's server id, if known.
        leader_id: Option<u64>,
        /// The leader's address, if known.
        leader_address: Option<String>,
    },
    /// This node cannot reach a majority of the cluster, so it cannot write or serve a
    /// linearizable read. Retry later or elsewhere; stale reads still work.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The Raft core failed or stopped.
    #[error("raft: {0}")]
    Raft(String),
    /// A subscriber read its stream so slowly that its buffer filled: it is dropped (writers
    /// are never slowed for it) and may subscribe again from the last id it received.
    #[error("subscriber too slow: {buffered} messages were waiting unread; subscribe again with after_id {last_id}")]
    SubscriberTooSlow {
        /// How many messages were buffered for it.
        buffered: usize,
        /// The last message id queued to it.
        last_id: i64,
    },
    /// A bounded queue of this node is full: the request was refused before anything was
    /// done. Retry after a pause (the failover client does).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The node is stopping and takes no new work.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node's disk has less free space than `--min-free-disk-mb`: writes are refused
    /// before they touch it, until space returns. Retry later (the failover client does).
    #[error("disk nearly full on node {node_id} ({free_mib} MiB free, {required_mib} MiB required): writes are refused until space returns")]
    DiskFull {
        /// The node whose disk is low.
        node_id: u64,
        /// MiB free at the last measurement.
        free_mib: u64,
        /// MiB that must stay free (`--min-free-disk-mb`).
        required_mib: u64,
    },
    /// The leader found this node's chat state different from the majority's: it serves no
    /// reads until rebuilt (`jochat-node --rebuild`). Read from another node.
    #[error("this node's chat state differs from the cluster's and is not served: {0}")]
    Diverged(String),
    /// The node's Raft core stopped on a storage fault (a failed write or fsync of the log
    /// or the database): the node stops serving and exits so that it is restarted. Retry on
    /// another node.
    #[error("this node's storage failed and it is stopping: {0}")]
    Stopped(String),
    /// Hashing a password failed (out of memory, or a corrupt stored hash).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// A file or socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A background task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// The leader refused a request this node forwarded to it, with this code and text.
    #[error("the leader refused the forwarded request: {message}")]
    Forwarded {
        /// The leader's status code.
        code: Code,
        /// The leader's text.
        message: String,
    },
}

impl From<openraft::error::ForwardToLeader<u64, openraft::BasicNode>> for NodeError {
    fn from(forward: openraft::error::ForwardToLeader<u64, openraft::BasicNode>) -> Self {
        Self::NotLeader {
            leader_id: forward.leader_id,
            leader_address: forward.leader_node.map(|node| node.addr),
        }
    }
}

impl NodeError {
    /// Whether this is an unknown, revoked or expired session (or wrong credentials).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::Chat(ChatError::Unauthenticated(_) | ChatError::WrongCredentials)
        )
    }

    /// The gRPC status code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::Chat(error) => match error {
                ChatError::InvalidArgument { .. } => Code::InvalidArgument,
                ChatError::AlreadyExists { .. } => Code::AlreadyExists,
                ChatError::NotFound { .. } => Code::NotFound,
                ChatError::Unauthenticated(_) | ChatError::WrongCredentials => {
                    Code::Unauthenticated
                }
                ChatError::IdempotencyKeyReused => Code::FailedPrecondition,
                ChatError::Storage(_) => Code::Internal,
            },
            Self::RateLimited { .. } | Self::SubscriberTooSlow { .. } | Self::DiskFull { .. } => {
                Code::ResourceExhausted
            }
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Config { .. } => Code::InvalidArgument,
            Self::ShuttingDown
            | Self::Stopped(_)
            | Self::Diverged(_)
            | Self::Overloaded(_)
            | Self::NotLeader { .. }
            | Self::NoQuorum(_) => Code::Unavailable,
            Self::Raft(_) => Code::Internal,
            Self::Forwarded { code, .. } => *code,
            Self::Sqlite(_)
            | Self::Corrupt { .. }
            | Self::Pool(_)
            | Self::Schema(_)
            | Self::Hashing(_)
            | Self::Io(_)
            | Self::Transport(_)
            | Self::Task(_) => Code::Internal,
        }
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        let code = error.code();
        if code == Code::Internal {
            // Internal details go to the log, not to the caller.
            tracing::error!(%error, "internal error");
            return Status::internal("internal error: see the node's log");
        }
        let mut status = Status::new(code, error.to_string());
        if let NodeError::NotLeader {
            leader_id,
            leader_address,
        } = &error
        {
            // Clients go straight to the leader with these.
            let metadata = status.metadata_mut();
            if let Some(Ok(id)) = leader_id.map(|id| id.to_string().parse()) {
                metadata.insert(LEADER_ID_HEADER, id);
            }
            if let Some(Ok(address)) = leader_address.as_deref().map(str::parse) {
                metadata.insert(LEADER_ADDRESS_HEADER, address);
            }
        }
        status
    }
}
