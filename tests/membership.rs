//! Cluster membership through the client library (what `jochat cluster add/remove` runs): a
//! node is added with the cluster secret and refused without it, members are removed (a
//! follower, then the leader itself) while the cluster keeps taking writes, and unknown ids
//! are refused by name. After losing a majority for good, `--force-new-cluster` makes a
//! survivor the only member of a new cluster with all its data, and the cluster grows again.

use jochat_testkit as common;

use common::cluster::*;
use jochat_client::{ClientError, MemberRole};
use jochat_node::config::Peer;
use tokio::net::TcpListener;

const SECRET: &str = "membership-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_with_the_cluster_secret() {
    // 1. Three nodes with a cluster secret, led by node 1.
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        cluster_secret: Some(SECRET.into()),
        ..Setup::default()
    };
    let (mut nodes, first, alice) = led_by_node_1(dir.path(), 3, &setup).await;

    // 2. Node 4 starts empty, listing node 1. Adding it without the secret is refused; with
    //    it, the call returns once node 4 is a voter.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = vec![Peer {
        id: 1,
        address: nodes[0].address.clone(),
    }];
    nodes.push(start_node(dir.path(), 4, listener, peers, &setup));
    let fourth = nodes[3].address.clone();
    let refused = first.add_member(4, &fourth, None).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::PermissionDenied(ref m) if m.contains("cluster secret")),
        "{refused}"
    );
    first.add_member(4, &fourth, Some(SECRET)).await.unwrap();
    let info = first.cluster_info().await.unwrap();
    assert!(
        info.members
            .iter()
            .any(|m| m.id == 4 && m.role == MemberRole::Voter),
        "{info:?}"
    );

    // 3. Bad input names the field; an unknown member is NOT_FOUND.
    let bad = first
        .add_member(0, &fourth, Some(SECRET))
        .await
        .unwrap_err();
    assert!(matches!(bad, ClientError::InvalidArgument(ref m) if m.starts_with("id: ")));
    let unknown = first.remove_member(99, Some(SECRET)).await.unwrap_err();
    assert!(
        matches!(unknown, ClientError::NotFound(ref m) if m == "node_id: 99 is not a member of the cluster"),
        "{unknown}"
    );

    // 4. Node 3 is removed: three members remain and writes go on.
    first.remove_member(3, Some(SECRET)).await.unwrap();
    let ids: Vec<u64> = first
        .cluster_info()
        .await
        .unwrap()
        .members
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [1, 2, 4]);
    first
        .send_message(&alice, "bob", "after removing 3")
        .await
        .unwrap();
    nodes.remove(2).stop().await;

    // 5. The leader removes itself: node 2 (the lowest id left) leads nodes 2 and 4, and
    //    takes writes.
    first.remove_member(1, Some(SECRET)).await.unwrap();
    let second = nodes[1].client();
    eventually("node 2 leads nodes 2 and 4", || async {
        matches!(second.cluster_info().await, Ok(info)
            if info.leader_id == Some(2)
                && info.members.iter().map(|m| m.id).collect::<Vec<_>>() == [2, 4])
    })
    .await;
    eventually("node 2 takes writes", || async {
        second
            .send_message(&alice, "bob", "after removing 1")
            .await
            .is_ok()
    })
    .await;
    let remaining: Vec<ClusterNode> = nodes.drain(1..).collect();
    let target = second.cluster_info().await.unwrap().commit_index;
    wait_applied(&remaining, target).await;
    assert_eq!(dump_file(&remaining[0].db), dump_file(&remaining[1].db));
    stop_all(nodes).await;
    stop_all(remaining).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_forced_into_a_new_cluster_keeps_its_data_and_grows_again() {
    // 1. Three nodes with data everywhere; then the whole cluster is lost but node 3.
    let dir = tempfile::tempdir().unwrap();
    let (nodes, first, alice) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    for i in 0..5 {
        first
            .send_message(&alice, "bob", &format!("m{i}"))
            .await
            .unwrap();
    }
    let target = first.cluster_info().await.unwrap().commit_index;
    wait_applied(&nodes, target).await;
    let third_db = nodes[2].db.clone();
    let before = dump_file(&third_db);
    stop_all(nodes).await;

    // 2. Node 3 restarts alone, on a new port, with --force-new-cluster: it leads a cluster
    //    of one, holds everything it had, and takes writes (the sessions are still valid).
    let forced = Setup {
        force_new_cluster: true,
        ..Setup::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut nodes = vec![start_node(dir.path(), 3, listener, Vec::new(), &forced)];
    let third = nodes[0].client();
    eventually("node 3 leads a cluster of one", || async {
        matches!(third.cluster_info().await, Ok(info)
            if info.leader_id == Some(3) && info.members.len() == 1)
    })
    .await;
    assert_eq!(dump_file(&third_db), before);
    third
        .send_message(&alice, "bob", "after the recovery")
        .await
        .unwrap();

    // 3. A new, empty node 4 joins it, and ends with the same rows.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = vec![Peer {
        id: 3,
        address: nodes[0].address.clone(),
    }];
    nodes.push(start_node(
        dir.path(),
        4,
        listener,
        peers,
        &Setup::default(),
    ));
    eventually("node 4 is a voter", || async {
        matches!(third.cluster_info().await, Ok(info)
            if info.members.iter().any(|m| m.id == 4 && m.role == MemberRole::Voter))
    })
    .await;
    let target = third.cluster_info().await.unwrap().commit_index;
    wait_applied(&nodes, target).await;
    let after = dump_file(&nodes[0].db);
    assert_eq!(after.messages.len(), 6);
    assert_eq!(dump_file(&nodes[1].db), after);
    stop_all(nodes).await;
}
