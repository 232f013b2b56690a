//! The database schema, versioned by `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`. A database is opened by
//! running every migration above its version, each in its own transaction, so an old file is
//! upgraded in place and a new one is built from nothing. Never edit a released migration:
//! add another.

use rusqlite::Connection;

use crate::error::NodeError;

/// The migrations, oldest first.
const MIGRATIONS: &[&str] = &[
    // 1: the chat state.
    r#"
    -- Accounts. `username` keeps the case given at sign-up and is unique ignoring case; the
    -- NOCASE collation also makes `=`, `LIKE` and `ORDER BY` ignore case.
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        username      TEXT    NOT NULL COLLATE NOCASE UNIQUE,
        password_hash TEXT    NOT NULL,
        created_at_ms INTEGER NOT NULL
    );

    -- Sessions, by the SHA-256 of their token (the token itself is never stored).
    CREATE TABLE sessions (
        token_digest  TEXT    PRIMARY KEY,
        user_id       INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_user ON sessions (user_id, expires_at_ms);
    CREATE INDEX sessions_by_expiry ON sessions (expires_at_ms);

    -- Messages. `sender` and `recipient` hold usernames as given at sign-up; `to_deliver` is
    -- 1 once delivered and 0 while the message waits as "sent while away".
    CREATE TABLE messages (
        id           INTEGER PRIMARY KEY,
        sender       TEXT    NOT NULL,
        recipient    TEXT    NOT NULL,
        content      TEXT    NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        to_deliver   INTEGER NOT NULL CHECK (to_deliver IN (0, 1))
    );
    -- Inbox pages and counts.
    CREATE INDEX messages_inbox ON messages (recipient, id);
    -- Away messages: unread counts and fetches read only these.
    CREATE INDEX messages_away ON messages (recipient, id) WHERE to_deliver = 0;
    -- Conversations, and deleting everything a user sent.
    CREATE INDEX messages_conversation ON messages (sender, recipient, id);

    -- Outcomes of writes that carried an idempotency key, oldest first by `seq`.
    CREATE TABLE idempotency (
        seq     INTEGER PRIMARY KEY,
        key     TEXT    NOT NULL UNIQUE,
        scope   TEXT    NOT NULL,
        kind    TEXT    NOT NULL,
        outcome TEXT    NOT NULL,
        at_ms   INTEGER NOT NULL
    );
    CREATE INDEX idempotency_by_age ON idempotency (at_ms);

    -- Id counters and other bookkeeping; ids are never reused.
    CREATE TABLE counters (
        name  TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value) VALUES
        ('last_user_id', 0), ('last_message_id', 0), ('remembered_count', 0);
    "#,
    // 2: the Raft log and Raft's own state, in the same file as the chat state so that an
    // applied entry and its effect commit together.
    r#"
    -- Log entries by index; `entry` is the encoded openraft entry.
    CREATE TABLE raft_log (
        log_index INTEGER PRIMARY KEY,
        term      INTEGER NOT NULL,
        entry     BLOB    NOT NULL
    );

    -- Vote, committed id, last purged id, last applied id, membership, current snapshot.
    CREATE TABLE raft_state (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 3: each inbox's size, kept as messages come and go, so that a page's total is one row
    // read rather than a count over the whole inbox, which grows with the inbox.
    r#"
    CREATE TABLE inbox_counts (
        recipient TEXT    PRIMARY KEY,
        messages  INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO inbox_counts (recipient, messages)
        SELECT recipient, count(*) FROM messages GROUP BY recipient;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings `conn`'s database up to [`SCHEMA_VERSION`].
///
/// # Errors
/// `NodeError::Schema` when the file is newer than this build, or a migration fails (the
/// failed migration's transaction is rolled back).
pub fn migrate(conn: &mut Connection) -> Result<(), NodeError> {
    run_migrations(conn, true)
}

/// Gives a new, empty database (a snapshot file being written) this build's schema, without
/// logging each step.
///
/// # Errors
/// As [`migrate`].
pub fn create(conn: &mut Connection) -> Result<(), NodeError> {
    run_migrations(conn, false)
}

fn run_migrations(conn: &mut Connection, log: bool) -> Result<(), NodeError> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(NodeError::Schema(format!(
            "database schema version {version} is newer than this build's {SCHEMA_VERSION}: \
             run a newer jochat-node"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
        if log {
            tracing::info!(version = index + 1, "database schema migrated");
        }
    }
    Ok(())
}
