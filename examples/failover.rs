//! Failover, seen from a client: starts a local three-node cluster (three processes of this
//! example, in a temporary folder), writes in a loop through `ChatServerClient`, kills the
//! leader with SIGKILL halfway, keeps writing, then prints the pause the client saw and checks
//! that no acknowledged message was lost or stored twice.
//!
//! ```sh
//! cargo run --release --example failover
//! ```
//!
//! It needs nothing running and leaves nothing behind. Its output ends with
//! `slowest send (the failover pause): N ms` and `all 300 messages stored once`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use jochat_client::{ChatServerClient, InboxQuery};
use jochat_node::NodeConfig;
use jochat_process::{NodeCommand, NodeProcess};

const SENDS: usize = 300;
const KILL_AFTER: usize = 100;

/// Starts node `id` (this example again, in its `--node` mode) with its database in `dir`,
/// listing `peers`; returns once it serves.
fn start_node(
    id: u64,
    dir: &Path,
    peers: &[&NodeProcess],
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let node = NodeCommand::new(
        std::env::current_exe()?,
        id,
        dir.join(format!("node-{id}.db")),
    )
    .leading_arg("--node")
    .peers(peers.iter().map(|p| (p.id(), p.address().to_owned())))
    .spawn()?;
    println!("node {id} serves at {}", node.address());
    Ok(node)
}

/// The `--node` mode: serve one node, configured by `jochat-node`'s own flags, until killed.
async fn run_node(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let config = NodeConfig::try_parse_from(
        std::iter::once("failover-node").chain(args.iter().map(String::as_str)),
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen_address()?).await?;
    // What `jochat_process` waits for: the address, in the form `jochat-node` logs it.
    eprintln!("address={}", listener.local_addr()?);
    jochat_node::serve(config, listener, std::future::pending()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--node") {
        return run_node(&args[1..]).await;
    }

    // 1. Three nodes, started as the prototype started them: 1, then 2 and 3 joining.
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let peers: Vec<&NodeProcess> = nodes.iter().collect();
        let node = start_node(id, dir.path(), &peers)?;
        nodes.push(node);
    }
    let client = ChatServerClient::builder()
        .servers(nodes.iter().map(|n| n.address().to_owned()))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.cluster_info().await?.members.len() < 3 {
        if Instant::now() > deadline {
            return Err("the cluster did not form".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.sign_up("alice", "alice's password").await?;
    client.sign_up("bob", "bob's password").await?;
    let alice = client.log_in("alice", "alice's password").await?.token;

    // 2. Send in a loop; kill the leader with SIGKILL after the 100th send.
    let mut acknowledged = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for i in 0..SENDS {
        if i == KILL_AFTER {
            let leader = client.cluster_info().await?.leader_id.ok_or("no leader")?;
            let position = nodes
                .iter()
                .position(|n| n.id() == leader)
                .ok_or("leader unknown")?;
            let mut killed = nodes.remove(position);
            killed.kill();
            println!("killed the leader, node {leader}, with SIGKILL after {i} sends");
        }
        let started = Instant::now();
        let sent = client
            .send_message(&alice, "bob", &format!("message {i}"))
            .await?;
        slowest = slowest.max(started.elapsed());
        acknowledged.insert(sent.id, format!("message {i}"));
    }
    println!(
        "{SENDS} sends acknowledged; slowest send (the failover pause): {} ms",
        slowest.as_millis()
    );

    // 3. Bob's inbox, read from the new leader: every acknowledged message, once.
    let bob = client.log_in("bob", "bob's password").await?.token;
    let inbox = client
        .list_messages(
            &bob,
            &InboxQuery {
                limit: 1000,
                ..InboxQuery::default()
            },
        )
        .await?;
    let stored: BTreeMap<i64, String> = inbox
        .messages
        .into_iter()
        .map(|m| (m.id, m.content))
        .collect();
    if stored != acknowledged || inbox.total_count != SENDS as u64 {
        return Err(format!(
            "lost or doubled: {} stored, {} acknowledged",
            inbox.total_count,
            acknowledged.len()
        )
        .into());
    }
    println!("all {SENDS} messages stored once, none lost, none doubled");
    Ok(())
}
