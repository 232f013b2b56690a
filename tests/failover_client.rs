//! The failover client against in-process clusters: a reply lost after the write committed
//! is retried with the same idempotency key and gets the first message id back, with one
//! message stored; a client given one node's address finds the leader and learns the other
//! members; final errors come back at once instead of being retried until the deadline.

use jochat_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use jochat_client::{ChatServerClient, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of a node. Once armed, it cuts the connection as the node starts to
/// answer a call (the first HTTP/2 HEADERS frame of a stream from the node), so the reply of
/// a call the node has completed is lost; then it disarms itself.
struct ReplyDropper {
    address: String,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplyDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies the node's bytes to the client, frame by frame, until the proxy is armed and a
/// reply begins: then it stops, and the connection is cut.
async fn forward_replies(
    mut from_node: tokio::net::tcp::OwnedReadHalf,
    mut to_client: tokio::net::tcp::OwnedWriteHalf,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
) {
    // The 9-byte frame header being read, and how much of the current payload is left.
    let mut header = Vec::with_capacity(9);
    let mut payload_left = 0usize;
    // The client's connection preface is not ours to parse; the node's side starts with
    // frames at once.
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from_node.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut i = 0;
        while i < n {
            if payload_left > 0 {
                let take = payload_left.min(n - i);
                payload_left -= take;
                i += take;
                continue;
            }
            header.push(buffer[i]);
            i += 1;
            if header.len() == 9 {
                let length = (usize::from(header[0]) << 16)
                    | (usize::from(header[1]) << 8)
                    | usize::from(header[2]);
                let kind = header[3];
                let stream =
                    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                header.clear();
                payload_left = length;
                if kind == 0x1 && stream != 0 && armed.swap(false, Ordering::SeqCst) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    return; // drops both halves: the client sees the connection die
                }
            }
        }
        if to_client.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl ReplyDropper {
    async fn start(node: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let task = {
            let (armed, dropped) = (Arc::clone(&armed), Arc::clone(&dropped));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(upstream) = TcpStream::connect(&node).await else {
                        continue;
                    };
                    let (mut client_read, client_write) = client.into_split();
                    let (upstream_read, mut upstream_write) = upstream.into_split();
                    let requests = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
                    });
                    let (armed, dropped) = (Arc::clone(&armed), Arc::clone(&dropped));
                    tokio::spawn(async move {
                        forward_replies(upstream_read, client_write, armed, dropped).await;
                        requests.abort();
                    });
                }
            })
        };
        Self {
            address,
            armed,
            dropped,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_reply_returns_the_first_message_id_and_stores_one_message() {
    // 1. Three nodes; a client that reaches the leader only through the proxy.
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _, _) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let proxy = ReplyDropper::start(nodes[0].address.clone()).await;
    let client = ChatServerClient::builder()
        .servers([proxy.address.clone()])
        .discover_members(false)
        .build()
        .unwrap();
    let alice = client.log_in("alice", "pw").await.unwrap().token;

    // 2. The reply of the next send is lost after the leader committed it; the client retries
    //    with the same key and gets the id of the message that was stored.
    proxy.armed.store(true, Ordering::SeqCst);
    let sent = client
        .send_message(&alice, "bob", "exactly once")
        .await
        .unwrap();
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        1,
        "a reply was dropped"
    );

    // 3. One message, with that id, on every node.
    let target = nodes[0].client().cluster_info().await.unwrap().commit_index;
    wait_applied(&nodes, target).await;
    for node in &nodes {
        let stored: Vec<(i64, String)> = dump_file(&node.db)
            .messages
            .into_iter()
            .map(|m| (m.id.0, m.content))
            .collect();
        assert_eq!(
            stored,
            [(sent.id, "exactly once".to_owned())],
            "node {}",
            node.id
        );
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_follower_finds_the_leader_and_learns_the_members() {
    // 1. Three nodes; a client that is told only node 3's address.
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _, _) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let client = ChatServerClient::builder()
        .servers([nodes[2].address.clone()])
        .build()
        .unwrap();

    // 2. Its writes reach the leader.
    let alice = client.log_in("alice", "pw").await.unwrap().token;
    client.send_message(&alice, "bob", "hello").await.unwrap();
    assert_eq!(client.leader(), Some(nodes[0].address.clone()));

    // 3. It learns every member.
    let mut everyone: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    everyone.sort();
    eventually("the client knows every member", || async {
        let mut known = client.servers();
        known.sort();
        known == everyone
    })
    .await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_errors_come_back_at_once() {
    // 1. Three nodes; a client with a long deadline.
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _, alice) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let client = ChatServerClient::builder()
        .servers(nodes.iter().map(|n| n.address.clone()))
        .deadline(Duration::from_secs(30))
        .build()
        .unwrap();

    // 2. Bad input, an unknown recipient and a wrong password are answered, not retried:
    //    each comes back long before the deadline, with the server's words.
    let started = Instant::now();
    let bad = client.send_message(&alice, "bob", "").await.unwrap_err();
    assert!(
        matches!(bad, ClientError::InvalidArgument(ref m) if m.starts_with("content: ")),
        "{bad}"
    );
    let unknown = client
        .send_message(&alice, "nobody", "hi")
        .await
        .unwrap_err();
    assert!(matches!(unknown, ClientError::NotFound(_)), "{unknown}");
    let wrong = client.log_in("bob", "not-pw").await.unwrap_err();
    assert!(matches!(wrong, ClientError::Unauthenticated(_)), "{wrong}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "final errors were retried: {:?}",
        started.elapsed()
    );
    stop_all(nodes).await;
}
