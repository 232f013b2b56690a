//! The state machine: openraft's `RaftStateMachine` on the chat tables: applying committed
//! entries (and publishing what subscribers hear once the transaction commits), and
//! installing a snapshot received from the leader.

// openraft's traits return its own `StorageError` (a large type) by value.
#![allow(clippy::result_large_err)]

use super::*;

/// Applies `entries` inside `tx` (their commands through [`apply_commands`]) and records the
/// last applied id and membership; returns each entry's result, the events to publish once
/// the transaction commits (stored messages only if `messages_read`), and whether a message
/// was stored.
fn apply_entries(
    tx: &rusqlite::Transaction<'_>,
    entries: &[Entry<TypeConfig>],
    messages_read: bool,
) -> Result<ApplyOutput, Failure> {
    if cfg!(debug_assertions) {
        // The applied index only grows. (Read only in debug builds: it costs a query per
        // apply.)
        let previous: Option<LogId<NodeId>> = get_state(tx, "last_applied")?;
        let mut last = previous.map(|id| id.index);
        for entry in entries {
            debug_assert!(
                last.is_none_or(|last| entry.log_id.index > last),
                "the applied index only grows: entry {} after {last:?}",
                entry.log_id.index
            );
            last = Some(entry.log_id.index);
        }
    }
    let commands: Vec<&Command> = entries
        .iter()
        .filter_map(|entry| match &entry.payload {
            EntryPayload::Normal(batch) => Some(batch.0.iter()),
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        })
        .flatten()
        .collect();
    let mut stored = false;
    let (outcomes, events) = apply_commands(tx, &commands, write_state, |tx, outcome| {
        stored |= matches!(outcome, Outcome::MessageSent(_));
        event_of(tx, outcome, messages_read)
    })?;
    let mut outcomes = outcomes.into_iter();
    let mut results = Vec::with_capacity(entries.len());
    let mut membership: Option<StoredMembership<NodeId, openraft::BasicNode>> = None;
    for entry in entries {
        results.push(match &entry.payload {
            EntryPayload::Blank => Applied::Internal,
            EntryPayload::Normal(batch) => {
                Applied::Commands(outcomes.by_ref().take(batch.0.len()).collect())
            }
            EntryPayload::Membership(config) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), config.clone()));
                Applied::Internal
            }
        });
    }
    if let Some(last) = entries.last() {
        put_state(tx, "last_applied", &last.log_id)?;
    }
    if let Some(membership) = membership {
        put_state(tx, "last_membership", &membership)?;
    }
    Ok((results, events, stored))
}

/// What subscribers hear of an applied command's `outcome` (a stored message, read back, only
/// if `messages_read`).
fn event_of(
    conn: &rusqlite::Transaction<'_>,
    outcome: &Outcome,
    messages_read: bool,
) -> Result<Option<ChatEvent>, Failure> {
    Ok(match outcome {
        Outcome::MessageSent(_) if !messages_read => None,
        Outcome::MessageSent(sent) => SqliteChat::new(conn)
            .message_by_id(sent.id)
            .map_err(read_state)?
            .map(ChatEvent::Message),
        Outcome::SessionCreated(created) => Some(ChatEvent::SessionsChanged(Some(created.user_id))),
        Outcome::SessionRevoked | Outcome::AccountDeleted(_) | Outcome::Reset => {
            Some(ChatEvent::SessionsChanged(None))
        }
        Outcome::SignedUp(_) | Outcome::Delivered(_) | Outcome::MessagesDeleted(_) => None,
    })
}

/// The most entries a paced follower applies beyond those openraft asked for: far fewer
/// than openraft keeps in the log behind a snapshot (`max_in_snapshot_log_to_keep`, 1,000),
/// so the entries openraft reads for the calls still queued are never purged first.
const APPLY_AHEAD_ENTRIES_MAX: u64 = 512;

/// What an apply produced: each entry's result, the events to publish once it commits, and
/// whether a message was stored.
type ApplyOutput = (Vec<Applied>, Vec<ChatEvent>, bool);

/// An apply the leader answered before its commit, waiting for that commit.
pub(super) struct Finishing {
    /// The write: its transaction's commit, and what the apply produced.
    commit: tokio::task::JoinHandle<Result<ApplyOutput, Failure>>,
    /// Whether stored messages were read back for events.
    messages_read: bool,
    /// The apply's last entry.
    last: u64,
}

