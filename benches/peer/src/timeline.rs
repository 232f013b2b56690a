//! `peer-bench --timeline N`: where the time of one write goes.
//!
//! Three `jochat-node` processes on loopback (`--sync-mode full`), logging JSON with the
//! write path's timeline events (`jochat_node::TIMELINE`) and the served-request lines; one
//! client sends `N` messages one after another to the leader (after a warm-up), noting when
//! each call began and ended. Each send's entry is found by its log index, and every stage's
//! moment is taken relative to the call's start; the medians over all sends are printed,
//! stage by stage, with the median commit times (SQL work and fsync) of each node.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jochat_client::ChatServerClient;
use jochat_process::{NodeCommand, NodeProcess};
use serde_json::Value;

/// Sends before the measured ones.
const WARMUP_SENDS: usize = 200;

/// Microseconds since the Unix epoch, now.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC timestamp as tracing writes it
/// (`2026-11-30T20:32:41.842200Z`).
fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.split('-').map(str::parse::<i64>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(str::parse::<i64>);
    let (hh, mm, ss) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    let micros: i64 = format!("{fraction:0<6}").get(..6)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

/// One timeline event of one node.
#[derive(Debug, Clone)]
struct Event {
    at_us: i64,
    stage: String,
    last: Option<u64>,
    fields: Value,
}

fn events(node: &NodeProcess) -> Vec<Event> {
    node.log_lines("")
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|value| {
            let at_us = parse_timestamp(value["timestamp"].as_str()?)?;
            let stage = if value["message"] == "request served"
                && value["span"]["operation"] == "send_message"
            {
                "served".to_owned()
            } else if value["target"] == TIMELINE {
                value["stage"].as_str()?.to_owned()
            } else {
                return None;
            };
            let last = value["last"].as_u64().or_else(|| value["index"].as_u64());
            Some(Event {
                at_us,
                stage,
                last,
                fields: value,
            })
        })
        .collect()
}

/// The timeline's tracing target, `jochat_node::TIMELINE` (this program does not link the
/// node's library; it reads the nodes' logs).
const TIMELINE: &str = "jochat::timeline";

fn median(mut values: Vec<i64>) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[values.len() / 2])
}

fn node(binary: &Path, dir: &Path, id: u64, peers: &[&NodeProcess]) -> anyhow::Result<NodeProcess> {
    NodeCommand::new(binary, id, dir.join(format!("node-{id}.db")))
        .peers(peers.iter().map(|p| (p.id(), p.address().to_owned())))
        .log_filter(
            "warn,jochat_node::server=info,jochat_node::service=debug,jochat::timeline=trace",
        )
        .arg("--log-format")
        .arg("json")
        .spawn()
        .with_context(|| format!("node {id} did not start"))
}

