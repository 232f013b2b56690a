//! Linearizable reads share leadership confirmations.
//!
//! A linearizable read on the leader must see every write acknowledged before it began, so
//! the leader confirms with a majority that it still leads (openraft's
//! `ensure_linearizable`: one heartbeat round) and waits until everything committed by then
//! is applied. Each read doing its own round made concurrent reads cost one round each.
//! Here reads that arrive while a round is in flight wait for the *next* round, which starts
//! as soon as the current one ends and serves all of them: a round that starts after a read
//! arrived is as good as the read's own (the read index it fixes is at least the one the read
//! would have fixed), and a round that started before is never used. So at most one round
//! runs at a time, a read waits at most for the end of the current round plus its own, and n
//! concurrent reads cost about two rounds instead of n.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;

use crate::error::NodeError;
use crate::raft::TypeConfig;

type Waiter = oneshot::Sender<Result<(), NodeError>>;

/// The reads waiting for the next round, and whether a round is running.
#[derive(Default)]
struct Rounds {
    running: bool,
    waiting: Vec<Waiter>,
}

/// Shares leadership confirmations among concurrent linearizable reads (see the module).
#[derive(Clone, Default)]
pub struct ReadRounds {
    rounds: Arc<Mutex<Rounds>>,
}

impl ReadRounds {
    /// Returns once a leadership confirmation that started after this call has succeeded
    /// and everything it found committed is applied on this node.
    ///
    /// # Errors
    /// `NotLeader` on a follower; `NoQuorum` when no majority confirms within `deadline`.
    pub async fn confirm(
        &self,
        raft: &openraft::Raft<TypeConfig>,
        deadline: Duration,
    ) -> Result<(), NodeError> {
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut rounds = self.lock();
            rounds.waiting.push(done);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            // Its own task: the reads waiting on it do not depend on this caller staying.
            let (rounds, raft) = (self.clone(), raft.clone());
            tokio::spawn(async move { rounds.drive(&raft, deadline).await });
        }
        outcome.await.unwrap_or(Err(NodeError::ShuttingDown))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds> {
        self.rounds
            .lock()
            .expect("the read rounds' mutex is never held across a panic")
    }

    /// Runs rounds while reads wait, each for everything that waited when it started.
    async fn drive(&self, raft: &openraft::Raft<TypeConfig>, deadline: Duration) {
        loop {
            let waiting = {
                let mut rounds = self.lock();
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let outcome = round(raft, deadline).await;
            for waiter in waiting {
                let _ = waiter.send(copy(&outcome));
            }
        }
    }
}

/// One leadership confirmation.
async fn round(raft: &openraft::Raft<TypeConfig>, deadline: Duration) -> Result<(), NodeError> {
    match tokio::time::timeout(deadline, raft.ensure_linearizable()).await {
        Err(_) => Err(NodeError::NoQuorum(format!(
            "no majority confirmed this node's leadership within {deadline:?}"
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
            Err(NodeError::from(forward))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error)))) => {
            Err(NodeError::NoQuorum(error.to_string()))
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(NodeError::Stopped(fatal.to_string())),
    }
}

/// A round's outcome for one more waiter (the errors a round produces, rebuilt).
fn copy(outcome: &Result<(), NodeError>) -> Result<(), NodeError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(NodeError::NotLeader {
            leader_id,
            leader_address,
        }) => Err(NodeError::NotLeader {
            leader_id: *leader_id,
            leader_address: leader_address.clone(),
        }),
        Err(NodeError::NoQuorum(reason)) => Err(NodeError::NoQuorum(reason.clone())),
        Err(NodeError::Stopped(reason)) => Err(NodeError::Stopped(reason.clone())),
        Err(other) => Err(NodeError::Raft(other.to_string())),
    }
}
