//! Many hosts: a three-node cluster where every node lives in its own Linux network
//! namespace with its own address, bound to `0.0.0.0` and advertising its namespace address,
//! joined by a bridge in a namespace of the test's own (nothing touches the root namespace's
//! interfaces or routes). A client in a fourth namespace signs up, writes through the
//! cluster, the leader is killed, and everything is read back from the survivors, through the
//! cluster and from each survivor's own file.
//!
//! It needs root (namespaces, veth pairs, a bridge) and `ip` from iproute2. Elsewhere it says
//! on stderr that it was skipped and why, and passes; with `CI=true` a missing privilege
//! fails it. Every namespace (and with it every interface) and every process it starts is
//! removed at the end, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jochat_process::{binary_beside, NodeCommand, NodeProcess};
use jochat_testkit::{runs_here, wait_until};
use serde_json::Value;

/// Messages the client writes before the leader is killed.
const MESSAGES: usize = 20;

/// Why the test cannot run here, if it cannot.
fn missing_privilege() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("it needs root to make network namespaces".into());
    }
    let ip = Command::new("ip").arg("-V").output();
    if !ip.is_ok_and(|output| output.status.success()) {
        return Some("it needs `ip` (iproute2)".into());
    }
    None
}

/// Runs `ip ARGS` and fails the test if it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The namespaces of one run: a hub holding the bridge, and one per host. Dropping it kills
/// nothing (the nodes' handles do that) and deletes every namespace, which removes their
/// interfaces with them.
struct Namespaces {
    hub: String,
    hosts: Vec<String>,
}

impl Namespaces {
    /// `count` hosts named `<prefix><i>`, addresses `10.211.0.<i>/24`, on one bridge.
    fn create(prefix: &str, count: usize) -> Self {
        let namespaces = Self {
            hub: format!("{prefix}hub"),
            hosts: (1..=count).map(|i| format!("{prefix}{i}")).collect(),
        };
        ip(&["netns", "add", &namespaces.hub]);
        ip(&[
            "-n",
            &namespaces.hub,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ]);
        ip(&["-n", &namespaces.hub, "link", "set", "br0", "up"]);
        for (index, host) in namespaces.hosts.iter().enumerate() {
            let port = format!("p{}", index + 1);
            ip(&["netns", "add", host]);
            // The pair is made inside the hub and one end moved to the host: the root
            // namespace never holds either end.
            ip(&[
                "-n",
                &namespaces.hub,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
            ]);
            ip(&["-n", &namespaces.hub, "link", "set", "eth0", "netns", host]);
            ip(&["-n", &namespaces.hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &namespaces.hub, "link", "set", &port, "up"]);
            let address = format!("{}/24", Self::address(index + 1));
            ip(&["-n", host, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", host, "link", "set", "eth0", "up"]);
            ip(&["-n", host, "link", "set", "lo", "up"]);
        }
        namespaces
    }

    /// The address of host `i` (from 1).
    fn address(i: usize) -> String {
        format!("10.211.0.{i}")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for namespace in self.hosts.iter().chain([&self.hub]) {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs the `jochat` CLI inside `namespace` with `--json` and returns its document, or its
/// error output.
fn jochat(
    namespace: &str,
    servers: &str,
    session: &Path,
    password: &str,
    args: &[&str],
) -> Result<Value, String> {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, env!("CARGO_BIN_EXE_jochat")])
        .args(["--json", "--servers", servers, "--deadline-ms", "20000"])
        .arg("--session-file")
        .arg(session)
        .args(args)
        .env("JOCHAT_PASSWORD", password)
        .env_remove("JOCHAT_SERVERS")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())
}

/// The contents of bob's inbox as `servers` answer (linearizable, or `--stale`).
fn inbox(namespace: &str, servers: &str, session: &Path, stale: bool) -> Option<Vec<String>> {
    let mut args = vec!["inbox", "--limit", "1000"];
    if stale {
        args.push("--stale");
    }
    let page = jochat(namespace, servers, session, "pw-bob", &args).ok()?;
    let mut contents: Vec<String> = page["messages"]
        .as_array()?
        .iter()
        .filter_map(|message| message["content"].as_str().map(str::to_owned))
        .collect();
    contents.sort();
    Some(contents)
}

#[test]
fn a_cluster_of_three_hosts_survives_its_leader() {
    if !runs_here(
        "hosts::a_cluster_of_three_hosts_survives_its_leader",
        missing_privilege(),
    ) {
        return;
    }
    let node_binary: PathBuf = binary_beside("jochat-node")
        .expect("jochat-node is built beside the test: `cargo build -p jochat-node`");

    // 1. Four hosts: three nodes and a client, each in its namespace, on one bridge.
    let prefix = format!("jc{}h", std::process::id() % 100_000);
    let namespaces = Namespaces::create(&prefix, 4);
    let client_host = namespaces.hosts[3].clone();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster-secret");
    std::fs::write(&secret, "a-secret-shared-by-the-hosts\n").unwrap();

    // 2. The nodes, each bound to 0.0.0.0 in its namespace and advertising its address;
    //    node 1 forms the cluster with the other two.
    let advertised: Vec<String> = (1..=3)
        .map(|i| format!("{}:5001", Namespaces::address(i)))
        .collect();
    let mut nodes: Vec<NodeProcess> = (1..=3u64)
        .map(|id| {
            let peers = (1..=3u64)
                .filter(|&other| other != id)
                .map(|other| (other, advertised[other as usize - 1].clone()));
            NodeCommand::new("ip", id, dir.path().join(format!("node-{id}.db")))
                .leading_arg("netns")
                .leading_arg("exec")
                .leading_arg(namespaces.hosts[id as usize - 1].clone())
                .leading_arg(node_binary.clone())
                .port(5001)
                .peers(peers)
                .arg("--host")
                .arg("0.0.0.0")
                .arg("--advertise-addr")
                .arg(advertised[id as usize - 1].clone())
                .arg("--cluster-secret-file")
                .arg(secret.clone())
                .spawn()
                .expect("the node starts in its namespace")
        })
        .collect();
    for (node, address) in nodes.iter().zip(&advertised) {
        assert_eq!(
            node.address(),
            address,
            "a node announces its advertised address"
        );
    }
    let servers = advertised.join(",");

    // 3. The client, from its own host: the cluster forms with every member at its
    //    advertised address.
    let alice = dir.path().join("alice.json");
    let bob = dir.path().join("bob.json");
    let info = wait_until("node 1 leads three voters", || {
        let info = jochat(&client_host, &servers, &alice, "", &["cluster", "info"]).ok()?;
        let voters = info["members"]
            .as_array()?
            .iter()
            .filter(|member| member["role"] == "voter")
            .count();
        (info["leader_id"] == 1 && voters == 3).then_some(info)
    });
    let mut members: Vec<&str> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|member| member["address"].as_str())
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        advertised.iter().map(String::as_str).collect::<Vec<_>>()
    );

