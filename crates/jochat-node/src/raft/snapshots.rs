//! When snapshots are made, and how their files are written.
//!
//! A snapshot is a copy of the whole state, so making one costs as much disk writing as the
//! database is large. openraft's own policy (every N log entries) makes that cost grow with
//! the database: on a large database every node rewrites its whole file every few thousand
//! entries, all at the same moment, and on a shared disk that caused elections during large
//! fills (docs/performance.md, "History"). What a copy sets off can stall the followers'
//! fsyncs past the leader's append deadline: the copy's own writes, the checkpoint of
//! everything written during the copy's long read (now on a thread of its own,
//! [`super::writer`]) and the purge of the log behind the snapshot (now deleted a little at
//! a time, [`super::storage`]). Two rules bound the copies themselves:
//!
//! - **When** ([`SnapshotRule`], [`run`]): a snapshot is made once at least
//!   `--snapshot-threshold` entries have been applied since the last one *and* the commands
//!   applied since then hold at least half as many bytes as the last snapshot file. Writing
//!   snapshots then costs at most about twice the bytes the log itself brought, however large
//!   the database grows, and the log kept between snapshots stays below about half the
//!   database. Both thresholds are staggered by node id, so the nodes of a cluster do not
//!   all copy at once. openraft runs with `SnapshotPolicy::Never`; [`run`] triggers the
//!   builds.
//! - **How fast** ([`copy_state`], [`Pace`]): the copy is paced to `--snapshot-rate-mib`
//!   MiB/s and flushed every [`SYNC_EVERY_BYTES`], so the disk always has room for the log's
//!   own small fsyncs and the kernel never holds gigabytes of dirty pages to write at once.
//!
//! The copy holds only what a snapshot needs: the chat tables and the applied log id and
//! membership, read in one read transaction (consistent, without holding the writer). The
//! log does not travel, so it is not copied.

// openraft's storage error is large; the helpers here return it unchanged.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{AnyError, StorageError, StorageIOError};
use rusqlite::Connection;

use super::TypeConfig;

type Failure = StorageError<u64>;

/// The tables a snapshot copies, whole. `inbox_counts` is derived from `messages` (and
/// recomputed on install), copied so the file is a complete database of its own.
pub const SNAPSHOT_TABLES: [&str; 6] = [
    "users",
    "sessions",
    "messages",
    "idempotency",
    "counters",
    "inbox_counts",
];

/// Flush the snapshot file each time this many more bytes have been written to it.
pub const SYNC_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// How many SQLite virtual-machine steps pass between two looks at the copy's progress.
const PROGRESS_EVERY_STEPS: i32 = 1_000;

/// How often [`run`] looks whether a snapshot is due.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How many checks [`run`] waits for a build it asked for to start.
const TRIGGER_PATIENCE_TICKS: u32 = 20;

/// The longest a copy that fell behind its pace may then run unpaced to catch up.
const CATCH_UP_MAX: Duration = Duration::from_millis(250);

/// When one node's snapshots are due (see the module documentation): at least
/// `--snapshot-threshold` entries and half of the last snapshot's size in command bytes
/// applied since it was made, both raised by a quarter for each step of the node's stagger
/// (its id less one, modulo 4). Every node applies the same log, so without the stagger all
/// of them would copy their database, and then checkpoint what was written meanwhile, at the
/// same moment; nodes sharing a disk (a cluster on one machine) then stalled each other's
/// fsyncs long enough for an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRule {
    min_entries: u64,
    /// 0 to 3: how many quarters both thresholds are raised by.
    stagger: u64,
}

impl SnapshotRule {
    /// The rule for node `id` with `--snapshot-threshold` `min_entries`.
    pub fn for_node(id: u64, min_entries: u64) -> Self {
        Self {
            min_entries,
            stagger: id.saturating_sub(1) % 4,
        }
    }

    /// Whether a snapshot is due, `entries_since` entries and `bytes_since` command bytes
    /// after the last one, whose file holds `last_snapshot_bytes` (0: none yet).
    pub fn due(&self, entries_since: u64, bytes_since: u64, last_snapshot_bytes: u64) -> bool {
        let quarters = 4 + self.stagger;
        entries_since.saturating_mul(4) >= self.min_entries.saturating_mul(quarters)
            && bytes_since.saturating_mul(8) >= last_snapshot_bytes.saturating_mul(quarters)
    }
}

