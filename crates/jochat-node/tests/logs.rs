//! Structured logs: with `--log-format json` every line a node writes is one JSON object, a
//! request's lines carry the node id, term, request id, operation, code and latency, and a
//! call the client library retries on another node (a follower's NOT-LEADER, then the
//! leader) shows the same request id in both nodes' lines, as does a write a follower
//! forwards to the leader for a socket client.

use jochat_testkit::process as support;

use jochat_client::ChatServerClient;
use jochat_process::NodeCommand;
use support::{node_binary, NodeProcess};

fn json_node(id: u64, dir: &std::path::Path, peers: &[&NodeProcess]) -> NodeProcess {
    NodeCommand::new(node_binary(), id, dir.join(format!("node-{id}.db")))
        .peers(peers.iter().map(|p| (p.id(), p.address().to_owned())))
        .log_filter("info,jochat_node=debug")
        .arg("--log-format")
        .arg("json")
        .spawn()
        .expect("the node starts and logs its address")
}

/// Every line `node` logged, parsed: each must be one JSON object.
fn lines(node: &NodeProcess) -> Vec<serde_json::Value> {
    node.log_lines("")
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not one JSON object ({error}): {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// The lines of `node` about requests of `operation`.
fn requests(node: &NodeProcess, operation: &str) -> Vec<serde_json::Value> {
    lines(node)
        .into_iter()
        .filter(|line| line["span"]["operation"] == operation && line.get("latency_us").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_request_id_across_nodes() {
    // 1. Three nodes in the prototype's order, logging JSON; node 1 leads.
    let dir = tempfile::tempdir().unwrap();
    let first = json_node(1, dir.path(), &[]);
    let second = json_node(2, dir.path(), &[&first]);
    let third = json_node(3, dir.path(), &[&first, &second]);
    let nodes = vec![first, second, third];
    assert_eq!(support::leader_among(&nodes).await, 1);
    support::poll("node 2 knows the leader", || async {
        let client = ChatServerClient::builder()
            .servers([nodes[1].address()])
            .discover_members(false)
            .build()
            .unwrap();
        client
            .cluster_info()
            .await
            .is_ok_and(|info| info.leader_id == Some(1))
    })
    .await;

    // 2. A sign-up sent to node 2 first: it answers NOT-LEADER, the client goes to node 1.
    let client = ChatServerClient::builder()
        .servers([nodes[1].address(), nodes[0].address()])
        .discover_members(false)
        .build()
        .unwrap();
    client.sign_up("alice", "pw").await.unwrap();

    // 3. Both nodes logged it under the same request id.
    let refused = requests(&nodes[1], "sign_up");
    let refused = refused
        .iter()
        .find(|line| line["code"] == "Unavailable")
        .unwrap_or_else(|| panic!("node 2 logged no refused sign-up: {refused:#?}"));
    let id = refused["span"]["request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16, "the client's id: {id}");
    // The harness reads each process's log on a thread of its own: wait until node 1's line
    // has been read.
    support::poll(
        "node 1 logged the sign-up under the client's id",
        || async {
            requests(&nodes[0], "sign_up")
                .iter()
                .any(|line| line["span"]["request_id"] == id.as_str())
        },
    )
    .await;
    let served = requests(&nodes[0], "sign_up");
    let served = served
        .iter()
        .find(|line| line["span"]["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("node 1 logged no sign-up with {id}: {served:#?}"));
    assert_eq!(served["code"], "Ok");
    for line in [refused, served] {
        for field in ["timestamp", "level", "latency_us"] {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
        for field in ["node_id", "term", "request_id", "operation"] {
            assert!(
                line["span"].get(field).is_some(),
                "span.{field} missing: {line}"
            );
        }
    }
    assert_eq!(served["span"]["node_id"], 1);
    assert_eq!(refused["span"]["node_id"], 2);

    // 4. Every line of every node is one JSON object (also start-up and Raft's own lines).
    for node in &nodes {
        assert!(lines(node).len() > 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_for_a_socket_client_carries_its_request_id_to_the_leader() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let socket_node = |id: u64, peers: &[&NodeProcess]| {
        NodeCommand::new(node_binary(), id, dir.path().join(format!("node-{id}.db")))
            .peers(peers.iter().map(|p| (p.id(), p.address().to_owned())))
            .log_filter("info,jochat_node=debug")
            .arg("--log-format")
            .arg("json")
            .arg("--socket-port")
            .arg("0")
            .spawn()
            .expect("the node starts and logs its address")
    };
    let first = socket_node(1, &[]);
    let second = socket_node(2, &[&first]);
    let nodes = vec![first, second];
    assert_eq!(support::leader_among(&nodes).await, 1);
    let socket = lines(&nodes[1])
        .iter()
        .find_map(|line| line["socket"].as_str().map(str::to_owned))
        .expect("node 2 logged its socket address");
    // A binary sign-up on node 2, a follower: it forwards the write to node 1.
    let mut stream = tokio::net::TcpStream::connect(&socket).await.unwrap();
    stream.write_all(b"\x01\x00\x03kim\x02pw").await.unwrap();
    let mut reply = [0u8; 3];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [1, 1, 1], "the sign-up succeeded");
    support::poll("node 2 logged the socket sign-up", || async {
        !requests(&nodes[1], "socket.signup").is_empty()
    })
    .await;
    let id = requests(&nodes[1], "socket.signup")[0]["span"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    support::poll(
        "node 1 logged the forwarded write under node 2's id",
        || async {
            lines(&nodes[0]).iter().any(|line| {
                line["span"]["operation"] == "internal.forward"
                    && line["span"]["request_id"] == id.as_str()
            })
        },
    )
    .await;
}
