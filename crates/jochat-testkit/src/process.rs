//! Helpers for the process tests: `jochat-node` processes on free ports in temporary
//! folders (`jochat_process`, killed when dropped), and raw clients for them. The binary is
//! the `jochat-node` cargo built beside the running test (the node crate's integration
//! tests make cargo build it first).

use std::time::{Duration, Instant};

use jochat_process::NodeCommand;
pub use jochat_process::NodeProcess;
use jochat_proto::v1::chat_client::ChatClient;
use jochat_proto::v1::{self as v1};
use tonic::transport::Channel;

/// The `jochat-node` binary beside the running test.
///
/// # Panics
/// When cargo has not built it (run the node crate's tests, which need it).
pub fn node_binary() -> std::path::PathBuf {
    jochat_process::binary_beside("jochat-node")
        .expect("jochat-node is built beside the test: `cargo build -p jochat-node`")
}

/// Each node's id and the address it serves at, as `--peers` and [`send_through`] take them.
pub fn addresses<'a>(nodes: impl IntoIterator<Item = &'a NodeProcess>) -> Vec<(u64, String)> {
    nodes
        .into_iter()
        .map(|node| (node.id(), node.address().to_owned()))
        .collect()
}

/// Starts node `id` in `dir` on a free port with `peers`, and waits for the address it logs.
pub fn start(id: u64, dir: &std::path::Path, peers: &[&NodeProcess]) -> NodeProcess {
    start_on(id, dir, &addresses(peers.iter().copied()), 0)
}

/// Starts node `id` in `dir` on `port` (0: a free one) with `peers`, and waits for the
/// address it logs.
pub fn start_on(id: u64, dir: &std::path::Path, peers: &[(u64, String)], port: u16) -> NodeProcess {
    start_with(id, dir, peers, port, &[])
}

/// [`start_on`] with `args` added to the node's flags.
pub fn start_with(
    id: u64,
    dir: &std::path::Path,
    peers: &[(u64, String)],
    port: u16,
    args: &[&str],
) -> NodeProcess {
    args.iter()
        .fold(
            NodeCommand::new(node_binary(), id, dir.join(format!("node-{id}.db")))
                .port(port)
                .peers(peers.iter().cloned()),
            |command, arg| command.arg(arg),
        )
        .spawn()
        .expect("the node starts and logs its address")
}

/// The generated gRPC client, connected to `node`.
pub async fn client(node: &NodeProcess) -> ChatClient<Channel> {
    ChatClient::connect(format!("http://{}", node.address()))
        .await
        .expect("the node accepts connections")
}

pub use crate::authorized;
/// Polls until a condition holds (the shared [`crate::cluster::eventually`]).
pub use crate::cluster::eventually as poll;

/// The leader `nodes` report, once one of them reports a leader among them.
pub async fn leader_among(nodes: &[NodeProcess]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in nodes {
            let Ok(mut client) = ChatClient::connect(format!("http://{}", node.address())).await
            else {
                continue;
            };
            if let Ok(info) = client.cluster_info(v1::ClusterInfoRequest {}).await {
                let leader = info.into_inner().leader_id;
                if nodes.iter().any(|n| n.id() == leader) {
                    return leader;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader among the running nodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `content` from `token` to bob through whichever of `nodes` accepts it, retrying
/// until one does; returns the acknowledged id.
pub async fn send_until_acknowledged(nodes: &[NodeProcess], token: &str, content: &str) -> i64 {
    send_through(&addresses(nodes), token, content).await.0
}

/// Sends `content` from `token` to bob through whichever of `addresses` accepts it, retrying
/// with the same idempotency key until one does; returns the acknowledged id and the node
/// that acknowledged it.
pub async fn send_through(addresses: &[(u64, String)], token: &str, content: &str) -> (i64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = format!("key-{content}");
    loop {
        for (node, address) in addresses {
            let Ok(mut client) = ChatClient::connect(format!("http://{address}")).await else {
                continue;
            };
            let request = v1::SendMessageRequest {
                recipient: "bob".into(),
                content: content.into(),
                idempotency_key: key.clone(),
            };
            if let Ok(sent) = client.send_message(authorized(request, token)).await {
                return (sent.into_inner().id, *node);
            }
        }
        assert!(Instant::now() < deadline, "no node acknowledged {content}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of bob's messages as `node` has them (a stale read, served by any node).
pub async fn stale_ids(node: &NodeProcess, bob: &str) -> Option<Vec<i64>> {
    let mut client = ChatClient::connect(format!("http://{}", node.address()))
        .await
        .ok()?;
    let request = v1::ListMessagesRequest {
        limit: 1000,
        consistency: v1::ReadConsistency::Stale as i32,
        ..Default::default()
    };
    let page = client.list_messages(authorized(request, bob)).await.ok()?;
    Some(page.into_inner().messages.iter().map(|m| m.id).collect())
}

/// Starts `count` nodes in the prototype's order (each listing those before it) and waits
/// until node 1 leads all of them; signs up alice and bob and returns their tokens.
pub async fn started_in_order(
    dir: &std::path::Path,
    count: u64,
) -> (Vec<NodeProcess>, String, String) {
    started_in_order_with(dir, count, |_| Vec::new()).await
}

/// [`started_in_order`] with `args_of(id)` added to node `id`'s flags.
pub async fn started_in_order_with(
    dir: &std::path::Path,
    count: u64,
    args_of: impl Fn(u64) -> Vec<&'static str>,
) -> (Vec<NodeProcess>, String, String) {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for id in 1..=count {
        let node = start_with(id, dir, &addresses(&nodes), 0, &args_of(id));
        nodes.push(node);
    }
    let mut first = client(&nodes[0]).await;
    poll("node 1 leads every node as voters", || {
        let mut first = first.clone();
        async move {
            matches!(first.cluster_info(v1::ClusterInfoRequest {}).await,
                Ok(info) if info.get_ref().leader_id == 1 && info.get_ref().members.iter().filter(|m| m.role == v1::MemberRole::Voter as i32).count() == count as usize)
        }
    })
    .await;
    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        first
            .sign_up(v1::SignUpRequest {
                username: name.into(),
                password: "pw".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let login = v1::LogInRequest {
            username: name.into(),
            password: "pw".into(),
            ..Default::default()
        };
        tokens.push(first.log_in(login).await.unwrap().into_inner().token);
    }
    let bob = tokens.pop().expect("two tokens");
    let alice = tokens.pop().expect("two tokens");
    (nodes, alice, bob)
}
