//! The node's configuration: command-line flags, each with an environment-variable fallback
//! and, for the prototype's spellings, an underscore alias (`--server_id`, `--db_file`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use jochat_core::limits::{CONTENT_BYTES_LIMIT, CONTENT_BYTES_MAX_DEFAULT};
use jochat_core::types::is_host_name;

use crate::error::NodeError;
use crate::store::{StoreConfig, SyncMode};

/// The folder databases go in when `--db-file` is not given.
pub const DATA_DIR_DEFAULT: &str = "jochat-data";
/// Bytes of gRPC framing and fields allowed on top of the content limit in one request.
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

// Each flag's default and the bounds `NodeConfig::validate` enforces, named once. A flag
// outside its bounds stops the node at start-up with an error naming the flag and the rule.

/// `--session-ttl-secs` default: a week.
pub const SESSION_TTL_SECS_DEFAULT: u64 = 7 * 24 * 3600;
/// Default `--state-check-secs`: every five minutes.
pub const STATE_CHECK_SECS_DEFAULT: u64 = 300;
/// Default `--startup-check-secs`: at SQLite's pace (hundreds of MB a second) a few GB.
pub const STARTUP_CHECK_SECS_DEFAULT: u64 = 10;
/// Default `--min-free-disk-mb`: more than a node writes in the second between two
/// measurements of the free space.
pub const MIN_FREE_DISK_MB_DEFAULT: u64 = 256;
/// `--session-ttl-secs` at most: a year.
pub const SESSION_TTL_SECS_LIMIT: u64 = 365 * 24 * 3600;
/// `--request-bytes-max` default.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// `--request-bytes-max` at most.
pub const REQUEST_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// `--login-failures-max` default.
pub const LOGIN_FAILURES_MAX_DEFAULT: u32 = 5;
/// `--login-lockout-secs` default.
pub const LOGIN_LOCKOUT_SECS_DEFAULT: u64 = 60;
/// `--runtime-threads` default: one thread runs the node's asynchronous work, so that
/// handing a request from task to task (gRPC, proposer, Raft core, replication, state
/// machine) wakes no other thread (docs/performance.md, "One runtime thread per node").
pub const RUNTIME_THREADS_DEFAULT: usize = 1;
/// `--runtime-threads` at most.
pub const RUNTIME_THREADS_LIMIT: usize = 256;
/// `--read-pool-size` default.
pub const READ_POOL_SIZE_DEFAULT: u32 = 4;
/// `--read-pool-size` at most.
pub const READ_POOL_SIZE_LIMIT: u32 = 64;
/// `--connections-max` default: client connections and peers' connections together.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// `--connections-max` at most.
pub const CONNECTIONS_LIMIT: usize = 65_536;
/// `--connection-requests-max` default.
pub const CONNECTION_REQUESTS_MAX_DEFAULT: usize = 256;
/// `--connection-requests-max` at most.
pub const CONNECTION_REQUESTS_LIMIT: usize = 65_536;
/// `--subscribers-max` default.
pub const SUBSCRIBERS_MAX_DEFAULT: usize = 10_000;
/// `--subscribers-max` at most.
pub const SUBSCRIBERS_LIMIT: usize = 1_000_000;
/// `--subscriber-buffer` default.
pub const SUBSCRIBER_BUFFER_DEFAULT: usize = 1024;
/// `--subscriber-buffer` at most.
pub const SUBSCRIBER_BUFFER_LIMIT: usize = 1_000_000;
/// `--heartbeat-ms` default.
pub const HEARTBEAT_MS_DEFAULT: u64 = 50;
/// `--election-timeout-ms` default.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 150;
/// `--snapshot-threshold` default.
pub const SNAPSHOT_THRESHOLD_DEFAULT: u64 = 5000;
/// `--snapshot-rate-mib` default.
pub const SNAPSHOT_RATE_MIB_DEFAULT: u64 = 32;
/// `--snapshot-rate-mib` at most.
pub const SNAPSHOT_RATE_MIB_LIMIT: u64 = 1 << 20;

/// How long sending one snapshot chunk, or installing the last one, may take.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 60_000;

/// Another node of the cluster, as `--peers` names it: `ID:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its server id.
    pub id: u64,
    /// `host:port` of its gRPC endpoint.
    pub address: String,
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (id, address) = raw
            .split_once(':')
            .ok_or_else(|| format!("{raw:?} is not ID:HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("{raw:?}: server id {id:?} is not a positive number"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{raw:?} is not ID:HOST:PORT"))?;
        if id == 0 || host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{raw:?} is not ID:HOST:PORT with ID and PORT above 0"
            ));
        }
        Ok(Self {
            id,
            address: address.to_owned(),
        })
    }
}

/// Checks that `flag`'s `value` lies between `min` and `max`; the error names the flag and
/// the range.
fn within<T>(flag: &'static str, value: T, min: T, max: T) -> Result<(), NodeError>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(NodeError::Config {
            flag,
            rule: format!("must be between {min} and {max}"),
        });
    }
    Ok(())
}

/// Checks `HOST:PORT` (an IP address, `[IPv6]`, or a DNS name, and a port from 1 to 65535);
/// returns the rule it breaks.
fn check_host_port(raw: &str) -> Result<(), String> {
    if raw
        .parse::<SocketAddr>()
        .is_ok_and(|address| address.port() > 0)
    {
        return Ok(());
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(format!("{raw:?} is not HOST:PORT"));
    };
    if !port.parse::<u16>().is_ok_and(|port| port > 0) {
        return Err(format!(
            "{raw:?}: the port must be a number from 1 to 65535"
        ));
    }
    if host.parse::<std::net::IpAddr>().is_err() && !is_host_name(host) {
        return Err(format!(
            "{raw:?}: {host:?} is neither an IP address nor a host name"
        ));
    }
    Ok(())
}

