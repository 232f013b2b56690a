//! Serving on a follower, for front ends whose clients do not follow leaders.
//!
//! `jochat.v1` and the prototype's gRPC service answer NOT-LEADER on a follower and their
//! clients go to the leader themselves. The socket prototype's clients cannot: they know one
//! address. A front end that serves such clients runs each request inside
//! [`Node::forwarding`], and then the node's operations work on any node:
//!
//! - a **write** is built here as usual (time, hash, token digest decided here), and the
//!   finished [`Command`] is sent to the leader over the internal `Forward` call; the leader
//!   proposes it through its own batching and answers with the outcome and its applied
//!   index; this node waits until it has applied as far, so what the write did is visible
//!   here at once (a log-in right after a sign-up finds the account).
//! - a **linearizable read** asks the leader for its read index (`ReadIndex`: the leader
//!   confirms its leadership with a majority) and waits until this node has applied that
//!   far, then reads locally: the classic Raft follower read.
//! - the pre-checks of log-in, sign-up and account deletion, which read local state, first
//!   catch up the same way.
//!
//! While the leader changes, a forwarded write waits for the next leader and is sent again
//! with the same idempotency key (one is added to every write that has an idempotency scope),
//! so a write that did commit before the old leader died is answered with its first outcome
//! and never applied twice. Log-in's command has no such scope: a log-in retries with a fresh
//! session token instead, and a duplicate session ends at once, since each log-in revokes
//! the account's others. Everything gives up after twice the quorum deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use jochat_core::command::{Command, Outcome};
use jochat_core::types::IdempotencyKey;
use jochat_core::ChatError;
use jochat_proto::internal::v1::raft_client::RaftClient;
use jochat_proto::internal::v1::{RaftPayload, ReadIndexRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::error::NodeError;
use crate::node::Node;

tokio::task_local! {
    /// Set while a front end that forwards runs a request.
    static FORWARDING: ();
}

/// The pause between attempts while no leader answers.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// What the leader answers a forwarded write with: the outcome and the leader's applied
/// index once it was applied, or the state machine's refusal.
pub type ForwardReply = Result<Forwarded, ChatError>;

/// A forwarded write the leader applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// The command's outcome.
    pub outcome: Outcome,
    /// The leader's applied index after applying it.
    pub applied_index: u64,
}

/// Whether a failed internal call may succeed when made again (the leader changing, a
/// connection lost); the other codes are the leader's definite answer.
pub(crate) fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
    )
}

