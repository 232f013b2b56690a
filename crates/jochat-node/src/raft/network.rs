//! openraft's network on tonic: [`NetworkFactory`] makes one [`PeerClient`] per peer, each
//! with one long-lived HTTP/2 channel, and every call has a deadline (openraft's hard TTL for
//! that call), because a hung call would stall the Raft core.
//!
//! The wire is `jochat.internal.v1.Raft`: openraft's own request and reply values,
//! JSON-encoded, with the cluster secret in metadata when one is configured.
//!
//! Every call first consults the node's [`Faults`] (empty outside tests), so tests can drop,
//! delay or partition chosen links between real nodes.

use super::commit_gate::CommitGate;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jochat_proto::internal::v1::raft_client::RaftClient;
use jochat_proto::internal::v1::{ProbeReply, ProbeRequest, RaftPayload};
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

use super::faults::{Fault, Faults};
use super::TypeConfig;
use crate::tls::NodeTls;

/// The metadata key carrying the cluster secret on internal calls.
pub const CLUSTER_SECRET_HEADER: &str = "jochat-cluster-secret";
/// How long connecting to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type NodeId = u64;

/// How this node calls its peers: over TLS with its node certificate when the node has TLS,
/// and with the cluster secret in metadata when it has one. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct PeerDialer {
    secret: Option<Arc<str>>,
    tls: Option<Arc<NodeTls>>,
}

impl PeerDialer {
    /// Calls that carry `secret` (if any) and go over `tls` (if any).
    pub fn new(secret: Option<&str>, tls: Option<Arc<NodeTls>>) -> Self {
        Self {
            secret: secret.map(Arc::from),
            tls,
        }
    }

    /// The endpoint of the node at `address` (`host:port`; the host is resolved at each
    /// connection, so a peer that moves to a new address is found again).
    ///
    /// # Errors
    /// Why `address` cannot be called.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("unusable address {address:?}: {e}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        match &self.tls {
            None => Ok(endpoint),
            Some(tls) => endpoint
                .tls_config(tls.peer_config())
                .map_err(|e| format!("TLS for {address:?}: {e}")),
        }
    }

    /// A client of the internal service of the node at `address`, connected now.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an unusable address, UNAVAILABLE when it cannot be reached.
    pub async fn raft_client(&self, address: &str) -> Result<RaftClient<Channel>, Status> {
        let channel = self
            .endpoint(address)
            .map_err(Status::invalid_argument)?
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach {address}: {e}")))?;
        Ok(RaftClient::new(channel))
    }

    /// Puts the cluster secret, if any, on `request`.
    ///
    /// # Errors
    /// The secret cannot travel as metadata.
    pub fn authorize<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        if let Some(secret) = &self.secret {
            let value = secret.parse().map_err(|_| {
                Status::invalid_argument("the cluster secret is not valid metadata")
            })?;
            request.metadata_mut().insert(CLUSTER_SECRET_HEADER, value);
        }
        Ok(())
    }
}

/// Makes the clients openraft uses to reach each peer.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    /// This node's id: the sender, for the fault layer.
    id: NodeId,
    dialer: PeerDialer,
    faults: Faults,
    /// Holds back the commit index AppendEntries carry while the leader's own copy of an
    /// entry is not durable (`super::commit_gate`); `None` when the log store reports every
    /// append once durable.
    gate: Option<Arc<CommitGate>>,
}

impl NetworkFactory {
    /// A factory for node `id` whose clients call through `dialer` and obey `faults`.
    pub fn new(id: NodeId, dialer: PeerDialer, faults: Faults) -> Self {
        Self {
            id,
            dialer,
            faults,
            gate: None,
        }
    }

    /// Has every AppendEntries carry the commit index `gate` allows
    /// ([`CommitGate::clamp`]): required when the log store has that gate.
    #[must_use]
    pub fn with_commit_gate(mut self, gate: Arc<CommitGate>) -> Self {
        self.gate = Some(gate);
        self
    }
}