/// What [`run`] needs to know about the storage's snapshots and applies. Shared by the state
/// machine (which updates it) and the trigger (which reads it).
#[derive(Debug, Default)]
pub struct SnapshotGauge {
    /// Command bytes applied since the node started (`Command::approximate_bytes`).
    applied_bytes: AtomicU64,
    /// `applied_bytes` when the current snapshot was made or installed.
    applied_bytes_at_snapshot: AtomicU64,
    /// The current snapshot file's size.
    snapshot_file_bytes: AtomicU64,
    /// Set while a snapshot is being built.
    building: AtomicBool,
    /// How many builds have started.
    builds_started: AtomicU64,
}

impl SnapshotGauge {
    /// A gauge for a node whose current snapshot file holds `snapshot_file_bytes`.
    pub fn new(snapshot_file_bytes: u64) -> Self {
        Self {
            snapshot_file_bytes: AtomicU64::new(snapshot_file_bytes),
            ..Self::default()
        }
    }

    /// Counts `bytes` of applied commands.
    pub fn applied(&self, bytes: u64) {
        self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Command bytes applied since the current snapshot.
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.applied_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied_bytes_at_snapshot.load(Ordering::Relaxed))
    }

    /// The current snapshot file's size.
    pub fn snapshot_file_bytes(&self) -> u64 {
        self.snapshot_file_bytes.load(Ordering::Relaxed)
    }

    /// How many builds have started since the node started.
    pub fn builds_started(&self) -> u64 {
        self.builds_started.load(Ordering::Relaxed)
    }

    /// Whether a build is under way.
    pub fn building(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }

    /// Marks a build as started; the returned guard marks it ended when dropped, and
    /// [`BuildGuard::made`] records the file it made.
    pub fn start_building(self: &Arc<Self>) -> BuildGuard {
        self.building.store(true, Ordering::Relaxed);
        self.builds_started.fetch_add(1, Ordering::Relaxed);
        BuildGuard {
            gauge: Arc::clone(self),
            applied_bytes_at_start: self.applied_bytes.load(Ordering::Relaxed),
        }
    }

    /// Records an installed snapshot of `file_bytes` as the current one.
    pub fn installed(&self, file_bytes: u64) {
        self.applied_bytes_at_snapshot.store(
            self.applied_bytes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.snapshot_file_bytes
            .store(file_bytes, Ordering::Relaxed);
    }
}

/// A snapshot build under way (see [`SnapshotGauge::start_building`]).
pub struct BuildGuard {
    gauge: Arc<SnapshotGauge>,
    /// What had been applied when the build started: about what the copy holds.
    applied_bytes_at_start: u64,
}

impl BuildGuard {
    /// Records the built snapshot, of `file_bytes`, as the current one.
    pub fn made(self, file_bytes: u64) {
        self.gauge
            .applied_bytes_at_snapshot
            .store(self.applied_bytes_at_start, Ordering::Relaxed);
        self.gauge
            .snapshot_file_bytes
            .store(file_bytes, Ordering::Relaxed);
    }
}

impl Drop for BuildGuard {
    fn drop(&mut self) {
        self.gauge.building.store(false, Ordering::Relaxed);
    }
}

/// Triggers a snapshot each time `rule` says one is due. Runs until aborted.
pub async fn run(raft: openraft::Raft<TypeConfig>, gauge: Arc<SnapshotGauge>, rule: SnapshotRule) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if gauge.building() {
            continue;
        }
        let entries_since = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let applied_next = metrics.last_applied.map_or(0, |id| id.index + 1);
            let snapshot_next = metrics.snapshot.map_or(0, |id| id.index + 1);
            applied_next.saturating_sub(snapshot_next)
        };
        let bytes_since = gauge.bytes_since_snapshot();
        let last_bytes = gauge.snapshot_file_bytes();
        if rule.due(entries_since, bytes_since, last_bytes) {
            tracing::info!(
                entries_since,
                bytes_since,
                last_snapshot_bytes = last_bytes,
                "a snapshot is due"
            );
            let builds = gauge.builds_started();
            if let Err(error) = raft.trigger().snapshot().await {
                tracing::warn!(%error, "could not ask Raft for a snapshot");
                return;
            }
            // openraft starts the build a moment later; until it has (or a few seconds have
            // passed, should it have declined), the same snapshot is not asked for again.
            for _ in 0..TRIGGER_PATIENCE_TICKS {
                if gauge.builds_started() != builds {
                    break;
                }
                ticks.tick().await;
            }
        }
    }
}

