//! `peer-bench`: JoChat against etcd on the same machine, side by side.
//!
//! For each client count it starts a fresh three-member etcd cluster on loopback (Debian's
//! `etcd-server`, installed with apt when missing; the WAL fsynced on every commit) and
//! drives its leader with a closed loop of puts from Rust (one connection per client, a
//! fresh key and a 20-byte value per put), then runs `jochat bench --local 3 --op send` with
//! the same client count, duration and warm-up (three fresh `jochat-node` processes,
//! `--sync-mode full`), and prints the table the README quotes:
//!
//! ```text
//! cargo build --release && cargo run --release -p jochat-peer-bench -- --clients 1,8,64
//! ```
//!
//! `--timeline N` instead measures where the time of one write goes (see [`timeline`]), and
//! `--disk N` what one durable log append costs on this disk (see [`disk`]).
//!
//! It is not shipped: it lives beside the product to keep the comparison reproducible.

mod disk;
mod etcd;
mod timeline;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;

/// JoChat against etcd, three nodes each on loopback, the same closed-loop write load.
#[derive(Debug, Parser)]
#[command(name = "peer-bench")]
struct Args {
    /// Client counts, one table row each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Measured time per row and system, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Unmeasured time before it, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// The etcd binary (default: `etcd` on PATH, installed with apt-get when missing).
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// The `jochat` binary (default: beside this one, i.e. `target/release/jochat`).
    #[arg(long)]
    jochat: Option<PathBuf>,
    /// The `jochat-node` binary (default: beside this one).
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// Also print the rows as one JSON line.
    #[arg(long)]
    json: bool,
    /// Instead of the comparison: where the time of one write goes, over this many sends of
    /// one client to three JoChat nodes (the medians of each stage, from the nodes' timeline
    /// events).
    #[arg(long, value_name = "SENDS")]
    timeline: Option<usize>,
    /// Instead of the comparison: what one durable log append costs on this disk, as SQLite
    /// and as a segment file, over this many appends.
    #[arg(long, value_name = "APPENDS")]
    disk: Option<usize>,
}

/// A free loopback port (free now; the process given it binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One system's figures for one row.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Successful operations per second in the measured window.
    pub ops_per_sec: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Failed operations in the measured window.
    pub errors: u64,
}

/// Latencies of successful calls, and the failures.
pub struct Recorder {
    latencies: Histogram<u64>,
    errors: u64,
}

impl Recorder {
    /// An empty recorder (microseconds, 1 µs to 60 s, 3 significant figures).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latencies: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
        })
    }

    /// One call that took `took`.
    pub fn record(&mut self, took: Duration, ok: bool) {
        if ok {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.latencies.saturating_record(micros.max(1));
        } else {
            self.errors += 1;
        }
    }

    /// Adds another recorder's calls.
    pub fn merge(&mut self, other: Recorder) -> anyhow::Result<()> {
        self.latencies.add(&other.latencies)?;
        self.errors += other.errors;
        Ok(())
    }

    /// The median and the 99th percentile, in microseconds.
    pub fn quantiles_us(&self) -> (u64, u64) {
        (
            self.latencies.value_at_quantile(0.5),
            self.latencies.value_at_quantile(0.99),
        )
    }

    /// The figures over a window of `duration`.
    pub fn measured(&self, duration: Duration) -> Measured {
        let ms = |q: f64| self.latencies.value_at_quantile(q) as f64 / 1000.0;
        Measured {
            ops_per_sec: self.latencies.len() as f64 / duration.as_secs_f64(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            errors: self.errors,
        }
    }
}

