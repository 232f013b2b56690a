//! Backups (`ChatServerClient::backup_to`, what `jochat backup` calls) and restoring one
//! (`jochat-node --restore`):
//!
//! - 1,000 messages, then a backup of a three-node cluster while eight writers keep writing,
//!   restored into a new node: every message acknowledged before the backup began is there,
//!   nothing committed after the backup's index is, and the rows are the source's, row for
//!   row, up to that index; the restored node serves them;
//! - a damaged, truncated, foreign or non-SQLite file, or a data folder that holds a database,
//!   is refused with an error naming the reason, and nothing is written;
//! - a cluster with a secret gives a backup only with it.

use jochat_testkit as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::cluster::{dump_file, led_by_node_1, stop_all, Setup};
use jochat_client::{ChatServerClient, ClientError};
use jochat_node::NodeConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_exactly_the_state_at_its_index() {
    // 1. Three nodes, 1,000 messages from alice to bob.
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader, alice) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let senders: Vec<_> = (0..8)
        .map(|writer| {
            let (leader, alice) = (leader.clone(), alice.clone());
            tokio::spawn(async move {
                for n in 0..125 {
                    leader
                        .send_message(&alice, "bob", &format!("before {writer}-{n}"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }

    // 2. Eight writers keep writing; each acknowledged id is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (leader, alice) = (leader.clone(), alice.clone());
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sent = leader
                        .send_message(&alice, "bob", &format!("during {writer}-{n}"))
                        .await
                        .unwrap();
                    acknowledged.lock().unwrap().push(sent.id);
                    n += 1;
                }
            })
        })
        .collect();
    common::cluster::eventually("writes are flowing", || async {
        acknowledged.lock().unwrap().len() >= 50
    })
    .await;

    // 3. The backup, while they write.
    let before_backup: Vec<i64> = acknowledged.lock().unwrap().clone();
    let out = dir.path().join("chat.backup");
    let mut last_progress = (0, 0);
    let backup = leader
        .backup_to(&out, None, |received, total| {
            last_progress = (received, total);
        })
        .await
        .unwrap();
    common::cluster::eventually("writes go on after the backup", || async {
        acknowledged.lock().unwrap().len() >= before_backup.len() + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(last_progress, (backup.bytes, backup.bytes));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), backup.bytes);
    let sums = std::fs::read_to_string(dir.path().join("chat.backup.sha256")).unwrap();
    assert_eq!(sums, format!("{}  chat.backup\n", backup.sha256));
    assert!(!dir.path().join("chat.backup.partial").exists());

    // 4. The file is plain SQLite with the state at the backup's index.
    let source = dump_file(&nodes[0].db);
    let backed_up = dump_file(&out);
    stop_all(nodes).await;
    assert_eq!(backed_up.users, source.users);
    assert_eq!(backed_up.sessions, source.sessions);
    let kept = backed_up.messages.len();
    assert!(kept >= 1000 + before_backup.len(), "{kept} messages");
    assert!(
        kept < source.messages.len(),
        "writes after the backup are not in it"
    );
    assert_eq!(
        backed_up.messages,
        source.messages[..kept],
        "row for row the source's, up to the backup's index"
    );
    let ids: std::collections::HashSet<i64> = backed_up.messages.iter().map(|m| m.id.0).collect();
    for id in &before_backup {
        assert!(
            ids.contains(id),
            "message {id}, acknowledged before the backup"
        );
    }

    // 5. Restored into a new node: the same rows, served.
    let restored = common::node_with(NodeConfig {
        restore: Some(out.clone()),
        ..NodeConfig::default()
    })
    .await;
    let client = common::client(&restored);
    let bob = client.log_in("bob", "pw").await.unwrap();
    assert_eq!(bob.unread_count as usize, kept);
    let dump = common::dump(&restored);
    assert_eq!(dump.users, backed_up.users);
    assert_eq!(dump.messages, backed_up.messages);
    assert_eq!(dump.last_ids, backed_up.last_ids);
    let sent = client
        .send_message(&bob.token, "alice", "after the restore")
        .await
        .unwrap();
    assert!(sent.id > backed_up.last_ids.message, "ids are never reused");
    restored.shutdown().await.unwrap();
}

