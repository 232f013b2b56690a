//! `jochat.internal.v1.Raft`: the peer side of openraft's network. Each handler decodes
//! openraft's request, hands it to the local `Raft`, and encodes its result. When the cluster
//! has a secret, calls without it are refused and logged with the caller's address.

use jochat_proto::internal::v1::raft_server::Raft as RaftService;
use jochat_proto::internal::v1::{JoinReply, JoinRequest, RaftPayload};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::raft::network::CLUSTER_SECRET_HEADER;
use crate::raft::TypeConfig;

/// The internal Raft service over one node's `openraft::Raft`.
#[derive(Clone)]
pub struct RaftApi {
    raft: openraft::Raft<TypeConfig>,
    /// SHA-256 of the cluster secret, if there is one.
    secret_digest: Option<[u8; 32]>,
}

impl RaftApi {
    /// The service for `raft`, requiring `secret` on every call when given.
    pub fn new(raft: openraft::Raft<TypeConfig>, secret: Option<&str>) -> Self {
        Self {
            raft,
            secret_digest: secret.map(|s| Sha256::digest(s.as_bytes()).into()),
        }
    }

    /// Refuses the call unless it carries the cluster secret. Digests of equal length are
    /// compared without an early exit, so the time taken says nothing about the secret.
    fn authorize<T>(&self, operation: &'static str, request: &Request<T>) -> Result<(), Status> {
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

/// A failed membership change as a status: NOT-LEADER (with hints) when this node does not
/// lead, UNAVAILABLE otherwise (the joining node retries).
fn membership_refusal(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            Status::from(NodeError::from(forward))
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
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.authorize("append_entries", &request)?;
        let rpc = decode(request.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize("vote", &request)?;
        let rpc = decode(request.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
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
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.authorize("install_snapshot", &request)?;
        let rpc = decode(request.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
