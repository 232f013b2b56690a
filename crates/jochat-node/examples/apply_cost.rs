//! Measures the state machine's cost per applied send on one SQLite file, without Raft or
//! gRPC: `cargo run --release -p jochat-node --example apply_cost -- [SENDS] [BATCH]
//! [INDEX...]`.
//!
//! It signs up 64 accounts with a session each, then applies SENDS messages (slot `i` writes
//! to slot `i + 1`, as `jochat bench --op send` does) in transactions of BATCH commands, each
//! with a time-ordered idempotency key, and prints the wall and CPU time per command. Commits
//! do not fsync (`synchronous = NORMAL`), so the figure is CPU: statements, page changes and
//! WAL writes.
//!
//! Each INDEX named after them (`messages_conversation`, `messages_away`, ...) is dropped
//! before the sends, to measure what keeping that index costs per send. The queries that
//! need it then scan instead: a measurement of the write side only.

use std::time::Instant;

use jochat_core::ops::{CreateSession, SendMessage, SignUp};
use jochat_core::types::{Content, IdempotencyKey, SessionToken, UserId, Username};
use jochat_core::{Action, Command};
use jochat_node::store::{apply_batch, schema, STATEMENT_CACHE_CAPACITY};

const SLOTS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sends: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(14), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("jochat-apply-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("apply.db");
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    // As on the node's writer connection (`raft::storage`): savepoints' page copies in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    schema::migrate(&mut conn)?;
    let dropped: Vec<String> = args.collect();
    for index in &dropped {
        let known: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'index' AND name = ?1",
            [index],
            |row| row.get(0),
        )?;
        if !known {
            return Err(format!("INDEX: no index named {index:?} in the schema").into());
        }
        conn.execute_batch(&format!("DROP INDEX \"{index}\""))?;
    }

    let name = |slot: usize| Username::new(&format!("bench{slot}")).expect("valid name");
    let token = |slot: usize| SessionToken::from_random_bytes([slot as u8; 32]);
    let mut setup = Vec::new();
    for slot in 0..SLOTS {
        setup.push(Command {
            at_ms: 1,
            idempotency_key: None,
            action: Action::SignUp(SignUp {
                username: name(slot),
                password_hash: "$argon2id$not-a-real-hash".into(),
            }),
        });
        setup.push(Command {
            at_ms: 1,
            idempotency_key: None,
            action: Action::CreateSession(CreateSession {
                user_id: UserId(slot as i64 + 1),
                token_digest: token(slot).digest(),
                expires_at_ms: i64::MAX / 2,
            }),
        });
    }
    let refs: Vec<&Command> = setup.iter().collect();
    assert!(apply_batch(&mut conn, &refs).iter().all(Result::is_ok));

    let commands: Vec<Command> = (0..sends)
        .map(|n| {
            let slot = n % SLOTS;
            let at_ms = 1_000 + n as i64 / 10;
            Command {
                at_ms,
                idempotency_key: IdempotencyKey::optional(&format!("{at_ms:012x}{n:020x}"))
                    .expect("valid key"),
                action: Action::SendMessage(SendMessage {
                    session: token(slot).digest(),
                    recipient: name((slot + 1) % SLOTS),
                    content: Content::new(format!("bench {slot}-{n}"), 4096).expect("valid"),
                }),
            }
        })
        .collect();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for chunk in commands.chunks(batch) {
        let refs: Vec<&Command> = chunk.iter().collect();
        let results = apply_batch(&mut conn, &refs);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let without = if dropped.is_empty() {
        String::new()
    } else {
        format!(" without {}", dropped.join(", "))
    };
    println!(
        "{sends} sends in transactions of {batch}{without}: {:.1} µs per command ({:.0}/s); CPU {}",
        elapsed.as_secs_f64() * 1e6 / sends as f64,
        sends as f64 / elapsed.as_secs_f64(),
        cpu.map_or("unknown".into(), |cpu| format!(
            "{:.1} µs per command",
            cpu * 1e6 / sends as f64
        )),
    );
    drop(conn);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// This process's user and system CPU time so far, from `/proc/self/stat` (Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th, in clock ticks of 1/100 s.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
