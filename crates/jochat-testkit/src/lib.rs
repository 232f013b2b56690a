//! The one test-support module of the workspace, shared by the cross-crate tests in
//! `tests/` and the node crate's process tests.
//!
//! # Layout
//!
//! - this file: a node on an ephemeral port in a temporary folder, clients for it, and a
//!   read of its database file as the `sqlite3` shell sees it.
//! - [`cluster`]: in-process clusters behind the injectable fault layer, and waiting on
//!   them (leaders, applied indexes, identical files).
//! - [`process`]: `jochat-node` processes ([`jochat_process::NodeProcess`]) and raw clients
//!   for them.
//! - [`web`]: `jochat web` in process, and an HTTP client with a cookie jar.
//! - [`tls`]: a throwaway CA and node certificate.
//! - this file also: [`runs_here`], the one rule for tests that need something the machine
//!   may lack (root, a browser), and [`wait_until`], polling for tests without a runtime.
//!
//! Tests wait on conditions (polling with a deadline), never for fixed times, use port 0 and
//! temporary folders, and stop whatever they start.

#![forbid(unsafe_code)]

use jochat_client::{ChatServerClient, LoggedIn};
use jochat_core::store::{ChatRead, StateDump};
use jochat_node::store::SqliteChat;
use jochat_node::{spawn_ephemeral_with, EphemeralNode, NodeConfig};
use jochat_proto::v1::chat_client::ChatClient;
use rusqlite::{Connection, OpenFlags};
use tonic::transport::Channel;

/// A node with the default configuration.
pub async fn node() -> EphemeralNode {
    node_with(NodeConfig::default()).await
}

/// A node with `config` (address and database are chosen by the helper).
pub async fn node_with(config: NodeConfig) -> EphemeralNode {
    spawn_ephemeral_with(config)
        .await
        .expect("an ephemeral node starts")
}

/// The client library pointed at `node`.
pub fn client(node: &EphemeralNode) -> ChatServerClient {
    ChatServerClient::builder()
        .servers([node.address()])
        .build()
        .expect("the node's address is valid")
}

/// The generated gRPC client, for requests the client library would never send.
pub async fn raw(node: &EphemeralNode) -> ChatClient<Channel> {
    ChatClient::connect(format!("http://{}", node.address()))
        .await
        .expect("the node accepts connections")
}

/// Signs `name` up with password `name-password` and logs in.
pub async fn user(client: &ChatServerClient, name: &str) -> LoggedIn {
    client
        .sign_up(name, &format!("{name}-password"))
        .await
        .expect("sign-up succeeds");
    client
        .log_in(name, &format!("{name}-password"))
        .await
        .expect("log-in succeeds")
}

/// Everything in the node's database file, read through a separate read-only connection
/// exactly as an operator's `sqlite3` shell would open it.
pub fn dump(node: &EphemeralNode) -> StateDump {
    settled(&node.db_path());
    let conn = Connection::open_with_flags(node.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the database file opens read-only");
    SqliteChat::new(&conn).dump().expect("the database dumps")
}

/// Waits until every write the node at `path` (in this process) has answered is in its
/// file: the leader answers before its apply commits.
pub fn settled(path: &std::path::Path) {
    assert!(
        jochat_node::store::visibility::settle(path, std::time::Duration::from_secs(30)),
        "the writes answered on {} did not reach its file within 30 s",
        path.display()
    );
}

/// `(sender, recipient, content, to_deliver)` of every message, by id, from the file.
pub fn message_rows(node: &EphemeralNode) -> Vec<(String, String, String, i64)> {
    settled(&node.db_path());
    let conn = Connection::open_with_flags(node.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the database file opens read-only");
    let mut statement = conn
        .prepare("SELECT sender, recipient, content, to_deliver FROM messages ORDER BY id")
        .expect("the messages table has the documented columns");
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("rows read")
        .collect::<Result<_, _>>()
        .expect("rows decode")
}

/// Attaches `authorization: Bearer <token>` to a raw request.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("tokens are ASCII"),
    );
    request
}
pub mod cluster;
pub mod process;
pub mod tls;
pub mod web;

/// Whether `test` may run here, given what the machine lacks for it (`None`: nothing). When
/// something is missing the test is skipped, said loudly on the process's stderr (past the
/// harness's capture, so it shows in `cargo test`'s output), except under `CI=true`, where
/// it must run: the test then fails.
///
/// # Panics
/// Under `CI=true`, when something is missing.
pub fn runs_here(test: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot run: {why} (CI=true: it must run)"
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED {test}: {why} ***\n\n").as_bytes(),
    );
    false
}

/// How long [`wait_until`] waits.
pub const WAIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Polls `check` every 100 ms until it returns `Some`, for at most [`WAIT_PATIENCE`], and
/// returns the value (for tests that drive processes without a runtime).
///
/// # Panics
/// When `check` has not returned `Some` in time.
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < WAIT_PATIENCE,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
