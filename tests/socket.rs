//! The socket front end (`--socket-port`), over real TCP connections: every operation in
//! both modes with the prototype's bytes and texts (`legacy/SOCKET.md`), its odd cases, the
//! rules where its sessions meet JoChat's, bad input ending the connection with the state
//! untouched, the connection cap, `reset_db` behind `--allow-anonymous-reset`, and a
//! socket client on a follower carried through a leader's death.

use jochat_testkit as common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use jochat_node::config::SocketProtocol;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a reply may take: the prototype's client gives up after 5 s.
const REPLY_WAIT: Duration = Duration::from_secs(5);

const NOT_LOGGED_IN: &str = "You are not currently logged in.";

fn setup(protocol: SocketProtocol, anonymous_reset: bool) -> Setup {
    Setup {
        socket: Some(protocol),
        allow_anonymous_reset: anonymous_reset,
        ..Setup::default()
    }
}

/// One node serving the socket protocol, and its socket address.
async fn one_node(dir: &Path, setup: &Setup) -> (Vec<ClusterNode>, SocketAddr) {
    let nodes = start_cluster_with(dir, 1, setup).await;
    wait_for_leader(&nodes[0].client(), 1, 1).await;
    let at = nodes[0]
        .socket_address
        .expect("the setup asked for a socket port");
    // The socket listener is bound before the node serves gRPC, so it accepts by now.
    (nodes, at)
}

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// An orderly close (EOF).
    Eof,
    /// A reset.
    Reset,
}

/// One client connection.
struct Wire {
    stream: TcpStream,
}

impl Wire {
    async fn open(at: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(at)
                .await
                .expect("the socket port accepts"),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("the request is sent");
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; n];
        tokio::time::timeout(REPLY_WAIT, self.stream.read_exact(&mut bytes))
            .await
            .expect("the reply comes within 5 s")
            .expect("the reply is read");
        bytes
    }

    async fn u8(&mut self) -> u8 {
        self.read_exact(1).await[0]
    }

    async fn u16(&mut self) -> u16 {
        let b = self.read_exact(2).await;
        u16::from_be_bytes([b[0], b[1]])
    }

    async fn u32(&mut self) -> u32 {
        let b = self.read_exact(4).await;
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    async fn str8(&mut self) -> String {
        let n = self.u8().await as usize;
        String::from_utf8(self.read_exact(n).await).expect("replies are UTF-8")
    }

    async fn str16(&mut self) -> String {
        let n = self.u16().await as usize;
        String::from_utf8(self.read_exact(n).await).expect("replies are UTF-8")
    }

    /// Reads `expected.len()` bytes and checks them.
    async fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact(expected.len()).await;
        assert_eq!(
            hex(&got),
            hex(expected),
            "reply bytes differ (as text: {:?})",
            String::from_utf8_lossy(&got)
        );
    }

    /// Sends `request` and checks the reply's bytes.
    async fn call(&mut self, request: &[u8], expected: &[u8]) {
        self.send(request).await;
        self.expect(expected).await;
    }

    /// A binary op 6 or 7 reply that is ok: its messages as (id, sender, content).
    async fn messages(&mut self, op: u8) -> Vec<(u32, String, String)> {
        assert_eq!(
            self.read_exact(3).await,
            [op, 1, 1],
            "an ok reply of op {op}"
        );
        let n = if op == 7 {
            usize::from(self.u16().await)
        } else {
            usize::from(self.u8().await)
        };
        let mut messages = Vec::new();
        for _ in 0..n {
            let id = self.u32().await;
            let sender = self.str8().await;
            let content = self.str16().await;
            messages.push((id, sender, content));
        }
        messages
    }

    /// A binary op 8 reply that is ok: (account id, name) pairs.
    async fn accounts(&mut self) -> Vec<(u32, String)> {
        assert_eq!(self.read_exact(3).await, [8, 1, 1], "an ok reply of op 8");
        let n = self.u8().await;
        let mut accounts = Vec::new();
        for _ in 0..n {
            let id = self.u32().await;
            accounts.push((id, self.str8().await));
        }
        accounts
    }

    /// One JSON-mode frame, raw.
    async fn frame(&mut self) -> Vec<u8> {
        let n = self.u32().await as usize;
        self.read_exact(n).await
    }

    /// Sends a JSON-mode request and returns the reply, parsed.
    async fn json(&mut self, msg_type: &str, data: Value) -> Value {
        self.send(&json_frame(&json!({"msg_type": msg_type, "data": data})))
            .await;
        serde_json::from_slice(&self.frame().await).expect("the reply is JSON")
    }

    /// Waits for the server to close the connection, and says how.
    async fn ending(&mut self) -> Ending {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(REPLY_WAIT, self.stream.read(&mut byte)).await {
            Err(_) => panic!("the server did not close the connection within 5 s"),
            Ok(Ok(0)) => Ending::Eof,
            Ok(Ok(_)) => panic!("the server replied (0x{:02x}) instead of closing", byte[0]),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => Ending::Reset,
            Ok(Err(error)) => panic!("unexpected read error: {error}"),
        }
    }
}

