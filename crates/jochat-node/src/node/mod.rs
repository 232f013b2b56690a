//! [`Node`]: the chat operations as a node performs them.
//!
//! Each operation lives in a file of its own under [`ops`]: it checks its raw inputs into
//! `jochat-core`'s validated types, decides everything random or time-dependent (the time,
//! the argon2id hash, the session token), and then either submits one
//! [`Operation`](jochat_core::Operation) through [`Node::write`], which returns that
//! operation's own output type, or runs a query through [`Node::read`], which decides the
//! read's consistency in one place. The gRPC services are thin adapters over these methods;
//! no operation is implemented twice.
//!
//! # Layout
//!
//! - `mod.rs` (here): [`Node`], its start and stop, and the two paths every operation takes
//!   ([`Node::write`], [`Node::read`]).
//! - [`cluster`]: forming or joining a cluster at start-up, and [`ClusterView`].
//! - [`import`]: starting on the prototype's database file (importing or setting it aside).
//! - [`backup`]: backup copies on the leader, and restoring one (`--restore`).
//! - [`ops`]: one file per operation.

pub mod backup;
pub mod cluster;
pub mod forward;
pub mod import;
pub mod ops;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jochat_core::command::{Command, Outcome};
use jochat_core::store::{ChatRead, UserRecord};
use jochat_core::types::*;
use jochat_core::{ChatError, Operation};

use crate::auth::{Hasher, LoginLimiter};
use crate::config::NodeConfig;
use crate::disk::DiskGuard;
use crate::error::NodeError;
use crate::events::Events;
use crate::proposer::Proposer;
use crate::raft::commit_gate::CommitGate;
use crate::raft::election::{self, ElectionSettings, LeaderContact};
use crate::raft::faults::{Faults, StorageFault};
use crate::raft::network::{NetworkFactory, PeerDialer};
use crate::raft::state_check::{StateAlarms, StateCheck};
use crate::raft::storage::StateHasher;
use crate::raft::{self, TypeConfig};
use crate::reads::ReadRounds;
use crate::store::{Database, SqliteChat};

pub use cluster::{leader_seen_by, ClusterView, MemberView};
pub use ops::{Fetched, LoggedIn};

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began: served by the leader after
    /// it confirms its leadership with a majority (a follower answers NOT-LEADER).
    Linearizable,
    /// Whatever this node has applied, on any node; may miss recent writes.
    Stale,
}

/// One node's chat operations.
pub struct Node {
    config: NodeConfig,
    /// What peers and clients are told to call this node at (`--advertise-addr`).
    address: String,
    db: Arc<Database>,
    raft: openraft::Raft<TypeConfig>,
    /// The background join, while this node is joining a cluster. A std mutex: only taken to
    /// abort the task at shutdown.
    joining: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The election timer, stopped at shutdown.
    elections: tokio::task::JoinHandle<()>,
    /// Gives memory back when the node goes quiet (`crate::idle`), stopped at shutdown.
    idle: tokio::task::JoinHandle<()>,
    /// Asks Raft for a snapshot when one is due (`raft::snapshots`), stopped at shutdown.
    snapshots: tokio::task::JoinHandle<()>,
    /// Gathers concurrent writes into shared log entries.
    proposer: Proposer,
    /// When this node last heard a leader; the peer-side Raft service touches it.
    contact: LeaderContact,
    /// What the state machine applies, for subscribers.
    events: Events,
    /// Set once the node starts stopping: subscriptions end so the server can drain.
    stopping: tokio::sync::watch::Sender<bool>,
    hasher: Hasher,
    limiter: LoginLimiter,
    /// Shares leadership confirmations among concurrent linearizable reads.
    read_rounds: ReadRounds,
    /// One permit per live subscription (`--subscribers-max`).
    subscribers: Arc<tokio::sync::Semaphore>,
    /// The free space of the data folder (`--min-free-disk-mb`).
    disk: Arc<DiskGuard>,
    /// Hashes the chat tables at a chosen index (the state check, `StateHash`).
    state_hasher: StateHasher,
    /// State alarms: this node's own, and what it found leading.
    alarms: StateAlarms,
    /// The periodic state check (`--state-check-secs`), stopped at shutdown.
    state_check: Option<tokio::task::JoinHandle<()>>,
    /// This node's metrics (`--metrics-addr`).
    metrics: Arc<crate::metrics::Metrics>,
    /// Counts leader changes and follows the term as they happen, stopped at shutdown.
    metrics_watch: tokio::task::JoinHandle<()>,
    /// Sends a heartbeat whenever the commit gate held back a commit index that may now go
    /// out (`raft::commit_gate`).
    commit_releases: tokio::task::JoinHandle<()>,
    /// Paces this node's applies while it follows; hurried by whatever waits for an index.
    apply_pace: Arc<raft::storage::ApplyPace>,
    /// The log store, closed after Raft has shut down.
    storage: raft::storage::LogStore,
    /// When snapshots were made and how large the last one is (for the metrics).
    snapshot_gauge: Arc<raft::snapshots::SnapshotGauge>,
    /// How this node calls its peers (forwarding to the leader uses it).
    dialer: PeerDialer,
    /// The connection to the leader that forwarded requests use, with the leader's address.
    leader_link: std::sync::Mutex<
        Option<(
            String,
            jochat_proto::internal::v1::raft_client::RaftClient<tonic::transport::Channel>,
        )>,
    >,
    /// Imported state not yet published as the cluster's first snapshot
    /// ([`Node::publish_seed`]), with the log store that records it.
    seed: std::sync::Mutex<Option<(raft::storage::Seed, raft::storage::LogStore)>>,
}

