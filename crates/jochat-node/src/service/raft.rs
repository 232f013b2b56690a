//! `jochat.internal.v1.Raft`: the peer side of openraft's network. Each handler decodes
//! openraft's request, hands it to the local `Raft`, and encodes its result. When the cluster
//! has a secret, calls without it are refused and logged with the caller's address; when the
//! node serves TLS, calls from a caller without a cluster node certificate are refused too.

use jochat_proto::internal::v1::raft_server::Raft as RaftService;
use jochat_proto::internal::v1::{
    BackupChunk, BackupRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest, ProbeReply,
    ProbeRequest, RaftPayload, ReadIndexReply, ReadIndexRequest, StateAlarmReply,
    StateAlarmRequest, StateHashReply, StateHashRequest,
};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use std::sync::Arc;

use crate::disk::DiskGuard;
use crate::error::NodeError;
use crate::node::Node;
use crate::raft::election::LeaderContact;
use crate::raft::network::CLUSTER_SECRET_HEADER;
use crate::raft::state_check::{StateAlarms, HASH_WAIT};
use crate::raft::storage::{StateHash, StateHasher};
use crate::raft::TypeConfig;
use crate::tls::is_cluster_member;

/// How long a join of a node that is already a voter waits for that membership to commit.
const MEMBERSHIP_SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The internal Raft service over one node's `openraft::Raft`.
#[derive(Clone)]
pub struct RaftApi {
    raft: openraft::Raft<TypeConfig>,
    /// Touched whenever a leader is heard (or a vote granted): the election timer's clock.
    contact: LeaderContact,
    /// SHA-256 of the cluster secret, if there is one.
    secret_digest: Option<[u8; 32]>,
    /// Whether callers must present a node certificate (the node serves TLS).
    member_certificate_required: bool,
    /// While it says the disk is low, log entries and snapshots are refused (the leader
    /// retries them later): this node falls behind rather than fill its disk.
    disk: Option<Arc<DiskGuard>>,
    /// Answers `StateHash` and takes `StateAlarm` (none: both refused UNIMPLEMENTED).
    state: Option<(StateHasher, StateAlarms)>,
    /// The node: makes backup copies and counts requests (none: `Backup` refused
    /// UNIMPLEMENTED, nothing counted).
    node: Option<Arc<Node>>,
}

impl RaftApi {
    /// The service for `raft`, requiring `secret` on every call when given and a cluster
    /// node certificate when `member_certificate_required` (the node serves TLS), recording
    /// leader contact in `contact`.
    pub fn new(
        raft: openraft::Raft<TypeConfig>,
        contact: LeaderContact,
        secret: Option<&str>,
        member_certificate_required: bool,
    ) -> Self {
        Self {
            raft,
            contact,
            secret_digest: secret.map(|s| Sha256::digest(s.as_bytes()).into()),
            member_certificate_required,
            disk: None,
            state: None,
            node: None,
        }
    }

    /// The same service, answering `Backup` with copies made by `node` and counting its
    /// requests in `node`'s metrics.
    #[must_use]
    pub fn with_node(self, node: Arc<Node>) -> Self {
        Self {
            node: Some(node),
            ..self
        }
    }

    /// The same service, answering state hashes with `hasher` and raising alarms in `alarms`.
    #[must_use]
    pub fn with_state_check(self, hasher: StateHasher, alarms: StateAlarms) -> Self {
        Self {
            state: Some((hasher, alarms)),
            ..self
        }
    }

    /// The same service, refusing log entries and snapshots while `disk` is low.
    #[must_use]
    pub fn with_disk_guard(self, disk: Arc<DiskGuard>) -> Self {
        Self {
            disk: Some(disk),
            ..self
        }
    }

