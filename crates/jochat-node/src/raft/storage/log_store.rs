//! The Raft log: openraft's `RaftLogReader` and `RaftLogStorage` on the in-memory tail and
//! the segment files, and `--force-new-cluster`.

// openraft's traits return its own `StorageError` (a large type) by value.
#![allow(clippy::result_large_err)]

use super::*;

impl LogStore {
    /// How much writing the storage has done so far (a count that stays the same while
    /// nothing is written), for noticing that the node has gone quiet.
    pub fn write_activity(&self) -> u64 {
        self.shared.writer.batches_run()
    }

    /// Fault injection for tests: the next commit of the log or the chat tables fails as a
    /// failed fsync does, writing nothing.
    pub fn fail_next_write(&self) {
        self.shared.writer.fail_next_write();
    }

    /// Fault injection for tests: the next durable commit waits `pause` before it commits,
    /// as on a disk whose fsync is slow.
    pub fn stall_next_write(&self, pause: std::time::Duration) {
        self.shared.writer.stall_next_write(pause);
    }

    /// Fault injection for tests: the next commit without an fsync (an apply's) waits
    /// `pause` once its statements have run.
    pub fn stall_next_lazy_commit(&self, pause: std::time::Duration) {
        self.shared.writer.stall_next_lazy_commit(pause);
    }

    /// Closes the storage once Raft has shut down: every write queued so far is done when
    /// this returns, and any later one (an apply that was still waiting for its turn) is
    /// refused, so nothing reaches the file after the node has closed.
    pub async fn close(&self) {
        self.shared.pace.hurry(u64::MAX);
        self.shared.writer.close().await;
    }

    /// What paces this node's applies while it follows; [`ApplyPace::hurry`] it before
    /// waiting for an applied index.
    pub fn apply_pace(&self) -> Arc<ApplyPace> {
        Arc::clone(&self.shared.pace)
    }

    /// From now on, the appends node `id` makes as leader of its term are reported flushed
    /// as soon as they are queued, so openraft replicates them while the writer syncs them
    /// (see [`super::super::commit_gate`]). Returns the gate, which the network must consult
    /// for every AppendEntries it sends ([`CommitGate::clamp`]) and the node must answer with
    /// a heartbeat ([`CommitGate::released`]). Called once, before Raft starts; a store
    /// without a gate reports every append once it is durable.
    pub fn gate_commits(&self, id: NodeId) -> Arc<CommitGate> {
        Arc::clone(
            self.shared
                .gate
                .get_or_init(|| Arc::new(CommitGate::new(id))),
        )
    }

    /// Lets go of the log tail's written entries and lets SQLite give back the writer
    /// connection's page cache (it refills from the file as needed). In order with the
    /// writes; for an idle node.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn release_memory(&self) -> Result<(), Failure> {
        // Written entries are kept for replication; an idle node replicates nothing, and
        // the log's files answer for them.
        self.shared.tail().forget_written();
        self.shared
            .with_conn(|conn| {
                crate::store::shrink_memory(conn);
                Ok(())
            })
            .await
    }
}

