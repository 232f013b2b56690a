//! Runs `jochat-node` as a child process, for the programs that drive real node processes:
//! the benchmark's `--local` clusters (`jochat bench`), the process tests, and the failover
//! example.
//!
//! [`NodeCommand`] says how to start one node (its program, id, port, database file and
//! peers); [`NodeCommand::spawn`] starts it and returns once the node has logged the address
//! it serves at (the `address=HOST:PORT` field of its start-up line). The returned
//! [`NodeProcess`] keeps draining the node's log so the node never blocks on a full pipe
//! (keeping its latest lines for [`NodeProcess::log_lines`]),
//! can SIGKILL it and start it again on the same file and port, reads its memory from
//! `/proc`, and kills it when dropped: no node outlives its handle.
//!
//! # Layout
//!
//! Everything is in this file: [`NodeCommand`], [`NodeProcess`], [`binary_beside`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a node may take to log its address before the start counts as failed.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start one node. Cheap to clone; [`NodeProcess::restart`] keeps a copy.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    program: PathBuf,
    leading_args: Vec<OsString>,
    id: u64,
    port: u16,
    db_file: PathBuf,
    peers: Vec<(u64, String)>,
    extra_args: Vec<OsString>,
    log_filter: String,
    prototype_spelling: bool,
}

impl NodeCommand {
    /// Node `id` of `program` (a `jochat-node` binary, or a program that accepts its flags)
    /// with its database at `db_file`, on a free port, without peers, logging at `info`.
    pub fn new(program: impl Into<PathBuf>, id: u64, db_file: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            leading_args: Vec::new(),
            id,
            port: 0,
            db_file: db_file.into(),
            peers: Vec::new(),
            extra_args: Vec::new(),
            log_filter: "info".into(),
            prototype_spelling: false,
        }
    }

    /// Arguments placed before the node's flags (a program with several modes takes its
    /// mode here).
    pub fn leading_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.leading_args.push(arg.into());
        self
    }

    /// The port to listen on (0, the default: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The other nodes, as (id, `host:port`), passed as `--peers`.
    pub fn peers(mut self, peers: impl IntoIterator<Item = (u64, String)>) -> Self {
        self.peers = peers.into_iter().collect();
        self
    }

    /// Spells the id, port and database flags as the prototype's run commands do
    /// (`--server_id=1 --port=5001 --db_file=test_chat1.db`).
    pub fn prototype_flags(mut self) -> Self {
        self.prototype_spelling = true;
        self
    }

    /// One more flag or value after the node's own.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// `RUST_LOG` for the node; its start-up line (at `info`, from `jochat_node::server`)
    /// must pass the filter.
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Starts the node and waits until it logs the address it serves at.
    ///
    /// # Errors
    /// The program cannot be started, or it exits or stays silent for [`START_TIMEOUT`]
    /// without logging its address (it is killed then).
    pub fn spawn(&self) -> io::Result<NodeProcess> {
        let log = Log::default();
        let (child, address) = self.start(&log)?;
        Ok(NodeProcess {
            command: self.clone(),
            child,
            address,
            log,
        })
    }

    fn start(&self, log: &Log) -> io::Result<(Child, String)> {
        let mut command = Command::new(&self.program);
        command.args(&self.leading_args);
        if self.prototype_spelling {
            let mut db_file = OsString::from("--db_file=");
            db_file.push(&self.db_file);
            command
                .arg(format!("--server_id={}", self.id))
                .arg(format!("--port={}", self.port))
                .arg(db_file);
        } else {
            command
                .args(["--server-id", &self.id.to_string()])
                .args(["--port", &self.port.to_string()])
                .arg("--db-file")
                .arg(&self.db_file);
        }
        command
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !self.peers.is_empty() {
            let list: Vec<String> = self
                .peers
                .iter()
                .map(|(id, address)| format!("{id}:{address}"))
                .collect();
            command.args(["--peers", &list.join(",")]);
        }
        command.args(&self.extra_args);
        let mut child = command.spawn().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot start {}: {error}", self.program.display()),
            )
        })?;
        let Some(stderr) = child.stderr.take() else {
            kill(&mut child);
            return Err(io::Error::other("the node's stderr is not piped"));
        };
        // A thread reads the log: it hands lines over until the address is known, then
        // drains the rest, so the node never blocks writing to a full pipe.
        let (lines_in, lines) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.keep(&line);
                // Once the address is known nobody listens: keep reading regardless.
                let _ = lines_in.send(line);
            }
        });
        loop {
            let Ok(line) = lines.recv_timeout(START_TIMEOUT) else {
                kill(&mut child);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "node {} did not log its address within {START_TIMEOUT:?} (or exited)",
                        self.id
                    ),
                ));
            };
            if let Some(address) = address_in(&line) {
                return Ok((child, address.to_owned()));
            }
        }
    }
}