/// Runs the timeline with `sends` measured sends and prints it.
pub async fn run(node_binary: &Path, sends: usize) -> anyhow::Result<()> {
    if sends == 0 || sends > 800 {
        // Each node keeps its latest 10,000 log lines; a send writes about ten on the leader.
        bail!("--timeline: between 1 and 800 sends");
    }
    let dir = tempfile::Builder::new()
        .prefix("peer-bench-timeline-")
        .tempdir()?;
    let first = node(node_binary, dir.path(), 1, &[])?;
    let second = node(node_binary, dir.path(), 2, &[&first])?;
    let third = node(node_binary, dir.path(), 3, &[&first, &second])?;
    let nodes = [first, second, third];
    let client = ChatServerClient::builder()
        .servers([nodes[0].address().to_owned()])
        .discover_members(false)
        .build()?;
    let waited = Instant::now();
    loop {
        if let Ok(info) = client.cluster_info().await {
            if info.leader_id == Some(1) && info.members.len() == 3 {
                break;
            }
        }
        if waited.elapsed().as_secs() > 60 {
            bail!("node 1 did not lead three members within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.sign_up("ann", "pw").await?;
    client.sign_up("ben", "pw").await?;
    let session = client.log_in("ann", "pw").await?.token;
    for _ in 0..WARMUP_SENDS {
        client.send_message(&session, "ben", "warm-up").await?;
    }
    let mut calls = Vec::with_capacity(sends);
    for i in 0..sends {
        let began = now_us();
        client
            .send_message(&session, "ben", &format!("timeline {i}"))
            .await?;
        calls.push((began, now_us()));
    }
    // Let the followers' logs catch up with their last lines.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let per_node: Vec<Vec<Event>> = nodes.iter().map(events).collect();
    report(&calls, &per_node)
}

/// The writer thread's steps inside the leader's append and apply: (label, the stage they
/// follow).
const WRITER_STEPS: [(&str, &str); 6] = [
    ("leader writer: append's batch taken", "append"),
    ("leader writer: append synced (fdatasync)", "append"),
    ("leader writer: append reported", "append"),
    ("leader writer: apply's batch taken", "apply"),
    ("leader writer: apply committed", "apply"),
    ("leader writer: apply reported", "apply"),
];

/// For each send, the leader writer's first batch, commit and report after its `append` and
/// after its `apply`, as offsets from the call's start.
fn writer_steps(
    calls: &[(i64, i64)],
    per_node: &[Vec<Event>],
    offsets: &mut HashMap<&str, Vec<i64>>,
) {
    let leader = &per_node[0];
    for &(began, ended) in calls {
        // An append is durable once the log's files are synced; an apply once its
        // transaction commits.
        for (start, done, labels) in [
            ("append", "log.sync", &WRITER_STEPS[..3]),
            ("apply", "commit", &WRITER_STEPS[3..]),
        ] {
            let Some(from) = leader
                .iter()
                .position(|e| e.stage == start && e.at_us >= began && e.at_us <= ended)
            else {
                continue;
            };
            let after = &leader[from..];
            let batch = after.iter().find(|e| e.stage == "writer.batch");
            let commit = after.iter().find(|e| e.stage == done);
            let reported = after.iter().find(|e| e.stage == "writer.reported");
            for ((label, _), event) in labels.iter().zip([batch, commit, reported]) {
                if let Some(event) = event {
                    offsets.entry(label).or_default().push(event.at_us - began);
                }
            }
        }
    }
}

/// The stages, in the order they happen, as (label, node index, stage, extra filter).
const STAGES: [(&str, usize, &str); 14] = [
    ("leader: handler start", 0, "handler"),
    ("leader: proposer hands the entry to Raft", 0, "propose"),
    ("leader: log append queued", 0, "append"),
    ("leader: entry sent to node 2", 0, "replicate"),
    ("node 2: AppendEntries received", 1, "append_entries"),
    ("node 2: log append queued", 1, "append"),
    ("node 2: log append durable (fsync)", 1, "append.flushed"),
    (
        "node 2: AppendEntries answered",
        1,
        "append_entries.answered",
    ),
    ("leader: log append durable (fsync)", 0, "append.flushed"),
    ("leader: node 2's answer received", 0, "replicated"),
    ("leader: apply starts", 0, "apply"),
    ("leader: applied", 0, "applied"),
    ("leader: client_write returns", 0, "committed"),
    ("leader: reply sent (handler end)", 0, "served"),
];

fn report(calls: &[(i64, i64)], per_node: &[Vec<Event>]) -> anyhow::Result<()> {
    let leader = &per_node[0];
    let mut offsets: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut matched = 0;
    for &(began, ended) in calls {
        // The entry of this send: the leader's `committed` inside the call.
        let Some(index) = leader
            .iter()
            .find(|e| e.stage == "committed" && e.at_us >= began && e.at_us <= ended)
            .and_then(|e| e.last)
        else {
            continue;
        };
        let served = leader
            .iter()
            .find(|e| e.stage == "served" && e.at_us >= began && e.at_us <= ended);
        let Some(served) = served else { continue };
        matched += 1;
        let latency = served.fields["latency_us"].as_i64().unwrap_or(0);
        offsets
            .entry("leader: handler start")
            .or_default()
            .push(served.at_us - latency - began);
        offsets
            .entry("leader: reply sent (handler end)")
            .or_default()
            .push(served.at_us - began);
        offsets
            .entry("client: reply received")
            .or_default()
            .push(ended - began);
        let propose = leader
            .iter()
            .filter(|e| e.stage == "propose" && e.at_us >= began && e.at_us <= ended)
            .map(|e| e.at_us)
            .next();
        if let Some(at) = propose {
            offsets
                .entry("leader: proposer hands the entry to Raft")
                .or_default()
                .push(at - began);
        }
        for (label, node, stage) in STAGES {
            if matches!(stage, "handler" | "served" | "propose") {
                continue;
            }
            let found = per_node[node].iter().find(|e| {
                e.stage == stage
                    && e.last == Some(index)
                    && (stage != "replicate" && stage != "replicated" || e.fields["to"] == 2)
            });
            if let Some(event) = found {
                offsets.entry(label).or_default().push(event.at_us - began);
            }
        }
    }
    if matched == 0 {
        bail!("no send could be matched with its log lines");
    }
    writer_steps(calls, per_node, &mut offsets);
    println!("One send, three nodes, one client: {matched} sends, median moment of each stage after the client's call began");
    println!();
    println!("| stage | at (µs) | since the previous (µs) |");
    println!("|---|---|---|");
    let mut previous = 0;
    let labels = STAGES
        .iter()
        .map(|(label, _, _)| *label)
        .chain(std::iter::once("client: reply received"));
    let mut labels: Vec<&str> = labels.collect();
    // The writer's steps, placed by their medians among the stages.
    for (step, _) in WRITER_STEPS {
        labels.push(step);
    }
    labels.sort_by_key(|label| {
        offsets
            .get(label)
            .cloned()
            .and_then(median)
            .unwrap_or(i64::MAX)
    });
    for label in labels {
        let Some(at) = offsets.get(label).cloned().and_then(median) else {
            println!("| {label} | – | – |");
            continue;
        };
        println!("| {label} | {at} | {} |", at - previous);
        previous = at;
    }
    println!();
    println!("| node | log syncs | fdatasync (µs, median) | durable commits (votes, purges) | SQL work (µs, median) | commit incl. fsync (µs, median) | lazy commits (apply) | SQL work | commit |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, events) in per_node.iter().enumerate() {
        let commits = |durable: bool| {
            let chosen: Vec<&Event> = events
                .iter()
                .filter(|e| e.stage == "commit" && e.fields["durable"] == durable)
                .collect();
            let field = |name: &str| {
                median(
                    chosen
                        .iter()
                        .filter_map(|e| e.fields[name].as_i64())
                        .collect(),
                )
                .map_or("–".to_owned(), |v| v.to_string())
            };
            (chosen.len(), field("worked_us"), field("commit_us"))
        };
        let (n, work, commit) = commits(true);
        let (lazy, lazy_work, lazy_commit) = commits(false);
        let syncs: Vec<i64> = events
            .iter()
            .filter(|e| e.stage == "log.sync")
            .filter_map(|e| e.fields["sync_us"].as_i64())
            .collect();
        let synced = syncs.len();
        let sync_us = median(syncs).map_or("–".to_owned(), |v| v.to_string());
        println!(
            "| {} | {synced} | {sync_us} | {n} | {work} | {commit} | {lazy} | {lazy_work} | {lazy_commit} |",
            i + 1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_microseconds_since_the_epoch() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            parse_timestamp("2026-11-30T20:32:41.842200Z"),
            Some(1_796_070_761_842_200)
        );
        assert_eq!(
            parse_timestamp("2000-03-01T00:00:00Z"),
            Some(951_868_800_000_000)
        );
        assert_eq!(parse_timestamp("not a time"), None);
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(vec![5, 1, 3]), Some(3));
        assert_eq!(median(Vec::new()), None);
    }
}
