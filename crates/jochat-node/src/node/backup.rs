//! Backups and restoring one.
//!
//! A backup ([`Node::backup_copy`]) is taken on the leader: it first confirms with a majority
//! that it leads and has applied everything committed before the call (as a linearizable
//! read does), then copies the chat tables in one read transaction on a connection of its
//! own, as a snapshot is copied (`raft::snapshots::copy_state`, paced at
//! `--snapshot-rate-mib`), so writes go on meanwhile. The copy is a plain SQLite file with
//! this build's schema and the log index it is at; the internal service streams it to
//! `jochat backup` with its SHA-256.
//!
//! Restoring ([`restore_backup`], `jochat-node --restore FILE`) happens before the storage
//! opens, into an empty data folder only: the file is checked (its `FILE.sha256` when
//! present, SQLite's full integrity check, JoChat's tables and a schema version this build
//! knows), copied beside the new database, migrated, stripped of the old cluster's Raft
//! state, and marked as a [`Seed`]; the node then forms a new one-node cluster and publishes
//! the state as its first snapshot (as an import of the prototype's file does), and others
//! join it as usual. Anything refused changes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use super::Node;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::raft::storage::{applied_index_in, write_seed, Seed};
use crate::store::schema;

/// A backup copy in the node's data folder, removed when dropped.
#[derive(Debug)]
pub struct BackupCopy {
    path: PathBuf,
    /// The last log index the copy holds.
    pub index: u64,
    /// The file's size.
    pub bytes: u64,
}

impl BackupCopy {
    /// The copy's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BackupCopy {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, file = %self.path.display(), "could not remove a backup copy");
        }
    }
}

/// Numbers the backup copies of this process.
static BACKUP_COPIES: AtomicU64 = AtomicU64::new(0);

impl Node {
    /// A consistent copy of the chat state holding every write committed before the call,
    /// in a file of the data folder (removed when the returned value is dropped).
    ///
    /// # Errors
    /// `NotLeader` on a follower, `NoQuorum` when no majority confirms in time, `DiskFull`
    /// when the data folder is nearly full, `Raft` when the copy fails.
    pub async fn backup_copy(&self) -> Result<BackupCopy, NodeError> {
        self.check_quorum()?;
        self.disk.check()?;
        self.read_rounds
            .confirm(&self.raft, self.quorum_deadline())
            .await?;
        let source = self.config.db_path();
        let n = BACKUP_COPIES.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "{}.backup-{}-{n}",
            source.display(),
            std::process::id()
        ));
        let mut copy = BackupCopy {
            path: path.clone(),
            index: 0,
            bytes: 0,
        };
        let rate = self.config.snapshot_rate();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            crate::raft::snapshots::copy_state(&source, &path, rate)
                .map_err(|e| NodeError::Raft(format!("backup copy: {e}")))?;
            Ok::<_, NodeError>(())
        })
        .await
        .map_err(|e| NodeError::Task(e.to_string()))??;
        copy.index = applied_index_in(&copy.path)?;
        copy.bytes = std::fs::metadata(&copy.path)?.len();
        tracing::info!(
            index = copy.index,
            bytes = copy.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup copy made"
        );
        Ok(copy)
    }
}

fn refused(backup: &Path, why: impl std::fmt::Display) -> NodeError {
    NodeError::Config {
        flag: "restore",
        rule: format!("{}: {why}; nothing was changed", backup.display()),
    }
}

/// The SHA-256 of the file at `path`, as lowercase hex.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Where `jochat backup` writes the checksum of `backup` (`sha256sum`'s format).
pub fn checksum_path(backup: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", backup.display()))
}

/// Checks a backup file before anything is written: the checksum beside it (when present),
/// SQLite's full integrity check, JoChat's tables and schema version. Returns its account
/// and message counts.
fn check_backup(backup: &Path) -> Result<(u64, u64), NodeError> {
    if !backup.is_file() {
        return Err(refused(backup, "no such file"));
    }
    let sums = checksum_path(backup);
    if sums.is_file() {
        let text = std::fs::read_to_string(&sums)?;
        let expected = text.split_whitespace().next().unwrap_or_default();
        let actual = sha256_of(backup)?;
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(refused(
                backup,
                format!(
                    "its SHA-256 is {actual}, not {expected} as {} says: the file is damaged \
                     or truncated",
                    sums.display()
                ),
            ));
        }
    } else {
        tracing::warn!(backup = %backup.display(), "no checksum file beside the backup; relying on SQLite's integrity check");
    }
    let conn = Connection::open_with_flags(
        backup,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| refused(backup, format!("cannot be opened as SQLite: {e}")))?;
    let sqlite = |e: rusqlite::Error| refused(backup, format!("not a sound SQLite database: {e}"));
    let verdict: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |row| row.get(0))
        .map_err(sqlite)?;
    if verdict != "ok" {
        return Err(refused(
            backup,
            format!("SQLite's integrity check failed: {verdict}"),
        ));
    }
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite)?;
    if version == 0 || version > schema::SCHEMA_VERSION {
        return Err(refused(
            backup,
            format!(
                "not a JoChat backup this build can read (schema version {version}, this build \
                 knows 1 to {})",
                schema::SCHEMA_VERSION
            ),
        ));
    }
    for table in ["users", "messages", "sessions", "counters", "raft_state"] {
        let found: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite)?;
        if found.is_none() {
            return Err(refused(
                backup,
                format!("not a JoChat backup: it has no {table} table"),
            ));
        }
    }
    let count = |table: &str| -> Result<u64, NodeError> {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .map_err(sqlite)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok((count("users")?, count("messages")?))
}

/// `--restore FILE`, before the storage opens: checks the backup and makes it the node's
/// database, marked as a [`Seed`]. Nothing to do without the flag.
///
/// # Errors
/// `Config` on `restore` when the data folder holds a database already or the backup is
/// refused (nothing is changed then); the files cannot be copied or written.
pub(super) fn restore_backup(config: &NodeConfig) -> Result<(), NodeError> {
    let Some(backup) = &config.restore else {
        return Ok(());
    };
    let db = config.db_path();
    if db.exists() {
        return Err(NodeError::Config {
            flag: "restore",
            rule: format!(
                "{} exists: a backup is restored only into an empty data folder (remove \
                 --restore once the restored node has started)",
                db.display()
            ),
        });
    }
    let (users, messages) = check_backup(backup)?;
    let index = applied_index_in(backup)?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let building = PathBuf::from(format!("{}.restoring", db.display()));
    let _ = std::fs::remove_file(&building);
    std::fs::copy(backup, &building)?;
    {
        let mut conn = Connection::open(&building)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        schema::migrate(&mut conn)?;
        let tx = conn.transaction()?;
        // The old cluster's log and Raft state do not belong to the new one.
        tx.execute_batch("DELETE FROM raft_log; DELETE FROM raft_state;")?;
        write_seed(
            &tx,
            &Seed {
                source: backup.display().to_string(),
                users,
                messages,
            },
        )?;
        tx.commit()?;
    }
    std::fs::File::open(&building)?.sync_all()?;
    crate::raft::storage::set_aside_orphaned_log(&crate::raft::storage::log_dir_of(&db))?;
    std::fs::rename(&building, &db)?;
    super::import::sync_dir_of(&db)?;
    tracing::warn!(
        backup = %backup.display(),
        backup_index = index,
        accounts = users,
        messages,
        db = %db.display(),
        "restored the backup: this node forms a new cluster with it"
    );
    Ok(())
}