    /// Runs one handler's `work`, counting it in the node's metrics as `method` of the
    /// `internal` service.
    async fn counted<T>(
        &self,
        method: &'static str,
        work: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = std::time::Instant::now();
        let result = work.await;
        if let Some(node) = &self.node {
            let code = result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok);
            node.metrics()
                .record_request("internal", method, code, started.elapsed());
        }
        result
    }

    /// Refuses what would grow this node's files while its disk is low.
    fn check_disk(&self) -> Result<(), Status> {
        match &self.disk {
            Some(disk) => disk.check().map_err(Status::from),
            None => Ok(()),
        }
    }

    /// Refuses the call unless it carries every credential the node asks for: a node
    /// certificate of the cluster (with TLS) and the cluster secret (when there is one).
    fn authorize<T>(&self, operation: &'static str, request: &Request<T>) -> Result<(), Status> {
        if self.member_certificate_required {
            let member = request
                .peer_certs()
                .is_some_and(|chain| chain.first().is_some_and(is_cluster_member));
            if !member {
                tracing::warn!(operation, caller = ?request.remote_addr(), "refused an internal call without a cluster node certificate");
                return Err(Status::permission_denied(
                    "internal call refused: present a node certificate signed by the cluster CA",
                ));
            }
        }
        self.check_secret(operation, request)
    }

    /// Refuses a backup unless the caller is one of the cluster's operators: under TLS any
    /// certificate the cluster's CA signed (a node's or a client's, `jochat cert
    /// create-client`) will do, or else the cluster secret; without TLS the secret, when
    /// there is one. A cluster with neither gives backups to anyone who reaches it, as it
    /// does its other internal calls.
    fn authorize_backup<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.member_certificate_required {
            // The TLS layer verified every certificate a caller presents against the CA.
            let certified = request.peer_certs().is_some_and(|chain| !chain.is_empty());
            if certified {
                return Ok(());
            }
            if self.secret_digest.is_none() {
                tracing::warn!(caller = ?request.remote_addr(), "refused a backup without a certificate of the cluster");
                return Err(Status::permission_denied(
                    "backup refused: present a certificate signed by the cluster CA (a node or \
                     client certificate)",
                ));
            }
        }
        self.check_secret("backup", request)
    }

    /// Refuses the call unless it carries the cluster secret (if there is one). Digests of
    /// equal length are compared without an early exit, so the time taken says nothing about
    /// the secret.
    fn check_secret<T>(&self, operation: &'static str, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.secret_digest else {
            return Ok(());
        };
        let given: [u8; 32] = Sha256::digest(
            request
                .metadata()
                .get(CLUSTER_SECRET_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default(),
        )
        .into();
        let difference = expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            return Ok(());
        }
        tracing::warn!(operation, caller = ?request.remote_addr(), "refused an internal call without the cluster secret");
        Err(Status::permission_denied(
            "internal call refused: wrong or missing cluster secret",
        ))
    }
}

impl RaftApi {
    /// Hands one snapshot chunk to Raft; a chunk taken means a current leader was heard.
    async fn install(
        &self,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<Response<RaftPayload>, Status> {
        let result = self.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.contact.heard_leader();
        }
        encode(&result)
    }
}

