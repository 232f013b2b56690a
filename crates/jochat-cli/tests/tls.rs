//! A TLS cluster made from nothing with `jochat cert`: three `jochat-node` processes serving
//! TLS and calling each other over mutual TLS, the CLI with `--ca-cert` doing every operation,
//! and everyone else refused: a plaintext client, a client that does not trust the CA, a
//! client certificate from another CA, a client certificate of the cluster's CA on the
//! internal service, and a node whose certificate another CA signed. Then SIGHUP makes a node
//! serve renewed certificates without a restart.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use jochat_process::{binary_beside, NodeCommand, NodeProcess};
use jochat_testkit::wait_until;
use serde_json::Value;

/// Runs `jochat` with `args` (nothing from the environment).
fn jochat(args: &[&str], password: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jochat"));
    command
        .args(args)
        .env_remove("JOCHAT_PASSWORD")
        .env_remove("JOCHAT_SERVERS")
        .env_remove("JOCHAT_CA_CERT")
        .env_remove("JOCHAT_CLIENT_CERT")
        .env_remove("JOCHAT_CLIENT_KEY")
        .stdin(Stdio::null());
    if let Some(password) = password {
        command.env("JOCHAT_PASSWORD", password);
    }
    command.output().expect("the jochat binary runs")
}

/// `jochat cert ARGS` in `dir`, which must succeed.
fn cert(dir: &Path, args: &[&str]) {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    let mut all = vec!["cert", args[0], "--certs-dir", dir];
    all.extend_from_slice(&args[1..]);
    let output = jochat(&all, None);
    assert!(
        output.status.success(),
        "jochat {all:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A client of the cluster: its servers, the CA it trusts, its session file.
struct Cli {
    servers: String,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    session: PathBuf,
}

impl Cli {
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        // A refused client retries until the deadline and then reports its last failure
        // (the reason), also when the deadline cuts a retry short.
        let mut args = vec![
            "--json",
            "--servers",
            &self.servers,
            "--deadline-ms",
            "4000",
        ];
        args.extend(["--session-file", self.session.to_str().expect("UTF-8")]);
        if let Some(ca) = &self.ca {
            args.extend(["--ca-cert", ca.to_str().expect("UTF-8")]);
        }
        if let Some((cert, key)) = &self.identity {
            args.extend(["--client-cert", cert.to_str().expect("UTF-8")]);
            args.extend(["--client-key", key.to_str().expect("UTF-8")]);
        }
        args.extend_from_slice(extra);
        args
    }

    /// Runs a command and returns its JSON document, or its error line.
    fn run(&self, args: &[&str], password: Option<&str>) -> Result<Value, String> {
        let output = jochat(&self.args(args), password);
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    }

    /// Runs a command that must succeed.
    fn ok(&self, args: &[&str], password: Option<&str>) -> Value {
        self.run(args, password)
            .unwrap_or_else(|error| panic!("jochat {args:?}: {error}"))
    }

    /// Runs a command that must fail, and returns its error line.
    fn refused(&self, args: &[&str]) -> String {
        match self.run(args, None) {
            Ok(value) => panic!("jochat {args:?} should have been refused, got {value}"),
            Err(error) => error,
        }
    }
}

/// The `--tls-*` flags of a node.
fn tls_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--tls-cert".into(),
        cert.into(),
        "--tls-key".into(),
        key.into(),
        "--tls-ca".into(),
        ca.into(),
    ]
}

/// Starts node `id` in `dir` with `flags` and `peers`.
fn start(id: u64, dir: &Path, peers: &[&NodeProcess], flags: &[std::ffi::OsString]) -> NodeProcess {
    let binary = binary_beside("jochat-node")
        .expect("jochat-node is built beside the test: `cargo build -p jochat-node`");
    flags
        .iter()
        .fold(
            NodeCommand::new(binary, id, dir.join(format!("node-{id}.db")))
                .peers(peers.iter().map(|p| (p.id(), p.address().to_owned()))),
            |command, flag| command.arg(flag),
        )
        .spawn()
        .expect("the node starts and logs its address")
}

