//! Clusters of real `jochat-node` processes killed with SIGKILL:
//!
//! - three nodes, the leader killed while a client writes: a survivor takes over and every
//!   acknowledged write is on both survivors; prints the pause the client saw (kill → first
//!   acknowledged write);
//! - five nodes, two leaders killed in a row: writes continue, nothing acknowledged is lost;
//! - three nodes, two killed: the survivor refuses writes with "no quorum" and serves stale
//!   reads; one restarted on its file and port → writes resume, nothing lost;
//! - three nodes all killed and restarted on their files and ports: node 1 leads again and
//!   every write is back;
//! - three nodes on different runtimes (`--runtime-threads` 2, 1 and 4): they form one
//!   cluster, and with the leader killed the others keep every acknowledged write.

use jochat_testkit::process as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jochat_proto::v1;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_while_clients_write_loses_no_acknowledged_write() {
    // 1. Three processes, started in the prototype's order, led by node 1.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, alice, bob) = started_in_order(dir.path(), 3).await;
    let addresses: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| (n.id(), n.address().to_owned()))
        .collect();

    // 2. Four clients write continuously, each write retried (same idempotency key) through
    //    any node until acknowledged; each acknowledgement is timed.
    let stop = Arc::new(AtomicBool::new(false));
    // (message id, node that acknowledged it, when).
    let acknowledged = Arc::new(Mutex::new(Vec::<(i64, u64, Instant)>::new()));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            let (addresses, alice) = (addresses.clone(), alice.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let content = format!("w{writer}-{n}");
                    let (id, by) = send_through(&addresses, &alice, &content).await;
                    acknowledged.lock().unwrap().push((id, by, Instant::now()));
                    n += 1;
                }
            })
        })
        .collect();

    // 3. Once writes flow, SIGKILL the leader; let the writers go on until some writes are
    //    acknowledged after the kill.
    poll("writes are flowing", || async {
        acknowledged.lock().unwrap().len() >= 40
    })
    .await;
    let mut first = nodes.remove(0);
    first.kill();
    let killed = Instant::now();
    poll("survivors acknowledge writes after the kill", || async {
        acknowledged
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, by, _)| *by != 1)
            .count()
            >= 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    // Replies node 1 sent just before it died may arrive after the kill: the pause ends with
    // the first write a survivor acknowledged.
    let resumed = acknowledged
        .iter()
        .filter(|(_, by, _)| *by != 1)
        .map(|(_, _, at)| *at)
        .min()
        .expect("writes after the kill");
    eprintln!(
        "failover pause (SIGKILL of the leader -> first write acknowledged by a survivor): {} ms",
        (resumed - killed).as_millis()
    );

    // 4. A survivor leads: node 2 whenever its log was as complete as node 3's when node 1
    //    died (Raft refuses a less complete one); node 3 otherwise.
    let leader = leader_among(&nodes).await;
    eprintln!("new leader: node {leader}");

    // 5. Every acknowledged write is on both survivors, once.
    let ids: Vec<i64> = acknowledged.iter().map(|(id, _, _)| *id).collect();
    for node in &nodes {
        let what = format!("node {} has every acknowledged write", node.id());
        poll(&what, || async {
            matches!(stale_ids(node, &bob).await, Some(stored)
                if ids.iter().all(|id| stored.contains(id)))
        })
        .await;
        let stored = stale_ids(node, &bob).await.unwrap();
        let mut unique = stored.clone();
        unique.dedup();
        assert_eq!(
            unique.len(),
            stored.len(),
            "node {}: a message id twice",
            node.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_lose_two_leaders_to_sigkill_and_keep_every_acknowledged_write() {
    // 1. Five processes led by node 1.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, alice, bob) = started_in_order(dir.path(), 5).await;

    // 2. Three times: a write acknowledged through the cluster; twice the leader is then
    //    killed with SIGKILL.
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        acknowledged.push(send_until_acknowledged(&nodes, &alice, &format!("round{round}")).await);
        if round < 2 {
            let leader = leader_among(&nodes).await;
            let position = nodes.iter().position(|n| n.id() == leader).unwrap();
            let mut killed = nodes.remove(position);
            killed.kill();
            eprintln!("round {round}: killed leader {leader}");
        }
    }

    // 3. The three survivors hold every acknowledged write.
    for node in &nodes {
        let what = format!("node {} has every acknowledged write", node.id());
        poll(&what, || async {
            matches!(stale_ids(node, &bob).await,
                Some(ids) if acknowledged.iter().all(|id| ids.contains(id)))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_two_sigkills_refuses_writes_serves_stale_reads_and_recovers() {
    // 1. Three processes with one acknowledged write.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, alice, bob) = started_in_order(dir.path(), 3).await;
    let before = send_until_acknowledged(&nodes, &alice, "before").await;
    let second_port: u16 = nodes[1]
        .address()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // 2. Nodes 2 and 3 are killed with SIGKILL.
    for mut killed in nodes.drain(1..) {
        killed.kill();
    }

    // 3. Node 1 refuses writes with "no quorum" and still serves stale reads.
    let survivor = client(&nodes[0]).await;
    let write = |content: &'static str| {
        let mut survivor = survivor.clone();
        let alice = alice.clone();
        async move {
            let request = v1::SendMessageRequest {
                recipient: "bob".into(),
                content: content.into(),
                ..Default::default()
            };
            survivor.send_message(authorized(request, &alice)).await
        }
    };
    poll("the survivor refuses writes with no quorum", || async {
        matches!(write("refused").await, Err(status) if status.message().starts_with("no quorum: "))
    })
    .await;
    assert_eq!(stale_ids(&nodes[0], &bob).await, Some(vec![before]));

    // 4. Node 2 restarts on its file and port: writes resume and nothing is lost.
    let peers = vec![(1, nodes[0].address().to_owned())];
    nodes.push(start_on(2, dir.path(), &peers, second_port));
    let after = send_until_acknowledged(&nodes, &alice, "after").await;
    for node in &nodes {
        let what = format!("node {} has both writes", node.id());
        poll(&what, || async {
            matches!(stale_ids(node, &bob).await, Some(ids) if ids.contains(&before) && ids.contains(&after))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_and_restarted_has_its_data_back_with_node_1_leading() {
    // 1. Three processes with acknowledged writes; then all three are killed with SIGKILL.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, alice, bob) = started_in_order(dir.path(), 3).await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        acknowledged.push(send_until_acknowledged(&nodes, &alice, &format!("m{i}")).await);
    }
    let addresses: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| (n.id(), n.address().to_owned()))
        .collect();
    for mut killed in nodes.drain(..) {
        killed.kill();
    }

    // 2. All three restarted on their files and ports, each listing the others.
    for (id, address) in &addresses {
        let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
        let peers: Vec<(u64, String)> = addresses
            .iter()
            .filter(|(other, _)| other != id)
            .cloned()
            .collect();
        nodes.push(start_on(*id, dir.path(), &peers, port));
    }

    // 3. Node 1 leads again; every node has every acknowledged write; writes resume.
    poll("node 1 leads again", || async {
        leader_among(&nodes).await == 1
    })
    .await;
    let after = send_until_acknowledged(&nodes, &alice, "after").await;
    acknowledged.push(after);
    for node in &nodes {
        let what = format!("node {} has every write", node.id());
        poll(&what, || async {
            matches!(stale_ids(node, &bob).await, Some(ids)
                if acknowledged.iter().all(|id| ids.contains(id)))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_either_runtime_form_one_cluster_and_survive_the_leaders_kill() {
    // Node 1 on a multi-threaded runtime of two workers, node 2 on the default current-thread
    // runtime, node 3 on four workers.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, alice, bob) = started_in_order_with(dir.path(), 3, |id| match id {
        1 => vec!["--runtime-threads", "2"],
        3 => vec!["--runtime-threads", "4"],
        _ => Vec::new(),
    })
    .await;
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        acknowledged.push(send_until_acknowledged(&nodes, &alice, &format!("before-{n}")).await);
    }
    let mut first = nodes.remove(0);
    first.kill();
    for n in 0..20 {
        acknowledged.push(send_until_acknowledged(&nodes, &alice, &format!("after-{n}")).await);
    }
    for node in &nodes {
        poll("each survivor holds every acknowledged write", || async {
            stale_ids(node, &bob)
                .await
                .is_some_and(|ids| acknowledged.iter().all(|id| ids.contains(id)))
        })
        .await;
    }
}