/// Paces a copy to an average rate, with at most [`CATCH_UP_MAX`] of catching up after a
/// stretch in which it ran slower than the rate.
#[derive(Debug)]
pub struct Pace {
    bytes_per_sec: u64,
    base_time: Instant,
    base_bytes: u64,
}

impl Pace {
    /// A pace of `bytes_per_sec` (at least 1) from `now`.
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            base_time: now,
            base_bytes: 0,
        }
    }

    /// How long to wait at `now`, with `written` bytes written in all, to keep to the pace.
    pub fn wait(&mut self, written: u64, now: Instant) -> Duration {
        let ahead = written.saturating_sub(self.base_bytes);
        // Precision of an f64 is far finer than a sleep's for any byte count written here.
        #[allow(clippy::cast_precision_loss)]
        let due =
            self.base_time + Duration::from_secs_f64(ahead as f64 / self.bytes_per_sec as f64);
        if due > now {
            return due - now;
        }
        if now.duration_since(due) > CATCH_UP_MAX {
            self.base_time = now.checked_sub(CATCH_UP_MAX).unwrap_or(now);
            self.base_bytes = written;
        }
        Duration::ZERO
    }
}

fn copy_failure(error: impl std::fmt::Display) -> Failure {
    StorageIOError::write_snapshot(None, AnyError::error(error)).into()
}

