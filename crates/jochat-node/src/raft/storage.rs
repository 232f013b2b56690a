//! openraft's storage traits on the node's SQLite file.
//!
//! The log (`raft_log`), Raft's own state (`raft_state`) and the chat tables share one file
//! and one writer connection, owned by the log writer's thread ([`super::writer`]): every
//! write is a job it runs in queue order. `append` puts its entries in the in-memory
//! [`Tail`] (readable at once) and queues their write; the writer commits all the appends
//! queued meanwhile in one transaction with one fsync, then reports them flushed (group
//! commit). Each `apply` call applies its entries in one transaction (chat commands through
//! `store::apply_commands`: a refused command changes nothing), and records the last
//! applied log id and membership in that same transaction, so a crash never separates an entry's effect from the record that it was
//! applied. Log reads below the tail use a connection of their own.
//!
//! Snapshots are files: [`super::snapshots::copy_state`] copies the chat tables and the
//! applied log id from a separate connection in one read transaction (the writer is not held
//! during the copy), at a bounded rate, and the file is what openraft streams to a lagging
//! node in chunks. Installing one attaches the file and replaces the chat tables from it in
//! one transaction. Memory use does not grow with the size of the database. When snapshots
//! are made is [`super::snapshots::run`]'s decision.

// openraft's traits return its own `StorageError` (a large type) by value; the helpers here
// return the same type so that `?` carries it unchanged.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, Membership, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::snapshots::{copy_state, SnapshotGauge};
use super::tail::{entry_bytes, Tail, TAIL_CAPACITY};
use super::writer::{Done, Job, Writer};
use super::{Applied, TypeConfig};
use crate::error::NodeError;
use crate::events::{ChatEvent, Events};
use crate::store::{apply_commands, schema, SqliteChat, SyncMode};
use jochat_core::store::ChatRead;
use jochat_core::{Command, Outcome};

type NodeId = u64;
type Failure = StorageError<NodeId>;

/// The chat tables a snapshot carries, in an order that respects nothing but readability
/// (there are no foreign keys).
const CHAT_TABLES: [&str; 5] = ["users", "sessions", "messages", "idempotency", "counters"];

/// The size the WAL file is cut back to when a checkpoint restarts it. It can grow far past
/// its usual ~16 MiB while a long read (a paced snapshot copy of a large database) keeps
/// checkpoints from restarting it, or a snapshot install writes a whole database through it.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The storage shared by the log store and the state machine.
struct Shared {
    /// Runs every write, in order, on the one writer connection.
    writer: Writer,
    /// The newest entries, readable before they are written.
    tail: Arc<Mutex<Tail>>,
    /// Numbers the append jobs, so the tail knows which of its entries are written.
    append_jobs: AtomicU64,
    /// Reads log entries below the tail (a lagging follower's catch-up). A std mutex: only
    /// locked on the blocking pool.
    reader: Mutex<Connection>,
    /// The database file.
    path: PathBuf,
    /// Where snapshot files live: `<db>.snapshots/`.
    snapshot_dir: PathBuf,
    /// Makes snapshot file names unique within this process.
    snapshot_counter: AtomicU64,
    /// How fast snapshot files are written, in bytes a second (`None`: unbounded).
    snapshot_rate: Option<u64>,
    /// What decides when the next snapshot is due.
    gauge: Arc<SnapshotGauge>,
    /// The newest purged index, for the background deletion of the purged rows.
    purged_upto: tokio::sync::watch::Sender<u64>,
    /// The receiving end, until the first purge starts the deletion task with it.
    purged_rows: Mutex<Option<tokio::sync::watch::Receiver<u64>>>,
}

/// The Raft log, openraft's `RaftLogStorage`. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

/// The state machine, openraft's `RaftStateMachine`: the chat tables. Cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    /// Where applied messages and session changes are published for subscribers.
    events: Events,
}

/// How fast [`open`] lets snapshot files be written: 32 MiB/s (see `--snapshot-rate-mib`).
pub const SNAPSHOT_RATE_DEFAULT: u64 = 32 * 1024 * 1024;

/// Opens (creating and migrating if needed) the database at `path` for Raft, writing
/// snapshots at [`SNAPSHOT_RATE_DEFAULT`].
///
/// # Errors
/// The file or the snapshot folder cannot be created, or a migration fails.
pub fn open(path: &Path, sync_mode: SyncMode) -> Result<(LogStore, StateMachineStore), NodeError> {
    open_with(path, sync_mode, Some(SNAPSHOT_RATE_DEFAULT))
}

