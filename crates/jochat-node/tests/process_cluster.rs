//! Clusters of real `jochat-node` processes killed with SIGKILL:
//!
//! - three nodes, the leader killed while a client writes: a survivor takes over and every
//!   acknowledged write is on both survivors; prints the pause the client saw (kill → first
//!   acknowledged write);
//! - five nodes, two leaders killed in a row: writes continue, nothing acknowledged is lost;
//! - three nodes, two killed: the survivor refuses writes with "no quorum" and serves stale
//!   reads; one restarted on its file and port → writes resume, nothing lost;
//! - three nodes all killed and restarted on their files and ports: node 1 leads again and
//!   every write is back.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use jochat_proto::v1::chat_client::ChatClient;
use jochat_proto::v1::{self as v1};
use tonic::transport::Channel;

/// One node process; killed when dropped, so none outlives the test.
struct NodeProcess {
    id: u64,
    child: Child,
    address: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node `id` in `dir` on a free port with `peers`, and waits for the address it logs.
fn start(id: u64, dir: &std::path::Path, peers: &[&NodeProcess]) -> NodeProcess {
    let peers: Vec<(u64, String)> = peers.iter().map(|p| (p.id, p.address.clone())).collect();
    start_on(id, dir, &peers, 0)
}

/// Starts node `id` in `dir` on `port` (0: a free one) with `peers`, and waits for the
/// address it logs.
fn start_on(id: u64, dir: &std::path::Path, peers: &[(u64, String)], port: u16) -> NodeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jochat-node"));
    command
        .args(["--server-id", &id.to_string(), "--port", &port.to_string()])
        .arg("--db-file")
        .arg(dir.join(format!("node-{id}.db")))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !peers.is_empty() {
        let list: Vec<String> = peers
            .iter()
            .map(|(id, address)| format!("{id}:{address}"))
            .collect();
        command.args(["--peers", &list.join(",")]);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines_in, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_in.send(line);
        }
    });
    let address = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the node logs its address");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .expect("an address follows")
                .to_owned();
        }
    };
    // Keep draining the log so the node never blocks on a full pipe.
    std::thread::spawn(move || while lines.recv().is_ok() {});
    NodeProcess { id, child, address }
}

async fn client(node: &NodeProcess) -> ChatClient<Channel> {
    ChatClient::connect(format!("http://{}", node.address))
        .await
        .expect("the node accepts connections")
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_while_clients_write_loses_no_acknowledged_write() {
    // 1. Three processes, started in the prototype's order, led by node 1.
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, alice, bob) = started_in_order(dir.path(), 3).await;
    let addresses: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.address.clone())).collect();

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
    first.child.kill().expect("SIGKILL");
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
        let what = format!("node {} has every acknowledged write", node.id);
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
            node.id
        );
    }
}

/// The leader `nodes` report, once one of them reports a leader among them.
async fn leader_among(nodes: &[NodeProcess]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in nodes {
            let Ok(mut client) = ChatClient::connect(format!("http://{}", node.address)).await
            else {
                continue;
            };
            if let Ok(info) = client.cluster_info(v1::ClusterInfoRequest {}).await {
                let leader = info.into_inner().leader_id;
                if nodes.iter().any(|n| n.id == leader) {
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
async fn send_until_acknowledged(nodes: &[NodeProcess], token: &str, content: &str) -> i64 {
    let addresses: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.address.clone())).collect();
    send_through(&addresses, token, content).await.0
}

/// Sends `content` from `token` to bob through whichever of `addresses` accepts it, retrying
/// with the same idempotency key until one does; returns the acknowledged id and the node
/// that acknowledged it.
async fn send_through(addresses: &[(u64, String)], token: &str, content: &str) -> (i64, u64) {
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
async fn stale_ids(node: &NodeProcess, bob: &str) -> Option<Vec<i64>> {
    let mut client = ChatClient::connect(format!("http://{}", node.address))
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
async fn started_in_order(dir: &std::path::Path, count: u64) -> (Vec<NodeProcess>, String, String) {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for id in 1..=count {
        let peers: Vec<&NodeProcess> = nodes.iter().collect();
        let node = start(id, dir, &peers);
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
            let position = nodes.iter().position(|n| n.id == leader).unwrap();
            let mut killed = nodes.remove(position);
            killed.child.kill().expect("SIGKILL");
            killed.child.wait().expect("the killed node is reaped");
            eprintln!("round {round}: killed leader {leader}");
        }
    }

    // 3. The three survivors hold every acknowledged write.
    for node in &nodes {
        let what = format!("node {} has every acknowledged write", node.id);
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
        .address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // 2. Nodes 2 and 3 are killed with SIGKILL.
    for mut killed in nodes.drain(1..) {
        killed.child.kill().expect("SIGKILL");
        killed.child.wait().expect("the killed node is reaped");
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
    let peers = vec![(1, nodes[0].address.clone())];
    nodes.push(start_on(2, dir.path(), &peers, second_port));
    let after = send_until_acknowledged(&nodes, &alice, "after").await;
    for node in &nodes {
        let what = format!("node {} has both writes", node.id);
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
    let addresses: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.address.clone())).collect();
    for mut killed in nodes.drain(..) {
        killed.child.kill().expect("SIGKILL");
        killed.child.wait().expect("the killed node is reaped");
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
        let what = format!("node {} has every write", node.id);
        poll(&what, || async {
            matches!(stale_ids(node, &bob).await, Some(ids)
                if acknowledged.iter().all(|id| ids.contains(id)))
        })
        .await;
    }
}
