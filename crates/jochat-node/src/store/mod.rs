//! The node's database: one SQLite file (WAL) with a single writer thread and a pool of
//! readers.
//!
//! # Layout
//!
//! - [`schema`]: tables, indexes and migrations (`PRAGMA user_version`).
//! - [`sqlite`]: [`SqliteChat`], `jochat-core`'s storage traits on a SQLite connection.
//! - this module: [`Database`], which owns the writer thread and the read pool.
//!
//! # Why one writer thread
//!
//! SQLite allows one writer at a time. Funnelling every command through one thread lets it
//! group whatever commands are waiting into one transaction (one fsync) while each keeps its
//! own savepoint, so a refused command changes nothing and a busy node pays one sync per batch
//! rather than one per write. Readers use their own connections and never wait for it (WAL).

pub mod schema;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use jochat_core::{apply, ChatError, Command, Outcome};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

pub use sqlite::SqliteChat;

use crate::error::NodeError;

/// Commands waiting for the writer at most; past this, writers wait for room (backpressure).
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Commands applied in one transaction at most.
pub const WRITE_BATCH_MAX: usize = 512;
/// How long a connection waits for a lock held by another before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Where and how to open the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file; its folder is created if missing.
    pub path: PathBuf,
    /// Durability of commits.
    pub sync_mode: SyncMode,
    /// Read connections at most.
    pub read_pool_size: u32,
}

struct WriteJob {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ChatError>>,
}

/// The open database: send commands to [`Database::write`], run queries with
/// [`Database::read`]. Cheap to share behind an `Arc`.
pub struct Database {
    readers: r2d2::Pool<SqliteConnectionManager>,
    /// `None` once [`Database::close`] began.
    jobs: std::sync::Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    /// Commands the writer has committed since the database was opened.
    applied: Arc<AtomicU64>,
}

fn open_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

impl Database {
    /// Opens (creating and migrating if needed) the database and starts the writer thread.
    ///
    /// # Errors
    /// The folder cannot be created, the file cannot be opened, or a migration fails.
    pub fn open(config: &StoreConfig) -> Result<Self, NodeError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut conn = open_connection(&config.path)?;
        let journal: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(NodeError::Schema(format!(
                "could not switch {} to WAL mode (got {journal})",
                config.path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", config.sync_mode.pragma())?;
        schema::migrate(&mut conn)?;

        let manager = SqliteConnectionManager::file(&config.path).with_init(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "query_only", true)
        });
        let readers = r2d2::Pool::builder()
            .max_size(config.read_pool_size)
            .min_idle(Some(1))
            .connection_timeout(READ_CONNECTION_TIMEOUT)
            .build(manager)?;

        let (jobs, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        let applied = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&applied);
        let writer = std::thread::Builder::new()
            .name("jochat-writer".into())
            .spawn(move || writer_loop(conn, queue, &counter))?;
        Ok(Self {
            readers,
            jobs: std::sync::Mutex::new(Some(jobs)),
            writer: std::sync::Mutex::new(Some(writer)),
            path: config.path.clone(),
            applied,
        })
    }

    /// Commands committed (applied or refused) since the database was opened.
    pub fn applied_commands(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `command` and returns its outcome once it is committed.
    ///
    /// # Errors
    /// The rule the command broke (nothing changed), or `ShuttingDown`.
    pub async fn write(&self, command: Command) -> Result<Outcome, NodeError> {
        let jobs = self
            .jobs
            .lock()
            .expect("the jobs mutex is never held across a panic")
            .clone()
            .ok_or(NodeError::ShuttingDown)?;
        let (reply, outcome) = oneshot::channel();
        jobs.send(WriteJob { command, reply })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        Ok(outcome.await.map_err(|_| NodeError::ShuttingDown)??)
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

    /// Stops taking writes, lets the writer finish every queued command, and waits for it.
    /// Every write acknowledged before this returns is committed.
    pub async fn close(&self) {
        // Dropping the last sender ends the writer's loop once the queue is drained.
        drop(
            self.jobs
                .lock()
                .expect("the jobs mutex is never held across a panic")
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .expect("the writer mutex is never held across a panic")
            .take();
        if let Some(writer) = writer {
            match tokio::task::spawn_blocking(move || writer.join()).await {
                Ok(Ok(())) => tracing::debug!("writer thread stopped"),
                Ok(Err(_)) => tracing::error!("writer thread panicked"),
                Err(error) => tracing::error!(%error, "could not wait for the writer thread"),
            }
        }
    }
}

fn writer_loop(mut conn: Connection, mut queue: mpsc::Receiver<WriteJob>, applied: &AtomicU64) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(WRITE_BATCH_MAX);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < WRITE_BATCH_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commands: Vec<&Command> = batch.iter().map(|job| &job.command).collect();
        let results = apply_batch(&mut conn, &commands);
        let committed = results
            .iter()
            .filter(|r| !matches!(r, Err(ChatError::Storage(_))))
            .count();
        applied.fetch_add(committed as u64, Ordering::Relaxed);
        for (job, result) in batch.drain(..).zip(results) {
            // The requester may have gone (deadline passed); the command is committed anyway.
            let _ = job.reply.send(result);
        }
    }
    if let Err((_, error)) = conn.close() {
        tracing::error!(%error, "closing the database failed");
    }
}

/// Applies one command inside `tx`, in its own savepoint: a refused command is rolled back
/// alone and the transaction goes on. The outer `Err` is a failure of SQLite itself.
///
/// # Errors
/// SQLite could not create, release or roll back the savepoint.
pub fn apply_in_savepoint(
    tx: &mut rusqlite::Transaction<'_>,
    command: &Command,
) -> Result<Result<Outcome, ChatError>, rusqlite::Error> {
    let savepoint = tx.savepoint()?;
    let result = apply(&mut SqliteChat::new(&savepoint), command);
    if result.is_ok() {
        savepoint.commit()?;
    }
    // Dropping an uncommitted savepoint rolls it back.
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