/// A binary given, or the one of that name beside this program.
fn beside_me(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("this program has no folder")?
            .join(name),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build --release`) or name it with a flag",
            path.display()
        );
    }
    Ok(path)
}

/// `jochat --json bench --local 3 --op send` with `clients` clients.
fn jochat_row(
    jochat: &PathBuf,
    node_binary: &PathBuf,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let output = Command::new(jochat)
        .args(["--json", "bench", "--local", "3", "--op", "send"])
        .args(["--concurrency", &clients.to_string()])
        .args(["--duration", &secs(duration), "--warmup", &secs(warmup)])
        .arg("--node-binary")
        .arg(node_binary)
        .output()
        .with_context(|| format!("{} could not be run", jochat.display()))?;
    if !output.status.success() {
        bail!(
            "jochat bench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .context("jochat bench printed no JSON line")?;
    let report: serde_json::Value = serde_json::from_str(line)?;
    let number = |key: &str| {
        report[key]
            .as_f64()
            .with_context(|| format!("jochat bench's report has no {key}: {line}"))
    };
    Ok(Measured {
        ops_per_sec: number("ops_per_sec")?,
        p50_ms: number("p50_ms")?,
        p99_ms: number("p99_ms")?,
        errors: report["errors"].as_u64().unwrap_or(0),
    })
}

/// One row: etcd, then JoChat.
async fn row(
    args: &Args,
    etcd_binary: &std::path::Path,
    jochat: &PathBuf,
    node_binary: &PathBuf,
    clients: usize,
) -> anyhow::Result<(Measured, Measured)> {
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let duration = Duration::from_secs_f64(args.duration_secs);
    let etcd = {
        let cluster = etcd::Cluster::start(etcd_binary, 3)?;
        let leader = cluster.leader(Duration::from_secs(20)).await?;
        etcd::closed_loop(&leader, clients, warmup, duration).await?
    };
    let jochat = jochat_row(jochat, node_binary, clients, warmup, duration)?;
    Ok((jochat, etcd))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients: give positive counts, e.g. 1,8,64");
    }
    if !(args.duration_secs > 0.0 && args.warmup_secs >= 0.0) {
        bail!("--duration-secs must be positive and --warmup-secs not negative");
    }
    if let Some(appends) = args.disk {
        return disk::run(appends);
    }
    let node_binary = beside_me(args.node_binary.clone(), "jochat-node")?;
    if let Some(sends) = args.timeline {
        return timeline::run(&node_binary, sends).await;
    }
    let etcd_binary = etcd::find_or_install(args.etcd.as_deref())?;
    let jochat = beside_me(args.jochat.clone(), "jochat")?;
    let version = Command::new(&etcd_binary).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    eprintln!(
        "{} against JoChat ({}), {} s per point after {} s of warm-up",
        version.lines().next().unwrap_or("etcd"),
        jochat.display(),
        args.duration_secs,
        args.warmup_secs
    );

    let mut rows = Vec::new();
    for &clients in &args.clients {
        let (jochat_figures, etcd_figures) =
            row(&args, &etcd_binary, &jochat, &node_binary, clients).await?;
        eprintln!(
            "{clients} clients: JoChat {:.0}/s, etcd {:.0}/s",
            jochat_figures.ops_per_sec, etcd_figures.ops_per_sec
        );
        rows.push((clients, jochat_figures, etcd_figures));
    }

    println!(
        "| clients | JoChat sends/s (p50 / p99 ms) | etcd puts/s (p50 / p99 ms) | JoChat ÷ etcd |"
    );
    println!("|---|---|---|---|");
    for (clients, j, e) in &rows {
        println!(
            "| {clients} | {:.0} ({:.2} / {:.2}) | {:.0} ({:.2} / {:.2}) | {:.2} |",
            j.ops_per_sec,
            j.p50_ms,
            j.p99_ms,
            e.ops_per_sec,
            e.p50_ms,
            e.p99_ms,
            j.ops_per_sec / e.ops_per_sec.max(f64::MIN_POSITIVE)
        );
    }
    for (clients, j, e) in &rows {
        if j.errors + e.errors > 0 {
            eprintln!(
                "{clients} clients: {} JoChat errors, {} etcd errors",
                j.errors, e.errors
            );
        }
    }
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(clients, j, e)| {
                serde_json::json!({
                    "clients": clients,
                    "jochat": {"ops_per_sec": j.ops_per_sec, "p50_ms": j.p50_ms, "p99_ms": j.p99_ms, "errors": j.errors},
                    "etcd": {"ops_per_sec": e.ops_per_sec, "p50_ms": e.p50_ms, "p99_ms": e.p99_ms, "errors": e.errors},
                    "ratio": j.ops_per_sec / e.ops_per_sec.max(f64::MIN_POSITIVE),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(())
}
