//! The failover client against real `jochat-node` processes: one client sends 200 messages
//! while the leader is killed with SIGKILL mid-stream; every send succeeds, and each message
//! is stored exactly once on every survivor (prints the slowest send: the pause the client
//! saw). A subscription on a node killed with SIGKILL resumes on another and delivers every
//! message once, in order.

use jochat_testkit::process as support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jochat_client::ChatServerClient;
use support::*;

const SENDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sends_through_a_leader_kill_all_succeed_exactly_once() {
    // 1. Three processes; a client that knows all three.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _, bob) = started_in_order(dir.path(), 3).await;
    let client = ChatServerClient::builder()
        .servers(nodes.iter().map(|n| n.address().to_owned()))
        .build()
        .unwrap();
    client.sign_up("carol", "pw").await.unwrap();
    let carol = client.log_in("carol", "pw").await.unwrap().token;

    // 2. Once 50 sends are done, the leader is killed while the next is in flight.
    let done = Arc::new(AtomicUsize::new(0));
    let leader = leader_among(&nodes).await;
    let position = nodes.iter().position(|n| n.id() == leader).unwrap();
    let mut victim = nodes.remove(position);
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < 50 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            victim.kill();
            victim.id()
        })
    };

    // 3. 200 sends, one after another: every one succeeds.
    let mut ids = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..SENDS {
        let started = Instant::now();
        let sent = client
            .send_message(&carol, "bob", &format!("m{i}"))
            .await
            .unwrap_or_else(|e| panic!("send {i} failed: {e}"));
        slowest = slowest.max(started.elapsed());
        ids.push(sent.id);
        done.fetch_add(1, Ordering::Relaxed);
    }
    let killed = killer.await.unwrap();
    eprintln!(
        "killed node {killed}; slowest of {SENDS} sends (the pause the client saw): {} ms",
        slowest.as_millis()
    );

    // 4. Each survivor holds exactly the 200 messages, once each, with the acknowledged ids.
    let mut expected = ids.clone();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(expected.len(), SENDS, "two sends got the same id");
    for node in &nodes {
        let what = format!("node {} holds every message once", node.id());
        poll(&what, || async {
            let stored = stale_ids(node, &bob).await.map(|mut ids| {
                ids.sort_unstable();
                ids
            });
            stored.as_ref() == Some(&expected)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_on_a_killed_node_resumes_elsewhere_without_gap_or_duplicate() {
    // 1. Three processes; dave subscribes through node 3 (his client tries it first).
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _, _) = started_in_order(dir.path(), 3).await;
    let writer = ChatServerClient::builder()
        .servers(nodes.iter().map(|n| n.address().to_owned()))
        .build()
        .unwrap();
    writer.sign_up("dave", "pw").await.unwrap();
    writer.sign_up("erin", "pw").await.unwrap();
    let erin = writer.log_in("erin", "pw").await.unwrap().token;
    let dave = writer.log_in("dave", "pw").await.unwrap().token;
    // A client that knows no leader and has made no call: its stream goes to node 3.
    let reader = ChatServerClient::builder()
        .servers([nodes[2].address().to_owned(), nodes[1].address().to_owned()])
        .discover_members(false)
        .build()
        .unwrap();
    let mut stream = reader.subscribe(&dave, 0);
    loop {
        writer.send_message(&erin, "dave", "ping").await.unwrap();
        let arrived = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        if let Ok(item) = arrived {
            item.expect("the stream is open").expect("a message");
            break;
        }
    }

    // 2. Erin sends 100 messages; after the 30th, node 3 is killed with SIGKILL.
    let third = nodes.remove(2);
    let sending = tokio::spawn(async move {
        let mut third = Some(third);
        for i in 0..100 {
            writer
                .send_message(&erin, "dave", &format!("m{i}"))
                .await
                .unwrap();
            if i == 30 {
                let mut killed = third.take().expect("killed once");
                killed.kill();
            }
        }
    });

    // 3. Dave's stream has every one of them, once, in order.
    let mut contents = Vec::new();
    let mut last_id = 0;
    while contents.len() < 100 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("messages keep coming")
            .expect("the stream is open")
            .expect("a message");
        assert!(message.id > last_id, "ids in order, once each");
        last_id = message.id;
        if message.content != "ping" {
            contents.push(message.content);
        }
    }
    sending.await.unwrap();
    let expected: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(contents, expected);
    assert!(
        stream.resumptions() >= 1,
        "the stream moved off the killed node"
    );
}