/// How a request slower than this many milliseconds is logged at `info` (`--slow-request-ms`).
pub const SLOW_REQUEST_MS_DEFAULT: u64 = 1_000;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The wire format of the socket front end (`--socket-protocol`), as the socket
/// prototype's `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketProtocol {
    /// Field-by-field binary frames (the prototype's default).
    Custom,
    /// Length-prefixed JSON objects.
    Json,
}

/// Connections the socket front end holds at most (`--socket-connections-max`).
pub const SOCKET_CONNECTIONS_MAX_DEFAULT: usize = 1024;

/// Configuration of one `jochat-node`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "jochat-node",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("JOCHAT_GIT_COMMIT"), ")"),
    about = "A JoChat server node",
    after_help = "Started on the prototype's database file (--db_file), the node forming the \
                  cluster imports it and the others set theirs aside. Offline: \
                  jochat-node import-prototype --from OLD.db --db-file NEW.db (--help there). \
                  Shell completions: jochat-node completions bash|zsh|fish; the manual page: \
                  jochat-node man."
)]
pub struct NodeConfig {
    /// This node's server id (positive; the lowest live id is preferred as leader).
    #[arg(
        long = "server-id",
        alias = "server_id",
        env = "JOCHAT_SERVER_ID",
        default_value_t = 1
    )]
    pub server_id: u64,
    /// Address to listen on.
    #[arg(long, env = "JOCHAT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "JOCHAT_PORT", default_value_t = 5001)]
    pub port: u16,
    /// The SQLite database file [default: jochat-data/node-<SERVER_ID>.db].
    #[arg(long = "db-file", alias = "db_file", env = "JOCHAT_DB_FILE")]
    pub db_file: Option<PathBuf>,
    /// Other nodes, as ID:HOST:PORT,...: a new node forms the cluster with them (lowest id) or
    /// joins it through its leader. Without peers a new node bootstraps a one-node cluster.
    #[arg(long, env = "JOCHAT_PEERS", value_delimiter = ',')]
    pub peers: Vec<Peer>,
    /// What peers and clients are told to call this node at, as HOST:PORT (a DNS name or an
    /// IP). Default: the bound address; required when `--host` is the unspecified address
    /// (`0.0.0.0`, `::`), which nobody can call.
    #[arg(
        long = "advertise-addr",
        alias = "advertise_addr",
        env = "JOCHAT_ADVERTISE_ADDR"
    )]
    pub advertise_addr: Option<String>,
    /// Shared secret required on internal cluster calls.
    #[arg(
        long = "cluster-secret",
        alias = "cluster_secret",
        env = "JOCHAT_CLUSTER_SECRET",
        hide_env_values = true,
        conflicts_with = "cluster_secret_file"
    )]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (its first line), so the secret stays out of the
    /// process list and the environment.
    #[arg(
        long = "cluster-secret-file",
        alias = "cluster_secret_file",
        env = "JOCHAT_CLUSTER_SECRET_FILE"
    )]
    pub cluster_secret_file: Option<PathBuf>,
    /// Serve on a non-loopback address without TLS or a cluster secret: anyone who reaches
    /// the port can then call the internal Raft service. For closed test networks only.
    #[arg(long, env = "JOCHAT_INSECURE")]
    pub insecure: bool,
    /// This node's certificate (PEM, naming every host it is called by): with `--tls-key` and
    /// `--tls-ca`, every service is served over TLS and peers are called over mutual TLS.
    #[arg(
        long = "tls-cert",
        env = "JOCHAT_TLS_CERT",
        requires_all = ["tls_key", "tls_ca"]
    )]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(
        long = "tls-key",
        env = "JOCHAT_TLS_KEY",
        requires_all = ["tls_cert", "tls_ca"]
    )]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present a node certificate it signed,
    /// and a client certificate, when a client offers one, must be signed by it.
    #[arg(
        long = "tls-ca",
        env = "JOCHAT_TLS_CA",
        requires_all = ["tls_cert", "tls_key"]
    )]
    pub tls_ca: Option<PathBuf>,
    /// Free space (MiB) the data folder's filesystem must keep: below it the node refuses
    /// writes (RESOURCE_EXHAUSTED) and takes no new log entries until space returns
    /// (0: no guard).
    #[arg(
        long = "min-free-disk-mb",
        env = "JOCHAT_MIN_FREE_DISK_MB",
        default_value_t = MIN_FREE_DISK_MB_DEFAULT
    )]
    pub min_free_disk_mb: u64,
    /// Rebuilds this node from its cluster: asks the leader (found through `--peers`) to
    /// remove it, sets its database file aside (renamed `<file>.rebuilt-<time>`), and joins
    /// again empty, receiving the cluster's state. For a node whose file is damaged or whose
    /// state differs from the cluster's. Remove the flag afterwards.
    #[arg(long, env = "JOCHAT_REBUILD")]
    pub rebuild: bool,
    /// How often the leader compares the members' chat state (hashes of their tables at one
    /// applied index), in seconds; a member that differs from the majority is flagged and
    /// stops serving reads (0: never).
    #[arg(
        long = "state-check-secs",
        env = "JOCHAT_STATE_CHECK_SECS",
        default_value_t = STATE_CHECK_SECS_DEFAULT
    )]
    pub state_check_secs: u64,
    /// How long the start-up check of the database file may take, in seconds (SQLite's
    /// `quick_check`; a larger file is checked only that far, and a warning says so; 0: no
    /// check). A file found damaged is refused.
    #[arg(
        long = "startup-check-secs",
        env = "JOCHAT_STARTUP_CHECK_SECS",
        default_value_t = STARTUP_CHECK_SECS_DEFAULT
    )]
    pub startup_check_secs: u64,
    /// How hard commits are made durable.
    #[arg(
        long = "sync-mode",
        alias = "sync_mode",
        env = "JOCHAT_SYNC_MODE",
        value_enum,
        default_value = "full"
    )]
    pub sync_mode: SyncMode,
    /// How long a session lasts, in seconds.
    #[arg(long = "session-ttl-secs", alias = "session_ttl_secs", env = "JOCHAT_SESSION_TTL_SECS", default_value_t = SESSION_TTL_SECS_DEFAULT)]
    pub session_ttl_secs: u64,
    /// Longest message content, in bytes.
    #[arg(long = "content-bytes-max", alias = "content_bytes_max", env = "JOCHAT_CONTENT_BYTES_MAX", default_value_t = CONTENT_BYTES_MAX_DEFAULT)]
    pub content_bytes_max: usize,
    /// Largest gRPC request, in bytes; larger frames are refused with OUT_OF_RANGE.
    #[arg(long = "request-bytes-max", alias = "request_bytes_max", env = "JOCHAT_REQUEST_BYTES_MAX", default_value_t = REQUEST_BYTES_MAX_DEFAULT)]
    pub request_bytes_max: usize,
    /// Failed log-ins for one username before further attempts are refused for a while.
    #[arg(
        long = "login-failures-max",
        alias = "login_failures_max",
        env = "JOCHAT_LOGIN_FAILURES_MAX",
        default_value_t = LOGIN_FAILURES_MAX_DEFAULT
    )]
    pub login_failures_max: u32,
    /// How long log-ins stay refused after too many failures, in seconds.
    #[arg(
        long = "login-lockout-secs",
        alias = "login_lockout_secs",
        env = "JOCHAT_LOGIN_LOCKOUT_SECS",
        default_value_t = LOGIN_LOCKOUT_SECS_DEFAULT
    )]
    pub login_lockout_secs: u64,
    /// Threads that run the node's asynchronous work: gRPC, Raft, replication, the state
    /// machine's task. 1: one thread, on which handing work from task to task wakes no other
    /// thread (the fastest on small machines); more: a multi-threaded runtime with that many
    /// workers, for nodes whose front end needs more than one core. Blocking work (the log
    /// writer, checkpoints, password hashing, reads) runs on threads of its own either way.
    #[arg(
        long = "runtime-threads",
        alias = "runtime_threads",
        env = "JOCHAT_RUNTIME_THREADS",
        default_value_t = RUNTIME_THREADS_DEFAULT
    )]
    pub runtime_threads: usize,
    /// Read connections to the database at most.
    #[arg(
        long = "read-pool-size",
        alias = "read_pool_size",
        env = "JOCHAT_READ_POOL_SIZE",
        default_value_t = READ_POOL_SIZE_DEFAULT
    )]
    pub read_pool_size: u32,
    /// How often the leader sends heartbeats, in milliseconds.
    #[arg(
        long = "heartbeat-ms",
        alias = "heartbeat_ms",
        env = "JOCHAT_HEARTBEAT_MS",
        default_value_t = HEARTBEAT_MS_DEFAULT
    )]
    pub heartbeat_ms: u64,
    /// Election timeout of server 1, in milliseconds. Each higher id waits half of it longer
    /// (up to id 8), and each node's timeout varies within half of it.
    #[arg(
        long = "election-timeout-ms",
        alias = "election_timeout_ms",
        env = "JOCHAT_ELECTION_TIMEOUT_MS",
        default_value_t = ELECTION_TIMEOUT_MS_DEFAULT
    )]
    pub election_timeout_ms: u64,
    /// Log entries since the last snapshot that make a new snapshot due (and let the log be
    /// purged behind it), once the commands applied since then also hold at least half as
    /// many bytes as the last snapshot file (`raft::snapshots`), so that a large database is
    /// not copied every few thousand entries.
    #[arg(
        long = "snapshot-threshold",
        alias = "snapshot_threshold",
        env = "JOCHAT_SNAPSHOT_THRESHOLD",
        default_value_t = SNAPSHOT_THRESHOLD_DEFAULT
    )]
    pub snapshot_threshold: u64,
    /// How fast a snapshot file is written, in MiB a second; 0 for as fast as the disk takes
    /// it. Bounded so that copying a large database leaves the disk room for the log's fsyncs.
    #[arg(
        long = "snapshot-rate-mib",
        alias = "snapshot_rate_mib",
        env = "JOCHAT_SNAPSHOT_RATE_MIB",
        default_value_t = SNAPSHOT_RATE_MIB_DEFAULT
    )]
    pub snapshot_rate_mib: u64,
    /// Disaster recovery: make this node, with the data in its file, the only member of a new
    /// cluster (its log and state are kept; the other members are dropped). For when a
    /// majority is lost for good. Committed writes that this node had not received are lost,
    /// and the old members must never be restarted on their old files. Remove the flag once
    /// the node runs; add new, empty nodes to grow the cluster again.
    #[arg(
        long = "force-new-cluster",
        alias = "force_new_cluster",
        env = "JOCHAT_FORCE_NEW_CLUSTER"
    )]
    pub force_new_cluster: bool,
    /// Log lines as `text` (for people) or `json` (one object per line: timestamp, level,
    /// the span's node id, term, request id and method, the outcome's code and latency).
    #[arg(
        long = "log-format",
        alias = "log_format",
        env = "JOCHAT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// A request slower than this is logged at `info` (every request is logged at `debug`).
    #[arg(
        long = "slow-request-ms",
        alias = "slow_request_ms",
        env = "JOCHAT_SLOW_REQUEST_MS",
        default_value_t = SLOW_REQUEST_MS_DEFAULT
    )]
    pub slow_request_ms: u64,
    /// Read settings from this TOML file: the same keys as the flags (`server-id = 2`,
    /// `peers = ["1:10.0.0.1:5001"]`; `_` may stand for `-`). Flags and environment variables
    /// override it; an unknown key is an error naming it.
    #[arg(long, env = "JOCHAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (after the file, the environment and the flags) as
    /// TOML, with secrets masked, and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,
    /// Serve Prometheus metrics (`GET /metrics`), `/livez` and `/readyz` over HTTP on this
    /// address (off when not given). The endpoint is plain HTTP without authentication: bind
    /// it to an address only the monitoring system reaches.
    #[arg(
        long = "metrics-addr",
        alias = "metrics_addr",
        env = "JOCHAT_METRICS_ADDR",
        value_name = "HOST:PORT"
    )]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Disaster recovery from a backup (`jochat backup`): start a new one-node cluster
    /// holding exactly the state in FILE. Only into an empty data folder (no `--db-file`
    /// yet); the file is checked first (its `FILE.sha256` beside it when present, SQLite's
    /// integrity check, JoChat's schema) and refused, with nothing changed, if corrupt,
    /// truncated or not a JoChat backup. Other nodes then join as usual. Remove the flag once
    /// the node has started.
    #[arg(long, env = "JOCHAT_RESTORE", value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// The account allowed to reset the whole database through the prototype's ResetDB call
    /// (refused to everyone when unset).
    #[arg(long = "admin-user", alias = "admin_user", env = "JOCHAT_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Serve the socket prototype's TCP protocol on this port too, on `--host` (off unless
    /// given). Its clients need no leader: a follower forwards their writes to the leader.
    #[arg(
        long = "socket-port",
        alias = "socket_port",
        env = "JOCHAT_SOCKET_PORT",
        value_name = "PORT"
    )]
    pub socket_port: Option<u16>,
    /// The socket front end's wire format, for every connection: `custom` (binary, the
    /// prototype's default) or `json`.
    #[arg(
        long = "socket-protocol",
        alias = "socket_protocol",
        env = "JOCHAT_SOCKET_PROTOCOL",
        value_enum,
        default_value_t = SocketProtocol::Custom
    )]
    pub socket_protocol: SocketProtocol,
    /// Socket connections at most; one more is closed at once.
    #[arg(
        long = "socket-connections-max",
        alias = "socket_connections_max",
        env = "JOCHAT_SOCKET_CONNECTIONS_MAX",
        default_value_t = SOCKET_CONNECTIONS_MAX_DEFAULT
    )]
    pub socket_connections_max: usize,
    /// Let anyone wipe the whole cluster with the socket protocol's `reset_db`, which asks
    /// for no session: for the prototype's test environments only (its test suite resets
    /// before every test). Off by default: `reset_db` then answers "error".
    #[arg(
        long = "allow-anonymous-reset",
        alias = "allow_anonymous_reset",
        env = "JOCHAT_ALLOW_ANONYMOUS_RESET"
    )]
    pub allow_anonymous_reset: bool,
    /// Open connections at most, clients' and peers' together. At the limit the node stops
    /// accepting until one closes (new clients wait in the listen backlog and time out).
    #[arg(
        long = "connections-max",
        alias = "connections_max",
        env = "JOCHAT_CONNECTIONS_MAX",
        default_value_t = CONNECTIONS_MAX_DEFAULT
    )]
    pub connections_max: usize,
    /// Concurrent requests per client connection at most; more wait.
    #[arg(
        long = "connection-requests-max",
        alias = "connection_requests_max",
        env = "JOCHAT_CONNECTION_REQUESTS_MAX",
        default_value_t = CONNECTION_REQUESTS_MAX_DEFAULT
    )]
    pub connection_requests_max: usize,
    /// Live Subscribe streams at most; beyond it a new one is refused with UNAVAILABLE
    /// "overloaded" (the failover client then tries another node).
    #[arg(
        long = "subscribers-max",
        alias = "subscribers_max",
        env = "JOCHAT_SUBSCRIBERS_MAX",
        default_value_t = SUBSCRIBERS_MAX_DEFAULT
    )]
    pub subscribers_max: usize,
    /// Messages a subscriber may leave unread before it is dropped with RESOURCE_EXHAUSTED.
    #[arg(
        long = "subscriber-buffer",
        alias = "subscriber_buffer",
        env = "JOCHAT_SUBSCRIBER_BUFFER",
        default_value_t = SUBSCRIBER_BUFFER_DEFAULT
    )]
    pub subscriber_buffer: usize,
}

