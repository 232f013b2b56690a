//! `jochat-node`: parses flags, sets up logging, and serves until SIGINT or SIGTERM; or, as
//! `jochat-node import-prototype`, builds a JoChat database from the prototype's file.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use jochat_node::config::LogFormat;
use jochat_node::serve;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// `jochat-node import-prototype`.
#[derive(Debug, Parser)]
#[command(
    name = "jochat-node import-prototype",
    about = "Builds a JoChat database from the prototype's database file, offline, and prints \
             the report of rows changed or left out. A node started on the new file forms a \
             new cluster with that state."
)]
struct ImportPrototype {
    /// The prototype's database file (read only, left as it is).
    #[arg(long)]
    from: PathBuf,
    /// The JoChat database to create; an existing file is never overwritten.
    #[arg(long = "db-file", alias = "db_file")]
    db_file: PathBuf,
    /// Longest message content kept, in bytes (longer ones are left out and reported); use
    /// the value the nodes run with.
    #[arg(long = "content-bytes-max", alias = "content_bytes_max", default_value_t = jochat_core::limits::CONTENT_BYTES_MAX_DEFAULT)]
    content_bytes_max: usize,
}

/// `jochat-node completions SHELL`.
#[derive(Debug, Parser)]
#[command(
    name = "jochat-node completions",
    about = "Prints the shell completion script for jochat-node, e.g. \
             `jochat-node completions bash > /etc/bash_completion.d/jochat-node`"
)]
struct Completions {
    /// The shell.
    shell: clap_complete::Shell,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line: the event's fields at the top level, the request's span
        // (node id, term, request id, operation) under "span".
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let first = std::env::args_os().nth(1);
    if first.as_deref() == Some(std::ffi::OsStr::new("completions")) {
        let shell = Completions::parse_from(std::env::args_os().skip(1)).shell;
        let mut command = <jochat_node::NodeConfig as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "jochat-node", &mut std::io::stdout());
        return Ok(());
    }
    if first.as_deref() == Some(std::ffi::OsStr::new("man")) {
        let command = <jochat_node::NodeConfig as clap::CommandFactory>::command();
        clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        return Ok(());
    }
    if first.as_deref() == Some(std::ffi::OsStr::new("import-prototype")) {
        let import = ImportPrototype::parse_from(std::env::args_os().skip(1));
        init_logging(LogFormat::Text);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?;
        let report = runtime.block_on(jochat_node::node::import::import_offline(
            &import.from,
            &import.db_file,
            import.content_bytes_max,
        ))?;
        print!("{report}");
        return Ok(());
    }
    let loaded = match jochat_node::config_file::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(jochat_node::config_file::LoadError::Arguments(error)) => error.exit(),
        Err(jochat_node::config_file::LoadError::File(error)) => return Err(error.into()),
    };
    if loaded.config.print_config {
        print!("{}", loaded.effective);
        return Ok(());
    }
    let config = loaded.config;
    init_logging(config.log_format);
    config.validate()?;
    let runtime = config.runtime().context("cannot start the runtime")?;
    runtime.block_on(async {
        let address = config.listen_address()?;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        serve(config, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = terminate.recv() => {},
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}
