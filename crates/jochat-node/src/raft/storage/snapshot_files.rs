//! Snapshot files: building one (a paced copy of the chat tables, renamed into place once
//! whole) and recording which file is current.

// openraft's traits return its own `StorageError` (a large type) by value.
#![allow(clippy::result_large_err)]

use super::*;

/// Removes the file of a snapshot that is no longer current, if any.
pub(super) async fn remove_replaced(file: Option<PathBuf>) {
    if let Some(file) = file {
        if let Err(error) = tokio::fs::remove_file(&file).await {
            tracing::warn!(%error, file = %file.display(), "could not remove an old snapshot");
        }
    }
}

/// Where the current snapshot is and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CurrentSnapshot {
    /// What the snapshot holds.
    pub(super) meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    /// Its file.
    pub(super) file: PathBuf,
}

impl StateMachineStore {
    pub(super) fn snapshot_path(&self, name: &str) -> PathBuf {
        self.shared.snapshot_dir.join(format!("{name}.db"))
    }

    /// Records `current` as the node's snapshot; returns the file of the one it replaces, for
    /// [`remove_replaced`] (removing a large file takes a while: not on the writer's thread).
    pub(super) fn set_current_snapshot(
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
