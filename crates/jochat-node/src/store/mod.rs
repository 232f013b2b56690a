//! The node's database: one SQLite file (WAL) holding the chat state and the Raft log.
//!
//! # Layout
//!
//! - [`schema`]: tables, indexes and migrations (`PRAGMA user_version`).
//! - [`sqlite`]: [`SqliteChat`], `jochat-core`'s storage traits on a SQLite connection.
//! - this module: [`Database`], the pool of read-only connections queries run on, and
//!   [`apply_commands`] / [`apply_batch`], how commands are applied inside a transaction.
//!
//! Writes are not made here: every command is a Raft log entry, applied by
//! `crate::raft::storage`'s state machine on its one writer connection. Readers use their own
//! connections and never wait for it (WAL).

pub mod integrity;
pub mod prototype;
pub mod schema;
pub mod sqlite;
pub mod visibility;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// What reads wait for: the applies whose outcomes were handed out before their commit.
    visibility: Option<Arc<visibility::Visibility>>,
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
            visibility: None,
        })
    }

    /// Makes every read wait until the applies handed out before it have committed (the
    /// node's state machine's [`visibility::Visibility`]).
    #[must_use]
    pub fn gated_by(mut self, visibility: Arc<visibility::Visibility>) -> Self {
        self.visibility = Some(visibility);
        self
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

    /// Runs `query` against one consistent snapshot of the database, on the blocking pool,
    /// once every apply the node answered before this call has committed (when
    /// [`Database::gated_by`] its state machine's visibility).
    ///
    /// # Errors
    /// What `query` returns, a failure to get a connection, or `Stopped` when the writer
    /// failed before an answered apply committed.
    pub async fn read<T, F>(&self, query: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteChat<'_>) -> Result<T, ChatError> + Send + 'static,
    {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(visibility) = &self.visibility {
            visibility.wait().await?;
        }
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
/// The savepoint statements are prepared once per connection: rusqlite's `Savepoint` parses
/// them anew for every command.
///
/// # Errors
/// SQLite could not create, release or roll back the savepoint.
fn apply_in_savepoint(
    tx: &rusqlite::Transaction<'_>,
    command: &Command,
) -> Result<CommandResult, rusqlite::Error> {
    tx.prepare_cached("SAVEPOINT command")?.execute([])?;
    let result = apply(&mut SqliteChat::new(tx), command);
    if result.is_err() {
        tx.prepare_cached("ROLLBACK TO command")?.execute([])?;
    }
    tx.prepare_cached("RELEASE command")?.execute([])?;
    Ok(result)
}

/// What applying one command gave: its outcome, or the rule (or storage failure) that
/// refused it.
pub type CommandResult = Result<Outcome, ChatError>;

/// The most commands that share one savepoint in [`apply_commands`]: bounds the copies of
/// changed pages SQLite keeps to undo the savepoint (its sub-journal, in memory on the
/// writer connection) and the work repeated after a storage failure.
pub const COMMANDS_PER_SAVEPOINT: usize = 64;

/// Applies `commands` in order inside `tx` and returns each one's result, with what
/// `on_applied` made of each successful outcome (read inside the transaction, right after the
/// command; for the events a commit publishes).
///
/// A refused command changes nothing. Commands share a savepoint, up to
/// [`COMMANDS_PER_SAVEPOINT`] at a time: `apply` checks every rule before its first change,
/// so a command refused by a rule has changed nothing and needs no rollback of its own; only
/// a storage failure can stop a command part-way. If one did, the group is rolled back and
/// applied again with each command in a savepoint of its own, which gives the failed command
/// alone its storage error. (A savepoint per command costs two statements and a copy of
/// every page the command changes: docs/performance.md, "History".) A group's commands read
/// the `counters` rows once and write each changed one once, at the group's end
/// ([`SqliteChat::deferring`]); a group rolled back drops them with the rest.
///
/// # Errors
/// What `on_applied` returned, or SQLite's failure with a savepoint (converted by
/// `sqlite`); the transaction must then be rolled back.
pub fn apply_commands<T, E>(
    tx: &rusqlite::Transaction<'_>,
    commands: &[&Command],
    sqlite: impl Fn(rusqlite::Error) -> E,
    mut on_applied: impl FnMut(&rusqlite::Transaction<'_>, &Outcome) -> Result<Option<T>, E>,
) -> Result<(Vec<CommandResult>, Vec<T>), E> {
    let statement = |sql: &str| -> Result<(), E> {
        tx.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
            .map_err(&sqlite)
    };
    let mut results = Vec::with_capacity(commands.len());
    let mut made = Vec::new();
    // Only failures met from here on count.
    let _ = sqlite::take_environmental_failure();
    for group in commands.chunks(COMMANDS_PER_SAVEPOINT) {
        statement("SAVEPOINT commands")?;
        let mut isolated = false;
        let (group_results, group_made) = loop {
            let mut group_results = Vec::with_capacity(group.len());
            let mut group_made = Vec::new();
            let mut storage_failed = false;
            // The group's commands share the counters, read once and written once.
            let mut chat = SqliteChat::deferring(tx);
            for command in group {
                let result = if isolated {
                    apply_in_savepoint(tx, command).map_err(&sqlite)?
                } else {
                    apply(&mut chat, command)
                };
                if matches!(result, Err(ChatError::Storage(_))) {
                    // The disk, memory or file failed, not the command: fail the whole apply
                    // (a storage fault) rather than record a failure other replicas would not.
                    if let Some(error) = sqlite::take_environmental_failure() {
                        return Err(sqlite(error));
                    }
                }
                if let Ok(outcome) = &result {
                    group_made.extend(on_applied(tx, outcome)?);
                } else if !isolated && matches!(result, Err(ChatError::Storage(_))) {
                    storage_failed = true;
                    break;
                }
                group_results.push(result);
            }
            if !storage_failed {
                chat.write_counters().map_err(&sqlite)?;
                break (group_results, group_made);
            }
            // The counters held in memory (`chat`, not written) go with the rest of the group.
            statement("ROLLBACK TO commands")?;
            isolated = true;
        };
        statement("RELEASE commands")?;
        results.extend(group_results);
        made.extend(group_made);
    }
    Ok((results, made))
}

/// Applies `commands` in one transaction (through [`apply_commands`]): a refused command
/// changes nothing and the others commit together. If the transaction itself fails, every
/// command gets the storage error and none is applied.
pub fn apply_batch(conn: &mut Connection, commands: &[&Command]) -> Vec<CommandResult> {
    let run = |conn: &mut Connection| -> Result<Vec<CommandResult>, rusqlite::Error> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (results, _) = apply_commands(&tx, commands, |error| error, |_, _| Ok(None::<()>))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use jochat_core::ops::{CreateSession, MessageSent, SendMessage, SignUp};
    use jochat_core::types::{Content, IdempotencyKey, SessionToken, UserId, Username};
    use jochat_core::{Action, ChatRead};

    fn name(raw: &str) -> Username {
        Username::new(raw).expect("valid test name")
    }

    fn send(n: usize, token: &SessionToken, to: &str, content: &str) -> Command {
        Command {
            at_ms: 10 + n as i64,
            idempotency_key: IdempotencyKey::optional(&format!("key-{n}")).expect("valid key"),
            action: Action::SendMessage(SendMessage {
                session: token.digest(),
                recipient: name(to),
                content: Content::new(content.into(), 100).expect("valid content"),
            }),
        }
    }

    /// Commands share savepoints; a storage failure part-way through one (here a trigger that
    /// fails its last write) rolls back that command alone, and a command refused
    /// by a rule changes nothing, in a batch larger than one savepoint's group.
    #[test]
    fn a_storage_failure_rolls_back_only_its_own_command() {
        let mut conn = Connection::open_in_memory().expect("in-memory SQLite opens");
        schema::migrate(&mut conn).expect("schema applies");
        let alice = SessionToken::from_random_bytes([1; 32]);
        let setup = [
            Action::SignUp(SignUp {
                username: name("alice"),
                password_hash: "h".into(),
            }),
            Action::SignUp(SignUp {
                username: name("bob"),
                password_hash: "h".into(),
            }),
            Action::CreateSession(CreateSession {
                user_id: UserId(1),
                token_digest: alice.digest(),
                expires_at_ms: 1_000_000,
            }),
        ]
        .map(|action| Command {
            at_ms: 1,
            idempotency_key: None,
            action,
        });
        let refs: Vec<&Command> = setup.iter().collect();
        assert!(apply_batch(&mut conn, &refs).iter().all(Result::is_ok));
        conn.execute_batch(
            "CREATE TEMP TRIGGER fail_one BEFORE INSERT ON idempotency WHEN NEW.key = 'key-66' \
             BEGIN SELECT RAISE(ABORT, 'the disk refused'); END;",
        )
        .expect("trigger is created");

        // 70 commands: two groups of savepoint-sharing commands. Command 3 names an unknown
        // recipient (refused by a rule); command 66, in the second group, fails in storage at
        // its last step (remembering its outcome), after it stored its message and moved the
        // counters.
        let commands: Vec<Command> = (0..70)
            .map(|n| match n {
                3 => send(n, &alice, "nobody", "to nobody"),
                _ => send(n, &alice, "bob", &format!("message {n}")),
            })
            .collect();
        let refs: Vec<&Command> = commands.iter().collect();
        let results = apply_batch(&mut conn, &refs);

        assert_eq!(results.len(), 70);
        assert!(matches!(results[3], Err(ChatError::NotFound { .. })));
        assert!(
            matches!(&results[66], Err(ChatError::Storage(reason)) if reason.contains("the disk refused")),
            "{:?}",
            results[66]
        );
        let ids: Vec<i64> = results
            .iter()
            .filter_map(|result| match result {
                Ok(Outcome::MessageSent(MessageSent { id, .. })) => Some(id.0),
                _ => None,
            })
            .collect();
        // Ids stay dense: neither refused command took one.
        assert_eq!(ids, (1..=68).collect::<Vec<_>>());

        let chat = SqliteChat::new(&conn);
        let dump = chat.dump().expect("dump reads");
        assert_eq!(dump.messages.len(), 68);
        assert!(dump
            .messages
            .iter()
            .all(|m| m.content != "message 66" && m.content != "to nobody"));
        assert_eq!(dump.last_ids.message, 68);
        // Only the 68 sends that happened are remembered (the two refusals are not).
        assert_eq!(dump.remembered.len(), 68);
        assert_eq!(chat.remembered_span().expect("span reads").0, 68);
        let bob = name("bob");
        let (_, total) = chat
            .inbox(
                &bob,
                None,
                jochat_core::types::Page::new(0, 10).expect("valid page"),
            )
            .expect("inbox reads");
        assert_eq!(total, 68);
    }

    /// One step of [`counters_kept_for_a_group_end_as_written_at_once`]'s histories.
    fn step_command(n: usize, (kind, a, b): (u8, usize, usize), at_ms: &mut i64) -> Command {
        let users = ["ann", "ben", "cat", "dan"];
        let token = |slot: usize| SessionToken::from_random_bytes([slot as u8 + 1; 32]);
        *at_ms += if kind == 4 { 2 * 24 * 3_600_000 } else { 1 };
        let key = match kind {
            // A retry of the step before (or that key with another action).
            5 if n > 0 => format!("key-{}", n - 1),
            _ => format!("key-{n}"),
        };
        let action = match kind {
            0 => Action::SignUp(SignUp {
                username: name(users[a]),
                password_hash: "h".into(),
            }),
            1 => Action::CreateSession(CreateSession {
                user_id: UserId(a as i64 + 1),
                token_digest: token(a).digest(),
                expires_at_ms: i64::MAX / 2,
            }),
            3 => Action::DeleteAccount(jochat_core::ops::DeleteAccount {
                session: token(a).digest(),
            }),
            _ => Action::SendMessage(SendMessage {
                session: token(a).digest(),
                recipient: name(users[b]),
                content: Content::new(format!("{n}"), 100).expect("valid content"),
            }),
        };
        Command {
            at_ms: *at_ms,
            idempotency_key: IdempotencyKey::optional(&key).expect("valid key"),
            action,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Groups of commands keep the counters in memory and write them at the group's end:
        /// any history applied in batches of any size ends exactly as when every command
        /// writes its counters at once (sign-ups, sessions, sends, deleted accounts, retried
        /// keys, and days passing so that remembered outcomes are forgotten).
        #[test]
        fn counters_kept_for_a_group_end_as_written_at_once(
            steps in proptest::collection::vec((0u8..6, 0usize..4, 0usize..4), 1..150),
            batch in 1usize..100,
        ) {
            let mut at_ms = 0;
            let commands: Vec<Command> = steps
                .iter()
                .enumerate()
                .map(|(n, step)| step_command(n, *step, &mut at_ms))
                .collect();

            let mut direct = Connection::open_in_memory().expect("in-memory SQLite opens");
            schema::migrate(&mut direct).expect("schema applies");
            let mut direct_results = Vec::new();
            for command in &commands {
                let tx = direct.transaction().expect("transaction starts");
                direct_results.push(apply(&mut SqliteChat::new(&tx), command));
                tx.commit().expect("commits");
            }

            let mut grouped = Connection::open_in_memory().expect("in-memory SQLite opens");
            schema::migrate(&mut grouped).expect("schema applies");
            let mut grouped_results = Vec::new();
            for chunk in commands.chunks(batch) {
                let refs: Vec<&Command> = chunk.iter().collect();
                grouped_results.extend(apply_batch(&mut grouped, &refs));
            }

            proptest::prop_assert_eq!(&grouped_results, &direct_results);
            let (direct, grouped) = (SqliteChat::new(&direct), SqliteChat::new(&grouped));
            proptest::prop_assert_eq!(grouped.dump().expect("dumps"), direct.dump().expect("dumps"));
            proptest::prop_assert_eq!(
                grouped.remembered_span().expect("span reads"),
                direct.remembered_span().expect("span reads")
            );
        }
    }
}
