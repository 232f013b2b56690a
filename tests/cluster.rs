//! Three nodes started together, each listing the other two, form one cluster led by node 1
//! (the lowest id); writes through the leader land as identical rows in all three SQLite
//! files; followers answer writes with NOT-LEADER and the leader's id and address, on
//! `jochat.v1` and on the prototype's service alike; the prototype's ResetDB clears every node.

use jochat_testkit as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use jochat_node::config::Peer;
use jochat_proto::legacy::chat_service_client::ChatServiceClient;
use jochat_proto::v1::chat_client::ChatClient;
use tokio::net::TcpListener;

fn setup(admin_user: Option<&str>) -> Setup {
    Setup {
        admin_user: admin_user.map(str::to_owned),
        ..Setup::default()
    }
}

/// Starts `count` nodes on ephemeral ports, each listing all the others as peers.
async fn start_cluster(dir: &Path, count: u64, admin_user: Option<&str>) -> Vec<ClusterNode> {
    start_cluster_with(dir, count, &setup(admin_user)).await
}

/// Starts one node per entry of `peer_lists` (node ids from 1), each listing the given peers.
async fn start_nodes(
    dir: &Path,
    peer_lists: &[Vec<u64>],
    admin_user: Option<&str>,
) -> Vec<ClusterNode> {
    start_nodes_with(dir, peer_lists, None, &setup(admin_user)).await
}

