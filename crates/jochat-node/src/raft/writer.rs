//! The writer: two threads that own every write to the node's log files and SQLite file,
//! each running the jobs queued meanwhile together, with one fsync for all of them.
//!
//! `append` puts its entries in the in-memory [`Tail`](super::tail::Tail), queues a [`Job`]
//! and returns; the state machine's `apply` queues a job too. [`Writer::send`] routes each
//! job by what it writes:
//!
//! - **The appender** (thread `jochat-appender`) takes the jobs that only change the log's
//!   segment files at their end (appends, truncations): it writes every one queued meanwhile
//!   in order, syncs the files once (`fdatasync`), and reports them. (openraft 0.9's core
//!   waits for each append to be reported flushed before it replicates it and takes the next
//!   client write: a follower's appends are reported once durable, the leader's own as soon
//!   as they are queued, see [`super::commit_gate`]; the node also gathers concurrent
//!   commands into shared entries: `crate::proposer`.)
//! - **The database writer** (thread `jochat-db-writer`) takes every other job (applies,
//!   votes, purges, reads of Raft's state, installing a snapshot): it runs consecutive
//!   [`Job::Log`] jobs in one transaction per group, then reports them.
//!
//! Two threads so that an append, which a follower's answer to the leader waits for, never
//! waits behind the chat tables: a follower's paced apply of everything committed in the
//! last 40 ms is one transaction of several milliseconds, and on one thread every append
//! that arrived meanwhile waited for it (docs/performance.md, "The appender").
//!
//! Order between the two: a database job is reported only once every appender job queued
//! before it is done (`Core::wait_for_appends`). Its work may run and commit before those
//! appends reach the disk; what it may not do is report success first. That keeps what the
//! single queue promised: the leader answers a client only after applying the entry, and the
//! apply's report comes after the leader's own append of it is durable. A job that changes
//! both (a purge: its record, then whole segments go; a recovery's append before Raft
//! starts) makes its file change on the database writer, after the appends queued before it.
//! Nothing else needs the order: applies touch committed entries only, which no truncation
//! reaches, and a crash that keeps an apply but loses the log's unsynced tail leaves the
//! applied id ahead of the log, which the next start handles (`raft::storage`); votes and
//! purges are awaited by openraft's core before it appends again.
//!
//! Durability with one fsync per batch: the appender syncs the segment files once for all
//! its jobs. On the database writer every transaction commits with `synchronous = NORMAL`
//! (no fsync) except the last log group of a batch that holds a job needing durability
//! (a vote, a purge), which commits with `FULL`. A WAL-mode commit with `FULL` syncs the
//! write-ahead log, and with it every frame written before it, so every earlier transaction
//! of the batch is durable too, and each job is reported only once that commit is done.
//! [`Job::Own`] jobs (installing a snapshot, which attaches a file) run alone between
//! groups. The first failed write on either thread stops both for good.
//!
//! Checkpoints (copying the write-ahead log back into the database file) run on a thread and
//! connection of their own, the checkpointer, never inside a commit: SQLite's automatic
//! checkpoint would run on the database writer, in the commit that crosses the threshold, and after a
//! long read (a snapshot copy, which keeps checkpoints from passing the frames it reads) that
//! one commit copied everything written meanwhile, hundreds of megabytes, while every append
//! and apply waited behind it, long enough for the leader's appends to time out. The writer
//! connection's WAL hook notes the WAL's size after each commit; past
//! [`CHECKPOINT_AT_PAGES`] the writer wakes the checkpointer, which runs a `PASSIVE`
//! checkpoint (it never blocks the writer nor waits for readers).

// openraft's storage error is large; the helpers here return it unchanged.
#![allow(clippy::result_large_err)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::LogFlushed;
use openraft::{AnyError, LogId, StorageError, StorageIOError};
use rusqlite::{Connection, TransactionBehavior};

use super::commit_gate::CommitGate;
use super::log_file::{LogFile, LogFileError, Record};
use super::tail::Tail;
use super::TypeConfig;
use crate::store::SyncMode;

type Failure = StorageError<u64>;

/// The most jobs one batch takes, so callers waiting on the first are not held too long.
const MAX_BATCH: usize = 4096;

/// The most jobs queued for the writer and not yet taken. A caller that finds the queue full
/// waits for room (openraft awaits its storage calls, so it slows down instead of queueing
/// without bound). In practice openraft keeps only a few jobs in flight: one append at a
/// time, applies in order, votes and the occasional purge.
pub const WRITER_QUEUE_JOBS_MAX: usize = 2 * MAX_BATCH;

/// How many pages the WAL may hold before the checkpointer copies it back into the database
/// file. SQLite's default is 1,000; each checkpoint writes every page changed since the last
/// one once, and under load the same index pages change in many transactions, so fewer,
/// larger checkpoints write fewer pages (docs/performance.md, "History"). The WAL file grows
/// to about this many pages of 4 KiB.
pub const CHECKPOINT_AT_PAGES: i32 = 4_000;

/// How long the checkpointer pauses after a checkpoint that could not copy the whole WAL (a
/// reader still uses older frames), so that it does not spin while the reader lasts.
const CHECKPOINT_RETRY_PAUSE: Duration = Duration::from_millis(100);

thread_local! {
    /// Pages in the WAL after the last commit made on this thread (each writer thread owns
    /// one connection; set by [`note_wal_pages`], SQLite's WAL hook).
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// The writer connection's WAL hook: notes the WAL's size after a commit. (It replaces
/// SQLite's automatic checkpoint, which is a WAL hook too.)
// The signature is the one rusqlite's `wal_hook` takes.
#[allow(clippy::unnecessary_wraps)]
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|noted| noted.set(pages));
    Ok(())
}

/// How often, with `--sync-mode full`, the checkpointer syncs what commits wrote to the WAL
/// meanwhile (see [`start_checkpointer`]).
pub const WAL_SYNC_EVERY: Duration = Duration::from_millis(10);