    // 4. Writes through the cluster.
    jochat(
        &client_host,
        &servers,
        &alice,
        "pw-alice",
        &["signup", "alice"],
    )
    .unwrap();
    jochat(&client_host, &servers, &bob, "pw-bob", &["signup", "bob"]).unwrap();
    jochat(
        &client_host,
        &servers,
        &alice,
        "pw-alice",
        &["login", "alice"],
    )
    .unwrap();
    jochat(&client_host, &servers, &bob, "pw-bob", &["login", "bob"]).unwrap();
    let mut sent: Vec<String> = (0..MESSAGES).map(|i| format!("message {i:02}")).collect();
    for content in &sent {
        jochat(
            &client_host,
            &servers,
            &alice,
            "pw-alice",
            &["send", "bob", content],
        )
        .unwrap();
    }
    sent.sort();

    // 5. The leader's process is killed; the survivors elect another and keep everything.
    let leader = info["leader_id"].as_u64().unwrap();
    let position = nodes.iter().position(|node| node.id() == leader).unwrap();
    nodes.remove(position).kill();
    let survivors: Vec<String> = advertised
        .iter()
        .enumerate()
        .filter(|(index, _)| *index as u64 + 1 != leader)
        .map(|(_, address)| address.clone())
        .collect();
    let read = wait_until("the survivors serve a linearizable read", || {
        inbox(&client_host, &survivors.join(","), &bob, false)
    });
    assert_eq!(
        read, sent,
        "every acknowledged message, read through the survivors"
    );
    jochat(
        &client_host,
        &survivors.join(","),
        &alice,
        "pw-alice",
        &["send", "bob", "after the kill"],
    )
    .expect("the survivors take writes");
    for survivor in &survivors {
        let stale = wait_until("a survivor has applied everything", || {
            inbox(&client_host, survivor, &bob, true).filter(|read| read.len() == MESSAGES + 1)
        });
        assert!(
            sent.iter().all(|content| stale.contains(content)),
            "{survivor} holds every message"
        );
    }

    // 6. Processes are killed before the namespaces go (the handles drop first).
    drop(nodes);
    drop(namespaces);
}
