//! The Raft log: openraft's `RaftLogReader` and `RaftLogStorage` on the in-memory tail and
//! the `raft_log` table, background deletion of purged entries, and `--force-new-cluster`.

// openraft's traits return its own `StorageError` (a large type) by value.
#![allow(clippy::result_large_err)]

use super::*;

/// How many log entries one background deletion job removes (entries are at most about
/// 1 MiB, usually a few KiB).
const PURGE_CHUNK_ENTRIES: i64 = 32;

/// Deletes the log's rows up to the newest index `upto` holds, [`PURGE_CHUNK_ENTRIES`] per
/// writer job, each job queued once the one before has run, so appends and applies queued
/// meanwhile go first. Ends when the writer stops or the store is dropped.
pub(super) async fn delete_purged(writer: Writer, mut upto: tokio::sync::watch::Receiver<u64>) {
    loop {
        let target = to_sql_index(*upto.borrow_and_update());
        loop {
            let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let report = Arc::clone(&full);
            let deleted = writer
                .log(
                    false,
                    Box::new(move |tx| {
                        let deleted = tx
                            .prepare_cached(
                                "DELETE FROM raft_log WHERE log_index <= ?1 \
                                 AND log_index < (SELECT MIN(log_index) FROM raft_log) + ?2",
                            )
                            .and_then(|mut delete| {
                                delete.execute(params![target, PURGE_CHUNK_ENTRIES])
                            })
                            .map_err(write_logs)?;
                        report.store(
                            i64::try_from(deleted).unwrap_or(i64::MAX) >= PURGE_CHUNK_ENTRIES,
                            Ordering::Relaxed,
                        );
                        Ok(())
                    }),
                )
                .await;
            if let Err(error) = deleted {
                tracing::warn!(%error, "purged log entries were not deleted; the next purge will");
                return;
            }
            if !full.load(Ordering::Relaxed) {
                break;
            }
        }
        if upto.changed().await.is_err() {
            return;
        }
    }
}

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

    /// Lets go of the log tail's written entries and lets SQLite give back the page caches
    /// of the writer and log-reader connections (they refill from the file as needed). In
    /// order with the writes; for an idle node.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn release_memory(&self) -> Result<(), Failure> {
        // Written entries are kept for replication; an idle node replicates nothing, and
        // SQLite answers for them.
        self.shared.tail().forget_written();
        self.shared
            .with_conn(|conn| {
                crate::store::shrink_memory(conn);
                Ok(())
            })
            .await?;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let reader = shared
                .reader
                .lock()
                .expect("the log reader's mutex is never held across a panic");
            crate::store::shrink_memory(&reader);
        })
        .await
        .map_err(read_logs)
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
            Bound::Included(&i) => to_sql_index(i),
            Bound::Excluded(&i) => to_sql_index(i).saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => to_sql_index(i).saturating_add(1),
            Bound::Excluded(&i) => to_sql_index(i),
            Bound::Unbounded => i64::MAX,
        };
        let (below_tail, cached) = {
            let tail = self.shared.tail();
            let from = u64::try_from(start).unwrap_or(0);
            let to = u64::try_from(end).unwrap_or(u64::MAX);
            (to_sql_index(tail.start()).min(end), tail.read(from, to))
        };
        if start >= below_tail {
            return Ok(cached);
        }
        // Older entries: committed rows, read on a connection of their own.
        let shared = Arc::clone(&self.shared);
        let mut entries = tokio::task::spawn_blocking(move || {
            let reader = shared
                .reader
                .lock()
                .expect("the log reader's mutex is never held across a panic");
            let mut statement = reader
                .prepare_cached(
                    "SELECT entry FROM raft_log WHERE log_index >= ?1 AND log_index < ?2 \
                     ORDER BY log_index",
                )
                .map_err(read_logs)?;
            let rows = statement
                .query_map(params![start, below_tail], |row| row.get::<_, Vec<u8>>(0))
                .map_err(read_logs)?;
            rows.map(|row| decode_entry(&row.map_err(read_logs)?))
                .collect::<Result<Vec<_>, Failure>>()
        })
        .await
        .map_err(read_logs)??;
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
        // In order with the queued log writes, so the file holds every entry appended so far.
        self.shared
            .in_log_group(false, |conn| {
                let last_purged: Option<LogId<NodeId>> = get_state(conn, "last_purged")?;
                let last: Option<Vec<u8>> = conn
                    .query_row(
                        "SELECT entry FROM raft_log WHERE log_index >= ?1 \
                         ORDER BY log_index DESC LIMIT 1",
                        [to_sql_index(first_live_index(last_purged))],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(read_logs)?;
                let last_log_id = match last {
                    Some(bytes) => Some(decode_entry(&bytes)?.log_id),
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id,
                })
            })
            .await
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
        let rows = entries
            .iter()
            .map(|entry| {
                Ok((
                    to_sql_index(entry.log_id.index),
                    to_sql_index(entry.log_id.leader_id.term),
                    serde_json::to_vec(entry).map_err(write_logs)?,
                ))
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
                work: Box::new(move |tx| {
                    // An entry at an index already written replaces it and everything after it,
                    // as in the tail.
                    tx.prepare_cached("DELETE FROM raft_log WHERE log_index >= ?1")
                        .and_then(|mut statement| statement.execute([to_sql_index(first)]))
                        .map_err(write_logs)?;
                    let mut statement = tx
                        .prepare_cached(
                            "INSERT INTO raft_log (log_index, term, entry) VALUES (?1, ?2, ?3)",
                        )
                        .map_err(write_logs)?;
                    for (index, term, bytes) in &rows {
                        statement
                            .execute(params![index, term, bytes])
                            .map_err(write_logs)?;
                    }
                    Ok(())
                }),
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
            .in_log_group(true, move |tx| {
                tx.execute(
                    "DELETE FROM raft_log WHERE log_index >= ?1",
                    [to_sql_index(log_id.index)],
                )
                .map_err(write_logs)?;
                Ok(())
            })
            .await?;
        if let Some(gate) = self.shared.gate.get() {
            gate.truncated();
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Failure> {
        // Recorded at once; the rows go a few at a time in the background (`delete_purged`):
        // a purge after a snapshot of a large database can cover hundreds of megabytes of
        // log, and one transaction deleting them all would hold every append and apply
        // queued behind it (and openraft's core, which awaits this call) for seconds. Rows at
        // or below `last_purged` are dead: nothing reads them.
        self.shared.tail().purge(log_id.index);
        self.shared
            .in_log_group(true, move |tx| put_state(tx, "last_purged", &log_id))
            .await?;
        self.shared.delete_purged_upto(log_id.index);
        Ok(())
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
        let appended = self
            .shared
            .in_log_group(true, move |tx| {
                let (last_log_id, in_log) = newest_membership_in_log(tx)?;
                let Some(last_log_id) = last_log_id.or(get_state(tx, "last_purged")?) else {
                    return Ok(None);
                };
                let effective = match in_log {
                    Some(membership) => membership,
                    None => {
                        get_state::<StoredMembership<NodeId, BasicNode>>(tx, "last_membership")?
                            .unwrap_or_default()
                            .membership()
                            .clone()
                    }
                };
                let alone = effective.voter_ids().eq([id]) && effective.nodes().count() == 1;
                if alone {
                    return Ok(None);
                }
                let vote: Vote<NodeId> = get_state(tx, "vote")?.unwrap_or_default();
                let term = vote.leader_id.term.max(last_log_id.leader_id.term);
                let entry = Entry::<TypeConfig> {
                    log_id: LogId::new(last_log_id.leader_id, last_log_id.index + 1),
                    payload: EntryPayload::Membership(Membership::new(
                        vec![BTreeSet::from([id])],
                        BTreeMap::from([(id, BasicNode::new(address))]),
                    )),
                };
                let bytes = serde_json::to_vec(&entry).map_err(write_logs)?;
                tx.execute(
                    "INSERT INTO raft_log (log_index, term, entry) VALUES (?1, ?2, ?3)",
                    params![
                        to_sql_index(entry.log_id.index),
                        to_sql_index(entry.log_id.leader_id.term),
                        bytes
                    ],
                )
                .map_err(write_logs)?;
                put_state(tx, "vote", &Vote::new(term, id))?;
                Ok(Some(entry.log_id.index))
            })
            .await?;
        // Raft has not started: the tail is empty, and now starts after the new entry.
        if let Some(index) = appended {
            *self.shared.tail() = Tail::new(index + 1, TAIL_CAPACITY);
        }
        Ok(appended.is_some())
    }
}

/// A cluster's membership, as openraft stores it.
type ClusterMembership = Membership<NodeId, BasicNode>;

/// The last log id in the log, and the newest membership entry's membership, if any.
fn newest_membership_in_log(
    conn: &Connection,
) -> Result<(Option<LogId<NodeId>>, Option<ClusterMembership>), Failure> {
    let last_purged: Option<LogId<NodeId>> = get_state(conn, "last_purged")?;
    let mut statement = conn
        .prepare("SELECT entry FROM raft_log WHERE log_index >= ?1 ORDER BY log_index DESC")
        .map_err(read_logs)?;
    let mut rows = statement
        .query([to_sql_index(first_live_index(last_purged))])
        .map_err(read_logs)?;
    let mut last = None;
    while let Some(row) = rows.next().map_err(read_logs)? {
        let entry = decode_entry(&row.get::<_, Vec<u8>>(0).map_err(read_logs)?)?;
        last.get_or_insert(entry.log_id);
        if let EntryPayload::Membership(membership) = entry.payload {
            return Ok((last, Some(membership)));
        }
    }
    Ok((last, None))
}
