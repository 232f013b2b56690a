//! [`Node`]: the chat operations as a node performs them.
//!
//! Each operation checks its raw inputs into `jochat-core`'s validated types, decides
//! everything random or time-dependent (the time, the argon2id hash, the session token), builds
//! a [`Command`] and hands it to the database's writer, or runs a query on a read connection.
//! The gRPC services are thin adapters over these methods; no operation is implemented twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::BasicNode;

use jochat_core::command::{Action, Command, Outcome};
use jochat_core::query::{self, AccountPage, MessagePage};
use jochat_core::store::{ChatRead, MessageRecord, UserRecord};
use jochat_core::types::*;
use jochat_core::{ChatError, Pattern};

use crate::auth::{new_session_token, Hasher, LoginLimiter};
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::events::Events;
use crate::proposer::Proposer;
use crate::raft::election::{self, ElectionSettings, LeaderContact};
use crate::raft::faults::Faults;
use crate::raft::network::NetworkFactory;
use crate::raft::{self, TypeConfig};
use crate::reads::ReadRounds;
use crate::store::Database;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A successful log-in.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The new session's token; only its digest is stored.
    pub token: SessionToken,
    /// The account.
    pub user_id: UserId,
    /// The account's name as given at sign-up.
    pub username: Username,
    /// When the session expires.
    pub expires_at_ms: i64,
    /// Away messages waiting.
    pub unread_count: u64,
}

/// A stored message's id, time and delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The message id.
    pub id: MessageId,
    /// Its timestamp.
    pub timestamp_ms: i64,
    /// Delivered (the recipient had a live session) or away.
    pub delivered: bool,
}

/// The result of fetching away messages.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The messages now marked delivered, oldest first.
    pub messages: Vec<MessageRecord>,
    /// Away messages left.
    pub remaining: u64,
}

/// A member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its server id.
    pub id: u64,
    /// Its address.
    pub address: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Whether this node is known to reach it (the leader knows each; a follower knows itself
    /// and the leader it hears).
    pub reachable: bool,
    /// The last log index known to be on it.
    pub matched_index: u64,
}

/// What this node knows of its cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node's id.
    pub node_id: u64,
    /// The address clients reach this node at.
    pub address: String,
    /// The leader's id and address, if known.
    pub leader: Option<(u64, String)>,
    /// The current term.
    pub term: u64,
    /// The last log index applied here (committed entries are applied in order, so this is
    /// at most the commit index and follows it closely).
    pub applied_index: u64,
    /// Every member.
    pub members: Vec<MemberView>,
}

