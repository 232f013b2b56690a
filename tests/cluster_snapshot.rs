//! An empty node joins a cluster holding 20,000 messages whose log was purged: it is sent a
//! snapshot in several chunks and the log after it, and ends with identical rows. Sixteen
//! concurrent writers on a 2-core machine cause no election. Its own test binary: it loads
//! the machine, and cargo runs test binaries one after another.

use jochat_testkit as common;

use common::cluster::*;
use jochat_node::config::Peer;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_node_joins_through_a_chunked_snapshot_after_the_log_was_purged() {
    // 1. Three nodes that snapshot and purge their log every 1000 entries.
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        snapshot_threshold: Some(1000),
        ..Setup::default()
    };
    let (mut nodes, leader, alice) = led_by_node_1(dir.path(), 3, &setup).await;

    // 2. 20,000 messages of 256 bytes, from 16 writers at once: a loaded machine, on which
    //    the leader must keep its term (no spurious election).
    let term = leader.cluster_info().await.unwrap().term;
    const MESSAGES: usize = 20_000;
    const WRITERS: usize = 16;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let client = leader.clone();
            let token = alice.clone();
            tokio::spawn(async move {
                for i in (writer..MESSAGES).step_by(WRITERS) {
                    let content = format!("{i:0>256}");
                    if let Err(error) = client.send_message(&token, "bob", &content).await {
                        panic!("message {i}: {error}");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    assert_eq!(
        leader.cluster_info().await.unwrap().term,
        term,
        "an election happened under load"
    );

    // 3. The leader's log no longer starts at the beginning: a new node cannot be sent the
    //    early entries, only a snapshot, and the snapshot is larger than one chunk.
    let purged: Vec<u8> = rusqlite::Connection::open(&nodes[0].db)
        .unwrap()
        .query_row(
            "SELECT value FROM raft_state WHERE name = 'last_purged'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let purged: serde_json::Value = serde_json::from_slice(&purged).unwrap();
    let purged = purged["index"]
        .as_u64()
        .expect("a purged log id has an index");
    assert!(purged > 1000, "log purged up to {purged}");
    let snapshot_bytes: u64 = std::fs::read_dir(format!("{}.snapshots", nodes[0].db.display()))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    let chunk = jochat_node::NodeConfig::default()
        .raft_config()
        .unwrap()
        .snapshot_max_chunk_size;
    assert!(
        snapshot_bytes > 2 * chunk,
        "snapshot of {snapshot_bytes} bytes fits in fewer than three chunks of {chunk}"
    );

    // 4. Node 4 starts empty, listing node 1: it joins as a learner, is sent the snapshot and
    //    the log after it, and becomes a voter.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = vec![Peer {
        id: 1,
        address: nodes[0].address.clone(),
    }];
    nodes.push(start_node(dir.path(), 4, listener, peers, &setup));
    eventually("node 4 is a voter", || async {
        matches!(leader.cluster_info().await, Ok(info)
            if info.members.iter().any(|m| m.id == 4 && m.role == jochat_client::MemberRole::Voter))
    })
    .await;

    // 5. All four files hold identical rows: every message, the same ids and states.
    assert_identical(&nodes, &leader).await;
    assert_eq!(dump_file(&nodes[3].db).messages.len(), MESSAGES);
    stop_all(nodes).await;
}
