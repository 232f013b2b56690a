//! Three in-process Raft nodes over real gRPC on ephemeral ports: they elect a leader, a chat
//! command written through it is applied by all three, and the three SQLite files hold the same
//! rows. The internal service refuses calls without the cluster secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jochat_core::ops::{CreateSession, RevokeSession, SendMessage, SignUp};
use jochat_core::store::ChatRead;
use jochat_core::types::{SessionToken, UserId, Username};
use jochat_core::{Action, Command, Outcome};
use jochat_node::raft::election::LeaderContact;
use jochat_node::raft::faults::Faults;
use jochat_node::raft::network::{NetworkFactory, PeerDialer, CLUSTER_SECRET_HEADER};
use jochat_node::raft::{storage, Applied, Batch, TypeConfig};
use jochat_node::service::raft::RaftApi;
use jochat_node::store::{SqliteChat, SyncMode};
use jochat_proto::internal::v1::raft_client::RaftClient;
use jochat_proto::internal::v1::raft_server::RaftServer;
use jochat_proto::internal::v1::RaftPayload;
use openraft::{BasicNode, Raft};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

struct TestNode {
    id: u64,
    raft: Raft<TypeConfig>,
    address: String,
    db: std::path::PathBuf,
    server: JoinHandle<()>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(id: u64, dir: &std::path::Path, secret: Option<&str>) -> TestNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let db = dir.join(format!("node-{id}.db"));
    let (log, state_machine) = storage::open(&db, SyncMode::Normal).unwrap();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..openraft::Config::default()
    };
    let raft = Raft::new(
        id,
        Arc::new(config.validate().unwrap()),
        NetworkFactory::new(id, PeerDialer::new(secret, None), Faults::none()),
        log,
        state_machine,
    )
    .await
    .unwrap();
    let service = RaftServer::new(RaftApi::new(
        raft.clone(),
        LeaderContact::new(),
        secret,
        false,
    ));
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    TestNode {
        id,
        raft,
        address,
        db,
        server,
    }
}

fn dump(path: &std::path::Path) -> jochat_core::store::StateDump {
    jochat_testkit::settled(path);
    let conn = rusqlite::Connection::open(path).unwrap();
    SqliteChat::new(&conn).dump().unwrap()
}

fn command(action: Action) -> Batch {
    Batch::from(Command {
        at_ms: 1_000,
        idempotency_key: None,
        action,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_chat_commands_into_identical_files() {
    // 1. Three nodes with a shared secret; node 1 initialises the cluster with all three.
    let dir = tempfile::tempdir().unwrap();
    let secret = Some("s3cret");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, dir.path(), secret).await);
    }
    let members: BTreeMap<u64, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.address.clone())))
        .collect();
    nodes[0].raft.initialize(members).await.unwrap();

    // 2. Wait for a leader that every node knows.
    let metrics = nodes[0]
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .unwrap();
    let leader_id = metrics.current_leader.unwrap();
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();

    // 3. Write chat commands through the leader.
    let name = |raw: &str| Username::new(raw).unwrap();
    let token = SessionToken::from_random_bytes([3; 32]).digest();
    let mut last_index = 0;
    for action in [
        Action::SignUp(SignUp {
            username: name("alice"),
            password_hash: "h".into(),
        }),
        Action::SignUp(SignUp {
            username: name("bob"),
            password_hash: "h".into(),
        }),
        Action::CreateSession(CreateSession {
            user_id: UserId(1),
            token_digest: token.clone(),
            expires_at_ms: 10_000,
        }),
        Action::SendMessage(SendMessage {
            session: token.clone(),
            recipient: name("bob"),
            content: jochat_core::types::Content::new("replicated".into(), 100).unwrap(),
        }),
    ] {
        let written = leader.raft.client_write(command(action)).await.unwrap();
        assert!(
            matches!(written.data, Applied::Commands(ref r) if matches!(r[..], [Ok(_)])),
            "{:?}",
            written.data
        );
        last_index = written.log_id.index;
    }
    let refused = leader
        .raft
        .client_write(command(Action::SignUp(SignUp {
            username: name("ALICE"),
            password_hash: "h".into(),
        })))
        .await
        .unwrap();
    assert!(
        matches!(refused.data, Applied::Commands(ref r) if matches!(r[..], [Err(_)])),
        "a refused command is refused everywhere"
    );
    last_index = last_index.max(refused.log_id.index);

    // 4. Every node applies up to the last entry, and the three files hold the same rows.
    for node in &nodes {
        node.raft
            .wait(WAIT)
            .applied_index_at_least(Some(last_index), "applied everywhere")
            .await
            .unwrap();
    }
    let first = dump(&nodes[0].db);
    assert_eq!(first.users.len(), 2);
    assert_eq!(first.messages.len(), 1);
    for node in &nodes[1..] {
        assert_eq!(dump(&node.db), first, "node {} differs", node.id);
    }
    assert!(matches!(
        leader
            .raft
            .client_write(command(Action::RevokeSession(RevokeSession { session: token })))
            .await
            .unwrap()
            .data,
        Applied::Commands(ref r) if matches!(r[..], [Ok(Outcome::SessionRevoked)])
    ));

    for node in &nodes {
        node.raft.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn internal_calls_need_the_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(1, dir.path(), Some("s3cret")).await;
    let mut client = RaftClient::connect(format!("http://{}", node.address))
        .await
        .unwrap();
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(1, 2), None);
    let payload = RaftPayload {
        json: serde_json::to_vec(&vote).unwrap(),
        data: Vec::new(),
    };

    // 1. Without the secret, and with a wrong one: refused.
    let refused = client.vote(payload.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let mut wrong = tonic::Request::new(payload.clone());
    wrong
        .metadata_mut()
        .insert(CLUSTER_SECRET_HEADER, "guess".parse().unwrap());
    assert_eq!(
        client.vote(wrong).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    // 2. With it: the vote is answered.
    let mut right = tonic::Request::new(payload);
    right
        .metadata_mut()
        .insert(CLUSTER_SECRET_HEADER, "s3cret".parse().unwrap());
    let reply = client.vote(right).await.unwrap().into_inner();
    let answer: Result<openraft::raft::VoteResponse<u64>, openraft::error::RaftError<u64>> =
        serde_json::from_slice(&reply.json).unwrap();
    assert!(answer.unwrap().vote_granted);
    node.raft.shutdown().await.unwrap();
}
