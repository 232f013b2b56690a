//! Prometheus metrics, served with `/livez` and `/readyz` on `--metrics-addr` ([`serve`]).
//!
//! One [`Metrics`] per node (tests run several nodes in one process), built on
//! `prometheus-client`'s registry. Counters and histograms are updated where things happen:
//! each gRPC request ([`Metrics::record_request`], from the services), each durable commit of
//! the log writer ([`StorageStats`]), each entry the proposer writes. Gauges that describe a
//! state (Raft's term and indexes, file sizes, sessions, the process) are read when the
//! endpoint is scraped ([`crate::Node::refresh_metrics`]), except the leader, whose changes
//! are counted as they happen (`Node`'s metrics watcher).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A request's labels: which service, which method, and the gRPC code it ended with. All
/// `'static`: counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `v1`, `legacy` or `internal`.
    pub service: &'static str,
    /// The method, e.g. `send_message`.
    pub method: &'static str,
    /// The gRPC code, e.g. `Ok`, `Unavailable`.
    pub code: &'static str,
}

/// A latency's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `v1`, `legacy` or `internal`.
    pub service: &'static str,
    /// The method.
    pub method: &'static str,
}

/// The name of a gRPC status code as it appears in the `code` label (`Ok`, `NotFound`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A peer's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's server id.
    pub peer: String,
}

fn seconds_histogram(start: f64) -> Histogram {
    Histogram::new(exponential_buckets(start, 2.0, 18))
}

/// What the storage measures as it writes: created with the storage, registered with the
/// node's metrics. Cheap to clone (the histograms are shared).
#[derive(Clone, Debug)]
pub struct StorageStats {
    /// How long each durable commit (its fsync) took.
    pub fsync_seconds: Histogram,
}

impl Default for StorageStats {
    fn default() -> Self {
        Self {
            fsync_seconds: seconds_histogram(0.000_05),
        }
    }
}

/// One node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<MethodLabels, Histogram>,
    /// Raft's current term.
    pub raft_term: Gauge,
    /// 1 while this node leads.
    pub raft_is_leader: Gauge,
    /// Leader changes this node has seen.
    pub raft_leader_changes: Counter,
    /// The commit index (the leader's quorum-matched index; a follower's applied index).
    pub raft_commit_index: Gauge,
    /// The last applied index.
    pub raft_applied_index: Gauge,
    /// On the leader: entries each peer lacks.
    pub raft_replication_lag: Family<PeerLabels, Gauge>,
    /// Entries in the log (after the last purge).
    pub log_entries: Gauge,
    /// The current snapshot file's size.
    pub snapshot_last_bytes: Gauge,
    /// Snapshots built since start (a counter read from the snapshot gauge).
    pub snapshot_builds: Counter<u64, AtomicU64>,
    /// The database file and its WAL.
    pub db_bytes: Gauge,
    /// Commands per Raft entry the proposer writes.
    pub write_batch_commands: Histogram,
    /// Live subscriptions.
    pub subscribers: Gauge,
    /// Open connections of the socket front end.
    pub socket_connections: Gauge,
    /// `Forward` calls this node made to the leader (a retry under a new leader counts again).
    pub forwarded_writes: Counter,
    /// Sessions not yet expired.
    pub sessions_active: Gauge,
    /// Failed log-ins (wrong name or password).
    pub login_failures: Counter,
    /// Requests refused for a rate limit.
    pub rate_limited: Counter,
    /// Resident memory.
    pub process_resident_bytes: Gauge,
    /// CPU time, user and system, in milliseconds (exposed in seconds).
    pub process_cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Open file descriptors.
    pub process_open_fds: Gauge,
}

