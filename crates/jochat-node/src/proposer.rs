//! Gathers concurrent writes into shared Raft entries.
//!
//! openraft 0.9's core writes each entry it is handed and waits until that write is durable
//! before it takes the next client write. One entry per command therefore means one fsync per
//! command, one after the other, on the leader and again on each follower, however many
//! clients write at once (docs/performance.md, "History"). The proposer keeps at most
//! [`IN_FLIGHT`] entries in Raft at a time; commands that arrive meanwhile wait in its queue,
//! and the next entry carries all of them (up to [`MAX_BATCH_COMMANDS`] commands or
//! [`MAX_BATCH_BYTES`]). A lone write waits for nothing and travels alone; under load the
//! fsyncs, the replication round trips and the apply transactions are each shared by many
//! commands. Each command is still applied on its own (`raft::Batch`), and each caller gets
//! its own command's outcome.

use std::sync::Arc;
use std::time::Duration;

use jochat_core::{ChatError, Command, Outcome};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::error::NodeError;
use crate::raft::{Applied, Batch, TypeConfig};

/// Entries proposed and not yet applied, at most. Two keep the leader's log busy (one being
/// written while the one before is replicated and applied) without splitting a burst of
/// writes into many small entries.
pub const IN_FLIGHT: usize = 2;
/// Commands in one entry, at most.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// The approximate size of one entry's commands, at most (a single larger command still goes
/// alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Commands waiting for an entry, at most: eight full entries. A write that finds the queue
/// full is refused at once with UNAVAILABLE "overloaded" (nothing was submitted; the
/// failover client retries after its backoff) instead of queueing without bound.
pub const QUEUE_COMMANDS_MAX: usize = 8 * MAX_BATCH_COMMANDS;

/// One command waiting for its entry.
struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, NodeError>>,
}

/// Hands commands to Raft in batches; see the module documentation.
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    task: tokio::task::JoinHandle<()>,
}

impl Proposer {
    /// Starts proposing to `raft`; a batch not applied within `deadline` is answered "no
    /// quorum" (it is applied only if a majority returns while this node still leads). Each
    /// entry's number of commands is observed in `batch_sizes`.
    pub fn start(
        raft: openraft::Raft<TypeConfig>,
        deadline: Duration,
        batch_sizes: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let task = tokio::spawn(run(raft, deadline, pending, batch_sizes));
        Self { queue, task }
    }

    /// Proposes `command` and returns its outcome once it is committed and applied here.
    ///
    /// # Errors
    /// The rule the command broke; `NotLeader`; `NoQuorum` after the deadline; `Raft` when
    /// the core failed; `ShuttingDown` once the proposer stopped; `Overloaded` when
    /// [`QUEUE_COMMANDS_MAX`] commands are waiting already.
    pub async fn submit(&self, command: Command) -> Result<Outcome, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending { command, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => NodeError::Overloaded(format!(
                    "{QUEUE_COMMANDS_MAX} writes are already waiting to be proposed; the write \
                     was not made"
                )),
                mpsc::error::TrySendError::Closed(_) => NodeError::ShuttingDown,
            })?;
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Stops proposing; commands still queued are answered `ShuttingDown`.
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn run(
    raft: openraft::Raft<TypeConfig>,
    deadline: Duration,
    mut queue: mpsc::Receiver<Pending>,
    batch_sizes: prometheus_client::metrics::histogram::Histogram,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next: Option<Pending> = None;
    loop {
        // Wait for a free slot first: commands arriving meanwhile gather in the queue.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = first.command.approximate_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            let Ok(pending) = queue.try_recv() else {
                break;
            };
            let size = pending.command.approximate_bytes();
            if bytes + size > MAX_BATCH_BYTES {
                next = Some(pending);
                break;
            }
            bytes += size;
            batch.push(pending);
        }
        let raft = raft.clone();
        batch_sizes.observe(batch.len() as f64);
        let span = tracing::debug_span!("proposal", commands = batch.len(), bytes);
        tokio::spawn(
            async move {
                propose(&raft, deadline, batch).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Why a whole batch failed; each of its callers gets its own copy.
enum BatchFailure {
    Forward(ForwardToLeader<u64, BasicNode>),
    NoQuorum(String),
    Stopped(String),
    Raft(String),
}

impl BatchFailure {
    fn to_error(&self) -> NodeError {
        match self {
            Self::Forward(forward) => NodeError::from(forward.clone()),
            Self::NoQuorum(message) => NodeError::NoQuorum(message.clone()),
            Self::Stopped(message) => NodeError::Stopped(message.clone()),
            Self::Raft(message) => NodeError::Raft(message.clone()),
        }
    }
}

/// Writes `batch` as one entry and answers each of its callers.
async fn propose(raft: &openraft::Raft<TypeConfig>, deadline: Duration, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.command, pending.reply))
        .unzip();
    let count = commands.len();
    tracing::trace!(target: crate::TIMELINE, stage = "propose", commands = count);
    let written = tokio::time::timeout(deadline, raft.client_write(Batch(commands))).await;
    if let Ok(Ok(written)) = &written {
        tracing::trace!(target: crate::TIMELINE, stage = "committed", index = written.log_id.index);
    }
    let results: Result<Vec<Result<Outcome, ChatError>>, BatchFailure> = match written {
        Err(_) => Err(BatchFailure::NoQuorum(format!(
            "no majority confirmed the write within {deadline:?}; it is applied only if one \
             returns while this node still leads"
        ))),
        Ok(Ok(written)) => match written.data {
            Applied::Commands(results) if results.len() == count => Ok(results),
            other => Err(BatchFailure::Raft(format!(
                "a batch of {count} commands was applied as {other:?}"
            ))),
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(BatchFailure::Forward(forward))
        }
        // The core stopped (a storage fault): the node is on its way out, and the caller
        // should try another node.
        Ok(Err(RaftError::Fatal(fatal))) => Err(BatchFailure::Stopped(fatal.to_string())),
        Ok(Err(error)) => Err(BatchFailure::Raft(error.to_string())),
    };
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up no longer needs its answer.
                let _ = reply.send(result.map_err(NodeError::from));
            }
        }
        Err(failure) => {
            for reply in replies {
                let _ = reply.send(Err(failure.to_error()));
            }
        }
    }
}
