//! Subscribe against in-process clusters: messages arrive live on a follower as soon as it
//! applies them, in order, once each; a subscription resumed from a message id misses nothing
//! and repeats nothing; logging in elsewhere ends the first session's stream with
//! UNAUTHENTICATED; a subscriber that does not read is dropped with RESOURCE_EXHAUSTED while
//! every write still succeeds.

use jochat_testkit as common;

use std::time::Duration;

use common::cluster::*;
use jochat_client::{ChatServerClient, ClientError, MessageStream};

/// Sends pings from `token` to bob until one arrives on `stream`: the subscription is live.
async fn wait_live(
    client: &ChatServerClient,
    token: &jochat_client::SessionToken,
    stream: &mut MessageStream,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        client.send_message(token, "bob", "ping").await.unwrap();
        let arrived = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        match arrived {
            Ok(Some(Ok(_))) => return,
            Ok(Some(Err(error))) => panic!("the stream failed: {error}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never went live"
        );
    }
}

/// The next item of `stream`, failing the test after 30 s.
async fn next(stream: &mut MessageStream) -> Option<Result<jochat_client::Message, ClientError>> {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream yields within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_streams_new_messages_in_order_and_a_resumed_stream_misses_nothing() {
    // 1. Three nodes; bob subscribes through node 3, a follower, from now on.
    let dir = tempfile::tempdir().unwrap();
    let (nodes, first, alice) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    first.send_message(&alice, "bob", "before").await.unwrap();
    let bob = first.log_in("bob", "pw").await.unwrap().token;
    let third = nodes[2].client();
    let mut stream = third.subscribe(&bob, 0);

    // 2. Once the stream is live, alice's messages arrive in order, once each; the one sent
    //    before it started is not replayed.
    wait_live(&first, &alice, &mut stream).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            first
                .send_message(&alice, "bob", &format!("live {i}"))
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let message = next(&mut stream).await.unwrap().unwrap();
        assert_ne!(message.content, "before");
        if message.content != "ping" {
            seen.push(message.id);
        }
    }
    assert_eq!(seen, ids);

    // 3. A new subscription resuming after the 10th id gets exactly the 10 after it.
    drop(stream);
    let mut resumed = third.subscribe(&bob, ids[9]);
    let mut again = Vec::new();
    while again.len() < 10 {
        again.push(next(&mut resumed).await.unwrap().unwrap().id);
    }
    assert_eq!(again, ids[10..]);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_elsewhere_ends_the_first_sessions_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, first, _) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let bob = first.log_in("bob", "pw").await.unwrap().token;
    let mut stream = nodes[1].client().subscribe(&bob, 0);
    let alice = first.log_in("alice", "pw").await.unwrap().token;
    wait_live(&first, &alice, &mut stream).await;

    // Bob logs in again (one session per account): the first session's stream ends.
    first.log_in("bob", "pw").await.unwrap();
    loop {
        match next(&mut stream).await {
            Some(Ok(_)) => continue, // pings still in flight
            Some(Err(ClientError::Unauthenticated(message))) => {
                assert!(!message.is_empty());
                break;
            }
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    assert!(next(&mut stream).await.is_none(), "the stream ended");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_dropped_and_writers_carry_on() {
    // 1. One node that buffers 16 messages per subscriber; bob subscribes and then reads
    //    nothing.
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        subscriber_buffer: Some(16),
        ..Setup::default()
    };
    let (nodes, first, alice) = led_by_node_1(dir.path(), 1, &setup).await;
    let bob = first.log_in("bob", "pw").await.unwrap().token;
    let mut stream = first.subscribe(&bob, 0);
    wait_live(&first, &alice, &mut stream).await;

    // 2. Alice sends 400 messages of 16 KiB (more than the client, HTTP/2's windows and the
    //    node's buffer hold together) from 8 writers: every send succeeds, though nobody
    //    reads bob's stream.
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (client, token) = (first.clone(), alice.clone());
            tokio::spawn(async move {
                for i in 0..50 {
                    let content = format!("{writer}-{i}-{}", "x".repeat(16 * 1024));
                    client.send_message(&token, "bob", &content).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    // 3. Bob's stream holds what was buffered, then says he was too slow, then ends.
    let mut delivered = 0;
    let error = loop {
        match next(&mut stream).await {
            Some(Ok(_)) => delivered += 1,
            Some(Err(error)) => break error,
            None => panic!("the stream ended without a status after {delivered} messages"),
        }
    };
    assert!(
        matches!(error, ClientError::RateLimited(ref m) if m.starts_with("subscriber too slow: ")),
        "{error}"
    );
    assert!(delivered < 400, "{delivered} delivered");
    assert!(next(&mut stream).await.is_none());
    stop_all(nodes).await;
}