/// How many voters `cli` sees with a leader among them.
fn voters_with_a_leader(cli: &Cli) -> Option<usize> {
    let info = cli.run(&["cluster", "info"], None).ok()?;
    info["leader_id"].as_u64()?;
    Some(
        info["members"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "voter")
            .count(),
    )
}

#[test]
fn a_tls_cluster_from_jochat_cert_serves_the_cli_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let other = dir.path().join("other");
    cert(&certs, &["create-ca"]);
    cert(&certs, &["create-node", "127.0.0.1", "localhost"]);
    cert(&certs, &["create-client", "alice"]);
    cert(&other, &["create-ca"]);
    cert(&other, &["create-node", "127.0.0.1", "localhost"]);
    cert(&other, &["create-client", "mallory"]);
    let flags = tls_flags(
        &certs.join("node.crt"),
        &certs.join("node.key"),
        &certs.join("ca.crt"),
    );

    let n1 = start(1, dir.path(), &[], &flags);
    let n2 = start(2, dir.path(), &[&n1], &flags);
    let n3 = start(3, dir.path(), &[&n1, &n2], &flags);
    let servers = [&n1, &n2, &n3]
        .iter()
        .map(|n| n.address().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let client = |name: &str| Cli {
        servers: servers.clone(),
        ca: Some(certs.join("ca.crt")),
        identity: None,
        session: dir.path().join(format!("{name}.json")),
    };
    let (alice, bob) = (client("alice"), client("bob"));
    wait_until("the three nodes form a cluster over mutual TLS", || {
        (voters_with_a_leader(&alice)? == 3).then_some(())
    });

    // Every operation, through the CLI over TLS.
    alice.ok(&["signup", "alice"], Some("pw-alice"));
    bob.ok(&["signup", "bob"], Some("pw-bob"));
    alice.ok(&["login", "alice"], Some("pw-alice"));
    let sent = alice.ok(&["send", "bob", "over", "tls"], None);
    assert_eq!(sent["status"], "away");
    let accounts = alice.ok(&["accounts", "b*"], None);
    assert_eq!(accounts["accounts"][0]["username"], "bob");
    assert_eq!(bob.ok(&["login", "bob"], Some("pw-bob"))["unread_count"], 1);
    assert_eq!(bob.ok(&["unread"], None)["unread_count"], 1);
    let away = bob.ok(&["away", "--limit", "5"], None);
    assert_eq!(away["messages"][0]["content"], "over tls");
    let inbox = bob.ok(&["inbox", "--with", "alice", "--stale"], None);
    assert_eq!(inbox["total_count"], 1);
    let id = inbox["messages"][0]["id"].as_i64().unwrap().to_string();

    // The live stream over TLS: `watch` prints what is sent after it starts.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_jochat"))
        .args(bob.args(&["watch"]))
        .env_remove("JOCHAT_SERVERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("jochat watch starts");
    let (lines_in, lines) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_in.send(line);
        }
    });
    let seen = wait_until("watch prints a message sent over TLS", || {
        alice.ok(&["send", "bob", "live", "over", "tls"], None);
        lines
            .recv_timeout(Duration::from_millis(500))
            .ok()
            .filter(|line| line.contains("live over tls"))
    });
    assert!(seen.contains("alice"), "{seen}");
    let _ = watch.kill();
    let _ = watch.wait();

    assert_eq!(bob.ok(&["delete-messages", &id], None)["deleted_count"], 1);
    bob.ok(&["logout"], None);
    alice.ok(&["delete-account"], Some("pw-alice"));

    // A plaintext client: refused, and told why.
    let plaintext = Cli {
        ca: None,
        ..client("plain")
    };
    let error = plaintext.refused(&["cluster", "info"]);
    assert!(error.contains("TLS"), "{error}");
    // A client that does not trust the cluster's CA: refused by its own check.
    let untrusting = Cli {
        ca: Some(other.join("ca.crt")),
        ..client("untrusting")
    };
    let error = untrusting.refused(&["cluster", "info"]);
    assert!(error.contains("invalid peer certificate"), "{error}");
    // A client certificate from another CA: the node ends the handshake.
    let stranger = Cli {
        identity: Some((
            other.join("client.mallory.crt"),
            other.join("client.mallory.key"),
        )),
        ..client("stranger")
    };
    stranger.refused(&["cluster", "info"]);
    // A client certificate of the cluster's own CA is good for the chat API but is no node
    // certificate: the internal service refuses it.
    let with_client_cert = Cli {
        identity: Some((
            certs.join("client.alice.crt"),
            certs.join("client.alice.key"),
        )),
        ..client("with-client-cert")
    };
    with_client_cert.ok(&["cluster", "info"], None);
    let error = with_client_cert.refused(&["cluster", "remove", "3"]);
    assert!(error.contains("node certificate"), "{error}");
    // A backup is for any certificate the cluster's CA signed; without one it is refused.
    let backup = dir.path().join("chat.backup");
    let backup_args = ["backup", "--out", backup.to_str().expect("UTF-8")];
    let error = alice.refused(&backup_args);
    assert!(
        error.contains("certificate signed by the cluster CA"),
        "{error}"
    );
    assert!(!backup.exists());
    let saved = with_client_cert.ok(&backup_args, None);
    assert_eq!(saved["bytes"], std::fs::metadata(&backup).unwrap().len());

    // A node whose certificate another CA signed cannot join: the cluster refuses it at the
    // handshake and logs so; the membership stays as it was.
    let intruder_flags = tls_flags(
        &other.join("node.crt"),
        &other.join("node.key"),
        &certs.join("ca.crt"),
    );
    let intruder = start(4, dir.path(), &[&n1], &intruder_flags);
    wait_until(
        "node 1 logs that it refused the intruder's certificate",
        || n1.log_lines("refused a TLS connection").first().cloned(),
    );
    assert_eq!(voters_with_a_leader(&alice), Some(3));
    assert!(intruder.log_lines("joined the cluster").is_empty());
    drop(intruder);

    // With a node certificate the operator may change the membership.
    let operator = Cli {
        identity: Some((certs.join("node.crt"), certs.join("node.key"))),
        ..client("operator")
    };
    operator.ok(&["cluster", "remove", "3"], None);
    wait_until("the cluster has two voters", || {
        (voters_with_a_leader(&alice)? == 2).then_some(())
    });
    drop((n1, n2, n3));
}

