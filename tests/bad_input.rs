//! Every kind of bad input the issue lists, sent to a real node over gRPC: each gets the
//! right status code, a message naming the field and the rule, and changes nothing.

use jochat_testkit as common;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use common::{authorized, client, dump, node, node_with, raw, user};
use jochat_client::{AccountQuery, ClientError, InboxQuery};
use jochat_node::{EphemeralNode, NodeConfig};
use jochat_proto::v1;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// Runs `call`, which must fail with `code` and exactly `message`, and checks that the
/// database is byte-for-byte the same state before and after.
async fn refused<T: std::fmt::Debug>(
    node: &EphemeralNode,
    call: impl Future<Output = Result<T, ClientError>>,
    code: Code,
    message: &str,
) {
    let before = dump(node);
    let error = call.await.expect_err("the request must be refused");
    assert_eq!(error.code(), Some(code), "code of {error:?}");
    assert_eq!(error.to_string(), message);
    assert_eq!(dump(node), before, "a refused request changed the database");
}

/// Like [`refused`] for the generated client's status.
async fn refused_raw<T: std::fmt::Debug>(
    node: &EphemeralNode,
    call: impl Future<Output = Result<T, tonic::Status>>,
    code: Code,
    message: &str,
) {
    let before = dump(node);
    let status = call.await.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "code of {status:?}");
    assert_eq!(status.message(), message);
    assert_eq!(dump(node), before, "a refused request changed the database");
}

#[tokio::test]
async fn usernames_and_passwords() {
    let node = node().await;
    let client = client(&node);
    client.sign_up("Alice", "pw").await.unwrap();

    refused(
        &node,
        client.sign_up("", "pw"),
        Code::InvalidArgument,
        "username: must be 1 to 32 characters, got 0",
    )
    .await;
    refused(
        &node,
        client.sign_up(&"a".repeat(33), "pw"),
        Code::InvalidArgument,
        "username: must be 1 to 32 characters, got 33",
    )
    .await;
    refused(
        &node,
        client.sign_up("bob smith", "pw"),
        Code::InvalidArgument,
        "username: may contain only letters, digits, '_', '-' and '.', found ' '",
    )
    .await;
    refused(
        &node,
        client.sign_up("bob<script>", "pw"),
        Code::InvalidArgument,
        "username: may contain only letters, digits, '_', '-' and '.', found '<'",
    )
    .await;
    refused(
        &node,
        client.sign_up("aLiCe", "pw"),
        Code::AlreadyExists,
        "username: \"Alice\" is already taken",
    )
    .await;
    refused(
        &node,
        client.sign_up("bob", ""),
        Code::InvalidArgument,
        "password: must not be empty",
    )
    .await;
    refused(
        &node,
        client.log_in("Alice", ""),
        Code::InvalidArgument,
        "password: must not be empty",
    )
    .await;
}

#[tokio::test]
async fn failed_logins_say_nothing_more_and_are_rate_limited() {
    let node = node_with(NodeConfig {
        login_failures_max: 3,
        ..NodeConfig::default()
    })
    .await;
    let client = client(&node);
    client.sign_up("alice", "right").await.unwrap();

    // 1. Unknown user and wrong password read the same, and change nothing.
    refused(
        &node,
        client.log_in("nobody", "right"),
        Code::Unauthenticated,
        "wrong username or password",
    )
    .await;
    refused(
        &node,
        client.log_in("alice", "wrong"),
        Code::Unauthenticated,
        "wrong username or password",
    )
    .await;
    refused(
        &node,
        client.log_in("ALICE", "wrong"),
        Code::Unauthenticated,
        "wrong username or password",
    )
    .await;
    refused(
        &node,
        client.log_in("alice", "wrong again"),
        Code::Unauthenticated,
        "wrong username or password",
    )
    .await;

    // 2. After three failures for the name (in any case), the next attempt is refused even with the right password.
    let error = client.log_in("alice", "right").await.unwrap_err();
    assert_eq!(error.code(), Some(Code::ResourceExhausted));
    assert!(
        error
            .to_string()
            .starts_with("too many failed log-ins for this username: try again in "),
        "{error}"
    );
    assert!(dump(&node).sessions.is_empty());

    // 3. Other accounts are not affected.
    client.sign_up("bob", "pw").await.unwrap();
    client.log_in("bob", "pw").await.unwrap();
}

