//! In-process clusters for the cluster tests: real nodes over real gRPC on ephemeral loopback
//! ports, each with its SQLite file in a temporary folder, all obeying one injectable
//! [`Faults`] table for their peer-to-peer calls.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jochat_client::ChatServerClient;
use jochat_core::store::StateDump;
use jochat_node::config::Peer;
use jochat_node::raft::faults::Faults;
use jochat_node::{NodeConfig, NodeError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One running in-process node.
pub struct ClusterNode {
    pub id: u64,
    pub address: String,
    pub db: PathBuf,
    /// Where it serves `/metrics`, `/livez` and `/readyz`, when [`Setup::metrics`] asked.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where it serves the socket prototype's protocol, when [`Setup::socket`] asked.
    pub socket_address: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl ClusterNode {
    /// The client library pointed at this node: it does not go looking for the other
    /// members (so its reads ask this node), but it follows NOT-LEADER hints for writes.
    pub fn client(&self) -> ChatServerClient {
        ChatServerClient::builder()
            .servers([self.address.clone()])
            .discover_members(false)
            .build()
            .expect("a client for a loopback address builds")
    }

    /// Asks the node to stop without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the node stops by itself (it is not asked to), and returns what its
    /// `serve` returned.
    pub async fn exited(self) -> Result<(), NodeError> {
        self.task.await.expect("the node's task does not panic")
    }

    /// Stops the node and waits until it has shut down cleanly.
    pub async fn stop(mut self) {
        self.signal_stop();
        self.task
            .await
            .expect("the node's task does not panic")
            .expect("the node shuts down cleanly");
    }
}

/// How every node of a test cluster is set up beyond its id, address, file and peers.
#[derive(Clone, Default)]
pub struct Setup {
    /// `--admin-user`.
    pub admin_user: Option<String>,
    /// `--snapshot-threshold`, when not the default.
    pub snapshot_threshold: Option<u64>,
    /// `--cluster-secret`.
    pub cluster_secret: Option<String>,
    /// The fault table every node's peer calls obey.
    pub faults: Faults,
    /// `--force-new-cluster`.
    pub force_new_cluster: bool,
    /// `--subscriber-buffer`, when not the default.
    pub subscriber_buffer: Option<usize>,
    /// `--state-check-secs`, when not the default.
    pub state_check_secs: Option<u64>,
    /// `--rebuild`.
    pub rebuild: bool,
    /// `--metrics-addr` on a free loopback port.
    pub metrics: bool,
    /// `--socket-port` on a free loopback port, with this `--socket-protocol`.
    pub socket: Option<jochat_node::config::SocketProtocol>,
    /// `--allow-anonymous-reset`.
    pub allow_anonymous_reset: bool,
    /// `--socket-connections-max`, when not the default.
    pub socket_connections_max: Option<usize>,
}

impl Setup {
    fn config(&self, id: u64, db: PathBuf, peers: Vec<Peer>) -> NodeConfig {
        let defaults = NodeConfig::default();
        NodeConfig {
            server_id: id,
            port: 0,
            db_file: Some(db),
            peers,
            admin_user: self.admin_user.clone(),
            cluster_secret: self.cluster_secret.clone(),
            socket_protocol: self.socket.unwrap_or(defaults.socket_protocol),
            allow_anonymous_reset: self.allow_anonymous_reset,
            socket_connections_max: self
                .socket_connections_max
                .unwrap_or(defaults.socket_connections_max),
            force_new_cluster: self.force_new_cluster,
            rebuild: self.rebuild,
            state_check_secs: self.state_check_secs.unwrap_or(defaults.state_check_secs),
            subscriber_buffer: self.subscriber_buffer.unwrap_or(defaults.subscriber_buffer),
            snapshot_threshold: self
                .snapshot_threshold
                .unwrap_or(defaults.snapshot_threshold),
            ..defaults
        }
    }
}

/// Sends the nodes' logs to the test's output when `RUST_LOG` asks for them (e.g.
/// `RUST_LOG=jochat_node=debug,openraft=info`); silent otherwise.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts node `id` on `listener` with its file in `dir`.
pub fn start_node(
    dir: &Path,
    id: u64,
    listener: TcpListener,
    peers: Vec<Peer>,
    setup: &Setup,
) -> ClusterNode {
    let address = listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    init_logs();
    let db = dir.join(format!("node-{id}.db"));
    let mut config = setup.config(id, db.clone(), peers);
    if setup.metrics {
        // A port free now: the node binds it again a moment later.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a loopback port is free");
        config.metrics_addr = Some(free);
    }
    let metrics_address = config.metrics_addr;
    let socket_address = setup.socket.map(|_| {
        // A port free now: the node binds it again a moment later.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a loopback port is free");
        config.socket_port = Some(free.port());
        free
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(jochat_node::serve_with(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        setup.faults.clone(),
    ));
    ClusterNode {
        id,
        address,
        db,
        metrics_address,
        socket_address,
        stop: Some(stop),
        task,
    }
}

/// Starts one node per entry of `peer_lists` (ids from 1), each listing the given peers, on
/// `addresses` when given (to restart nodes where they were), else on free ports.
pub async fn start_nodes_with(
    dir: &Path,
    peer_lists: &[Vec<u64>],
    addresses: Option<&[String]>,
    setup: &Setup,
) -> Vec<ClusterNode> {
    let mut listeners = Vec::new();
    for index in 0..peer_lists.len() {
        let address = addresses.map_or("127.0.0.1:0", |a| a[index].as_str());
        listeners.push(TcpListener::bind(address).await.expect("the port is free"));
    }
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").to_string())
        .collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let peers = peer_lists[index]
                .iter()
                .map(|&peer| Peer {
                    id: peer,
                    address: addresses[peer as usize - 1].clone(),
                })
                .collect();
            start_node(dir, index as u64 + 1, listener, peers, setup)
        })
        .collect()
}

/// Starts `count` nodes on ephemeral ports, each listing all the others as peers.
pub async fn start_cluster_with(dir: &Path, count: u64, setup: &Setup) -> Vec<ClusterNode> {
    start_nodes_with(dir, &all_others(count), None, setup).await
}

/// `count` nodes started together and led by node 1, with accounts `alice` and `bob`
/// (password `pw`): the nodes, a client of node 1, and alice's session token.
pub async fn led_by_node_1(
    dir: &Path,
    count: u64,
    setup: &Setup,
) -> (
    Vec<ClusterNode>,
    ChatServerClient,
    jochat_client::SessionToken,
) {
    let nodes = start_cluster_with(dir, count, setup).await;
    let first = nodes[0].client();
    wait_for_leader(&first, 1, count as usize).await;
    first.sign_up("alice", "pw").await.expect("sign-up");
    first.sign_up("bob", "pw").await.expect("sign-up");
    let alice = first.log_in("alice", "pw").await.expect("log-in").token;
    (nodes, first, alice)
}

/// Every node's peers: all the others.
pub fn all_others(count: u64) -> Vec<Vec<u64>> {
    (1..=count)
        .map(|id| (1..=count).filter(|&other| other != id).collect())
        .collect()
}

/// Polls `check` until it holds or 60 s pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it gives a value or 60 s pass, and returns the value.
pub async fn eventually_some<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chat rows of the SQLite file at `path`, read through a connection of its own in one
/// read transaction (a consistent view while the node goes on writing).
pub fn dump_file(path: &Path) -> StateDump {
    use jochat_core::store::ChatRead;
    crate::settled(path);
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the node's file opens read-only");
    let view = conn
        .unchecked_transaction()
        .expect("a read transaction begins");
    jochat_node::store::SqliteChat::new(&view)
        .dump()
        .expect("the node's file can be read")
}

/// Waits until `client`'s node reports node `id` leading `members` members.
pub async fn wait_for_leader(client: &ChatServerClient, id: u64, members: usize) {
    eventually("the expected leader leads every member", || async {
        matches!(client.cluster_info().await, Ok(info) if info.leader_id == Some(id) && info.members.len() == members)
    })
    .await;
}

/// Stops every node still running and waits for each.
pub async fn stop_all(nodes: Vec<ClusterNode>) {
    let mut nodes = nodes;
    for node in &mut nodes {
        node.signal_stop();
    }
    for node in nodes {
        node.stop().await;
    }
}

/// The id of the leader the running `nodes` agree on, once they report one that is among
/// them.
pub async fn running_leader(nodes: &[ClusterNode]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for node in nodes {
            if let Ok(info) = node.client().cluster_info().await {
                if let Some(id) = info
                    .leader_id
                    .filter(|id| nodes.iter().any(|n| n.id == *id))
                {
                    return id;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader among the running nodes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node in `nodes` has applied at least `index`.
pub async fn wait_applied(nodes: &[ClusterNode], index: u64) {
    for node in nodes {
        let client = node.client();
        eventually("the node applied everything", || async {
            matches!(client.cluster_info().await, Ok(info) if info.commit_index >= index)
        })
        .await;
    }
}

/// A raw client that sends each request to the node it believes leads, and moves on after a
/// failure: to the leader a NOT-LEADER answer names, else to the next address. One attempt
/// per call; the caller decides whether to retry (and with which idempotency key).
pub struct Router {
    addresses: Vec<String>,
    target: usize,
}

impl Router {
    /// A router over `addresses` (node `i + 1` at `addresses[i]`), starting with the first.
    pub fn new(addresses: Vec<String>) -> Self {
        Self {
            addresses,
            target: 0,
        }
    }

    /// Where the next request goes.
    pub fn target(&self) -> &str {
        &self.addresses[self.target]
    }

    /// Learns from a failed attempt where to send the next one.
    fn failed(&mut self, status: &tonic::Status) {
        let hinted = status
            .metadata()
            .get("jochat-leader-addr")
            .and_then(|v| v.to_str().ok())
            .and_then(|addr| self.addresses.iter().position(|a| a == addr));
        self.target = hinted.unwrap_or((self.target + 1) % self.addresses.len());
    }

    /// Sends `content` to `recipient` as the session `token`, with idempotency `key`, once,
    /// giving up after `wait`. Returns the message id.
    pub async fn send(
        &mut self,
        token: &str,
        recipient: &str,
        content: &str,
        key: &str,
        wait: Duration,
    ) -> Result<i64, tonic::Status> {
        let request = jochat_proto::v1::SendMessageRequest {
            recipient: recipient.into(),
            content: content.into(),
            idempotency_key: key.into(),
        };
        let target = self.target().to_owned();
        let result = self
            .once(&target, wait, move |mut client| async move {
                let mut request = super::authorized(request, token);
                request.set_timeout(wait);
                client
                    .send_message(request)
                    .await
                    .map(|r| r.into_inner().id)
            })
            .await;
        if let Err(status) = &result {
            self.failed(status);
        }
        result
    }

    /// The number of messages in `token`'s inbox (at most 1000), read linearizably, once.
    pub async fn inbox_size(
        &mut self,
        token: &str,
        wait: Duration,
    ) -> Result<usize, tonic::Status> {
        let target = self.target().to_owned();
        let result = self
            .once(&target, wait, move |mut client| async move {
                let request = jochat_proto::v1::ListMessagesRequest {
                    limit: 1000,
                    ..Default::default()
                };
                let mut request = super::authorized(request, token);
                request.set_timeout(wait);
                client
                    .list_messages(request)
                    .await
                    .map(|r| r.into_inner().messages.len())
            })
            .await;
        if let Err(status) = &result {
            self.failed(status);
        }
        result
    }

    async fn once<T, F, Fut>(
        &self,
        target: &str,
        wait: Duration,
        call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnOnce(jochat_proto::v1::chat_client::ChatClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let attempt = async {
            let client =
                jochat_proto::v1::chat_client::ChatClient::connect(format!("http://{target}"))
                    .await
                    .map_err(|e| {
                        tonic::Status::unavailable(format!("cannot reach {target}: {e}"))
                    })?;
            call(client).await
        };
        tokio::time::timeout(wait, attempt)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
    }
}

/// Every node's file holds the same chat rows, once all have applied what `leader` has.
pub async fn assert_identical(nodes: &[ClusterNode], leader: &ChatServerClient) {
    let target = leader
        .cluster_info()
        .await
        .expect("the leader answers")
        .commit_index;
    wait_applied(nodes, target).await;
    let first = dump_file(&nodes[0].db);
    for node in &nodes[1..] {
        assert_eq!(
            dump_file(&node.db),
            first,
            "node {} differs from node {}",
            node.id,
            nodes[0].id
        );
    }
}

/// `GET path` on `at` over HTTP/1.1: the status code and the body.
pub async fn http_get(at: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(at)
        .await
        .expect("the HTTP endpoint accepts");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("the request is sent");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .await
        .expect("the reply is text");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .expect("the reply has a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("the reply has a status code");
    (status, body.to_owned())
}