/// Gives the SQLite caches and the allocator's free memory back each time the node goes
/// quiet: no write run and no read started for a while (`crate::idle`).
async fn release_when_idle(log: raft::storage::LogStore, db: Arc<Database>) {
    let activity = {
        let (log, db) = (log.clone(), Arc::clone(&db));
        move || log.write_activity().wrapping_add(db.read_activity())
    };
    crate::idle::run(activity, move || {
        let (log, db) = (log.clone(), Arc::clone(&db));
        async move {
            if let Err(error) = log.release_memory().await {
                tracing::debug!(%error, "the log's caches were not released");
            }
            if let Err(error) = db.release_memory().await {
                tracing::debug!(%error, "the read pool's caches were not released");
            }
            crate::idle::trim_heap();
        }
    })
    .await;
}

/// `--rebuild`: renames the database file and what goes with it (`-wal`, `-shm`, the
/// snapshots and log folders) to `<name>.rebuilt-<unix seconds>`, keeping them for inspection.
fn set_aside(db: &std::path::Path) -> Result<(), NodeError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let name = db.display().to_string();
    for companion in ["", "-wal", "-shm", ".snapshots", ".log"] {
        let from = std::path::PathBuf::from(format!("{name}{companion}"));
        if from.exists() {
            let to = std::path::PathBuf::from(format!("{name}{companion}.rebuilt-{stamp}"));
            std::fs::rename(&from, &to)?;
            tracing::warn!(from = %from.display(), to = %to.display(), "--rebuild: set aside");
        }
    }
    Ok(())
}

/// How long a write or a linearizable read may wait for a majority before it is answered
/// "no quorum": four election timeouts, at least two seconds.
fn quorum_deadline(config: &NodeConfig) -> std::time::Duration {
    std::time::Duration::from_millis((config.election_timeout_ms * 4).max(2_000))
}

fn session_digest(token: &str) -> Result<TokenDigest, NodeError> {
    if token.is_empty() {
        return Err(ChatError::unauthenticated(
            "missing session token: send `authorization: Bearer <token>`",
        )
        .into());
    }
    Ok(SessionToken::parse(token)?.digest())
}