/// One node's chat operations.
pub struct Node {
    config: NodeConfig,
    address: SocketAddr,
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

/// How long a write or a linearizable read may wait for a majority before it is answered
/// "no quorum": four election timeouts, at least two seconds.
fn quorum_deadline(config: &NodeConfig) -> std::time::Duration {
    std::time::Duration::from_millis((config.election_timeout_ms * 4).max(2_000))
}

/// How long asking one peer whether it knows a leader may take at start-up.
const PEER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The leader the node at `address` knows of, as (id, address), if it answers within half a
/// second (its ClusterInfo).
pub async fn leader_seen_by(address: &str) -> Option<(u64, String)> {
    let probe = async {
        let mut client =
            jochat_proto::v1::chat_client::ChatClient::connect(format!("http://{address}"))
                .await
                .ok()?;
        let info = client
            .cluster_info(jochat_proto::v1::ClusterInfoRequest {})
            .await
            .ok()?
            .into_inner();
        (info.leader_id != 0).then_some((info.leader_id, info.leader_address))
    };
    tokio::time::timeout(PEER_PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// Whether any of `config`'s peers answers that it knows a leader (then a cluster exists and
/// this node must not start another).
async fn any_peer_knows_a_leader(config: &NodeConfig) -> bool {
    for peer in &config.peers {
        if leader_seen_by(&peer.address).await.is_some() {
            tracing::info!(peer = peer.id, "a peer knows a leader: not bootstrapping");
            return true;
        }
    }
    false
}

/// How long to wait between attempts to join.
const JOIN_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// How long one join may take: the leader answers once this node has caught up.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Asks the cluster's leader, found through `config`'s peers, to add this node, until the
/// node is a voter. Runs in the background from start-up.
async fn join_cluster(config: NodeConfig, address: SocketAddr, raft: openraft::Raft<TypeConfig>) {
    let me = config.server_id;
    loop {
        let is_voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == me);
        if is_voter {
            tracing::info!("this node is a voter of the cluster");
            return;
        }
        for peer in &config.peers {
            let Some((leader_id, leader_address)) = leader_seen_by(&peer.address).await else {
                continue;
            };
            match ask_to_join(&config, address, &leader_address).await {
                Ok(()) => {
                    tracing::info!(leader_id, "joined the cluster");
                    break;
                }
                Err(status) => tracing::warn!(leader_id, %status, "join refused; retrying"),
            }
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

async fn ask_to_join(
    config: &NodeConfig,
    address: SocketAddr,
    leader_address: &str,
) -> Result<(), tonic::Status> {
    let mut client = jochat_proto::internal::v1::raft_client::RaftClient::connect(format!(
        "http://{leader_address}"
    ))
    .await
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(jochat_proto::internal::v1::JoinRequest {
        node_id: config.server_id,
        address: address.to_string(),
    });
    request.set_timeout(JOIN_TIMEOUT);
    if let Some(secret) = &config.cluster_secret {
        let value = secret.parse().map_err(|_| {
            tonic::Status::invalid_argument("the cluster secret is not valid metadata")
        })?;
        request
            .metadata_mut()
            .insert(crate::raft::network::CLUSTER_SECRET_HEADER, value);
    }
    client.join(request).await.map(drop)
}

fn unexpected(outcome: Outcome) -> NodeError {
    NodeError::Task(format!(
        "state machine returned an unexpected outcome: {outcome:?}"
    ))
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
        address: SocketAddr,
        faults: Faults,
    ) -> Result<Self, NodeError> {
        // Raft's storage opens (and migrates) the file first; the read pool then joins it.
        let (log, state_machine) =
            raft::storage::open_with(&config.db_path(), config.sync_mode, config.snapshot_rate())?;
        let events = state_machine.events();
        let snapshot_gauge = state_machine.snapshot_gauge();
        if config.force_new_cluster {
            let changed = log
                .force_sole_member(config.server_id, address.to_string())
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
        let db = Arc::new(Database::open(&config.store())?);
        let idle = tokio::spawn(release_when_idle(log.clone(), Arc::clone(&db)));
        let raft = openraft::Raft::new(
            config.server_id,
            Arc::new(config.raft_config()?),
            NetworkFactory::new(
                config.server_id,
                config.cluster_secret.as_deref(),
                faults.clone(),
            ),
            log,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        // A node with no state either bootstraps: alone when it has no peers, or with all of
        // them when it has the lowest id and no peer knows a leader (nodes started together).
        // Otherwise it waits for a leader to add it.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let lowest = config.peers.iter().all(|peer| config.server_id < peer.id);
        let mut joining = None;
        if !initialized && lowest && !any_peer_knows_a_leader(&config).await {
            let mut members =
                BTreeMap::from([(config.server_id, BasicNode::new(address.to_string()))]);
            for peer in &config.peers {
                members.insert(peer.id, BasicNode::new(peer.address.clone()));
            }
            let count = members.len();
            raft.initialize(members)
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            tracing::info!(members = count, "bootstrapped the cluster");
        } else if !initialized {
            tracing::info!("joining the cluster through its leader");
            joining = Some(tokio::spawn(join_cluster(
                config.clone(),
                address,
                raft.clone(),
            )));
        }
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
                secret: config.cluster_secret.clone(),
                faults,
            },
        ));
        let snapshots = tokio::spawn(raft::snapshots::run(
            raft.clone(),
            snapshot_gauge,
            raft::snapshots::SnapshotRule::for_node(config.server_id, config.snapshot_threshold),
        ));
        let proposer = Proposer::start(raft.clone(), quorum_deadline(&config));
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
            hasher: Hasher::new(),
            limiter,
            read_rounds: ReadRounds::default(),
        })
    }

    /// Waits until this node leads, if it is its cluster's only voter (as after a bootstrap or
    /// a restart of a one-node cluster), so that the first requests find a leader.
    ///
    /// # Errors
    /// `Raft` when no election completes within `timeout`.
    pub async fn wait_for_sole_leadership(
        &self,
        timeout: std::time::Duration,
    ) -> Result<(), NodeError> {
        // A node given peers forms or joins a cluster with them; nothing to wait for here.
        if !self.config.peers.is_empty() {
            return Ok(());
        }
        // Without peers the node was bootstrapped or restored, so a membership is coming;
        // the metrics may not show it yet.
        let id = self.config.server_id;
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .next()
                        .is_some()
                },
                "the membership is loaded",
            )
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        if voters == [id] {
            self.raft
                .wait(Some(timeout))
                .current_leader(id, "this node leads its one-node cluster")
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        Ok(())
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

    /// The node's database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn write(
        &self,
        idempotency_key: Option<IdempotencyKey>,
        action: Action,
    ) -> Result<Outcome, NodeError> {
        self.submit(Command {
            at_ms: now_ms(),
            idempotency_key,
            action,
        })
        .await
    }

