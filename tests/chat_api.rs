//! Every chat operation of `jochat.v1`, driven through `ChatServerClient` against a real node
//! over gRPC on an ephemeral port, with the resulting rows checked in the database file.

use jochat_testkit as common;

use common::{client, dump, message_rows, node, user};
use jochat_client::{AccountQuery, ClientError, InboxQuery, MessageStatus};

#[tokio::test]
async fn every_operation_end_to_end() {
    let node = node().await;
    let client = client(&node);

    // 1. Two accounts; Bob is not logged in yet.
    let alice = user(&client, "Alice").await;
    let bob_signed_up = client.sign_up("bob", "bob-password").await.unwrap();
    assert_eq!(bob_signed_up.username, "bob");
    assert_eq!(alice.unread_count, 0);

    // 2. A message to an absent Bob (name in another case) waits as away: to_deliver = 0.
    let away = client
        .send_message(&alice.token, "BOB", "are you there?")
        .await
        .unwrap();
    assert_eq!(away.status, MessageStatus::Away);
    assert_eq!(
        message_rows(&node),
        vec![("Alice".into(), "bob".into(), "are you there?".into(), 0)]
    );

    // 3. Bob logs in and sees one unread; his unread count says the same.
    let bob = client.log_in("Bob", "bob-password").await.unwrap();
    assert_eq!(bob.unread_count, 1);
    assert_eq!(client.unread_count(&bob.token).await.unwrap(), 1);

    // 4. Now that Bob has a session, a new message is delivered at once: to_deliver = 1.
    let delivered = client
        .send_message(&alice.token, "bob", "hello again")
        .await
        .unwrap();
    assert_eq!(delivered.status, MessageStatus::Delivered);
    assert!(delivered.id > away.id);

    // 5. Fetching the away message marks it delivered.
    let fetched = client.fetch_away(&bob.token, 10).await.unwrap();
    assert_eq!(fetched.messages.len(), 1);
    assert_eq!(fetched.messages[0].id, away.id);
    assert_eq!(fetched.messages[0].sender, "Alice");
    assert_eq!(fetched.remaining, 0);
    assert_eq!(client.unread_count(&bob.token).await.unwrap(), 0);
    let rows = message_rows(&node);
    assert!(
        rows.iter().all(|row| row.3 == 1),
        "every message delivered: {rows:?}"
    );

    // 6. Bob's inbox, newest first, and the conversation in both directions.
    client
        .send_message(&bob.token, "alice", "hi Alice")
        .await
        .unwrap();
    let inbox = client
        .list_messages(&bob.token, &InboxQuery::default())
        .await
        .unwrap();
    assert_eq!(inbox.total_count, 2);
    assert_eq!(inbox.messages[0].content, "hello again");
    assert_eq!(inbox.messages[1].content, "are you there?");
    let conversation = client
        .list_messages(
            &bob.token,
            &InboxQuery {
                with_user: Some("ALICE".into()),
                ..InboxQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(conversation.total_count, 3);
    assert_eq!(conversation.messages[0].content, "hi Alice");
    let second_page = client
        .list_messages(
            &bob.token,
            &InboxQuery {
                offset: 1,
                limit: 1,
                ..InboxQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(second_page.messages.len(), 1);
    assert_eq!(second_page.messages[0].content, "are you there?");

    // 7. Account search with wildcards, substrings and paging, ordered ignoring case.
    client.sign_up("carol_1", "carol-password").await.unwrap();
    let accounts = |pattern: &str, offset: u64, limit: u32| AccountQuery {
        pattern: pattern.into(),
        offset,
        limit,
        ..AccountQuery::default()
    };
    let names = |page: jochat_client::AccountPage| {
        page.accounts
            .into_iter()
            .map(|a| a.username)
            .collect::<Vec<_>>()
    };
    let all = client
        .list_accounts(&bob.token, &accounts("*", 0, 0))
        .await
        .unwrap();
    assert_eq!(all.total_count, 3);
    assert_eq!(names(all), ["Alice", "bob", "carol_1"]);
    assert_eq!(
        names(
            client
                .list_accounts(&bob.token, &accounts("", 1, 1))
                .await
                .unwrap()
        ),
        ["bob"]
    );
    assert_eq!(
        names(
            client
                .list_accounts(&bob.token, &accounts("?OB", 0, 0))
                .await
                .unwrap()
        ),
        ["bob"]
    );
    assert_eq!(
        names(
            client
                .list_accounts(&bob.token, &accounts("a*", 0, 0))
                .await
                .unwrap()
        ),
        ["Alice"]
    );
    assert_eq!(
        names(
            client
                .list_accounts(&bob.token, &accounts("li", 0, 0))
                .await
                .unwrap()
        ),
        ["Alice"]
    );

    // 8. Bob deletes one of his messages, and cannot delete Alice's.
    let deleted = client
        .delete_messages(&bob.token, &[away.id])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let alices_message_from_bob = client
        .list_messages(&alice.token, &InboxQuery::default())
        .await
        .unwrap()
        .messages[0]
        .id;
    assert_eq!(
        client
            .delete_messages(&bob.token, &[alices_message_from_bob])
            .await
            .unwrap(),
        0
    );

    // 9. Alice deletes her account with her password: her messages go, both directions.
    let wrong = client
        .delete_account(&alice.token, "not her password")
        .await
        .unwrap_err();
    assert_eq!(wrong.to_string(), "wrong username or password");
    let messages_deleted = client
        .delete_account(&alice.token, "Alice-password")
        .await
        .unwrap();
    assert_eq!(messages_deleted, 2);
    assert!(message_rows(&node).is_empty());
    assert_eq!(dump(&node).users.len(), 2);
    assert!(matches!(
        client.unread_count(&alice.token).await,
        Err(ClientError::Unauthenticated(_))
    ));

    // 10. Log out ends Bob's session.
    client.log_out(&bob.token).await.unwrap();
    assert!(matches!(
        client.unread_count(&bob.token).await,
        Err(ClientError::Unauthenticated(_))
    ));

    // 11. Cluster info: a single node is its own leader.
    let info = client.cluster_info().await.unwrap();
    assert_eq!(info.node_id, 1);
    assert_eq!(info.leader_id, Some(1));
    assert_eq!(info.members.len(), 1);
    assert_eq!(info.members[0].address, node.address());

    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn passwords_are_stored_only_as_argon2id_and_tokens_only_as_digests() {
    let node = node().await;
    let client = client(&node);
    let alice = user(&client, "alice").await;
    let state = dump(&node);
    let stored = &state.users[0].password_hash;
    assert!(stored.starts_with("$argon2id$"), "stored: {stored}");
    assert!(!stored.contains(&jochat_client::hash_password("alice-password")));
    assert_eq!(state.sessions.len(), 1);
    assert_ne!(
        state.sessions[0].token_digest.as_str(),
        alice.token.as_str()
    );
    assert!(
        alice.token.as_str().len() >= 32,
        "at least 128 bits of token"
    );
}

#[tokio::test]
async fn a_new_login_revokes_the_previous_session() {
    let node = node().await;
    let client = client(&node);
    let first = user(&client, "alice").await;
    let second = client.log_in("alice", "alice-password").await.unwrap();
    assert!(matches!(
        client.unread_count(&first.token).await,
        Err(ClientError::Unauthenticated(_))
    ));
    assert_eq!(client.unread_count(&second.token).await.unwrap(), 0);
    assert_eq!(dump(&node).sessions.len(), 1);
}

#[tokio::test]
async fn acknowledged_writes_survive_a_graceful_restart() {
    // 1. Write through one node, stop it gracefully.
    let dir = tempfile::tempdir().unwrap();
    let config = jochat_node::NodeConfig {
        port: 0,
        db_file: Some(dir.path().join("chat.db")),
        ..jochat_node::NodeConfig::default()
    };
    let first = jochat_node::spawn(config.clone()).await.unwrap();
    let client = jochat_client::ChatServerClient::builder()
        .servers([first.address()])
        .build()
        .unwrap();
    client.sign_up("alice", "pw-alice").await.unwrap();
    client.sign_up("bob", "pw-bob").await.unwrap();
    let alice = client.log_in("alice", "pw-alice").await.unwrap();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(
            client
                .send_message(&alice.token, "bob", &format!("message {i}"))
                .await
                .unwrap()
                .id,
        );
    }
    first.shutdown().await.unwrap();

    // 2. A new node on the same file has every acknowledged write, and the session.
    let second = jochat_node::spawn(config).await.unwrap();
    let client = jochat_client::ChatServerClient::builder()
        .servers([second.address()])
        .build()
        .unwrap();
    let bob = client.log_in("bob", "pw-bob").await.unwrap();
    assert_eq!(bob.unread_count, 20);
    let inbox = client
        .list_messages(&bob.token, &InboxQuery::default())
        .await
        .unwrap();
    let mut ids: Vec<i64> = inbox.messages.iter().map(|m| m.id).collect();
    ids.reverse();
    assert_eq!(ids, sent);
    assert_eq!(client.unread_count(&alice.token).await.unwrap(), 0);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_write_retried_with_its_key_returns_the_first_outcome() {
    use common::{authorized, raw};
    use jochat_proto::v1;

    let node = node().await;
    let client = client(&node);
    let mut raw = raw(&node).await;
    let bob = user(&client, "bob").await;

    // 1. Sign-up: the retry finds its own name taken, yet returns the first outcome.
    let sign_up = v1::SignUpRequest {
        username: "alice".into(),
        password: jochat_client::hash_password("pw"),
        idempotency_key: "k-sign-up".into(),
    };
    let first = raw.sign_up(sign_up.clone()).await.unwrap().into_inner();
    assert_eq!(raw.sign_up(sign_up).await.unwrap().into_inner(), first);

    // 2. Send, fetch and delete: one message, one fetch, one deletion.
    let send = v1::SendMessageRequest {
        recipient: "alice".into(),
        content: "once".into(),
        idempotency_key: "k-send".into(),
    };
    let first = raw
        .send_message(authorized(send.clone(), bob.token.as_str()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        raw.send_message(authorized(send, bob.token.as_str()))
            .await
            .unwrap()
            .into_inner(),
        first
    );
    assert_eq!(dump(&node).messages.len(), 1);
    // Alice logs in only now, so the message waited as away.
    let alice = client.log_in("alice", "pw").await.unwrap();
    let token = alice.token.as_str();
    let fetch = v1::FetchAwayRequest {
        limit: 10,
        idempotency_key: "k-fetch".into(),
    };
    let first = raw
        .fetch_away(authorized(fetch.clone(), token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.messages.len(), 1);
    assert_eq!(
        raw.fetch_away(authorized(fetch, token))
            .await
            .unwrap()
            .into_inner(),
        first
    );
    let delete = v1::DeleteMessagesRequest {
        ids: vec![first.messages[0].id],
        idempotency_key: "k-delete".into(),
    };
    let deleted = raw
        .delete_messages(authorized(delete.clone(), token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted_count, 1);
    assert_eq!(
        raw.delete_messages(authorized(delete, token))
            .await
            .unwrap()
            .into_inner(),
        deleted
    );

    // 3. Another caller cannot replay someone else's key.
    let stolen = v1::DeleteMessagesRequest {
        ids: vec![1],
        idempotency_key: "k-delete".into(),
    };
    let refused = raw
        .delete_messages(authorized(stolen, bob.token.as_str()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "idempotency_key: already used for a different request"
    );

    // 4. Account deletion: the retry has no account left, yet returns the first outcome.
    let delete_account = v1::DeleteAccountRequest {
        password: jochat_client::hash_password("pw"),
        idempotency_key: "k-account".into(),
    };
    let first = raw
        .delete_account(authorized(delete_account.clone(), token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        raw.delete_account(authorized(delete_account, token))
            .await
            .unwrap()
            .into_inner(),
        first
    );
    assert_eq!(dump(&node).users.len(), 1);

    // 5. Log-out likewise.
    let log_out = v1::LogOutRequest {
        idempotency_key: "k-logout".into(),
    };
    raw.log_out(authorized(log_out.clone(), bob.token.as_str()))
        .await
        .unwrap();
    raw.log_out(authorized(log_out, bob.token.as_str()))
        .await
        .unwrap();
    assert!(dump(&node).sessions.is_empty());
}