/// [`open`], writing snapshot files at most `snapshot_rate` bytes a second (`None`: as fast
/// as the disk takes them).
///
/// # Errors
/// As [`open`].
pub fn open_with(
    path: &Path,
    sync_mode: SyncMode,
    snapshot_rate: Option<u64>,
) -> Result<(LogStore, StateMachineStore), NodeError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let snapshot_dir = PathBuf::from(format!("{}.snapshots", path.display()));
    std::fs::create_dir_all(&snapshot_dir)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(crate::store::STATEMENT_CACHE_CAPACITY);
    conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
        row.get::<_, String>(0)
    })?;
    conn.pragma_update(None, "synchronous", sync_mode.pragma())?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    // Commands share savepoints (`store::apply_commands`); SQLite keeps the copies of the
    // pages a savepoint changed in memory up to 64 KiB and in a temporary file beyond: a new
    // file for nearly every transaction under load. In memory they are bounded by
    // `store::COMMANDS_PER_SAVEPOINT`.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    schema::migrate(&mut conn)?;
    let tail = Arc::new(Mutex::new(Tail::new(
        first_unwritten_index(&conn)?,
        TAIL_CAPACITY,
    )));
    let current: Option<CurrentSnapshot> =
        get_state(&conn, "current_snapshot").map_err(|e| NodeError::Raft(e.to_string()))?;
    let snapshot_bytes = current
        .and_then(|current| std::fs::metadata(current.file).ok())
        .map_or(0, |metadata| metadata.len());
    let reader = Connection::open(path)?;
    reader.busy_timeout(std::time::Duration::from_secs(5))?;
    reader.set_prepared_statement_cache_capacity(crate::store::STATEMENT_CACHE_CAPACITY);
    reader.pragma_update(None, "query_only", true)?;
    let writer = Writer::start(conn, Arc::clone(&tail), sync_mode)?;
    let (purged_upto, purged_rows) = tokio::sync::watch::channel(0);
    let shared = Arc::new(Shared {
        writer,
        tail,
        append_jobs: AtomicU64::new(0),
        reader: Mutex::new(reader),
        path: path.to_owned(),
        snapshot_dir,
        snapshot_counter: AtomicU64::new(0),
        snapshot_rate,
        gauge: Arc::new(SnapshotGauge::new(snapshot_bytes)),
        purged_upto,
        purged_rows: Mutex::new(Some(purged_rows)),
    });
    Ok((
        LogStore {
            shared: Arc::clone(&shared),
        },
        StateMachineStore {
            shared,
            events: Events::new(),
        },
    ))
}

fn io_failure(
    make: fn(AnyError) -> StorageIOError<NodeId>,
    error: impl std::fmt::Display,
) -> Failure {
    make(AnyError::error(error)).into()
}

fn read_logs(error: impl std::fmt::Display) -> Failure {
    io_failure(StorageIOError::read_logs, error)
}

fn write_logs(error: impl std::fmt::Display) -> Failure {
    io_failure(StorageIOError::write_logs, error)
}

fn read_state(error: impl std::fmt::Display) -> Failure {
    io_failure(StorageIOError::read_state_machine, error)
}

fn write_state(error: impl std::fmt::Display) -> Failure {
    io_failure(StorageIOError::write_state_machine, error)
}

fn snapshot_failure(error: impl std::fmt::Display) -> Failure {
    StorageIOError::write_snapshot(None, AnyError::error(error)).into()
}

/// The index after the last entry in the file's log (after the last purged one if the log
/// is empty; 0 for a new file).
fn first_unwritten_index(conn: &Connection) -> Result<u64, NodeError> {
    let last: Option<i64> =
        conn.query_row("SELECT MAX(log_index) FROM raft_log", [], |row| row.get(0))?;
    let purged: Option<LogId<NodeId>> =
        get_state(conn, "last_purged").map_err(|e| NodeError::Raft(e.to_string()))?;
    let after_rows = last.map_or(0, |last| u64::try_from(last).unwrap_or(0) + 1);
    Ok(after_rows.max(first_live_index(purged)))
}

/// The first index above the last purged one: rows below it are dead (a purge records its
/// id at once and deletes the rows in the background, so some may be left after a crash).
fn first_live_index(last_purged: Option<LogId<NodeId>>) -> u64 {
    last_purged.map_or(0, |id| id.index + 1)
}

/// How many log entries one background deletion job removes (entries are at most about
/// 1 MiB, usually a few KiB).
const PURGE_CHUNK_ENTRIES: i64 = 32;