/// A lazy channel to `address`: no connection is made until the first call, and a peer that
/// is down now is retried by the channel later.
fn peer_channel(dialer: &PeerDialer, target: NodeId, address: &str) -> Result<Channel, String> {
    dialer
        .endpoint(address)
        .map(|endpoint| endpoint.connect_lazy())
        .map_err(|e| format!("peer {target}: {e}"))
}

/// Asks node `target` at `address` whether it hears a live leader (the election pre-check),
/// as node `from`, within `deadline`. `None` when it cannot be asked or does not answer.
pub async fn probe(
    from: NodeId,
    target: NodeId,
    address: &str,
    dialer: &PeerDialer,
    faults: &Faults,
    deadline: Duration,
) -> Option<ProbeReply> {
    let ask = async {
        match faults.between(from, target) {
            Some(Fault::Drop | Fault::DropReply) => return None,
            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        let channel = peer_channel(dialer, target, address).ok()?;
        let mut request = Request::new(ProbeRequest { node_id: from });
        request.set_timeout(deadline);
        dialer.authorize(&mut request).ok()?;
        RaftClient::new(channel)
            .probe(request)
            .await
            .ok()
            .map(Response::into_inner)
    };
    tokio::time::timeout(deadline, ask).await.ok().flatten()
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            from: self.id,
            target,
            channel: peer_channel(&self.dialer, target, &node.addr),
            dialer: self.dialer.clone(),
            faults: self.faults.clone(),
            chunk_form: Arc::new(AtomicU8::new(CHUNKS_UNKNOWN)),
            gate: self.gate.clone(),
        }
    }
}

/// One peer, as openraft's `RaftNetwork`.
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    /// The peer's channel, or why it has none.
    channel: Result<Channel, String>,
    dialer: PeerDialer,
    faults: Faults,
    /// How the peer takes snapshot chunks: [`CHUNKS_UNKNOWN`] until its first answer, then
    /// [`CHUNKS_RAW`] (`InstallSnapshotChunk`) or [`CHUNKS_JSON`] (it answered that call
    /// UNIMPLEMENTED: a node of an older build).
    chunk_form: Arc<AtomicU8>,
    /// See [`NetworkFactory::with_commit_gate`].
    gate: Option<Arc<CommitGate>>,
}

/// A peer whose way of taking snapshot chunks is not known yet.
const CHUNKS_UNKNOWN: u8 = 0;
/// A peer that takes snapshot chunks as raw bytes beside the JSON.
const CHUNKS_RAW: u8 = 1;
/// A peer that takes snapshot chunks only inside the JSON.
const CHUNKS_JSON: u8 = 2;

/// How a call failed: the peer does not know the method, or anything else.
enum CallFailure<E: std::error::Error> {
    Unimplemented,
    Failed(RPCError<NodeId, BasicNode, E>),
}