impl Default for NodeConfig {
    /// The defaults of the flags, ignoring the environment.
    fn default() -> Self {
        Self {
            server_id: 1,
            host: "127.0.0.1".into(),
            port: 5001,
            db_file: None,
            peers: Vec::new(),
            advertise_addr: None,
            cluster_secret: None,
            cluster_secret_file: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            min_free_disk_mb: MIN_FREE_DISK_MB_DEFAULT,
            startup_check_secs: STARTUP_CHECK_SECS_DEFAULT,
            state_check_secs: STATE_CHECK_SECS_DEFAULT,
            rebuild: false,
            restore: None,
            metrics_addr: None,
            config: None,
            print_config: false,
            log_format: LogFormat::Text,
            slow_request_ms: SLOW_REQUEST_MS_DEFAULT,
            sync_mode: SyncMode::Full,
            session_ttl_secs: SESSION_TTL_SECS_DEFAULT,
            content_bytes_max: CONTENT_BYTES_MAX_DEFAULT,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            login_failures_max: LOGIN_FAILURES_MAX_DEFAULT,
            login_lockout_secs: LOGIN_LOCKOUT_SECS_DEFAULT,
            runtime_threads: RUNTIME_THREADS_DEFAULT,
            read_pool_size: READ_POOL_SIZE_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connection_requests_max: CONNECTION_REQUESTS_MAX_DEFAULT,
            subscribers_max: SUBSCRIBERS_MAX_DEFAULT,
            subscriber_buffer: SUBSCRIBER_BUFFER_DEFAULT,
            admin_user: None,
            socket_port: None,
            socket_protocol: SocketProtocol::Custom,
            socket_connections_max: SOCKET_CONNECTIONS_MAX_DEFAULT,
            allow_anonymous_reset: false,
            heartbeat_ms: HEARTBEAT_MS_DEFAULT,
            election_timeout_ms: ELECTION_TIMEOUT_MS_DEFAULT,
            snapshot_threshold: SNAPSHOT_THRESHOLD_DEFAULT,
            snapshot_rate_mib: SNAPSHOT_RATE_MIB_DEFAULT,
            force_new_cluster: false,
        }
    }
}

