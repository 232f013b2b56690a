//! The `jochat` binary against a real node: every command, text and `--json` output, exit
//! statuses, and the session file.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

/// Runs `jochat` with `args` against `server`, keeping the session in `session`.
fn jochat(server: &str, session: &Path, password: Option<&str>, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_jochat"));
    command
        .args(["--servers", server, "--session-file"])
        .arg(session)
        .args(args)
        .env_remove("JOCHAT_PASSWORD")
        .env_remove("JOCHAT_SERVERS")
        .stdin(std::process::Stdio::null());
    if let Some(password) = password {
        command.env("JOCHAT_PASSWORD", password);
    }
    command.output().expect("the jochat binary runs")
}

/// Runs a `--json` command that must succeed and returns its document.
fn json(server: &str, session: &Path, password: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = jochat(server, session, password, &all);
    assert!(
        output.status.success(),
        "jochat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_eq!(stdout.lines().count(), 1, "one JSON document: {stdout}");
    serde_json::from_str(&stdout).expect("valid JSON")
}

#[tokio::test]
async fn every_command_against_a_node() {
    let node = jochat_node::spawn_ephemeral().await.unwrap();
    let server = node.address();
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.json");
    let bob = dir.path().join("bob.json");

    // The binary blocks on its own runtime; keep the node's runtime free by running it on
    // the blocking pool.
    let run = {
        let server = server.clone();
        move |f: Box<dyn FnOnce(&str) + Send>| {
            let server = server.clone();
            tokio::task::spawn_blocking(move || f(&server))
        }
    };

    let (alice2, bob2) = (alice.clone(), bob.clone());
    run(Box::new(move |server| {
        // 1. Sign up two accounts and log Alice in.
        let signed_up = json(server, &alice2, Some("pw-a"), &["signup", "alice"]);
        assert_eq!(signed_up["username"], "alice");
        json(server, &bob2, Some("pw-b"), &["signup", "bob"]);
        let logged_in = json(server, &alice2, Some("pw-a"), &["login", "alice"]);
        assert_eq!(logged_in["unread_count"], 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&alice2).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the session file is private");
        }

        // 2. Send while Bob is away; words are joined.
        let sent = json(server, &alice2, None, &["send", "bob", "hello", "there"]);
        assert_eq!(sent["status"], "away");
        assert!(sent["id"].is_i64());
        // The session remembers its servers: without --servers the command goes there.
        let remembered = std::process::Command::new(env!("CARGO_BIN_EXE_jochat"))
            .args(["--json", "--session-file"])
            .arg(&alice2)
            .arg("unread")
            .env_remove("JOCHAT_SERVERS")
            .env_remove("JOCHAT_PASSWORD")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(remembered.status.success(), "{}", String::from_utf8_lossy(&remembered.stderr));
        let accounts = json(server, &alice2, None, &["accounts", "b*"]);
        assert_eq!(accounts["total_count"], 1);
        assert_eq!(accounts["accounts"][0]["username"], "bob");

        // 3. Bob logs in, sees the unread count, fetches, lists, deletes.
        assert_eq!(json(server, &bob2, Some("pw-b"), &["login", "bob"])["unread_count"], 1);
        assert_eq!(json(server, &bob2, None, &["unread"])["unread_count"], 1);
        let away = json(server, &bob2, None, &["away", "--limit", "5"]);
        assert_eq!(away["messages"][0]["content"], "hello there");
        assert_eq!(away["remaining"], 0);
        let inbox = json(server, &bob2, None, &["inbox", "--with", "alice", "--limit", "10"]);
        assert_eq!(inbox["total_count"], 1);
        assert_eq!(inbox["messages"][0]["status"], "delivered");
        let id = inbox["messages"][0]["id"].as_i64().unwrap().to_string();
        assert_eq!(json(server, &bob2, None, &["delete-messages", &id])["deleted_count"], 1);

        // 4. Human output is text.
        let text = jochat(server, &bob2, None, &["cluster", "info"]);
        assert!(text.status.success());
        assert!(String::from_utf8_lossy(&text.stdout).starts_with("node 1 answered; leader: 1 at "));

        // 5. Errors: one line on stderr, non-zero status.
        let unknown = jochat(server, &bob2, None, &["send", "zed", "hi"]);
        assert_eq!(unknown.status.code(), Some(2));
        assert_eq!(String::from_utf8_lossy(&unknown.stderr), "error: recipient: no account named \"zed\"\n");
        let usage = jochat(server, &bob2, None, &["inbox", "--limit", "many"]);
        assert_eq!(usage.status.code(), Some(2));
        let usage = String::from_utf8_lossy(&usage.stderr);
        assert!(usage.starts_with("error: invalid value 'many'"), "{usage}");
        assert_eq!(usage.lines().count(), 1, "{usage}");
        let no_password = jochat(server, &bob2, None, &["delete-account"]);
        assert_eq!(no_password.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&no_password.stderr).contains("set JOCHAT_PASSWORD"));

        // 6. Log out removes the session; commands then say how to log in.
        json(server, &bob2, None, &["logout"]);
        assert!(!bob2.exists());
        let logged_out = jochat(server, &bob2, None, &["unread"]);
        assert_eq!(logged_out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&logged_out.stderr),
            "error: not logged in: run `jochat login USER`\n"
        );

        // 7. Alice deletes her account.
        let deleted = json(server, &alice2, Some("pw-a"), &["delete-account"]);
        assert_eq!(deleted["username"], "alice");
        assert!(!alice2.exists());
    }))
    .await
    .unwrap();
    node.shutdown().await.unwrap();
}