/// The `HOST:PORT` after `address=` in a log line (`--log-format text`), or in its
/// `"address":"…"` field (`--log-format json`), if any.
fn address_in(line: &str) -> Option<&str> {
    if let Some(rest) = line.split("\"address\":\"").nth(1) {
        return rest.split('"').next().filter(|address| !address.is_empty());
    }
    line.split("address=")
        .nth(1)?
        .split_whitespace()
        .next()
        .filter(|address| !address.is_empty())
}

/// SIGKILLs `child` and reaps it. A process that has exited already is only reaped.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How many of a node's latest log lines are kept for [`NodeProcess::log_lines`].
pub const LOG_LINES_KEPT: usize = 10_000;

/// The latest lines a node logged, shared with the thread that reads them.
#[derive(Debug, Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl Log {
    fn keep(&self, line: &str) {
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lines.len() == LOG_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }
}

/// A running node; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    command: NodeCommand,
    child: Child,
    address: String,
    log: Log,
}

impl NodeProcess {
    /// The node's id.
    pub fn id(&self) -> u64 {
        self.command.id
    }

    /// `host:port` the node serves at.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The latest lines the node logged (at most [`LOG_LINES_KEPT`], across restarts) that
    /// contain `pattern`.
    pub fn log_lines(&self, pattern: &str) -> Vec<String> {
        self.log
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|line| line.contains(pattern))
            .cloned()
            .collect()
    }

    /// The node's exit status if it has exited (it is then reaped), else `None`.
    ///
    /// # Errors
    /// The status cannot be read.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGKILLs the node and reaps it (nothing is flushed: a crash).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the node again after [`NodeProcess::kill`], on its database file and at the
    /// port it served at, and waits until it logs its address.
    ///
    /// # Errors
    /// As [`NodeCommand::spawn`], or when the address holds no port.
    pub fn restart(&mut self) -> io::Result<()> {
        kill(&mut self.child);
        let port = self
            .address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no port in {}", self.address)))?;
        let (child, address) = self.command.clone().port(port).start(&self.log)?;
        self.child = child;
        self.address = address;
        Ok(())
    }

    /// Peak resident memory so far, in KiB (`VmHWM`; Linux only).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmHWM:")
    }

    /// Resident memory now, in KiB (`VmRSS`; Linux only).
    pub fn rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmRSS:")
    }

    /// A `/proc/<pid>/status` memory field, in KiB.
    fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The program `name` in the folder of the running program (where cargo puts every binary
/// of a workspace), if it is there.
pub fn binary_beside(name: &str) -> Option<PathBuf> {
    let current = std::env::current_exe().ok()?;
    let mut folder: &Path = current.parent()?;
    // Test and example binaries live one folder further down (`deps/`, `examples/`).
    for _ in 0..2 {
        let candidate = folder.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if candidate.is_file() {
            return Some(candidate);
        }
        folder = folder.parent()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_start_up_line() {
        let line = "2026-11-30T10:00:00Z  INFO node{node_id=1}: jochat_node::server: serving \
                    address=127.0.0.1:40123 db=jochat-data/node-1.db";
        assert_eq!(address_in(line), Some("127.0.0.1:40123"));
        assert_eq!(address_in("no address here"), None);
        assert_eq!(address_in("address= "), None);
        let json = r#"{"timestamp":"2026-11-30T10:00:00Z","level":"INFO","message":"serving","address":"127.0.0.1:40123","listen":"127.0.0.1:40123"}"#;
        assert_eq!(address_in(json), Some("127.0.0.1:40123"));
    }

    #[test]
    fn a_program_that_never_logs_an_address_is_refused_and_reaped() {
        // `true` ignores the node's flags and exits at once without logging anything.
        let dir = tempfile::tempdir().expect("a temporary folder");
        let started = NodeCommand::new("true", 1, dir.path().join("node-1.db")).spawn();
        let error = started.expect_err("a program without an address line is refused");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let error = NodeCommand::new("/no/such/jochat-node", 1, "node-1.db")
            .spawn()
            .expect_err("there is no such program");
        assert!(
            error.to_string().contains("/no/such/jochat-node"),
            "{error}"
        );
    }
}