impl NodeConfig {
    /// Checks every flag; the error names the flag and the rule.
    ///
    /// # Errors
    /// `NodeError::Config` for the first flag out of its range.
    pub fn validate(&self) -> Result<(), NodeError> {
        let fail = |flag, rule: String| Err(NodeError::Config { flag, rule });
        if self.server_id == 0 {
            return fail("server-id", "must be positive".into());
        }
        if let Some(peer) = self.peers.iter().find(|p| p.id == self.server_id) {
            return fail("peers", format!("lists this node's own id {}", peer.id));
        }
        if self
            .socket_port
            .is_some_and(|socket| socket != 0 && socket == self.port)
        {
            return fail(
                "socket-port",
                format!("must differ from --port ({}), which serves gRPC", self.port),
            );
        }
        if self.restore.is_some() && (self.rebuild || self.force_new_cluster) {
            return fail(
                "restore",
                "starts a new cluster from a backup: it cannot go with --rebuild or \
                 --force-new-cluster"
                    .into(),
            );
        }
        if !(1..=SESSION_TTL_SECS_LIMIT).contains(&self.session_ttl_secs) {
            return fail(
                "session-ttl-secs",
                "must be between 1 second and 365 days".into(),
            );
        }
        if !(1..=CONTENT_BYTES_LIMIT).contains(&self.content_bytes_max) {
            return fail(
                "content-bytes-max",
                format!("must be between 1 and {CONTENT_BYTES_LIMIT}"),
            );
        }
        let request_min = self.content_bytes_max + REQUEST_OVERHEAD_BYTES;
        if self.request_bytes_max < request_min || self.request_bytes_max > REQUEST_BYTES_LIMIT {
            return fail(
                "request-bytes-max",
                format!(
                    "must be between {request_min} (content limit + 64 KiB) and {} MiB",
                    REQUEST_BYTES_LIMIT >> 20
                ),
            );
        }
        if self.login_failures_max == 0 {
            return fail("login-failures-max", "must be positive".into());
        }
        within(
            "runtime-threads",
            self.runtime_threads,
            1,
            RUNTIME_THREADS_LIMIT,
        )?;
        within(
            "read-pool-size",
            self.read_pool_size,
            1,
            READ_POOL_SIZE_LIMIT,
        )?;
        // A cluster's peers hold a few connections each; a handful for clients on top.
        within(
            "connections-max",
            self.connections_max,
            8,
            CONNECTIONS_LIMIT,
        )?;
        within(
            "socket-connections-max",
            self.socket_connections_max,
            1,
            CONNECTIONS_LIMIT,
        )?;
        within(
            "connection-requests-max",
            self.connection_requests_max,
            1,
            CONNECTION_REQUESTS_LIMIT,
        )?;
        within(
            "subscribers-max",
            self.subscribers_max,
            1,
            SUBSCRIBERS_LIMIT,
        )?;
        within(
            "subscriber-buffer",
            self.subscriber_buffer,
            1,
            SUBSCRIBER_BUFFER_LIMIT,
        )?;
        if self.snapshot_threshold == 0 {
            return fail("snapshot-threshold", "must be positive".into());
        }
        if self.snapshot_rate_mib > SNAPSHOT_RATE_MIB_LIMIT {
            return fail(
                "snapshot-rate-mib",
                format!("must be between 0 (unbounded) and {SNAPSHOT_RATE_MIB_LIMIT}"),
            );
        }
        if self.cluster_secret.as_deref().is_some_and(str::is_empty) {
            return fail("cluster-secret", "must not be empty when given".into());
        }
        self.raft_config()?;
        if let Some(admin) = &self.admin_user {
            jochat_core::types::Username::new(admin).map_err(|e| NodeError::Config {
                flag: "admin-user",
                rule: e.to_string(),
            })?;
        }
        let bound = self.listen_address()?;
        if let Some(advertised) = &self.advertise_addr {
            check_host_port(advertised).map_err(|rule| NodeError::Config {
                flag: "advertise-addr",
                rule,
            })?;
        }
        let tls = self.tls_files()?;
        let has_secret = self.cluster_secret.is_some() || self.cluster_secret_file.is_some();
        if !bound.ip().is_loopback() && tls.is_none() && !has_secret && !self.insecure {
            return fail(
                "host",
                format!(
                    "{bound} is reachable from other machines, and without TLS or a cluster \
                     secret anyone who reaches it can call the internal Raft service (join, \
                     vote, append): give --tls-cert, --tls-key and --tls-ca (see `jochat \
                     cert`), or --cluster-secret-file, or add --insecure to serve in plaintext \
                     without either on a closed network"
                ),
            );
        }
        Ok(())
    }