/// The most entry bytes one AppendEntries carries (one entry more if a single entry is
/// larger): small enough to cross, be written and fsynced within a heartbeat interval.
pub const REPLICATION_BYTES_PER_MESSAGE: usize = 256 * 1024;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Failure> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let (below_tail, cached) = {
            let tail = self.shared.tail();
            (tail.start().min(end), tail.read(start, end))
        };
        if start >= below_tail {
            return Ok(cached);
        }
        // Older entries: written to the files.
        let mut entries = self.shared.read_files(start, below_tail).await?;
        entries.extend(cached);
        Ok(entries)
    }

    /// Entries from `start`, at most [`REPLICATION_BYTES_PER_MESSAGE`] of them by size (and
    /// always at least one): what one AppendEntries to a peer carries. openraft gives that
    /// call one heartbeat interval (50 ms by default) and sends the same range again when it
    /// times out, so a batch of large entries that cannot cross in time would never cross.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, Failure> {
        let mut entries = self.try_get_log_entries(start..end).await?;
        let mut bytes = 0;
        let fit = entries
            .iter()
            .position(|entry| {
                bytes += entry_bytes(entry);
                bytes > REPLICATION_BYTES_PER_MESSAGE
            })
            .map_or(entries.len(), |past| past.max(1));
        entries.truncate(fit);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Failure> {
        // In order with the queued log writes, so the files hold every entry appended so far.
        let last_purged: Option<LogId<NodeId>> = self
            .shared
            .in_log_group(false, |conn| get_state(conn, "last_purged"))
            .await?;
        let live = first_live_index(last_purged);
        let last = match self.shared.log.next_index() {
            Some(next) if next > live => self.shared.read_files(next - 1, next).await?.pop(),
            _ => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.map(|entry| entry.log_id).or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Failure> {
        let vote = *vote;
        self.shared
            .in_log_group(true, move |tx| {
                put_state(tx, "vote", &vote).map_err(|e| io_failure(StorageIOError::write_vote, e))
            })
            .await?;
        if let Some(gate) = self.shared.gate.get() {
            gate.vote_saved(vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Failure> {
        let vote: Option<Vote<NodeId>> = self
            .shared
            .in_log_group(false, |tx| get_state(tx, "vote"))
            .await?;
        if let (Some(gate), Some(vote)) = (self.shared.gate.get(), vote) {
            gate.vote_saved(vote);
        }
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Failure> {
        if let Some(committed) = committed {
            self.shared
                .committed_end
                .fetch_max(committed.index + 1, Ordering::AcqRel);
        }
        // Only a hint for a faster restart: the next apply records it in its transaction
        // (every commit is followed by an apply), so that it costs no job of its own, which
        // would keep that apply from running at once (`Writer::try_now`).
        *self
            .shared
            .committed_hint
            .lock()
            .expect("the committed hint's mutex is never held across a panic") = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, Failure> {
        self.shared
            .in_log_group(false, |tx| {
                Ok(get_state::<Option<LogId<NodeId>>>(tx, "committed")?.flatten())
            })
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), Failure>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let (Some(first), Some(last_log_id)) = (
            entries.first().map(|entry| entry.log_id.index),
            entries.last().map(|entry| entry.log_id),
        ) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let last = last_log_id.index;
        let gate = self.shared.gate.get().cloned();
        let own = gate.as_ref().is_some_and(|gate| gate.is_own(&entries));
        tracing::trace!(target: crate::TIMELINE, stage = "append", first, last, own);
        let records = entries
            .iter()
            .map(|entry| {
                Ok(Record {
                    index: entry.log_id.index,
                    term: entry.log_id.leader_id.term,
                    payload: serde_json::to_vec(entry).map_err(write_logs)?,
                })
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        // Readable from the tail once this returns; written (and reported flushed) by the
        // writer with the other appends queued meanwhile.
        let job = self.shared.append_jobs.fetch_add(1, Ordering::Relaxed) + 1;
        let appended = self.shared.tail().append(&entries, job);
        if appended.is_err() {
            // Past the end of the log (after a snapshot): once everything queued is written,
            // the tail starts over at these entries.
            let waited = self.shared.in_log_group(false, |_| Ok(())).await;
            let appended =
                waited.and_then(|()| self.shared.tail().append(&entries, job).map_err(write_logs));
            if let Err(error) = appended {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                return Err(error);
            }
        }
        // The leader's own entries are reported flushed once queued (see `commit_gate`);
        // the gate hears of them before the writer can finish them.
        let (report_now, callback) = match gate.as_ref().filter(|_| own) {
            Some(gate) => {
                gate.queued_own(first, last_log_id);
                (Some(callback), None)
            }
            None => (None, Some(callback)),
        };
        self.shared
            .writer
            .send(Job::Log {
                // An entry at an index already written replaces it and everything after it,
                // as in the tail.
                work: None,
                file: Some(FileOp::Append(records)),
                durable: true,
                append_job: Some(job),
                done: Done::Flushed {
                    callback,
                    last: last_log_id,
                    gate,
                },
            })
            .await;
        if let Some(callback) = report_now {
            // Queued behind every earlier write and ahead of any apply of these entries:
            // replication may start now.
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Failure> {
        self.shared.tail().truncate(log_id.index);
        self.shared
            .writer
            .log_with(true, None, Some(FileOp::TruncateFrom(log_id.index)))
            .await?;
        if let Some(gate) = self.shared.gate.get() {
            gate.truncated();
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Failure> {
        // Recorded durably first; the segment files whose entries are all purged go once
        // that commit is done (entries at or below `last_purged` are dead: nothing reads
        // them, and the next start removes any file a crash left).
        self.shared.tail().purge(log_id.index);
        self.shared
            .live_from
            .fetch_max(log_id.index + 1, Ordering::AcqRel);
        self.shared
            .with_file_in_log_group(true, FileOp::PurgeUpto(log_id.index), move |tx| {
                put_state(tx, "last_purged", &log_id)
            })
            .await
    }
}

impl LogStore {
    /// Disaster recovery (`--force-new-cluster`): makes node `id`, serving at `address`, the
    /// only member of its cluster, keeping its log and chat state. Appends a membership entry
    /// naming only this node after the last log entry (openraft takes the newest membership in
    /// the log as effective), and sets the vote to this node in the newest term seen, so the
    /// node elects itself at a later term and commits everything it holds.
    ///
    /// Returns whether anything changed: a node with no state has nothing to recover, and a
    /// node already alone in its membership is left as it is (so a restart with the flag
    /// still set does nothing more).
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub async fn force_sole_member(&self, id: NodeId, address: String) -> Result<bool, Failure> {
        type State = (
            Option<LogId<NodeId>>,
            Option<StoredMembership<NodeId, BasicNode>>,
            Option<Vote<NodeId>>,
        );
        let (last_purged, applied_membership, vote): State = self
            .shared
            .in_log_group(false, |tx| {
                Ok((
                    get_state(tx, "last_purged")?,
                    get_state(tx, "last_membership")?,
                    get_state(tx, "vote")?,
                ))
            })
            .await?;
        let index = Arc::clone(&self.shared.log);
        let live = first_live_index(last_purged);
        let (last_log_id, in_log) =
            tokio::task::spawn_blocking(move || newest_membership_in_log(&index, live))
                .await
                .map_err(read_logs)??;
        let Some(last_log_id) = last_log_id.or(last_purged) else {
            return Ok(false);
        };
        let effective = match in_log {
            Some(membership) => membership,
            None => applied_membership.unwrap_or_default().membership().clone(),
        };
        if effective.voter_ids().eq([id]) && effective.nodes().count() == 1 {
            return Ok(false);
        }
        let term = vote
            .unwrap_or_default()
            .leader_id
            .term
            .max(last_log_id.leader_id.term);
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(last_log_id.leader_id, last_log_id.index + 1),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([id])],
                BTreeMap::from([(id, BasicNode::new(address))]),
            )),
        };
        let record = Record {
            index: entry.log_id.index,
            term: entry.log_id.leader_id.term,
            payload: serde_json::to_vec(&entry).map_err(write_logs)?,
        };
        self.shared
            .with_file_in_log_group(true, FileOp::Append(vec![record]), move |tx| {
                put_state(tx, "vote", &Vote::new(term, id))
            })
            .await?;
        // Raft has not started: the tail is empty, and now starts after the new entry.
        *self.shared.tail() = Tail::new(entry.log_id.index + 1, TAIL_CAPACITY);
        Ok(true)
    }
}

/// A cluster's membership, as openraft stores it.
type ClusterMembership = Membership<NodeId, BasicNode>;

/// The last log id in the log's files from index `live` on, and the newest membership
/// entry's membership there, if any.
fn newest_membership_in_log(
    index: &LogIndex,
    live: u64,
) -> Result<(Option<LogId<NodeId>>, Option<ClusterMembership>), Failure> {
    let mut last = None;
    let mut found = None;
    let mut failure = None;
    index
        .scan_back(|record| {
            if record.index < live {
                return false;
            }
            match decode_entry(&record.payload) {
                Ok(entry) => {
                    last.get_or_insert(entry.log_id);
                    if let EntryPayload::Membership(membership) = entry.payload {
                        found = Some(membership);
                        return false;
                    }
                    true
                }
                Err(error) => {
                    failure = Some(error);
                    false
                }
            }
        })
        .map_err(read_logs)?;
    match failure {
        Some(error) => Err(error),
        None => Ok((last, found)),
    }
}
