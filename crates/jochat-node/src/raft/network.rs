//! openraft's network on tonic: [`NetworkFactory`] makes one [`PeerClient`] per peer, each
//! with one long-lived HTTP/2 channel, and every call has a deadline (openraft's hard TTL for
//! that call), because a hung call would stall the Raft core.
//!
//! The wire is `jochat.internal.v1.Raft`: openraft's own request and reply values,
//! JSON-encoded, with the cluster secret in metadata when one is configured.

use std::sync::Arc;
use std::time::Duration;

use jochat_proto::internal::v1::raft_client::RaftClient;
use jochat_proto::internal::v1::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::TypeConfig;

/// The metadata key carrying the cluster secret on internal calls.
pub const CLUSTER_SECRET_HEADER: &str = "jochat-cluster-secret";
/// How long connecting to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type NodeId = u64;

/// Makes the clients openraft uses to reach each peer.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    /// Sent on every call when set.
    secret: Option<Arc<str>>,
}

impl NetworkFactory {
    /// A factory whose clients send `secret` (if any) on every call.
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            secret: secret.map(Arc::from),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        // A lazy channel: no connection is made until the first call, and a peer that is down
        // now is retried by the channel later.
        let channel = Endpoint::from_shared(format!("http://{}", node.addr))
            .map(|endpoint| {
                endpoint
                    .connect_timeout(PEER_CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .map_err(|e| format!("peer {target} has an unusable address {:?}: {e}", node.addr));
        PeerClient {
            target,
            channel,
            secret: self.secret.clone(),
        }
    }
}

/// One peer, as openraft's `RaftNetwork`.
pub struct PeerClient {
    target: NodeId,
    /// The peer's channel, or why it has none.
    channel: Result<Channel, String>,
    secret: Option<Arc<str>>,
}

/// A transport failure, as the error type openraft's `Unreachable` wants.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportFailure(String);

impl PeerClient {
    /// Sends `rpc` with `send` and decodes the peer's `Result<T, E>`.
    async fn call<Req, T, E, F, Fut>(
        &self,
        rpc: &Req,
        option: &RPCOption,
        send: F,
    ) -> Result<T, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<RaftPayload>, Status>>,
    {
        let unreachable =
            |why: String| RPCError::Unreachable(Unreachable::new(&TransportFailure(why)));
        let channel = self.channel.clone().map_err(unreachable)?;
        let json = serde_json::to_vec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let deadline = option.hard_ttl();
        let mut request = Request::new(RaftPayload { json });
        request.set_timeout(deadline);
        if let Some(secret) = &self.secret {
            let value = secret
                .parse()
                .map_err(|_| unreachable("the cluster secret is not valid metadata".into()))?;
            request.metadata_mut().insert(CLUSTER_SECRET_HEADER, value);
        }
        let client = RaftClient::new(channel).max_decoding_message_size(usize::MAX);
        let reply = match tokio::time::timeout(deadline, send(client, request)).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "peer {} did not answer within {deadline:?}",
                    self.target
                )))
            }
            Ok(Err(status)) => return Err(unreachable(format!("peer {}: {status}", self.target))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let answer: Result<T, E> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, |mut client, request| async move {
            client.append_entries(request).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, &option, |mut client, request| async move {
            client.install_snapshot(request).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, |mut client, request| async move {
            client.vote(request).await
        })
        .await
    }
}
