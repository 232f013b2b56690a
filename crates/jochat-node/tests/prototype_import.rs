//! Upgrading from the prototype: `jochat-node` processes started with the prototype's run
//! commands (`--server_id=1 --port=… --db_file=test_chat1.db`) on prototype database files
//! made here with the schema in `legacy/REPLIES.md`:
//!
//! - one node imports its file: old users log in (SHA-256-hex and plain credentials, through
//!   `jochat.v1` and the prototype's service), see their unread counts and page their inbox
//!   with the prototype's ids; the report lists each odd row; the original is kept; sessions
//!   are gone; ids are never reused; a restart imports nothing twice;
//! - three nodes started in the prototype's order: node 1 imports, nodes 2 and 3 set their
//!   (different) files aside and receive node 1's state; every node's rows are identical;
//! - `jochat-node import-prototype` offline: the report, no overwriting, a node on the result.

use jochat_testkit::process as support;

use std::path::{Path, PathBuf};

use jochat_client::{hash_password, ChatServerClient, InboxQuery, ReadConsistency};
use jochat_process::NodeCommand;
use jochat_proto::legacy::chat_service_client::ChatServiceClient;
use jochat_proto::legacy::LoginRequest;
use support::{node_binary, poll, NodeProcess};

/// One row of the prototype's `messages`: (sender, recipient, content, to_deliver).
type OldMessage<'a> = (&'a str, &'a str, &'a str, i64);

/// The prototype's schema, verbatim from `legacy/REPLIES.md`.
const PROTOTYPE_SCHEMA: &str = "
    CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE NOT NULL,
                        password_hash TEXT NOT NULL);
    CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT, recipient TEXT,
                           content TEXT, to_deliver INTEGER DEFAULT 0);
    CREATE TABLE sessions (auth_token TEXT PRIMARY KEY, username TEXT NOT NULL);";