/// A failed membership change as a status: NOT-LEADER (with hints) when this node does not
/// lead, FAILED_PRECONDITION when the change itself is refused (no voter left, not a
/// learner), UNAVAILABLE otherwise, including another change still committing (the caller
/// retries).
fn membership_refusal(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            Status::from(NodeError::from(forward))
        }
        // Another change still committing: it will finish, so the caller retries.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(busy),
        )) => Status::unavailable(format!("membership change must wait: {busy}")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(refused)) => {
            Status::failed_precondition(format!("membership change refused: {refused}"))
        }
        other => Status::unavailable(format!("membership change failed: {other}")),
    }
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json)
        .map_err(|e| Status::invalid_argument(format!("json: not an openraft request: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| {
            Response::new(RaftPayload {
                json,
                data: Vec::new(),
            })
        })
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.counted("append_entries", async move {
            self.authorize("append_entries", &request)?;
            let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
            // A leader at least as current as the one this node knows is speaking: note it before
            // the entries are written, as writing them may take a while.
            if rpc.vote >= self.raft.metrics().borrow().vote {
                self.contact.heard_leader();
            }
            // Heartbeats (no entries) still count, so a node with a full disk stays a follower
            // instead of calling elections; the entries wait until space returns.
            let last = rpc.entries.last().map(|entry| entry.log_id.index);
            if let Some(last) = last {
                tracing::trace!(target: crate::TIMELINE, stage = "append_entries", last);
                self.check_disk()?;
            }
            let reply = self.raft.append_entries(rpc).await;
            if let Some(last) = last {
                tracing::trace!(target: crate::TIMELINE, stage = "append_entries.answered", last);
            }
            encode(&reply)
        })
        .await
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.counted("vote", async move {
            self.authorize("vote", &request)?;
            let rpc = decode(request.get_ref())?;
            let result = self.raft.vote(rpc).await;
            // Granting a vote restarts the election clock, as in Raft.
            if matches!(&result, Ok(reply) if reply.vote_granted) {
                self.contact.restart_clock();
            }
            encode(&result)
        })
        .await
    }

    async fn probe(&self, request: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        self.counted("probe", async move {
            self.authorize("probe", &request)?;
            let reply = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                if metrics.state == ServerState::Leader {
                    ProbeReply {
                        leader_id: metrics.id,
                        // A leader not yet acknowledged has just won a vote: a majority heard it.
                        millis_since_leader_contact: metrics.millis_since_quorum_ack.unwrap_or(0),
                    }
                } else {
                    ProbeReply {
                        leader_id: metrics.current_leader.unwrap_or(0),
                        millis_since_leader_contact: u64::try_from(
                            self.contact.since_leader().as_millis(),
                        )
                        .unwrap_or(u64::MAX),
                    }
                }
            };
            Ok(Response::new(reply))
        })
        .await
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        self.counted("leave", async move {
            self.authorize("leave", &request)?;
            let LeaveRequest { node_id } = request.into_inner();
            let (is_member, is_voter) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                let membership = metrics.membership_config.membership();
                (
                    membership.get_node(&node_id).is_some(),
                    membership.voter_ids().any(|id| id == node_id),
                )
            };
            if !is_member {
                return Err(Status::not_found(format!(
                    "node_id: {node_id} is not a member of the cluster"
                )));
            }
            tracing::info!(
                node_id,
                voter = is_voter,
                "removing a node from the cluster"
            );
            let removed = [node_id].into();
            let change = if is_voter {
                ChangeMembers::RemoveVoters(removed)
            } else {
                ChangeMembers::RemoveNodes(removed)
            };
            self.raft
                .change_membership(change, false)
                .await
                .map_err(membership_refusal)?;
            tracing::info!(node_id, "node removed from the cluster");
            Ok(Response::new(LeaveReply {}))
        })
        .await
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        self.counted("join", async move {
            self.authorize("join", &request)?;
            let JoinRequest { node_id, address } = request.into_inner();
            if node_id == 0 || address.is_empty() {
                return Err(Status::invalid_argument(
                    "node_id and address: both are required",
                ));
            }
            let is_voter = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == node_id);
            if is_voter {
                // Perhaps by a change still committing (the node's own join, racing this one):
                // answer once the membership with it is committed and no longer joint, so the
                // caller's next change does not find one in progress.
                self.raft
                    .wait(Some(MEMBERSHIP_SETTLE_WAIT))
                    .metrics(
                        |m| {
                            let stored = &m.membership_config;
                            let membership = stored.membership();
                            membership.voter_ids().any(|id| id == node_id)
                                && membership.get_joint_config().len() == 1
                                && stored.log_id().as_ref() <= m.last_applied.as_ref()
                        },
                        "the membership with the node is committed",
                    )
                    .await
                    .map_err(|e| Status::unavailable(format!("membership not settled: {e}")))?;
                return Ok(Response::new(JoinReply {}));
            }
            tracing::info!(node_id, %address, "adding a node: learner first, voter once caught up");
            // Blocks until the learner has caught up (from a snapshot and the log).
            self.raft
                .add_learner(node_id, BasicNode::new(address), true)
                .await
                .map_err(membership_refusal)?;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([node_id].into()), false)
                .await
                .map_err(membership_refusal)?;
            tracing::info!(node_id, "node joined as a voter");
            Ok(Response::new(JoinReply {}))
        })
        .await
    }

    async fn state_hash(
        &self,
        request: Request<StateHashRequest>,
    ) -> Result<Response<StateHashReply>, Status> {
        self.counted("state_hash", async move {
            self.authorize("state_hash", &request)?;
            let Some((hasher, _)) = &self.state else {
                return Err(Status::unimplemented("this node does not hash its state"));
            };
            let index = request.get_ref().index;
            let reply = match hasher
                .hash_at(index, HASH_WAIT)
                .await
                .map_err(Status::from)?
            {
                StateHash::Hashed { index, sha256 } => StateHashReply {
                    hashed: true,
                    sha256: sha256.to_vec(),
                    applied_index: index,
                },
                StateHash::Passed { applied } => StateHashReply {
                    hashed: false,
                    sha256: Vec::new(),
                    applied_index: applied,
                },
            };
            Ok(Response::new(reply))
        })
        .await
    }

    async fn state_alarm(
        &self,
        request: Request<StateAlarmRequest>,
    ) -> Result<Response<StateAlarmReply>, Status> {
        self.counted("state_alarm", async move {
            self.authorize("state_alarm", &request)?;
            let Some((_, alarms)) = &self.state else {
                return Err(Status::unimplemented(
                    "this node does not take state alarms",
                ));
            };
            alarms.raise_own(request.into_inner().detail);
            Ok(Response::new(StateAlarmReply {}))
        })
        .await
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.counted("forward", async move {
            self.authorize("forward", &request)?;
            let Some(node) = &self.node else {
                return Err(Status::unimplemented(
                    "this node does not take forwarded writes",
                ));
            };
            let command: jochat_core::command::Command = decode(request.get_ref())?;
            // The forwarding node's request id (`x-request-id`), so both nodes' lines of
            // one request share it.
            let request_id = crate::request_id::current().unwrap_or_default();
            let span = tracing::info_span!("request", node_id = node.id(), request_id = %request_id, operation = "internal.forward", kind = command.action.kind());
            let reply = node.take_forwarded(command).instrument(span.clone()).await;
            span.in_scope(|| match &reply {
                Ok(_) => tracing::debug!("forwarded write proposed"),
                Err(error) => tracing::info!(%error, "forwarded write refused"),
            });
            encode(&reply?)
        })
        .await
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.counted("read_index", async move {
            self.authorize("read_index", &request)?;
            let Some(node) = &self.node else {
                return Err(Status::unimplemented(
                    "this node does not answer read indexes",
                ));
            };
            Ok(Response::new(ReadIndexReply {
                applied_index: node.read_index().await?,
            }))
        })
        .await
    }

    type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.counted("backup", async move {
            self.authorize_backup(&request)?;
            let Some(node) = &self.node else {
                return Err(Status::unimplemented("this node does not make backups"));
            };
            tracing::info!(caller = ?request.remote_addr(), "backup requested");
            let copy = node.backup_copy().await?;
            let (chunks, stream) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_AHEAD);
            tokio::spawn(stream_backup(copy, chunks));
            Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                stream,
            )))
        })
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.counted("install_snapshot", async move {
            self.authorize("install_snapshot", &request)?;
            self.check_disk()?;
            let rpc = decode(request.get_ref())?;
            self.install(rpc).await
        })
        .await
    }

    async fn install_snapshot_chunk(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.counted("install_snapshot_chunk", async move {
            self.authorize("install_snapshot_chunk", &request)?;
            self.check_disk()?;
            let payload = request.into_inner();
            let mut rpc: InstallSnapshotRequest<TypeConfig> = decode(&payload)?;
            if !rpc.data.is_empty() {
                return Err(Status::invalid_argument(
                    "json: a chunk's bytes belong in `data`, not in the JSON request",
                ));
            }
            rpc.data = payload.data;
            self.install(rpc).await
        })
        .await
    }
}

