//! `peer-bench --disk N`: what one durable log append costs on this machine's disk, as
//! JoChat's earlier builds wrote it (a SQLite table) and as append-only segment files do.
//!
//! In a temporary folder (on the filesystem of `TMPDIR`, like the benchmark's nodes), `N`
//! appends of one 300-byte entry each, one durable commit per append, three ways:
//!
//! - SQLite in WAL mode with `synchronous = FULL`, one row per transaction (the `raft_log`
//!   table of JoChat's earlier builds);
//! - a plain file preallocated with zeros, each entry written at the end of the previous one
//!   and followed by `fdatasync` (a segment file as etcd's WAL keeps it);
//! - the same without preallocation (the file grows, so each `fdatasync` also writes the
//!   size): JoChat's segment files (`jochat_node::raft::log_file`).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::time::Instant;

use crate::Recorder;

const ENTRY_BYTES: usize = 300;

/// Runs the three ways with `appends` appends each and prints their latencies.
pub fn run(appends: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("peer-bench-disk-")
        .tempdir()?;
    let entry = vec![0x5au8; ENTRY_BYTES];
    let mut rows = Vec::new();

    // 1. SQLite, as the log is kept today.
    let conn = rusqlite::Connection::open(dir.path().join("log.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE raft_log (log_index INTEGER PRIMARY KEY, term INTEGER NOT NULL, entry BLOB NOT NULL)",
    )?;
    let mut recorder = Recorder::new()?;
    for index in 0..appends {
        let began = Instant::now();
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO raft_log (log_index, term, entry) VALUES (?1, 1, ?2)",
            rusqlite::params![i64::try_from(index)?, &entry],
        )?;
        tx.commit()?;
        recorder.record(began.elapsed(), true);
    }
    rows.push((
        "SQLite WAL, synchronous = FULL, one row per commit",
        recorder,
    ));

    // 2. and 3. A plain file, preallocated or growing.
    for preallocated in [true, false] {
        let path = dir.path().join(format!("segment-{preallocated}"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        if preallocated {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(appends * ENTRY_BYTES / zeros.len() + 1) {
                file.write_all(&zeros)?;
            }
            file.sync_all()?;
            file.seek(SeekFrom::Start(0))?;
        }
        let mut recorder = Recorder::new()?;
        for _ in 0..appends {
            let began = Instant::now();
            file.write_all(&entry)?;
            file.sync_data()?;
            recorder.record(began.elapsed(), true);
        }
        rows.push((
            if preallocated {
                "plain file, preallocated, write + fdatasync"
            } else {
                "plain file, growing, write + fdatasync"
            },
            recorder,
        ));
    }

    println!("{appends} durable appends of {ENTRY_BYTES} bytes each, one commit per append:");
    println!();
    println!("| how | p50 (µs) | p99 (µs) |");
    println!("|---|---|---|");
    for (how, recorder) in &rows {
        let (p50, p99) = recorder.quantiles_us();
        println!("| {how} | {p50} | {p99} |");
    }
    Ok(())
}