/// Starts the checkpointer's thread on a connection of its own to `path`; each message on the
/// returned channel asks for one `PASSIVE` checkpoint. The thread ends when the sender is
/// dropped.
///
/// With `--sync-mode full` it also syncs the WAL every [`WAL_SYNC_EVERY`] while commits
/// (counted in `commits`) wrote to it. Applies commit without an fsync (the log is what is
/// durable), so without it the WAL would hold up to a whole checkpoint's worth of unwritten
/// pages when the checkpoint syncs it first: a sync of many megabytes, during which the
/// filesystem's journal holds the log's own `fdatasync`s, the latency every write waits for
/// (8 clients: p99 16–17 ms instead of 7–8). Small syncs as the WAL grows keep each one short.
fn start_checkpointer(
    path: &str,
    sync_mode: SyncMode,
    commits: Arc<AtomicU64>,
) -> std::io::Result<SyncSender<()>> {
    let conn = Connection::open(path).map_err(std::io::Error::other)?;
    // The checkpoint syncs the WAL before copying and the database file after, as the
    // connection's `synchronous` setting says (none with `--sync-mode off`).
    let mode = match sync_mode {
        SyncMode::Off => SyncMode::Off,
        SyncMode::Full | SyncMode::Normal => SyncMode::Normal,
    };
    conn.pragma_update(None, "synchronous", mode.pragma())
        .map_err(std::io::Error::other)?;
    let (requests, asked) = std::sync::mpsc::sync_channel::<()>(1);
    let wal_path = std::path::PathBuf::from(format!("{path}-wal"));
    let keep_synced = sync_mode == SyncMode::Full;
    std::thread::Builder::new()
        .name("jochat-checkpointer".into())
        .spawn(move || {
            let mut wal: Option<std::fs::File> = None;
            let mut synced = commits.load(Ordering::Relaxed);
            loop {
                let asked_for = match asked.recv_timeout(WAL_SYNC_EVERY) {
                    Ok(()) => true,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let written = commits.load(Ordering::Relaxed);
                if keep_synced && written != synced {
                    synced = written;
                    if wal.is_none() {
                        wal = std::fs::File::open(&wal_path).ok();
                    }
                    if let Some(file) = &wal {
                        if let Err(error) = file.sync_data() {
                            // Only smoothing: the checkpoint syncs the WAL itself.
                            tracing::warn!(%error, "syncing the WAL ahead of a checkpoint failed");
                            wal = None;
                        }
                    }
                }
                if !asked_for {
                    continue;
                }
                let checkpoint = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                });
                match checkpoint {
                    Ok((in_wal, copied)) if copied < in_wal => {
                        std::thread::sleep(CHECKPOINT_RETRY_PAUSE);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "a checkpoint failed; the next one retries");
                        std::thread::sleep(CHECKPOINT_RETRY_PAUSE);
                    }
                }
            }
        })?;
    Ok(requests)
}

/// Work on the log, run inside its group's transaction.
pub type LogWork = Box<dyn FnOnce(&mut rusqlite::Transaction<'_>) -> Result<(), Failure> + Send>;
/// Work that runs on the writer connection outside any group (it makes its own transaction).
pub type OwnWork = Box<dyn FnOnce(&mut Connection) + Send>;
/// What runs with a job's outcome on the thread that finished it, before its caller is woken.
pub type Then = Box<dyn FnOnce(&Result<(), Failure>) + Send>;

/// A change to the log's segment files ([`LogFile`]), made in order with the other jobs.
#[derive(Debug)]
pub enum FileOp {
    /// Writes these consecutive entries at the end of the log, replacing any entry at their
    /// indexes or after.
    Append(Vec<Record>),
    /// Removes the entries from this index on.
    TruncateFrom(u64),
    /// Removes the segments whose entries are all at or below this index, once the batch's
    /// commits are done (so the purge recorded in `raft_state` by a job of the same batch
    /// is durable before any entry goes).
    PurgeUpto(u64),
}

/// Who to tell once a log job is done.
pub enum Done {
    /// An append, ending at `last`, is durable.
    Flushed {
        /// openraft's flush callback; `None` when the append was reported flushed as it was
        /// queued (the leader's own entries, see [`super::commit_gate`]).
        callback: Option<LogFlushed<TypeConfig>>,
        /// The append's last entry.
        last: LogId<u64>,
        /// The gate that tracks what is durable, when the store has one.
        gate: Option<Arc<CommitGate>>,
    },
    /// A caller awaiting the job.
    Reply(tokio::sync::oneshot::Sender<Result<(), Failure>>),
    /// A caller awaiting the job, and what to run with its outcome first, on the writer's
    /// thread.
    ReplyThen(tokio::sync::oneshot::Sender<Result<(), Failure>>, Then),
    /// Nobody.
    Nothing,
}

impl Done {
    fn report(self, result: Result<(), Failure>) {
        match self {
            Self::Flushed {
                callback,
                last,
                gate,
            } => {
                tracing::trace!(target: crate::TIMELINE, stage = "append.flushed", last = last.index);
                if let (Ok(()), Some(gate)) = (&result, &gate) {
                    gate.written(last, callback.is_none());
                }
                match callback {
                    Some(callback) => callback
                        .log_io_completed(result.map_err(|e| std::io::Error::other(e.to_string()))),
                    // Reported flushed already: a failure stops the writer for good, and
                    // the gate keeps the entries from being announced as committed.
                    None => {
                        if let Err(error) = result {
                            tracing::error!(%error, last = %last, "the leader's own append failed after it was reported flushed");
                        }
                    }
                }
            }
            Self::Reply(reply) => {
                // The caller may have given up waiting; nothing then needs the answer.
                let _ = reply.send(result);
            }
            Self::ReplyThen(reply, then) => {
                then(&result);
                let _ = reply.send(result);
            }
            Self::Nothing => {}
        }
    }
}

/// One piece of work for the writer.
pub enum Job {
    /// A write to the log or to Raft's state.
    Log {
        /// What to write in the database, inside the group's transaction.
        work: Option<LogWork>,
        /// What to change in the log's files.
        file: Option<FileOp>,
        /// Whether the job may be reported only once durable (appends, votes): its file
        /// change synced, its database work committed with an fsync.
        durable: bool,
        /// For appends: the sequence number the tail knows the entries by.
        append_job: Option<u64>,
        /// Who to tell.
        done: Done,
    },
    /// Work that needs the connection itself (installing a snapshot): runs alone, in order
    /// with the log jobs.
    Own(OwnWork),
    /// The node is closing: every job queued before this one has run when it is answered,
    /// and every job after it is refused, so that nothing still on its way (an apply that
    /// was waiting for its turn) writes to the file once the node has closed.
    Close(tokio::sync::oneshot::Sender<()>),
}

impl Job {
    /// Whether the job only changes the log's files at their end (an append, a truncation,
    /// or nothing at all): the appender's work.
    fn is_append(&self) -> bool {
        matches!(
            self,
            Self::Log {
                work: None,
                file: None | Some(FileOp::Append(_) | FileOp::TruncateFrom(_)),
                ..
            }
        )
    }
}

/// What the writer's two threads and [`Writer::try_now`] share.
struct Core {
    /// The writer connection: the database writer holds it for a batch, `try_now` for one job.
    conn: Mutex<Connection>,
    /// Jobs queued or running on the database writer: counted from queueing until reported.
    pending: std::sync::atomic::AtomicUsize,
    /// The first failed write, or the node closing: after it the file is not written again
    /// (a failed fsync may have dropped pages the kernel will not report twice), and every
    /// later job fails with it while the node stops.
    failed: Mutex<Option<Failure>>,
    /// Asks the checkpointer for a checkpoint.
    checkpoints: SyncSender<()>,
    /// Writes run on the connection so far (batches and immediate commits): the checkpointer
    /// syncs the WAL when this has moved.
    commits: Arc<AtomicU64>,
    /// The log's segment files: written by the appender; by the database writer only for a
    /// purge (removing whole segments) and a job that changes both (recovery, before Raft
    /// starts), each after every append queued before it is done.
    log: Mutex<LogFile>,
    /// Jobs queued for the appender so far.
    appends_queued: AtomicU64,
    /// Jobs the appender has finished (written and synced, failed, or refused), in queue
    /// order.
    appends_done: Mutex<u64>,
    /// Woken when `appends_done` grows.
    appends_advanced: std::sync::Condvar,
}

impl Core {
    fn failed(&self) -> std::sync::MutexGuard<'_, Option<Failure>> {
        self.failed
            .lock()
            .expect("the writer's failure mutex is never held across a panic")
    }

    fn log(&self) -> std::sync::MutexGuard<'_, LogFile> {
        self.log
            .lock()
            .expect("the log file's mutex is never held across a panic")
    }

    /// Counts `jobs` more appender jobs finished.
    fn appends_finished(&self, jobs: u64) {
        *self
            .appends_done
            .lock()
            .expect("the appender's count's mutex is never held across a panic") += jobs;
        self.appends_advanced.notify_all();
    }

    /// Waits until the first `jobs` appender jobs are finished. Returns the writer's failure
    /// if one stops the node before they all are (an append that failed is finished too,
    /// and leaves that failure).
    fn wait_for_appends(&self, jobs: u64) -> Result<(), Failure> {
        let mut done = self
            .appends_done
            .lock()
            .expect("the appender's count's mutex is never held across a panic");
        while *done < jobs {
            if let Some(failure) = self.failed().clone() {
                return Err(failure);
            }
            // Bounded, so that a failure noted without a wake-up is seen.
            done = self
                .appends_advanced
                .wait_timeout(done, Duration::from_millis(20))
                .expect("the appender's count's mutex is never held across a panic")
                .0;
        }
        drop(done);
        // An append that failed stopped everything after it.
        match self.failed().clone() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Counts a write just run, and asks for a checkpoint if the WAL has grown past
    /// [`CHECKPOINT_AT_PAGES`] (as the last commit on this thread left it).
    fn checkpoint_if_due(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if WAL_PAGES.with(Cell::get) >= CHECKPOINT_AT_PAGES {
            // Full: one is asked for already, and it will see these pages too.
            let _ = self.checkpoints.try_send(());
        }
    }
}

