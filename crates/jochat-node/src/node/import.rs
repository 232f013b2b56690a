//! Carrying the prototype's database files over (`legacy/REPLIES.md`).
//!
//! A node started on a prototype file (the prototype's run command, unchanged) either
//! imports it or sets it aside, before its storage opens:
//!
//! - the node that will form the cluster (no `--peers`, or the lowest id when no peer knows a
//!   leader) imports it: the rows go through [`crate::store::prototype`]'s rules into a new
//!   JoChat file marked as a [`Seed`]; the node then forms a one-node cluster and publishes
//!   that state as its first snapshot before it serves, so every other node receives it as
//!   a snapshot, as any joining node does;
//! - any other node sets its file aside (kept, and logged with its row counts) and joins.
//!
//! The import is atomic: the new file is built beside the old one and renamed over it only
//! when complete, after the original was linked to `<db>.prototype-<unix seconds>`. A crash
//! before the rename leaves the prototype file in place (the next start imports again,
//! reusing the link); after it, the file is a JoChat database and is never imported again.
//! The report of rows changed or left out is written to `<db>.import-report.txt`.
//!
//! `jochat-node import-prototype` does the same offline ([`import_offline`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::auth::Hasher;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::raft::network::PeerDialer;
use crate::raft::storage::{write_seed, Seed};
use crate::store::prototype::{self, Counts, Plan, Report};
use crate::store::schema;

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Where the report of an import into `db` is written.
pub fn report_path(db: &Path) -> PathBuf {
    with_suffix(db, ".import-report.txt")
}

/// The unix time in seconds, for the names of files set aside.
fn stamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// An existing `<db>.prototype-*` name of the same file as `db` (left by an import that a
/// crash interrupted), so a retried import does not link it twice.
fn existing_link(db: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(db).ok()?;
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!("{}.prototype-", db.file_name()?.to_string_lossy());
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let metadata = entry.metadata().ok()?;
        (name.to_string_lossy().starts_with(&prefix)
            && metadata.ino() == target.ino()
            && metadata.dev() == target.dev())
        .then(|| entry.path())
    })
}

/// Flushes the folder holding `path`, so a rename into it is durable.
pub(super) fn sync_dir_of(path: &Path) -> Result<(), NodeError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, text: &str) -> Result<(), NodeError> {
    let partial = with_suffix(path, ".partial");
    std::fs::write(&partial, text)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// Hashes every planned credential with argon2id, on the hasher's threads, several at once.
/// Returns the hashes by user id.
async fn hash_credentials(
    plan: &Plan,
    hasher: &Hasher,
) -> Result<BTreeMap<i64, String>, NodeError> {
    let mut pending = tokio::task::JoinSet::new();
    for user in &plan.users {
        if let Some(credential) = user.credential.clone() {
            let hasher = hasher.clone();
            let id = user.id.0;
            pending.spawn(async move { (id, hasher.hash(&credential).await) });
        }
    }
    let total = pending.len();
    let mut hashes = BTreeMap::new();
    let mut last_log = std::time::Instant::now();
    while let Some(joined) = pending.join_next().await {
        let (id, hash) = joined.map_err(|e| NodeError::Task(e.to_string()))?;
        hashes.insert(id, hash?);
        if last_log.elapsed() > std::time::Duration::from_secs(5) {
            tracing::info!(done = hashes.len(), total, "import: hashing passwords");
            last_log = std::time::Instant::now();
        }
    }
    Ok(hashes)
}

/// Builds a JoChat database at `to` (which must not exist) from the prototype file at
/// `from`: the rows as [`prototype::plan`] decides, marked as a [`Seed`]. Returns the report.
async fn build(
    from: &Path,
    to: &Path,
    content_bytes_max: usize,
    hasher: &Hasher,
) -> Result<Report, NodeError> {
    let plan = {
        let from = from.to_owned();
        tokio::task::spawn_blocking(move || prototype::plan(&from, content_bytes_max))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??
    };
    let hashes = hash_credentials(&plan, hasher).await?;
    let source = from.display().to_string();
    let to = to.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Report, NodeError> {
        let mut conn = Connection::open(&to)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        schema::create(&mut conn)?;
        let tx = conn.transaction()?;
        prototype::write_rows(&tx, &plan, &hashes, super::now_ms())?;
        write_seed(
            &tx,
            &Seed {
                source,
                users: plan.report.users,
                messages: plan.report.messages,
            },
        )?;
        tx.commit()?;
        drop(conn);
        std::fs::File::open(&to)?.sync_all()?;
        Ok(plan.report)
    })
    .await
    .map_err(|e| NodeError::Task(e.to_string()))?
}