impl Metrics {
    /// A node's metrics, registering the storage's `stats`.
    pub fn new(stats: &StorageStats) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "jochat_requests",
            "gRPC requests served, by service, method and status code",
            requests.clone(),
        );
        let request_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(|| seconds_histogram(0.0001));
        registry.register(
            "jochat_request_duration_seconds",
            "How long gRPC requests took, by service and method",
            request_seconds.clone(),
        );
        let metrics = Self {
            requests,
            request_seconds,
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_changes: Counter::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_replication_lag: Family::default(),
            log_entries: Gauge::default(),
            snapshot_last_bytes: Gauge::default(),
            snapshot_builds: Counter::default(),
            db_bytes: Gauge::default(),
            write_batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            subscribers: Gauge::default(),
            socket_connections: Gauge::default(),
            forwarded_writes: Counter::default(),
            sessions_active: Gauge::default(),
            login_failures: Counter::default(),
            rate_limited: Counter::default(),
            process_resident_bytes: Gauge::default(),
            process_cpu_seconds: Gauge::default(),
            process_open_fds: Gauge::default(),
            registry,
        };
        metrics.register_rest(stats)
    }

    fn register_rest(mut self, stats: &StorageStats) -> Self {
        let r = &mut self.registry;
        r.register(
            "jochat_raft_term",
            "Raft's current term",
            self.raft_term.clone(),
        );
        r.register(
            "jochat_raft_is_leader",
            "1 while this node leads its cluster",
            self.raft_is_leader.clone(),
        );
        r.register(
            "jochat_raft_leader_changes",
            "Changes of leader this node has seen",
            self.raft_leader_changes.clone(),
        );
        r.register(
            "jochat_raft_commit_index",
            "Commit index: the index a majority holds (leader); the applied index (follower)",
            self.raft_commit_index.clone(),
        );
        r.register(
            "jochat_raft_applied_index",
            "The last log index applied to the chat tables",
            self.raft_applied_index.clone(),
        );
        r.register(
            "jochat_raft_replication_lag_entries",
            "On the leader: log entries each peer has yet to receive",
            self.raft_replication_lag.clone(),
        );
        r.register(
            "jochat_log_entries",
            "Entries in the Raft log (after the last purge)",
            self.log_entries.clone(),
        );
        r.register(
            "jochat_snapshot_last_bytes",
            "Size of the current snapshot file",
            self.snapshot_last_bytes.clone(),
        );
        r.register(
            "jochat_snapshot_builds",
            "Snapshots built since the node started",
            self.snapshot_builds.clone(),
        );
        r.register(
            "jochat_db_bytes",
            "Size of the database file and its write-ahead log",
            self.db_bytes.clone(),
        );
        r.register(
            "jochat_write_batch_commands",
            "Commands per Raft entry written by the leader (group commit)",
            self.write_batch_commands.clone(),
        );
        r.register(
            "jochat_fsync_seconds",
            "How long each durable commit of the log (its fsync) took",
            stats.fsync_seconds.clone(),
        );
        r.register(
            "jochat_subscribers",
            "Live Subscribe streams on this node",
            self.subscribers.clone(),
        );
        r.register(
            "jochat_socket_connections",
            "Open connections of the socket front end (--socket-port)",
            self.socket_connections.clone(),
        );
        r.register(
            "jochat_forwarded_writes",
            "Forward calls this node made to the leader for clients that do not follow leaders (a retry counts again)",
            self.forwarded_writes.clone(),
        );
        r.register(
            "jochat_sessions_active",
            "Sessions that have not expired",
            self.sessions_active.clone(),
        );
        r.register(
            "jochat_login_failures",
            "Failed log-ins (wrong name or password)",
            self.login_failures.clone(),
        );
        r.register(
            "jochat_rate_limited",
            "Requests refused by a rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            self.process_resident_bytes.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "CPU time of the process, user and system",
            self.process_cpu_seconds.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the process",
            self.process_open_fds.clone(),
        );
        self
    }

    /// Counts one request of `service`'s `method` that ended with `code` after `elapsed`.
    pub fn record_request(
        &self,
        service: &'static str,
        method: &'static str,
        code: tonic::Code,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                service,
                method,
                code: code_name(code),
            })
            .inc();
        self.request_seconds
            .get_or_create(&MethodLabels { service, method })
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition, in the OpenMetrics text format (which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "could not encode the metrics");
        }
        text
    }

    /// Reads the process's resident memory, CPU time and open descriptors from `/proc`.
    pub fn refresh_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss_kib = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<i64>().ok());
            if let Some(kib) = rss_kib {
                self.process_resident_bytes.set(kib * 1024);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces, inside parentheses):
            // utime is the 14th field of the line, stime the 15th.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                let per_second = rustix::param::clock_ticks_per_second() as f64;
                self.process_cpu_seconds
                    .set((user + system) as f64 / per_second.max(1.0));
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(fds.count() as i64);
        }
    }
}

/// Where a request is counted: the service and method named by `operation`
/// (`legacy.signup` is the `legacy` service's `signup`; a name without a dot is `v1`'s).
pub fn service_and_method(operation: &'static str) -> (&'static str, &'static str) {
    operation.split_once('.').unwrap_or(("v1", operation))
}

/// The content type of the exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` (the exposition, refreshed at each scrape), `GET /livez` (200 while
/// the process runs) and `GET /readyz` (200 when the node would serve a linearizable read
/// now, 503 with the reason otherwise) on `listener`, until the node starts stopping.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    node: std::sync::Arc<crate::Node>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    type Shared = axum::extract::State<std::sync::Arc<crate::Node>>;
    async fn scrape(axum::extract::State(node): Shared) -> impl axum::response::IntoResponse {
        node.refresh_metrics().await;
        (
            [(header::CONTENT_TYPE, OPENMETRICS)],
            node.metrics().encode(),
        )
    }
    async fn live() -> &'static str {
        "ok\n"
    }
    async fn ready(axum::extract::State(node): Shared) -> (StatusCode, String) {
        match node.ready() {
            Ok(()) => (StatusCode::OK, "ready\n".into()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        }
    }
    let mut stopping = node.stopping();
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(live))
        .route("/readyz", get(ready))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_name_their_service() {
        assert_eq!(service_and_method("legacy.signup"), ("legacy", "signup"));
        assert_eq!(service_and_method("send_message"), ("v1", "send_message"));
    }

    #[test]
    fn requests_are_counted_by_code() {
        let metrics = Metrics::new(&StorageStats::default());
        metrics.record_request(
            "v1",
            "send_message",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        metrics.record_request(
            "v1",
            "send_message",
            tonic::Code::Ok,
            Duration::from_millis(5),
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                "jochat_requests_total{service=\"v1\",method=\"send_message\",code=\"Ok\"} 2"
            ),
            "{text}"
        );
    }
}
