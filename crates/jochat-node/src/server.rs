//! Running a node: [`serve`] on a listener until a shutdown signal, [`spawn`] it as a task,
//! or [`spawn_ephemeral`] a throwaway node in a temporary folder (for tests and examples).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jochat_proto::legacy::chat_service_server::ChatServiceServer;
use jochat_proto::v1::chat_server::ChatServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::listener::{capped, with_tls};
use crate::node::Node;
use crate::raft::faults::Faults;
use crate::raft::network::PeerDialer;
use crate::raft::RAFT_MESSAGE_BYTES_MAX;
use crate::service::chat::ChatApi;
use crate::service::legacy::LegacyApi;
use crate::service::raft::RaftApi;
use crate::tls::NodeTls;
use jochat_proto::internal::v1::raft_server::RaftServer;

/// How long a one-node cluster may take to elect itself at start-up.
const SOLE_LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long each step of publishing imported state may take at start-up (the snapshot of a
/// large import is written at `--snapshot-rate-mib`).
const SEED_PUBLISH_WAIT: Duration = Duration::from_secs(600);
/// How often the health service's status is brought up to date.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often an idle client connection is pinged, so dead peers are noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Serves every gRPC service of a node on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish, and waits until every accepted write is
/// committed.
///
/// # Errors
/// The configuration is invalid, the database cannot be opened, or the server fails.
pub async fn serve(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    serve_with(config, listener, shutdown, Faults::none()).await
}

/// Like [`serve`], with the node's peer calls obeying `faults`: for tests that drop, delay or
/// partition links between in-process nodes.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    faults: Faults,
) -> Result<(), NodeError> {
    let mut config = config;
    config.load_cluster_secret_file()?;
    config.validate()?;
    let address = config.advertised_address(listener.local_addr()?)?;
    let tls = match config.tls_files()? {
        Some(files) => Some(Arc::new(NodeTls::load(files)?)),
        None => None,
    };
    let dialer = PeerDialer::new(config.cluster_secret.as_deref(), tls.clone());
    let node = Arc::new(Node::start(config.clone(), address.clone(), dialer, faults).await?);
    let span = tracing::info_span!("node", node_id = node.id());
    // Every log line of the node's life carries its id; `instrument` (not `enter`) keeps the
    // span attached to this future only, across its awaits.
    run(config, listener, address, node, tls, shutdown)
        .instrument(span)
        .await
}