/// Deletes the log's rows up to the newest index `upto` holds, [`PURGE_CHUNK_ENTRIES`] per
/// writer job, each job queued once the one before has run, so appends and applies queued
/// meanwhile go first. Ends when the writer stops or the store is dropped.
async fn delete_purged(writer: Writer, mut upto: tokio::sync::watch::Receiver<u64>) {
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

impl Shared {
    /// Runs `work` on the writer connection, in order with every other write.
    async fn with_conn<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        self.writer.own(work).await
    }

    /// Runs `work` inside a log group's transaction, in order with the log writes queued
    /// before it, and returns its value once the group committed (durably if `durable`).
    async fn in_log_group<T, F>(&self, durable: bool, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, Failure> + Send + 'static,
    {
        let value = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&value);
        self.writer
            .log(
                durable,
                Box::new(move |tx| {
                    let produced = work(tx)?;
                    *slot
                        .lock()
                        .expect("the value slot's mutex is never held across a panic") =
                        Some(produced);
                    Ok(())
                }),
            )
            .await?;
        let produced = value
            .lock()
            .expect("the value slot's mutex is never held across a panic")
            .take();
        produced.ok_or_else(|| write_logs("a log job committed without producing its value"))
    }

    /// Has the log's rows up to `index` deleted in the background (see [`delete_purged`]).
    /// Called from the runtime (openraft's `purge`).
    fn delete_purged_upto(&self, index: u64) {
        self.purged_upto.send_replace(index);
        let receiver = self
            .purged_rows
            .lock()
            .expect("the purge receiver's mutex is never held across a panic")
            .take();
        if let Some(receiver) = receiver {
            tokio::spawn(delete_purged(self.writer.clone(), receiver));
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .expect("the log tail's mutex is never held across a panic")
    }
}

fn get_state<T: DeserializeOwned>(conn: &Connection, name: &str) -> Result<Option<T>, Failure> {
    let raw: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM raft_state WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .optional()
        .map_err(read_state)?;
    raw.map(|bytes| serde_json::from_slice(&bytes).map_err(read_state))
        .transpose()
}

fn put_state<T: Serialize>(conn: &Connection, name: &str, value: &T) -> Result<(), Failure> {
    let bytes = serde_json::to_vec(value).map_err(write_state)?;
    conn.prepare_cached(
        "INSERT INTO raft_state (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut statement| statement.execute(params![name, bytes]))
    .map_err(write_state)?;
    Ok(())
}

/// Runs `work` in one immediate transaction and commits it (durably, with `--sync-mode full`).
fn in_transaction<T>(
    conn: &mut Connection,
    fail: fn(rusqlite::Error) -> Failure,
    work: impl FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let value = work(&mut tx)?;
    tx.commit().map_err(fail)?;
    Ok(value)
}

fn to_sql_index(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, Failure> {
    serde_json::from_slice(bytes).map_err(read_logs)
}

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
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Failure> {
        self.shared
            .in_log_group(false, |tx| get_state(tx, "vote"))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Failure> {
        // Only a hint for a faster restart: it rides along with the next group, unwaited.
        self.shared.writer.send(Job::Log {
            work: Box::new(move |tx| put_state(tx, "committed", &committed)),
            durable: false,
            append_job: None,
            done: Done::Nothing,
        });
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
        let Some(first) = entries.first().map(|entry| entry.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
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
        self.shared.writer.send(Job::Log {
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
            done: Done::Flushed(callback),
        });
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
            .await
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

/// Applies `entries` inside `tx` (their commands through [`apply_commands`]) and records the
/// last applied id and membership; returns each entry's result, the events to publish once
/// the transaction commits (stored messages only if `messages_read`), and whether a message
/// was stored.
fn apply_entries(
    tx: &rusqlite::Transaction<'_>,
    entries: &[Entry<TypeConfig>],
    messages_read: bool,
) -> Result<(Vec<Applied>, Vec<ChatEvent>, bool), Failure> {
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
        stored |= matches!(outcome, Outcome::MessageSent { .. });
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
        Outcome::MessageSent { .. } if !messages_read => None,
        Outcome::MessageSent { id, .. } => SqliteChat::new(conn)
            .message_by_id(*id)
            .map_err(read_state)?
            .map(ChatEvent::Message),
        Outcome::SessionCreated { user_id, .. } => Some(ChatEvent::SessionsChanged(Some(*user_id))),
        Outcome::SessionRevoked | Outcome::AccountDeleted { .. } | Outcome::Reset => {
            Some(ChatEvent::SessionsChanged(None))
        }
        _ => None,
    })
}

impl StateMachineStore {
    /// The channel this state machine publishes applied messages and session changes on.
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// What [`super::snapshots::run`] reads to decide when a snapshot is due.
    pub fn snapshot_gauge(&self) -> Arc<SnapshotGauge> {
        Arc::clone(&self.shared.gauge)
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

/// Removes the file of a snapshot that is no longer current, if any.
async fn remove_replaced(file: Option<PathBuf>) {
    if let Some(file) = file {
        if let Err(error) = tokio::fs::remove_file(&file).await {
            tracing::warn!(%error, file = %file.display(), "could not remove an old snapshot");
        }
    }
}

/// Where the current snapshot is and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    file: PathBuf,
}

impl StateMachineStore {
    fn snapshot_path(&self, name: &str) -> PathBuf {
        self.shared.snapshot_dir.join(format!("{name}.db"))
    }

    /// Records `current` as the node's snapshot; returns the file of the one it replaces, for
    /// [`remove_replaced`] (removing a large file takes a while: not on the writer's thread).
    fn set_current_snapshot(
        conn: &Connection,
        current: &CurrentSnapshot,
    ) -> Result<Option<PathBuf>, Failure> {
        let previous: Option<CurrentSnapshot> = get_state(conn, "current_snapshot")?;
        put_state(conn, "current_snapshot", current)?;
        Ok(previous
            .filter(|p| p.file != current.file)
            .map(|previous| previous.file))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Failure> {
        let sequence = self.shared.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let building = self.snapshot_path(&format!("building-{}-{sequence}", std::process::id()));
        let source = self.shared.path.clone();
        let shared = Arc::clone(&self.shared);
        let store = self.clone();
        let rate = self.shared.snapshot_rate;
        let build = self.shared.gauge.start_building();
        let started = std::time::Instant::now();
        let current = tokio::task::spawn_blocking(move || -> Result<CurrentSnapshot, Failure> {
            // 1. A consistent copy of the state, paced, made from a connection of its own so
            //    writes go on meanwhile.
            if let Err(error) = copy_state(&source, &building, rate) {
                // A half-written copy is never used: do not leave it behind.
                let _ = std::fs::remove_file(&building);
                return Err(error);
            }

            // 2. What the copy holds is what it says it applied.
            let copy = Connection::open(&building).map_err(snapshot_failure)?;
            let last_log_id: Option<LogId<NodeId>> = get_state(&copy, "last_applied")?;
            let last_membership: StoredMembership<NodeId, openraft::BasicNode> =
                get_state(&copy, "last_membership")?.unwrap_or_default();
            drop(copy);

            let snapshot_id = match last_log_id {
                Some(id) => format!(
                    "{}-{}-{}-{sequence}",
                    id.leader_id.term,
                    id.index,
                    std::process::id()
                ),
                None => format!("empty-{}-{sequence}", std::process::id()),
            };
            let file = store.snapshot_path(&snapshot_id);
            std::fs::rename(&building, &file).map_err(snapshot_failure)?;
            let current = CurrentSnapshot {
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id,
                },
                file,
            };
            Ok(current)
        })
        .await
        .map_err(snapshot_failure)??;
        let recorded = current.clone();
        let replaced = shared
            .with_conn(move |conn| StateMachineStore::set_current_snapshot(conn, &recorded))
            .await?;
        remove_replaced(replaced).await;
        let file_bytes = std::fs::metadata(&current.file).map_or(0, |m| m.len());
        build.made(file_bytes);
        tracing::info!(
            snapshot = %current.meta.snapshot_id,
            bytes = file_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        let file = tokio::fs::File::open(&current.file)
            .await
            .map_err(snapshot_failure)?;
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        })
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        // With nobody subscribed, stored messages are not read back for events. Anyone who
        // subscribes meanwhile hears `Resync` once the transaction has committed, and reads
        // what it missed from the database (it joined the channel before that read).
        let messages_read = self.events.has_receivers();
        let applied = self
            .shared
            .in_log_group(false, move |tx| apply_entries(tx, &entries, messages_read))
            .await?;
        let (results, mut events, stored) = applied;
        self.shared.gauge.applied(bytes as u64);
        if stored && !messages_read {
            events.push(ChatEvent::Resync);
        }
        // Published only now that the transaction has committed.
        self.events.publish(events);
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