impl Node {
    /// Opens the node's database and starts Raft. `address` is where clients reach it;
    /// `faults` is the fault layer its peer calls obey ([`Faults::none`] outside tests).
    ///
    /// # Errors
    /// The database cannot be opened or migrated, or Raft cannot start.
    pub async fn start(
        config: NodeConfig,
        address: String,
        dialer: PeerDialer,
        faults: Faults,
    ) -> Result<Self, NodeError> {
        if config.rebuild {
            cluster::leave_for_rebuild(&config, &dialer).await?;
            set_aside(&config.db_path())?;
        }
        backup::restore_backup(&config)?;
        // A damaged file is refused before anything reads or writes it.
        match crate::store::integrity::check(
            &config.db_path(),
            std::time::Duration::from_secs(config.startup_check_secs),
        )? {
            crate::store::integrity::Verdict::Sound => {
                tracing::info!(db = %config.db_path().display(), "the database file passed its start-up check");
            }
            crate::store::integrity::Verdict::Absent
            | crate::store::integrity::Verdict::Partial => {}
        }
        // The prototype's file (its run command, unchanged) is imported or set aside.
        let hasher = Hasher::new();
        import::take_over_prototype_file(&config, &dialer, &hasher).await?;
        // Raft's storage opens (and migrates) the file first; the read pool then joins it.
        let (log, state_machine) =
            raft::storage::open_with(&config.db_path(), config.sync_mode, config.snapshot_rate())?;
        faults.register_storage(config.server_id, {
            let log = log.clone();
            Arc::new(move |fault| match fault {
                StorageFault::Fail => log.fail_next_write(),
                StorageFault::Stall(pause) => log.stall_next_write(pause),
                StorageFault::StallLazy(pause) => log.stall_next_lazy_commit(pause),
            })
        });
        // The leader's own appends replicate while its writer syncs them.
        let commit_gate = log.gate_commits(config.server_id);
        let apply_pace = log.apply_pace();
        let storage = log.clone();
        let seed = log
            .seed()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
            .map(|seed| (seed, log.clone()));
        let events = state_machine.events();
        let state_hasher = state_machine.hasher();
        let snapshot_gauge = state_machine.snapshot_gauge();
        let metrics = Arc::new(crate::metrics::Metrics::new(&log.stats()));
        if config.force_new_cluster {
            let changed = log
                .force_sole_member(config.server_id, address.clone())
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            if changed {
                tracing::warn!(
                    "--force-new-cluster: this node is now the only member of its cluster, \
                     with the data in its file; never restart the old members on their old \
                     files, and remove the flag"
                );
            } else {
                tracing::warn!(
                    "--force-new-cluster: nothing to do (no state, or already the only member)"
                );
            }
        }
        let disk = Arc::new(DiskGuard::new(
            config.server_id,
            &config.db_path(),
            config.min_free_disk_mb,
        ));
        let db = Arc::new(Database::open(&config.store())?.gated_by(state_machine.visibility()));
        let idle = tokio::spawn(release_when_idle(log.clone(), Arc::clone(&db)));
        let raft = openraft::Raft::new(
            config.server_id,
            Arc::new(config.raft_config()?),
            NetworkFactory::new(config.server_id, dialer.clone(), faults.clone())
                .with_commit_gate(Arc::clone(&commit_gate)),
            log,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let joining =
            cluster::bootstrap_or_join(&config, &address, &dialer, &raft, seed.is_some()).await?;
        let limiter = LoginLimiter::new(
            config.login_failures_max,
            std::time::Duration::from_secs(config.login_lockout_secs),
        );
        let contact = LeaderContact::new();
        let elections = tokio::spawn(election::run(
            raft.clone(),
            contact.clone(),
            ElectionSettings {
                id: config.server_id,
                election_timeout_ms: config.election_timeout_ms,
                heartbeat_ms: config.heartbeat_ms,
                dialer: dialer.clone(),
                faults: faults.clone(),
            },
        ));
        let alarms = StateAlarms::default();
        let state_check = (config.state_check_secs > 0).then(|| {
            tokio::spawn(raft::state_check::run(
                StateCheck {
                    id: config.server_id,
                    raft: raft.clone(),
                    hasher: state_hasher.clone(),
                    alarms: alarms.clone(),
                    dialer: dialer.clone(),
                    faults: faults.clone(),
                },
                std::time::Duration::from_secs(config.state_check_secs),
            ))
        });
        let snapshots = tokio::spawn(raft::snapshots::run(
            raft.clone(),
            Arc::clone(&snapshot_gauge),
            raft::snapshots::SnapshotRule::for_node(config.server_id, config.snapshot_threshold),
        ));
        let proposer = Proposer::start(
            raft.clone(),
            quorum_deadline(&config),
            metrics.write_batch_commands.clone(),
        );
        let metrics_watch = tokio::spawn(watch_leadership(raft.clone(), Arc::clone(&metrics)));
        let commit_releases = tokio::spawn(announce_commits(raft.clone(), commit_gate));
        let subscribers = Arc::new(tokio::sync::Semaphore::new(config.subscribers_max));
        Ok(Self {
            config,
            address,
            db,
            raft,
            joining: std::sync::Mutex::new(joining),
            elections,
            idle,
            snapshots,
            proposer,
            contact,
            events,
            stopping: tokio::sync::watch::Sender::new(false),
            hasher,
            limiter,
            read_rounds: ReadRounds::default(),
            subscribers,
            disk,
            state_hasher,
            alarms,
            state_check,
            seed: std::sync::Mutex::new(seed),
            dialer,
            leader_link: std::sync::Mutex::new(None),
            metrics,
            metrics_watch,
            commit_releases,
            apply_pace,
            storage,
            snapshot_gauge,
        })
    }

    /// Publishes seeded state (imported or restored, a [`Seed`](raft::storage::Seed)) as the first snapshot of
    /// the cluster this node formed with it, before the node serves: waits until it leads,
    /// snapshots everything applied, purges the log below it (so a joining node can only
    /// start from the snapshot, never replay the log without the state), then forgets the
    /// seed. Nothing to do for a node without one.
    ///
    /// # Errors
    /// `Raft` when a step does not complete within `timeout`; the seed cannot be cleared.
    pub async fn publish_seed(&self, timeout: std::time::Duration) -> Result<(), NodeError> {
        let seed = self
            .seed
            .lock()
            .expect("the seed's mutex is never held across a panic")
            .take();
        let Some((seed, log)) = seed else {
            return Ok(());
        };
        let failed = |e: &dyn std::fmt::Display| {
            NodeError::Raft(format!("publishing the seeded state: {e}"))
        };
        let id = self.config.server_id;
        self.raft
            .wait(Some(timeout))
            .current_leader(id, "this node leads the cluster it formed")
            .await
            .map_err(|e| failed(&e))?;
        let last = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(last, "the log is applied")
            .await
            .map_err(|e| failed(&e))?;
        let index = last.unwrap_or(0);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| failed(&e))?;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= index),
                "the seeded state is in a snapshot",
            )
            .await
            .map_err(|e| failed(&e))?;
        self.raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| failed(&e))?;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= index),
                "the log below the snapshot is purged",
            )
            .await
            .map_err(|e| failed(&e))?;
        log.clear_seed().await.map_err(|e| failed(&e))?;
        tracing::info!(
            source = %seed.source,
            accounts = seed.users,
            messages = seed.messages,
            snapshot_index = index,
            "the seeded state (imported or restored) is the cluster's first snapshot; joining nodes receive it"
        );
        Ok(())
    }

    /// Whether this node would serve a linearizable read now (`/readyz`): it leads, a
    /// majority answered it within two election timeouts, it is not stopping and its state
    /// is not flagged as diverged. Otherwise why not.
    ///
    /// # Errors
    /// The reason, in words.
    pub fn ready(&self) -> Result<(), String> {
        if *self.stopping.borrow() {
            return Err("the node is shutting down".into());
        }
        if let Some(alarm) = self.alarms.own() {
            return Err(format!(
                "the node's state differs from the cluster's: {alarm}"
            ));
        }
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Err(match metrics.current_leader {
                Some(leader) => format!("not the leader (node {leader} leads)"),
                None => "no leader is known".into(),
            });
        }
        let silent_ms = metrics.millis_since_quorum_ack.unwrap_or(u64::MAX);
        if silent_ms > self.config.election_timeout_ms * 2 {
            return Err(format!("no majority has answered for {silent_ms} ms"));
        }
        Ok(())
    }

    /// Whether this node serves its part of the cluster now (the gRPC health service): it is
    /// a voter (not a learner still catching up after a join), it is not stopping, and it
    /// is in touch with a majority: as leader, a majority answered within two election
    /// timeouts; as follower, it heard a leader within two election timeouts. Otherwise why
    /// not.
    ///
    /// # Errors
    /// The reason, in words.
    pub fn serving(&self) -> Result<(), String> {
        if *self.stopping.borrow() {
            return Err("the node is shutting down".into());
        }
        let metrics = self.raft.metrics().borrow().clone();
        let limit_ms = self.config.election_timeout_ms * 2;
        let is_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == metrics.id);
        if !is_voter {
            return Err("not a voter yet: still joining or catching up".into());
        }
        if metrics.current_leader == Some(metrics.id) {
            let silent_ms = metrics.millis_since_quorum_ack.unwrap_or(u64::MAX);
            if silent_ms > limit_ms {
                return Err(format!("no majority has answered for {silent_ms} ms"));
            }
            return Ok(());
        }
        let silent = self.contact.since_leader();
        if metrics.current_leader.is_none() || silent.as_millis() > u128::from(limit_ms) {
            return Err(format!("no leader heard for {} ms", silent.as_millis()));
        }
        Ok(())
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Brings the metrics that describe a state up to date (Raft's indexes and lag, the
    /// files, sessions, subscribers, the process): called when they are scraped.
    pub async fn refresh_metrics(&self) {
        let m = &self.metrics;
        let raft = self.raft.metrics().borrow().clone();
        let to_gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let leads = raft.current_leader == Some(raft.id);
        m.raft_term.set(to_gauge(raft.current_term));
        m.raft_is_leader.set(i64::from(leads));
        let applied = raft.last_applied.map_or(0, |id| id.index);
        let last = raft.last_log_index.unwrap_or(0);
        m.raft_applied_index.set(to_gauge(applied));
        m.raft_replication_lag.clear();
        let mut commit = applied;
        if let (true, Some(replication)) = (leads, raft.replication.as_ref()) {
            let membership = raft.membership_config.membership();
            let mut matched: Vec<u64> = membership
                .voter_ids()
                .map(|id| {
                    if id == raft.id {
                        last
                    } else {
                        replication
                            .get(&id)
                            .copied()
                            .flatten()
                            .map_or(0, |log_id| log_id.index)
                    }
                })
                .collect();
            matched.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&majority) = matched.get(matched.len() / 2) {
                commit = majority.max(applied);
            }
            for (peer, log_id) in replication.iter().filter(|(peer, _)| **peer != raft.id) {
                let lag = last.saturating_sub(log_id.map_or(0, |id| id.index));
                m.raft_replication_lag
                    .get_or_create(&crate::metrics::PeerLabels {
                        peer: peer.to_string(),
                    })
                    .set(to_gauge(lag));
            }
        }
        m.raft_commit_index.set(to_gauge(commit));
        let first_live = raft.purged.map_or(0, |id| id.index + 1);
        let entries = raft
            .last_log_index
            .map_or(0, |last| (last + 1).saturating_sub(first_live));
        m.log_entries.set(to_gauge(entries));
        m.snapshot_last_bytes
            .set(to_gauge(self.snapshot_gauge.snapshot_file_bytes()));
        let builds = self.snapshot_gauge.builds_started();
        m.snapshot_builds
            .inc_by(builds.saturating_sub(m.snapshot_builds.get()));
        let db = self.config.db_path();
        let file_bytes = |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |f| f.len());
        let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
        m.db_bytes.set(to_gauge(file_bytes(db) + file_bytes(wal)));
        let free = self.subscribers.available_permits();
        m.subscribers.set(to_gauge(
            self.config.subscribers_max.saturating_sub(free) as u64
        ));
        let now = now_ms();
        match self
            .db
            .read(move |store| Ok(store.live_sessions(now)?))
            .await
        {
            Ok(live) => {
                m.sessions_active.set(to_gauge(live));
            }
            Err(error) => tracing::debug!(%error, "sessions were not counted for the metrics"),
        }
        m.refresh_process();
    }

    /// Hashes this node's chat tables at a chosen applied index.
    pub fn state_hasher(&self) -> &StateHasher {
        &self.state_hasher
    }

    /// This node's state alarms.
    pub fn state_alarms(&self) -> &StateAlarms {
        &self.alarms
    }

    /// Completes when this node's Raft core stops on its own (a storage fault: a failed write
    /// or fsync of the log or the database), with why. Never completes while it runs.
    pub async fn core_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core ended".to_owned();
            }
        }
    }

    /// The space guard of this node's data folder.
    pub fn disk(&self) -> &Arc<DiskGuard> {
        &self.disk
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.server_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's Raft instance.
    pub fn raft(&self) -> &openraft::Raft<TypeConfig> {
        &self.raft
    }

    /// When this node last heard a leader (the election timer's clock).
    pub fn leader_contact(&self) -> &LeaderContact {
        &self.contact
    }

    /// Whether this node leads its cluster now, as far as it knows.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader == Some(metrics.id)
    }

    /// Tells long-lived calls (subscriptions) that the node is stopping, so that they end
    /// and the server can finish.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Becomes true once the node starts stopping.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// The channel the state machine publishes applied messages and session changes on.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// A place for one more live subscription, held until it ends.
    ///
    /// # Errors
    /// `Overloaded` when `--subscribers-max` subscriptions are live already.
    pub(crate) fn subscriber_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, NodeError> {
        Arc::clone(&self.subscribers)
            .try_acquire_owned()
            .map_err(|_| {
                NodeError::Overloaded(format!(
                    "{} subscriptions are live on this node already (--subscribers-max); \
                     subscribe to another node or later",
                    self.config.subscribers_max
                ))
            })
    }

    /// The node's database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Replicates `operation` through Raft (in an entry shared with the commands submitted
    /// at the same time, see [`crate::proposer`]) and returns its output once it is
    /// committed and applied here. The command's time is read here, once.
    ///
    /// # Errors
    /// The rule the operation broke; `NoQuorum`, `NotLeader`, `ShuttingDown`, `Raft`.
    pub(crate) async fn write<O: Operation>(
        &self,
        idempotency_key: Option<IdempotencyKey>,
        operation: O,
    ) -> Result<O::Output, NodeError> {
        let command = Command {
            at_ms: now_ms(),
            idempotency_key,
            action: operation.into(),
        };
        let outcome = if forward::forwards() {
            self.forward_write(command).await?
        } else {
            self.propose(command).await?
        };
        // Applying a command always yields its own kind's outcome (`jochat_core::apply`
        // dispatches each action to its operation), and a retry replays an outcome only
        // for the same kind; another kind here would be a bug in that dispatch.
        O::from_outcome(outcome).map_err(|other| {
            NodeError::Task(format!(
                "the state machine answered a command with another kind's outcome: {other:?}"
            ))
        })
    }

    /// Hands `command` to Raft through the proposer (NOT-LEADER on a follower).
    ///
    /// # Errors
    /// As [`Node::write`].
    pub(crate) async fn propose(&self, command: Command) -> Result<Outcome, NodeError> {
        self.check_quorum()?;
        // A follower sends writes on to the leader, whose disk is the one that matters.
        if self.is_leader() {
            self.disk.check()?;
        }
        self.proposer.submit(command).await
    }

    /// Runs `query` on a pooled read connection, inside one read transaction, after making
    /// the read as fresh as `consistency` asks: for [`Consistency::Linearizable`], this node
    /// confirms with a majority that it still leads and waits until everything committed
    /// before is applied here (concurrent reads share confirmations, [`ReadRounds`]).
    ///
    /// # Errors
    /// `NotLeader` on a follower and `NoQuorum` when no majority confirms in time (both for
    /// linearizable reads only); what `query` returns.
    pub(crate) async fn read<T, F>(
        &self,
        consistency: Consistency,
        query: F,
    ) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteChat<'_>) -> Result<T, ChatError> + Send + 'static,
    {
        if let Some(alarm) = self.alarms.own() {
            return Err(NodeError::Diverged(alarm));
        }
        match consistency {
            Consistency::Stale => {}
            Consistency::Linearizable if forward::forwards() => self.catch_up().await?,
            Consistency::Linearizable => {
                self.check_quorum()?;
                self.read_rounds
                    .confirm(&self.raft, self.quorum_deadline())
                    .await?;
            }
        }
        self.db.read(query).await
    }

    fn quorum_deadline(&self) -> std::time::Duration {
        quorum_deadline(&self.config)
    }

    /// For writes that check local state before they submit (a password, a name taken),
    /// which a follower may not have applied yet and would judge wrongly: on the leader,
    /// nothing to do; inside [`Node::forwarding`], this node catches up with the leader
    /// first; otherwise a follower refuses at once with NOT-LEADER.
    ///
    /// # Errors
    /// `NotLeader`; what catching up fails with.
    async fn require_current(&self) -> Result<(), NodeError> {
        if self.is_leader() {
            return Ok(());
        }
        if forward::forwards() {
            return self.catch_up().await;
        }
        self.refuse_unless_leader()
    }

    /// Refuses at once with NOT-LEADER (naming the leader when known) unless this node
    /// leads.
    fn refuse_unless_leader(&self) -> Result<(), NodeError> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader == Some(metrics.id) {
            return Ok(());
        }
        let leader_address = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|node| node.addr.clone())
        });
        Err(NodeError::NotLeader {
            leader_id: metrics.current_leader,
            leader_address,
        })
    }

    /// Refuses at once, before anything is submitted, when this node leads but has not heard
    /// from a majority for longer than an election timeout.
    fn check_quorum(&self) -> Result<(), NodeError> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let silent_ms = metrics.millis_since_quorum_ack.unwrap_or(0);
        let limit_ms = self.config.election_timeout_ms * 2;
        if metrics.current_leader == Some(metrics.id) && silent_ms > limit_ms {
            return Err(NodeError::NoQuorum(format!(
                "no majority of the cluster has answered for {silent_ms} ms; the write was not made"
            )));
        }
        Ok(())
    }

    /// Whether an outcome is remembered under `key` here: the request is then a retry, and
    /// its command will replay that outcome (to the same caller only) instead of applying
    /// again. A local read: the state machine decides authoritatively.
    async fn is_remembered(&self, key: &Option<IdempotencyKey>) -> Result<bool, NodeError> {
        let Some(key) = key.clone() else {
            return Ok(false);
        };
        self.read(Consistency::Stale, move |store| {
            Ok(store.remembered(&key)?.is_some())
        })
        .await
    }

    /// The account behind `token`, now, as this node has applied it. A follower may not
    /// have applied a log-in the leader has just acknowledged (clients log in on the leader
    /// and then read from, or subscribe on, any node), so a follower that does not accept
    /// the token first catches up with the leader's applied index, for at most two election
    /// timeouts, and asks again.
    ///
    /// # Errors
    /// `Unauthenticated` for a missing, malformed, unknown, revoked or expired token.
    pub async fn authenticate(&self, token: &str) -> Result<UserRecord, NodeError> {
        let digest = session_digest(token)?;
        let check = |digest: TokenDigest| {
            let now = now_ms();
            self.read(Consistency::Stale, move |store| {
                jochat_core::query::authenticate_digest(store, &digest, now)
            })
        };
        let refused = match check(digest.clone()).await {
            Err(error) if error.is_unauthenticated() && !self.is_leader() => error,
            other => return other,
        };
        let patience =
            std::time::Duration::from_millis(self.config.election_timeout_ms.saturating_mul(2));
        match tokio::time::timeout(patience, self.catch_up()).await {
            Ok(Ok(())) => check(digest).await,
            Ok(Err(_)) | Err(_) => Err(refused),
        }
    }

    /// Stops taking writes and waits until every accepted one is committed.
    pub async fn close(&self) {
        self.stop_background_tasks();
        if let Err(error) = self.raft.shutdown().await {
            tracing::error!(%error, "raft did not shut down cleanly");
        }
        self.storage.close().await;
    }

    /// Stops the join and election tasks, which hold clones of the Raft handle and would
    /// otherwise keep its core (and its heartbeats) alive, and the idle watcher and snapshot
    /// trigger, which hold the storage and Raft.
    fn stop_background_tasks(&self) {
        let joining = self
            .joining
            .lock()
            .expect("the join handle's mutex is never held across a panic")
            .take();
        if let Some(joining) = joining {
            joining.abort();
        }
        self.elections.abort();
        if let Some(check) = &self.state_check {
            check.abort();
        }
        self.idle.abort();
        self.snapshots.abort();
        self.metrics_watch.abort();
        self.commit_releases.abort();
        self.proposer.stop();
    }
}

