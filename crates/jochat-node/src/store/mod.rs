//! The node's database: one SQLite file (WAL) holding the chat state and the Raft log.
//!
//! # Layout
//!
//! - [`schema`]: tables, indexes and migrations (`PRAGMA user_version`).
//! - [`sqlite`]: [`SqliteChat`], `jochat-core`'s storage traits on a SQLite connection.
//! - this module: [`Database`], the pool of read-only connections queries run on, and
//!   [`apply_in_savepoint`] / [`apply_batch`], how commands are applied inside a transaction.
//!
//! Writes are not made here: every command is a Raft log entry, applied by
//! `crate::raft::storage`'s state machine on its one writer connection. Readers use their own
//! connections and never wait for it (WAL).

pub mod schema;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jochat_core::{apply, ChatError, Command, Outcome};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, TransactionBehavior};

pub use sqlite::SqliteChat;

use crate::error::NodeError;

/// How long a connection waits for a lock held by another before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements each connection keeps (the Raft writer and reader too). rusqlite's
/// default of 16 is fewer than the distinct statements one batch of commands runs (log,
/// savepoints, chat tables, counters, Raft state), so the cache evicted and re-prepared
/// statements on every batch.
pub const STATEMENT_CACHE_CAPACITY: usize = 128;
/// How long a reader waits for a free pooled connection.
const READ_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How hard SQLite works to make a commit survive a crash of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged write survives power loss (the default).
    Full,
    /// fsync at checkpoints only: survives a crash of the process, not of the machine.
    Normal,
    /// Never fsync: for benchmarks and throwaway data only.
    Off,
}

impl SyncMode {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
            Self::Off => "OFF",
        }
    }
}

/// Where the database's read side opens, and how many connections it may use.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file (created and migrated by `crate::raft::storage::open`).
    pub path: PathBuf,
    /// Read connections at most.
    pub read_pool_size: u32,
}

/// The open database's read side: run queries with [`Database::read`]. Cheap to share behind
/// an `Arc`. Writes go through Raft (`crate::raft::storage`), which also creates and migrates
/// the file, so open that first.
pub struct Database {
    readers: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    /// How many reads have started: grows while the node serves reads.
    reads: AtomicU64,
}

/// Asks SQLite to free what it can of `conn`'s page cache (`PRAGMA shrink_memory`); the cache
/// refills from the file as pages are needed again. A failure is logged: it only means the
/// memory stays.
pub(crate) fn shrink_memory(conn: &Connection) {
    if let Err(error) = conn.execute_batch("PRAGMA shrink_memory") {
        tracing::warn!(%error, "SQLite could not release its cache");
    }
}

impl Database {
    /// Opens the pool of read-only connections to the database at `config.path`.
    ///
    /// # Errors
    /// The file cannot be opened, or its schema is not this build's.
    pub fn open(config: &StoreConfig) -> Result<Self, NodeError> {
        let probe = Connection::open(&config.path)?;
        let version: u32 = probe.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version != schema::SCHEMA_VERSION {
            return Err(NodeError::Schema(format!(
                "{} has schema version {version}, this build reads {}: open it for Raft first",
                config.path.display(),
                schema::SCHEMA_VERSION
            )));
        }
        drop(probe);
        let manager = SqliteConnectionManager::file(&config.path).with_init(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
            conn.pragma_update(None, "query_only", true)
        });
        let readers = r2d2::Pool::builder()
            .max_size(config.read_pool_size)
            .min_idle(Some(1))
            .connection_timeout(READ_CONNECTION_TIMEOUT)
            .build(manager)?;
        Ok(Self {
            readers,
            path: config.path.clone(),
            reads: AtomicU64::new(0),
        })
    }

    /// How many reads have started so far (unchanged while no read comes).
    pub fn read_activity(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Lets SQLite give back the page caches of the pooled connections that are idle now (a
    /// connection in use keeps its cache). For an idle node.
    ///
    /// # Errors
    /// The blocking task failed.
    pub async fn release_memory(&self) -> Result<(), NodeError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            // Hold every idle connection at once, so each is visited once. (Taking the last
            // idle one makes r2d2 open another in the background to keep `min_idle`; the pool
            // never passes `--read-pool-size`.)
            let mut idle = Vec::new();
            while let Some(conn) = readers.try_get() {
                shrink_memory(&conn);
                idle.push(conn);
            }
        })
        .await
        .map_err(|e| NodeError::Task(e.to_string()))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `query` against one consistent snapshot of the database, on the blocking pool.
    ///
    /// # Errors
    /// What `query` returns, or a failure to get a connection.
    pub async fn read<T, F>(&self, query: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteChat<'_>) -> Result<T, ChatError> + Send + 'static,
    {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || -> Result<T, NodeError> {
            let mut conn = readers.get()?;
            // A read transaction makes the query's several statements see one snapshot.
            let tx = conn.transaction()?;
            let result = query(&SqliteChat::new(&tx))?;
            tx.finish()?;
            Ok(result)
        })
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?
    }
}

/// Applies one command inside `tx`, in its own savepoint: a refused command is rolled back
/// alone and the transaction goes on. The outer `Err` is a failure of SQLite itself.
///
/// The savepoint statements are prepared once per connection (rusqlite's `Savepoint` parses
/// them anew for every command, which showed in profiles of large batches).
///
/// # Errors
/// SQLite could not create, release or roll back the savepoint.
pub fn apply_in_savepoint(
    tx: &mut rusqlite::Transaction<'_>,
    command: &Command,
) -> Result<Result<Outcome, ChatError>, rusqlite::Error> {
    tx.prepare_cached("SAVEPOINT command")?.execute([])?;
    let result = apply(&mut SqliteChat::new(tx), command);
    if result.is_err() {
        tx.prepare_cached("ROLLBACK TO command")?.execute([])?;
    }
    tx.prepare_cached("RELEASE command")?.execute([])?;
    Ok(result)
}

/// Applies `commands` in one transaction, each in its own savepoint: a refused command is
/// rolled back alone and the others commit together. If the transaction itself fails, every
/// command gets the storage error and none is applied.
pub fn apply_batch(
    conn: &mut Connection,
    commands: &[&Command],
) -> Vec<Result<Outcome, ChatError>> {
    let run = |conn: &mut Connection| -> Result<Vec<Result<Outcome, ChatError>>, rusqlite::Error> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            results.push(apply_in_savepoint(&mut tx, command)?);
        }
        tx.commit()?;
        Ok(results)
    };
    match run(conn) {
        Ok(results) => results,
        Err(error) => {
            tracing::error!(%error, commands = commands.len(), "write batch failed; nothing applied");
            commands
                .iter()
                .map(|_| Err(ChatError::Storage(error.to_string())))
                .collect()
        }
    }
}
