//! The Raft log and state machine on SQLite: openraft's own storage test suite, and a
//! snapshot carried from one node's file to an empty node's file.

use std::collections::BTreeSet;

use jochat_core::store::ChatRead;
use jochat_core::types::{Content, SessionToken, UserId, Username};
use jochat_core::{Action, Command};
use jochat_node::raft::storage::{self, LogStore, StateMachineStore};
use jochat_node::raft::{Applied, Batch, TypeConfig};
use jochat_node::store::{SqliteChat, SyncMode};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
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
                Action::SignUp {
                    username: name("alice"),
                    password_hash: "h".into(),
                },
            ),
            command(
                3,
                11,
                Action::SignUp {
                    username: name("bob"),
                    password_hash: "h".into(),
                },
            ),
            command(
                4,
                12,
                Action::CreateSession {
                    user_id: UserId(1),
                    token_digest: token.clone(),
                    expires_at_ms: 1_000,
                },
            ),
            command(
                5,
                13,
                Action::SendMessage {
                    session: token.clone(),
                    recipient: name("bob"),
                    content: Content::new("hi".into(), 10).unwrap(),
                },
            ),
            // Refused (unknown recipient): it must change nothing, yet count as applied.
            command(
                6,
                14,
                Action::SendMessage {
                    session: token.clone(),
                    recipient: name("zed"),
                    content: Content::new("x".into(), 10).unwrap(),
                },
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
            Action::SendMessage {
                session: token,
                recipient: name("alice"),
                content: Content::new("back".into(), 10).unwrap(),
            },
        )])
        .await
        .unwrap();
    assert!(
        matches!(&applied[0], Applied::Commands(r) if matches!(r[..], [Ok(jochat_core::Outcome::MessageSent { id, .. })] if id.0 == 2))
    );
}