/// Sends each request on a connection of its own and checks the server closes it without
/// replying.
async fn each_closes_without_a_reply(at: SocketAddr, requests: Vec<(&str, Vec<u8>)>) {
    for (what, bytes) in requests {
        let mut wire = Wire::open(at).await;
        wire.send(&bytes).await;
        let ending = wire.ending().await;
        assert!(
            matches!(ending, Ending::Eof | Ending::Reset),
            "{what}: {ending:?}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn str8(text: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(text.len()).expect("a short text")];
    out.extend_from_slice(text.as_bytes());
    out
}

fn str16(text: &str) -> Vec<u8> {
    let mut out = u16::try_from(text.len())
        .expect("a text under 64 KiB")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn signup(name: &str, password: &str) -> Vec<u8> {
    cat(&[&[1, 0], &str8(name), &str8(password)])
}

fn login(name: &str, password: &str) -> Vec<u8> {
    cat(&[&[2, 0], &str8(name), &str8(password)])
}

fn send(sender: &str, recipient: &str, content: &str) -> Vec<u8> {
    cat(&[&[5, 0], &str8(sender), &str8(recipient), &str16(content)])
}

fn list(pattern: &str, start: u32, count: u8) -> Vec<u8> {
    cat(&[&[8, 0, count], &start.to_be_bytes(), &str8(pattern)])
}

fn delete(ids: &[u32]) -> Vec<u8> {
    let mut out = vec![9, 0, u8::try_from(ids.len()).expect("at most 255 ids")];
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out
}

/// A reply of ops 1, 3, 5, 10, 11: `[op][1][ok]` and the text.
fn status(op: u8, ok: bool, text: &str) -> Vec<u8> {
    cat(&[&[op, 1, u8::from(ok)], &str8(text)])
}

/// A reply of ops 2 and 4: `[op][1][ok]`, the u16 count and the text.
fn count(op: u8, ok: bool, n: u16, text: &str) -> Vec<u8> {
    cat(&[&[op, 1, u8::from(ok)], &n.to_be_bytes(), &str8(text)])
}

fn json_frame(value: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(value).expect("test values encode");
    cat(&[
        &u32::try_from(body.len())
            .expect("a small frame")
            .to_be_bytes(),
        &body,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_serves_every_operation_with_the_prototypes_bytes() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (nodes, at) = one_node(dir.path(), &setup(SocketProtocol::Custom, true)).await;
    let mut al = Wire::open(at).await;
    let mut bo = Wire::open(at).await;

    // SOCKET.md's examples, byte for byte.
    al.call(&[0x0B, 0x00], b"\x0B\x01\x01\x0FDatabase reset.")
        .await;
    al.call(&signup("Al", "pw"), &status(1, true, "Signup successful"))
        .await;
    al.call(&signup("al", "other"), &status(1, false, "Username taken"))
        .await;
    al.call(
        &signup("Bo", "secret"),
        &status(1, true, "Signup successful"),
    )
    .await;
    al.call(
        &login("Al", "pw"),
        b"\x02\x01\x01\x00\x00\x11Login successful.",
    )
    .await;
    bo.call(
        &login("Al", "pw"),
        b"\x02\x01\x00\x00\x00\x1FThis user is already logged in.",
    )
    .await;
    al.call(
        &login("Bo", "secret"),
        &count(
            2,
            false,
            0,
            "Client is already logged in with another user.",
        ),
    )
    .await;
    al.call(
        &login("Al", "pw"),
        &count(2, false, 0, "This user is already logged in."),
    )
    .await;
    bo.call(
        &login("Ghost", "pw"),
        &count(2, false, 0, "Username not found."),
    )
    .await;
    bo.call(
        &login("Bo", "wrong"),
        &count(2, false, 0, "Wrong password."),
    )
    .await;

    // Bo is away: the message waits.
    al.call(&send("Al", "Bo", "hi"), &status(5, true, "Message stored."))
        .await;
    al.call(
        &send("Bo", "Al", "x"),
        &status(5, false, "You are not logged in as this sender."),
    )
    .await;
    al.call(
        &send("Al", "Nobody", "x"),
        &status(5, false, "Recipient does not exist."),
    )
    .await;
    bo.call(&[4, 0], &count(4, false, 0, NOT_LOGGED_IN)).await;
    bo.call(
        &login("Bo", "secret"),
        &count(2, true, 1, "Login successful."),
    )
    .await;
    bo.call(&[4, 0], &count(4, true, 1, "Count of away messages."))
        .await;
    bo.call(&[6, 0], b"\x06\x01\x01\x00").await;

    bo.send(&[7, 0, 10]).await;
    let fetched = bo.messages(7).await;
    assert_eq!(fetched.len(), 1);
    let (first, ref sender, ref content) = fetched[0];
    assert_eq!((sender.as_str(), content.as_str()), ("Al", "hi"));
    bo.call(&[7, 0, 10], b"\x07\x01\x01\x00\x00").await;
    bo.call(&[4, 0], &count(4, true, 0, "Count of away messages."))
        .await;
    // Fetched messages are delivered; one sent while Bo is logged in is delivered at once.
    al.call(
        &send("Al", "Bo", "now"),
        &status(5, true, "Message stored."),
    )
    .await;
    bo.call(&[4, 0], &count(4, true, 0, "Count of away messages."))
        .await;
    bo.send(&[6, 0]).await;
    let polled = bo.messages(6).await;
    assert_eq!(
        polled.iter().map(|m| m.2.as_str()).collect::<Vec<_>>(),
        ["hi", "now"],
        "a poll lists every delivered message, oldest first, and changes nothing"
    );
    bo.send(&[6, 0]).await;
    assert_eq!(bo.messages(6).await, polled);
    // SOCKET.md's op 6 example layout, for the first message.
    bo.send(&[6, 0]).await;
    let mut expected = vec![6, 1, 1, 2];
    for (id, sender, content) in &polled {
        expected.extend(cat(&[&id.to_be_bytes(), &str8(sender), &str16(content)]));
    }
    bo.expect(&expected).await;

    // Search: no log-in needed, `%` and `_` are the prototype's wildcards.
    let mut anyone = Wire::open(at).await;
    anyone
        .call(&list("", 0, 10), &status(8, false, "No pattern provided."))
        .await;
    anyone.send(&list("l", 0, 10)).await;
    let found = anyone.accounts().await;
    assert_eq!(
        found.iter().map(|a| a.1.as_str()).collect::<Vec<_>>(),
        ["Al"]
    );
    let al_id = found[0].0;
    anyone
        .call(
            &list("A", 0, 10),
            &cat(&[&[8, 1, 1, 1], &al_id.to_be_bytes(), &str8("Al")]),
        )
        .await;
    anyone.send(&list("%", 0, 255)).await;
    assert_eq!(anyone.accounts().await.len(), 2);
    anyone.send(&list("_o", 0, 255)).await;
    assert_eq!(anyone.accounts().await.len(), 1);
    anyone.send(&list("%", 1, 1)).await;
    assert_eq!(anyone.accounts().await.len(), 1, "paged: start 1, count 1");
    anyone.call(&list("zxy", 0, 10), b"\x08\x01\x01\x00").await;

    // Deleting: only the caller's own messages count.
    anyone
        .call(
            &delete(&[first]),
            &status(9, false, "You are not logged in."),
        )
        .await;
    al.call(
        &delete(&[first]),
        b"\x09\x01\x01\x00\x13Deleted 0 messages.",
    )
    .await;
    bo.call(
        &delete(&[first, 4_000_000]),
        b"\x09\x01\x01\x01\x13Deleted 1 messages.",
    )
    .await;
    bo.call(
        &delete(&[]),
        &status(9, false, "No valid message IDs provided."),
    )
    .await;
    bo.send(&[6, 0]).await;
    assert_eq!(bo.messages(6).await.len(), 1);

    // limit 0: an error, then an empty list (two replies), the connection stays.
    bo.call(
        &[7, 0, 0],
        &cat(&[
            &status(7, false, "No limit specified."),
            b"\x07\x01\x01\x00\x00",
        ]),
    )
    .await;
    // op 255: "Unknown action" as a signup reply.
    bo.call(b"\xFF\x00\x00\x03abc", b"\x01\x01\x00\x0EUnknown action")
        .await;

    bo.call(&[3, 0], &status(3, true, "You have been logged out."))
        .await;
    bo.call(&[3, 0], &status(3, false, NOT_LOGGED_IN)).await;
    bo.call(
        &send("Bo", "Al", "x"),
        &status(5, false, "You are not logged in as this sender."),
    )
    .await;
    bo.call(&[6, 0], &status(6, false, NOT_LOGGED_IN)).await;
    bo.call(&[7, 0, 1], &status(7, false, NOT_LOGGED_IN)).await;
    bo.call(&[10, 0], &status(10, false, NOT_LOGGED_IN)).await;
    // The connection may log in again, as anyone.
    bo.call(
        &login("Bo", "secret"),
        &count(2, true, 0, "Login successful."),
    )
    .await;

    al.call(
        &[10, 0],
        &status(
            10,
            true,
            "Account has been deleted. All associated messages are removed.",
        ),
    )
    .await;
    al.call(
        &login("Al", "pw"),
        &count(2, false, 0, "Username not found."),
    )
    .await;
    bo.send(&[6, 0]).await;
    assert!(
        bo.messages(6).await.is_empty(),
        "Al's messages went with Al"
    );

    // The passwords were stored as argon2id, and the prototype's SHA-256 form of them logs
    // in through jochat.v1 too.
    let dump = dump_file(&nodes[0].db);
    assert!(dump
        .users
        .iter()
        .all(|u| u.password_hash.starts_with("$argon2id$")));
    let grpc = nodes[0].client();
    grpc.log_in("Bo", "secret")
        .await
        .expect("the same password through jochat.v1");
    // JoChat's one session per account: that log-in ended the socket's session, and the
    // socket connection now answers as logged out and lets go of the name.
    bo.call(&[4, 0], &count(4, false, 0, NOT_LOGGED_IN)).await;
    let mut again = Wire::open(at).await;
    again
        .call(
            &login("Bo", "secret"),
            &count(2, true, 0, "Login successful."),
        )
        .await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_serves_every_operation_with_the_prototypes_replies() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (nodes, at) = one_node(dir.path(), &setup(SocketProtocol::Json, true)).await;
    let mut al = Wire::open(at).await;
    let mut bo = Wire::open(at).await;

    // SOCKET.md's example, byte for byte (Python's json.dumps spacing).
    al.send(&json_frame(&json!({"msg_type": "reset_db", "data": {}})))
        .await;
    al.expect(b"\x00\x00\x00\x4C{\"msg_type\": \"reset_db\", \"data\": {\"status\": \"ok\", \"msg\": \"Database reset.\"}}")
        .await;
    let ok = |msg: &str| json!({"status": "ok", "msg": msg});
    let error = |msg: &str| json!({"status": "error", "msg": msg});
    let reply = |msg_type: &str, data: Value| json!({"msg_type": msg_type, "data": data});

    assert_eq!(
        al.json("signup", json!({"username": "Al"})).await,
        reply("signup", error("Invalid data"))
    );
    assert_eq!(
        al.json("signup", json!({"username": "Al", "password": "pw"}))
            .await,
        reply("signup", ok("Signup successful"))
    );
    assert_eq!(
        al.json("signup", json!({"username": "Bo", "password": "pw"}))
            .await,
        reply("signup", ok("Signup successful"))
    );
    assert_eq!(
        al.json("login", json!({"username": "", "password": "pw"}))
            .await,
        reply("login", error("Invalid login data."))
    );
    assert_eq!(
        al.json("login", json!({"username": "Al", "password": "pw"}))
            .await,
        reply(
            "login",
            json!({"status": "ok", "msg": "Login successful.", "unread_count": 0})
        )
    );
    assert_eq!(
        al.json("send_message", json!({"sender": "Al", "recipient": "Bo"}))
            .await,
        reply(
            "send_message",
            error("Sender, recipient, and content required.")
        )
    );
    assert_eq!(
        al.json(
            "send_message",
            json!({"sender": "Al", "recipient": "Bo", "content": "héllo \"you\""})
        )
        .await,
        reply("send_message", ok("Message stored."))
    );
    assert_eq!(
        bo.json("login", json!({"username": "Bo", "password": "pw"}))
            .await,
        reply(
            "login",
            json!({"status": "ok", "msg": "Login successful.", "unread_count": 1})
        )
    );
    assert_eq!(
        bo.json("count_unread", json!({})).await,
        reply(
            "count_unread",
            json!({"status": "ok", "msg": "Count of away messages.", "unread_count": 1})
        )
    );
    let fetched = bo.json("fetch_away_msgs", json!({"limit": -1})).await;
    let id = fetched["data"]["msg"][0]["id"].clone();
    assert_eq!(
        fetched,
        reply(
            "fetch_away_msgs",
            json!({"status": "ok", "msg": [{"id": id, "sender": "Al", "content": "héllo \"you\""}]})
        )
    );
    assert_eq!(
        bo.json("send_messages_to_client", Value::Null).await,
        reply(
            "send_messages_to_client",
            json!({"status": "ok", "msg": [{"id": id, "sender": "Al", "content": "héllo \"you\"", "to_deliver": 1}]})
        )
    );
    // Non-ASCII goes out as \u escapes, as Python's json.dumps writes it.
    bo.send(&json_frame(
        &json!({"msg_type": "send_messages_to_client", "data": {}}),
    ))
    .await;
    let raw = String::from_utf8(bo.frame().await).expect("ASCII");
    assert!(raw.contains(r#""content": "h\u00e9llo \"you\"""#), "{raw}");

    let bo_id = bo_id(&nodes);
    assert_eq!(
        bo.json(
            "list_accounts",
            json!({"pattern": "o", "start": "0", "count": 10})
        )
        .await,
        reply(
            "list_accounts",
            json!({"status": "ok", "users": [[bo_id, "Bo"]]})
        )
    );
    assert_eq!(
        bo.json("list_accounts", json!({"pattern": "o", "start": "x"}))
            .await,
        reply("list_accounts", error("Invalid pagination parameters."))
    );
    assert_eq!(
        bo.json("list_accounts", json!({})).await,
        reply("list_accounts", error("No pattern provided."))
    );
    assert_eq!(
        bo.json("delete_messages", json!({"message_ids_to_delete": []}))
            .await,
        reply("delete_messages", error("No valid message IDs provided."))
    );
    assert_eq!(
        bo.json(
            "delete_messages",
            json!({"message_ids_to_delete": [id, 987_654]})
        )
        .await,
        reply(
            "delete_messages",
            json!({"status": "ok", "msg": "Deleted 1 messages.", "deleted_count": 1})
        )
    );
    assert_eq!(
        bo.json("no_such_thing", json!({})).await,
        reply("signup", error("Unknown action"))
    );
    // limit 0: an error, then an empty list.
    assert_eq!(
        bo.json("fetch_away_msgs", json!({"limit": 0})).await,
        reply("fetch_away_msgs", error("No limit specified."))
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&bo.frame().await).expect("JSON"),
        reply("fetch_away_msgs", json!({"status": "ok", "msg": []}))
    );
    assert_eq!(
        bo.json("logout", Value::Null).await,
        reply("logout", ok("You have been logged out."))
    );
    assert_eq!(
        bo.json("delete_account", json!({})).await,
        reply("delete_account", error(NOT_LOGGED_IN))
    );
    assert_eq!(
        al.json("delete_account", json!({})).await,
        reply(
            "delete_account",
            ok("Account has been deleted. All associated messages are removed.")
        )
    );
    // A missing limit: the error, then the connection ends (as the prototype's did).
    assert_eq!(
        bo.json("login", json!({"username": "Bo", "password": "pw"}))
            .await["data"]["status"],
        "ok"
    );
    assert_eq!(
        bo.json("fetch_away_msgs", json!({})).await,
        reply("fetch_away_msgs", error("No limit specified."))
    );
    assert_eq!(bo.ending().await, Ending::Eof);
    // Closing ended Bo's session: the name is free again at once.
    let mut again = Wire::open(at).await;
    assert_eq!(
        again
            .json("login", json!({"username": "Bo", "password": "pw"}))
            .await["data"]["msg"],
        "Login successful."
    );
    stop_all(nodes).await;
}

/// Bo's account id in the first node's file.
fn bo_id(nodes: &[ClusterNode]) -> i64 {
    dump_file(&nodes[0].db)
        .users
        .iter()
        .find(|u| u.username.as_str() == "Bo")
        .expect("Bo exists")
        .id
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_the_connection_without_touching_the_state() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (nodes, at) = one_node(dir.path(), &setup(SocketProtocol::Custom, true)).await;
    let mut wire = Wire::open(at).await;
    wire.call(
        &signup("Alice", "correct_password"),
        &status(1, true, "Signup successful"),
    )
    .await;
    let before = dump_file(&nodes[0].db);

    // The prototype's test_6: an empty password is read to the end, so the close is orderly;
    // an empty username leaves the password unread, so the peer sees a reset.
    let mut empty_password = Wire::open(at).await;
    empty_password.send(&login("Alice", "")).await;
    assert_eq!(empty_password.ending().await, Ending::Eof);
    let mut empty_username = Wire::open(at).await;
    empty_username.send(&login("", "correct_password")).await;
    assert_eq!(empty_username.ending().await, Ending::Reset);

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("an unknown op", vec![12, 0]),
        ("op 0", vec![0, 0]),
        (
            "invalid UTF-8 in a name",
            cat(&[&[1, 0, 2, 0xC3, 0x28], &str8("pw")]),
        ),
        (
            "invalid UTF-8 in content",
            cat(&[&[5, 0], &str8("Alice"), &str8("Alice"), &[0, 1, 0xFF]]),
        ),
        (
            "an empty sender",
            cat(&[&[5, 0, 0], &str8("Alice"), &str16("x")]),
        ),
        (
            "an empty content",
            cat(&[&[5, 0], &str8("Alice"), &str8("Alice"), &[0, 0]]),
        ),
    ];
    each_closes_without_a_reply(at, bad).await;
    // A truncated request, then the client leaves: nothing is done.
    let mut truncated = Wire::open(at).await;
    truncated.send(&signup("Mallory", "pw")[..6]).await;
    drop(truncated);
    // Garbage after a good request on one connection: the good one is answered first.
    let mut mixed = Wire::open(at).await;
    mixed
        .send(&cat(&[&signup("Alice", "x"), &[200, 0, 1, 2, 3]]))
        .await;
    mixed.expect(&status(1, false, "Username taken")).await;
    assert_eq!(mixed.ending().await, Ending::Reset);

    assert_eq!(dump_file(&nodes[0].db), before, "bad input changed nothing");
    // The node still serves.
    wire.call(
        &login("Alice", "correct_password"),
        &count(2, true, 0, "Login successful."),
    )
    .await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_frames_end_the_connection_without_touching_the_state() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (nodes, at) = one_node(dir.path(), &setup(SocketProtocol::Json, false)).await;
    let mut wire = Wire::open(at).await;
    assert_eq!(
        wire.json("signup", json!({"username": "Alice", "password": "pw"}))
            .await["data"]["status"],
        "ok"
    );
    let before = dump_file(&nodes[0].db);
    let frame = |body: &[u8]| {
        cat(&[
            &u32::try_from(body.len()).expect("small").to_be_bytes(),
            body,
        ])
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("a zero length", vec![0, 0, 0, 0]),
        ("a length over the limit", vec![0x7F, 0xFF, 0xFF, 0xFF]),
        ("not JSON", frame(b"{nope")),
        (
            "invalid UTF-8",
            frame(b"{\"msg_type\": \"signup\", \"data\": {\"username\": \"\xFF\"}}"),
        ),
        ("no msg_type", frame(br#"{"data": {}}"#)),
        ("no data", frame(br#"{"msg_type": "signup"}"#)),
        (
            "data not an object",
            frame(br#"{"msg_type": "signup", "data": [1]}"#),
        ),
        ("not an object", frame(b"[1, 2]")),
    ];
    each_closes_without_a_reply(at, bad).await;
    // Without --allow-anonymous-reset, reset_db is refused and changes nothing.
    let refused = wire.json("reset_db", json!({})).await;
    assert_eq!(refused["data"]["status"], "error");
    assert!(
        refused["data"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("--allow-anonymous-reset")),
        "{refused}"
    );
    assert_eq!(dump_file(&nodes[0].db), before, "bad input changed nothing");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_capped_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let limit = 8;
    let setup = Setup {
        socket_connections_max: Some(limit),
        ..setup(SocketProtocol::Custom, false)
    };
    let (nodes, at) = one_node(dir.path(), &setup).await;
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut wire = Wire::open(at).await;
        // Each answers, so each is being served (not just waiting in the backlog).
        wire.call(&list("zz", 0, 1), b"\x08\x01\x01\x00").await;
        held.push(wire);
    }
    for _ in 0..20 {
        let mut extra = Wire::open(at).await;
        extra.send(&list("zz", 0, 1)).await;
        let ending = extra.ending().await;
        assert!(matches!(ending, Ending::Eof | Ending::Reset), "{ending:?}");
    }
    // gRPC is untouched, and a freed slot is taken again.
    nodes[0]
        .client()
        .sign_up("carol", "pw")
        .await
        .expect("gRPC still serves");
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut wire = Wire::open(at).await;
        wire.send(&list("carol", 0, 1)).await;
        let mut first = [0u8; 1];
        match tokio::time::timeout(REPLY_WAIT, wire.stream.read(&mut first)).await {
            Ok(Ok(1)) => break,
            _ => assert!(
                started.elapsed() < Duration::from_secs(10),
                "a closed connection's slot was never reused"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_client_on_a_follower_is_carried_through_a_leader_kill() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let setup = Setup {
        metrics: true,
        ..setup(SocketProtocol::Custom, true)
    };
    let nodes = start_cluster_with(dir.path(), 3, &setup).await;
    wait_for_leader(&nodes[0].client(), 1, 3).await;
    // Node 2 normally takes over when node 1 dies (the lowest id stands first), so Al's node
    // 3 stays a follower throughout.
    let mut al = Wire::open(nodes[2].socket_address.expect("a socket port")).await;
    let mut bo = Wire::open(nodes[1].socket_address.expect("a socket port")).await;

    // Writes on followers are forwarded; a log-in right after its sign-up finds the account.
    al.call(&[0x0B, 0x00], b"\x0B\x01\x01\x0FDatabase reset.")
        .await;
    al.call(&signup("Al", "pw"), &status(1, true, "Signup successful"))
        .await;
    al.call(&login("Al", "pw"), &count(2, true, 0, "Login successful."))
        .await;
    bo.call(&signup("Bo", "pw"), &status(1, true, "Signup successful"))
        .await;
    al.call(
        &send("Al", "Bo", "before"),
        &status(5, true, "Message stored."),
    )
    .await;
    bo.call(&login("Bo", "pw"), &count(2, true, 1, "Login successful."))
        .await;

    // Node 3 forwarded them (its metrics say so), and holds Al's connection.
    let (_, exposition) = http_get(nodes[2].metrics_address.expect("metrics"), "/metrics").await;
    let sample = |name: &str| {
        exposition
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name} is exposed:\n{exposition}"))
    };
    assert!(sample("jochat_forwarded_writes_total") >= 4.0);
    assert_eq!(sample("jochat_socket_connections"), 1.0);

    // The leader dies; the follower's client only sees a slower reply.
    let mut nodes = nodes;
    let mut leader = nodes.remove(0);
    leader.signal_stop();
    for n in 0..5 {
        let started = Instant::now();
        al.call(
            &send("Al", "Bo", &format!("during {n}")),
            &status(5, true, "Message stored."),
        )
        .await;
        assert!(started.elapsed() < REPLY_WAIT);
    }
    let _ = leader.exited().await;
    let info = nodes[0]
        .client()
        .cluster_info()
        .await
        .expect("node 2 answers");
    // Node 2 stands first (the lowest id), but Raft's vote rule lets node 3 win instead when
    // the dying leader's last entry reached node 3 only; either way a survivor leads.
    assert!(
        matches!(info.leader_id, Some(2 | 3)),
        "a survivor took over: {info:?}"
    );
    bo.send(&[7, 0, 255]).await;
    let fetched = bo.messages(7).await;
    assert_eq!(
        fetched.iter().map(|m| m.2.as_str()).collect::<Vec<_>>(),
        ["before"],
        "messages sent while Bo was logged in were delivered, the earlier one was away"
    );
    bo.send(&[6, 0]).await;
    let polled = bo.messages(6).await;
    assert_eq!(polled.len(), 6, "every message arrived once: {polled:?}");
    bo.send(&list("%", 0, 255)).await;
    assert_eq!(bo.accounts().await.len(), 2);
    al.call(&[3, 0], &status(3, true, "You have been logged out."))
        .await;
    stop_all(nodes).await;
}