/// Writes to the new file `target` a consistent copy of `source`'s [`SNAPSHOT_TABLES`] and
/// of its applied log id and membership (`raft_state`'s `last_applied` and
/// `last_membership`), at most `bytes_per_sec` bytes a second when given, flushing every
/// [`SYNC_EVERY_BYTES`]; returns once the file is durable. The source is read in one read
/// transaction on a connection of its own, so its writer goes on meanwhile.
///
/// # Errors
/// The file cannot be created, written or flushed, or the source cannot be read.
pub fn copy_state(source: &Path, target: &Path, bytes_per_sec: Option<u64>) -> Result<(), Failure> {
    // 1. An empty database with this build's schema, unjournaled: a half-written copy is
    //    never used (it is only renamed into place once durable).
    let _ = std::fs::remove_file(target);
    {
        let mut copy = Connection::open(target).map_err(copy_failure)?;
        copy.query_row("PRAGMA journal_mode = OFF", [], |row| {
            row.get::<_, String>(0)
        })
        .map_err(copy_failure)?;
        crate::store::schema::create(&mut copy).map_err(copy_failure)?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(copy_failure)?;

    // 2. The rows, table by table in one transaction. Each destination table is emptied
    //    first (the schema seeds `counters`), so SQLite copies it page by page in key order.
    let conn = Connection::open(source).map_err(copy_failure)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(copy_failure)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS copy",
        [target.to_string_lossy().as_ref()],
    )
    .map_err(copy_failure)?;
    conn.query_row("PRAGMA copy.journal_mode = OFF", [], |row| {
        row.get::<_, String>(0)
    })
    .map_err(copy_failure)?;
    conn.execute_batch("PRAGMA copy.synchronous = OFF")
        .map_err(copy_failure)?;
    let watched = file.try_clone().map_err(copy_failure)?;
    let mut pace = bytes_per_sec.map(|rate| Pace::new(rate, Instant::now()));
    let mut synced = 0_u64;
    conn.progress_handler(
        PROGRESS_EVERY_STEPS,
        Some(move || {
            let written = watched.metadata().map_or(synced, |m| m.len());
            if written >= synced + SYNC_EVERY_BYTES {
                if let Err(error) = watched.sync_data() {
                    tracing::warn!(%error, "could not flush part of a snapshot file");
                }
                synced = written;
            }
            if let Some(pace) = pace.as_mut() {
                let wait = pace.wait(written, Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            false
        }),
    )
    .map_err(copy_failure)?;
    let mut sql = String::from("BEGIN;");
    for table in SNAPSHOT_TABLES {
        sql.push_str(&format!(
            "DELETE FROM copy.{table}; INSERT INTO copy.{table} SELECT * FROM main.{table};"
        ));
    }
    sql.push_str(
        "DELETE FROM copy.raft_state; \
         INSERT INTO copy.raft_state SELECT * FROM main.raft_state \
         WHERE name IN ('last_applied', 'last_membership'); \
         COMMIT;",
    );
    let copied = conn.execute_batch(&sql);
    if copied.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.progress_handler(0, None::<fn() -> bool>)
        .map_err(copy_failure)?;
    copied.map_err(copy_failure)?;
    conn.execute("DETACH DATABASE copy", [])
        .map_err(copy_failure)?;
    drop(conn);

    // 3. Durable before anyone is told it exists.
    file.sync_all().map_err(copy_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_enough_entries_and_half_the_last_snapshots_bytes() {
        let node_1 = SnapshotRule::for_node(1, 5_000);
        // The first snapshot: only the entry count matters.
        assert!(!node_1.due(4_999, 10_000_000, 0));
        assert!(node_1.due(5_000, 0, 0));
        // A 1 GB database: 5,000 entries are not enough until half a gigabyte came with them.
        let gigabyte = 1_000_000_000;
        assert!(!node_1.due(5_000, 499_999_999, gigabyte));
        assert!(node_1.due(5_000, 500_000_000, gigabyte));
        assert!(!node_1.due(4_999, gigabyte, gigabyte));
        assert!(node_1.due(u64::MAX, u64::MAX, u64::MAX));
    }

    #[test]
    fn nodes_are_staggered_by_a_quarter_per_id_and_repeat_every_four() {
        let gigabyte = 1_000_000_000;
        let due_at = |id: u64| {
            let rule = SnapshotRule::for_node(id, 4_000);
            let entries = (0..=8_000).find(|&e| rule.due(e, u64::MAX, 0));
            let bytes = (0..=gigabyte)
                .step_by(1_000_000)
                .find(|&b| rule.due(u64::MAX, b, gigabyte));
            (entries, bytes)
        };
        assert_eq!(due_at(1), (Some(4_000), Some(500_000_000)));
        assert_eq!(due_at(2), (Some(5_000), Some(625_000_000)));
        assert_eq!(due_at(3), (Some(6_000), Some(750_000_000)));
        assert_eq!(due_at(4), (Some(7_000), Some(875_000_000)));
        assert_eq!(due_at(5), due_at(1));
        assert_eq!(SnapshotRule::for_node(0, 1), SnapshotRule::for_node(1, 1));
    }

    #[test]
    fn the_gauge_counts_bytes_since_the_snapshot_a_build_started_at() {
        let gauge = Arc::new(SnapshotGauge::new(1_000));
        assert_eq!(gauge.snapshot_file_bytes(), 1_000);
        gauge.applied(300);
        assert_eq!(gauge.bytes_since_snapshot(), 300);
        let build = gauge.start_building();
        assert!(gauge.building());
        assert_eq!(gauge.builds_started(), 1);
        // Applied while the copy is made: not in it, so still counted after.
        gauge.applied(50);
        build.made(2_000);
        assert!(!gauge.building());
        assert_eq!(gauge.bytes_since_snapshot(), 50);
        assert_eq!(gauge.snapshot_file_bytes(), 2_000);
        // A failed build (the guard dropped without `made`) changes nothing but the flag.
        drop(gauge.start_building());
        assert!(!gauge.building());
        assert_eq!(gauge.snapshot_file_bytes(), 2_000);
        gauge.installed(7_000);
        assert_eq!(gauge.bytes_since_snapshot(), 0);
        assert_eq!(gauge.snapshot_file_bytes(), 7_000);
    }

    #[test]
    fn the_pace_waits_until_the_bytes_written_are_due() {
        let start = Instant::now();
        let mut pace = Pace::new(1_000_000, start);
        // 500 kB at once: due half a second after the start.
        assert_eq!(pace.wait(500_000, start), Duration::from_millis(500));
        assert_eq!(
            pace.wait(500_000, start + Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        assert_eq!(
            pace.wait(500_000, start + Duration::from_millis(500)),
            Duration::ZERO
        );
        assert_eq!(
            pace.wait(1_000_000, start + Duration::from_millis(900)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_slow_stretch_earns_at_most_a_quarter_second_of_catching_up() {
        let start = Instant::now();
        let mut pace = Pace::new(1_000_000, start);
        // Ten seconds in, only 1 MB written: ten seconds behind, but only a quarter second
        // (250 kB) may be written unpaced.
        let late = start + Duration::from_secs(10);
        assert_eq!(pace.wait(1_000_000, late), Duration::ZERO);
        assert_eq!(pace.wait(1_250_000, late), Duration::ZERO);
        assert_eq!(pace.wait(1_500_000, late), Duration::from_millis(250));
    }
}