#[tokio::test]
async fn message_content_and_recipients() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    user(&client, "bob").await;

    refused(
        &node,
        client.send_message(&alice.token, "bob", ""),
        Code::InvalidArgument,
        "content: must not be empty",
    )
    .await;
    refused(
        &node,
        client.send_message(&alice.token, "bob", &"x".repeat(64 * 1024 + 1)),
        Code::InvalidArgument,
        "content: must be at most 65536 bytes, got 65537",
    )
    .await;
    refused(
        &node,
        client.send_message(&alice.token, "zed", "hi"),
        Code::NotFound,
        "recipient: no account named \"zed\"",
    )
    .await;
    refused(
        &node,
        client.send_message(&alice.token, "", "hi"),
        Code::InvalidArgument,
        "recipient: must be 1 to 32 characters, got 0",
    )
    .await;
    // Exactly at the limit is fine.
    client
        .send_message(&alice.token, "bob", &"x".repeat(64 * 1024))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_frame_larger_than_the_configured_maximum_is_refused() {
    let node = node_with(NodeConfig {
        content_bytes_max: 1024,
        request_bytes_max: 70 * 1024,
        ..NodeConfig::default()
    })
    .await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let before = dump(&node);
    let error = client
        .send_message(&alice.token, "alice", &"x".repeat(200 * 1024))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::OutOfRange), "{error:?}");
    assert!(
        error.to_string().contains("the limit is: 71680 bytes"),
        "{error}"
    );
    assert_eq!(dump(&node), before);
}

/// Sends hand-built protobuf bytes, so that fields can hold what no client library would
/// put there (invalid UTF-8).
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let length = src.remaining();
        Ok(Some(src.copy_to_bytes(length).to_vec()))
    }
}

/// Protobuf field `number` as a length-delimited value.
fn field(number: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![
        (number << 3) | 2,
        u8::try_from(value.len()).expect("short test values"),
    ];
    out.extend_from_slice(value);
    out
}

#[tokio::test]
async fn invalid_utf8_in_a_hand_built_request() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);

    // SendMessageRequest { recipient: "alice", content: 0xFF 0xFE }.
    let mut body = field(1, b"alice");
    body.extend(field(2, &[0xFF, 0xFE]));
    grpc.ready().await.unwrap();
    let before = dump(&node);
    let status = grpc
        .unary(
            authorized(body, alice.token.as_str()),
            http::uri::PathAndQuery::from_static("/jochat.v1.Chat/SendMessage"),
            RawBytes,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "request could not be decoded: SendMessageRequest.content: invalid string value: data is not UTF-8 encoded"
    );

    // SignUpRequest { username: 0xC3 0x28, password: "pw" }.
    let mut body = field(1, &[0xC3, 0x28]);
    body.extend(field(2, b"pw"));
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(body),
            http::uri::PathAndQuery::from_static("/jochat.v1.Chat/SignUp"),
            RawBytes,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("SignUpRequest.username"),
        "{}",
        status.message()
    );

    // A truncated frame (a length running past the end).
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(vec![0x0A, 0x40, b'a']),
            http::uri::PathAndQuery::from_static("/jochat.v1.Chat/SignUp"),
            RawBytes,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("request could not be decoded: "),
        "{}",
        status.message()
    );
    assert_eq!(dump(&node), before);
}