/// Queues jobs for the writer's threads. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    /// The database writer's queue: each job with the number of appender jobs queued before
    /// it.
    jobs: tokio::sync::mpsc::Sender<(Job, u64)>,
    /// The appender's queue.
    appends: tokio::sync::mpsc::Sender<Job>,
    core: Arc<Core>,
    /// How many batches the two threads have run: grows while the node writes.
    batches: Arc<AtomicU64>,
    /// Set by tests ([`Writer::fail_next_write`]): the next commit fails as a failed fsync.
    fail_next: Arc<std::sync::atomic::AtomicBool>,
    /// Set by tests ([`Writer::stall_next_write`]): the next durable commit waits this long.
    stall_next: Arc<Mutex<Option<Duration>>>,
    /// Set by tests ([`Writer::stall_next_lazy_commit`]): the next commit without an fsync
    /// waits this long once its work has run.
    stall_lazy: Arc<Mutex<Option<Duration>>>,
}

impl Writer {
    /// Starts the appender, which owns `log` from now on, and the database writer, which owns
    /// `conn`. The threads end (and close the files) once every [`Writer`] is dropped.
    ///
    /// # Errors
    /// A thread cannot be spawned.
    pub fn start(
        conn: Connection,
        log: LogFile,
        tail: Arc<Mutex<Tail>>,
        sync_mode: SyncMode,
        stats: crate::metrics::StorageStats,
    ) -> std::io::Result<Self> {
        let path = conn
            .path()
            .filter(|path| !path.is_empty())
            .ok_or_else(|| std::io::Error::other("the log writer needs a database file"))?
            .to_owned();
        let commits = Arc::new(AtomicU64::new(0));
        let checkpoints = start_checkpointer(&path, sync_mode, Arc::clone(&commits))?;
        conn.wal_hook(Some(note_wal_pages));
        let (jobs, queue) = tokio::sync::mpsc::channel(WRITER_QUEUE_JOBS_MAX);
        let (appends, append_queue) = tokio::sync::mpsc::channel(WRITER_QUEUE_JOBS_MAX);
        let batches = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&batches);
        let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = Arc::clone(&fail_next);
        let stall_next = Arc::new(Mutex::new(None));
        let stalling = Arc::clone(&stall_next);
        let stall_lazy = Arc::new(Mutex::new(None));
        if let Err(error) = conn.pragma_update(None, "synchronous", lazy_mode(sync_mode).pragma()) {
            tracing::error!(%error, "could not set the writer connection to lazy commits");
        }
        let core = Arc::new(Core {
            conn: Mutex::new(conn),
            pending: std::sync::atomic::AtomicUsize::new(0),
            failed: Mutex::new(None),
            checkpoints,
            commits,
            log: Mutex::new(log),
            appends_queued: AtomicU64::new(0),
            appends_done: Mutex::new(0),
            appends_advanced: std::sync::Condvar::new(),
        });
        let context = Arc::new(Context {
            tail,
            sync_mode,
            lazy: lazy_mode(sync_mode),
            fail_next: failing,
            stall_next: stalling,
            stall_lazy: Arc::clone(&stall_lazy),
            stats,
        });
        std::thread::Builder::new()
            .name("jochat-appender".into())
            .spawn({
                let core = Arc::clone(&core);
                let context = Arc::clone(&context);
                let counter = Arc::clone(&counter);
                move || run_appends(&core, &context, append_queue, &counter)
            })?;
        let running = Arc::clone(&core);
        std::thread::Builder::new()
            .name("jochat-db-writer".into())
            .spawn(move || {
                run(&running, &context, queue, &counter);
            })?;
        Ok(Self {
            jobs,
            appends,
            core,
            batches,
            fail_next,
            stall_next,
            stall_lazy,
        })
    }

    /// Fault injection for tests: the next commit fails as a failed fsync would
    /// (`SQLITE_IOERR_FSYNC`), without writing anything.
    pub fn fail_next_write(&self) {
        self.fail_next.store(true, Ordering::Relaxed);
    }

    /// Fault injection for tests: the next durable commit waits `pause` first, as behind a
    /// slow fsync (every job queued meanwhile waits too).
    pub fn stall_next_write(&self, pause: Duration) {
        *self
            .stall_next
            .lock()
            .expect("the stall's mutex is never held across a panic") = Some(pause);
    }

    /// Fault injection for tests: the next commit made without an fsync (an apply's) waits
    /// `pause` once its work has run, as behind a slow write of its pages (every job queued
    /// meanwhile waits too).
    pub fn stall_next_lazy_commit(&self, pause: Duration) {
        *self
            .stall_lazy
            .lock()
            .expect("the stall's mutex is never held across a panic") = Some(pause);
    }

    /// Runs every job queued so far, then refuses every later one (see [`Job::Close`]): the
    /// appender's first, then the database writer's, whose jobs may wait for appends.
    pub async fn close(&self) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send_append(Job::Close(reply)).await;
        // An error: the thread has ended, and with it every append.
        let _ = answer.await;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Job::Close(reply)).await;
        // An error: the thread has ended, and with it every write.
        let _ = answer.await;
    }

    /// How many batches of jobs the writer has run so far (unchanged while it is idle).
    pub fn batches_run(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Queues `job`, waiting for room while [`WRITER_QUEUE_JOBS_MAX`] jobs wait. When the
    /// writer has stopped (the node is shutting down), the job is reported failed.
    ///
    /// A job that only changes the log's files (an append, a truncation) goes to the
    /// appender; every other one to the database writer, which reports it only once every
    /// appender job queued before it is done (see the module documentation).
    pub async fn send(&self, job: Job) {
        if job.is_append() {
            return self.send_append(job).await;
        }
        self.core.pending.fetch_add(1, Ordering::SeqCst);
        let after = self.core.appends_queued.load(Ordering::SeqCst);
        if let Err(tokio::sync::mpsc::error::SendError((job, _))) =
            self.jobs.send((job, after)).await
        {
            self.core.pending.fetch_sub(1, Ordering::SeqCst);
            if let Job::Log { done, .. } = job {
                done.report(Err(stopped()));
            }
        }
    }

    /// Queues `job` for the appender, counted among the appender's jobs from now on (when the
    /// thread has stopped, it counts as finished and is reported failed).
    async fn send_append(&self, job: Job) {
        self.core.appends_queued.fetch_add(1, Ordering::SeqCst);
        if let Err(tokio::sync::mpsc::error::SendError(job)) = self.appends.send(job).await {
            self.core.appends_finished(1);
            if let Job::Log { done, .. } = job {
                done.report(Err(stopped()));
            }
        }
    }

    /// Runs database `work` at once on the calling thread, in a transaction of its own committed
    /// without an fsync, when no database job is queued or running (so it overtakes none) and
    /// the connection is free, and returns once the appends queued before it are done too: an
    /// apply on an idle writer then costs no hand-over to the database writer's thread and
    /// back (two thread wake-ups, about 200 µs on a small virtual machine). Gives `work` back
    /// otherwise, to be queued. Only on a multi-threaded runtime, whose worker may block for
    /// the commit.
    ///
    /// # Errors
    /// (Inside `Ok`) what `work` returned, a failure to commit, or the writer's earlier
    /// failure.
    pub fn try_now(&self, work: LogWork) -> Result<Result<(), Failure>, LogWork> {
        let multi_threaded = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if !multi_threaded || self.core.pending.load(Ordering::SeqCst) != 0 {
            return Err(work);
        }
        let Ok(mut conn) = self.core.conn.try_lock() else {
            return Err(work);
        };
        // Held now: a job queued before this check would still count as pending until the
        // thread, which needs the connection to run it, has reported it.
        if self.core.pending.load(Ordering::SeqCst) != 0 {
            return Err(work);
        }
        if let Some(failure) = self.core.failed().clone() {
            return Ok(Err(failure));
        }
        let after = self.core.appends_queued.load(Ordering::SeqCst);
        let fail_next = &self.fail_next;
        let stall_lazy = &self.stall_lazy;
        let core = &self.core;
        let result = tokio::task::block_in_place(|| {
            let began = std::time::Instant::now();
            let mut tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(commit_failure)?;
            work(&mut tx)?;
            let worked_us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            if fail_next.swap(false, Ordering::Relaxed) {
                return Err(injected_fsync_failure());
            }
            stall_once(stall_lazy);
            let started = std::time::Instant::now();
            tx.commit().map_err(commit_failure)?;
            tracing::trace!(target: crate::TIMELINE, stage = "commit", jobs = 1, durable = false, worked_us, commit_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            // Done once every append queued before it is.
            core.wait_for_appends(after)
        });
        if let Err(failure) = &result {
            tracing::error!(%failure, "a write to the database failed: nothing more is written to it");
            self.core.failed().get_or_insert_with(|| failure.clone());
        }
        drop(conn);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.core.checkpoint_if_due();
        Ok(result)
    }

    /// A mark for [`Writer::wait_for_appends`]: the appender jobs queued so far.
    pub fn appends_marker(&self) -> u64 {
        self.core.appends_queued.load(Ordering::SeqCst)
    }

    /// Blocks until every appender job queued before `marker` was taken is done (its
    /// entries durable). For database work that hands out results before its commit.
    ///
    /// # Errors
    /// The writer failed.
    pub fn wait_for_appends(&self, marker: u64) -> Result<(), Failure> {
        self.core.wait_for_appends(marker)
    }

    /// Queues log `work` and waits until it is done (and durable, if `durable`).
    ///
    /// # Errors
    /// What `work` returned, or a failure to commit.
    pub async fn log(&self, durable: bool, work: LogWork) -> Result<(), Failure> {
        self.log_with(durable, Some(work), None).await
    }

    /// Queues database `work` and a change to the log's files, as one job, and waits until
    /// both are done (and durable, if `durable`).
    ///
    /// # Errors
    /// What `work` returned, or a failure to write or commit.
    pub async fn log_with(
        &self,
        durable: bool,
        work: Option<LogWork>,
        file: Option<FileOp>,
    ) -> Result<(), Failure> {
        self.log_then(durable, work, file, None).await
    }

    /// [`Writer::log_with`], running `then` with the job's outcome on the thread that
    /// finished it, before this call returns.
    ///
    /// # Errors
    /// As [`Writer::log_with`].
    pub async fn log_then(
        &self,
        durable: bool,
        work: Option<LogWork>,
        file: Option<FileOp>,
        then: Option<Then>,
    ) -> Result<(), Failure> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let done = match then {
            Some(then) => Done::ReplyThen(reply, then),
            None => Done::Reply(reply),
        };
        self.send(Job::Log {
            work,
            file,
            durable,
            append_job: None,
            done,
        })
        .await;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs `work` on the writer connection, in order with the log jobs, and returns what it
    /// returned.
    ///
    /// # Errors
    /// What `work` returned; a failure if the writer has stopped.
    pub async fn own<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Job::Own(Box::new(move |conn| {
            let _ = reply.send(work(conn));
        })))
        .await;
        answer.await.map_err(|_| stopped())?
    }
}