async fn run(
    config: NodeConfig,
    listener: TcpListener,
    address: String,
    node: Arc<Node>,
    tls: Option<Arc<NodeTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let metrics_endpoint = match config.metrics_addr {
        Some(at) => {
            let listener = TcpListener::bind(at).await?;
            // `metrics=`, not `…address=`: process harnesses read the serving line's
            // `address=`.
            tracing::info!(metrics = %listener.local_addr()?, "serving /metrics, /livez and /readyz");
            Some(tokio::spawn(crate::metrics::serve(
                Arc::clone(&node),
                listener,
            )))
        }
        None => None,
    };
    let socket_front = match config.socket_port {
        Some(port) => {
            let listener = TcpListener::bind((config.host.as_str(), port)).await?;
            Some((listener.local_addr()?, listener))
        }
        None => None,
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(jochat_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Task(format!("reflection service: {e}")))?;
    let raft = RaftServer::new(
        RaftApi::new(
            node.raft().clone(),
            node.leader_contact().clone(),
            config.cluster_secret.as_deref(),
            tls.is_some(),
        )
        .with_disk_guard(Arc::clone(node.disk()))
        .with_state_check(node.state_hasher().clone(), node.state_alarms().clone())
        .with_node(Arc::clone(&node)),
    )
    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let chat = ChatServer::new(ChatApi::new(Arc::clone(&node)))
        .max_decoding_message_size(config.request_bytes_max);
    let legacy = ChatServiceServer::new(LegacyApi::new(Arc::clone(&node)))
        .max_decoding_message_size(config.request_bytes_max);

    node.wait_for_sole_leadership(SOLE_LEADER_WAIT).await?;
    node.publish_seed(SEED_PUBLISH_WAIT).await?;
    // Judged once the node could lead its one-node cluster, so a lone node says SERVING from
    // its first request on.
    let mut health_now = None;
    report_health(&node, &health, &mut health_now).await;
    let health_watch = tokio::spawn(watch_health(Arc::clone(&node), health.clone(), health_now));
    // `address=` (what peers and clients call) comes first: `jochat_process` reads it.
    let listen = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let socket_front = socket_front.map(|(at, listener)| {
        // Before the serving line, which process harnesses wait for; `socket=`, not
        // `…address=`, which they read from it.
        tracing::info!(socket = %at, protocol = ?config.socket_protocol, anonymous_reset = config.allow_anonymous_reset, "serving the socket prototype's protocol");
        tokio::spawn(crate::socket::serve(Arc::clone(&node), listener))
    });
    tracing::info!(%address, %listen, scheme, db = %node.database().path().display(), "serving jochat.v1 and the prototype's ChatService");
    let router = Server::builder()
        .layer(crate::request_id::RequestIdLayer)
        .concurrency_limit_per_connection(config.connection_requests_max)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(chat)
        .add_service(legacy)
        .add_service(raft);
    let disk_watch = tokio::spawn(watch_disk(Arc::clone(&node), health.clone()));
    // Set when the Raft core stopped on a storage fault: the node then stops serving and
    // `serve` fails, so that the process exits non-zero and its supervisor restarts it.
    let (core_failed, core_failure) = oneshot::channel::<String>();
    let shutdown = {
        let node = Arc::clone(&node);
        async move {
            tokio::select! {
                () = shutdown => {}
                failure = node.core_stopped() => {
                    tracing::error!(%failure, "storage fault: the Raft core stopped; this node stops serving and exits so that it is restarted (a failed write is never retried on the same file)");
                    let _ = core_failed.send(failure);
                }
            }
            // Subscriptions never finish by themselves: end them so the server drains.
            node.begin_shutdown();
        }
    };
    let connections = capped(listener, config.connections_max);
    let served = match tls {
        None => {
            router
                .serve_with_incoming_shutdown(connections, shutdown)
                .await
        }
        Some(tls) => {
            let reloads = tokio::spawn(reload_on_hangup(Arc::clone(&tls)));
            let served = router
                .serve_with_incoming_shutdown(with_tls(connections, tls), shutdown)
                .await;
            reloads.abort();
            served
        }
    };
    disk_watch.abort();
    health_watch.abort();
    if let Some(front) = socket_front {
        // It stops accepting once the node stops (it was told with `begin_shutdown`).
        let _ = front.await;
    }
    if let Some(endpoint) = metrics_endpoint {
        // It ends by itself once the node stops (it was told with `begin_shutdown`).
        match endpoint.await {
            Ok(Err(error)) => tracing::warn!(%error, "the metrics endpoint failed"),
            Err(error) => tracing::warn!(%error, "the metrics endpoint's task failed"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("stopped accepting requests; committing what was accepted");
    node.close().await;
    tracing::info!("database closed");
    match core_failure.await {
        Ok(failure) => Err(NodeError::Stopped(failure)),
        // The sender is gone without a word: the shutdown was asked for.
        Err(_) => served.map_err(NodeError::from),
    }
}

/// The health service's name for whether this node takes writes now: `NOT_SERVING` while
/// its disk is below `--min-free-disk-mb`.
pub const WRITES_HEALTH_SERVICE: &str = "jochat.writes";

/// Measures the free disk space every [`crate::disk::MEASURE_INTERVAL`] and reports it in
/// the health service under [`WRITES_HEALTH_SERVICE`].
async fn watch_disk(node: Arc<Node>, health: tonic_health::server::HealthReporter) {
    let status = |low: bool| {
        if low {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        }
    };
    health
        .set_service_status(WRITES_HEALTH_SERVICE, status(node.disk().is_low()))
        .await;
    loop {
        tokio::time::sleep(crate::disk::MEASURE_INTERVAL).await;
        let disk = Arc::clone(node.disk());
        let changed = tokio::task::spawn_blocking(move || disk.measure())
            .await
            .unwrap_or(false);
        if changed {
            health
                .set_service_status(WRITES_HEALTH_SERVICE, status(node.disk().is_low()))
                .await;
        }
    }
}

/// Reads the TLS files again on every SIGHUP, so renewed certificates are used for new
/// connections without a restart. A failed reload is logged and the certificates in use stay.
async fn reload_on_hangup(tls: Arc<NodeTls>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: TLS files are read at start only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => {
                tracing::info!(cert = %tls.files().cert.display(), "SIGHUP: reloaded the TLS certificates")
            }
            Err(error) => {
                tracing::error!(%error, "SIGHUP: the TLS files do not load; still using the previous ones");
            }
        }
    }
}

/// A node running as a task of the current runtime. Dropping it asks it to stop without
/// waiting; [`RunningNode::shutdown`] waits.
pub struct RunningNode {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl RunningNode {
    /// `host:port` clients reach the node at.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// The bound socket address.
    pub fn socket_address(&self) -> SocketAddr {
        self.address
    }

    /// Stops the node and waits until it has committed every accepted write.
    ///
    /// # Errors
    /// What the server failed with, if it failed.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|e| NodeError::Task(e.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `config`'s address (port 0 picks a free port) and serves the node on a task.
///
/// # Errors
/// The configuration is invalid or the address cannot be bound.
pub async fn spawn(config: NodeConfig) -> Result<RunningNode, NodeError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen_address()?).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(config, listener, async move {
        let _ = stopped.await;
    }));
    Ok(RunningNode {
        address,
        stop: Some(stop),
        task: Some(task),
    })
}

/// A node on a free loopback port with its database in a temporary folder that is removed
/// when the node is dropped. For tests, doc examples and trying things out.
pub struct EphemeralNode {
    node: RunningNode,
    // Declared after `node` so that it is dropped (and removed) after the node stops.
    dir: tempfile::TempDir,
}

impl EphemeralNode {
    /// `host:port` clients reach the node at.
    pub fn address(&self) -> String {
        self.node.address()
    }

    /// The node's database file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("node.db")
    }

    /// Stops the node, waits for it, and removes its folder.
    ///
    /// # Errors
    /// What the server failed with, if it failed.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let Self { node, dir } = self;
        let result = node.shutdown().await;
        drop(dir);
        result
    }
}

