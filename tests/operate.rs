//! What an operator watches: the Prometheus exposition on `--metrics-addr` (parsed whole
//! with a parser; values move with the work done), `/livez` and `/readyz`, and the gRPC
//! health service's transitions (a node cut off from the majority is NOT_SERVING and SERVING
//! again once it heals; a joining node is NOT_SERVING until it is a voter).

use jochat_testkit as common;

use std::collections::HashMap;

use common::cluster::{
    eventually, http_get, led_by_node_1, start_node, stop_all, ClusterNode, Setup,
};
use jochat_node::config::Peer;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Every sample of a scrape of `node`, parsed, keyed by name and labels (sorted).
async fn scrape(node: &ClusterNode) -> HashMap<String, f64> {
    let (status, body) = http_get(node.metrics_address.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    parsed
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |bucket| bucket.count)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", sample.metric, labels.join(",")), value)
        })
        .collect()
}

fn get(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// The value of the first sample named `name` (any labels).
fn any(samples: &HashMap<String, f64>, name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(key, _)| key.split('{').next() == Some(name))
        .map(|(_, value)| *value)
}

const SENDS: &str = "jochat_requests_total{code=Ok,method=send_message,service=v1}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_parses_and_moves_with_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        metrics: true,
        ..Setup::default()
    };
    let (mut nodes, leader, alice) = led_by_node_1(dir.path(), 3, &setup).await;

    // 1. Every metric the README lists is there, on the leader.
    let before = scrape(&nodes[0]).await;
    for name in [
        "jochat_requests_total",
        "jochat_raft_term",
        "jochat_raft_is_leader",
        "jochat_raft_leader_changes_total",
        "jochat_raft_commit_index",
        "jochat_raft_applied_index",
        "jochat_raft_replication_lag_entries",
        "jochat_log_entries",
        "jochat_snapshot_last_bytes",
        "jochat_snapshot_builds_total",
        "jochat_db_bytes",
        "jochat_subscribers",
        "jochat_sessions_active",
        "jochat_login_failures_total",
        "jochat_rate_limited_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
    ] {
        assert!(any(&before, name).is_some(), "{name} is missing");
    }
    for histogram in [
        "jochat_request_duration_seconds_count",
        "jochat_write_batch_commands_count",
        "jochat_fsync_seconds_count",
    ] {
        assert!(
            any(&before, histogram).is_some_and(|n| n > 0.0),
            "{histogram}"
        );
    }
    // The shipped dashboard asks only for metrics the node exposes.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("jochat_") || word.starts_with("process_") {
                    // The parser keeps a histogram's buckets under its base name.
                    let base = word.strip_suffix("_bucket").unwrap_or(word);
                    assert!(
                        any(&before, word).is_some() || any(&before, base).is_some(),
                        "the dashboard's {word} is not exposed"
                    );
                }
            }
        }
    }
    assert_eq!(get(&before, "jochat_raft_is_leader{}"), 1.0);
    assert!(get(&before, "jochat_sessions_active{}") >= 1.0);
    assert!(get(&before, "process_resident_memory_bytes{}") > 0.0);
    assert!(get(&before, "jochat_db_bytes{}") > 0.0);
    assert!(before.contains_key("jochat_raft_replication_lag_entries{peer=2}"));
    assert!(
        !before.contains_key("jochat_raft_replication_lag_entries{peer=1}"),
        "the leader is no peer of its own"
    );

    // 2. One send: the counter rises by one, the indexes move.
    leader.send_message(&alice, "bob", "counted").await.unwrap();
    let after = scrape(&nodes[0]).await;
    assert_eq!(get(&after, SENDS), get(&before, SENDS) + 1.0);
    assert!(
        get(&after, "jochat_raft_applied_index{}") > get(&before, "jochat_raft_applied_index{}")
    );
    assert!(
        get(&after, "jochat_raft_commit_index{}") >= get(&after, "jochat_raft_applied_index{}")
    );
    assert!(get(&after, "jochat_log_entries{}") > get(&before, "jochat_log_entries{}"));

    // 3. A wrong password is a login failure.
    assert!(leader.log_in("alice", "wrong").await.is_err());
    let failed = scrape(&nodes[0]).await;
    assert_eq!(
        get(&failed, "jochat_login_failures_total{}"),
        get(&after, "jochat_login_failures_total{}") + 1.0
    );

    // 4. Liveness everywhere; readiness on the leader only.
    assert_eq!(
        http_get(nodes[0].metrics_address.unwrap(), "/livez")
            .await
            .0,
        200
    );
    assert_eq!(
        http_get(nodes[1].metrics_address.unwrap(), "/livez")
            .await
            .0,
        200
    );
    assert_eq!(
        http_get(nodes[0].metrics_address.unwrap(), "/readyz")
            .await
            .0,
        200
    );
    let (status, body) = http_get(nodes[1].metrics_address.unwrap(), "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("not the leader"), "{body}");

    // 5. The leader stops: the new leader's term is higher, and it counted the change.
    let term = get(&after, "jochat_raft_term{}");
    let first = nodes.remove(0);
    first.stop().await;
    let survivor = eventually_leader(&nodes).await;
    let changed = scrape(&nodes[survivor]).await;
    assert!(get(&changed, "jochat_raft_term{}") > term);
    assert_eq!(get(&changed, "jochat_raft_is_leader{}"), 1.0);
    assert!(get(&changed, "jochat_raft_leader_changes_total{}") >= 2.0);
    stop_all(nodes).await;
}