fn dump(path: &Path) -> jochat_core::store::StateDump {
    dump_file(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_form_one_cluster_led_by_node_1() {
    // 1. Start three nodes at once, each listing the other two.
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3, None).await;
    let leader = nodes[0].client();

    // 2. One cluster of three, led by node 1, as every node sees it.
    for node in &nodes {
        let client = node.client();
        eventually("every node sees node 1 leading three members", || async {
            matches!(client.cluster_info().await, Ok(info) if info.leader_id == Some(1) && info.members.len() == 3)
        })
        .await;
    }

    // 3. Writes through the leader.
    leader.sign_up("alice", "pw-a").await.unwrap();
    leader.sign_up("bob", "pw-b").await.unwrap();
    let alice = leader.log_in("alice", "pw-a").await.unwrap();
    for i in 0..5 {
        leader
            .send_message(&alice.token, "bob", &format!("m{i}"))
            .await
            .unwrap();
    }

    // 4. Every node applies as far as the leader, and the files hold identical rows.
    let target = leader.cluster_info().await.unwrap().commit_index;
    for node in &nodes[1..] {
        let client = node.client();
        eventually("the follower applied everything", || async {
            matches!(client.cluster_info().await, Ok(info) if info.commit_index >= target)
        })
        .await;
    }
    let first = dump(&nodes[0].db);
    assert_eq!(first.messages.len(), 5);
    for node in &nodes[1..] {
        assert_eq!(
            dump(&node.db),
            first,
            "node {} differs from node 1",
            node.id
        );
    }

    // 5. A follower answers a write with NOT-LEADER naming the leader.
    let mut raw = ChatClient::connect(format!("http://{}", nodes[1].address))
        .await
        .unwrap();
    let refused = raw
        .sign_up(jochat_proto::v1::SignUpRequest {
            username: "carol".into(),
            password: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        refused.message(),
        format!(
            "not the leader: the leader is node 1 at {}",
            nodes[0].address
        )
    );
    assert_eq!(refused.metadata().get("jochat-leader-id").unwrap(), "1");
    assert_eq!(
        refused
            .metadata()
            .get("jochat-leader-addr")
            .unwrap()
            .to_str()
            .unwrap(),
        nodes[0].address
    );

    // 6. The prototype's service: NOT_LEADER from a follower, ClusterInfo "ok" only on the leader.
    let mut old_follower = ChatServiceClient::connect(format!("http://{}", nodes[2].address))
        .await
        .unwrap();
    // The leader check comes first, as in the prototype: empty fields too are NOT_LEADER.
    for (username, password) in [("dave", "x"), ("", "")] {
        let signup = old_follower
            .signup(jochat_proto::legacy::SignupRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (signup.status.as_str(), signup.msg.as_str()),
            ("error", "NOT_LEADER"),
            "{username:?}"
        );
    }
    let info = old_follower
        .cluster_info(jochat_proto::legacy::EmptyRequest { auth_token: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.status.as_str(), info.msg.as_str()),
        ("error", "NOT_LEADER")
    );
    assert_eq!(info.servers.len(), 3);
    assert_eq!(info.leader.unwrap().server_id, 1);
    let mut old_leader = ChatServiceClient::connect(format!("http://{}", nodes[0].address))
        .await
        .unwrap();
    let info = old_leader
        .cluster_info(jochat_proto::legacy::EmptyRequest { auth_token: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.status.as_str(), info.msg.as_str()),
        ("ok", "Success. There is a leader.")
    );

    // 7. Stop every node and wait for each.
    stop_all(nodes).await;
}

/// The prototype's ResetDB with `token`, sent to whichever node leads (again, should it answer
/// NOT_LEADER because leadership moved meanwhile).
async fn legacy_reset_at_leader(
    nodes: &[ClusterNode],
    token: &str,
) -> jochat_proto::legacy::GenericResponse {
    loop {
        let leader = running_leader(nodes).await;
        let address = &nodes[leader as usize - 1].address;
        let mut old = ChatServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let reply = old
            .reset_db(jochat_proto::legacy::EmptyRequest {
                auth_token: Some(token.to_owned()),
            })
            .await
            .unwrap()
            .into_inner();
        if reply.msg != "NOT_LEADER" {
            return reply;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_db_by_the_administrator_clears_every_node() {
    // 1. A three-node cluster whose administrator is "root", with some data.
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3, Some("root")).await;
    let leader = nodes[0].client();
    wait_for_leader(&leader, 1, 3).await;
    // Accounts and sessions through the client library, which follows the leader should a
    // loaded machine move it; the reset itself through the prototype's service.
    leader.sign_up("alice", "pw").await.unwrap();
    leader.sign_up("root", "root-pw").await.unwrap();
    let alice = leader.log_in("alice", "pw").await.unwrap().token;
    let root = leader.log_in("root", "root-pw").await.unwrap().token;

    // 2. A normal user is refused; the administrator's reset is replicated to every node.
    let refused = legacy_reset_at_leader(&nodes, alice.as_str()).await;
    assert_eq!(
        (refused.status.as_str(), refused.msg.as_str()),
        ("error", "only the administrator may reset the database")
    );
    let reset = legacy_reset_at_leader(&nodes, root.as_str()).await;
    assert_eq!(
        (reset.status.as_str(), reset.msg.as_str()),
        ("ok", "Database reset successfully")
    );
    for node in &nodes {
        eventually(&format!("node {} applied the reset", node.id), || async {
            let state = dump(&node.db);
            state.users.is_empty() && state.sessions.is_empty() && state.messages.is_empty()
        })
        .await;
    }

    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prototypes_start_order_forms_one_three_node_cluster() {
    // 1. As the prototype's README starts them: 1 alone, 2 listing 1, 3 listing 1 and 2.
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &[vec![], vec![1], vec![1, 2]], None).await;
    let leader = nodes[0].client();

    // 2. Nodes 2 and 3 join through node 1 (learner, then voter): one cluster of three voters.
    eventually("three voters, led by node 1", || async {
        matches!(leader.cluster_info().await, Ok(info) if info.leader_id == Some(1)
            && info.members.len() == 3
            && info.members.iter().all(|m| m.role == jochat_client::MemberRole::Voter))
    })
    .await;

    // 3. Writes reach all three files.
    leader.sign_up("alice", "pw").await.unwrap();
    let target = leader.cluster_info().await.unwrap().commit_index;
    for node in &nodes {
        let client = node.client();
        eventually("the node applied the sign-up", || async {
            matches!(client.cluster_info().await, Ok(info) if info.commit_index >= target)
        })
        .await;
        assert_eq!(dump(&node.db).users.len(), 1, "node {}", node.id);
    }

    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_writes_are_refused_quickly_and_stale_reads_still_work() {
    // 1. A cluster of three with some data.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 3, None).await;
    let leader = nodes[0].client();
    wait_for_leader(&leader, 1, 3).await;
    leader.sign_up("alice", "pw").await.unwrap();
    leader.sign_up("bob", "pw").await.unwrap();
    let alice = leader.log_in("alice", "pw").await.unwrap();
    let bob = leader.log_in("bob", "pw").await.unwrap();
    let sent = leader
        .send_message(&alice.token, "bob", "before")
        .await
        .unwrap();
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();

    // 2. Two nodes stop; node 1 is alone.
    let stopped: Vec<ClusterNode> = nodes.drain(1..).collect();
    stop_all(stopped).await;

    // 3. Writes are refused with "no quorum", quickly, once the leader notices.
    let raw = ChatClient::connect(format!("http://{}", nodes[0].address))
        .await
        .unwrap();
    let write = || {
        let mut raw = raw.clone();
        let token = alice.token.as_str().to_owned();
        async move {
            let request = jochat_proto::v1::SendMessageRequest {
                recipient: "bob".into(),
                content: "after".into(),
                ..Default::default()
            };
            raw.send_message(common::authorized(request, &token)).await
        }
    };
    eventually("the lone node refuses writes with no quorum", || async {
        matches!(write().await, Err(status) if status.code() == tonic::Code::Unavailable && status.message().starts_with("no quorum: "))
    })
    .await;
    let started = Instant::now();
    let refused = write().await.unwrap_err();
    assert!(
        refused
            .message()
            .starts_with("no quorum: no majority of the cluster has answered"),
        "{}",
        refused.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused quickly: {:?}",
        started.elapsed()
    );

    // 4. Stale reads work; linearizable reads are refused the same way.
    let stale = jochat_proto::v1::ListMessagesRequest {
        consistency: jochat_proto::v1::ReadConsistency::Stale as i32,
        ..Default::default()
    };
    let bob = bob.token.as_str();
    let mut reader = raw.clone();
    let page = reader
        .list_messages(common::authorized(stale, bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages[0].id, sent.id);
    let fresh = reader
        .list_messages(common::authorized(
            jochat_proto::v1::ListMessagesRequest::default(),
            bob,
        ))
        .await
        .unwrap_err();
    assert!(
        fresh.message().starts_with("no quorum: "),
        "{}",
        fresh.message()
    );

    // 5. Node 2 comes back on its address and database: writes resume (on whichever of the
    //    two leads), nothing is lost.
    let listener = TcpListener::bind(&addresses[1]).await.unwrap();
    let peers = vec![
        Peer {
            id: 1,
            address: addresses[0].clone(),
        },
        Peer {
            id: 3,
            address: addresses[2].clone(),
        },
    ];
    nodes.push(start_node(
        dir.path(),
        2,
        listener,
        peers,
        &Setup::default(),
    ));
    // Either node may lead now: node 1 if its log is ahead (a write it took before it saw it
    // was alone), or node 2, which node 1 votes for when their logs are equal and node 1 has
    // been cut off for longer than a leader counts as alive (`raft::election`). A client
    // that knows both finds whichever leads.
    let both = jochat_client::ChatServerClient::builder()
        .servers([addresses[0].clone(), addresses[1].clone()])
        .discover_members(false)
        .build()
        .unwrap();
    eventually("writes are accepted again", || async {
        both.send_message(&alice.token, "bob", "after")
            .await
            .is_ok()
    })
    .await;
    // The leader's commit index holds the write; a follower's may lag behind it.
    let mut target = 0;
    for node in &nodes {
        target = target.max(node.client().cluster_info().await.unwrap().commit_index);
    }
    let restarted = nodes[1].client();
    eventually("node 2 caught up", || async {
        matches!(restarted.cluster_info().await, Ok(info) if info.commit_index >= target)
    })
    .await;
    let contents: Vec<String> = dump(&nodes[1].db)
        .messages
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents.first().map(String::as_str), Some("before"));
    assert!(
        contents.iter().skip(1).all(|c| c == "after") && contents.len() >= 2,
        "{contents:?}"
    );

    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarted_on_its_files_has_all_its_data_back() {
    // 1. A cluster of three with data, then every node stopped.
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), 3, None).await;
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let leader = nodes[0].client();
    wait_for_leader(&leader, 1, 3).await;
    leader.sign_up("alice", "pw").await.unwrap();
    leader.sign_up("bob", "pw").await.unwrap();
    let alice = leader.log_in("alice", "pw").await.unwrap();
    for i in 0..10 {
        leader
            .send_message(&alice.token, "bob", &format!("m{i}"))
            .await
            .unwrap();
    }
    let before = dump(&nodes[0].db);
    stop_all(nodes).await;

    // 2. All three restarted on the same files and addresses: node 1 leads again, every file
    //    holds the same rows as before, and the cluster takes writes.
    let nodes = start_nodes_with(
        dir.path(),
        &all_others(3),
        Some(&addresses),
        &Setup::default(),
    )
    .await;
    let leader = nodes[0].client();
    eventually("node 1 leads again", || async {
        matches!(leader.cluster_info().await, Ok(info) if info.leader_id == Some(1))
    })
    .await;
    // A follower applies what was committed before the stop once the new leader tells it the
    // commit index, so wait for every file to converge.
    for node in &nodes {
        let db = node.db.clone();
        let before = before.clone();
        eventually(
            "the node's file matches the cluster's state before the restart",
            || {
                let db = db.clone();
                let before = before.clone();
                async move { dump(&db) == before }
            },
        )
        .await;
    }
    let bob = leader.log_in("bob", "pw").await.unwrap();
    assert_eq!(bob.unread_count, 10);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_leaders_stopped_in_a_row() {
    // 1. Five nodes, each listing the others, and two accounts.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), 5, None).await;
    let first = running_leader(&nodes).await;
    let leader = nodes.iter().find(|n| n.id == first).unwrap().client();
    leader.sign_up("alice", "pw").await.unwrap();
    leader.sign_up("bob", "pw").await.unwrap();
    let token = leader.log_in("alice", "pw").await.unwrap().token;

    // 2. Twice: write through the leader until acknowledged, then stop it.
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let leader_id = running_leader(&nodes).await;
        let position = nodes.iter().position(|n| n.id == leader_id).unwrap();
        let leader = nodes[position].client();
        // The new leader may still be settling: retry until the write is acknowledged.
        let deadline = Instant::now() + Duration::from_secs(30);
        let sent = loop {
            match leader
                .send_message(&token, "bob", &format!("round {round}"))
                .await
            {
                Ok(sent) => break sent,
                Err(error) => assert!(Instant::now() < deadline, "no write acknowledged: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acknowledged.push(sent.id);
        if round < 2 {
            nodes.remove(position).stop().await;
        }
    }

    // 3. The three survivors hold every acknowledged write.
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        let db = node.db.clone();
        let wanted = acknowledged.clone();
        eventually("the survivor holds every acknowledged write", || {
            let db = db.clone();
            let wanted = wanted.clone();
            async move {
                let ids: Vec<i64> = dump(&db).messages.iter().map(|m| m.id.0).collect();
                wanted.iter().all(|id| ids.contains(id))
            }
        })
        .await;
    }
    stop_all(nodes).await;
}

/// Followers apply in paced groups, each taking everything committed by then: under 8
/// writers for 3 s they do not fall behind, and once the writes stop every follower has
/// applied the leader's last index within 5 s. (Were each of openraft's apply calls paced on
/// its own, one per commit index a follower heard, the backlog would take minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_up_with_sustained_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader, alice) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let until = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (client, alice) = (leader.clone(), alice.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < until {
                    client
                        .send_message(&alice, "bob", &format!("w{writer}-{sent}"))
                        .await
                        .expect("a send succeeds");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for writer in writers {
        sent += writer.await.expect("the writer runs to the end");
    }
    assert!(sent > 100, "only {sent} sends in 3 s");
    let last = leader.cluster_info().await.unwrap().commit_index;
    let stopped = Instant::now();
    for node in &nodes[1..] {
        let client = node.client();
        while !matches!(client.cluster_info().await, Ok(info) if info.commit_index >= last) {
            assert!(
                stopped.elapsed() < Duration::from_secs(5),
                "node {} had not applied index {last} 5 s after {sent} sends stopped",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_all(nodes).await;
}
