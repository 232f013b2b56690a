//! Elections, driven by JoChat instead of openraft's own timer.
//!
//! openraft 0.9 waits `election_timeout_max` (its leader lease) *plus* a random election
//! timeout after the last heartbeat before a follower stands, and its followers refuse votes
//! for a lease measured in their own timeout, so with timeouts staggered by id the highest ids
//! would keep refusing the lowest surviving one and make failovers slow
//! (docs/performance.md, "History"). Here openraft's timer is
//! off (`enable_elect = false`) and [`run`] triggers elections itself:
//!
//! - every node shares one lease, `--election-timeout-ms`: a follower refuses to vote for that
//!   long after it last heard its leader;
//! - a voter stands once it has heard no leader for [`election_delay`]: the lease and a
//!   margin, plus half an election timeout per voter ranked before it by id. The lowest
//!   surviving id stands first and, if its log is up to date, wins before the next one stands;
//! - before standing it asks its peers ([`Probe`](jochat_proto::internal::v1::ProbeRequest))
//!   whether any of them still hears a live leader (or is one: a leader that answers counts as
//!   alive unless a majority has been silent to it for four timeouts, so a CPU-starved leader
//!   with late heartbeats is not deposed), and stands down if one does, or if fewer
//!   voters answer than it would need to win: a node back from a crash or a partition, or one
//!   cut off from the leader alone, neither deposes a leader that a majority still follows nor
//!   raises the term while it cannot win (a higher term would depose the leader once the links
//!   come back).
//!
//! [`LeaderContact`] is when this node last heard a leader (the peer-side Raft service marks
//! every accepted append-entries or snapshot chunk) and when its election clock last restarted
//! (also on every vote it grants, and whenever it stands or decides not to). Only the first is
//! what it tells a probing peer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::faults::Faults;
use super::network::{probe, PeerDialer};
use super::TypeConfig;

/// When this node last heard a leader, and when its election clock last restarted. Cheap to
/// clone.
///
/// The two differ on purpose: the clock also restarts when this node grants a vote, stands,
/// or decides not to stand, but only real contact with a leader lets this node vouch for it
/// when a peer probes. (A node that vouched after merely deciding not to stand would keep a
/// dead leader "alive" for its peers, and two followers could keep each other from standing.)
#[derive(Debug, Clone)]
pub struct LeaderContact {
    origin: Instant,
    /// Milliseconds after `origin` of the last message from a leader.
    heard_ms: Arc<AtomicU64>,
    /// Milliseconds after `origin` of the last restart of the election clock.
    clock_ms: Arc<AtomicU64>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaderContact {
    /// Contact "now": a node that just started waits a full delay before it stands.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            heard_ms: Arc::new(AtomicU64::new(0)),
            clock_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since(&self, mark: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(mark.load(Ordering::Relaxed)))
    }