/// A prototype file at `path` with `users` (name, credential as stored), `messages`, two
/// sessions, and one message deleted after the others (so its id, the highest handed out,
/// is in `sqlite_sequence` only).
fn prototype_file(path: &Path, users: &[(&str, String)], messages: &[OldMessage<'_>]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(PROTOTYPE_SCHEMA).unwrap();
    for (name, credential) in users {
        conn.execute(
            "INSERT INTO users (username, password_hash) VALUES (?1, ?2)",
            [name, credential.as_str()],
        )
        .unwrap();
    }
    for (sender, recipient, content, to_deliver) in messages {
        conn.execute(
            "INSERT INTO messages (sender, recipient, content, to_deliver) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![sender, recipient, content, to_deliver],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO messages (sender, recipient, content) VALUES ('alice', 'bob', 'deleted')",
        [],
    )
    .unwrap();
    conn.execute("DELETE FROM messages WHERE content = 'deleted'", [])
        .unwrap();
    conn.execute_batch(
        "INSERT INTO sessions VALUES ('token-a', 'alice'); \
         INSERT INTO sessions VALUES ('token-b', 'bob');",
    )
    .unwrap();
}

/// The file every test starts from: SHA-256-hex and plain credentials, away and delivered
/// messages, a case-only name clash, an empty content and a message to nobody.
fn standard_prototype(path: &Path) {
    prototype_file(
        path,
        &[
            ("alice", hash_password("alice-pw")),
            ("bob", "bob-plain".to_owned()),
            ("Alice", hash_password("other-alice-pw")),
            ("carol", "carol-plain".to_owned()),
        ],
        &[
            ("alice", "bob", "one", 0),
            ("alice", "bob", "two", 0),
            ("carol", "bob", "three", 1),
            ("bob", "alice", "reply", 1),
            ("bob", "ghost", "to nobody", 0),
            ("alice", "carol", "", 0),
            ("Alice", "bob", "from the other alice", 0),
        ],
    );
}

/// The prototype's ids of the messages the standard file's import keeps, in bob's inbox.
const BOB_INBOX_IDS: [i64; 4] = [7, 3, 2, 1];
/// The highest message id the standard file handed out (the deleted one).
const STANDARD_LAST_MESSAGE_ID: i64 = 8;

fn prototype_node(id: u64, db: &Path) -> NodeCommand {
    NodeCommand::new(node_binary(), id, db).prototype_flags()
}

fn client_of(node: &NodeProcess) -> ChatServerClient {
    ChatServerClient::builder()
        .servers([node.address().to_owned()])
        .discover_members(false)
        .build()
        .unwrap()
}

/// Files in `dir` whose name starts with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_started_on_a_prototype_file_carries_everything_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test_chat1.db");
    standard_prototype(&db);
    let original = std::fs::read(&db).unwrap();
    // What an import interrupted by a crash leaves: a link to the original and a partial
    // new file. The retried import reuses the one and replaces the other.
    std::fs::hard_link(&db, dir.path().join("test_chat1.db.prototype-1")).unwrap();
    std::fs::write(dir.path().join("test_chat1.db.importing"), b"partial").unwrap();

    // 1. The prototype's run command, unchanged.
    let mut node = prototype_node(1, &db).spawn().unwrap();
    assert_eq!(node.log_lines("imported the prototype's database").len(), 1);
    let kept = files_starting(dir.path(), "test_chat1.db.prototype-");
    assert_eq!(kept, [dir.path().join("test_chat1.db.prototype-1")]);
    assert_eq!(
        std::fs::read(&kept[0]).unwrap(),
        original,
        "the original is kept as it was"
    );
    assert!(!dir.path().join("test_chat1.db.importing").exists());

    // 2. The report lists each odd row, with its content; credentials never show.
    let report =
        std::fs::read_to_string(dir.path().join("test_chat1.db.import-report.txt")).unwrap();
    for line in [
        "found: 4 account(s), 7 message(s), 2 session(s)",
        "imported: 4 account(s), 5 message(s); 2 session(s) dropped",
        "rows changed or left out: 3",
        "user 3 renamed \"Alice\" -> \"Alice-2\": equal ignoring case to \"alice\" (user 1)",
        "message 5 left out: recipient \"ghost\" is not an account; row: {\"id\":5,\"sender\":\"bob\",\"recipient\":\"ghost\",\"content\":\"to nobody\",\"to_deliver\":0}",
        "message 6 left out: content is empty",
    ] {
        assert!(report.contains(line), "{line:?} not in:\n{report}");
    }
    assert!(!report.contains("bob-plain") && !report.contains(&hash_password("alice-pw")));

    // 3. Nobody has a session; the rows are the prototype's, with its ids.
    let dump = jochat_testkit::cluster::dump_file(&db);
    assert!(dump.sessions.is_empty());
    let names: Vec<(i64, &str)> = dump
        .users
        .iter()
        .map(|u| (u.id.0, u.username.as_str()))
        .collect();
    assert_eq!(
        names,
        [(1, "alice"), (2, "bob"), (3, "Alice-2"), (4, "carol")]
    );

    // 4. Old users log in with the same credentials: through jochat.v1 (the client library
    //    sends the digest) whether the prototype stored the digest or the plain password...
    let client = client_of(&node);
    let bob = client.log_in("bob", "bob-plain").await.unwrap();
    assert_eq!(
        bob.unread_count, 3,
        "one, two and the other alice's are away"
    );
    let alice = client.log_in("alice", "alice-pw").await.unwrap();
    assert_eq!(alice.unread_count, 0, "bob's reply was delivered");
    client.log_in("Alice-2", "other-alice-pw").await.unwrap();
    assert!(client.log_in("alice", "bob-plain").await.is_err());
    let page = client
        .list_messages(&bob.token, &InboxQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total_count, 4);
    let ids: Vec<i64> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, BOB_INBOX_IDS, "newest first, with the prototype's ids");
    let senders: Vec<&str> = page.messages.iter().map(|m| m.sender.as_str()).collect();
    assert_eq!(senders, ["Alice-2", "carol", "alice", "alice"]);
    let second = client
        .list_messages(
            &bob.token,
            &InboxQuery {
                offset: 2,
                limit: 2,
                ..InboxQuery::default()
            },
        )
        .await
        .unwrap();
    let contents: Vec<&str> = second.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["two", "one"]);

    //    ...and through the prototype's service, as its client (digest) and scripts (plain)
    //    send them, with its reply texts.
    let mut old = ChatServiceClient::connect(format!("http://{}", node.address()))
        .await
        .unwrap();
    for (username, password) in [
        ("bob", "bob-plain".to_owned()),
        ("carol", hash_password("carol-plain")),
        ("alice", hash_password("alice-pw")),
    ] {
        let reply = old
            .login(LoginRequest {
                username: username.into(),
                password,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (reply.status.as_str(), reply.msg.as_str()),
            ("ok", "Login successful"),
            "{username}"
        );
    }

    // 5. New messages get ids above every id the prototype handed out.
    let bob = client.log_in("bob", "bob-plain").await.unwrap();
    let sent = client
        .send_message(&bob.token, "carol", "after the upgrade")
        .await
        .unwrap();
    assert!(sent.id > STANDARD_LAST_MESSAGE_ID, "{}", sent.id);

    // 6. A restart imports nothing twice and keeps everything.
    let before = jochat_testkit::cluster::dump_file(&db);
    node.restart().unwrap();
    assert_eq!(
        node.log_lines("imported the prototype's database").len(),
        1,
        "the second run imported nothing"
    );
    assert_eq!(
        files_starting(dir.path(), "test_chat1.db.prototype-").len(),
        1
    );
    let client = client_of(&node);
    let bob = client.log_in("bob", "bob-plain").await.unwrap();
    let page = client
        .list_messages(&bob.token, &InboxQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total_count, 4);
    let after = jochat_testkit::cluster::dump_file(&db);
    assert_eq!(after.users, before.users);
    assert_eq!(after.messages, before.messages);
}