/// Once an apply up to `last` has committed: reads may see it, and its `events` go out
/// (with `Resync` when a message was stored but not read back).
fn publish_committed(
    shared: &Shared,
    channel: &Events,
    mut events: Vec<ChatEvent>,
    stored: bool,
    messages_read: bool,
    last: u64,
) {
    if stored && !messages_read {
        events.push(ChatEvent::Resync);
    }
    shared.visibility.committed(last + 1);
    // Published only now that the transaction has committed.
    channel.publish(events);
}

impl StateMachineStore {
    /// Appends to `entries` (a follower's, starting where nothing is applied yet) the
    /// entries after them that are committed, in the log's tail and contiguous, at most
    /// [`APPLY_AHEAD_ENTRIES_MAX`] of them.
    fn take_committed_ahead(&self, entries: &mut Vec<Entry<TypeConfig>>) {
        let Some(last) = entries.last().map(|entry| entry.log_id.index) else {
            return;
        };
        // Index + 1 of the newest commit openraft saved (0: none yet).
        let upto = self
            .shared
            .committed_end
            .load(Ordering::Acquire)
            .min(last + 1 + APPLY_AHEAD_ENTRIES_MAX);
        if upto <= last + 1 {
            return;
        }
        let mut expected = last + 1;
        let ahead: Vec<Entry<TypeConfig>> = self
            .shared
            .tail()
            .read(last + 1, upto)
            .into_iter()
            .take_while(|entry| {
                let contiguous = entry.log_id.index == expected;
                expected += 1;
                contiguous
            })
            .collect();
        entries.extend(ahead);
    }