    /// The Tokio runtime `--runtime-threads` asks for: a current-thread runtime for 1 (every
    /// task of the node on the thread that calls `block_on`), else a multi-threaded one with
    /// that many workers. Either way with I/O and timers enabled, as [`crate::serve`] needs.
    ///
    /// # Errors
    /// The runtime's threads or its I/O driver cannot be started.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.runtime_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.runtime_threads)
                .enable_all()
                .build()
        }
    }

    /// `host:port` to bind. `--host` may be an IP address or a name, resolved here (its
    /// first address).
    ///
    /// # Errors
    /// `NodeError::Config` on `host` when it is neither an IP address nor a name that
    /// resolves.
    pub fn listen_address(&self) -> Result<SocketAddr, NodeError> {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            &self.host
        };
        if let Ok(ip) = host.parse() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let invalid = |rule: String| NodeError::Config { flag: "host", rule };
        if !is_host_name(host) {
            return Err(invalid(format!(
                "{:?} is neither an IP address nor a host name",
                self.host
            )));
        }
        (host, self.port)
            .to_socket_addrs()
            .map_err(|error| invalid(format!("cannot resolve {:?}: {error}", self.host)))?
            .next()
            .ok_or_else(|| invalid(format!("{:?} resolves to no address", self.host)))
    }

    /// What peers and clients are told to call this node at, given the address it is bound
    /// to: `--advertise-addr`, else `bound`.
    ///
    /// # Errors
    /// `NodeError::Config` on `advertise-addr` when it is not given and `bound` is the
    /// unspecified address, which nobody can call.
    pub fn advertised_address(&self, bound: SocketAddr) -> Result<String, NodeError> {
        if let Some(advertised) = &self.advertise_addr {
            return Ok(advertised.clone());
        }
        if bound.ip().is_unspecified() {
            return Err(NodeError::Config {
                flag: "advertise-addr",
                rule: format!(
                    "required when the node binds the unspecified address {bound} (every \
                     interface): peers and clients must be told an address they can reach, \
                     e.g. --advertise-addr 10.0.0.5:{}",
                    bound.port()
                ),
            });
        }
        Ok(bound.to_string())
    }

    /// The TLS files, when the node serves TLS (`--tls-cert`, `--tls-key`, `--tls-ca`).
    ///
    /// # Errors
    /// `NodeError::Config` naming the missing flag when only some of the three are given.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, NodeError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    "tls-cert"
                } else if key.is_none() {
                    "tls-key"
                } else {
                    "tls-ca"
                };
                Err(NodeError::Config {
                    flag: missing,
                    rule: "TLS needs all three of --tls-cert, --tls-key and --tls-ca".into(),
                })
            }
        }
    }

    /// Reads `--cluster-secret-file` into the cluster secret (its first line, without the
    /// line ending). Does nothing without the flag.
    ///
    /// # Errors
    /// `NodeError::Config` on `cluster-secret-file` when the file cannot be read or its first
    /// line is empty.
    pub fn load_cluster_secret_file(&mut self) -> Result<(), NodeError> {
        let Some(path) = &self.cluster_secret_file else {
            return Ok(());
        };
        let invalid = |rule: String| NodeError::Config {
            flag: "cluster-secret-file",
            rule,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| invalid(format!("cannot read {}: {error}", path.display())))?;
        let secret = text.lines().next().unwrap_or_default().trim_end();
        if secret.is_empty() {
            return Err(invalid(format!(
                "{}: the first line is empty",
                path.display()
            )));
        }
        self.cluster_secret = Some(secret.to_owned());
        Ok(())
    }

    /// The database file: `--db-file`, or `jochat-data/node-<id>.db`.
    pub fn db_path(&self) -> PathBuf {
        self.db_file.clone().unwrap_or_else(|| {
            PathBuf::from(DATA_DIR_DEFAULT).join(format!("node-{}.db", self.server_id))
        })
    }

    /// How fast snapshot files are written, in bytes a second (`None`: unbounded).
    pub fn snapshot_rate(&self) -> Option<u64> {
        (self.snapshot_rate_mib > 0).then(|| self.snapshot_rate_mib * 1024 * 1024)
    }

    /// The store's part of the configuration.
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            path: self.db_path(),
            read_pool_size: self.read_pool_size,
        }
    }

    /// openraft's configuration from the flags.
    ///
    /// # Errors
    /// `NodeError::Config` naming the flag when openraft refuses the combination.
    pub fn raft_config(&self) -> Result<openraft::Config, NodeError> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_ms {
            return Err(NodeError::Config {
                flag: "heartbeat-ms",
                rule: "must be positive and below --election-timeout-ms".into(),
            });
        }
        // Elections are triggered by `raft::election`, staggered by id there; openraft's own
        // timer is off. Its `election_timeout_max` is the leader lease every follower keeps:
        // it refuses to vote for that long after it last heard its leader.
        openraft::Config {
            cluster_name: "jochat".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms + 1,
            enable_elect: false,
            // One chunk of a snapshot, and installing the last one (which replaces the chat
            // tables in one transaction), may take far longer than openraft's 200 ms default
            // on a large database; a chunk that times out is sent again, forever.
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            // The bound `crate::raft::RAFT_MESSAGE_BYTES_MAX` is computed from.
            max_payload_entries: crate::raft::PAYLOAD_ENTRIES_MAX,
            // `raft::snapshots::run` decides when (by entries and by size).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Config {
            flag: "election-timeout-ms",
            rule: e.to_string(),
        })
    }

    /// How long a session lasts.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototype_spellings_are_accepted() {
        let config = NodeConfig::try_parse_from([
            "jochat-node",
            "--server_id",
            "2",
            "--port",
            "5002",
            "--db_file=test/chat2.db",
            "--peers",
            "1:127.0.0.1:5001",
        ])
        .expect("the prototype's command line parses");
        assert_eq!(config.server_id, 2);
        assert_eq!(config.db_path(), PathBuf::from("test/chat2.db"));
        assert_eq!(
            config.peers,
            vec![Peer {
                id: 1,
                address: "127.0.0.1:5001".into()
            }]
        );
        config.validate().expect("valid");
    }

    #[test]
    fn defaults_serve_on_5001_under_the_data_folder() {
        let config = NodeConfig::default();
        assert_eq!(
            config.listen_address().unwrap().to_string(),
            "127.0.0.1:5001"
        );
        assert_eq!(config.db_path(), PathBuf::from("jochat-data/node-1.db"));
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn the_socket_flags_parse_and_the_socket_port_differs_from_grpcs() {
        let config = NodeConfig::try_parse_from([
            "jochat-node",
            "--socket_port",
            "5555",
            "--socket-protocol",
            "json",
            "--allow-anonymous-reset",
        ])
        .expect("the flags parse");
        assert_eq!(config.socket_port, Some(5555));
        assert_eq!(config.socket_protocol, SocketProtocol::Json);
        assert!(config.allow_anonymous_reset);
        config.validate().expect("valid");
        let clash = NodeConfig {
            socket_port: Some(5001),
            ..NodeConfig::default()
        };
        let error = clash.validate().expect_err("the gRPC port");
        assert!(
            error.to_string().starts_with("--socket-port: must differ"),
            "{error}"
        );
        assert!(
            NodeConfig::try_parse_from(["jochat-node", "--socket-protocol", "binary"]).is_err()
        );
    }

    #[test]
    fn openraft_keeps_the_lease_and_leaves_elections_to_jochat() {
        let config = NodeConfig {
            election_timeout_ms: 200,
            heartbeat_ms: 40,
            ..NodeConfig::default()
        }
        .raft_config()
        .unwrap();
        assert!(!config.enable_elect, "raft::election triggers elections");
        assert_eq!(config.heartbeat_interval, 40);
        assert_eq!(
            config.election_timeout_max, 201,
            "the lease every follower keeps"
        );
        assert!(config.install_snapshot_timeout >= 10_000);
    }

    #[test]
    fn the_advertised_address_is_the_flag_else_the_bound_one_and_never_unspecified() {
        let bound: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let config = NodeConfig::default();
        assert_eq!(config.advertised_address(bound).unwrap(), "127.0.0.1:5001");

        let everywhere: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let error = config
            .advertised_address(everywhere)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--advertise-addr: required"), "{error}");
        let everywhere6: SocketAddr = "[::]:5001".parse().unwrap();
        assert!(config.advertised_address(everywhere6).is_err());

        let config = NodeConfig {
            advertise_addr: Some("node-1.chat.internal:5001".into()),
            ..NodeConfig::default()
        };
        assert_eq!(
            config.advertised_address(everywhere).unwrap(),
            "node-1.chat.internal:5001"
        );
        config
            .validate()
            .expect("a DNS name with a port is a valid advertise address");
        for bad in [
            "node-1",
            "node-1:0",
            "http://node-1:5001",
            "no such host:5001",
            ":5001",
        ] {
            let config = NodeConfig {
                advertise_addr: Some(bad.into()),
                ..NodeConfig::default()
            };
            let error = config.validate().unwrap_err().to_string();
            assert!(error.starts_with("--advertise-addr: "), "{bad}: {error}");
        }
    }

    #[test]
    fn host_names_are_resolved_and_nonsense_is_refused() {
        let config = NodeConfig {
            host: "localhost".into(),
            ..NodeConfig::default()
        };
        assert!(config.listen_address().unwrap().ip().is_loopback());
        let config = NodeConfig {
            host: "no_such_host!".into(),
            ..NodeConfig::default()
        };
        let error = config.listen_address().unwrap_err().to_string();
        assert!(error.starts_with("--host: "), "{error}");
    }

    #[test]
    fn a_non_loopback_bind_needs_tls_a_secret_or_insecure() {
        let open = NodeConfig {
            host: "0.0.0.0".into(),
            advertise_addr: Some("10.0.0.5:5001".into()),
            ..NodeConfig::default()
        };
        let error = open.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("--host: ")
                && error.contains("--tls-cert")
                && error.contains("--cluster-secret-file")
                && error.contains("--insecure"),
            "{error}"
        );
        NodeConfig {
            cluster_secret: Some("s3cret".into()),
            ..open.clone()
        }
        .validate()
        .expect("a cluster secret is enough");
        NodeConfig {
            tls_cert: Some("node.crt".into()),
            tls_key: Some("node.key".into()),
            tls_ca: Some("ca.crt".into()),
            ..open.clone()
        }
        .validate()
        .expect("TLS is enough");
        NodeConfig {
            insecure: true,
            ..open
        }
        .validate()
        .expect("--insecure is an explicit choice");
    }

    #[test]
    fn tls_takes_all_three_files_or_none() {
        let partial = NodeConfig {
            tls_cert: Some("node.crt".into()),
            tls_ca: Some("ca.crt".into()),
            ..NodeConfig::default()
        };
        let error = partial.validate().unwrap_err().to_string();
        assert!(error.starts_with("--tls-key: "), "{error}");
        let parsed = NodeConfig::try_parse_from(["jochat-node", "--tls-cert", "node.crt"]);
        assert!(parsed.is_err(), "clap refuses --tls-cert alone");
        assert_eq!(NodeConfig::default().tls_files().unwrap(), None);
    }

    #[test]
    fn the_secret_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        let mut config = NodeConfig {
            cluster_secret_file: Some(path.clone()),
            ..NodeConfig::default()
        };
        config.load_cluster_secret_file().unwrap();
        assert_eq!(config.cluster_secret.as_deref(), Some("s3cret"));

        std::fs::write(&path, "\n").unwrap();
        let error = config.load_cluster_secret_file().unwrap_err().to_string();
        assert!(error.starts_with("--cluster-secret-file: "), "{error}");
        let mut missing = NodeConfig {
            cluster_secret_file: Some(dir.path().join("missing")),
            ..NodeConfig::default()
        };
        let error = missing.load_cluster_secret_file().unwrap_err().to_string();
        assert!(error.contains("cannot read"), "{error}");
        assert!(NodeConfig::try_parse_from([
            "jochat-node",
            "--cluster-secret",
            "a",
            "--cluster-secret-file",
            "b"
        ])
        .is_err());
    }

    #[test]
    fn one_runtime_thread_is_a_current_thread_runtime_and_more_are_workers() {
        let flavor = |threads: &str| {
            let config = NodeConfig::try_parse_from(["jochat-node", "--runtime-threads", threads])
                .expect("the flag parses");
            config.validate().expect("within bounds");
            let runtime = config.runtime().expect("the runtime starts");
            let workers = runtime.metrics().num_workers();
            (runtime.handle().runtime_flavor(), workers)
        };
        assert_eq!(
            NodeConfig::default().runtime_threads,
            1,
            "one thread by default"
        );
        assert_eq!(
            flavor("1"),
            (tokio::runtime::RuntimeFlavor::CurrentThread, 1)
        );
        assert_eq!(flavor("3"), (tokio::runtime::RuntimeFlavor::MultiThread, 3));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let config = NodeConfig {
            content_bytes_max: 0,
            ..NodeConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--content-bytes-max: "));
        let config = NodeConfig {
            host: "not a host".into(),
            ..NodeConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--host: "));
        for (config, flag) in [
            (
                NodeConfig {
                    snapshot_threshold: 0,
                    ..NodeConfig::default()
                },
                "--snapshot-threshold: ",
            ),
            (
                NodeConfig {
                    snapshot_rate_mib: 1 << 21,
                    ..NodeConfig::default()
                },
                "--snapshot-rate-mib: ",
            ),
            (
                NodeConfig {
                    connections_max: 7,
                    ..NodeConfig::default()
                },
                "--connections-max: ",
            ),
            (
                NodeConfig {
                    subscribers_max: 0,
                    ..NodeConfig::default()
                },
                "--subscribers-max: ",
            ),
            (
                NodeConfig {
                    subscriber_buffer: SUBSCRIBER_BUFFER_LIMIT + 1,
                    ..NodeConfig::default()
                },
                "--subscriber-buffer: ",
            ),
            (
                NodeConfig {
                    runtime_threads: 0,
                    ..NodeConfig::default()
                },
                "--runtime-threads: ",
            ),
            (
                NodeConfig {
                    runtime_threads: RUNTIME_THREADS_LIMIT + 1,
                    ..NodeConfig::default()
                },
                "--runtime-threads: ",
            ),
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.starts_with(flag), "{error}");
        }
        assert_eq!(NodeConfig::default().snapshot_rate(), Some(32 << 20));
        let unbounded = NodeConfig {
            snapshot_rate_mib: 0,
            ..NodeConfig::default()
        };
        assert_eq!(unbounded.snapshot_rate(), None);
        assert!("x:1:2".parse::<Peer>().is_err());
        assert!("1:host".parse::<Peer>().is_err());
        assert!("0:h:1".parse::<Peer>().is_err());
    }
}
