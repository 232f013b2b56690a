//! openraft's storage traits on the node's log files and SQLite file.
//!
//! The log's entries live in append-only segment files in `<db>.log/`
//! ([`super::log_file`]); Raft's own state (`raft_state`: vote, last purged id, applied id,
//! membership) and the chat tables live in the SQLite file. The writer ([`super::writer`])
//! runs every write as a job on one of two threads: the appender owns the segment files'
//! writing end, the database writer the SQLite writer connection, and a database job is
//! reported only after the appends queued before it. `append` puts its entries in the
//! in-memory [`Tail`] (readable at once) and queues their write; the appender writes all the
//! appends queued meanwhile and syncs the segment file once (`fdatasync`), then reports them
//! flushed (group commit). Each `apply` call applies its entries in one SQLite transaction
//! (chat commands through `store::apply_commands`: a refused command changes nothing), and
//! records the last applied log id and membership in that same transaction, so a crash
//! never separates an entry's effect from the record that it was applied. Applies commit
//! without an fsync: an apply the disk lost in a crash is applied again from the log at the
//! next start (openraft re-applies committed entries after the applied id). Votes and
//! purges commit with one. Log reads below the tail read the segment files through the
//! shared [`LogIndex`].
//!
//! # Outcomes before the commit
//!
//! On the leader, an apply's outcomes go back to openraft (and so to the clients waiting on
//! them) as soon as its statements have run inside the writer's transaction and every append
//! queued before the apply is durable, before that transaction commits; the commit, writing
//! the changed pages into SQLite's WAL (at 64 clients about a quarter of the apply), then
//! overlaps the replies and the next entry's replication. Nothing is lost by answering first:
//! the entries are committed in Raft and on the leader's disk, a failed commit stops the
//! writer for good (the node stops, and applies the entries again from the log at its next
//! start), and what others can observe waits for the commit: events are published, and reads
//! ([`crate::store::Database::read`], through [`crate::store::visibility::Visibility`]) run,
//! only once everything answered before them has committed. Followers' paced applies and
//! applies up to a state hash's index answer nobody and commit first.
//!
//! Snapshots are files: [`super::snapshots::copy_state`] copies the chat tables and the
//! applied log id from a separate connection in one read transaction (the writer is not held
//! during the copy), at a bounded rate, and the file is what openraft streams to a lagging
//! node in chunks. Installing one attaches the file and replaces the chat tables from it in
//! one transaction. Memory use does not grow with the size of the database. When snapshots
//! are made is [`super::snapshots::run`]'s decision.
//!
//! # Layout
//!
//! - this module: opening the file (connection settings, migration, the writer thread), the
//!   state [`LogStore`] and [`StateMachineStore`] share, and the `raft_state` helpers.
//! - [`log_store`]: openraft's `RaftLogReader` / `RaftLogStorage` on the tail and the
//!   segment files; `--force-new-cluster`.
//! - [`state_machine`]: openraft's `RaftStateMachine`: applying entries and publishing
//!   their events; installing a received snapshot.
//! - [`snapshot_files`]: building snapshots and keeping track of the current snapshot file.

// openraft's traits return its own `StorageError` (a large type) by value; the helpers here
// return the same type so that `?` carries it unchanged.
#![allow(clippy::result_large_err)]

mod log_store;
mod snapshot_files;
mod state_hash;
mod state_machine;

pub use state_hash::{StateHash, StateHasher};

use snapshot_files::{remove_replaced, CurrentSnapshot};

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

