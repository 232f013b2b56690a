//! The space guard (`--min-free-disk-mb`): a node whose data folder's filesystem has less
//! free space than that refuses new writes before they touch the disk, and takes no new log
//! entries from a leader, until space returns.
//!
//! [`DiskGuard`] measures the free space (`statvfs`) once a second on a task of its own and
//! keeps the verdict in atomics, so a write only reads a flag. The margin covers what can be
//! written between two measurements: at the default of 256 MiB, a node would have to write
//! more than 256 MiB in one second to reach a full disk. A write that fails anyway (the disk
//! filled faster, or another process filled it) is a storage fault: see `server` (the node
//! stops and exits non-zero).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::NodeError;

/// How often the free space is measured.
pub const MEASURE_INTERVAL: Duration = Duration::from_millis(1000);

const MIB: u64 = 1024 * 1024;

/// The free space of one node's data folder, measured in the background.
#[derive(Debug)]
pub struct DiskGuard {
    node_id: u64,
    /// The folder whose filesystem is measured (the database file's folder).
    dir: PathBuf,
    /// Bytes that must stay free; 0 turns the guard off.
    required: u64,
    /// Bytes free at the last measurement.
    free: AtomicU64,
    /// Whether the last measurement was below `required`.
    low: AtomicBool,
}

impl DiskGuard {
    /// A guard for node `node_id` whose database is `db_path`, keeping `required_mib` MiB
    /// free (0: off). Measures once now.
    pub fn new(node_id: u64, db_path: &Path, required_mib: u64) -> Self {
        let dir = match db_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let guard = Self {
            node_id,
            dir,
            required: required_mib.saturating_mul(MIB),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        };
        guard.measure();
        guard
    }

    /// Measures the free space again; returns whether the verdict changed (low ↔ enough).
    /// A failed measurement keeps the last verdict and is logged.
    pub fn measure(&self) -> bool {
        if self.required == 0 {
            return false;
        }
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stats) => stats.f_bavail.saturating_mul(stats.f_frsize),
            Err(error) => {
                tracing::warn!(%error, dir = %self.dir.display(), "cannot measure the free disk space");
                return false;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.required;
        let was_low = self.low.swap(low, Ordering::Relaxed);
        if low != was_low {
            if low {
                tracing::warn!(
                    free_mib = free / MIB,
                    required_mib = self.required / MIB,
                    dir = %self.dir.display(),
                    "disk nearly full: refusing writes and new log entries until space returns (--min-free-disk-mb)"
                );
            } else {
                tracing::info!(
                    free_mib = free / MIB,
                    "disk space is back: writes accepted again"
                );
            }
        }
        low != was_low
    }

    /// Whether the disk is below the margin now.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// `Ok` while there is room.
    ///
    /// # Errors
    /// `NodeError::DiskFull` while the free space is below the margin.
    pub fn check(&self) -> Result<(), NodeError> {
        if !self.is_low() {
            return Ok(());
        }
        Err(NodeError::DiskFull {
            node_id: self.node_id,
            free_mib: self.free.load(Ordering::Relaxed) / MIB,
            required_mib: self.required / MIB,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_margin_larger_than_the_disk_refuses_and_zero_turns_the_guard_off() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.db");
        let off = DiskGuard::new(7, &db, 0);
        assert!(off.check().is_ok());

        // No filesystem here has 2^40 MiB free.
        let full = DiskGuard::new(7, &db, 1 << 40);
        let error = full.check().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("disk nearly full on node 7 ("),
            "{error}"
        );
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert!(!full.measure(), "the verdict stays");

        let roomy = DiskGuard::new(7, &db, 1);
        assert!(roomy.check().is_ok());
    }
}