impl Drop for Node {
    /// A node dropped without [`Node::close`] (its server failed before serving) still stops
    /// its background tasks, so its Raft core does not live on.
    fn drop(&mut self) {
        self.stop_background_tasks();
    }
}

/// Whenever the commit gate held back the commit index its followers hear and the leader's
/// own copy became durable since, sends a heartbeat so they hear the full one without
/// waiting for the next write or the heartbeat interval. Ends when Raft has stopped.
async fn announce_commits(raft: openraft::Raft<TypeConfig>, gate: Arc<CommitGate>) {
    loop {
        gate.released().await;
        if raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

/// Counts leader changes and keeps the term and leadership gauges current as Raft reports
/// them (a scrape would miss a change that came and went between two scrapes). Raft's server
/// metrics change only with the vote, the role, the leader or the membership, so this task
/// wakes for those and not for every applied entry.
async fn watch_leadership(raft: openraft::Raft<TypeConfig>, metrics: Arc<crate::metrics::Metrics>) {
    let mut reports = raft.server_metrics();
    let mut leader = None;
    loop {
        {
            let report = reports.borrow_and_update();
            if report.current_leader != leader {
                if report.current_leader.is_some() {
                    metrics.raft_leader_changes.inc();
                }
                leader = report.current_leader;
            }
            metrics
                .raft_term
                .set(i64::try_from(report.vote.leader_id.term).unwrap_or(i64::MAX));
            metrics
                .raft_is_leader
                .set(i64::from(report.current_leader == Some(report.id)));
        }
        if reports.changed().await.is_err() {
            return;
        }
    }
}