/// The index in `nodes` of the one whose `/readyz` says ready, once one does.
async fn eventually_leader(nodes: &[ClusterNode]) -> usize {
    common::cluster::eventually_some("a survivor leads", || async {
        for (index, node) in nodes.iter().enumerate() {
            if http_get(node.metrics_address.unwrap(), "/readyz").await.0 == 200 {
                return Some(index);
            }
        }
        None
    })
    .await
}

async fn health_of(node: &ClusterNode) -> i32 {
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{}", node.address))
        .unwrap()
        .connect()
        .await
    else {
        return -1;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "jochat.v1.Chat".into(),
        })
        .await
        .map_or(-1, |reply| reply.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_quorum_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::default();
    let (mut nodes, _leader, _alice) = led_by_node_1(dir.path(), 3, &setup).await;
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    for node in &nodes {
        let node_id = node.id;
        eventually(&format!("node {node_id} is SERVING"), || async {
            health_of(node).await == serving
        })
        .await;
    }

    // 1. A node joining is NOT_SERVING until it is a voter, then SERVING.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = vec![Peer {
        id: 1,
        address: nodes[0].address.clone(),
    }];
    let fourth = start_node(dir.path(), 4, listener, peers, &setup);
    let seen = std::sync::Mutex::new(Vec::new());
    eventually("node 4 becomes SERVING", || async {
        let status = health_of(&fourth).await;
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        status == serving
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.contains(&not_serving),
        "node 4 said NOT_SERVING while it joined: {seen:?}"
    );
    nodes.push(fourth);

    // 2. With three of four stopped, the last has no quorum: NOT_SERVING.
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let kept = nodes.remove(3);
    stop_all(nodes).await;
    eventually("node 4 without a majority is NOT_SERVING", || async {
        health_of(&kept).await == not_serving
    })
    .await;

    // 3. Two come back on their files and ports: a majority again, SERVING.
    let mut back = Vec::new();
    for id in [1_u64, 2] {
        let listener = tokio::net::TcpListener::bind(&addresses[id as usize - 1])
            .await
            .unwrap();
        let peers = [1_u64, 2, 3, 4]
            .iter()
            .filter(|&&peer| peer != id)
            .map(|&peer| Peer {
                id: peer,
                address: addresses[peer as usize - 1].clone(),
            })
            .collect();
        back.push(start_node(dir.path(), id, listener, peers, &setup));
    }
    eventually("node 4 with a majority again is SERVING", || async {
        health_of(&kept).await == serving
    })
    .await;
    back.push(kept);
    stop_all(back).await;
}