use super::commit_gate::CommitGate;
use super::log_file::{LogFile, LogIndex, Record};
use super::snapshots::{copy_state, SnapshotGauge};
use super::tail::{entry_bytes, Tail, TAIL_CAPACITY};
use super::writer::{Done, FileOp, Job, Writer};
use super::{Applied, TypeConfig};
use crate::error::NodeError;
use crate::events::{ChatEvent, Events};
use crate::store::visibility::Visibility;
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
    /// Where every entry in the log's files is: reads below the tail (a lagging follower's
    /// catch-up) go through it.
    log: Arc<LogIndex>,
    /// The first index above the last purged one: the files may still hold entries below
    /// it (purges remove whole segments), which nothing may read.
    live_from: AtomicU64,
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
    /// Read views to hand over when an entry is applied (`state_hash`).
    hash_hooks: state_hash::Hooks,
    /// What the writer measures (for the node's metrics).
    stats: crate::metrics::StorageStats,
    /// Set by [`LogStore::gate_commits`]: the leader's own appends are then reported
    /// flushed as they are queued.
    gate: std::sync::OnceLock<Arc<CommitGate>>,
    /// How often a follower applies (see [`ApplyPace`]).
    pace: Arc<ApplyPace>,
    /// The index after the newest committed entry openraft has told the log store of
    /// (`save_committed`), 0 before: how far a paced follower may apply ahead.
    committed_end: AtomicU64,
    /// The index after the last entry this process applied or installed from a snapshot (0
    /// before any): openraft may still ask for entries a paced follower applied ahead.
    next_unapplied: AtomicU64,
    /// The committed log id openraft last saved, until an apply records it.
    committed_hint: Mutex<Option<Option<LogId<NodeId>>>>,
    /// How far applies are handed out and committed: what the read side waits for.
    visibility: Arc<Visibility>,
    /// The task that sees the leader's early-answered applies through their commits, in
    /// order (started with the first of them).
    finisher: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<state_machine::Finishing>>,
}

/// The least time between two applies on a follower once a [`CommitGate`] is attached
/// ([`LogStore::gate_commits`]): a follower's applies answer nobody's write, so it lets
/// committed entries gather and applies them in one transaction, writing each changed page
/// of the chat tables once for many entries instead of once per log group. Anything on the
/// node that waits for an applied index asks for the next apply at once
/// ([`ApplyPace::hurry`]). 40 ms rather than 10: with more messages per transaction, more of
/// them share an inbox's or a conversation's last page (docs/performance.md, "Follower
/// applies every 40 ms"); a follower's STALE reads and Subscribe streams trail by that much
/// at most, well under what a person notices in a chat.
pub const FOLLOWER_APPLY_PACE: std::time::Duration = std::time::Duration::from_millis(40);

/// Spaces a follower's applies [`FOLLOWER_APPLY_PACE`] apart, unless someone waits for an
/// entry they would apply.
#[derive(Debug)]
pub struct ApplyPace {
    /// The least time between two applies.
    pace: std::time::Duration,
    /// When the last paced apply started.
    last: Mutex<Option<tokio::time::Instant>>,
    /// The highest index someone on this node waits to see applied.
    wanted: AtomicU64,
    /// Woken by [`ApplyPace::hurry`].
    hurry: tokio::sync::Notify,
}

impl Default for ApplyPace {
    fn default() -> Self {
        Self::new(FOLLOWER_APPLY_PACE)
    }
}

impl ApplyPace {
    /// Applies spaced `pace` apart.
    fn new(pace: std::time::Duration) -> Self {
        Self {
            pace,
            last: Mutex::default(),
            wanted: AtomicU64::default(),
            hurry: tokio::sync::Notify::new(),
        }
    }

    /// Waits, before applying entries from index `first` on, until [`FOLLOWER_APPLY_PACE`]
    /// has passed since the last apply began, unless someone waits for an index at or
    /// above `first`.
    async fn wait_turn(&self, first: u64) {
        let last = *self
            .last
            .lock()
            .expect("the apply pace's mutex is never held across a panic");
        if let Some(due) = last.map(|last| last + self.pace) {
            loop {
                let hurried = self.hurry.notified();
                tokio::pin!(hurried);
                // Registered before the check, so a hurry in between is not missed.
                hurried.as_mut().enable();
                if self.wanted.load(Ordering::Acquire) >= first {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    () = hurried => {}
                }
            }
        }
        *self
            .last
            .lock()
            .expect("the apply pace's mutex is never held across a panic") =
            Some(tokio::time::Instant::now());
    }

