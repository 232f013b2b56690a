//! The failover benchmark, `jochat bench failover`: writers keep writing while the leader is
//! SIGKILLed, restarted and caught up, again and again; every pause is reported and every
//! acknowledged write is checked to be stored exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jochat_client::ChatServerClientBuilder;
use jochat_client::{ChatServerClient, InboxQuery, SessionToken};
use jochat_process::NodeProcess;
use serde_json::json;

use super::local::{node_binary, start_local};
use super::{accounts, progress};
use crate::args::{BenchArgs, FailoverArgs};
use crate::output::Output;

/// One acknowledged write of the failover run.
struct Acked {
    /// When the write was issued.
    started: Instant,
    /// When it was acknowledged.
    at: Instant,
    writer: usize,
    seq: u64,
    id: i64,
}

fn failover_content(writer: usize, seq: u64) -> String {
    format!("failover {writer}-{seq}")
}

/// Waits until the cluster reports a leader among the running nodes, and returns its id.
async fn current_leader(client: &ChatServerClient, nodes: &[NodeProcess]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(info) = client.cluster_info().await {
            if let Some(id) = info
                .leader_id
                .filter(|id| nodes.iter().any(|n| n.id() == *id))
            {
                return Ok(id);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the node at `address` follows a leader and has applied `index`.
async fn caught_up(
    builder: &ChatServerClientBuilder,
    address: &str,
    index: u64,
) -> anyhow::Result<()> {
    let node = builder
        .clone()
        .servers([address.to_owned()])
        .discover_members(false)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(info) = node.cluster_info().await {
            if info.leader_id.is_some() && info.commit_index >= index {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the node at {address} did not catch up to index {index} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message in the inbox of `token`, as content -> ids.
async fn inbox_contents(
    client: &ChatServerClient,
    token: &SessionToken,
    into: &mut BTreeMap<String, Vec<i64>>,
) -> anyhow::Result<()> {
    let mut offset = 0;
    loop {
        let query = InboxQuery {
            offset,
            limit: 1000,
            ..InboxQuery::default()
        };
        let page = client.list_messages(token, &query).await?;
        if page.messages.is_empty() {
            return Ok(());
        }
        offset += page.messages.len() as u64;
        for message in page.messages {
            into.entry(message.content).or_default().push(message.id);
        }
    }
}

/// `jochat bench failover`: writes continuously while it SIGKILLs the leader, restarts it,
/// and does it again; reports each pause (kill → first write acknowledged after it) and
/// checks every acknowledged write is stored exactly once.
///
/// # Errors
/// Not `--local` with at least 3 nodes; the cluster cannot start or recover; or an
/// acknowledged write was lost or doubled.
pub async fn failover(args: &BenchArgs, failover: &FailoverArgs) -> anyhow::Result<Output> {
    let Some(count) = args.local.filter(|count| *count >= 3) else {
        bail!("bench failover needs --local N with N >= 3: it kills and restarts the nodes itself");
    };
    let binary = node_binary(args.node_binary.as_deref())?;
    let dir = tempfile::Builder::new().prefix("jochat-bench-").tempdir()?;
    let (mut nodes, builder) = start_local(count, dir.path(), &binary, args.tls).await?;
    let client = builder
        .clone()
        .servers(nodes.iter().map(|n| n.address().to_owned()))
        .build()?;
    let writers = usize::try_from(failover.writers).unwrap_or(1);
    let prefix = format!("failover{}x", std::process::id());
    // Writer i sends to account writers + i, so each inbox holds one writer's messages.
    let sessions = accounts(&client, &prefix, writers * 2).await?;

    // 1. The writers: each acknowledged write is recorded with when it was acknowledged. A
    //    write that fails is abandoned (its content is never used again), so every content
    //    names one attempt.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<Acked>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        let token = sessions[writer].1.clone();
        let recipient = sessions[writers + writer].0.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let content = failover_content(writer, seq);
                let started = Instant::now();
                match client.send_message(&token, &recipient, &content).await {
                    Ok(sent) => acked
                        .lock()
                        .expect("the acknowledgement log's mutex is never held across a panic")
                        .push(Acked {
                            started,
                            at: Instant::now(),
                            writer,
                            seq,
                            id: sent.id,
                        }),
                    Err(error) => {
                        let kind = error
                            .code()
                            .map_or("client".to_owned(), |c| format!("{c:?}"));
                        *errors.entry(kind).or_default() += 1;
                    }
                }
                seq += 1;
            }
            errors
        }));
    }
    let acked_count = |acked: &std::sync::Mutex<Vec<Acked>>| {
        acked
            .lock()
            .expect("the acknowledgement log's mutex is never held across a panic")
            .len()
    };

    // 2. Kill, measure, restart, let it catch up; again.
    let bar = progress(failover.kills, "kills");
    let mut pauses: Vec<Duration> = Vec::new();
    let mut leaders = Vec::new();
    for _ in 0..failover.kills {
        // Steady first: writes flowing for a while.
        let before = acked_count(&acked);
        let steady = Instant::now() + Duration::from_secs(30);
        while acked_count(&acked) < before + writers * 20 {
            if Instant::now() > steady {
                bail!("writes did not resume within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let leader = current_leader(&client, &nodes).await?;
        leaders.push(leader);
        let node = nodes
            .iter_mut()
            .find(|n| n.id() == leader)
            .context("the leader is one of the local nodes")?;
        let killed_at = Instant::now();
        node.kill();
        // The first write issued after the kill and acknowledged (a reply the old leader had
        // already sent may still arrive just after the kill; it does not end the pause).
        let pause = loop {
            let first = acked
                .lock()
                .expect("the acknowledgement log's mutex is never held across a panic")
                .iter()
                .rev()
                .take_while(|a| a.at > killed_at)
                .filter(|a| a.started > killed_at)
                .map(|a| a.at - killed_at)
                .min();
            if let Some(pause) = first {
                break pause;
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                bail!("no write was acknowledged within 60 s of killing node {leader}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        pauses.push(pause);
        node.restart()?;
        let address = node.address().to_owned();
        let index = client.cluster_info().await?.commit_index;
        caught_up(&builder, &address, index).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        for (kind, count) in task.await.context("a writer failed")? {
            *errors.entry(kind).or_default() += count;
        }
    }

    // 3. Every acknowledged write is stored exactly once, under the id it was acknowledged
    //    with.
    let mut stored: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (_, token) in &sessions[writers..] {
        inbox_contents(&client, token, &mut stored).await?;
    }
    let acked = std::mem::take(
        &mut *acked
            .lock()
            .expect("the acknowledgement log's mutex is never held across a panic"),
    );
    let (mut lost, mut doubled, mut moved) = (0u64, 0u64, 0u64);
    for write in &acked {
        match stored
            .get(&failover_content(write.writer, write.seq))
            .map(Vec::as_slice)
        {
            None | Some([]) => lost += 1,
            Some([id]) if *id == write.id => {}
            Some([_]) => moved += 1,
            Some(_) => doubled += 1,
        }
    }
    drop(nodes);

    // 4. The report.
    let mut sorted = pauses.clone();
    sorted.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let median = sorted.get(sorted.len() / 2).map_or(0.0, ms);
    let max = sorted.last().map_or(0.0, ms);
    let error_count: u64 = errors.values().sum();
    let text = format!(
        "failover: {} kills of the leader (nodes {leaders:?}), {writers} writers\n\
         pause (kill -> first acknowledged write) ms: median {median:.0}, max {max:.0}; each: {}\n\
         acknowledged writes {}, lost {lost}, doubled {doubled}, stored under another id {moved}; \
         failed writes {error_count}{}",
        pauses.len(),
        pauses
            .iter()
            .map(|p| format!("{:.0}", ms(p)))
            .collect::<Vec<_>>()
            .join(" "),
        acked.len(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" {errors:?}")
        },
    );
    let report = json!({
        "op": "failover",
        "kills": pauses.len(),
        "writers": writers,
        "leaders_killed": leaders,
        "pause_ms": pauses.iter().map(ms).collect::<Vec<_>>(),
        "pause_median_ms": median,
        "pause_max_ms": max,
        "acknowledged": acked.len(),
        "lost": lost,
        "doubled": doubled,
        "stored_under_another_id": moved,
        "errors": error_count,
        "errors_by_code": errors,
    });
    if lost + doubled + moved > 0 {
        bail!("{text}\nacknowledged writes were not stored exactly once");
    }
    Ok(Output::new(text, report))
}