/// Starts a fresh single node on `127.0.0.1:0` with its database in a new temporary folder.
///
/// # Errors
/// The folder or the socket cannot be made.
pub async fn spawn_ephemeral() -> Result<EphemeralNode, NodeError> {
    spawn_ephemeral_with(NodeConfig::default()).await
}

/// Like [`spawn_ephemeral`], with `config` for everything but the address and database.
///
/// # Errors
/// The configuration is invalid, or the folder or the socket cannot be made.
pub async fn spawn_ephemeral_with(config: NodeConfig) -> Result<EphemeralNode, NodeError> {
    let dir = tempfile::Builder::new().prefix("jochat-node-").tempdir()?;
    let config = NodeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        db_file: Some(dir.path().join("node.db")),
        ..config
    };
    let node = spawn(config).await?;
    Ok(EphemeralNode { node, dir })
}

/// The services the health service reports for: the whole server (`""`), `jochat.v1.Chat`
/// and the prototype's `ChatService`.
fn health_names() -> [&'static str; 3] {
    use tonic::server::NamedService;
    [
        "",
        <ChatServer<ChatApi> as NamedService>::NAME,
        <ChatServiceServer<LegacyApi> as NamedService>::NAME,
    ]
}

/// Sets the health service's statuses from [`Node::serving`] when it changed since `last`
/// (logging the change), and remembers it there.
async fn report_health(
    node: &Node,
    health: &tonic_health::server::HealthReporter,
    last: &mut Option<bool>,
) {
    let verdict = node.serving();
    let serving = verdict.is_ok();
    if *last == Some(serving) {
        return;
    }
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in health_names() {
        health.set_service_status(name, status).await;
    }
    match &verdict {
        Ok(()) => tracing::info!("health: SERVING"),
        Err(why) => tracing::info!(reason = %why, "health: NOT_SERVING"),
    }
    *last = Some(serving);
}

/// Keeps the standard gRPC health service true to the node's state ([`Node::serving`]):
/// SERVING while the node is a voter in touch with a majority, NOT_SERVING while it has no
/// quorum, is still joining, or is shutting down; checked every [`HEALTH_CHECK_INTERVAL`].
async fn watch_health(
    node: Arc<Node>,
    health: tonic_health::server::HealthReporter,
    mut last: Option<bool>,
) {
    loop {
        tokio::time::sleep(HEALTH_CHECK_INTERVAL).await;
        report_health(&node, &health, &mut last).await;
    }
}
