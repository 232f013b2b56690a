//! The node in its cluster: forming or joining one at start-up ([`bootstrap_or_join`]),
//! waiting to lead a one-node cluster, and what the node knows of its members
//! ([`ClusterView`]).

use std::collections::BTreeMap;

use openraft::BasicNode;

use super::Node;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::raft::network::PeerDialer;
use crate::raft::TypeConfig;

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

/// How long asking one peer whether it knows a leader may take at start-up.
const PEER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The leader the node at `address` knows of, as (id, address), if it answers within half a
/// second (its ClusterInfo).
pub async fn leader_seen_by(dialer: &PeerDialer, address: &str) -> Option<(u64, String)> {
    let probe = async {
        let channel = dialer.endpoint(address).ok()?.connect().await.ok()?;
        let mut client = jochat_proto::v1::chat_client::ChatClient::new(channel);
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
async fn any_peer_knows_a_leader(config: &NodeConfig, dialer: &PeerDialer) -> bool {
    for peer in &config.peers {
        if leader_seen_by(dialer, &peer.address).await.is_some() {
            tracing::info!(peer = peer.id, "a peer knows a leader: not bootstrapping");
            return true;
        }
    }
    false
}

/// Whether this node is the one to form its cluster: it has no peers, or it has the lowest
/// id of them and none of them knows a leader.
pub(super) async fn forms_the_cluster(config: &NodeConfig, dialer: &PeerDialer) -> bool {
    let lowest = config.peers.iter().all(|peer| config.server_id < peer.id);
    config.peers.is_empty() || (lowest && !any_peer_knows_a_leader(config, dialer).await)
}

/// How long to wait between attempts to join.
const JOIN_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// How long one join may take: the leader answers once this node has caught up.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Asks the cluster's leader, found through `config`'s peers, to add this node, until the
/// node is a voter. Runs in the background from start-up.
async fn join_cluster(
    config: NodeConfig,
    address: String,
    dialer: PeerDialer,
    raft: openraft::Raft<TypeConfig>,
) {
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
            let Some((leader_id, leader_address)) = leader_seen_by(&dialer, &peer.address).await
            else {
                continue;
            };
            match ask_to_join(&config, &address, &dialer, &leader_address).await {
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
    address: &str,
    dialer: &PeerDialer,
    leader_address: &str,
) -> Result<(), tonic::Status> {
    let mut client = dialer.raft_client(leader_address).await?;
    let mut request = tonic::Request::new(jochat_proto::internal::v1::JoinRequest {
        node_id: config.server_id,
        address: address.to_owned(),
    });
    request.set_timeout(JOIN_TIMEOUT);
    dialer.authorize(&mut request)?;
    client.join(request).await.map(drop)
}

/// How long `--rebuild` keeps asking the cluster to remove this node before it gives up.
const REBUILD_LEAVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `--rebuild`, before the old file is set aside: asks the cluster's leader (found through
/// `config`'s peers, and not this node) to remove this node from the membership, and waits
/// until it has. The node then starts empty and joins again as a new member (learner, then
/// voter once it has the leader's snapshot), so no vote it cast with its old file can count
/// twice and nothing committed can be lost with that file.
///
/// # Errors
/// `Config` on `rebuild` when no peers are given or no leader removes this node in time.
pub(super) async fn leave_for_rebuild(
    config: &NodeConfig,
    dialer: &PeerDialer,
) -> Result<(), NodeError> {
    let me = config.server_id;
    let fail = |rule: String| NodeError::Config {
        flag: "rebuild",
        rule,
    };
    if config.peers.is_empty() {
        return Err(fail(
            "needs --peers: the node is rebuilt from its cluster, which must have a leader".into(),
        ));
    }
    let started = std::time::Instant::now();
    loop {
        for peer in &config.peers {
            let Some((leader_id, leader_address)) = leader_seen_by(dialer, &peer.address).await
            else {
                continue;
            };
            if leader_id == me {
                continue;
            }
            match ask_to_leave(me, dialer, &leader_address).await {
                Ok(()) => {
                    tracing::warn!(leader_id, "--rebuild: this node was removed from the cluster; setting its file aside and joining again");
                    return Ok(());
                }
                Err(status) => {
                    tracing::warn!(leader_id, %status, "--rebuild: the leader did not remove this node yet; retrying")
                }
            }
        }
        if started.elapsed() > REBUILD_LEAVE_PATIENCE {
            return Err(fail(format!(
                "no leader among --peers removed node {me} within {REBUILD_LEAVE_PATIENCE:?}"
            )));
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

async fn ask_to_leave(me: u64, dialer: &PeerDialer, leader: &str) -> Result<(), tonic::Status> {
    let mut client = dialer.raft_client(leader).await?;
    let mut request = tonic::Request::new(jochat_proto::internal::v1::LeaveRequest { node_id: me });
    request.set_timeout(JOIN_TIMEOUT);
    dialer.authorize(&mut request)?;
    client.leave(request).await.map(drop)
}

/// Starts this node's part in forming its cluster. A node with no state either bootstraps:
/// alone when it has no peers, or with all of them when it has the lowest id and no peer
/// knows a leader (nodes started together). Otherwise it joins through the leader in the
/// background; the returned task runs until the node is a voter.
///
/// A node whose file holds a [`Seed`](crate::raft::storage::Seed) (state that did not come
/// through Raft) forms a new cluster alone, whatever its peers, which then join it and
/// receive that state as a snapshot ([`Node::publish_seed`]); it must be the node that forms
/// the cluster.
///
/// # Errors
/// `Raft` when Raft cannot say whether it holds state, or refuses the initial membership;
/// `Config` on `db-file` for a seeded file on a node that is not the one to form the cluster.
pub(super) async fn bootstrap_or_join(
    config: &NodeConfig,
    address: &str,
    dialer: &PeerDialer,
    raft: &openraft::Raft<TypeConfig>,
    seeded: bool,
) -> Result<Option<tokio::task::JoinHandle<()>>, NodeError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if initialized {
        return Ok(None);
    }
    if seeded {
        if !forms_the_cluster(config, dialer).await {
            return Err(NodeError::Config {
                flag: "db-file",
                rule: format!(
                    "{} holds imported or restored state that can only form a new cluster, but this node \
                     does not form one (a peer knows a leader, or has a lower id): start it \
                     without --peers, or as the lowest id before the others",
                    config.db_path().display()
                ),
            });
        }
        let members = BTreeMap::from([(config.server_id, BasicNode::new(address))]);
        raft.initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        tracing::info!(
            "formed a new cluster with the imported or restored state; the other nodes join it and receive \
             the state as a snapshot"
        );
        return Ok(None);
    }
    let lowest = config.peers.iter().all(|peer| config.server_id < peer.id);
    if lowest && !any_peer_knows_a_leader(config, dialer).await {
        let mut members = BTreeMap::from([(config.server_id, BasicNode::new(address))]);
        for peer in &config.peers {
            members.insert(peer.id, BasicNode::new(peer.address.clone()));
        }
        let count = members.len();
        raft.initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        tracing::info!(members = count, "bootstrapped the cluster");
        return Ok(None);
    }
    tracing::info!("joining the cluster through its leader");
    Ok(Some(tokio::spawn(join_cluster(
        config.clone(),
        address.to_owned(),
        dialer.clone(),
        raft.clone(),
    ))))
}

impl Node {
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
            address: self.address.clone(),
            leader,
            term: metrics.current_term,
            applied_index,
            members,
        }
    }
}