#[test]
fn sighup_makes_a_node_serve_renewed_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, live) = (
        dir.path().join("first"),
        dir.path().join("second"),
        dir.path().join("live"),
    );
    for certs in [&first, &second] {
        cert(certs, &["create-ca"]);
        cert(certs, &["create-node", "127.0.0.1"]);
    }
    let copy_into_live = |from: &Path| {
        std::fs::create_dir_all(&live).unwrap();
        for file in ["ca.crt", "node.crt", "node.key"] {
            std::fs::copy(from.join(file), live.join(file)).unwrap();
        }
    };
    copy_into_live(&first);
    let node = start(
        1,
        dir.path(),
        &[],
        &tls_flags(
            &live.join("node.crt"),
            &live.join("node.key"),
            &live.join("ca.crt"),
        ),
    );
    let trusting = |certs: &Path| Cli {
        servers: node.address().to_owned(),
        ca: Some(certs.join("ca.crt")),
        identity: None,
        session: dir.path().join("session.json"),
    };
    trusting(&first).ok(&["cluster", "info"], None);
    trusting(&second).refused(&["cluster", "info"]);

    copy_into_live(&second);
    let hangup = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(hangup.success());
    wait_until("the node logs the reload", || {
        node.log_lines("reloaded the TLS certificates")
            .first()
            .cloned()
    });
    trusting(&second).ok(&["cluster", "info"], None);
    let error = trusting(&first).refused(&["cluster", "info"]);
    assert!(error.contains("invalid peer certificate"), "{error}");
}

#[test]
fn bench_runs_its_local_cluster_over_tls() {
    let output = jochat(
        &[
            "--json",
            "bench",
            "--local",
            "1",
            "--tls",
            "--concurrency",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let report: Value =
        serde_json::from_str(stdout.lines().last().expect("a report line")).expect("JSON");
    assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // Without --local there is no cluster to give certificates to.
    let refused = jochat(&["bench", "--tls"], None);
    assert_eq!(refused.status.code(), Some(2));
}