fn injected_fsync_failure() -> Failure {
    commit_failure(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
        Some("injected fault: fsync failed".into()),
    ))
}

fn closed() -> Failure {
    StorageIOError::write_logs(AnyError::error("the node has closed its storage")).into()
}

fn stopped() -> Failure {
    StorageIOError::write_logs(AnyError::error("the log writer has stopped")).into()
}

fn commit_failure(error: rusqlite::Error) -> Failure {
    StorageIOError::write_logs(AnyError::error(error)).into()
}

fn file_failure(error: LogFileError) -> Failure {
    StorageIOError::write_logs(AnyError::error(error)).into()
}

/// How transactions commit when they need not be durable: without an fsync (see the module
/// documentation); with `--sync-mode normal` or `off` no transaction needs to be.
fn lazy_mode(sync_mode: SyncMode) -> SyncMode {
    match sync_mode {
        SyncMode::Off => SyncMode::Off,
        SyncMode::Full | SyncMode::Normal => SyncMode::Normal,
    }
}

/// What every batch of the writer's threads needs.
struct Context {
    tail: Arc<Mutex<Tail>>,
    sync_mode: SyncMode,
    /// How commits that need not be durable are made.
    lazy: SyncMode,
    fail_next: Arc<std::sync::atomic::AtomicBool>,
    stall_next: Arc<Mutex<Option<Duration>>>,
    stall_lazy: Arc<Mutex<Option<Duration>>>,
    /// Where durable commits are timed.
    stats: crate::metrics::StorageStats,
}

