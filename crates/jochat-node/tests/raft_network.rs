//! The peer-to-peer transport against peers of two kinds: one that takes snapshot chunks as
//! raw bytes (`InstallSnapshotChunk`) and an older one that knows only `InstallSnapshot`
//! (chunk bytes inside the JSON). Each fake peer records the chunks it was given.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jochat_node::raft::faults::Faults;
use jochat_node::raft::network::NetworkFactory;
use jochat_node::raft::TypeConfig;
use jochat_proto::internal::v1::raft_server::{Raft, RaftServer};
use jochat_proto::internal::v1::{
    BackupChunk, BackupRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest, ProbeReply,
    ProbeRequest, RaftPayload, ReadIndexReply, ReadIndexRequest, StateAlarmReply,
    StateAlarmRequest, StateHashReply, StateHashRequest,
};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{BasicNode, SnapshotMeta, Vote};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What a fake peer received: (call, offset, bytes) per chunk.
type Received = Arc<Mutex<Vec<(&'static str, u64, Vec<u8>)>>>;

#[derive(Clone)]
struct FakePeer {
    knows_raw_chunks: bool,
    received: Received,
}

impl FakePeer {
    fn take(
        &self,
        call: &'static str,
        payload: RaftPayload,
        raw: bool,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut rpc: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(&payload.json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if raw {
            assert!(rpc.data.is_empty(), "raw chunks carry no bytes in the JSON");
            rpc.data = payload.data;
        } else {
            assert!(payload.data.is_empty(), "the older call has no raw bytes");
        }
        self.received
            .lock()
            .unwrap()
            .push((call, rpc.offset, rpc.data));
        let reply: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
            Ok(InstallSnapshotResponse { vote: rpc.vote });
        Ok(Response::new(RaftPayload {
            json: serde_json::to_vec(&reply).unwrap(),
            data: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl Raft for FakePeer {
    async fn append_entries(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.take("json", request.into_inner(), false)
    }
    async fn install_snapshot_chunk(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        if !self.knows_raw_chunks {
            // What a node built before this call existed answers.
            return Err(Status::unimplemented("unknown method InstallSnapshotChunk"));
        }
        self.take("raw", request.into_inner(), true)
    }
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn leave(&self, _: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn state_hash(
        &self,
        _: Request<StateHashRequest>,
    ) -> Result<Response<StateHashReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn state_alarm(
        &self,
        _: Request<StateAlarmRequest>,
    ) -> Result<Response<StateAlarmReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    type BackupStream = futures::stream::Empty<Result<BackupChunk, Status>>;
    async fn backup(
        &self,
        _: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn forward(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn read_index(
        &self,
        _: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves a fake peer on a free port; its address and what it receives.
async fn fake_peer(knows_raw_chunks: bool) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let received = Received::default();
    let peer = FakePeer {
        knows_raw_chunks,
        received: Arc::clone(&received),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(peer))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (address, received)
}

fn chunk(offset: u64, data: Vec<u8>, done: bool) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(3, 1),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "snapshot-1".into(),
        },
        offset,
        data,
        done,
    }
}

/// Sends three chunks (the bytes 0..=255, split 100/100/56) to a peer at `address`.
async fn send_three_chunks(address: &str) -> Vec<u8> {
    let mut client = NetworkFactory::new(1, Default::default(), Faults::none())
        .new_client(2, &BasicNode::new(address))
        .await;
    let bytes: Vec<u8> = (0..=255).collect();
    for (start, end) in [(0, 100), (100, 200), (200, 256)] {
        let reply = client
            .install_snapshot(
                chunk(start as u64, bytes[start..end].to_vec(), end == 256),
                RPCOption::new(Duration::from_secs(5)),
            )
            .await
            .expect("the peer takes the chunk");
        assert_eq!(reply.vote, Vote::new_committed(3, 1));
    }
    bytes
}

/// The (call, offset) of each chunk a peer received, and all their bytes in order.
fn calls_and_bytes(received: &Received) -> (Vec<(&'static str, u64)>, Vec<u8>) {
    let received = received.lock().unwrap();
    let calls = received
        .iter()
        .map(|(call, offset, _)| (*call, *offset))
        .collect();
    let bytes = received
        .iter()
        .flat_map(|(_, _, data)| data.clone())
        .collect();
    (calls, bytes)
}

#[tokio::test]
async fn snapshot_chunks_travel_as_raw_bytes_to_a_peer_that_knows_the_call() {
    let (address, received) = fake_peer(true).await;
    let sent = send_three_chunks(&address).await;
    let (calls, bytes) = calls_and_bytes(&received);
    assert_eq!(calls, vec![("raw", 0), ("raw", 100), ("raw", 200)]);
    assert_eq!(bytes, sent);
}

#[tokio::test]
async fn an_older_peer_gets_every_chunk_inside_json_with_nothing_lost() {
    let (address, received) = fake_peer(false).await;
    let sent = send_three_chunks(&address).await;
    // The first chunk is refused as raw and sent again inside JSON; the others go there
    // directly.
    let (calls, bytes) = calls_and_bytes(&received);
    assert_eq!(calls, vec![("json", 0), ("json", 100), ("json", 200)]);
    assert_eq!(bytes, sent);
}
