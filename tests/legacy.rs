//! The prototype's `ChatService`, driven through its generated client against a real node:
//! every call with the status and text `legacy/REPLIES.md` gives for each condition,
//! ResetDB's permissions, the refused internal calls, passwords as the prototype's client and
//! scripts sent them, and data flowing between it and `jochat.v1` in both directions.

use jochat_testkit as common;

use common::{client, dump, node_with};
use jochat_client::{hash_password, InboxQuery};
use jochat_node::NodeConfig;
use jochat_proto::legacy::chat_service_client::ChatServiceClient;
use jochat_proto::legacy::*;
use tonic::transport::Channel;
use tonic::Code;

async fn legacy(node: &jochat_node::EphemeralNode) -> ChatServiceClient<Channel> {
    ChatServiceClient::connect(format!("http://{}", node.address()))
        .await
        .expect("the node accepts connections")
}

fn empty(token: &str) -> EmptyRequest {
    EmptyRequest {
        auth_token: Some(token.to_owned()),
    }
}

/// Signs up and logs in through the legacy service, sending what the prototype's client sends
/// (the SHA-256 of the password); returns the token.
async fn legacy_user(client: &mut ChatServiceClient<Channel>, name: &str) -> String {
    let password = hash_password(&format!("{name}-password"));
    let signed = client
        .signup(SignupRequest {
            username: name.into(),
            password: password.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (signed.status.as_str(), signed.msg.as_str()),
        ("ok", "Signup successful")
    );
    let login = client
        .login(LoginRequest {
            username: name.into(),
            password,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (login.status.as_str(), login.msg.as_str()),
        ("ok", "Login successful")
    );
    login.auth_token
}

#[tokio::test]
async fn every_chat_call_in_the_prototypes_shapes() {
    let node = node_with(NodeConfig::default()).await;
    let mut old = legacy(&node).await;

    // 1. Sign-up, a taken name and a bad name answer in the prototype's shape.
    let alice = legacy_user(&mut old, "alice").await;
    let taken = old
        .signup(SignupRequest {
            username: "ALICE".into(),
            password: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (taken.status.as_str(), taken.msg.as_str()),
        ("error", "Username already taken")
    );
    let bad = old
        .signup(SignupRequest {
            username: "".into(),
            password: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (bad.status.as_str(), bad.msg.as_str()),
        ("error", "Username/password required")
    );
    for (username, password) in [("", "x"), ("alice", ""), ("", "")] {
        let login = old
            .login(LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (login.status.as_str(), login.msg.as_str()),
            ("error", "Username/password required"),
            "{username:?} {password:?}"
        );
    }
    // A rule the prototype never checked: JoChat's own message, naming the field.
    let long = old
        .signup(SignupRequest {
            username: "a".repeat(33),
            password: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (long.status.as_str(), long.msg.as_str()),
        ("error", "username: must be 1 to 32 characters, got 33")
    );
    let wrong = old
        .login(LoginRequest {
            username: "alice".into(),
            password: "nope".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            wrong.status.as_str(),
            wrong.msg.as_str(),
            wrong.auth_token.as_str()
        ),
        ("error", "wrong username or password", "")
    );
    // An unknown name gets the same text: nobody learns which names exist.
    let unknown_name = old
        .login(LoginRequest {
            username: "nobody".into(),
            password: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown_name.msg, "wrong username or password");

    // 2. Bob signs up but stays away; Alice sends him three messages.
    old.signup(SignupRequest {
        username: "bob".into(),
        password: hash_password("bob-password"),
    })
    .await
    .unwrap();
    for text in ["one", "two", "three"] {
        let sent = old
            .send_message(SendMessageRequest {
                auth_token: alice.clone(),
                recipient: "Bob".into(),
                content: text.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (sent.status.as_str(), sent.msg.as_str()),
            ("ok", "Message sent")
        );
    }
    let unknown = old
        .send_message(SendMessageRequest {
            auth_token: alice.clone(),
            recipient: "zed".into(),
            content: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (unknown.status.as_str(), unknown.msg.as_str()),
        ("error", "Recipient not found")
    );

    // 3. Bob logs in with three unread, fetches two, counts one, lists newest first.
    let bob_login = old
        .login(LoginRequest {
            username: "bob".into(),
            password: hash_password("bob-password"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob_login.unread_count, 3);
    let bob = bob_login.auth_token;
    let fetched = old
        .fetch_away_msgs(FetchAwayMsgsRequest {
            auth_token: bob.clone(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (fetched.status.as_str(), fetched.msg.as_str()),
        ("ok", "Messages retrieved successfully")
    );
    let contents: Vec<&str> = fetched
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(contents, ["one", "two"]);
    assert_eq!(fetched.messages[0].sender, "alice");
    let unread = old
        .count_unread(CountUnreadRequest {
            auth_token: bob.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            unread.status.as_str(),
            unread.msg.as_str(),
            unread.unread_count
        ),
        ("ok", "Unread count fetched", 1)
    );
    let listed = old
        .list_messages(ListMessagesRequest {
            auth_token: bob.clone(),
            start: 1,
            count: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (listed.status.as_str(), listed.msg.as_str()),
        ("ok", "Messages retrieved successfully")
    );
    assert_eq!(listed.total_count, 3);
    assert_eq!(listed.messages.len(), 1);
    assert_eq!(listed.messages[0].content, "two");
    let negative = old
        .list_messages(ListMessagesRequest {
            auth_token: bob.clone(),
            start: -1,
            count: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (negative.status.as_str(), negative.msg.as_str()),
        ("error", "start: must not be negative, got -1")
    );

    // 4. Accounts: '*' lists all; other text is a literal substring.
    old.signup(SignupRequest {
        username: "alina".into(),
        password: "x".into(),
    })
    .await
    .unwrap();
    let names = |reply: ListAccountsResponse| {
        reply
            .users
            .into_iter()
            .map(|u| u.username)
            .collect::<Vec<_>>()
    };
    let search = |pattern: &str| ListAccountsRequest {
        auth_token: bob.clone(),
        pattern: pattern.into(),
        start: 0,
        count: 0,
    };
    let all = old.list_accounts(search("*")).await.unwrap().into_inner();
    assert_eq!(
        (all.status.as_str(), all.msg.as_str()),
        ("ok", "Accounts retrieved successfully")
    );
    assert_eq!(names(all), ["alice", "alina", "bob"]);
    assert_eq!(
        names(old.list_accounts(search("LI")).await.unwrap().into_inner()),
        ["alice", "alina"]
    );
    assert!(names(old.list_accounts(search("a*")).await.unwrap().into_inner()).is_empty());
    assert!(names(old.list_accounts(search("b?b")).await.unwrap().into_inner()).is_empty());

    // 5. Deleting counts only the caller's own messages.
    let ids: Vec<i32> = dump(&node)
        .messages
        .iter()
        .map(|m| i32::try_from(m.id.0).unwrap())
        .collect();
    let alice_tries = old
        .delete_messages(DeleteMessagesRequest {
            auth_token: alice.clone(),
            message_ids_to_delete: ids.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            alice_tries.status.as_str(),
            alice_tries.msg.as_str(),
            alice_tries.deleted_count
        ),
        ("ok", "Messages deleted successfully", 0)
    );
    let bob_deletes = old
        .delete_messages(DeleteMessagesRequest {
            auth_token: bob.clone(),
            message_ids_to_delete: vec![ids[0], 999],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob_deletes.deleted_count, 1);

    // 6. Log out, then every call that needs a session says "Not logged in", as does a
    //    token that was never valid.
    let logout = old.logout(empty(&bob)).await.unwrap().into_inner();
    assert_eq!(
        (logout.status.as_str(), logout.msg.as_str()),
        ("ok", "You have been logged out.")
    );
    for token in [bob.as_str(), "garbage", ""] {
        let mut replies: Vec<(&str, String, String)> = Vec::new();
        let r = old.logout(empty(token)).await.unwrap().into_inner();
        replies.push(("Logout", r.status, r.msg));
        let r = old
            .count_unread(CountUnreadRequest {
                auth_token: token.into(),
            })
            .await
            .unwrap()
            .into_inner();
        replies.push(("CountUnread", r.status, r.msg));
        let r = old
            .send_message(SendMessageRequest {
                auth_token: token.into(),
                recipient: "alice".into(),
                content: "x".into(),
            })
            .await
            .unwrap()
            .into_inner();
        replies.push(("SendMessage", r.status, r.msg));
        let r = old
            .list_messages(ListMessagesRequest {
                auth_token: token.into(),
                start: 0,
                count: 1,
            })
            .await
            .unwrap()
            .into_inner();
        replies.push(("ListMessages", r.status, r.msg));
        let r = old
            .fetch_away_msgs(FetchAwayMsgsRequest {
                auth_token: token.into(),
                limit: 1,
            })
            .await
            .unwrap()
            .into_inner();
        replies.push(("FetchAwayMsgs", r.status, r.msg));
        let r = old
            .list_accounts(ListAccountsRequest {
                auth_token: token.into(),
                pattern: "*".into(),
                start: 0,
                count: 1,
            })
            .await
            .unwrap()
            .into_inner();
        replies.push(("ListAccounts", r.status, r.msg));
        let r = old
            .delete_messages(DeleteMessagesRequest {
                auth_token: token.into(),
                message_ids_to_delete: vec![1],
            })
            .await
            .unwrap()
            .into_inner();
        replies.push(("DeleteMessages", r.status, r.msg));
        let r = old.delete_account(empty(token)).await.unwrap().into_inner();
        replies.push(("DeleteAccount", r.status, r.msg));
        let r = old.reset_db(empty(token)).await.unwrap().into_inner();
        replies.push(("ResetDB", r.status, r.msg));
        for (call, status, msg) in replies {
            assert_eq!(
                (status.as_str(), msg.as_str()),
                ("error", "Not logged in"),
                "{call} with {token:?}"
            );
        }
    }

    // 7. Delete account (the prototype's call carries only the token).
    let deleted = old
        .delete_account(empty(&alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (deleted.status.as_str(), deleted.msg.as_str()),
        ("ok", "Account deleted successfully")
    );
    assert!(dump(&node)
        .users
        .iter()
        .all(|u| u.username.as_str() != "alice"));
    assert!(
        dump(&node).messages.is_empty(),
        "alice's messages went with her"
    );

    // 8. ClusterInfo: a single node is the leader and says "ok".
    let info = old
        .cluster_info(EmptyRequest { auth_token: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.status.as_str(), info.msg.as_str()),
        ("ok", "Success. There is a leader.")
    );
    assert_eq!(info.leader.as_ref().unwrap().server_id, 1);
    assert_eq!(info.servers.len(), 1);
    assert_eq!(info.leader.unwrap().address, node.address());
}

#[tokio::test]
async fn reset_db_is_for_the_administrator_only() {
    // 1. Without --admin-user nobody may reset.
    let node = node_with(NodeConfig::default()).await;
    let mut old = legacy(&node).await;
    let alice = legacy_user(&mut old, "alice").await;
    let refused = old.reset_db(empty(&alice)).await.unwrap().into_inner();
    assert_eq!(
        (refused.status.as_str(), refused.msg.as_str()),
        (
            "error",
            "resetting the database is disabled: the node has no --admin-user"
        )
    );

    // 2. With it, a normal user is refused and changes nothing; the administrator resets all.
    let node = node_with(NodeConfig {
        admin_user: Some("root".into()),
        ..NodeConfig::default()
    })
    .await;
    let mut old = legacy(&node).await;
    let alice = legacy_user(&mut old, "alice").await;
    let root = legacy_user(&mut old, "Root").await;
    old.send_message(SendMessageRequest {
        auth_token: alice.clone(),
        recipient: "root".into(),
        content: "hi".into(),
    })
    .await
    .unwrap();
    let before = dump(&node);
    let refused = old.reset_db(empty(&alice)).await.unwrap().into_inner();
    assert_eq!(
        (refused.status.as_str(), refused.msg.as_str()),
        ("error", "only the administrator may reset the database")
    );
    assert_eq!(dump(&node), before);
    let unauthenticated = old.reset_db(empty("garbage")).await.unwrap().into_inner();
    assert_eq!(
        (
            unauthenticated.status.as_str(),
            unauthenticated.msg.as_str()
        ),
        ("error", "Not logged in")
    );

    let reset = old.reset_db(empty(&root)).await.unwrap().into_inner();
    assert_eq!(
        (reset.status.as_str(), reset.msg.as_str()),
        ("ok", "Database reset successfully")
    );
    let after = dump(&node);
    assert!(after.users.is_empty() && after.messages.is_empty() && after.sessions.is_empty());
    // Ids are still never reused after a reset.
    assert_eq!(after.last_ids, before.last_ids);
}

#[tokio::test]
async fn the_prototypes_internal_calls_are_refused() {
    let node = node_with(NodeConfig::default()).await;
    let mut old = legacy(&node).await;
    let before = dump(&node);
    let replicate = old
        .replicate(ReplicationRequest {
            op_type: "signup".into(),
            sender: "mallory".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let heartbeat = old
        .heartbeat(HeartbeatRequest {
            leader_id: 1,
            server_id: 2,
        })
        .await
        .unwrap_err();
    let snapshot = old
        .get_full_snapshot(EmptyRequest { auth_token: None })
        .await
        .unwrap_err();
    let add = old
        .add_replica(AddReplicaRequest {
            new_server_id: 9,
            new_server_address: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    for (status, operation) in [
        (replicate, "Replicate"),
        (heartbeat, "Heartbeat"),
        (snapshot, "GetFullSnapshot"),
        (add, "AddReplica"),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{operation}");
        assert!(
            status
                .message()
                .starts_with(&format!("{operation} is not served")),
            "{}",
            status.message()
        );
    }
    assert_eq!(dump(&node), before);
}

#[tokio::test]
async fn data_flows_between_the_two_services() {
    let node = node_with(NodeConfig::default()).await;
    let mut old = legacy(&node).await;
    let new = client(&node);

    // 1. An account made by the prototype's client logs in through jochat.v1 with the same
    //    password (both clients send its SHA-256).
    let alice_old = legacy_user(&mut old, "alice").await;
    let bob_new = common::user(&new, "bob").await;
    let alice_new = new.log_in("alice", "alice-password").await.unwrap();

    // 2. Sent through the old service, read through the new, and the other way round.
    old.send_message(SendMessageRequest {
        auth_token: bob_new.token.as_str().into(),
        recipient: "alice".into(),
        content: "from v1 user via legacy".into(),
    })
    .await
    .unwrap();
    new.send_message(&alice_new.token, "bob", "from legacy user via v1")
        .await
        .unwrap();
    let bob_inbox = new
        .list_messages(&bob_new.token, &InboxQuery::default())
        .await
        .unwrap();
    assert_eq!(bob_inbox.messages[0].content, "from legacy user via v1");
    let alice_inbox = old
        .list_messages(ListMessagesRequest {
            auth_token: alice_new.token.as_str().into(),
            start: 0,
            count: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice_inbox.messages[0].content, "from v1 user via legacy");
    assert_eq!(alice_inbox.messages[0].sender, "bob");

    // 3. Alice's legacy session was ended by her v1 login (one session per account).
    let stale = old
        .count_unread(CountUnreadRequest {
            auth_token: alice_old,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.status, "error");
}

#[tokio::test]
async fn passwords_as_the_prototypes_scripts_sent_them_work_everywhere() {
    let node = node_with(NodeConfig::default()).await;
    let mut old = legacy(&node).await;
    let new = client(&node);

    // 1. A test script signs up with a plain password: the same password logs in through
    //    the prototype's service (plain) and through jochat.v1 (the client sends its digest).
    let signed = old
        .signup(SignupRequest {
            username: "carol".into(),
            password: "plain-pw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.status, "ok", "{}", signed.msg);
    let login = |username: &str, password: &str| LoginRequest {
        username: username.into(),
        password: password.into(),
    };
    let plain = old
        .login(login("carol", "plain-pw"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plain.status.as_str(), plain.msg.as_str()),
        ("ok", "Login successful")
    );
    let digest = old
        .login(login("carol", &hash_password("plain-pw")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(digest.status, "ok", "{}", digest.msg);
    new.log_in("carol", "plain-pw").await.unwrap();
    let wrong = old
        .login(login("carol", "plain-PW"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (wrong.status.as_str(), wrong.msg.as_str()),
        ("error", "wrong username or password")
    );

    // 2. An account whose stored hash is over the plain text itself (as earlier builds
    //    stored a plain password from the prototype's service) still logs in with it there.
    let mut raw =
        jochat_proto::v1::chat_client::ChatClient::connect(format!("http://{}", node.address()))
            .await
            .unwrap();
    raw.sign_up(jochat_proto::v1::SignUpRequest {
        username: "dave".into(),
        password: "older-plain".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let older = old
        .login(login("dave", "older-plain"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(older.status, "ok", "{}", older.msg);
    let older_wrong = old
        .login(login("dave", "older-PLAIN"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(older_wrong.status, "error");
}
