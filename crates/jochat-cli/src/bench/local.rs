//! The `--local` cluster: `jochat-node` processes in a temporary folder, started one after
//! the other (each listing the ones before it) and killed when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jochat_client::{ChatServerClient, ChatServerClientBuilder};
use jochat_process::{binary_beside, NodeCommand, NodeProcess};

/// How long the local cluster may take to elect a leader with every node a voter.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// The `jochat-node` binary: `--node-binary`, else the one beside this `jochat`.
pub(super) fn node_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    binary_beside("jochat-node").context(
        "--local needs the jochat-node binary: build it (cargo build --release) or pass \
         --node-binary",
    )
}

/// Starts `count` nodes in `dir`, each listing the ones before it, and waits until one leads
/// all of them. With `tls`, a CA and a node certificate for `127.0.0.1` are made in `dir`
/// first and the nodes serve TLS. Returns the nodes and a client builder that reaches them
/// (trusting that CA with `tls`).
pub(super) async fn start_local(
    count: u64,
    dir: &Path,
    binary: &Path,
    tls: bool,
) -> anyhow::Result<(Vec<NodeProcess>, ChatServerClientBuilder)> {
    let mut builder = ChatServerClient::builder();
    let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
    if tls {
        crate::cert::create_ca(dir, false)?;
        crate::cert::create_node(
            dir,
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            false,
        )?;
        for (flag, file) in [
            ("--tls-cert", "node.crt"),
            ("--tls-key", "node.key"),
            ("--tls-ca", "ca.crt"),
        ] {
            tls_args.push(flag.into());
            tls_args.push(dir.join(file).into_os_string());
        }
        builder = builder.ca_certificate(
            std::fs::read(dir.join("ca.crt")).context("reading the local cluster's CA")?,
        );
    }
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for id in 1..=count {
        let peers: Vec<(u64, String)> = nodes
            .iter()
            .map(|n| (n.id(), n.address().to_owned()))
            .collect();
        let command = tls_args.iter().fold(
            NodeCommand::new(binary, id, dir.join(format!("node-{id}.db")))
                .peers(peers)
                .log_filter("warn,jochat_node::server=info"),
            |command, arg| command.arg(arg),
        );
        let node = tokio::task::spawn_blocking(move || command.spawn())
            .await
            .context("the thread starting a node")?
            .with_context(|| format!("node {id} did not start"))?;
        nodes.push(node);
    }
    let client = builder
        .clone()
        .servers(nodes.iter().map(|n| n.address().to_owned()))
        .build()?;
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        if let Ok(info) = client.cluster_info().await {
            let voters = info
                .members
                .iter()
                .filter(|m| m.role == jochat_client::MemberRole::Voter)
                .count();
            if info.leader_id.is_some() && voters == count as usize {
                return Ok((nodes, builder));
            }
        }
        if Instant::now() > deadline {
            bail!("the local cluster did not form within {FORM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
