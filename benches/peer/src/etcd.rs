//! A three-member etcd cluster on loopback, and a closed-loop put load against its leader.
//!
//! The load speaks etcd's gRPC API (`etcdserverpb.KV/Put`, `etcdserverpb.Maintenance/Status`)
//! with the few request and reply fields it needs, declared here from etcd's published API
//! (field numbers of `rpc.proto`), over tonic: one HTTP/2 connection per client, as the
//! `etcd-client` crate makes one per client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::transport::Channel;

use crate::{free_port, Measured, Recorder};

/// `etcdserverpb.PutRequest`: the key and the value (the other fields stay at their defaults).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`, whose fields the load does not read.
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

/// `etcdserverpb.StatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

/// `etcdserverpb.ResponseHeader`: which member answered.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "2")]
    member_id: u64,
}

/// `etcdserverpb.StatusResponse`: who answered and who leads.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

/// One unary call of etcd's API.
async fn call<Q, R>(channel: Channel, path: &'static str, request: Q) -> anyhow::Result<R>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("etcd is not ready")?;
    let reply = grpc
        .unary(
            tonic::Request::new(request),
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .with_context(|| format!("{path} failed"))?;
    Ok(reply.into_inner())
}

/// The etcd binary: `--etcd`, else the one on `PATH`, else Debian's `etcd-server` installed
/// with apt (as root).
pub fn find_or_install(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        })
    };
    if let Some(found) = on_path() {
        return Ok(found);
    }
    eprintln!("etcd is not installed: installing Debian's etcd-server with apt-get");
    let installed = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "etcd-server",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get could not be run: install etcd (3.4) and pass --etcd")?;
    if !installed.success() {
        bail!("apt-get install etcd-server failed ({installed}): install etcd and pass --etcd");
    }
    on_path().context("etcd-server installed, but no etcd on PATH")
}

/// Three etcd members on loopback in a temporary folder, killed on drop.
pub struct Cluster {
    members: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `count` members of a new cluster (etcd's defaults: the WAL fsynced on every
    /// commit).
    pub fn start(binary: &Path, count: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("peer-bench-etcd-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..count)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members: Vec::new(),
            client_urls: Vec::new(),
            _dir: dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(cluster._dir.path().join(format!("m{i}.log")))?;
            let child = Command::new(binary)
                .arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(cluster._dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "peer-bench"])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("{} could not be started", binary.display()))?;
            cluster.members.push(child);
            cluster.client_urls.push(client_url);
        }
        Ok(cluster)
    }

    /// The client URL of the member that leads, once one does.
    pub async fn leader(&self, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            for url in &self.client_urls {
                let Ok(channel) = Channel::from_shared(url.clone())?.connect().await else {
                    continue;
                };
                let status: anyhow::Result<StatusResponse> = call(
                    channel,
                    "/etcdserverpb.Maintenance/Status",
                    StatusRequest {},
                )
                .await;
                if let Ok(status) = status {
                    let me = status.header.map_or(0, |h| h.member_id);
                    if status.leader != 0 && status.leader == me {
                        return Ok(url.clone());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no etcd member led within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// `clients` closed loops against `url` (the leader), each on its own connection, putting a
/// fresh key with a 20-byte value again and again; latencies of the calls that start after
/// `warmup` and end within `duration` after it are measured.
pub async fn closed_loop(
    url: &str,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::new();
    for slot in 0..clients {
        let channel = Channel::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to etcd at {url}"))?;
        tasks.push(tokio::spawn(async move {
            let mut recorder = Recorder::new()?;
            let mut grpc = tonic::client::Grpc::new(channel);
            let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
            let mut n = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                n += 1;
                let request = PutRequest {
                    key: format!("peer-bench/{slot}/{n}").into_bytes(),
                    value: b"twenty-byte-value-00".to_vec(),
                };
                grpc.ready().await?;
                let reply: Result<tonic::Response<PutResponse>, _> = grpc
                    .unary(
                        tonic::Request::new(request),
                        path.clone(),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await;
                let ended = Instant::now();
                if began >= measure_from && ended <= end {
                    recorder.record(ended - began, reply.is_ok());
                }
            }
            anyhow::Ok(recorder)
        }));
    }
    let mut total = Recorder::new()?;
    for task in tasks {
        total.merge(task.await??)?;
    }
    Ok(total.measured(duration))
}