impl<E: std::error::Error> From<CallFailure<E>> for RPCError<NodeId, BasicNode, E> {
    fn from(failure: CallFailure<E>) -> Self {
        match failure {
            CallFailure::Unimplemented => RPCError::Unreachable(Unreachable::new(
                &TransportFailure("the peer does not know this call".into()),
            )),
            CallFailure::Failed(error) => error,
        }
    }
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
        Ok(self.call_with(rpc, Vec::new(), option, send).await?)
    }

    /// [`PeerClient::call`] with raw `data` beside the JSON, telling an UNIMPLEMENTED answer
    /// apart from other failures.
    async fn call_with<Req, T, E, F, Fut>(
        &self,
        rpc: &Req,
        data: Vec<u8>,
        option: &RPCOption,
        send: F,
    ) -> Result<T, CallFailure<E>>
    where
        Req: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<RaftPayload>, Status>>,
    {
        let unreachable = |why: String| {
            CallFailure::Failed(RPCError::Unreachable(Unreachable::new(&TransportFailure(
                why,
            ))))
        };
        let channel = self.channel.clone().map_err(unreachable)?;
        let json = serde_json::to_vec(rpc)
            .map_err(|e| CallFailure::Failed(RPCError::Network(NetworkError::new(&e))))?;
        let deadline = option.hard_ttl();
        let mut request = Request::new(RaftPayload { json, data });
        request.set_timeout(deadline);
        self.dialer
            .authorize(&mut request)
            .map_err(|status| unreachable(status.message().to_owned()))?;
        let client =
            RaftClient::new(channel).max_decoding_message_size(super::RAFT_MESSAGE_BYTES_MAX);
        let fault = self.faults.between(self.from, self.target);
        let exchange = async {
            match fault {
                Some(Fault::Drop) => return Err(Status::unavailable("dropped by the fault layer")),
                Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
                Some(Fault::DropReply) | None => {}
            }
            let reply = send(client, request).await;
            if fault == Some(Fault::DropReply) {
                return Err(Status::unavailable("reply dropped by the fault layer"));
            }
            reply
        };
        let reply = match tokio::time::timeout(deadline, exchange).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "peer {} did not answer within {deadline:?}",
                    self.target
                )))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                return Err(CallFailure::Unimplemented)
            }
            Ok(Err(status)) => return Err(unreachable(format!("peer {}: {status}", self.target))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let answer: Result<T, E> = serde_json::from_slice(&reply.json)
            .map_err(|e| CallFailure::Failed(RPCError::Network(NetworkError::new(&e))))?;
        answer.map_err(|e| {
            CallFailure::Failed(RPCError::RemoteError(RemoteError::new(self.target, e)))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if let Some(gate) = &self.gate {
            rpc.leader_commit = gate.clamp(rpc.leader_commit);
        }
        let last = rpc.entries.last().map(|entry| entry.log_id.index);
        if let Some(last) = last {
            tracing::trace!(target: crate::TIMELINE, stage = "replicate", to = self.target, last);
        }
        let reply = self
            .call(&rpc, &option, |mut client, request| async move {
                client.append_entries(request).await
            })
            .await;
        if let Some(last) = last {
            tracing::trace!(target: crate::TIMELINE, stage = "replicated", to = self.target, last);
        }
        reply
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let form = self.chunk_form.load(Ordering::Relaxed);
        if form != CHUNKS_JSON {
            let header = InstallSnapshotRequest::<TypeConfig> {
                vote: rpc.vote,
                meta: rpc.meta.clone(),
                offset: rpc.offset,
                data: Vec::new(),
                done: rpc.done,
            };
            // While the peer's kind is unknown (its first chunk) the bytes are copied, so the
            // older call can still carry them; after that they are moved.
            let data = if form == CHUNKS_RAW {
                std::mem::take(&mut rpc.data)
            } else {
                rpc.data.clone()
            };
            let sent = self
                .call_with(&header, data, &option, |mut client, request| async move {
                    client.install_snapshot_chunk(request).await
                })
                .await;
            match sent {
                Err(CallFailure::Unimplemented) => {
                    tracing::info!(
                        peer = self.target,
                        "the peer takes snapshot chunks only inside JSON (an older build)"
                    );
                    self.chunk_form.store(CHUNKS_JSON, Ordering::Relaxed);
                    if form == CHUNKS_RAW {
                        // The bytes were moved into the failed call: openraft sends the
                        // chunk again, and the older call then carries it.
                        return Err(CallFailure::Unimplemented.into());
                    }
                }
                Ok(reply) => {
                    self.chunk_form.store(CHUNKS_RAW, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(CallFailure::Failed(error)) => {
                    // An answer from the peer (even a refusal) shows it knows the call; a
                    // transport failure shows nothing.
                    if matches!(error, RPCError::RemoteError(_)) {
                        self.chunk_form.store(CHUNKS_RAW, Ordering::Relaxed);
                    }
                    return Err(error);
                }
            }
        }
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