/// Polls until node 1 knows a leader and all the nodes as voters, and every node's rows are
/// node 1's: every table, row for row.
async fn converged(nodes: &[NodeProcess], dbs: &[PathBuf]) {
    let leader = client_of(&nodes[0]);
    poll("every node is a voter under a leader", || async {
        leader.cluster_info().await.is_ok_and(|info| {
            info.leader_id.is_some()
                && info.members.len() == nodes.len()
                && info
                    .members
                    .iter()
                    .all(|m| m.role == jochat_client::MemberRole::Voter)
        })
    })
    .await;
    poll("every node holds node 1's rows", || async {
        let first = jochat_testkit::cluster::dump_file(&dbs[0]);
        dbs[1..]
            .iter()
            .all(|db| jochat_testkit::cluster::dump_file(db) == first)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_with_the_prototypes_commands_share_node_1s_import() {
    // 1. Three prototype files that disagree, as the prototype's did: node 2 lost a message,
    //    node 3 has an account the others never got.
    let dir = tempfile::tempdir().unwrap();
    let dbs: Vec<PathBuf> = (1..=3)
        .map(|id| dir.path().join(format!("test_chat{id}.db")))
        .collect();
    standard_prototype(&dbs[0]);
    prototype_file(
        &dbs[1],
        &[
            ("alice", hash_password("alice-pw")),
            ("bob", "bob-plain".to_owned()),
        ],
        &[("alice", "bob", "one", 0)],
    );
    prototype_file(
        &dbs[2],
        &[
            ("alice", hash_password("alice-pw")),
            ("bob", "bob-plain".to_owned()),
            ("zoe", "zoe-plain".to_owned()),
        ],
        &[("zoe", "bob", "only on node 3", 0)],
    );

    // 2. The prototype's order and flags: node 1 alone, node 2 with node 1, node 3 with both.
    let first = prototype_node(1, &dbs[0]).spawn().unwrap();
    let second = prototype_node(2, &dbs[1])
        .peers([(1, first.address().to_owned())])
        .spawn()
        .unwrap();
    let third = prototype_node(3, &dbs[2])
        .peers([
            (1, first.address().to_owned()),
            (2, second.address().to_owned()),
        ])
        .spawn()
        .unwrap();
    let mut nodes = vec![first, second, third];
    assert_eq!(
        nodes[0]
            .log_lines("imported the prototype's database")
            .len(),
        1
    );
    for (node, name) in nodes[1..].iter().zip(["test_chat2.db", "test_chat3.db"]) {
        assert_eq!(
            node.log_lines("set aside, not imported").len(),
            1,
            "node {}",
            node.id()
        );
        assert!(node
            .log_lines("imported the prototype's database")
            .is_empty());
        let kept = files_starting(dir.path(), &format!("{name}.prototype-"));
        assert_eq!(kept.len(), 1, "{name} is kept");
    }

    // 3. Every node ends with node 1's rows, and only those.
    converged(&nodes, &dbs).await;
    let dump = jochat_testkit::cluster::dump_file(&dbs[2]);
    let names: Vec<&str> = dump.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "Alice-2", "carol"]);
    assert_eq!(dump.messages.len(), 5);

    // 4. Old users log in on the leader and read their inbox from a follower.
    let client = client_of(&nodes[0]);
    let bob = client.log_in("bob", "bob-plain").await.unwrap();
    assert_eq!(bob.unread_count, 3);
    let follower = client_of(&nodes[2]);
    let page = follower
        .list_messages(
            &bob.token,
            &InboxQuery {
                consistency: ReadConsistency::Stale,
                ..InboxQuery::default()
            },
        )
        .await
        .unwrap();
    let ids: Vec<i64> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, BOB_INBOX_IDS);

    // 5. A write after the import reaches every node; restarting a follower and the leader
    //    imports and sets aside nothing more.
    client
        .send_message(&bob.token, "alice", "after the upgrade")
        .await
        .unwrap();
    nodes[1].restart().unwrap();
    nodes[0].restart().unwrap();
    assert_eq!(
        nodes[0]
            .log_lines("imported the prototype's database")
            .len(),
        1
    );
    assert_eq!(nodes[1].log_lines("set aside, not imported").len(), 1);
    converged(&nodes, &dbs).await;
    let dump = jochat_testkit::cluster::dump_file(&dbs[1]);
    assert!(dump
        .messages
        .iter()
        .any(|m| m.content == "after the upgrade"));
    for name in ["test_chat1.db", "test_chat2.db", "test_chat3.db"] {
        assert_eq!(
            files_starting(dir.path(), &format!("{name}.prototype-")).len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_prototype_builds_a_database_offline_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("chat.db");
    standard_prototype(&old);
    let original = std::fs::read(&old).unwrap();
    let new = dir.path().join("data").join("node-1.db");
    let import = |from: &Path, to: &Path| {
        std::process::Command::new(node_binary())
            .arg("import-prototype")
            .arg("--from")
            .arg(from)
            .arg("--db-file")
            .arg(to)
            .output()
            .unwrap()
    };

    // 1. The report on stdout and beside the new file; the old file untouched.
    let done = import(&old, &new);
    assert!(done.status.success(), "{done:?}");
    let printed = String::from_utf8(done.stdout).unwrap();
    assert!(printed.contains("rows changed or left out: 3"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/node-1.db.import-report.txt")).unwrap(),
        printed
    );
    assert_eq!(std::fs::read(&old).unwrap(), original);

    // 2. Never over an existing file; never from a file that is not the prototype's.
    let again = import(&old, &new);
    assert!(!again.status.success());
    let error = String::from_utf8_lossy(&again.stderr);
    assert!(error.contains("exists already"), "{error}");
    let other = dir.path().join("other.db");
    let refused = import(&new, &other);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("is not a prototype database"), "{error}");
    assert!(!other.exists());

    // 3. A node on the new file (JoChat's own flags) forms a cluster with that state.
    let node = NodeCommand::new(node_binary(), 1, &new).spawn().unwrap();
    let client = client_of(&node);
    let bob = client.log_in("bob", "bob-plain").await.unwrap();
    assert_eq!(bob.unread_count, 3);
    assert_eq!(node.log_lines("is the cluster's first snapshot").len(), 1);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowest_node_imports_even_when_it_lists_peers() {
    // Node 1 lists peers that are not up yet (as when all are started together): it is the
    // lowest and no peer knows a leader, so it imports and forms the cluster alone; node 2,
    // started on its own prototype file, sets it aside and joins.
    let dir = tempfile::tempdir().unwrap();
    let dbs: Vec<PathBuf> = (1..=2)
        .map(|id| dir.path().join(format!("test_chat{id}.db")))
        .collect();
    standard_prototype(&dbs[0]);
    standard_prototype(&dbs[1]);
    let unused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let first = prototype_node(1, &dbs[0])
        .peers([(2, unused)])
        .spawn()
        .unwrap();
    assert_eq!(
        first.log_lines("imported the prototype's database").len(),
        1
    );
    let second = prototype_node(2, &dbs[1])
        .peers([(1, first.address().to_owned())])
        .spawn()
        .unwrap();
    assert_eq!(second.log_lines("set aside, not imported").len(), 1);
    let nodes = vec![first, second];
    converged(&nodes, &dbs).await;
    let bob = client_of(&nodes[1])
        .log_in("bob", "bob-plain")
        .await
        .unwrap();
    assert_eq!(bob.unread_count, 3);
}