#[tokio::test]
async fn expired_revoked_and_garbage_tokens() {
    let node = node_with(NodeConfig {
        session_ttl_secs: 1,
        ..NodeConfig::default()
    })
    .await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;

    // 1. Garbage and missing tokens.
    let garbage = jochat_client::SessionToken::from("garbage".to_owned());
    refused(
        &node,
        client.send_message(&garbage, "bob", "hi"),
        Code::Unauthenticated,
        "session token is malformed",
    )
    .await;
    refused(
        &node,
        client.unread_count(&garbage),
        Code::Unauthenticated,
        "session token is malformed",
    )
    .await;
    let unknown = jochat_client::SessionToken::from("ab".repeat(32));
    refused(
        &node,
        client.send_message(&unknown, "bob", "hi"),
        Code::Unauthenticated,
        "session token is not valid (unknown or revoked): log in again",
    )
    .await;
    let mut raw = raw(&node).await;
    refused_raw(
        &node,
        raw.unread_count(v1::UnreadCountRequest::default()),
        Code::Unauthenticated,
        "missing session token: send `authorization: Bearer <token>`",
    )
    .await;

    // 2. A revoked token (logged out) is refused for reads and writes alike.
    client.log_out(&bob.token).await.unwrap();
    let revoked = "session token is not valid (unknown or revoked): log in again";
    refused(
        &node,
        client.unread_count(&bob.token),
        Code::Unauthenticated,
        revoked,
    )
    .await;
    refused(
        &node,
        client.send_message(&bob.token, "alice", "hi"),
        Code::Unauthenticated,
        revoked,
    )
    .await;
    refused(
        &node,
        client.log_out(&bob.token),
        Code::Unauthenticated,
        revoked,
    )
    .await;

    // 3. An expired token: poll until the one-second session has lapsed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.unread_count(&alice.token).await {
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("the session never expired"),
            Err(error) => {
                assert_eq!(error.to_string(), "session expired: log in again");
                break;
            }
        }
    }
    refused(
        &node,
        client.send_message(&alice.token, "bob", "late"),
        Code::Unauthenticated,
        "session expired: log in again",
    )
    .await;
}

