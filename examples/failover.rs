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
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jochat_client::{ChatServerClient, InboxQuery};
use jochat_node::config::Peer;
use jochat_node::NodeConfig;

const SENDS: usize = 300;
const KILL_AFTER: usize = 100;

/// One node: a child process running this example with `--node`.
struct NodeProcess {
    id: u64,
    address: String,
    child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node `id` with its database in `dir`, listing `peers`; returns once it serves.
fn start_node(
    id: u64,
    dir: &Path,
    peers: &[&NodeProcess],
) -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let peer_list: Vec<String> = peers
        .iter()
        .map(|p| format!("{}:{}", p.id, p.address))
        .collect();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--node")
        .arg(id.to_string())
        .arg(dir)
        .arg(peer_list.join(","))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("serving ")
        .ok_or("the node did not start")?
        .to_owned();
    println!("node {id} serves at {address}");
    Ok(NodeProcess { id, address, child })
}

/// The `--node ID DIR PEERS` mode: serve one node until killed.
async fn run_node(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [id, dir, peers] = args else {
        return Err("usage: failover --node ID DIR PEERS".into());
    };
    let id: u64 = id.parse()?;
    let peers = peers
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::parse::<Peer>)
        .collect::<Result<Vec<_>, _>>()?;
    let config = NodeConfig {
        server_id: id,
        port: 0,
        db_file: Some(Path::new(dir).join(format!("node-{id}.db"))),
        peers,
        ..NodeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("serving {}", listener.local_addr()?);
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
        .servers(nodes.iter().map(|n| n.address.clone()))
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
                .position(|n| n.id == leader)
                .ok_or("leader unknown")?;
            let mut killed = nodes.remove(position);
            killed.child.kill()?;
            killed.child.wait()?;
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