    /// Someone waits until `index` is applied here: applies up to it are not held back.
    pub fn hurry(&self, index: u64) {
        self.wanted.fetch_max(index, Ordering::AcqRel);
        self.hurry.notify_waiters();
    }
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
    let new_file = conn.query_row("PRAGMA user_version", [], |row| row.get::<_, u32>(0))? == 0;
    schema::migrate(&mut conn)?;
    if new_file {
        set_aside_orphaned_log(&log_dir_of(path))?;
    }
    let purged: Option<LogId<NodeId>> =
        get_state(&conn, "last_purged").map_err(|e| NodeError::Raft(e.to_string()))?;
    let (mut log, recovered) = LogFile::open(
        &log_dir_of(path),
        purged.map(|id| id.index),
        sync_mode == SyncMode::Full,
    )
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    if recovered.cut_bytes > 0 || recovered.removed_segments > 0 {
        tracing::info!(
            entries = recovered.entries,
            cut_bytes = recovered.cut_bytes,
            removed_segments = recovered.removed_segments,
            "log files recovered"
        );
    }
    move_log_rows(&mut conn, &mut log, purged)?;
    let log_index = log.index();
    let next = log_index.next_index().unwrap_or(0);
    let tail = Arc::new(Mutex::new(Tail::new(
        next.max(first_live_index(purged)),
        TAIL_CAPACITY,
    )));
    let current: Option<CurrentSnapshot> =
        get_state(&conn, "current_snapshot").map_err(|e| NodeError::Raft(e.to_string()))?;
    let snapshot_bytes = current
        .and_then(|current| std::fs::metadata(current.file).ok())
        .map_or(0, |metadata| metadata.len());
    let stats = crate::metrics::StorageStats::default();
    let writer = Writer::start(conn, log, Arc::clone(&tail), sync_mode, stats.clone())?;
    let visibility = Arc::new(Visibility::default());
    crate::store::visibility::register(path, &visibility);
    let shared = Arc::new(Shared {
        writer,
        tail,
        append_jobs: AtomicU64::new(0),
        log: log_index,
        live_from: AtomicU64::new(first_live_index(purged)),
        path: path.to_owned(),
        snapshot_dir,
        snapshot_counter: AtomicU64::new(0),
        snapshot_rate,
        gauge: Arc::new(SnapshotGauge::new(snapshot_bytes)),
        hash_hooks: state_hash::Hooks::default(),
        stats,
        gate: std::sync::OnceLock::new(),
        pace: Arc::default(),
        committed_end: AtomicU64::new(0),
        next_unapplied: AtomicU64::new(0),
        committed_hint: Mutex::new(None),
        visibility,
        finisher: std::sync::OnceLock::new(),
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

/// The folder of the log's segment files for the database at `db`: `<db>.log/`.
pub fn log_dir_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.log", db.display()))
}

/// Called for a new database file next to a log folder that holds segments, and by a
/// restore or an import before it puts a database in place: the segments belong to a
/// database that is gone, and would be taken for the new one's log. They are renamed to `<db>.log.orphaned-<unix
/// seconds>`, kept for inspection.
pub fn set_aside_orphaned_log(dir: &Path) -> Result<(), NodeError> {
    let holds_any = std::fs::read_dir(dir).is_ok_and(|mut items| items.next().is_some());
    if !holds_any {
        return Ok(());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let to = PathBuf::from(format!("{}.orphaned-{stamp}", dir.display()));
    std::fs::rename(dir, &to)?;
    tracing::warn!(
        from = %dir.display(),
        to = %to.display(),
        "a new database file found log files of an earlier one: set them aside"
    );
    Ok(())
}

/// How many `raft_log` rows [`move_log_rows`] writes to the segment files at a time.
const MOVED_ROWS_PER_APPEND: usize = 1024;

/// Moves the log entries an earlier build kept in the `raft_log` table into the segment
/// files, then empties the table. Rows at or below the last purged id are dead and left
/// out. The files are synced before the rows are deleted (durably), so a crash in between
/// leaves the rows, and the next start writes the files again from scratch.
fn move_log_rows(
    conn: &mut Connection,
    log: &mut LogFile,
    purged: Option<LogId<NodeId>>,
) -> Result<(), NodeError> {
    let rows: i64 = conn.query_row("SELECT count(*) FROM raft_log", [], |row| row.get(0))?;
    if rows == 0 {
        return Ok(());
    }
    let raft = |e: super::log_file::LogFileError| NodeError::Raft(e.to_string());
    // Whatever an interrupted earlier move wrote.
    log.truncate_from(0).map_err(raft)?;
    let mut moved = 0_u64;
    {
        let mut statement = conn.prepare(
            "SELECT log_index, term, entry FROM raft_log WHERE log_index >= ?1 ORDER BY log_index",
        )?;
        let mut found = statement.query([to_sql_index(first_live_index(purged))])?;
        let mut chunk = Vec::with_capacity(MOVED_ROWS_PER_APPEND);
        while let Some(row) = found.next()? {
            chunk.push(Record {
                index: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                term: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                payload: row.get(2)?,
            });
            if chunk.len() == MOVED_ROWS_PER_APPEND {
                log.append(&chunk).map_err(raft)?;
                moved += chunk.len() as u64;
                chunk.clear();
            }
        }
        log.append(&chunk).map_err(raft)?;
        moved += chunk.len() as u64;
    }
    log.sync().map_err(raft)?;
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM raft_log", [])?;
    tx.commit()?;
    tracing::info!(
        entries = moved,
        dead_rows = u64::try_from(rows).unwrap_or(0) - moved,
        "log entries moved from the database file into the log's segment files"
    );
    Ok(())
}

/// The first index above the last purged one: entries below it are dead (a purge records
/// its id first and removes the files after, so some may be left after a crash).
fn first_live_index(last_purged: Option<LogId<NodeId>>) -> u64 {
    last_purged.map_or(0, |id| id.index + 1)
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
        self.write(durable, false, None, work).await
    }

    /// [`Shared::in_log_group`], changing the log's files with `file` in the same job (a
    /// purge: after the group's commit).
    async fn with_file_in_log_group<T, F>(
        &self,
        durable: bool,
        file: FileOp,
        work: F,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, Failure> + Send + 'static,
    {
        self.write(durable, false, Some(file), work).await
    }

    /// Runs `work` inside a log group's transaction, with `file`'s change to the log's files
    /// in the same job, and returns its value once done (durably if `durable`); with
    /// `at_once`, on the calling thread when the writer is idle ([`Writer::try_now`]).
    async fn write<T, F>(
        &self,
        durable: bool,
        at_once: bool,
        file: Option<FileOp>,
        work: F,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, Failure> + Send + 'static,
    {
        self.write_then(durable, at_once, file, work, None).await
    }

    /// [`Shared::write`], running `then` with the outcome as soon as the commit is done (or
    /// has failed), on the thread that committed, before the caller is woken.
    async fn write_then<T, F>(
        &self,
        durable: bool,
        at_once: bool,
        file: Option<FileOp>,
        work: F,
        then: Option<super::writer::Then>,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, Failure> + Send + 'static,
    {
        let value = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&value);
        let job: super::writer::LogWork = Box::new(move |tx| {
            let produced = work(tx)?;
            *slot
                .lock()
                .expect("the value slot's mutex is never held across a panic") = Some(produced);
            Ok(())
        });
        let queued = if at_once {
            self.writer.try_now(job)
        } else {
            Err(job)
        };
        match queued {
            Ok(done) => {
                if let Some(then) = then {
                    then(&done);
                }
                done?;
            }
            Err(job) => {
                self.writer.log_then(durable, Some(job), file, then).await?;
            }
        }
        let produced = value
            .lock()
            .expect("the value slot's mutex is never held across a panic")
            .take();
        produced.ok_or_else(|| write_logs("a log job committed without producing its value"))
    }

    /// Reads the log's files from `from` to before `to`, on the blocking pool.
    async fn read_files(&self, from: u64, to: u64) -> Result<Vec<Entry<TypeConfig>>, Failure> {
        let from = from.max(self.live_from.load(Ordering::Acquire));
        if from >= to {
            return Ok(Vec::new());
        }
        let index = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || {
            index
                .read(from, to)
                .map_err(read_logs)?
                .iter()
                .map(|record| decode_entry(&record.payload))
                .collect()
        })
        .await
        .map_err(read_logs)?
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .expect("the log tail's mutex is never held across a panic")
    }
}

/// A database whose chat state did not come through Raft (imported from the prototype's file,
/// see `crate::node::import`): its node forms a new cluster alone and publishes the state as
/// its first snapshot, purging the log below it, before it serves; every other node then
/// receives the state as that snapshot, as any joining node does. Recorded in `raft_state`
/// in the same transaction as the rows, and cleared once the snapshot is published, so a
/// crash in between resumes the publishing at the next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// Where the state came from, for the log.
    pub source: String,
    /// Accounts in it.
    pub users: u64,
    /// Messages in it.
    pub messages: u64,
}

/// Records `seed` in the database behind `conn` (a new file, before Raft opens it).
///
/// # Errors
/// SQLite fails.
pub fn write_seed(conn: &Connection, seed: &Seed) -> Result<(), NodeError> {
    put_state(conn, SEED, seed).map_err(|e| NodeError::Raft(e.to_string()))
}

/// The last log index applied in the database file at `path` (a snapshot or backup copy
/// records it), 0 when none is recorded.
///
/// # Errors
/// The file cannot be opened or read.
pub fn applied_index_in(path: &Path) -> Result<u64, NodeError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let applied: Option<Option<LogId<NodeId>>> =
        get_state(&conn, "last_applied").map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok(applied.flatten().map_or(0, |id| id.index))
}

/// The `raft_state` row of an unpublished [`Seed`].
const SEED: &str = "seed";

impl LogStore {
    /// What the log writer measures (durable commits' durations), for the node's metrics.
    pub fn stats(&self) -> crate::metrics::StorageStats {
        self.shared.stats.clone()
    }

