//! The leader's own log write overlapping replication, with durability kept.
//!
//! openraft 0.9's core waits until an append is reported flushed before it replicates the
//! entries and takes the next client write. For a follower that wait is what Raft needs: its
//! answer to the leader says the entries are on its disk. For the leader's own entries it only
//! serializes: the entries would cross to the followers while the leader's fsync runs. So the
//! log store, once a [`CommitGate`] is attached ([`super::storage::LogStore::gate_commits`]),
//! reports the leader's own appends flushed as soon as they are queued for the writer, and the
//! gate keeps every promise that report would otherwise break:
//!
//! - **The client's answer.** openraft counts the leader's copy towards the majority at once,
//!   so it may commit an entry that only one follower holds durably. The leader answers a
//!   client only after applying the entry, and applies run on the same writer queue as the
//!   log writes, in order, and are reported after the commit that holds them: an applied entry
//!   is on the leader's disk too. An answered write is on a majority's disks (the leader's and
//!   the follower's that completed the majority).
//! - **The followers' commit index.** A follower applies what the leader says is committed;
//!   if the leader then crashed before its fsync, the entry could be on one disk only and a
//!   later leader could overwrite what a follower applied. So every AppendEntries leaving
//!   this node carries a commit index no higher than the last entry before the first own
//!   append not yet durable ([`CommitGate::clamp`]); the full index follows with the next
//!   message or the heartbeat the gate asks for once the write is durable
//!   ([`CommitGate::released`]).
//! - **Failure.** A failed write stops the writer for good (every later job fails, the node
//!   stops): an own append reported early and then lost is never applied nor announced.
//!
//! Which appends are the leader's own: those made while this node's saved vote is a committed
//! vote for itself (it won the election of that term) and whose entries all carry that
//! term's leader id. Only the leader of a term makes entries with its leader id, and a node
//! receiving AppendEntries of a newer term saves that vote first; so a follower's appends,
//! whose answers must wait for the disk, are never taken for the leader's.

use std::collections::VecDeque;
use std::sync::Mutex;

use openraft::{Entry, LogId, Vote};

use super::TypeConfig;

type NodeId = u64;

/// Decides which appends may be reported flushed early and what commit index may leave the
/// node meanwhile. Shared by the log store, the writer and the network.
#[derive(Debug)]
pub struct CommitGate {
    state: Mutex<GateState>,
    /// Woken when an own append became durable after a commit index was held back.
    release: tokio::sync::Notify,
}

#[derive(Debug)]
struct GateState {
    /// This node.
    id: NodeId,
    /// The vote last saved (or read at start-up).
    vote: Option<Vote<NodeId>>,
    /// The own appends reported early and not yet durable, oldest first: (first index, last
    /// log id).
    pending: VecDeque<(u64, LogId<NodeId>)>,
    /// The last entry known durable, in append order; `None` until the first append and
    /// after a truncation (when the entry before the cut is not known here).
    durable: Option<LogId<NodeId>>,
    /// Whether a commit index was held back since the last release.
    held_back: bool,
}

