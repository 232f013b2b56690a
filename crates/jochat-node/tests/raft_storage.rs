//! The Raft log and state machine on SQLite: openraft's own storage test suite, a snapshot
//! carried from one node's file to an empty node's file, and a paced snapshot made while the
//! node keeps applying.

use std::collections::BTreeSet;

use jochat_core::ops::{CreateSession, MessageSent, RevokeSession, SendMessage, SignUp};
use jochat_core::store::ChatRead;
use jochat_core::types::{Content, SessionToken, UserId, Username};
use jochat_core::{Action, Command};
use jochat_node::events::ChatEvent;
use jochat_node::raft::storage::{self, LogStore, StateMachineStore};
use jochat_node::raft::{Applied, Batch, TypeConfig};
use jochat_node::store::{SqliteChat, SyncMode};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::RaftLogReader;
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, StorageError,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Builds a fresh store in a temporary folder, kept alive as long as the test's store.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (log, state_machine) =
            storage::open(&dir.path().join("node.db"), SyncMode::Normal).expect("the store opens");
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("the SQLite store passes openraft's storage suite");
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn command(index: u64, at_ms: i64, action: Action) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Batch::from(Command {
            at_ms,
            idempotency_key: None,
            action,
        })),
    }
}

fn dump(path: &std::path::Path) -> jochat_core::store::StateDump {
    let conn = rusqlite::Connection::open(path).expect("the database opens");
    SqliteChat::new(&conn).dump().expect("the database dumps")
}

#[tokio::test]
async fn a_snapshot_carries_the_chat_state_to_an_empty_node() {
    // 1. A node applies a membership change and some chat commands.
    let source_dir = tempfile::tempdir().unwrap();
    let source_db = source_dir.path().join("a.db");
    let (_, mut source) = storage::open(&source_db, SyncMode::Normal).unwrap();
    let token = SessionToken::from_random_bytes([9; 32]).digest();
    let name = |raw: &str| Username::new(raw).unwrap();
    let applied = source
        .apply([
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], ())),
            },
            command(
                2,
                10,
                Action::SignUp(SignUp {
                    username: name("alice"),
                    password_hash: "h".into(),
                }),
            ),
            command(
                3,
                11,
                Action::SignUp(SignUp {
                    username: name("bob"),
                    password_hash: "h".into(),
                }),
            ),
            command(
                4,
                12,
                Action::CreateSession(CreateSession {
                    user_id: UserId(1),
                    token_digest: token.clone(),
                    expires_at_ms: 1_000,
                }),
            ),
            command(
                5,
                13,
                Action::SendMessage(SendMessage {
                    session: token.clone(),
                    recipient: name("bob"),
                    content: Content::new("hi".into(), 10).unwrap(),
                }),
            ),
            // Refused (unknown recipient): it must change nothing, yet count as applied.
            command(
                6,
                14,
                Action::SendMessage(SendMessage {
                    session: token.clone(),
                    recipient: name("zed"),
                    content: Content::new("x".into(), 10).unwrap(),
                }),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(applied[0], Applied::Internal);
    assert!(matches!(applied[4], Applied::Commands(ref r) if matches!(r[..], [Ok(_)])));
    assert!(matches!(applied[5], Applied::Commands(ref r) if matches!(r[..], [Err(_)])));

    // 2. It builds a snapshot file.
    let mut builder = source.get_snapshot_builder().await;
    let mut snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(6)));
    let mut bytes = Vec::new();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();

    // 3. An empty node receives it in small chunks and installs it.
    let target_dir = tempfile::tempdir().unwrap();
    let target_db = target_dir.path().join("b.db");
    let (mut target_log, mut target) = storage::open(&target_db, SyncMode::Normal).unwrap();
    let mut receiving = target.begin_receiving_snapshot().await.unwrap();
    for chunk in bytes.chunks(4096) {
        receiving.write_all(chunk).await.unwrap();
    }
    receiving.flush().await.unwrap();
    target
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();

    // 4. Same rows, same applied id and membership, and the snapshot is kept as current.
    assert_eq!(dump(&target_db), dump(&source_db));
    let (last_applied, membership) = target.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(6)));
    assert_eq!(membership, snapshot.meta.last_membership);
    let current = target
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(target_log.get_log_state().await.unwrap().last_log_id, None);

    // 5. The installed node goes on from there: the next message gets the next id.
    let applied = target
        .apply([command(
            7,
            15,
            Action::SendMessage(SendMessage {
                session: token,
                recipient: name("alice"),
                content: Content::new("back".into(), 10).unwrap(),
            }),
        )])
        .await
        .unwrap();
    assert!(
        matches!(&applied[0], Applied::Commands(r) if matches!(r[..], [Ok(jochat_core::Outcome::MessageSent(MessageSent { id, .. }))] if id.0 == 2))
    );
}

