//! `jochat bench`: a closed-loop benchmark over the failover client.
//!
//! One client task per concurrency slot calls the chosen operation again and again for the
//! warm-up and then the measured duration; the latency of each successful call in the
//! measured window goes into that slot's HDR histogram, errors are counted apart by kind.
//! The accounts and sessions the operation needs are made first (with a progress bar). With
//! `--local N` it first starts its own N-node cluster of `jochat-node` processes in a
//! temporary folder, reports each node's peak resident memory, and stops them at the end.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use jochat_client::{
    AccountQuery, ChatServerClient, ClientError, InboxQuery, MessageStream, SessionToken,
};
use serde_json::json;

use crate::args::{BenchArgs, BenchOp, FailoverArgs};
use crate::output::Output;

/// The password of every benchmark account.
const PASSWORD: &str = "bench-password";
/// How long after the load stops `--local` nodes' idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// Sends per preload batch in flight at once.
const PRELOAD_CONCURRENCY: usize = 32;

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: expected a number with ms, s or m, e.g. 10s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("{raw:?}: unknown unit {other:?} (ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{raw:?}: must be between 0 and 24 h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// One node process of a `--local` cluster; killed when dropped.
struct LocalNode {
    id: u64,
    address: String,
    child: Child,
    /// How to start it again on the same file and port.
    binary: PathBuf,
    db: PathBuf,
    peers: Vec<String>,
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalNode {
    /// A `/proc/<pid>/status` memory field, in KiB (Linux only).
    fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Peak resident memory so far, in KiB (`VmHWM`).
    fn peak_rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmHWM:")
    }

    /// Resident memory now, in KiB (`VmRSS`).
    fn rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmRSS:")
    }

    /// SIGKILLs the process and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the node again, on its file and at its address.
    fn restart(&mut self) -> anyhow::Result<()> {
        let port: u16 = self
            .address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .with_context(|| format!("node {} has no port in {}", self.id, self.address))?;
        let (child, address) = spawn_node(&self.binary, self.id, port, &self.db, &self.peers)?;
        self.child = child;
        self.address = address;
        Ok(())
    }
}

/// Starts node `id` of a local cluster on `port` (0: any) and returns it with the address it
/// serves at, once it says so.
fn spawn_node(
    binary: &Path,
    id: u64,
    port: u16,
    db: &Path,
    peers: &[String],
) -> anyhow::Result<(Child, String)> {
    let mut command = Command::new(binary);
    command
        .args(["--server-id", &id.to_string(), "--port", &port.to_string()])
        .arg("--db-file")
        .arg(db)
        .env("RUST_LOG", "warn,jochat_node::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !peers.is_empty() {
        command.args(["--peers", &peers.join(",")]);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (lines_in, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_in.send(line).is_err() {
                return;
            }
        }
    });
    let address = loop {
        let line = match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node {id} did not start");
            }
        };
        if let Some(rest) = line.split("address=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || while lines.recv().is_ok() {});
    Ok((child, address))
}

/// The `jochat-node` binary: `--node-binary`, else the one beside this `jochat`.
fn node_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let beside = std::env::current_exe()
        .context("cannot find this program's path")?
        .with_file_name("jochat-node");
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "--local needs the jochat-node binary: build it (cargo build --release) or pass --node-binary"
    )
}

/// Starts `count` nodes in `dir`, each listing the ones before it, and waits until one leads
/// all of them.
async fn start_local(count: u64, dir: &Path, binary: &Path) -> anyhow::Result<Vec<LocalNode>> {
    let mut nodes: Vec<LocalNode> = Vec::new();
    for id in 1..=count {
        let peers: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}:{}", n.id, n.address))
            .collect();
        let db = dir.join(format!("node-{id}.db"));
        let (child, address) = spawn_node(binary, id, 0, &db, &peers)?;
        nodes.push(LocalNode {
            id,
            address,
            child,
            binary: binary.to_owned(),
            db,
            peers,
        });
    }
    let client = ChatServerClient::builder()
        .servers(nodes.iter().map(|n| n.address.clone()))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(info) = client.cluster_info().await {
            let voters = info
                .members
                .iter()
                .filter(|m| m.role == jochat_client::MemberRole::Voter)
                .count();
            if info.leader_id.is_some() && voters == count as usize {
                return Ok(nodes);
            }
        }
        if Instant::now() > deadline {
            bail!("the local cluster did not form within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn progress(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Makes `count` accounts `<prefix><i>` and logs each in.
async fn accounts(
    client: &ChatServerClient,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, SessionToken)>> {
    let bar = progress(count as u64, "accounts");
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}{i}");
        match client.sign_up(&name, PASSWORD).await {
            Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
            Err(error) => return Err(error.into()),
        }
        let token = client.log_in(&name, PASSWORD).await?.token;
        sessions.push((name, token));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(sessions)
}

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
pub async fn run(args: &BenchArgs, servers: Vec<String>) -> anyhow::Result<Output> {
    // 1. The cluster: given, or started here.
    // The folder outlives the nodes: `local` is dropped (the processes killed) explicitly
    // once their memory is read, the folder only at the end.
    let (local, _dir) = match args.local {
        Some(count) => {
            let binary = node_binary(args.node_binary.as_deref())?;
            let dir = tempfile::Builder::new().prefix("jochat-bench-").tempdir()?;
            (
                Some(start_local(count, dir.path(), &binary).await?),
                Some(dir),
            )
        }
        None => (None, None),
    };
    let servers = local.as_ref().map_or(servers, |nodes| {
        nodes.iter().map(|n| n.address.clone()).collect()
    });
    let client = ChatServerClient::builder().servers(servers).build()?;

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
                .map(|n| (n.id, n.peak_rss_kib(), n.rss_kib()))
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
async fn current_leader(client: &ChatServerClient, nodes: &[LocalNode]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(info) = client.cluster_info().await {
            if let Some(id) = info
                .leader_id
                .filter(|id| nodes.iter().any(|n| n.id == *id))
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
async fn caught_up(address: &str, index: u64) -> anyhow::Result<()> {
    let node = ChatServerClient::builder()
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
    let mut nodes = start_local(count, dir.path(), &binary).await?;
    let client = ChatServerClient::builder()
        .servers(nodes.iter().map(|n| n.address.clone()))
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
            .find(|n| n.id == leader)
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
        let address = node.address.clone();
        let index = client.cluster_info().await?.commit_index;
        caught_up(&address, index).await?;
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

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
    }
}
