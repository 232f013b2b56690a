//! The periodic comparison of the members' chat state (`--state-check-secs`): the leader picks
//! its own applied index, asks every member for the hash of its chat tables right after that
//! entry ([`crate::raft::storage::StateHasher`]; the `StateHash` internal call), and compares.
//! A member whose hash differs from the majority's has a damaged file (or diverged through a
//! bug): the leader logs the alarm, shows it in ClusterInfo, and tells that member
//! (`StateAlarm`), which then refuses reads (UNAVAILABLE, so clients move on) until it is
//! rebuilt (`jochat-node --rebuild`). A member that could not hash at that index (it was past
//! it, or too slow) is left out of that round.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jochat_proto::internal::v1::{StateAlarmRequest, StateHashRequest};

use super::faults::Faults;
use super::network::PeerDialer;
use super::storage::{StateHash, StateHasher};
use super::TypeConfig;

/// How long a member may take to reach the index and hash there.
pub const HASH_WAIT: Duration = Duration::from_secs(10);

/// The alarms one node knows of. Cheap to clone; clones share them.
#[derive(Debug, Clone, Default)]
pub struct StateAlarms(Arc<Mutex<Alarms>>);

#[derive(Debug, Default)]
struct Alarms {
    /// This node's own chat state differs from the majority's: why.
    own: Option<String>,
    /// What this node, leading, found about members, by member id.
    found: BTreeMap<u64, String>,
}

impl StateAlarms {
    fn lock(&self) -> std::sync::MutexGuard<'_, Alarms> {
        self.0
            .lock()
            .expect("the alarms' mutex is never held across a panic")
    }

    /// Marks this node's own state as differing from the cluster's.
    pub fn raise_own(&self, detail: String) {
        let mut alarms = self.lock();
        if alarms.own.is_none() {
            tracing::error!(%detail, "STATE ALARM: this node's chat state differs from the cluster's: it serves no reads until rebuilt (jochat-node --rebuild)");
        }
        alarms.own = Some(detail);
    }

    /// Why this node's state is not to be trusted, if it is not.
    pub fn own(&self) -> Option<String> {
        self.lock().own.clone()
    }

    /// Every alarm, one line each, for ClusterInfo.
    pub fn lines(&self) -> Vec<String> {
        let alarms = self.lock();
        alarms
            .own
            .iter()
            .cloned()
            .chain(alarms.found.values().cloned())
            .collect()
    }

    fn set_found(&self, found: BTreeMap<u64, String>) {
        self.lock().found = found;
    }
}

/// What one round needs.
pub struct StateCheck {
    /// This node's id.
    pub id: u64,
    /// This node's Raft.
    pub raft: openraft::Raft<TypeConfig>,
    /// Hashes this node's own tables.
    pub hasher: StateHasher,
    /// Where alarms go.
    pub alarms: StateAlarms,
    /// How the members are called.
    pub dialer: PeerDialer,
    /// The fault layer (tests).
    pub faults: Faults,
}

/// Compares the members' state every `interval` while this node leads. Runs until aborted.
pub async fn run(check: StateCheck, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        check.round().await;
    }
}

impl StateCheck {
    /// One comparison, if this node leads.
    pub async fn round(&self) {
        let (index, members) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(self.id) {
                // What it found while leading is the new leader's to find again.
                self.alarms.set_found(BTreeMap::new());
                return;
            }
            let Some(applied) = metrics.last_applied else {
                return;
            };
            let members: Vec<(u64, String)> = metrics
                .membership_config
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            (applied.index, members)
        };
        let asks = members.iter().map(|(member, address)| async move {
            let hash = if *member == self.id {
                self.hasher.hash_at(index, HASH_WAIT).await.ok()
            } else {
                self.remote_hash(*member, address, index).await
            };
            (*member, address.clone(), hash)
        });
        let answers = futures::future::join_all(asks).await;
        let hashed: Vec<(u64, &str, [u8; 32])> = answers
            .iter()
            .filter_map(|(member, address, hash)| match hash {
                Some(StateHash::Hashed { sha256, .. }) => {
                    Some((*member, address.as_str(), *sha256))
                }
                _ => None,
            })
            .collect();
        if hashed.len() < 2 {
            tracing::debug!(
                index,
                hashed = hashed.len(),
                "state check: too few members hashed at the index"
            );
            return;
        }
        let mut counts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for (_, _, hash) in &hashed {
            *counts.entry(*hash).or_default() += 1;
        }
        let Some((majority, votes)) = counts.iter().max_by_key(|(_, count)| **count) else {
            return;
        };
        if *votes * 2 <= hashed.len() {
            tracing::error!(
                index,
                members = hashed.len(),
                "STATE ALARM: no majority of the members that hashed agrees on the chat state"
            );
            return;
        }
        let mut found = BTreeMap::new();
        for (member, address, hash) in &hashed {
            if hash == majority {
                continue;
            }
            let detail = format!(
                "node {member} ({address}): chat state differs from the majority's at index \
                 {index} (state hash {} where {} of {} members have {}): rebuild it with \
                 `jochat-node --rebuild`",
                short(hash),
                votes,
                hashed.len(),
                short(majority)
            );
            tracing::error!(%detail, "STATE ALARM");
            if *member == self.id {
                self.alarms.raise_own(detail.clone());
            } else {
                self.tell(*member, address, index, &detail).await;
            }
            found.insert(*member, detail);
        }
        if found.is_empty() {
            tracing::debug!(
                index,
                members = hashed.len(),
                "state check: every member agrees"
            );
        }
        self.alarms.set_found(found);
    }

    async fn remote_hash(&self, member: u64, address: &str, index: u64) -> Option<StateHash> {
        if self.faults.between(self.id, member).is_some() {
            return None;
        }
        let mut client = self.dialer.raft_client(address).await.ok()?;
        let mut request = tonic::Request::new(StateHashRequest { index });
        request.set_timeout(HASH_WAIT + Duration::from_secs(5));
        self.dialer.authorize(&mut request).ok()?;
        let reply = client.state_hash(request).await.ok()?.into_inner();
        if !reply.hashed {
            return Some(StateHash::Passed {
                applied: reply.applied_index,
            });
        }
        let sha256: [u8; 32] = reply.sha256.as_slice().try_into().ok()?;
        Some(StateHash::Hashed {
            index: reply.applied_index,
            sha256,
        })
    }

    async fn tell(&self, member: u64, address: &str, index: u64, detail: &str) {
        let Ok(mut client) = self.dialer.raft_client(address).await else {
            return;
        };
        let mut request = tonic::Request::new(StateAlarmRequest {
            index,
            detail: detail.to_owned(),
        });
        if self.dialer.authorize(&mut request).is_err() {
            return;
        }
        if let Err(status) = client.state_alarm(request).await {
            tracing::warn!(member, %status, "could not tell a member about its state alarm");
        }
    }
}

/// The first 8 bytes of a hash, in hex.
fn short(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}