/// Entries `first..first + count`: a sign-up of alice and bob and alice's session at 1..=3,
/// then messages of 1,000 bytes from alice to bob.
fn chat_entries(first: u64, count: u64) -> Vec<Entry<TypeConfig>> {
    let token = SessionToken::from_random_bytes([7; 32]).digest();
    let name = |raw: &str| Username::new(raw).unwrap();
    (first..first + count)
        .map(|index| {
            let at = i64::try_from(index).unwrap();
            let action = match index {
                1 => Action::SignUp(SignUp {
                    username: name("alice"),
                    password_hash: "h".into(),
                }),
                2 => Action::SignUp(SignUp {
                    username: name("bob"),
                    password_hash: "h".into(),
                }),
                3 => Action::CreateSession(CreateSession {
                    user_id: UserId(1),
                    token_digest: token.clone(),
                    expires_at_ms: i64::MAX,
                }),
                _ => Action::SendMessage(SendMessage {
                    session: token.clone(),
                    recipient: name("bob"),
                    content: Content::new(format!("{index:0>1000}"), 1000).unwrap(),
                }),
            };
            command(index, at, action)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_snapshot_taken_during_applies_holds_exactly_the_state_it_names() {
    // 1. A node holding about 3 MB, writing snapshots at 2 MiB/s: the copy takes over a
    //    second, during which the node applies 300 more entries.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let (_, mut node) = storage::open_with(&db, SyncMode::Normal, Some(2 << 20)).unwrap();
    node.apply(chat_entries(1, 3_000)).await.unwrap();
    let mut builder = node.get_snapshot_builder().await;
    let building = tokio::spawn(async move { builder.build_snapshot().await });
    let mut next = 3_001;
    while !building.is_finished() {
        node.apply(chat_entries(next, 10)).await.unwrap();
        next += 10;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let snapshot = building.await.unwrap().unwrap();
    let named = snapshot
        .meta
        .last_log_id
        .expect("the snapshot names an applied id")
        .index;
    assert!(
        (3_000..next - 1).contains(&named),
        "the snapshot names entry {named}, applied meanwhile up to {}",
        next - 1
    );

    // 2. The file is the state at that entry and nothing else: the same rows as a node that
    //    applied exactly up to it, no log, and only the applied id and membership of
    //    Raft's state.
    let file = dir
        .path()
        .join("a.db.snapshots")
        .join(format!("{}.db", snapshot.meta.snapshot_id));
    let reference_dir = tempfile::tempdir().unwrap();
    let reference_db = reference_dir.path().join("r.db");
    let (_, mut reference) = storage::open(&reference_db, SyncMode::Normal).unwrap();
    reference.apply(chat_entries(1, named)).await.unwrap();
    assert_eq!(dump(&file), dump(&reference_db));
    let copy = rusqlite::Connection::open(&file).unwrap();
    let log_rows: i64 = copy
        .query_row("SELECT count(*) FROM raft_log", [], |row| row.get(0))
        .unwrap();
    assert_eq!(log_rows, 0);
    let mut names: Vec<String> = copy
        .prepare("SELECT name FROM raft_state ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.sort();
    // (No membership entry was applied here, so there is no membership to record.)
    assert_eq!(names, ["last_applied"]);
    let journal: String = copy
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_ne!(
        journal, "wal",
        "a snapshot file stands alone, without a -wal file"
    );
}

#[tokio::test]
async fn an_earlier_builds_log_rows_move_into_the_segment_files() {
    // 1. A file as an earlier build left it: the log in `raft_log`, purged up to 10 with rows
    //    1..=5 not yet deleted (those builds deleted purged rows in the background), live
    //    rows 11..=15; and a segment file an interrupted earlier move wrote.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    drop(storage::open(&db, SyncMode::Normal).unwrap());
    let entry = |index: u64| {
        command(
            index,
            1,
            Action::RevokeSession(RevokeSession {
                session: SessionToken::from_random_bytes([1; 32]).digest(),
            }),
        )
    };
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for index in (1..=5).chain(11..=15) {
            conn.execute(
                "INSERT INTO raft_log (log_index, term, entry) VALUES (?1, 1, ?2)",
                rusqlite::params![
                    i64::try_from(index).unwrap(),
                    serde_json::to_vec(&entry(index)).unwrap()
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO raft_state (name, value) VALUES ('last_purged', ?1)",
            [serde_json::to_vec(&log_id(10)).unwrap()],
        )
        .unwrap();
    }
    let log_dir = storage::log_dir_of(&db);
    {
        let (mut partial, _) =
            jochat_node::raft::log_file::LogFile::open(&log_dir, None, true).unwrap();
        partial
            .append(&[jochat_node::raft::log_file::Record {
                index: 11,
                term: 1,
                payload: b"an interrupted move".to_vec(),
            }])
            .unwrap();
        partial.sync().unwrap();
    }

    // 2. Reopened, the live entries are in the files, the dead ones are gone, and the table
    //    is empty.
    let (mut log, _) = storage::open(&db, SyncMode::Full).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
    assert_eq!(state.last_log_id, Some(log_id(15)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, [11, 12, 13, 14, 15]);
    assert_eq!(
        serde_json::to_vec(&entries[2]).unwrap(),
        serde_json::to_vec(&entry(13)).unwrap()
    );
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM raft_log", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    drop(log);

    // 3. And so they stay, reopened again.
    let (mut log, _) = storage::open(&db, SyncMode::Full).unwrap();
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(15))
    );
}

#[tokio::test]
async fn stored_messages_are_published_to_subscribers_and_not_read_back_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut state_machine) =
        storage::open(&dir.path().join("node.db"), SyncMode::Normal).unwrap();
    let events = state_machine.events();

    // 1. Nobody listens: messages 1 and 2 are stored, and no event waits for anyone.
    state_machine.apply(chat_entries(1, 5)).await.unwrap();

    // 2. A subscriber hears each message stored from then on, read back in full.
    let mut live = events.subscribe();
    state_machine.apply(chat_entries(6, 2)).await.unwrap();
    for id in [3, 4] {
        match live
            .try_recv()
            .expect("an event per stored message")
            .as_ref()
        {
            ChatEvent::Message(message) => {
                assert_eq!(message.id.0, id);
                assert_eq!(message.recipient.as_str(), "bob");
                assert_eq!(message.content.len(), 1000);
            }
            other => panic!("expected message {id}, got {other:?}"),
        }
    }
    assert!(live.try_recv().is_err(), "nothing else was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_that_outlived_the_log_tail_they_came_from_are_kept() {
    use openraft::storage::{RaftLogStorageExt, StorageHelper};

    // 1. Entries 1..=20 in the log and applied; then a power cut loses the log's tail from 13
    //    on (written, not yet synced) while the applies of it reached the disk (a follower
    //    applies entries committed on the other nodes' disks before its own copy is synced).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    {
        let (mut log, mut sm) = storage::open(&db, SyncMode::Full).unwrap();
        log.blocking_append(chat_entries(1, 20)).await.unwrap();
        sm.apply(chat_entries(1, 20)).await.unwrap();
        log.close().await;
    }
    {
        let (mut file, _) =
            jochat_node::raft::log_file::LogFile::open(&storage::log_dir_of(&db), None, true)
                .unwrap();
        file.truncate_from(13).unwrap();
        file.sync().unwrap();
    }
    let before = dump(&db);

    // 2. Reopened, Raft starts after the applied entry: the log's hole below it is purged,
    //    and nothing is applied twice.
    let (mut log, mut sm) = storage::open(&db, SyncMode::Full).unwrap();
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(20)));
    assert_eq!(state.last_log_id, Some(log_id(20)));
    assert_eq!(dump(&db), before);

    // 3. The log goes on after it, also once reopened.
    log.blocking_append(chat_entries(21, 1)).await.unwrap();
    let indexes = |entries: Vec<Entry<TypeConfig>>| -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    };
    assert_eq!(
        indexes(log.try_get_log_entries(0..100).await.unwrap()),
        [21]
    );
    log.close().await;
    drop((log, sm));
    let (mut log, _) = storage::open(&db, SyncMode::Full).unwrap();
    let reopened = log.get_log_state().await.unwrap();
    assert_eq!(reopened.last_purged_log_id, Some(log_id(20)));
    assert_eq!(reopened.last_log_id, Some(log_id(21)));
    assert_eq!(
        indexes(log.try_get_log_entries(0..100).await.unwrap()),
        [21]
    );
}