    /// Records a message from a leader now (it also restarts the election clock).
    pub fn heard_leader(&self) {
        let now = self.now_ms();
        self.heard_ms.fetch_max(now, Ordering::Relaxed);
        self.clock_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Restarts the election clock without claiming contact with a leader: after granting a
    /// vote, standing, or deciding not to stand.
    pub fn restart_clock(&self) {
        self.clock_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since a leader was last heard: what this node tells a probing peer.
    pub fn since_leader(&self) -> Duration {
        self.since(&self.heard_ms)
    }

    /// How long the election clock has run: the later of the last leader contact and the
    /// last restart.
    pub fn elapsed(&self) -> Duration {
        self.since(&self.clock_ms)
    }
}

/// How long a voter waits without hearing a leader before it stands, given its `position`
/// among the voters ordered by id and their `count`. The only voter stands at once.
pub fn election_delay(position: usize, count: usize, election_timeout_ms: u64) -> Duration {
    if count <= 1 {
        return Duration::ZERO;
    }
    // Past the eighth voter every node waits the same; Raft's vote rules still settle it.
    let rank = u64::try_from(position.min(7)).unwrap_or(7);
    let lease_and_margin = election_timeout_ms + election_timeout_ms / 10;
    Duration::from_millis(lease_and_margin + rank * election_timeout_ms / 2)
}

/// How many election timeouts a leader that answers a probe may go without a majority's
/// acknowledgement and still count as alive.
const LEADER_SILENCE_TIMEOUTS: u64 = 4;

/// What [`run`] needs to know.
#[derive(Debug, Clone)]
pub struct ElectionSettings {
    /// This node's id.
    pub id: u64,
    /// `--election-timeout-ms`: the lease, and the unit of the stagger.
    pub election_timeout_ms: u64,
    /// `--heartbeat-ms`: how often the timer looks, at most every half heartbeat.
    pub heartbeat_ms: u64,
    /// How the probes reach the peers.
    pub dialer: PeerDialer,
    /// The fault layer, for the probes.
    pub faults: Faults,
}

/// What the peers said before this node stands.
#[derive(Debug, PartialEq, Eq)]
enum PreCheck {
    /// Enough voters answered, none hearing a live leader: standing can succeed.
    Stand,
    /// `peer` still hears `leader`, which a majority may still follow.
    LeaderAlive { peer: u64, leader: u64 },
    /// Too few voters answered for this node to win: standing would only raise the term,
    /// and a higher term would depose the leader when the links come back.
    TooFewAnswers { answered: usize, needed: usize },
}

/// Asks every peer whether it hears a live leader (Raft's pre-vote, in spirit): stand only
/// when no peer does and this node plus the voters that answered make a majority.
async fn pre_check(
    settings: &ElectionSettings,
    voters: usize,
    peers: Vec<(u64, String, bool)>,
) -> PreCheck {
    let deadline = Duration::from_millis(settings.heartbeat_ms.saturating_mul(2).max(20));
    let asks = peers.iter().map(|(target, address, _)| {
        probe(
            settings.id,
            *target,
            address,
            &settings.dialer,
            &settings.faults,
            deadline,
        )
    });
    let replies = futures::future::join_all(asks).await;
    let mut answered = 1; // this node
    for (reply, (peer, _, voter)) in replies.into_iter().zip(peers.iter()) {
        let Some(reply) = reply else { continue };
        // A follower vouches for its leader if it heard it within the lease. A leader that
        // answers for itself is alive: slow heartbeats (a starved CPU) are no reason to depose
        // it, unless it has not heard from a majority for several election timeouts (it may
        // be cut off in the other direction).
        let patience = if reply.leader_id == *peer {
            settings
                .election_timeout_ms
                .saturating_mul(LEADER_SILENCE_TIMEOUTS)
        } else {
            settings.election_timeout_ms
        };
        let live = reply.leader_id != 0
            && reply.leader_id != settings.id
            && reply.millis_since_leader_contact < patience;
        if live {
            return PreCheck::LeaderAlive {
                peer: *peer,
                leader: reply.leader_id,
            };
        }
        if *voter {
            answered += 1;
        }
    }
    let needed = voters / 2 + 1;
    if answered < needed {
        return PreCheck::TooFewAnswers { answered, needed };
    }
    PreCheck::Stand
}

/// Watches for a silent leader and triggers elections, until Raft stops.
pub async fn run(
    raft: openraft::Raft<TypeConfig>,
    contact: LeaderContact,
    settings: ElectionSettings,
) {
    let tick = Duration::from_millis((settings.heartbeat_ms / 2).clamp(5, 25));
    let mut metrics = raft.metrics();
    loop {
        tokio::time::sleep(tick).await;
        let (delay, voters, peers, term) = {
            let current = metrics.borrow_and_update();
            if current.running_state.is_err() {
                return;
            }
            if current.state == ServerState::Leader {
                contact.heard_leader();
                continue;
            }
            let membership = current.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            let Some(position) = voters.iter().position(|&v| v == settings.id) else {
                // A learner (or a node not yet in any membership) never stands.
                contact.restart_clock();
                continue;
            };
            let delay = election_delay(position, voters.len(), settings.election_timeout_ms);
            let peers: Vec<(u64, String, bool)> = membership
                .nodes()
                .filter(|(&id, _)| id != settings.id)
                .map(|(&id, node)| (id, node.addr.clone(), voters.contains(&id)))
                .collect();
            (delay, voters.len(), peers, current.current_term)
        };
        let silent = contact.elapsed();
        if silent < delay {
            continue;
        }
        match pre_check(&settings, voters, peers).await {
            PreCheck::Stand => {}
            refusal => {
                tracing::debug!(?refusal, "not standing for election");
                contact.restart_clock();
                continue;
            }
        }
        tracing::info!(
            term,
            silent_ms = silent.as_millis(),
            "no leader heard: standing for election"
        );
        contact.restart_clock();
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_ids_stand_first_and_a_lone_voter_at_once() {
        assert_eq!(election_delay(0, 1, 150), Duration::ZERO);
        let delays: Vec<Duration> = (0..3).map(|p| election_delay(p, 3, 150)).collect();
        assert_eq!(
            delays,
            [165, 240, 315].map(Duration::from_millis).to_vec(),
            "each rank waits half an election timeout more than the one before"
        );
        assert_eq!(election_delay(20, 30, 150), election_delay(7, 30, 150));
    }

    #[test]
    fn contact_measures_from_the_latest_touch() {
        let contact = LeaderContact::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(contact.elapsed() >= Duration::from_millis(20));
        contact.heard_leader();
        assert!(contact.elapsed() < Duration::from_millis(20));
        assert!(contact.since_leader() < Duration::from_millis(20));
    }

    #[test]
    fn restarting_the_clock_does_not_vouch_for_a_leader() {
        let contact = LeaderContact::new();
        std::thread::sleep(Duration::from_millis(20));
        contact.restart_clock();
        assert!(contact.elapsed() < Duration::from_millis(20));
        assert!(
            contact.since_leader() >= Duration::from_millis(20),
            "a node that only decided not to stand must not report fresh leader contact"
        );
    }
}
