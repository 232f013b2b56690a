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
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl ClusterNode {
    /// The client library pointed at this node only.
    pub fn client(&self) -> ChatServerClient {
        ChatServerClient::builder()
            .servers([self.address.clone()])
            .build()
            .expect("a client for a loopback address builds")
    }

    /// Asks the node to stop without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
            force_new_cluster: self.force_new_cluster,
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
    let config = setup.config(id, db.clone(), peers);
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

/// The chat rows of the SQLite file at `path`, read through a connection of its own.
pub fn dump_file(path: &Path) -> StateDump {
    use jochat_core::store::ChatRead;
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the node's file opens read-only");
    jochat_node::store::SqliteChat::new(&conn)
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