impl CommitGate {
    /// A gate for node `id`, which has no vote yet.
    pub fn new(id: NodeId) -> Self {
        Self {
            state: Mutex::new(GateState {
                id,
                vote: None,
                pending: VecDeque::new(),
                durable: None,
                held_back: false,
            }),
            release: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .expect("the commit gate's mutex is never held across a panic")
    }

    /// The vote is now `vote` (saved durably, or read at start-up).
    pub fn vote_saved(&self, vote: Vote<NodeId>) {
        self.state().vote = Some(vote);
    }

    /// Whether this node's saved vote is a committed vote for itself: it leads its term (as
    /// far as its storage knows; openraft steps down before it saves another vote).
    pub fn leads(&self) -> bool {
        let state = self.state();
        state
            .vote
            .is_some_and(|vote| vote.is_committed() && vote.leader_id().node_id == state.id)
    }

    /// Whether `entries` are this node's own as leader of its current term: their append may
    /// be reported flushed before it is (see the module documentation).
    pub fn is_own(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let state = self.state();
        let Some(vote) = state.vote.filter(|vote| vote.is_committed()) else {
            return false;
        };
        vote.leader_id().node_id == state.id
            && !entries.is_empty()
            && entries
                .iter()
                .all(|entry| entry.log_id.leader_id == *vote.leader_id())
    }

    /// An own append of the entries `first..=last` was queued and reported flushed.
    pub fn queued_own(&self, first: u64, last: LogId<NodeId>) {
        self.state().pending.push_back((first, last));
    }

    /// An append ending at `last` is durable (`own`: one reported early).
    pub fn written(&self, last: LogId<NodeId>, own: bool) {
        let mut state = self.state();
        if own {
            // Appends complete in the order they were queued.
            let done = state.pending.pop_front();
            debug_assert_eq!(
                done.map(|(_, id)| id),
                Some(last),
                "own appends out of order"
            );
        }
        state.durable = Some(last);
        if own && state.held_back {
            state.held_back = false;
            drop(state);
            self.release.notify_one();
        }
    }

    /// The log was cut: the last durable entry is no longer known.
    pub fn truncated(&self) {
        self.state().durable = None;
    }

    /// The commit index an AppendEntries may carry instead of `commit`: `commit` itself
    /// unless an own append at or below it is not durable yet; then the last entry known
    /// durable before that append, or `None` (a follower never lowers its commit index, so
    /// either only delays what it applies).
    pub fn clamp(&self, commit: Option<LogId<NodeId>>) -> Option<LogId<NodeId>> {
        let commit = commit?;
        let mut state = self.state();
        let Some(&(first_pending, _)) = state.pending.front() else {
            return Some(commit);
        };
        if commit.index < first_pending {
            return Some(commit);
        }
        state.held_back = true;
        tracing::trace!(target: crate::TIMELINE, stage = "commit.held_back", commit = commit.index, first_pending);
        state
            .durable
            .filter(|durable| durable.index < first_pending && *durable <= commit)
    }

    /// Waits until an own append becomes durable after a commit index was held back: the
    /// followers should hear the full one (a heartbeat carries it).
    pub async fn released(&self) {
        self.release.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn blank(log_id: LogId<NodeId>) -> Entry<TypeConfig> {
        Entry {
            log_id,
            payload: EntryPayload::Blank,
        }
    }

    fn leading(gate: &CommitGate, term: u64, node: u64) {
        let mut vote = Vote::new(term, node);
        vote.commit();
        gate.vote_saved(vote);
    }

    #[test]
    fn only_the_leaders_entries_of_its_own_term_are_its_own() {
        let gate = CommitGate::new(1);
        let ours = [blank(id(3, 1, 10)), blank(id(3, 1, 11))];
        assert!(!gate.is_own(&ours), "no vote yet");
        gate.vote_saved(Vote::new(3, 1));
        assert!(!gate.is_own(&ours), "a candidate's vote is not a leader's");
        leading(&gate, 3, 1);
        assert!(gate.is_own(&ours));
        assert!(!gate.is_own(&[]), "nothing to report");
        assert!(
            !gate.is_own(&[blank(id(3, 1, 10)), blank(id(2, 2, 11))]),
            "an entry of another leader"
        );
        assert!(
            !gate.is_own(&[blank(id(2, 1, 9))]),
            "an earlier term's own entry"
        );
        // Another node leads: its entries are a follower's appends here.
        let mut vote = Vote::new(4, 2);
        vote.commit();
        gate.vote_saved(vote);
        assert!(!gate.is_own(&[blank(id(4, 2, 12))]));
        assert!(!gate.is_own(&ours));
    }

    #[test]
    fn a_commit_past_an_own_append_not_yet_durable_is_held_at_the_entry_before_it() {
        let gate = CommitGate::new(1);
        leading(&gate, 3, 1);
        assert_eq!(gate.clamp(None), None);
        // Before any own append: nothing to hold back.
        gate.written(id(2, 2, 9), false);
        assert_eq!(gate.clamp(Some(id(2, 2, 9))), Some(id(2, 2, 9)));

        gate.queued_own(10, id(3, 1, 10));
        gate.queued_own(11, id(3, 1, 12));
        assert_eq!(
            gate.clamp(Some(id(2, 2, 9))),
            Some(id(2, 2, 9)),
            "below: unchanged"
        );
        assert_eq!(
            gate.clamp(Some(id(3, 1, 11))),
            Some(id(2, 2, 9)),
            "held at 9"
        );

        // 10 is durable: the commit may reach 10, not past 11.
        gate.written(id(3, 1, 10), true);
        assert_eq!(gate.clamp(Some(id(3, 1, 12))), Some(id(3, 1, 10)));
        gate.written(id(3, 1, 12), true);
        assert_eq!(gate.clamp(Some(id(3, 1, 12))), Some(id(3, 1, 12)));
    }

    #[test]
    fn after_a_cut_nothing_is_known_durable_so_a_held_back_commit_says_nothing() {
        let gate = CommitGate::new(1);
        gate.written(id(2, 2, 20), false);
        gate.truncated();
        leading(&gate, 3, 1);
        gate.queued_own(15, id(3, 1, 15));
        assert_eq!(gate.clamp(Some(id(3, 1, 15))), None);
    }

    #[tokio::test]
    async fn a_held_back_commit_asks_for_a_heartbeat_once_the_append_is_durable() {
        let gate = std::sync::Arc::new(CommitGate::new(1));
        leading(&gate, 3, 1);
        gate.queued_own(1, id(3, 1, 1));
        assert_eq!(gate.clamp(Some(id(3, 1, 1))), None);
        let waiting = tokio::spawn({
            let gate = std::sync::Arc::clone(&gate);
            async move { gate.released().await }
        });
        gate.written(id(3, 1, 1), true);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("released within 5 s")
            .expect("the waiting task runs to the end");
    }
}