/// Lines a child process writes to stdout, read on a thread.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Starts `jochat ARGS` against `server` with `session`, stdin and stdout piped.
fn spawn_jochat(server: &str, session: &Path, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_jochat"))
        .args(["--servers", server, "--session-file"])
        .arg(session)
        .args(args)
        .env_remove("JOCHAT_SERVERS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the jochat binary runs")
}

/// Sends from `alice` to bob until `lines` shows a line containing `wanted`; returns it.
async fn send_until_seen(
    client: &jochat_client::ChatServerClient,
    alice: &jochat_client::SessionToken,
    lines: &std::sync::mpsc::Receiver<String>,
    content: &str,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        client.send_message(alice, "bob", content).await.unwrap();
        while let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(200)) {
            if line.contains(content) {
                return line;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never saw {content}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_chat_show_messages_live_and_chat_sends_typed_lines() {
    // 1. A node; alice through the library, bob through the CLI's session file.
    let node = jochat_node::spawn_ephemeral().await.unwrap();
    let server = node.address();
    let client = jochat_client::ChatServerClient::builder()
        .servers([server.clone()])
        .build()
        .unwrap();
    client.sign_up("alice", "pw-a").await.unwrap();
    client.sign_up("bob", "pw-b").await.unwrap();
    let alice = client.log_in("alice", "pw-a").await.unwrap().token;
    let dir = tempfile::tempdir().unwrap();
    let bob = dir.path().join("bob.json");
    let login = {
        let (server, bob) = (server.clone(), bob.clone());
        tokio::task::spawn_blocking(move || jochat(&server, &bob, Some("pw-b"), &["login", "bob"]))
    };
    assert!(login.await.unwrap().status.success());

    // 2. `jochat --json watch` prints each new message as one JSON object per line.
    let mut watch = spawn_jochat(&server, &bob, &["--json", "watch"]);
    let lines = lines_of(watch.stdout.take().unwrap());
    let line = send_until_seen(&client, &alice, &lines, "hello bob").await;
    let message: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(message["sender"], "alice");
    assert_eq!(message["content"], "hello bob");
    assert!(message["id"].as_i64().unwrap() > 0);
    assert!(message["timestamp_ms"].as_i64().unwrap() > 0);
    watch.kill().unwrap();
    watch.wait().unwrap();

    // 3. `jochat chat alice` shows the unread count, shows alice's messages live, and sends
    //    what bob types; `/quit` leaves.
    let mut chat = spawn_jochat(&server, &bob, &["chat", "alice"]);
    let lines = lines_of(chat.stdout.take().unwrap());
    let first = lines
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a first line");
    assert!(first.contains("unread message(s)"), "{first}");
    let seen = send_until_seen(&client, &alice, &lines, "are you there?").await;
    assert!(seen.contains("alice: are you there?"), "{seen}");
    {
        use std::io::Write;
        let stdin = chat.stdin.as_mut().unwrap();
        writeln!(stdin, "yes, here").unwrap();
        writeln!(stdin, "@alice and again").unwrap();
        writeln!(stdin, "/quit").unwrap();
    }
    let status = tokio::task::spawn_blocking(move || chat.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let inbox = client
        .list_messages(&alice, &jochat_client::InboxQuery::default())
        .await
        .unwrap();
    let contents: Vec<&str> = inbox.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents[..2], ["and again", "yes, here"], "newest first");
    node.shutdown().await.unwrap();
}

/// The JSON report on the last line of a `jochat --json bench` run that must succeed.
fn report_of(output: Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    serde_json::from_str(stdout.lines().last().expect("a report line")).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_and_reports_json() {
    let node = jochat_node::spawn_ephemeral().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // mixed: sends, inbox pages and searches; subscribe: each message sent is waited for on
    // the sender's own live stream.
    for op in ["mixed", "subscribe"] {
        let server = node.address();
        let session = dir.path().join("none.json");
        let output = tokio::task::spawn_blocking(move || {
            jochat(
                &server,
                &session,
                None,
                &[
                    "--json",
                    "bench",
                    "--op",
                    op,
                    "--concurrency",
                    "2",
                    "--duration",
                    "1s",
                    "--warmup",
                    "200ms",
                ],
            )
        })
        .await
        .unwrap();
        let report = report_of(output);
        assert_eq!(report["op"], op);
        assert_eq!(report["concurrency"], 2);
        assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        let p50 = report["p50_ms"].as_f64().unwrap();
        let p99 = report["p99_ms"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= report["max_ms"].as_f64().unwrap());
        assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0);
    }
    node.shutdown().await.unwrap();
}

#[test]
fn bench_failover_kills_the_leader_and_loses_no_acknowledged_write() {
    // `cargo test --workspace` builds the node binary beside this package's `jochat`.
    let binary = Path::new(env!("CARGO_BIN_EXE_jochat")).with_file_name("jochat-node");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        binary.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let output = jochat(
        "127.0.0.1:1",
        &dir.path().join("none.json"),
        None,
        &[
            "--json",
            "bench",
            "failover",
            "--local",
            "3",
            "--kills",
            "2",
            "--writers",
            "2",
            "--node-binary",
            binary.to_str().unwrap(),
        ],
    );
    let report = report_of(output);
    assert_eq!(report["op"], "failover");
    assert_eq!(report["kills"], 2, "{report}");
    assert_eq!(report["pause_ms"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["doubled"], 0, "{report}");
    assert_eq!(report["stored_under_another_id"], 0, "{report}");
}

#[test]
fn bench_failover_needs_a_local_cluster_of_three() {
    let dir = tempfile::tempdir().unwrap();
    let output = jochat(
        "127.0.0.1:1",
        &dir.path().join("none.json"),
        None,
        &["bench", "failover", "--local", "1", "--kills", "1"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--local N with N >= 3"), "{stderr}");
}