fn log_report(report: &Report, report_file: &Path) {
    tracing::warn!(
        found = %report.found,
        accounts = report.users,
        messages = report.messages,
        sessions_dropped = report.found.sessions,
        rows_changed_or_left_out = report.odd.len(),
        report = %report_file.display(),
        "imported the prototype's database"
    );
}

/// What a node does with a prototype file at its `--db-file`.
enum Role {
    /// This node forms the cluster: it imports the file.
    Forms,
    /// Another node forms it, or a cluster exists: the file is set aside.
    Joins,
}

/// At start-up, before the storage opens: if the node's file is the prototype's, imports it
/// (the node will form the cluster) or sets it aside (it will join). Nothing happens for any
/// other file.
///
/// # Errors
/// The file cannot be read, renamed or written; hashing fails.
pub(super) async fn take_over_prototype_file(
    config: &NodeConfig,
    dialer: &PeerDialer,
    hasher: &Hasher,
) -> Result<(), NodeError> {
    let db = config.db_path();
    let Some(counts) = prototype::detect(&db)? else {
        return Ok(());
    };
    let role = if super::cluster::forms_the_cluster(config, dialer).await {
        Role::Forms
    } else {
        Role::Joins
    };
    match role {
        Role::Joins => set_aside(&db, counts),
        Role::Forms => {
            tracing::info!(db = %db.display(), found = %counts, "the database file is the prototype's: importing it");
            let kept = match existing_link(&db) {
                Some(kept) => kept,
                None => {
                    let kept = with_suffix(&db, &format!(".prototype-{}", stamp()));
                    if std::fs::hard_link(&db, &kept).is_err() {
                        std::fs::copy(&db, &kept)?;
                    }
                    kept
                }
            };
            let building = with_suffix(&db, ".importing");
            remove_leftover(&building)?;
            let report = build(&db, &building, config.content_bytes_max, hasher).await?;
            let report_file = report_path(&db);
            write_atomically(&report_file, &report.render(&db, Some(&kept)))?;
            crate::raft::storage::set_aside_orphaned_log(&crate::raft::storage::log_dir_of(&db))?;
            std::fs::rename(&building, &db)?;
            sync_dir_of(&db)?;
            log_report(&report, &report_file);
            tracing::info!(kept = %kept.display(), "the prototype's file is kept");
            Ok(())
        }
    }
}

/// Removes a partial file (and its journal) that an interrupted import left.
fn remove_leftover(path: &Path) -> Result<(), NodeError> {
    for companion in ["", "-journal", "-wal", "-shm"] {
        let file = with_suffix(path, companion);
        if file.exists() {
            std::fs::remove_file(&file)?;
        }
    }
    Ok(())
}

/// Renames a prototype file this node will not import to `<db>.prototype-<unix seconds>`.
fn set_aside(db: &Path, counts: Counts) -> Result<(), NodeError> {
    let kept = with_suffix(db, &format!(".prototype-{}", stamp()));
    std::fs::rename(db, &kept)?;
    for companion in ["-journal", "-wal", "-shm"] {
        let from = with_suffix(db, companion);
        if from.exists() {
            std::fs::rename(&from, with_suffix(&kept, companion))?;
        }
    }
    tracing::warn!(
        db = %db.display(),
        kept = %kept.display(),
        found = %counts,
        "the database file is the prototype's, but another node forms the cluster (or it \
         exists): set aside, not imported; this node receives the cluster's state as it joins"
    );
    Ok(())
}

/// `jochat-node import-prototype --from OLD --db-file NEW`: builds the JoChat database `new`
/// from the prototype file `old` (left as it is) and writes the report beside it. A node
/// started on `new` forms a new cluster with that state (alone, or as the lowest id of its
/// peers, none of which may know a leader yet). Returns the report's text.
///
/// # Errors
/// `Config` on `db-file` when `new` exists, on `from` when `old` is not a prototype file;
/// the files cannot be read or written.
pub async fn import_offline(
    old: &Path,
    new: &Path,
    content_bytes_max: usize,
) -> Result<String, NodeError> {
    if new.exists() {
        return Err(NodeError::Config {
            flag: "db-file",
            rule: format!(
                "{} exists already; import-prototype never overwrites a database: name a new file",
                new.display()
            ),
        });
    }
    if prototype::detect(old)?.is_none() {
        return Err(NodeError::Config {
            flag: "from",
            rule: format!(
                "{} is not a prototype database (a SQLite file with the prototype's users \
                 and messages tables)",
                old.display()
            ),
        });
    }
    if let Some(parent) = new.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let building = with_suffix(new, ".importing");
    remove_leftover(&building)?;
    let report = build(old, &building, content_bytes_max, &Hasher::new()).await?;
    let text = report.render(old, None);
    let report_file = report_path(new);
    write_atomically(&report_file, &text)?;
    std::fs::rename(&building, new)?;
    sync_dir_of(new)?;
    log_report(&report, &report_file);
    Ok(text)
}
