//! The `jochat-node` binary as an operator runs it: default data folder, logs naming the
//! address, a graceful stop on SIGTERM that keeps every acknowledged write.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jochat_proto::v1::chat_client::ChatClient;
use jochat_proto::v1::SignUpRequest;

/// Kills the child if the test fails half-way, so no process outlives the test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the node's log until it names the address it serves at.
fn served_address(lines: &mpsc::Receiver<String>) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the node logs its address within a minute");
        if let Some(rest) = line.split("address=").nth(1) {
            return rest
                .split_whitespace()
                .next()
                .expect("an address follows")
                .to_owned();
        }
    }
}

#[tokio::test]
async fn runs_with_defaults_and_stops_cleanly_on_sigterm() {
    // 1. Start the binary in an empty folder with no flags but a free port.
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_jochat-node"))
        .args(["--port", "0"])
        .current_dir(dir.path())
        .env_remove("JOCHAT_DB_FILE")
        .env_remove("JOCHAT_SERVER_ID")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut guard = Guard(child);
    let (lines_in, lines) = mpsc::channel();
    for stream in [
        Box::new(guard.0.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(guard.0.stdout.take().unwrap()),
    ] {
        let lines_in = lines_in.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = lines_in.send(line);
            }
        });
    }
    let address = served_address(&lines);

    // 2. It serves, with its database under ./jochat-data/.
    let mut client = ChatClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    client
        .sign_up(SignUpRequest {
            username: "alice".into(),
            password: "pw".into(),
            ..Default::default()
        })
        .await
        .expect("sign-up succeeds");
    let db = dir.path().join("jochat-data").join("node-1.db");
    assert!(db.exists(), "the default database file is created");

    // 3. SIGTERM stops it with status 0.
    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = guard.0.wait();
        (guard, status)
    })
    .await
    .unwrap()
    .1
    .unwrap();
    assert!(exit.success(), "the node exits cleanly: {exit:?}");

    // 4. The acknowledged sign-up is in the file.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let name: String = conn
        .query_row("SELECT username FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "alice");
}