/// Bytes per `BackupChunk`.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks read ahead of the caller.
const BACKUP_CHUNKS_AHEAD: usize = 4;

/// Sends `copy` in chunks to `chunks`, then its SHA-256, and removes it (when `copy` drops).
async fn stream_backup(
    copy: crate::node::backup::BackupCopy,
    chunks: tokio::sync::mpsc::Sender<Result<BackupChunk, Status>>,
) {
    use tokio::io::AsyncReadExt;
    let result = async {
        let mut file = tokio::fs::File::open(copy.path()).await?;
        let mut hasher = Sha256::new();
        let mut first = true;
        loop {
            let mut data = vec![0u8; BACKUP_CHUNK_BYTES];
            let mut filled = 0;
            while filled < data.len() {
                let n = file.read(&mut data[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            data.truncate(filled);
            hasher.update(&data);
            let last = filled < BACKUP_CHUNK_BYTES;
            let chunk = BackupChunk {
                index: if first { copy.index } else { 0 },
                total_bytes: if first { copy.bytes } else { 0 },
                data,
                sha256: if last {
                    hasher.clone().finalize().to_vec()
                } else {
                    Vec::new()
                },
            };
            first = false;
            if chunks.send(Ok(chunk)).await.is_err() {
                tracing::warn!("the backup's caller went away before the end");
                return Ok(());
            }
            if last {
                tracing::info!(index = copy.index, bytes = copy.bytes, "backup sent");
                return Ok(());
            }
        }
    }
    .await;
    if let Err(error) = result {
        let error: std::io::Error = error;
        tracing::error!(%error, "could not read the backup copy");
        let _ = chunks
            .send(Err(Status::internal(format!(
                "reading the backup copy failed: {error}"
            ))))
            .await;
    }
}