    /// The database's unpublished [`Seed`], if any.
    ///
    /// # Errors
    /// The file cannot be read.
    pub async fn seed(&self) -> Result<Option<Seed>, Failure> {
        self.shared.with_conn(|conn| get_state(conn, SEED)).await
    }

    /// Forgets the [`Seed`] once it is published (durably, in order with the log's writes).
    ///
    /// # Errors
    /// The file cannot be written.
    pub async fn clear_seed(&self) -> Result<(), Failure> {
        self.shared
            .in_log_group(true, |tx| {
                tx.execute("DELETE FROM raft_state WHERE name = ?1", [SEED])
                    .map_err(write_state)?;
                Ok(())
            })
            .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn applies_are_spaced_unless_someone_waits_for_one() {
        // 1. The first apply goes at once; the next waits out the pace.
        let pace = ApplyPace::new(Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        pace.wait_turn(1).await;
        pace.wait_turn(2).await;
        assert!(started.elapsed() >= Duration::from_millis(200));

        // 2. With a pace of an hour: an apply nobody waits for is held back until someone
        //    waits for an index it covers.
        let pace = Arc::new(ApplyPace::new(Duration::from_secs(3600)));
        pace.wait_turn(1).await;
        let held = tokio::spawn({
            let pace = Arc::clone(&pace);
            async move { pace.wait_turn(10).await }
        });
        // Hurried for an index below what it covers, it keeps waiting (asked repeatedly, so
        // that some of the calls find it waiting).
        for _ in 0..20 {
            pace.hurry(5);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !held.is_finished(),
            "index 5 is below what this apply covers"
        );
        pace.hurry(12);
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("hurried")
            .expect("the apply's task runs to the end");

        // 3. An apply of entries someone already waits for is not held at all.
        tokio::time::timeout(Duration::from_secs(30), pace.wait_turn(11))
            .await
            .expect("not held back");
    }
}