/// `status` as the caller should judge it: a connection that broke under a call (the leader
/// closing its connections as it shuts down answers with an HTTP/2 GOAWAY, which tonic reports
/// as `Internal`) is `Unavailable`, like any other call that did not reach a live leader.
/// (Statuses a peer sent carry no source; those made from a transport error do.)
fn judged(status: tonic::Status) -> tonic::Status {
    if status.code() == Code::Internal && std::error::Error::source(&status).is_some() {
        tonic::Status::unavailable(format!(
            "the connection to the leader broke: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// The leader's definite refusal of a forwarded call, as this node reports it.
fn refusal(leader: u64, status: &tonic::Status) -> NodeError {
    let message = if status.code() == Code::Unimplemented {
        // A build from before forwarding, during a rolling upgrade.
        format!(
            "the leader (node {leader}) runs a build without forwarding: upgrade it, or \
             connect these clients to the leader"
        )
    } else {
        status.message().to_owned()
    };
    NodeError::Forwarded {
        code: status.code(),
        message,
    }
}

/// Whether the request running now was started inside [`Node::forwarding`].
pub(crate) fn forwards() -> bool {
    FORWARDING.try_with(|()| ()).is_ok()
}

/// A fresh idempotency key for a forwarded write.
fn new_key() -> Result<IdempotencyKey, NodeError> {
    let bytes = crate::auth::random_bytes()?;
    let hex: String = bytes[..16].iter().map(|b| format!("{b:02x}")).collect();
    Ok(IdempotencyKey::optional(&format!("forwarded:{hex}"))?
        .expect("a non-empty key of hex digits is a valid key"))
}

impl Node {
    /// Runs `work`, calls of this node's operations, so that they are served on a follower
    /// too: writes are forwarded to the leader and linearizable reads catch up with it (see
    /// the module). Outside it, a follower answers NOT-LEADER.
    pub async fn forwarding<F: Future>(&self, work: F) -> F::Output {
        FORWARDING.scope((), work).await
    }

    /// How long a forwarded request may wait for a leader in all.
    fn forward_deadline(&self) -> Duration {
        self.quorum_deadline() * 2
    }

    /// The leader's id and address as this node knows them, when it is another node.
    fn other_leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        if leader == metrics.id {
            return None;
        }
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, address))
    }

    /// A client of the leader's internal service, or `None` when this node leads. Waits
    /// (until `deadline`) while no leader is known or it cannot be reached.
    async fn leader_client(
        &self,
        deadline: Instant,
    ) -> Result<Option<(u64, RaftClient<Channel>)>, NodeError> {
        loop {
            if self.is_leader() {
                return Ok(None);
            }
            if let Some((leader, address)) = self.other_leader() {
                let cached = {
                    let link = self
                        .leader_link
                        .lock()
                        .expect("the leader link's mutex is never held across a panic");
                    link.as_ref()
                        .filter(|(at, _)| *at == address)
                        .map(|(_, client)| client.clone())
                };
                if let Some(client) = cached {
                    return Ok(Some((leader, client)));
                }
                match self.dialer.raft_client(&address).await {
                    Ok(client) => {
                        *self
                            .leader_link
                            .lock()
                            .expect("the leader link's mutex is never held across a panic") =
                            Some((address, client.clone()));
                        return Ok(Some((leader, client)));
                    }
                    Err(status) => {
                        tracing::debug!(leader, %address, %status, "the leader cannot be reached yet");
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoQuorum(format!(
                    "no leader answered within {:?}",
                    self.forward_deadline()
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Forgets the connection to the leader after a failed call, so the next attempt dials
    /// whoever leads then.
    fn drop_leader_link(&self) {
        *self
            .leader_link
            .lock()
            .expect("the leader link's mutex is never held across a panic") = None;
    }

    /// An internal request carrying the cluster secret, the request id and a deadline.
    fn internal_request<T>(&self, message: T, deadline: Instant) -> Result<Request<T>, NodeError> {
        let mut request = Request::new(message);
        self.dialer
            .authorize(&mut request)
            .map_err(|status| NodeError::Raft(status.message().to_owned()))?;
        if let Some(id) = crate::request_id::current() {
            if let Ok(value) = id.parse() {
                request
                    .metadata_mut()
                    .insert(crate::request_id::REQUEST_ID_HEADER, value);
            }
        }
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        Ok(request)
    }

    /// Waits until this node has applied `index` (or `deadline` passes).
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), NodeError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.apply_pace.hurry(index);
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "a forwarded request")
            .await
            .map(drop)
            .map_err(|error| {
                NodeError::NoQuorum(format!(
                    "this node did not apply the leader's index {index} in time: {error}"
                ))
            })
    }

    /// Sends `command` to the leader and returns its outcome once this node has applied it
    /// too (see the module); proposes it here when this node leads.
    ///
    /// # Errors
    /// The state machine's refusal; `NoQuorum` when no leader answers in time; the leader's
    /// definite refusal as `Forwarded`.
    pub(crate) async fn forward_write(&self, mut command: Command) -> Result<Outcome, NodeError> {
        let deadline = Instant::now() + self.forward_deadline();
        let scoped = command.action.idempotency_scope().is_some();
        if scoped && command.idempotency_key.is_none() {
            command.idempotency_key = Some(new_key()?);
        }
        let payload = serde_json::to_vec(&command)
            .map_err(|e| NodeError::Task(format!("cannot encode a command: {e}")))?;
        loop {
            let Some((leader, mut client)) = self.leader_client(deadline).await? else {
                match self.propose(command.clone()).await {
                    // Leadership moved on since it was looked at; with a key the command
                    // may be sent again whether or not it was appended.
                    Err(NodeError::NotLeader { .. }) if scoped && Instant::now() < deadline => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    other => return other,
                }
            };
            self.metrics.forwarded_writes.inc();
            let request = self.internal_request(
                RaftPayload {
                    json: payload.clone(),
                    data: Vec::new(),
                },
                deadline,
            )?;
            let status = match client.forward(request).await {
                Ok(reply) => {
                    let reply: ForwardReply = serde_json::from_slice(&reply.get_ref().json)
                        .map_err(|e| {
                            NodeError::Raft(format!("the leader's reply does not decode: {e}"))
                        })?;
                    let forwarded = reply?;
                    self.wait_applied(forwarded.applied_index, deadline).await?;
                    return Ok(forwarded.outcome);
                }
                Err(status) => judged(status),
            };
            self.drop_leader_link();
            let code = status.code();
            if !transient(code) || !scoped {
                // A definite refusal; or a write without a key, which may have committed
                // and must not be sent again.
                tracing::info!(leader, %status, "the leader did not take a forwarded write");
                return Err(refusal(leader, &status));
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoQuorum(format!(
                    "no leader took the write within {:?}: {}",
                    self.forward_deadline(),
                    status.message()
                )));
            }
            tracing::debug!(leader, %status, "forwarding again");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Makes this node's state as fresh as a linearizable read on the leader: on the leader,
    /// a leadership confirmation; on a follower, the leader's read index, then waiting until
    /// it is applied here.
    ///
    /// # Errors
    /// `NoQuorum` when no leader confirms in time; the leader's definite refusal.
    pub(crate) async fn catch_up(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.forward_deadline();
        loop {
            let Some((leader, mut client)) = self.leader_client(deadline).await? else {
                match self
                    .read_rounds
                    .confirm(&self.raft, self.quorum_deadline())
                    .await
                {
                    // Leadership moved on since it was looked at: ask whoever leads now.
                    Err(NodeError::NotLeader { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    other => return other,
                }
            };
            let request = self.internal_request(ReadIndexRequest {}, deadline)?;
            let status = match client.read_index(request).await {
                Ok(reply) => {
                    return self
                        .wait_applied(reply.get_ref().applied_index, deadline)
                        .await
                }
                Err(status) => judged(status),
            };
            self.drop_leader_link();
            if !transient(status.code()) {
                return Err(refusal(leader, &status));
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoQuorum(format!(
                    "no leader confirmed a read within {:?}: {}",
                    self.forward_deadline(),
                    status.message()
                )));
            }
            tracing::debug!(leader, %status, "asking for the read index again");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The leader's side of `Forward`: proposes a follower's command and answers its
    /// outcome with the applied index.
    ///
    /// # Errors
    /// `NotLeader` when this node does not lead; what a write fails with otherwise (the state
    /// machine's refusals come back inside the reply).
    pub async fn take_forwarded(&self, command: Command) -> Result<ForwardReply, NodeError> {
        self.refuse_unless_leader()?;
        match self.propose(command).await {
            Ok(outcome) => Ok(Ok(Forwarded {
                outcome,
                applied_index: self.applied_index(),
            })),
            Err(NodeError::Chat(refusal)) => Ok(Err(refusal)),
            Err(other) => Err(other),
        }
    }

    /// The leader's side of `ReadIndex`: confirms leadership with a majority and answers the
    /// applied index, which covers everything committed before the call.
    ///
    /// # Errors
    /// `NotLeader`, `NoQuorum`.
    pub async fn read_index(&self) -> Result<u64, NodeError> {
        self.refuse_unless_leader()?;
        self.read_rounds
            .confirm(&self.raft, self.quorum_deadline())
            .await?;
        Ok(self.applied_index())
    }

    /// The index of the last log entry applied here.
    fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |log_id| log_id.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled] {
            assert!(transient(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unimplemented,
        ] {
            assert!(!transient(code), "{code:?}");
        }
    }

    #[test]
    fn a_connection_broken_under_a_call_is_judged_unavailable() {
        // What tonic makes of a GOAWAY from a leader shutting down: `Internal`, with the
        // transport error as its source.
        let mut internal = tonic::Status::internal("h2 protocol error: http2 error");
        internal.set_source(std::sync::Arc::new(std::io::Error::other(
            "GoAway(NO_ERROR)",
        )));
        assert_eq!(judged(internal).code(), Code::Unavailable);
        // The leader's own `Internal` answer carries no source: a definite refusal.
        let answered = tonic::Status::internal("the database failed");
        assert_eq!(judged(answered).code(), Code::Internal);
    }

    #[test]
    fn a_leader_without_forwarding_is_named_as_such() {
        let error = refusal(2, &tonic::Status::unimplemented("unknown method Forward"));
        assert_eq!(error.code(), Code::Unimplemented);
        assert!(
            error
                .to_string()
                .contains("node 2) runs a build without forwarding"),
            "{error}"
        );
        let error = refusal(2, &tonic::Status::permission_denied("wrong secret"));
        assert!(error.to_string().contains("wrong secret"), "{error}");
    }

    #[test]
    fn forwarded_keys_are_fresh_and_valid() {
        let (a, b) = (new_key().expect("a key"), new_key().expect("a key"));
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("forwarded:"));
    }
}
