//! The state hash: the SHA-256 of a node's chat tables as they stood right after it applied
//! one log entry. Replicas that applied the same entries hold the same rows, so their hashes
//! at one index agree; one that differs has a damaged file (or a bug made it diverge). The
//! leader compares the members' hashes from time to time (`raft::state_check`).
//!
//! To hash at exactly index `i` while entries keep coming, [`StateHasher::hash_at`] leaves a
//! hook: the state machine, applying a run of entries that contains `i`, commits up to `i`,
//! opens a read transaction there (SQLite's WAL keeps that view however much is written
//! after), and hands it over; the hashing then runs on the blocking pool while applying goes
//! on. A node already at `i` hashes at once; one already past it answers `Passed`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::{get_state, Shared, CHAT_TABLES};
use crate::error::NodeError;

/// Read views waiting to be hashed, by the index they must show.
pub(super) type Hooks =
    std::sync::Mutex<BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<Connection>>>>;

/// What [`StateHasher::hash_at`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateHash {
    /// The hash of the chat tables right after entry `index` was applied.
    Hashed {
        /// The index.
        index: u64,
        /// SHA-256 over every row of every chat table, in key order.
        sha256: [u8; 32],
    },
    /// This node had already applied past the index (or did not reach it in time); its
    /// applied index then.
    Passed {
        /// The node's applied index.
        applied: u64,
    },
}

/// Hashes this node's chat tables at a chosen applied index. Cheap to clone.
#[derive(Clone)]
pub struct StateHasher {
    pub(super) shared: Arc<Shared>,
}

impl StateHasher {
    /// The hash of the chat tables right after entry `index` is applied here, waiting up to
    /// `wait` for this node to get there.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn hash_at(&self, index: u64, wait: Duration) -> Result<StateHash, NodeError> {
        let (hooked, view) = tokio::sync::oneshot::channel();
        self.hooks().entry(index).or_default().push(hooked);
        self.shared.pace.hurry(index);
        let path = self.shared.path.clone();
        // With the hook in place, a node still below `index` hands the view over when it
        // applies it; one at or past it answers now.
        let now = tokio::task::spawn_blocking(move || open_view(&path))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        let applied = applied_index(&now)?;
        let conn = if applied >= index {
            drop(view);
            self.unhook(index);
            if applied > index {
                return Ok(StateHash::Passed { applied });
            }
            now
        } else {
            drop(now);
            match tokio::time::timeout(wait, view).await {
                Ok(Ok(conn)) => conn,
                _ => {
                    self.unhook(index);
                    return Ok(StateHash::Passed { applied });
                }
            }
        };
        let sha256 = tokio::task::spawn_blocking(move || hash_tables(&conn))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        Ok(StateHash::Hashed { index, sha256 })
    }

    fn hooks(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<Connection>>>>
    {
        self.shared
            .hash_hooks
            .lock()
            .expect("the hash hooks' mutex is never held across a panic")
    }

    /// Forgets the hooks at `index` whose waiter has gone (dropped its receiving end).
    fn unhook(&self, index: u64) {
        let mut hooks = self.hooks();
        if let Some(waiting) = hooks.get_mut(&index) {
            waiting.retain(|sender| !sender.is_closed());
            if waiting.is_empty() {
                hooks.remove(&index);
            }
        }
    }
}

/// A read-only connection inside a read transaction that has taken its view already.
pub(super) fn open_view(path: &std::path::Path) -> Result<Connection, NodeError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("BEGIN")?;
    // The first read fixes the view.
    applied_index(&conn)?;
    Ok(conn)
}

/// The index of the last entry applied, as the view shows it.
fn applied_index(conn: &Connection) -> Result<u64, NodeError> {
    let last: Option<openraft::LogId<u64>> =
        get_state(conn, "last_applied").map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok(last.map_or(0, |id| id.index))
}

/// SHA-256 over every row of every chat table, table by table, rows in key order, each value
/// with its type.
pub(super) fn hash_tables(conn: &Connection) -> Result<[u8; 32], NodeError> {
    let mut hasher = Sha256::new();
    for table in CHAT_TABLES {
        hasher.update(table.as_bytes());
        let mut statement = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1"))?;
        let columns = statement.column_count();
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            for column in 0..columns {
                match row.get_ref(column)? {
                    ValueRef::Null => hasher.update([0u8]),
                    ValueRef::Integer(value) => {
                        hasher.update([1u8]);
                        hasher.update(value.to_le_bytes());
                    }
                    ValueRef::Real(value) => {
                        hasher.update([2u8]);
                        hasher.update(value.to_le_bytes());
                    }
                    ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
                        hasher.update([3u8]);
                        hasher.update((bytes.len() as u64).to_le_bytes());
                        hasher.update(bytes);
                    }
                }
            }
        }
    }
    Ok(hasher.finalize().into())
}
