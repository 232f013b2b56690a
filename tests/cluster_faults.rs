//! The cluster under faults, with in-process nodes behind the injectable fault layer: a
//! partitioned leader cannot commit, the majority elects a leader among it (normally the
//! lowest id) and keeps writing, and after healing the old leader follows and every file converges with no
//! divergent rows; a returning node does not depose a healthy leader. (The snapshot join,
//! which loads the machine heavily, has its own test binary, `cluster_snapshot.rs`, so that
//! it never runs at the same time as these timing-sensitive tests.)

use jochat_testkit as common;

use std::time::Duration;

use common::cluster::*;
use jochat_node::raft::faults::Faults;
use jochat_proto::v1::chat_client::ChatClient;

fn faulty() -> Setup {
    Setup {
        faults: Faults::injectable(),
        ..Setup::default()
    }
}

/// Sends one message from `token` to bob through node `address` directly (no retries),
/// giving up after `wait`.
async fn send_once(
    address: &str,
    token: &str,
    content: &str,
    wait: Duration,
) -> Result<i64, tonic::Status> {
    let mut raw = ChatClient::connect(format!("http://{address}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = jochat_proto::v1::SendMessageRequest {
        recipient: "bob".into(),
        content: content.into(),
        ..Default::default()
    };
    let mut request = common::authorized(request, token);
    request.set_timeout(wait);
    raw.send_message(request).await.map(|r| r.into_inner().id)
}

/// The leader every node of `majority` reports, once they agree on one of themselves; on
/// timeout the panic shows what each node saw.
async fn majority_leader(majority: &[ClusterNode]) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut views = Vec::new();
        for node in majority {
            let view = node.client().cluster_info().await.ok();
            views.push((node.id, view.map(|info| (info.leader_id, info.term))));
        }
        let leaders: Vec<Option<u64>> = views
            .iter()
            .map(|(_, view)| view.and_then(|(leader, _)| leader))
            .collect();
        if let Some(Some(leader)) = leaders.first() {
            if leaders.iter().all(|l| *l == Some(*leader))
                && majority.iter().any(|node| node.id == *leader)
            {
                eprintln!("the majority elected node {leader}");
                return *leader;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the majority never agreed on a leader among itself; (node, (leader, term)): {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_converges_after_healing() {
    // 1. Three nodes, node 1 leading, with accounts and a message.
    let dir = tempfile::tempdir().unwrap();
    let setup = faulty();
    let (nodes, first, alice) = led_by_node_1(dir.path(), 3, &setup).await;
    first
        .send_message(&alice, "bob", "before the partition")
        .await
        .unwrap();

    // 2. Once every node has all of it, node 1 is cut off from the other two. (With a
    //    follower behind, Raft's vote rule would rightly refuse it, and the other would lead.)
    let target = first.cluster_info().await.unwrap().commit_index;
    wait_applied(&nodes, target).await;
    setup.faults.isolate(1, &[2, 3]);

    // 3. The old leader cannot commit: its writes fail with "no quorum".
    let refused = send_once(
        &nodes[0].address,
        alice.as_str(),
        "through the old leader",
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        refused.message().starts_with("no quorum: "),
        "{}",
        refused.message()
    );

    // 4. The majority elects one of its own (node 2, the lowest id among it, unless it was
    //    too slow to stand in time), which takes writes.
    let new_leader = majority_leader(&nodes[1..]).await;
    let leader_node = &nodes[usize::try_from(new_leader - 1).unwrap()];
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let sent = loop {
            match send_once(
                &leader_node.address,
                alice.as_str(),
                &format!("majority {i}"),
                Duration::from_secs(5),
            )
            .await
            {
                Ok(id) => break id,
                Err(status) => eprintln!("retrying a write to node {new_leader}: {status}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acknowledged.push(sent);
    }

    // 5. Healed: node 1 follows the new leader, and all three files hold the same rows, none
    //    of them the write the old leader could not commit.
    setup.faults.heal();
    eventually("node 1 follows the new leader", || async {
        matches!(first.cluster_info().await, Ok(info) if info.leader_id == Some(new_leader))
    })
    .await;
    assert_identical(&nodes, &leader_node.client()).await;
    let state = dump_file(&nodes[0].db);
    let contents: Vec<&str> = state.messages.iter().map(|m| m.content.as_str()).collect();
    assert!(
        !contents.contains(&"through the old leader"),
        "an unacknowledged write survived: {contents:?}"
    );
    let ids: Vec<i64> = state.messages.iter().map(|m| m.id.0).collect();
    assert!(acknowledged.iter().all(|id| ids.contains(id)), "{ids:?}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_a_partition_does_not_depose_a_healthy_leader() {
    // 1. Three nodes led by node 1; node 3 is cut off long enough to stand for election
    //    (and fail: the others still hear node 1, and refuse it).
    let dir = tempfile::tempdir().unwrap();
    let setup = faulty();
    let (nodes, first, alice) = led_by_node_1(dir.path(), 3, &setup).await;
    let term_before = first.cluster_info().await.unwrap().term;
    setup.faults.isolate(3, &[1, 2]);
    // The majority keeps writing for a second, several times node 3's election delay; node 3
    // hears nothing of it.
    let started = std::time::Instant::now();
    let mut written = 0;
    while started.elapsed() < Duration::from_secs(1) {
        first
            .send_message(&alice, "alice", &format!("while cut off {written}"))
            .await
            .unwrap();
        written += 1;
    }
    let third = nodes[2].client();
    let behind = third.cluster_info().await.unwrap().commit_index;
    assert!(behind < first.cluster_info().await.unwrap().commit_index);

    // 2. Healed: node 1 still leads, in the term it had, and node 3 follows it again.
    setup.faults.heal();
    eventually("node 3 follows node 1 again", || async {
        matches!(third.cluster_info().await, Ok(info) if info.leader_id == Some(1))
    })
    .await;
    let info = first.cluster_info().await.unwrap();
    assert_eq!(info.leader_id, Some(1));
    assert_eq!(info.term, term_before, "the healthy leader kept its term");
    first.sign_up("carol", "pw").await.unwrap();
    assert_identical(&nodes, &first).await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leader_sends_log_ins_to_it_instead_of_judging_them() {
    // 1. Three nodes, node 1 leading; node 3 is cut off, so it misses what follows.
    let dir = tempfile::tempdir().unwrap();
    let setup = faulty();
    let (nodes, first, _alice) = led_by_node_1(dir.path(), 3, &setup).await;
    setup.faults.isolate(3, &[1, 2]);

    // 2. Carol signs up through the leader; node 3 has not applied it.
    first.sign_up("carol", "pw-carol").await.unwrap();

    // 3. A log-in sent to node 3 is not refused as wrong credentials (node 3 cannot know):
    //    it is sent on to the leader (UNAVAILABLE, NOT-LEADER).
    let mut raw = ChatClient::connect(format!("http://{}", nodes[2].address))
        .await
        .unwrap();
    let refused = raw
        .log_in(jochat_proto::v1::LogInRequest {
            username: "carol".into(),
            password: jochat_client::hash_password("pw-carol"),
            ..Default::default()
        })
        .await
        .expect_err("a follower does not log anyone in");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().starts_with("not the leader"),
        "{}",
        refused.message()
    );

    // 4. The failover client given only node 3 and node 2 logs Carol in all the same.
    let client = jochat_client::ChatServerClient::builder()
        .servers([nodes[2].address.clone(), nodes[1].address.clone()])
        .build()
        .unwrap();
    client.log_in("carol", "pw-carol").await.unwrap();
    setup.faults.heal();
    stop_all(nodes).await;
}

/// The last index in the log files of the node whose database is at `path` (0 for an empty
/// log), read without touching them.
fn last_log_index(path: &std::path::Path) -> u64 {
    jochat_node::raft::log_file::last_index_in(&jochat_node::raft::storage::log_dir_of(path))
        .expect("the log's files can be read")
        .unwrap_or(0)
}

/// The leader's own log write overlaps replication, and no follower hears an entry committed
/// before the leader's copy is durable: with the leader's next fsync held for 4 s, a send
/// reaches both followers' files at once, but no follower applies it and the sender has no
/// answer while the leader's commit waits; once it is done, the send is answered and every
/// node applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_hear_of_a_commit_only_once_the_leaders_own_copy_is_durable() {
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let setup = faulty();
    let (nodes, first, alice) = led_by_node_1(dir.path(), 3, &setup).await;
    let before = first.cluster_info().await.unwrap().commit_index;
    wait_applied(&nodes, before).await;
    let applied = |node: &ClusterNode| {
        let client = node.client();
        async move { client.cluster_info().await.map(|info| info.commit_index) }
    };

    let stall = Duration::from_secs(4);
    assert!(setup.faults.stall_next_write(1, stall));
    let stalled_at = Instant::now();
    let sending = tokio::spawn({
        let (client, alice) = (first.clone(), alice.clone());
        async move { client.send_message(&alice, "bob", "held").await }
    });

    // 1. Replication does not wait for the leader's fsync.
    eventually(
        "both followers hold the new entry in their files",
        || async {
            nodes[1..]
                .iter()
                .all(|node| last_log_index(&node.db) > before)
        },
    )
    .await;
    let replicated_after = stalled_at.elapsed();
    assert!(
        replicated_after < Duration::from_secs(2),
        "the entry reached the followers only after {replicated_after:?}: replication waited for the leader's fsync"
    );

    // 2. While the leader's copy is not durable, no follower applies the entry and the
    //    sender has no answer. (The stall started after `stalled_at`, so it lasts at least
    //    until `stalled_at + stall`; the last second is left out.)
    while stalled_at.elapsed() < stall - Duration::from_secs(1) {
        for node in &nodes[1..] {
            let index = applied(node).await.expect("a follower answers ClusterInfo");
            assert!(
                index <= before,
                "node {} applied up to {index} while the leader's copy of {} was not durable",
                node.id,
                before + 1
            );
        }
        assert!(
            !sending.is_finished(),
            "the send was answered while the leader's copy was not durable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3. Then the send is answered and every node applies it.
    let stored = tokio::time::timeout(Duration::from_secs(30), sending)
        .await
        .expect("the send is answered once the leader's fsync is done")
        .expect("the sending task runs to the end");
    stored.expect("the message is stored");
    let after = first.cluster_info().await.unwrap().commit_index;
    assert!(after > before);
    wait_applied(&nodes, after).await;
    stop_all(nodes).await;
}

/// The leader answers a write once the write's statements have run and its own copy of the
/// entry is durable, before the apply's transaction commits; a read on the leader that starts
/// after that answer waits for the commit and sees the write. With the leader's next apply
/// commit held for 3 s: the send is answered at once, the inbox read right after it comes
/// back only once the commit is done, and it holds the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_answers_before_its_apply_commits_and_its_reads_wait_for_that_commit() {
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let setup = faulty();
    let (nodes, first, alice) = led_by_node_1(dir.path(), 3, &setup).await;
    let bob = first.log_in("bob", "pw").await.unwrap().token;
    let before = first.cluster_info().await.unwrap().commit_index;
    wait_applied(&nodes, before).await;

    let stall = Duration::from_secs(3);
    assert!(setup.faults.stall_next_apply_commit(1, stall));
    let stalled_at = Instant::now();
    let sent = first
        .send_message(&alice, "bob", "answered early")
        .await
        .expect("the message is stored");
    let answered_after = stalled_at.elapsed();
    assert!(
        answered_after < Duration::from_secs(2),
        "the send was answered only after {answered_after:?}: it waited for the apply's commit"
    );

    let page = first
        .list_messages(&bob, &jochat_client::InboxQuery::new().limit(10))
        .await
        .expect("bob's inbox reads");
    let read_after = stalled_at.elapsed();
    assert!(
        read_after >= stall,
        "the read came back after {read_after:?}, before the held commit ({stall:?}) was done"
    );
    assert!(
        page.messages.iter().any(|m| m.id == sent.id),
        "the answered message is missing from the read after it: {:?}",
        page.messages
    );
    stop_all(nodes).await;
}

/// A failed fsync on the leader (injected into its log writer): the node stops (its `serve`
/// fails with the storage fault, which makes `jochat-node` exit non-zero), the others elect a
/// leader, writers through the failover client see only slower calls, and the node restarted
/// on its file catches up: no acknowledged write lost or doubled, identical files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_leader_and_the_cluster_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let setup = faulty();
    let (mut nodes, _, alice) = led_by_node_1(dir.path(), 3, &setup).await;
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let client = jochat_client::ChatServerClient::builder()
        .servers(addresses.clone())
        .deadline(Duration::from_secs(30))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let (client, alice) = (client.clone(), alice.clone());
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let content = format!("w{writer}-{n}");
                    client.send_message(&alice, "bob", &content).await?;
                    acknowledged.lock().unwrap().push(content);
                    n += 1;
                }
                Ok::<(), jochat_client::ClientError>(())
            })
        })
        .collect();
    let count = || acknowledged.lock().unwrap().len();
    eventually("the writers are under way", || async { count() > 30 }).await;

    // The leader's next commit fails as a failed fsync: it stops by itself.
    assert!(setup.faults.fail_next_write(1));
    let first = nodes.remove(0);
    let exited = tokio::time::timeout(Duration::from_secs(30), first.exited())
        .await
        .expect("the leader stops within 30 s");
    assert!(
        matches!(&exited, Err(jochat_node::NodeError::Stopped(reason)) if reason.contains("fsync")),
        "{exited:?}"
    );
    let written = count();
    eventually("the others carry on", || async { count() > written + 30 }).await;

    // Restarted on its file and address, it catches up.
    let listener = tokio::net::TcpListener::bind(&addresses[0]).await.unwrap();
    let peers = (2..=3)
        .map(|id| jochat_node::config::Peer {
            id,
            address: addresses[id as usize - 1].clone(),
        })
        .collect();
    nodes.insert(0, start_node(dir.path(), 1, listener, peers, &setup));
    let written = count();
    eventually("writes go on with node 1 back", || async {
        count() > written + 30
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer
            .await
            .unwrap()
            .expect("writers see slower calls, never a final error");
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    eventually(
        "every file holds the same rows, each acknowledged write once",
        || async {
            let dumps: Vec<_> = nodes.iter().map(|n| dump_file(&n.db)).collect();
            let contents: Vec<&str> = dumps[0]
                .messages
                .iter()
                .map(|m| m.content.as_str())
                .collect();
            let every_once = acknowledged
                .iter()
                .all(|c| contents.iter().filter(|held| **held == c.as_str()).count() == 1);
            every_once && dumps.iter().all(|d| *d == dumps[0])
        },
    )
    .await;
    for node in nodes {
        node.stop().await;
    }
}

/// A value changed behind the back of one follower's database (a damaged page would do the
/// same): the leader's periodic state check finds that follower's hash different from the
/// majority's, raises the alarm (log, ClusterInfo on the leader and on the follower), and the
/// follower refuses reads; restarted with `--rebuild` it leaves, sets its file aside, joins
/// again from the leader's snapshot and log, and the next check finds every member equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_follower_is_found_by_the_state_check_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        state_check_secs: Some(1),
        ..Setup::default()
    };
    let (mut nodes, first, alice) = led_by_node_1(dir.path(), 3, &setup).await;
    for n in 0..20 {
        first
            .send_message(&alice, "bob", &format!("before {n}"))
            .await
            .unwrap();
    }
    let target = first.cluster_info().await.unwrap().commit_index;
    let third = nodes[2].client();
    eventually("node 3 has applied everything", || async {
        matches!(third.cluster_info().await, Ok(info) if info.commit_index >= target)
    })
    .await;
    eventually("a check finds every member equal", || async {
        matches!(first.cluster_info().await, Ok(info) if info.alarms.is_empty())
    })
    .await;

    // One row of node 3's file changes behind its back.
    rusqlite::Connection::open(&nodes[2].db)
        .unwrap()
        .execute(
            "UPDATE messages SET content = 'tampered' WHERE id = (SELECT min(id) FROM messages)",
            [],
        )
        .unwrap();
    let alarm = eventually_some("the leader raises the alarm for node 3", || async {
        let info = first.cluster_info().await.ok()?;
        info.alarms.into_iter().find(|a| a.starts_with("node 3 "))
    })
    .await;
    assert!(alarm.contains("--rebuild"), "{alarm}");
    eventually("node 3 knows its own alarm", || async {
        matches!(third.cluster_info().await, Ok(info) if info.node_id == 3 && !info.alarms.is_empty())
    })
    .await;
    // UNAVAILABLE is retried until the deadline: a short one, but long enough for a first
    // answer on a loaded machine (the client reports DeadlineExceeded only when no attempt
    // came back before it).
    let read = jochat_client::ChatServerClient::builder()
        .servers([nodes[2].address.clone()])
        .discover_members(false)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
        .list_messages(
            &alice,
            &jochat_client::InboxQuery::default()
                .consistency(jochat_client::ReadConsistency::Stale),
        )
        .await;
    assert!(
        matches!(&read, Err(jochat_client::ClientError::Unavailable(m)) if m.contains("differs")),
        "{read:?}"
    );

    // Rebuilt: it leaves, sets its file aside, joins again and catches up.
    let address = nodes[2].address.clone();
    let old = nodes.pop().unwrap();
    old.stop().await;
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    let peers = (1..=2)
        .map(|id| jochat_node::config::Peer {
            id,
            address: nodes[id as usize - 1].address.clone(),
        })
        .collect();
    let rebuild = Setup {
        rebuild: true,
        ..setup.clone()
    };
    nodes.push(start_node(dir.path(), 3, listener, peers, &rebuild));
    // Whichever node leads by then: a loaded machine may have moved leadership meanwhile.
    eventually(
        "node 3 is a voter with the cluster's state, and no node shows an alarm",
        || async {
            let mut clean = true;
            for node in &nodes {
                clean &= matches!(node.client().cluster_info().await, Ok(info) if info.alarms.is_empty());
            }
            let Ok(info) = first.cluster_info().await else {
                return false;
            };
            let voters = info
                .members
                .iter()
                .filter(|m| m.role == jochat_client::MemberRole::Voter)
                .count();
            clean
                && info.leader_id.is_some()
                && voters == 3
                && dump_file(&nodes[2].db) == dump_file(&nodes[0].db)
        },
    )
    .await;
    let set_aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .any(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("node-3.db.rebuilt-")
        });
    assert!(set_aside, "the damaged file is kept beside the new one");
    for node in nodes {
        node.stop().await;
    }
}