    /// Applies `entries` in one transaction and publishes their events once it commits.
    ///
    /// With `early` on the leader, the outcomes are returned as soon as the statements have
    /// run and the entries' own log appends are durable, before the transaction commits
    /// (the module documentation of `raft::storage`, "Outcomes before the commit"); the
    /// commit, the events and what reads may see follow on the [`Finishing`] task.
    async fn apply_run(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
        early: bool,
    ) -> Result<Vec<Applied>, Failure> {
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let last = entries.last().map_or(0, |entry| entry.log_id.index);
        tracing::trace!(target: crate::TIMELINE, stage = "apply", last);
        // With nobody subscribed, stored messages are not read back for events. Anyone who
        // subscribes meanwhile hears `Resync` once the transaction has committed, and reads
        // what it missed from the database (it joined the channel before that read).
        let messages_read = self.events.has_receivers();
        // The leader applies on this task when the writer is idle (a client waits for the
        // outcome); a follower's paced applies are large and answer nobody, so they run on
        // the writer's thread and leave the runtime's threads to replication.
        let at_once = self.shared.gate.get().is_none_or(|gate| gate.leads());
        let (release, released) = tokio::sync::oneshot::channel::<Vec<Applied>>();
        // Only a leader answers early: storage used without a commit gate (tests, tools)
        // reports each apply once committed.
        let leads = self.shared.gate.get().is_some_and(|gate| gate.leads());
        let release = (early && leads).then(|| {
            // Every append queued so far: those of the entries applied here among them.
            let marker = self.shared.writer.appends_marker();
            (release, marker)
        });
        let early = release.is_some();
        let work = {
            let shared = Arc::clone(&self.shared);
            move |tx: &mut rusqlite::Transaction<'_>| {
                let hint = shared
                    .committed_hint
                    .lock()
                    .expect("the committed hint's mutex is never held across a panic")
                    .take();
                if let Some(committed) = hint {
                    put_state(tx, "committed", &committed)?;
                }
                let applied = apply_entries(tx, &entries, messages_read)?;
                if let Some((release, marker)) = release {
                    // The leader answers only for entries on its own disk.
                    shared.writer.wait_for_appends(marker)?;
                    shared.visibility.released(last + 1);
                    tracing::trace!(target: crate::TIMELINE, stage = "apply.released", last);
                    // Nobody waiting any more (the node is closing) needs no answer.
                    let _ = release.send(applied.0.clone());
                }
                Ok(applied)
            }
        };
        self.shared.gauge.applied(bytes as u64);
        if !early {
            let applied = self.shared.write(false, at_once, None, work).await?;
            return Ok(self.committed(applied, messages_read, last));
        }
        let commit = tokio::spawn({
            let shared = Arc::clone(&self.shared);
            // On the thread that committed: reads may see the apply from now on.
            let then: super::super::writer::Then = {
                let visibility = Arc::clone(&shared.visibility);
                Box::new(move |outcome| match outcome {
                    Ok(()) => visibility.committed(last + 1),
                    Err(_) => visibility.failed(),
                })
            };
            async move { shared.write_then(false, true, None, work, Some(then)).await }
        });
        match released.await {
            Ok(results) => {
                self.shared
                    .next_unapplied
                    .store(last + 1, Ordering::Release);
                tracing::trace!(target: crate::TIMELINE, stage = "applied", last);
                self.finishing(Finishing {
                    commit,
                    messages_read,
                    last,
                });
                Ok(results)
            }
            // The work failed, or never ran: the write says why.
            Err(_) => {
                let outcome = commit.await.map_err(write_logs).and_then(|done| done);
                match outcome {
                    Ok(applied) => Ok(self.committed(applied, messages_read, last)),
                    Err(failure) => {
                        self.shared.visibility.failed();
                        Err(failure)
                    }
                }
            }
        }
    }

    /// An apply that committed: notes it applied, publishes its events, lets reads see it,
    /// and returns its outcomes.
    fn committed(
        &self,
        (results, events, stored): ApplyOutput,
        messages_read: bool,
        last: u64,
    ) -> Vec<Applied> {
        self.shared
            .next_unapplied
            .store(last + 1, Ordering::Release);
        tracing::trace!(target: crate::TIMELINE, stage = "applied", last);
        publish_committed(
            &self.shared,
            &self.events,
            events,
            stored,
            messages_read,
            last,
        );
        results
    }

    /// Hands an early-answered apply to the task that sees it through its commit.
    fn finishing(&self, finishing: Finishing) {
        let queue = self.shared.finisher.get_or_init(|| {
            let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<Finishing>();
            let (shared, events) = (Arc::clone(&self.shared), self.events.clone());
            tokio::spawn(async move {
                // In order: the writer commits them in order, and events go out in order.
                while let Some(Finishing {
                    commit,
                    messages_read,
                    last,
                }) = pending.recv().await
                {
                    // What reads may see moved on the writer's thread already (the
                    // write's `then`); here only the events remain.
                    match commit.await.map_err(write_logs).and_then(|done| done) {
                        Ok((_, events_of, stored)) => publish_committed(
                            &shared,
                            &events,
                            events_of,
                            stored,
                            messages_read,
                            last,
                        ),
                        Err(failure) => {
                            tracing::error!(%failure, last, "an answered apply did not commit; the writer has stopped");
                            shared.visibility.failed();
                        }
                    }
                }
            });
            queue
        });
        if let Err(unsent) = queue.send(finishing) {
            // The task has ended (the runtime is shutting down): the commit still moves what
            // reads see, but nobody publishes its events.
            tracing::warn!(
                last = unsent.0.last,
                "an answered apply's events are not published: the node is shutting down"
            );
        }
    }

    /// Gives every state hash waiting for `index` (just applied) a read view of the tables
    /// as they stand now, before anything more is applied.
    async fn hand_over_views(&self, index: u64) {
        let waiting = self
            .shared
            .hash_hooks
            .lock()
            .expect("the hash hooks' mutex is never held across a panic")
            .remove(&index)
            .unwrap_or_default();
        for sender in waiting {
            let path = self.shared.path.clone();
            match tokio::task::spawn_blocking(move || super::state_hash::open_view(&path)).await {
                Ok(Ok(view)) => {
                    let _ = sender.send(view);
                }
                Ok(Err(error)) => tracing::warn!(%error, index, "no read view for a state hash"),
                Err(error) => tracing::warn!(%error, index, "no read view for a state hash"),
            }
        }
    }

    /// Hashes this node's chat tables at chosen indexes (`raft::state_check`).
    pub fn hasher(&self) -> super::StateHasher {
        super::StateHasher {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The channel this state machine publishes applied messages and session changes on.
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// How far applies are answered and committed: what the node's reads wait for
    /// ([`crate::store::Database::gated_by`]).
    pub fn visibility(&self) -> Arc<Visibility> {
        Arc::clone(&self.shared.visibility)
    }

    /// What [`super::snapshots::run`] reads to decide when a snapshot is due.
    pub fn snapshot_gauge(&self) -> Arc<SnapshotGauge> {
        Arc::clone(&self.shared.gauge)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        Failure,
    > {
        self.shared
            .with_conn(|conn| {
                Ok((
                    get_state(conn, "last_applied")?,
                    get_state(conn, "last_membership")?.unwrap_or_default(),
                ))
            })
            .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, Failure>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rest: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let asked = rest.len();
        // Entries a paced apply took ahead of openraft's asking are applied already; openraft
        // reads no outcome on a follower (nobody there awaits them).
        let next = self.shared.next_unapplied.load(Ordering::Acquire);
        let done = rest
            .iter()
            .take_while(|entry| entry.log_id.index < next)
            .count();
        let mut results = vec![Applied::Internal; done];
        rest.drain(..done);
        let Some(first) = rest.first().map(|entry| entry.log_id.index) else {
            return Ok(results);
        };
        if self.shared.gate.get().is_some_and(|gate| !gate.leads()) {
            // A follower: let committed entries gather, then apply everything committed by
            // then, so that the next calls (each for a commit index openraft heard meanwhile)
            // find their entries applied.
            self.shared.pace.wait_turn(first).await;
            self.take_committed_ahead(&mut rest);
        }
        // A state hash waits for one of these entries: apply up to it, hand over a read view
        // of the tables there, then apply the rest.
        let hooked: Vec<u64> = match (rest.first(), rest.last()) {
            (Some(first), Some(last)) => self
                .shared
                .hash_hooks
                .lock()
                .expect("the hash hooks' mutex is never held across a panic")
                .range(first.log_id.index..=last.log_id.index)
                .map(|(index, _)| *index)
                .collect(),
            _ => Vec::new(),
        };
        for index in hooked {
            let Some(cut) = rest.iter().position(|e| e.log_id.index == index) else {
                continue;
            };
            let after = rest.split_off(cut + 1);
            results.extend(self.apply_run(rest, false).await?);
            rest = after;
            self.hand_over_views(index).await;
        }
        if !rest.is_empty() {
            results.extend(self.apply_run(rest, true).await?);
        }
        // Only the outcomes of what openraft asked for.
        results.truncate(asked);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, Failure> {
        let path = self.snapshot_path("receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snapshot_failure)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), Failure> {
        // 1. Make the received bytes durable under the snapshot's own name.
        snapshot.sync_all().await.map_err(snapshot_failure)?;
        drop(snapshot);
        let file = self.snapshot_path(&meta.snapshot_id);
        tokio::fs::rename(self.snapshot_path("receiving"), &file)
            .await
            .map_err(snapshot_failure)?;

        // 2. Replace the chat tables from it in one transaction, with the applied id and
        //    membership the snapshot was built at.
        let current = CurrentSnapshot {
            meta: meta.clone(),
            file: file.clone(),
        };
        let file_bytes = tokio::fs::metadata(&file)
            .await
            .map_err(snapshot_failure)?
            .len();
        let replaced = self
            .shared
            .with_conn(move |conn| {
                // A zero-byte snapshot stands for the empty state (openraft treats snapshot data
                // as opaque and may send one); every snapshot built here is a whole database.
                let empty = std::fs::metadata(&file).map_err(snapshot_failure)?.len() == 0;
                if !empty {
                    conn.execute("ATTACH DATABASE ?1 AS snapshot", [file.to_string_lossy().as_ref()])
                        .map_err(snapshot_failure)?;
                }
                let installed = in_transaction(conn, snapshot_failure, |tx| {
                    for table in CHAT_TABLES {
                        let copy = if empty {
                            format!("DELETE FROM main.{table};")
                        } else {
                            format!("DELETE FROM main.{table}; INSERT INTO main.{table} SELECT * FROM snapshot.{table};")
                        };
                        tx.execute_batch(&copy).map_err(snapshot_failure)?;
                    }
                    if empty {
                        tx.execute_batch(
                            "INSERT INTO counters (name, value) VALUES \
                             ('last_user_id', 0), ('last_message_id', 0), ('remembered_count', 0);",
                        )
                        .map_err(snapshot_failure)?;
                    }
                    // Derived from the messages (so a snapshot from any schema version works).
                    tx.execute_batch(
                        "DELETE FROM main.inbox_counts; \
                         INSERT INTO main.inbox_counts (recipient, messages) \
                         SELECT recipient, count(*) FROM main.messages GROUP BY recipient;",
                    )
                    .map_err(snapshot_failure)?;
                    put_state(tx, "last_applied", &current.meta.last_log_id)?;
                    put_state(tx, "last_membership", &current.meta.last_membership)?;
                    StateMachineStore::set_current_snapshot(tx, &current)
                });
                if !empty {
                    conn.execute("DETACH DATABASE snapshot", []).map_err(snapshot_failure)?;
                }
                installed
            })
            .await?;
        remove_replaced(replaced).await;
        self.shared.next_unapplied.store(
            meta.last_log_id.map_or(0, |id| id.index + 1),
            Ordering::Release,
        );
        self.shared.gauge.installed(file_bytes);
        self.events.publish([ChatEvent::Resync]);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Failure> {
        let current: Option<CurrentSnapshot> = self
            .shared
            .with_conn(|conn| get_state(conn, "current_snapshot"))
            .await?;
        let Some(current) = current else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&current.file)
            .await
            .map_err(snapshot_failure)?;
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}