/// Starts a node on `db` restoring `backup`, and returns why it refused.
async fn refusal(db: &std::path::Path, backup: &std::path::Path) -> String {
    // The node fails at start: its task ends with the error, which `shutdown` returns.
    let node = jochat_node::spawn(NodeConfig {
        port: 0,
        db_file: Some(db.to_owned()),
        restore: Some(backup.to_owned()),
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    match node.shutdown().await {
        Ok(()) => panic!("{} was restored", backup.display()),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_bad_file_or_a_used_folder_and_changes_nothing() {
    // 1. A good backup of a small node, with a secret: given only with the secret.
    let dir = tempfile::tempdir().unwrap();
    let source = common::node_with(NodeConfig {
        cluster_secret: Some("s3cret".into()),
        ..NodeConfig::default()
    })
    .await;
    let client: ChatServerClient = common::client(&source);
    let alice = common::user(&client, "alice").await;
    common::user(&client, "bob").await;
    for n in 0..20 {
        client
            .send_message(&alice.token, "bob", &format!("m{n}"))
            .await
            .unwrap();
    }
    let good = dir.path().join("good.backup");
    let refused = client.backup_to(&good, None, |_, _| {}).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::PermissionDenied(_)),
        "{refused}"
    );
    let refused = client
        .backup_to(&good, Some("wrong"), |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ClientError::PermissionDenied(_)),
        "{refused}"
    );
    assert!(!good.exists() && !dir.path().join("good.backup.partial").exists());
    client
        .backup_to(&good, Some("s3cret"), |_, _| {})
        .await
        .unwrap();
    source.shutdown().await.unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let sums = std::fs::read_to_string(dir.path().join("good.backup.sha256")).unwrap();
    let db = dir.path().join("data").join("node.db");

    // 2. Damaged: one byte changed, with the checksum beside it.
    let damaged = dir.path().join("damaged.backup");
    let mut changed = bytes.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0xff;
    std::fs::write(&damaged, &changed).unwrap();
    std::fs::write(dir.path().join("damaged.backup.sha256"), &sums).unwrap();
    let why = refusal(&db, &damaged).await;
    assert!(why.contains("SHA-256") && why.contains("damaged"), "{why}");

    // 3. Truncated, without a checksum: SQLite's check finds it.
    let truncated = dir.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let why = refusal(&db, &truncated).await;
    assert!(why.starts_with("--restore: "), "{why}");
    assert!(
        why.contains("integrity check") || why.contains("not a sound SQLite database"),
        "{why}"
    );

    // 4. Foreign: SQLite, but not JoChat's; and not SQLite at all.
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT); PRAGMA user_version = 7;",
        )
        .unwrap();
    let why = refusal(&db, &foreign).await;
    assert!(why.contains("not a JoChat backup"), "{why}");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "hello, this is not a database at all, just some text\n".repeat(100),
    )
    .unwrap();
    let why = refusal(&db, &text).await;
    assert!(why.contains("not a sound SQLite database"), "{why}");
    let missing = refusal(&db, &dir.path().join("missing.backup")).await;
    assert!(missing.contains("no such file"), "{missing}");
    assert!(!db.exists(), "nothing was written");

    // 5. The good file restores; a second start with the flag finds the folder in use.
    let node = jochat_node::spawn(NodeConfig {
        port: 0,
        db_file: Some(db.clone()),
        restore: Some(good.clone()),
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    let restored = ChatServerClient::builder()
        .servers([node.address()])
        .build()
        .unwrap();
    let bob = restored.log_in("bob", "bob-password").await.unwrap();
    let inbox = restored
        .list_messages(&bob.token, &jochat_client::InboxQuery::default())
        .await
        .unwrap();
    assert_eq!(inbox.total_count, 20);
    node.shutdown().await.unwrap();
    let before = dump_file(&db);
    let why = refusal(&db, &good).await;
    assert!(
        why.contains("exists") && why.contains("empty data folder"),
        "{why}"
    );
    assert_eq!(dump_file(&db), before);
}
