//! The closed-loop load benchmark, `jochat bench`: preloads, one task per concurrency slot,
//! latencies into HDR histograms, and the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use jochat_client::ChatServerClientBuilder;
use jochat_client::{
    AccountQuery, ChatServerClient, ClientError, InboxQuery, MessageStream, SessionToken,
};
use serde_json::json;

use super::local::{node_binary, start_local};
use super::{accounts, progress, IDLE_SETTLE, PASSWORD, PRELOAD_CONCURRENCY};
use crate::args::{BenchArgs, BenchOp};
use crate::output::Output;

/// `text` padded with `x` to `bytes` bytes (unchanged when it is as long already).
fn padded(mut text: String, bytes: usize) -> String {
    if text.len() < bytes {
        text.push(' ');
        let missing = bytes.saturating_sub(text.len());
        text.extend(std::iter::repeat_n('x', missing));
    }
    text
}

/// Runs `call(i)` for every `i` in `0..count`, [`PRELOAD_CONCURRENCY`] at a time, with a
/// progress bar labelled `what`; the first failure ends it.
async fn preload_each<F, Fut>(count: u64, what: &str, call: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let bar = progress(count, what);
    let mut tasks = Vec::new();
    for lane in 0..PRELOAD_CONCURRENCY as u64 {
        let (call, bar) = (call.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            for i in (lane..count).step_by(PRELOAD_CONCURRENCY) {
                call(i).await?;
                bar.inc(1);
            }
            Ok::<(), ClientError>(())
        }));
    }
    for task in tasks {
        task.await.context("a preload task failed")??;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Fills the cluster with `count` messages of `bytes` bytes (at least) through the normal
/// write path.
async fn preload(
    client: &ChatServerClient,
    sessions: &[(String, SessionToken)],
    count: u64,
    bytes: usize,
) -> anyhow::Result<()> {
    let (client, sessions) = (client.clone(), Arc::new(sessions.to_vec()));
    preload_each(count, "preload", move |i| {
        let (client, sessions) = (client.clone(), Arc::clone(&sessions));
        async move {
            let from = &sessions[i as usize % sessions.len()];
            let to = &sessions[(i as usize + 1) % sessions.len()].0;
            client
                .send_message(&from.1, to, &padded(format!("preloaded {i}"), bytes))
                .await
                .map(drop)
        }
    })
    .await
}

/// Makes `count` more accounts `<prefix>p<i>` (not logged in) through the normal write path,
/// [`PRELOAD_CONCURRENCY`] at a time.
async fn preload_accounts(
    client: &ChatServerClient,
    prefix: &str,
    count: u64,
) -> anyhow::Result<()> {
    let (client, prefix) = (client.clone(), Arc::new(prefix.to_owned()));
    preload_each(count, "accounts", move |i| {
        let (client, prefix) = (client.clone(), Arc::clone(&prefix));
        async move {
            match client.sign_up(&format!("{prefix}p{i}"), PASSWORD).await {
                Ok(_) | Err(ClientError::AlreadyExists(_)) => Ok(()),
                Err(error) => Err(error),
            }
        }
    })
    .await
}

/// What one slot measured.
struct SlotResult {
    latencies: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// One kind of call.
#[derive(Debug, Clone, Copy)]
enum Call {
    Send,
    Login,
    Inbox,
    Accounts,
    Subscribe,
}

/// The call the `n`th iteration of `op` makes: `mixed` is 50% sends, 40% inbox pages and
/// 10% account searches.
fn call_of(op: BenchOp, n: u64) -> Call {
    match op {
        BenchOp::Send => Call::Send,
        BenchOp::Login => Call::Login,
        BenchOp::Inbox => Call::Inbox,
        BenchOp::Accounts => Call::Accounts,
        BenchOp::Subscribe => Call::Subscribe,
        BenchOp::Mixed => match n % 10 {
            0..=4 => Call::Send,
            5..=8 => Call::Inbox,
            _ => Call::Accounts,
        },
    }
}

/// How long a subscribe call waits for its message on the stream.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(10);

/// Opens slot `slot`'s live stream: sends a first message to itself, subscribes from after it
/// (a real id: `after_id` 0 would mean "from now on", which could miss the next message),
/// and waits for a second one, so the stream is known to be live.
async fn open_stream(
    client: &ChatServerClient,
    sessions: &[(String, SessionToken)],
    slot: usize,
) -> Result<MessageStream, ClientError> {
    let (name, token) = &sessions[slot];
    let first = client
        .send_message(token, name, &format!("bench {slot} stream mark"))
        .await?;
    let mut stream = client.subscribe(token, first.id);
    let content = format!("bench {slot} stream open");
    client.send_message(token, name, &content).await?;
    delivered(&mut stream, &content).await?;
    Ok(stream)
}

/// Reads `stream` until the message with `content` arrives.
async fn delivered(stream: &mut MessageStream, content: &str) -> Result<(), ClientError> {
    let wait = async {
        loop {
            match stream.next().await {
                Some(Ok(message)) if message.content == content => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Err(ClientError::Unavailable("the live stream ended".into())),
            }
        }
    };
    tokio::time::timeout(DELIVERY_DEADLINE, wait)
        .await
        .map_err(|_| ClientError::DeadlineExceeded {
            operation: "subscribe",
            deadline: DELIVERY_DEADLINE,
        })?
}

/// One call from slot `slot` (`stream`: the slot's live stream, for subscribe).
async fn call(
    call: Call,
    client: &ChatServerClient,
    sessions: &[(String, SessionToken)],
    slot: usize,
    n: u64,
    stream: Option<&mut MessageStream>,
    content_bytes: usize,
) -> Result<(), ClientError> {
    let (name, token) = &sessions[slot];
    let next = &sessions[(slot + 1) % sessions.len()].0;
    match call {
        Call::Subscribe => {
            let stream = stream.ok_or_else(|| {
                ClientError::InvalidResponse("subscribe needs the slot's stream".into())
            })?;
            let content = format!("bench {slot}-{n}");
            client.send_message(token, name, &content).await?;
            delivered(stream, &content).await
        }
        Call::Send => client
            .send_message(
                token,
                next,
                &padded(format!("bench {slot}-{n}"), content_bytes),
            )
            .await
            .map(drop),
        Call::Login => client.log_in(name, PASSWORD).await.map(drop),
        Call::Inbox => {
            let query = InboxQuery {
                limit: 50,
                ..InboxQuery::default()
            };
            client.list_messages(token, &query).await.map(drop)
        }
        Call::Accounts => {
            let query = AccountQuery {
                pattern: "bench*".into(),
                limit: 50,
                ..AccountQuery::default()
            };
            client.list_accounts(token, &query).await.map(drop)
        }
    }
}

/// Runs the benchmark described by `args`.
///
/// # Errors
/// The local cluster cannot start, or the setup fails.
pub async fn run(
    args: &BenchArgs,
    servers: Vec<String>,
    builder: ChatServerClientBuilder,
) -> anyhow::Result<Output> {
    // 1. The cluster: given, or started here.
    // The folder outlives the nodes: `local` is dropped (the processes killed) explicitly
    // once their memory is read, the folder only at the end.
    let (local, builder, _dir) = match args.local {
        Some(count) => {
            let binary = node_binary(args.node_binary.as_deref())?;
            let dir = tempfile::Builder::new().prefix("jochat-bench-").tempdir()?;
            let (nodes, builder) = start_local(count, dir.path(), &binary, args.tls).await?;
            (Some(nodes), builder, Some(dir))
        }
        None => (None, builder, None),
    };
    let servers = local.as_ref().map_or(servers, |nodes| {
        nodes.iter().map(|n| n.address().to_owned()).collect()
    });
    let client = builder.servers(servers).build()?;

    // 2. The accounts and sessions (one per slot; login's slots log in again and again, and
    //    each log-in replaces the slot's session, which only login uses).
    let prefix = format!("bench{}x", std::process::id());
    let sessions = accounts(&client, &prefix, args.concurrency().max(2)).await?;
    if args.preload_accounts > 0 {
        preload_accounts(&client, &prefix, args.preload_accounts).await?;
    }
    if args.preload_messages > 0 {
        preload(
            &client,
            &sessions,
            args.preload_messages,
            args.content_bytes,
        )
        .await?;
    }

    // 3. The closed loop.
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let stop_at = measure_from + args.duration;
    let mut slots = Vec::new();
    for slot in 0..args.concurrency() {
        let (client, sessions, op) = (client.clone(), sessions.clone(), args.op);
        let content_bytes = args.content_bytes;
        slots.push(tokio::spawn(async move {
            let mut result = SlotResult {
                latencies: Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("fixed histogram bounds are valid"),
                errors: BTreeMap::new(),
            };
            let mut stream = match op {
                BenchOp::Subscribe => Some(open_stream(&client, &sessions, slot).await?),
                _ => None,
            };
            let mut n = 0;
            while Instant::now() < stop_at {
                let began = Instant::now();
                let outcome = call(
                    call_of(op, n),
                    &client,
                    &sessions,
                    slot,
                    n,
                    stream.as_mut(),
                    content_bytes,
                )
                .await;
                n += 1;
                if began < measure_from {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                        result.latencies.saturating_record(micros.max(1));
                    }
                    Err(error) => {
                        let kind = error
                            .code()
                            .map_or("client".to_owned(), |c| format!("{c:?}"));
                        *result.errors.entry(kind).or_default() += 1;
                    }
                }
            }
            Ok::<SlotResult, ClientError>(result)
        }));
    }
    let mut latencies: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("fixed histogram bounds are valid");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for slot in slots {
        let result = slot
            .await
            .context("a benchmark slot failed")?
            .context("a slot's live stream did not open")?;
        latencies
            .add(&result.latencies)
            .context("histograms of one shape")?;
        for (kind, count) in result.errors {
            *errors.entry(kind).or_default() += count;
        }
    }

    // 4. The report, and each local node's peak memory.
    let ok = latencies.len();
    let error_count: u64 = errors.values().sum();
    let seconds = args.duration.as_secs_f64();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p90, p99, max) = (ms(0.5), ms(0.9), ms(0.99), latencies.max() as f64 / 1000.0);
    let ops_per_sec = if seconds > 0.0 {
        ok as f64 / seconds
    } else {
        0.0
    };
    // Memory once the load has stopped: the peak, and what stays resident when idle (read
    // after a pause, once the nodes' hashing threads have let their working memory go).
    if local.is_some() {
        tokio::time::sleep(IDLE_SETTLE).await;
    }
    let memory: Vec<(u64, Option<u64>, Option<u64>)> = local
        .as_ref()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| (n.id(), n.peak_rss_kib(), n.rss_kib()))
                .collect()
        })
        .unwrap_or_default();
    drop(local);
    let op = args.op.as_str();
    let mut text = format!(
        "op {op}, concurrency {}, {seconds:.1} s measured after {:.1} s warm-up\n\
         ok {ok}, errors {error_count}{}\n\
         throughput {ops_per_sec:.0} ops/s\n\
         latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}",
        args.concurrency(),
        args.warmup.as_secs_f64(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" {errors:?}")
        },
    );
    let mib =
        |kib: &Option<u64>| kib.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    for (id, peak, now) in &memory {
        text.push_str(&format!(
            "\nnode {id}: resident memory peak {} MiB, after the run {} MiB",
            mib(peak),
            mib(now)
        ));
    }
    let report = json!({
        "op": op,
        "concurrency": args.concurrency(),
        "duration_s": seconds,
        "warmup_s": args.warmup.as_secs_f64(),
        "ok": ok,
        "errors": error_count,
        "errors_by_code": errors,
        "ops_per_sec": ops_per_sec,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max,
        "nodes": memory
            .iter()
            .map(|(id, peak, now)| json!({"id": id, "peak_rss_kib": peak, "rss_after_kib": now}))
            .collect::<Vec<_>>(),
    });
    Ok(Output::new(text, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_padded_to_the_size_asked() {
        assert_eq!(padded("abc".into(), 0), "abc");
        assert_eq!(padded("abc".into(), 2), "abc");
        let long = padded("preloaded 7".into(), 1000);
        assert_eq!(long.len(), 1000);
        assert!(long.starts_with("preloaded 7 xx"));
    }
}
