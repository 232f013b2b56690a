//! The node's caps on what callers can make it hold, seen from outside: open connections
//! (`--connections-max`: at the cap the node stops accepting until one closes) and live
//! subscriptions (`--subscribers-max`: beyond it a new one is refused with UNAVAILABLE
//! "overloaded" and the node keeps serving).

use std::time::{Duration, Instant};

use jochat_client::ChatServerClient;
use jochat_node::{spawn_ephemeral_with, NodeConfig};
use jochat_proto::v1;
use jochat_proto::v1::chat_client::ChatClient;
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// How long a connection waiting under the cap is given before it counts as not served.
const PATIENCE: Duration = Duration::from_millis(500);

/// A channel to `address` that has made one call, so its connection is open.
async fn connected(address: &str) -> ChatClient<Channel> {
    let mut client = ChatClient::connect(format!("http://{address}"))
        .await
        .expect("the node accepts a connection");
    client
        .cluster_info(v1::ClusterInfoRequest {})
        .await
        .expect("the node answers on an open connection");
    client
}

/// Whether a new connection to `address` gets an answer within [`PATIENCE`].
async fn answered_within_patience(address: &str) -> bool {
    let call = async {
        let mut client = ChatClient::connect(format!("http://{address}"))
            .await
            .ok()?;
        client.cluster_info(v1::ClusterInfoRequest {}).await.ok()
    };
    matches!(tokio::time::timeout(PATIENCE, call).await, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_until_one_closes() {
    // 1. A node that keeps at most 8 connections open; 8 are taken (one by a real client,
    //    seven by bare sockets).
    let node = spawn_ephemeral_with(NodeConfig {
        connections_max: 8,
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    let address = node.address();
    let first = connected(&address).await;
    let mut sockets = Vec::new();
    for _ in 0..7 {
        sockets.push(TcpStream::connect(&address).await.unwrap());
    }

    // 2. A ninth connection is not served while all eight stay open, and the open one still
    //    works.
    assert!(!answered_within_patience(&address).await);
    let mut still = first.clone();
    still
        .cluster_info(v1::ClusterInfoRequest {})
        .await
        .expect("an open connection keeps working at the cap");

    // 3. Closing one makes room: a new connection is served.
    sockets.pop();
    let started = Instant::now();
    while !answered_within_patience(&address).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no new connection was served after one closed"
        );
    }
    drop(sockets);
    drop(first);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_subscriber_cap_a_subscription_is_refused_and_the_node_serves_on() {
    // 1. A node that keeps at most one live subscription; alice subscribes.
    let node = spawn_ephemeral_with(NodeConfig {
        subscribers_max: 1,
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    let mut raw = ChatClient::connect(format!("http://{}", node.address()))
        .await
        .unwrap();
    let client = ChatServerClient::builder()
        .servers([node.address()])
        .build()
        .unwrap();
    client.sign_up("alice", "pw").await.unwrap();
    client.sign_up("bob", "pw").await.unwrap();
    let alice = client.log_in("alice", "pw").await.unwrap();
    let bob = client.log_in("bob", "pw").await.unwrap();
    let subscribe = |token: &str| {
        let mut request = tonic::Request::new(v1::SubscribeRequest { after_id: 0 });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .expect("a token is valid metadata"),
        );
        request
    };
    let first = raw
        .subscribe(subscribe(alice.token.as_str()))
        .await
        .expect("the first subscription is taken");

    // 2. A second one is refused at once with UNAVAILABLE "overloaded", naming the flag.
    let refused = raw
        .subscribe(subscribe(bob.token.as_str()))
        .await
        .expect_err("a second subscription is refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("overloaded") && refused.message().contains("--subscribers-max"),
        "{}",
        refused.message()
    );

    // 3. The node serves everything else meanwhile.
    client
        .send_message(&bob.token, "alice", "still serving")
        .await
        .unwrap();

    // 4. Once the first subscription ends, there is room again.
    drop(first);
    let started = Instant::now();
    loop {
        match raw.subscribe(subscribe(bob.token.as_str())).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the place of an ended subscription was never given back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("unexpected refusal: {status}"),
        }
    }
    node.shutdown().await.unwrap();
}
