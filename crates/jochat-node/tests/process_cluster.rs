//! A three-node cluster of real `jochat-node` processes: the leader is killed with SIGKILL
//! while a client writes; a survivor takes over and every acknowledged write is on both
//! survivors. Prints the pause the client saw (kill → first acknowledged write).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_jochat-node"));
    command
        .args(["--server-id", &id.to_string(), "--port", "0"])
        .arg("--db-file")
        .arg(dir.join(format!("node-{id}.db")))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !peers.is_empty() {
        let list: Vec<String> = peers
            .iter()
            .map(|p| format!("{}:{}", p.id, p.address))
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
async fn killing_the_leader_loses_no_acknowledged_write() {
    // 1. Three processes, started in the prototype's order; node 1 leads three voters.
    let dir = tempfile::tempdir().unwrap();
    let node1 = start(1, dir.path(), &[]);
    let node2 = start(2, dir.path(), &[&node1]);
    let node3 = start(3, dir.path(), &[&node1, &node2]);
    let mut leader = client(&node1).await;
    poll("three voters", || {
        let mut leader = leader.clone();
        async move {
            matches!(leader.cluster_info(v1::ClusterInfoRequest {}).await,
                Ok(info) if info.get_ref().members.iter().filter(|m| m.role == v1::MemberRole::Voter as i32).count() == 3)
        }
    })
    .await;

    // 2. Accounts and sessions, then acknowledged writes through node 1.
    for name in ["alice", "bob"] {
        leader
            .sign_up(v1::SignUpRequest {
                username: name.into(),
                password: "pw".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let login = |name: &str| v1::LogInRequest {
        username: name.into(),
        password: "pw".into(),
        ..Default::default()
    };
    let alice = leader
        .log_in(login("alice"))
        .await
        .unwrap()
        .into_inner()
        .token;
    let bob = leader
        .log_in(login("bob"))
        .await
        .unwrap()
        .into_inner()
        .token;
    let send = |text: String| v1::SendMessageRequest {
        recipient: "bob".into(),
        content: text,
        ..Default::default()
    };
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let sent = leader
            .send_message(authorized(send(format!("m{i}")), &alice))
            .await
            .unwrap();
        acknowledged.push(sent.into_inner().id);
    }

    // 3. SIGKILL the leader, then write to the survivors until one accepts.
    let mut node1 = node1;
    node1.child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let mut survivors = [client(&node2).await, client(&node3).await];
    let first = 'retry: loop {
        for survivor in &mut survivors {
            if let Ok(sent) = survivor
                .send_message(authorized(send("after".into()), &alice))
                .await
            {
                break 'retry sent.into_inner().id;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no survivor accepted a write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let pause = killed.elapsed();
    acknowledged.push(first);
    eprintln!(
        "failover pause (SIGKILL of the leader -> first acknowledged write): {} ms",
        pause.as_millis()
    );

    // 4. A survivor leads: node 2 whenever its log was as complete as node 3's when node 1
    //    died (Raft refuses a less complete one); node 3 otherwise.
    let mut observer = survivors[0].clone();
    poll("the survivors agree on a leader", || {
        let mut observer = observer.clone();
        async move {
            matches!(observer.cluster_info(v1::ClusterInfoRequest {}).await,
                Ok(info) if [2, 3].contains(&info.get_ref().leader_id))
        }
    })
    .await;
    let info = observer
        .cluster_info(v1::ClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    eprintln!("new leader: node {}", info.leader_id);

    // 5. Every acknowledged write is on both survivors.
    for (survivor, node) in survivors.iter_mut().zip([&node2, &node3]) {
        let what = format!("node {} has every acknowledged write", node.id);
        poll(&what, || {
            let mut survivor = survivor.clone();
            let bob = bob.clone();
            let acknowledged = acknowledged.clone();
            async move {
                let stale = v1::ListMessagesRequest {
                    limit: 1000,
                    consistency: v1::ReadConsistency::Stale as i32,
                    ..Default::default()
                };
                let Ok(page) = survivor.list_messages(authorized(stale, &bob)).await else {
                    return false;
                };
                let ids: Vec<i64> = page.into_inner().messages.iter().map(|m| m.id).collect();
                acknowledged.iter().all(|id| ids.contains(id))
            }
        })
        .await;
    }
}