impl Context {
    /// The entries of the append jobs up to `last_append` are in the log's files now: the
    /// tail may let them go.
    fn written(&self, last_append: Option<u64>) {
        if let Some(job) = last_append {
            self.tail
                .lock()
                .expect("the log tail's mutex is never held across a panic")
                .written(job);
        }
    }
}

/// Waits for the next job on `queue` and takes it with every job queued behind it, at most
/// [`MAX_BATCH`], into the empty `batch`. Returns false once the queue is closed and empty.
fn take_batch<T>(queue: &mut tokio::sync::mpsc::Receiver<T>, batch: &mut Vec<T>) -> bool {
    let Some(first) = queue.blocking_recv() else {
        return false;
    };
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_empty_or_closed) => break,
        }
    }
    true
}

/// The appender's thread: takes a batch of queued appends at a time, writes them to the
/// log's files in order, syncs the files once, and reports them.
fn run_appends(
    core: &Core,
    context: &Context,
    mut queue: tokio::sync::mpsc::Receiver<Job>,
    batches: &AtomicU64,
) {
    let mut batch = Vec::new();
    // After `Job::Close`: every later append is refused.
    let mut is_closed = false;
    while take_batch(&mut queue, &mut batch) {
        let taken = batch.len() as u64;
        let close = batch.iter().position(|job| matches!(job, Job::Close(_)));
        let mut after = close.map(|at| batch.split_off(at)).unwrap_or_default();
        let failed = core.failed().clone();
        match failed {
            Some(failure) => refuse_batch(&failure, &mut batch),
            None if is_closed => refuse_batch(&closed(), &mut batch),
            None if batch.is_empty() => {}
            None => {
                if let Err(failure) = append_batch(core, context, &mut batch) {
                    tracing::error!(%failure, "a write to the log failed: nothing more is written to it");
                    core.failed().get_or_insert(failure);
                }
                batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !after.is_empty() {
            is_closed = true;
            refuse_batch(&closed(), &mut after);
        }
        core.appends_finished(taken);
    }
}

/// Writes `batch`'s appends and truncations to the log's files in order, syncs them once,
/// and reports each job. Returns the failure, if any (every job then reports it).
fn append_batch(core: &Core, context: &Context, batch: &mut Vec<Job>) -> Result<(), Failure> {
    tracing::trace!(target: crate::TIMELINE, stage = "writer.batch", jobs = batch.len());
    let mut dones = Vec::with_capacity(batch.len());
    let mut last_append = None;
    let mut durable_jobs = false;
    let mut log = core.log();
    let mut result = if context.fail_next.swap(false, Ordering::Relaxed) {
        // Nothing of the batch reaches the files.
        Err(injected_fsync_failure())
    } else {
        Ok(())
    };
    for job in batch.drain(..) {
        let Job::Log {
            file,
            durable,
            append_job,
            done,
            ..
        } = job
        else {
            // `Writer::send` queues only appends here, and `run_appends` takes out `Close`.
            continue;
        };
        dones.push(done);
        durable_jobs |= durable;
        if result.is_err() {
            continue;
        }
        let written = match file {
            Some(FileOp::Append(records)) => log.append(&records).map_err(file_failure),
            Some(FileOp::TruncateFrom(index)) => log.truncate_from(index).map_err(file_failure),
            Some(FileOp::PurgeUpto(_)) | None => Ok(()),
        };
        if let Err(error) = written {
            result = Err(error);
            continue;
        }
        last_append = append_job.or(last_append);
    }
    if result.is_ok() {
        context.written(last_append);
    }
    if result.is_ok() && log.needs_sync() {
        result = sync_log(&mut log, context, durable_jobs);
    }
    drop(log);
    if let Err(error) = &result {
        tracing::error!(%error, jobs = dones.len(), "a log write failed");
    }
    for done in dones {
        done.report(result.clone());
    }
    tracing::trace!(target: crate::TIMELINE, stage = "writer.reported");
    result
}

/// Syncs the log's files (after a test's stall, when `durable_jobs` and asked), timing the
/// sync for the node's metrics.
fn sync_log(log: &mut LogFile, context: &Context, durable_jobs: bool) -> Result<(), Failure> {
    let full = context.sync_mode == SyncMode::Full;
    if durable_jobs && full {
        stall_if_asked(context);
    }
    let started = std::time::Instant::now();
    let synced = log.sync().map_err(file_failure);
    tracing::trace!(target: crate::TIMELINE, stage = "log.sync", sync_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    if full {
        context
            .stats
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    if let Err(error) = &synced {
        tracing::error!(%error, "syncing the log's files failed");
    }
    synced
}

/// The database writer's thread: takes a batch of queued jobs at a time and runs it.
fn run(
    core: &Core,
    context: &Context,
    mut queue: tokio::sync::mpsc::Receiver<(Job, u64)>,
    batches: &AtomicU64,
) {
    let mut batch = Vec::new();
    while take_batch(&mut queue, &mut batch) {
        let taken = batch.len();
        {
            let mut conn = core
                .conn
                .lock()
                .expect("the writer connection's mutex is never held across a panic");
            if let Some(close) = batch
                .iter()
                .position(|(job, _)| matches!(job, Job::Close(_)))
            {
                // The jobs before it run; it and everything after it are refused from now on.
                let mut after = batch.split_off(close);
                run_or_refuse(core, &mut conn, context, &mut batch, batches);
                core.failed().get_or_insert_with(closed);
                run_or_refuse(core, &mut conn, context, &mut after, batches);
            } else {
                run_or_refuse(core, &mut conn, context, &mut batch, batches);
            }
        }
        core.pending.fetch_sub(taken, Ordering::SeqCst);
        core.checkpoint_if_due();
    }
}

/// Runs `batch`, or refuses it with the writer's earlier failure; a failure of this batch is
/// recorded as the writer's failure.
fn run_or_refuse(
    core: &Core,
    conn: &mut Connection,
    context: &Context,
    batch: &mut Vec<(Job, u64)>,
    batches: &AtomicU64,
) {
    let failed = core.failed().clone();
    if let Some(failure) = failed {
        let mut jobs: Vec<Job> = batch.drain(..).map(|(job, _)| job).collect();
        refuse_batch(&failure, &mut jobs);
        return;
    }
    if batch.is_empty() {
        return;
    }
    tracing::trace!(target: crate::TIMELINE, stage = "writer.batch", jobs = batch.len());
    if let Err(failure) = run_batch(core, conn, context, batch) {
        tracing::error!(%failure, "a write to the database failed: nothing more is written to it");
        core.failed().get_or_insert(failure);
    }
    batches.fetch_add(1, Ordering::Relaxed);
}

/// Fails every job of `batch` with `failure`, writing nothing.
fn refuse_batch(failure: &Failure, batch: &mut Vec<Job>) {
    for job in batch.drain(..) {
        match job {
            Job::Log { done, .. } => done.report(Err(failure.clone())),
            // Dropped unrun: whoever waits on it hears that the writer is gone.
            Job::Own(_) => {}
            Job::Close(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// A log job waiting for its group's commit.
type Queued = (Option<LogWork>, Option<FileOp>, Option<u64>, Done);

/// Runs `batch` in order: the database work of consecutive log jobs in one transaction per
/// group, the group holding the batch's last durable job with database work committing with
/// an fsync (which makes every earlier group durable too); a job that also changes the log's
/// files (a recovery's append) first waits for every append queued before it. Then it waits
/// until every append queued before the batch's jobs is done, removes purged segments, and
/// reports the log jobs. Returns the first failure, if any.
fn run_batch(
    core: &Core,
    conn: &mut Connection,
    context: &Context,
    batch: &mut Vec<(Job, u64)>,
) -> Result<(), Failure> {
    let full = context.sync_mode == SyncMode::Full;
    // Where the last job is whose database work must be durable.
    let sync_at = batch
        .iter()
        .rposition(|(job, _)| {
            matches!(
                job,
                Job::Log {
                    durable: true,
                    work: Some(_),
                    ..
                }
            )
        })
        .filter(|_| full);
    let durable_jobs = batch
        .iter()
        .any(|(job, _)| matches!(job, Job::Log { durable: true, .. }));
    let last_log = batch
        .iter()
        .rposition(|(job, _)| matches!(job, Job::Log { .. }));
    // Every append queued before the batch's last log job.
    let appends_before = last_log.map_or(0, |at| batch[at].1);
    let mut run = BatchRun::default();
    for (position, (job, after)) in batch.drain(..).enumerate() {
        match job {
            Job::Log {
                work,
                file,
                append_job,
                done,
                ..
            } => {
                if matches!(file, Some(FileOp::Append(_) | FileOp::TruncateFrom(_))) {
                    if let Err(failure) = core.wait_for_appends(after) {
                        run.first_failure.get_or_insert(failure);
                    }
                }
                run.group.push((work, file, append_job, done));
                run.needs_sync |= Some(position) == sync_at;
                if Some(position) == last_log {
                    run.commit(core, conn, context);
                }
            }
            // Taken out of every batch before it runs (see `run`); answered if one got here.
            Job::Close(reply) => {
                let _ = reply.send(());
            }
            Job::Own(work) => {
                if !run.group.is_empty() {
                    run.commit(core, conn, context);
                }
                if run.first_failure.is_none() {
                    work(conn);
                }
            }
        }
    }
    let BatchRun {
        mut reports,
        purges,
        mut first_failure,
        ..
    } = run;
    if first_failure.is_none() {
        let mut log = core.log();
        if log.needs_sync() {
            // A recovery's append, written here.
            if let Err(error) = sync_log(&mut log, context, durable_jobs) {
                fail_reported(&mut reports, &error);
                first_failure = Some(error);
            }
        }
    }
    if first_failure.is_none() {
        // Reported only once every append queued before them is durable: the leader answers
        // a client only after its own copy of the entry is on its disk.
        if let Err(error) = core.wait_for_appends(appends_before) {
            fail_reported(&mut reports, &error);
            first_failure = Some(error);
        }
    }
    if first_failure.is_none() && !purges.is_empty() {
        let mut log = core.log();
        for index in purges {
            if let Err(error) = log.purge_upto(index) {
                // Recorded as purged: the next start removes them.
                tracing::warn!(%error, index, "purged log segments were not removed");
            }
        }
    }
    for (done, result) in reports {
        done.report(result);
    }
    tracing::trace!(target: crate::TIMELINE, stage = "writer.reported");
    first_failure.map_or(Ok(()), Err)
}

/// A batch being run: the log jobs of the current group and what is known so far.
#[derive(Default)]
struct BatchRun {
    /// The log jobs since the last commit.
    group: Vec<Queued>,
    /// Whether the group holds the batch's last durable job with database work.
    needs_sync: bool,
    /// What to report to each job done so far.
    reports: Vec<(Done, Result<(), Failure>)>,
    /// Purges to make once the batch is durable.
    purges: Vec<u64>,
    /// The first failure.
    first_failure: Option<Failure>,
}

impl BatchRun {
    /// Commits the group ([`commit_group`]); if that commit was the durable one and failed,
    /// every job reported so far fails with it (it alone made them durable).
    fn commit(&mut self, core: &Core, conn: &mut Connection, context: &Context) {
        if let Some(failure) = &self.first_failure {
            // After a failure nothing more is written: the group fails with it.
            let failure = failure.clone();
            self.reports.extend(
                self.group
                    .drain(..)
                    .map(|(_, _, _, done)| (done, Err(failure.clone()))),
            );
            self.needs_sync = false;
            return;
        }
        let committed = commit_group(
            core,
            conn,
            context,
            &mut self.group,
            self.needs_sync,
            &mut self.reports,
            &mut self.purges,
        );
        if let Err(error) = committed {
            if self.needs_sync {
                fail_reported(&mut self.reports, &error);
            }
            self.first_failure.get_or_insert(error);
        }
        self.needs_sync = false;
    }
}

/// Turns every successful report in `reports` into `error` (the write that made them durable
/// failed).
fn fail_reported(reports: &mut [(Done, Result<(), Failure>)], error: &Failure) {
    for (_, result) in reports {
        if result.is_ok() {
            *result = Err(error.clone());
        }
    }
}

/// Waits as long as a test asked the next durable write to wait ([`Writer::stall_next_write`]).
fn stall_if_asked(context: &Context) {
    stall_once(&context.stall_next);
}

/// Waits as long as `stall` says, once (a test's fault).
fn stall_once(stall: &Mutex<Option<Duration>>) {
    let pause = stall
        .lock()
        .expect("the stall's mutex is never held across a panic")
        .take();
    if let Some(pause) = pause {
        std::thread::sleep(pause);
    }
}

/// Makes the file changes of `group`'s jobs (purges are left in `purges` for after the
/// batch), runs their database work in one transaction, records what to report for each,
/// and returns whether everything was written.
fn commit_group(
    core: &Core,
    conn: &mut Connection,
    context: &Context,
    group: &mut Vec<Queued>,
    durable: bool,
    reports: &mut Vec<(Done, Result<(), Failure>)>,
    purges: &mut Vec<u64>,
) -> Result<(), Failure> {
    let lazy = context.lazy;
    let mut works = Vec::with_capacity(group.len());
    let mut files = Vec::new();
    let mut dones = Vec::with_capacity(group.len());
    let mut last_append = None;
    for (work, file, append_job, done) in group.drain(..) {
        works.extend(work);
        files.extend(file);
        dones.push(done);
        last_append = append_job.or(last_append);
    }
    let result = (|| -> Result<(), Failure> {
        if context.fail_next.swap(false, Ordering::Relaxed) {
            // Nothing of the group reaches the files.
            return Err(injected_fsync_failure());
        }
        for file in files {
            match file {
                FileOp::Append(records) => core.log().append(&records).map_err(file_failure)?,
                FileOp::TruncateFrom(index) => {
                    core.log().truncate_from(index).map_err(file_failure)?;
                }
                FileOp::PurgeUpto(index) => purges.push(index),
            }
        }
        context.written(last_append);
        if works.is_empty() {
            return Ok(());
        }
        if durable {
            conn.pragma_update(None, "synchronous", SyncMode::Full.pragma())
                .map_err(commit_failure)?;
        }
        let began = std::time::Instant::now();
        let jobs = works.len();
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(commit_failure)?;
        for work in works {
            work(&mut tx)?;
        }
        let worked_us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        if durable {
            stall_if_asked(context);
        } else {
            stall_once(&context.stall_lazy);
        }
        let started = std::time::Instant::now();
        tx.commit().map_err(commit_failure)?;
        tracing::trace!(target: crate::TIMELINE, stage = "commit", jobs, durable, worked_us, commit_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        if durable {
            context
                .stats
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    })();
    if durable {
        if let Err(error) = conn.pragma_update(None, "synchronous", lazy.pragma()) {
            tracing::error!(%error, "could not set the writer connection back to lazy commits");
        }
    }
    if let Err(error) = &result {
        tracing::error!(%error, jobs = dones.len(), "a log write failed");
    }
    reports.extend(dones.into_iter().map(|done| (done, result.clone())));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues a job writing `bytes` into `blobs` and waits for it.
    fn write_blob(writer: &Writer, bytes: i64) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.core.pending.fetch_add(1, Ordering::SeqCst);
        let queued = writer.jobs.blocking_send((
            Job::Log {
                work: Some(Box::new(move |tx| {
                    tx.execute("INSERT INTO blobs (data) VALUES (zeroblob(?1))", [bytes])
                        .map_err(commit_failure)?;
                    Ok(())
                })),
                file: None,
                durable: false,
                append_job: None,
                done: Done::Reply(reply),
            },
            0,
        ));
        assert!(queued.is_ok(), "the writer thread runs");
        answer
            .blocking_recv()
            .expect("the writer reports every job")
            .expect("the write commits");
    }

    /// A writer on a new WAL-mode file at `path` with one table, `blobs`.
    fn blob_writer(path: &std::path::Path, sync_mode: SyncMode) -> Writer {
        let conn = Connection::open(path).expect("the file opens");
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        })
        .expect("WAL mode");
        conn.execute_batch("CREATE TABLE blobs (data BLOB NOT NULL)")
            .expect("the table is made");
        let (log, _) = LogFile::open(
            &path.with_extension("log"),
            None,
            sync_mode == SyncMode::Full,
        )
        .expect("the log's folder opens");
        Writer::start(
            conn,
            log,
            Arc::new(Mutex::new(Tail::new(0, 16))),
            sync_mode,
            crate::metrics::StorageStats::default(),
        )
        .expect("the writer starts")
    }

    fn insert_blob(bytes: i64) -> LogWork {
        Box::new(move |tx| {
            tx.execute("INSERT INTO blobs (data) VALUES (zeroblob(?1))", [bytes])
                .map_err(commit_failure)?;
            Ok(())
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_at_once_only_when_it_overtakes_nothing() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("w.db");
        let writer = blob_writer(&path, SyncMode::Full);
        let rows = || {
            Connection::open(&path)
                .and_then(|conn| {
                    conn.query_row("SELECT count(*) FROM blobs", [], |r| r.get::<_, i64>(0))
                })
                .expect("the rows can be counted")
        };

        // 1. Idle: the work runs here and now.
        let ran = writer.try_now(insert_blob(1)).map_err(|_| "given back");
        assert!(matches!(ran, Ok(Ok(()))), "{:?}", ran.map(|r| r.is_ok()));
        assert_eq!(rows(), 1_i64);

        // 2. While a durable job waits on a slow fsync, the work is given back to be queued
        //    behind it.
        writer.stall_next_write(Duration::from_millis(500));
        let slow = tokio::spawn({
            let writer = writer.clone();
            async move { writer.log(true, insert_blob(2)).await }
        });
        while writer.core.pending.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            writer.try_now(insert_blob(3)).is_err(),
            "it would overtake the queued job"
        );
        slow.await
            .expect("the job's task runs")
            .expect("the job commits");
        assert_eq!(rows(), 2_i64);

        // 3. After a failed write, nothing more is written, here either.
        writer.fail_next_write();
        assert!(writer.log(false, insert_blob(4)).await.is_err());
        // (The thread counts the job done just after it reported it.)
        while writer.core.pending.load(Ordering::SeqCst) != 0 {
            tokio::task::yield_now().await;
        }
        let refused = writer.try_now(insert_blob(5)).map_err(|_| "given back");
        assert!(
            matches!(refused, Ok(Err(_))),
            "the earlier failure is returned"
        );
        assert_eq!(rows(), 2_i64);
    }

    /// Queues an append of one record at `index` to the log's files and waits for it.
    async fn append_record(writer: &Writer, index: u64) -> Result<(), Failure> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.send(append_job(index, reply)).await;
        answer.await.map_err(|_| stopped())?
    }

    fn append_job(index: u64, reply: tokio::sync::oneshot::Sender<Result<(), Failure>>) -> Job {
        Job::Log {
            work: None,
            file: Some(FileOp::Append(vec![Record {
                index,
                term: 1,
                payload: b"entry".to_vec(),
            }])),
            durable: true,
            append_job: None,
            done: Done::Reply(reply),
        }
    }

    #[tokio::test]
    async fn appends_are_written_while_the_database_writer_is_busy() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let writer = blob_writer(&dir.path().join("w.db"), SyncMode::Full);
        // A database job that holds its thread until released (a long apply).
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .log(
                        false,
                        Box::new(move |_| {
                            let _ = held.recv();
                            Ok(())
                        }),
                    )
                    .await
            }
        });
        while writer.core.pending.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Behind it in a single queue, this would wait until the release below: it does not.
        let appended = tokio::time::timeout(Duration::from_secs(30), async {
            append_record(&writer, 1).await?;
            append_record(&writer, 2).await
        })
        .await;
        assert!(
            matches!(appended, Ok(Ok(()))),
            "the appends were held behind the database job: {:?}",
            appended.map(|r| r.is_ok())
        );
        assert!(!busy.is_finished(), "the database job is still held");
        release
            .send(())
            .expect("the database job waits for the release");
        busy.await
            .expect("the job's task runs")
            .expect("the job commits");
    }

    #[tokio::test]
    async fn a_database_job_is_reported_only_once_the_appends_queued_before_it_are_durable() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let writer = blob_writer(&dir.path().join("w.db"), SyncMode::Full);
        // The appender's next sync is slow; the database job after it is not.
        writer.stall_next_write(Duration::from_millis(300));
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        writer.send(append_job(1, reply)).await;
        writer
            .log(false, insert_blob(1))
            .await
            .expect("the database job commits");
        // Its report waited for the append's.
        assert!(
            matches!(answer.try_recv(), Ok(Ok(()))),
            "the database job was reported before the append queued before it was durable"
        );
        // With nothing queued before it, the next one waits for nothing.
        writer
            .log(false, insert_blob(1))
            .await
            .expect("the database job commits");
    }

    #[test]
    fn checkpoints_run_beside_the_writer_once_the_wal_passes_the_threshold() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("w.db");
        let writer = blob_writer(&path, SyncMode::Off);

        // 1. Under the threshold (about 2,000 pages): the writer does not checkpoint (its
        //    WAL hook replaced SQLite's automatic checkpoint), so the database file stays
        //    as it was.
        let file_bytes = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let empty = file_bytes();
        for _ in 0..8 {
            write_blob(&writer, 1 << 20);
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(file_bytes(), empty, "checkpointed before the threshold");

        // 2. Past it (about 6,000 pages), the checkpointer copies the WAL into the file.
        for _ in 0..16 {
            write_blob(&writer, 1 << 20);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while file_bytes() < 16 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: the file holds {} bytes",
                file_bytes()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