#[tokio::test]
async fn negative_and_huge_offsets_and_limits() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let token = alice.token.as_str();
    let mut raw = raw(&node).await;

    let page = |offset, limit| v1::ListMessagesRequest {
        offset,
        limit,
        ..Default::default()
    };
    refused_raw(
        &node,
        raw.list_messages(authorized(page(-1, 10), token)),
        Code::InvalidArgument,
        "offset: must be between 0 and 1000000000, got -1",
    )
    .await;
    refused_raw(
        &node,
        raw.list_messages(authorized(page(i64::MAX, 10), token)),
        Code::InvalidArgument,
        "offset: must be between 0 and 1000000000, got 9223372036854775807",
    )
    .await;
    refused_raw(
        &node,
        raw.list_messages(authorized(page(0, -3), token)),
        Code::InvalidArgument,
        "limit: must be between 1 and 1000 (0 for 50), got -3",
    )
    .await;
    refused_raw(
        &node,
        raw.list_messages(authorized(page(0, 1001), token)),
        Code::InvalidArgument,
        "limit: must be between 1 and 1000 (0 for 50), got 1001",
    )
    .await;
    let accounts = |offset, limit| v1::ListAccountsRequest {
        offset,
        limit,
        ..Default::default()
    };
    refused_raw(
        &node,
        raw.list_accounts(authorized(accounts(-5, 0), token)),
        Code::InvalidArgument,
        "offset: must be between 0 and 1000000000, got -5",
    )
    .await;
    refused_raw(
        &node,
        raw.list_accounts(authorized(accounts(0, i64::MIN), token)),
        Code::InvalidArgument,
        "limit: must be between 1 and 1000 (0 for 50), got -9223372036854775808",
    )
    .await;
    let fetch = |limit| v1::FetchAwayRequest {
        limit,
        ..Default::default()
    };
    refused_raw(
        &node,
        raw.fetch_away(authorized(fetch(-1), token)),
        Code::InvalidArgument,
        "limit: must be between 1 and 1000 (0 for 100), got -1",
    )
    .await;
    refused_raw(
        &node,
        raw.fetch_away(authorized(fetch(5000), token)),
        Code::InvalidArgument,
        "limit: must be between 1 and 1000 (0 for 100), got 5000",
    )
    .await;
    refused(
        &node,
        client.list_messages(
            &alice.token,
            &InboxQuery {
                limit: 2000,
                ..InboxQuery::default()
            },
        ),
        Code::InvalidArgument,
        "limit: must be between 1 and 1000 (0 for 50), got 2000",
    )
    .await;
    let consistency = v1::ListMessagesRequest {
        consistency: 9,
        ..Default::default()
    };
    refused_raw(
        &node,
        raw.list_messages(authorized(consistency, token)),
        Code::InvalidArgument,
        "consistency: unknown value 9",
    )
    .await;

    // An offset past the end is a valid, empty page.
    let past = client
        .list_messages(
            &alice.token,
            &InboxQuery {
                offset: 1_000_000,
                ..InboxQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(past.messages.is_empty());
}

#[tokio::test]
async fn message_ids_for_deletion() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let to_bob = client
        .send_message(&alice.token, "bob", "for bob")
        .await
        .unwrap();

    // 1. Too many ids, non-positive ids, no ids.
    let many: Vec<i64> = (1..=1001).collect();
    refused(
        &node,
        client.delete_messages(&bob.token, &many),
        Code::InvalidArgument,
        "ids: at most 1000 per request, got 1001",
    )
    .await;
    refused(
        &node,
        client.delete_messages(&bob.token, &[1, -4]),
        Code::InvalidArgument,
        "ids: ids must be positive, got -4",
    )
    .await;
    refused(
        &node,
        client.delete_messages(&bob.token, &[]),
        Code::InvalidArgument,
        "ids: must name at least one message",
    )
    .await;

    // 2. Someone else's message is not touched; exactly 1000 ids is allowed.
    let before = dump(&node);
    assert_eq!(
        client
            .delete_messages(&alice.token, &[to_bob.id])
            .await
            .unwrap(),
        0
    );
    let thousand: Vec<i64> = (1..=1000).collect();
    assert_eq!(
        client
            .delete_messages(&alice.token, &thousand)
            .await
            .unwrap(),
        0
    );
    assert_eq!(dump(&node).messages, before.messages);
    assert_eq!(
        client
            .delete_messages(&bob.token, &[to_bob.id, to_bob.id])
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn patterns_with_sql_metacharacters_are_literal() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    client.sign_up("a_b", "pw").await.unwrap();
    client.sign_up("axb", "pw").await.unwrap();
    let search = |pattern: &str| AccountQuery::new(pattern);

    // Each pattern and the accounts it must find: `_`, `%` and `\` stand for themselves.
    let cases: [(&str, &[&str]); 8] = [
        ("_", &["a_b"]),
        ("a_b", &["a_b"]),
        ("%", &[]),
        ("%%__\\\\%", &[]),
        ("\\", &[]),
        ("a\\_b", &[]),
        ("a?b", &["a_b", "axb"]),
        ("A*", &["a_b", "alice", "axb"]),
    ];
    for (pattern, expected) in cases {
        let page = client
            .list_accounts(&alice.token, &search(pattern))
            .await
            .unwrap();
        let names: Vec<String> = page.accounts.into_iter().map(|a| a.username).collect();
        assert_eq!(names, expected, "pattern {pattern:?}");
    }
    refused(
        &node,
        client.list_accounts(&alice.token, &search(&"%".repeat(65))),
        Code::InvalidArgument,
        "pattern: must be at most 64 characters, got 65",
    )
    .await;
    refused(
        &node,
        client.list_accounts(&alice.token, &search("a\u{0}b")),
        Code::InvalidArgument,
        "pattern: must not contain control characters",
    )
    .await;
}

#[tokio::test]
async fn idempotency_keys_are_checked() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let mut raw = raw(&node).await;
    let request = v1::SendMessageRequest {
        recipient: "alice".into(),
        content: "hi".into(),
        idempotency_key: "not a valid key!".into(),
    };
    refused_raw(
        &node,
        raw.send_message(authorized(request, alice.token.as_str())),
        Code::InvalidArgument,
        "idempotency_key: may contain only letters, digits, '_', '-', '.' and ':'",
    )
    .await;

    // A retry with the same key returns the first result and stores one message.
    let request = v1::SendMessageRequest {
        recipient: "alice".into(),
        content: "once".into(),
        idempotency_key: "key-1".into(),
    };
    let first = raw
        .send_message(authorized(request.clone(), alice.token.as_str()))
        .await
        .unwrap()
        .into_inner();
    let retry = raw
        .send_message(authorized(request, alice.token.as_str()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, retry);
    assert_eq!(dump(&node).messages.len(), 1);
}