    fn quorum_deadline(&self) -> std::time::Duration {
        quorum_deadline(&self.config)
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

    /// Replicates `command` through Raft (in an entry shared with the commands submitted at
    /// the same time) and returns its outcome once it is committed and applied here.
    async fn submit(&self, command: Command) -> Result<Outcome, NodeError> {
        self.check_quorum()?;
        self.proposer.submit(command).await
    }

    /// Makes the next read linearizable: on the leader, confirms with a majority that it
    /// still leads and waits until everything committed before is applied here. With `stale`,
    /// does nothing: the read is served from whatever this node has applied.
    ///
    /// # Errors
    /// `NotLeader` on a follower; `NoQuorum` when no majority confirms in time.
    pub async fn ensure_fresh(&self, stale: bool) -> Result<(), NodeError> {
        if stale {
            return Ok(());
        }
        self.check_quorum()?;
        self.read_rounds
            .confirm(&self.raft, self.quorum_deadline())
            .await
    }

    /// Whether an outcome is remembered under `key`: the request is then a retry, and its
    /// command will replay that outcome (to the same caller only) instead of applying again.
    async fn is_remembered(&self, key: &Option<IdempotencyKey>) -> Result<bool, NodeError> {
        let Some(key) = key.clone() else {
            return Ok(false);
        };
        self.db
            .read(move |store| Ok(store.remembered(&key)?.is_some()))
            .await
    }

    /// Creates an account.
    ///
    /// # Errors
    /// `InvalidArgument` on `username`, `password` or `idempotency_key`; `AlreadyExists` when
    /// the name is taken ignoring case.
    pub async fn sign_up(
        &self,
        username: &str,
        password: &str,
        key: &str,
    ) -> Result<(UserId, Username), NodeError> {
        let username = Username::new(username)?;
        let credential = Credential::new(password)?;
        let key = IdempotencyKey::optional(key)?;
        // Refuse a taken name before spending an argon2 hash on it; the state machine checks
        // again, authoritatively. A retry of a sign-up that already succeeded finds its own
        // name taken, so it skips the check and lets the state machine replay the outcome.
        if !self.is_remembered(&key).await? {
            let probe = username.clone();
            if let Some(existing) = self
                .db
                .read(move |store| Ok(store.user_by_name(&probe)?))
                .await?
            {
                return Err(ChatError::AlreadyExists {
                    field: "username".into(),
                    value: existing.username.as_str().to_owned(),
                }
                .into());
            }
        }
        let password_hash = self.hasher.hash(&credential).await?;
        match self
            .write(
                key,
                Action::SignUp {
                    username,
                    password_hash,
                },
            )
            .await?
        {
            Outcome::SignedUp { user_id, username } => Ok((user_id, username)),
            other => Err(unexpected(other)),
        }
    }

    /// Checks the password and opens a session, revoking the account's others.
    ///
    /// # Errors
    /// `InvalidArgument` on a malformed `username` or empty `password`; `WrongCredentials`
    /// for an unknown name or a wrong password (indistinguishable, also in time);
    /// `RateLimited` after too many failures for the name.
    pub async fn log_in(&self, username: &str, password: &str) -> Result<LoggedIn, NodeError> {
        let username = Username::new(username)?;
        let credential = Credential::new(password)?;
        let folded = username.folded();
        self.limiter.check(&folded)?;
        let user = self
            .db
            .read(move |store| Ok(store.user_by_name(&username)?))
            .await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        if !self.hasher.verify(&credential, stored).await? {
            self.limiter.record_failure(&folded);
            return Err(ChatError::WrongCredentials.into());
        }
        let user = user.expect("verify only succeeds for an existing user");
        self.limiter.record_success(&folded);

        let token = new_session_token()?;
        let at_ms = now_ms();
        let ttl_ms = i64::try_from(self.config.session_ttl().as_millis()).unwrap_or(i64::MAX);
        let command = Command {
            at_ms,
            idempotency_key: None,
            action: Action::CreateSession {
                user_id: user.id,
                token_digest: token.digest(),
                expires_at_ms: at_ms.saturating_add(ttl_ms),
            },
        };
        match self.submit(command).await? {
            Outcome::SessionCreated {
                user_id,
                username,
                expires_at_ms,
            } => {
                let owner = username.clone();
                let unread_count = self
                    .db
                    .read(move |store| Ok(store.away_count(&owner)?))
                    .await?;
                Ok(LoggedIn {
                    token,
                    user_id,
                    username,
                    expires_at_ms,
                    unread_count,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Revokes the session of `token`.
    ///
    /// # Errors
    /// `Unauthenticated` for a missing, malformed, unknown, revoked or expired token.
    pub async fn log_out(&self, token: &str, key: &str) -> Result<(), NodeError> {
        let session = session_digest(token)?;
        let key = IdempotencyKey::optional(key)?;
        match self.write(key, Action::RevokeSession { session }).await? {
            Outcome::SessionRevoked => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The account behind `token`, now.
    ///
    /// # Errors
    /// `Unauthenticated` for a missing, malformed, unknown, revoked or expired token.
    pub async fn authenticate(&self, token: &str) -> Result<UserRecord, NodeError> {
        let digest = session_digest(token)?;
        let now = now_ms();
        self.db
            .read(move |store| query::authenticate_digest(store, &digest, now))
            .await
    }

    /// Sends `content` to `recipient` from the account behind `token`.
    ///
    /// # Errors
    /// `InvalidArgument` on `recipient`, `content` or `idempotency_key`; `NotFound` on an
    /// unknown recipient; `Unauthenticated`.
    pub async fn send_message(
        &self,
        token: &str,
        recipient: &str,
        content: String,
        key: &str,
    ) -> Result<Sent, NodeError> {
        let recipient = Username::parse("recipient", recipient)?;
        let content = Content::new(content, self.config.content_bytes_max)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        match self
            .write(
                key,
                Action::SendMessage {
                    session,
                    recipient,
                    content,
                },
            )
            .await?
        {
            Outcome::MessageSent {
                id,
                timestamp_ms,
                delivered,
            } => Ok(Sent {
                id,
                timestamp_ms,
                delivered,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The number of away messages of the account behind `token`.
    ///
    /// # Errors
    /// `Unauthenticated`.
    pub async fn unread_count(&self, token: &str) -> Result<u64, NodeError> {
        let digest = session_digest(token)?;
        let now = now_ms();
        self.db
            .read(move |store| {
                let user = query::authenticate_digest(store, &digest, now)?;
                query::unread_count(store, &user)
            })
            .await
    }

    /// Returns up to `limit` of the oldest away messages and marks them delivered.
    ///
    /// # Errors
    /// `InvalidArgument` on `limit` or `idempotency_key`; `Unauthenticated`.
    pub async fn fetch_away(
        &self,
        token: &str,
        limit: i64,
        key: &str,
    ) -> Result<Fetched, NodeError> {
        let limit = FetchLimit::new(limit)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        match self
            .write(key, Action::MarkDelivered { session, limit })
            .await?
        {
            Outcome::Delivered { ids, remaining } => {
                let messages = self
                    .db
                    .read(move |store| query::messages_by_ids(store, &ids))
                    .await?;
                Ok(Fetched {
                    messages,
                    remaining,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// A page of the inbox of the account behind `token`, newest first; with a non-empty
    /// `with_user`, only the conversation with that user.
    ///
    /// # Errors
    /// `InvalidArgument` on `offset`, `limit` or `with_user`; `NotFound` on an unknown
    /// `with_user`; `Unauthenticated`.
    pub async fn list_messages(
        &self,
        token: &str,
        offset: i64,
        limit: i64,
        with_user: &str,
    ) -> Result<MessagePage, NodeError> {
        let page = Page::new(offset, limit)?;
        let with_user = match with_user {
            "" => None,
            name => Some(Username::parse("with_user", name)?),
        };
        let digest = session_digest(token)?;
        let now = now_ms();
        self.db
            .read(move |store| {
                let user = query::authenticate_digest(store, &digest, now)?;
                query::list_messages(store, &user, with_user.as_ref(), page)
            })
            .await
    }

    /// Deletes those of `ids` that are in the inbox of the account behind `token`.
    ///
    /// # Errors
    /// `InvalidArgument` on `ids` (none, more than 1000, not positive) or `idempotency_key`;
    /// `Unauthenticated`.
    pub async fn delete_messages(
        &self,
        token: &str,
        ids: &[i64],
        key: &str,
    ) -> Result<u64, NodeError> {
        let ids = MessageIds::new(ids)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        match self
            .write(key, Action::DeleteMessages { session, ids })
            .await?
        {
            Outcome::MessagesDeleted { count } => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    /// A page of the accounts matching `pattern`.
    ///
    /// # Errors
    /// `InvalidArgument` on `pattern`, `offset` or `limit`; `Unauthenticated`.
    pub async fn list_accounts(
        &self,
        token: &str,
        pattern: &str,
        offset: i64,
        limit: i64,
    ) -> Result<AccountPage, NodeError> {
        self.list_accounts_matching(token, Pattern::new(pattern)?, offset, limit)
            .await
    }

    /// A page of the accounts matching an already parsed `pattern` (the prototype's service
    /// parses with its own rules, [`Pattern::substring`]).
    ///
    /// # Errors
    /// `InvalidArgument` on `offset` or `limit`; `Unauthenticated`.
    pub async fn list_accounts_matching(
        &self,
        token: &str,
        pattern: Pattern,
        offset: i64,
        limit: i64,
    ) -> Result<AccountPage, NodeError> {
        let page = Page::new(offset, limit)?;
        let digest = session_digest(token)?;
        let now = now_ms();
        self.db
            .read(move |store| {
                query::authenticate_digest(store, &digest, now)?;
                query::list_accounts(store, &pattern, page)
            })
            .await
    }

    /// Deletes the account behind `token` after checking its password again; returns how
    /// many messages went with it.
    ///
    /// # Errors
    /// `InvalidArgument` on `password` or `idempotency_key`; `WrongCredentials` on a wrong
    /// password (rate-limited like log-ins); `Unauthenticated`.
    pub async fn delete_account(
        &self,
        token: &str,
        password: &str,
        key: &str,
    ) -> Result<u64, NodeError> {
        let credential = Credential::new(password)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        // A retry of a deletion that already succeeded has no account left to check the
        // password against; the state machine replays the first outcome to the same session.
        if !self.is_remembered(&key).await? {
            let user = self.authenticate(token).await?;
            let folded = user.username.folded();
            self.limiter.check(&folded)?;
            if !self
                .hasher
                .verify(&credential, Some(user.password_hash))
                .await?
            {
                self.limiter.record_failure(&folded);
                return Err(ChatError::WrongCredentials.into());
            }
        }
        self.delete_session_account(session, key).await
    }

    /// Deletes the account behind `token` on the strength of the session alone, as the
    /// prototype's `DeleteAccount` did (its request carries no password).
    ///
    /// # Errors
    /// `Unauthenticated`.
    pub async fn delete_account_by_session(&self, token: &str) -> Result<u64, NodeError> {
        self.delete_session_account(session_digest(token)?, None)
            .await
    }

    async fn delete_session_account(
        &self,
        session: TokenDigest,
        key: Option<IdempotencyKey>,
    ) -> Result<u64, NodeError> {
        match self.write(key, Action::DeleteAccount { session }).await? {
            Outcome::AccountDeleted { messages_deleted } => Ok(messages_deleted),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes every account, session and message, for the administrator named by
    /// `--admin-user` only (the prototype's `ResetDB`).
    ///
    /// # Errors
    /// `PermissionDenied` when no administrator is configured or the caller is someone else;
    /// `Unauthenticated`.
    pub async fn reset_all(&self, token: &str) -> Result<(), NodeError> {
        let Some(admin) = &self.config.admin_user else {
            return Err(NodeError::PermissionDenied(
                "resetting the database is disabled: the node has no --admin-user".into(),
            ));
        };
        let user = self.authenticate(token).await?;
        if !user.username.as_str().eq_ignore_ascii_case(admin) {
            tracing::warn!(user = %user.username, "refused a database reset by a non-administrator");
            return Err(NodeError::PermissionDenied(
                "only the administrator may reset the database".into(),
            ));
        }
        let session = session_digest(token)?;
        match self.write(None, Action::ResetAll { session }).await? {
            Outcome::Reset => {
                tracing::warn!(admin = %user.username, "database reset: every account, session and message deleted");
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// What this node knows of its cluster, from Raft's metrics.
    pub fn cluster_view(&self) -> ClusterView {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let applied_index = metrics.last_applied.map_or(0, |id| id.index);
        let members = membership
            .nodes()
            .map(|(&id, node)| {
                let matched = if id == metrics.id {
                    Some(metrics.last_log_index.unwrap_or(0))
                } else {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&id).copied().flatten())
                        .map(|log_id| log_id.index)
                };
                // The leader knows whom it reaches; a follower knows it hears the leader.
                let hears_leader = metrics.current_leader == Some(id) && metrics.id != id;
                MemberView {
                    id,
                    address: node.addr.clone(),
                    voter: voters.contains(&id),
                    reachable: matched.is_some() || hears_leader,
                    matched_index: matched.unwrap_or(0),
                }
            })
            .collect();
        let leader = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|node| (id, node.addr.clone())));
        ClusterView {
            node_id: self.config.server_id,
            address: self.address.to_string(),
            leader,
            term: metrics.current_term,
            applied_index,
            members,
        }
    }

    /// Stops taking writes and waits until every accepted one is committed.
    pub async fn close(&self) {
        self.stop_background_tasks();
        if let Err(error) = self.raft.shutdown().await {
            tracing::error!(%error, "raft did not shut down cleanly");
        }
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
        self.idle.abort();
        self.snapshots.abort();
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
