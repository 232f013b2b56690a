//! `jochat web`'s JSON API over real HTTP against an in-process node: every operation, the
//! session cookie, the live event stream and its resumption, bad input (refused with the field
//! and the rule, changing nothing), unauthenticated calls, and the cross-site defences, also
//! behind an HTTPS proxy (`--public-origin`: only that origin may write, cookies are `Secure`).

use jochat_testkit as common;

use http::{Method, StatusCode};
use jochat_client::hash_password;
use serde_json::{json, Value};

use common::web::{read_events, Http, WebServer};

fn credentials(username: &str, password: &str) -> Value {
    json!({"username": username, "password": hash_password(password)})
}

/// Signs `name` up and logs in (password `name-pw`) through the API.
async fn web_user(web: &WebServer, name: &str) -> Http {
    let mut http = Http::new(&web.base);
    let signed = http
        .post("/api/signup", credentials(name, &format!("{name}-pw")))
        .await;
    assert_eq!(signed.status, StatusCode::CREATED, "{}", signed.json);
    let logged = http
        .post("/api/login", credentials(name, &format!("{name}-pw")))
        .await;
    assert_eq!(logged.status, StatusCode::OK, "{}", logged.json);
    http
}

#[tokio::test]
async fn every_operation_through_the_api() {
    let node = common::node().await;
    let web = WebServer::start(&[node.address()]).await;
    let mut alice = Http::new(&web.base);

    // The page and its files are served, with the security headers.
    let page = alice.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .json
        .as_str()
        .unwrap_or("")
        .contains("<title>JoChat</title>"));
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    for asset in ["/app.js", "/style.css", "/icon.svg"] {
        assert_eq!(alice.get(asset).await.status, StatusCode::OK, "{asset}");
    }

    // Sign up; the same name again (ignoring case) is refused on the username field.
    let signed = alice
        .post("/api/signup", credentials("alice", "pw-a"))
        .await;
    assert_eq!(signed.status, StatusCode::CREATED);
    assert_eq!(signed.json["username"], "alice");
    let again = alice.post("/api/signup", credentials("ALICE", "x")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.field(), Some("username"), "{}", again.json);

    // A wrong password: 401 beside the password field, no cookie.
    let wrong = alice.post("/api/login", credentials("alice", "nope")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.code(), "wrong_credentials");
    assert_eq!(wrong.field(), Some("password"));
    assert!(alice.cookie.is_none());

    // Log in: the session is an HttpOnly, SameSite=Strict cookie, never in the body.
    let logged = alice.post("/api/login", credentials("alice", "pw-a")).await;
    assert_eq!(logged.status, StatusCode::OK);
    assert_eq!(logged.json["username"], "alice");
    assert_eq!(logged.json["unread_count"], 0);
    assert!(logged.json.get("token").is_none(), "{}", logged.json);
    let set_cookie = logged.headers["set-cookie"].to_str().unwrap();
    assert!(set_cookie.starts_with("jochat_session="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let me = alice.get("/api/me").await;
    assert_eq!(me.json, json!({"username": "alice", "unread_count": 0}));

    // The password hashed by the caller is the one the client library hashes: the same
    // account logs in through the library with the plain password.
    let library = common::client(&node);
    library.sign_up("bob", "bob-pw").await.unwrap();

    // Send while Bob is away; both directions of the conversation; Bob's unread count.
    let sent = alice
        .post(
            "/api/messages",
            json!({"recipient": "bob", "content": "hi bob"}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.json);
    assert_eq!(sent.json["status"], "away");
    let mut bob = Http::new(&web.base);
    let bob_in = bob.post("/api/login", credentials("bob", "bob-pw")).await;
    assert_eq!(bob_in.json["unread_count"], 1);
    let reply = bob
        .post(
            "/api/messages",
            json!({"recipient": "alice", "content": "hi alice"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let conversation = alice.get("/api/messages?with_user=bob").await;
    assert_eq!(conversation.json["total_count"], 2);
    let contents: Vec<&str> = conversation.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["hi alice", "hi bob"],
        "newest first, both directions"
    );
    let inbox = alice.get("/api/messages").await;
    assert_eq!(
        inbox.json["total_count"], 1,
        "the inbox holds what alice received"
    );

    // Bob fetches the message that waited; it is delivered now.
    let away = bob.post("/api/away", json!({"limit": 10})).await;
    assert_eq!(away.status, StatusCode::OK);
    assert_eq!(away.json["messages"][0]["content"], "hi bob");
    assert_eq!(away.json["remaining"], 0);
    assert_eq!(bob.get("/api/me").await.json["unread_count"], 0);

    // Account search with wildcards, paged.
    for name in ["carol", "carl", "cara"] {
        library.sign_up(name, "pw").await.unwrap();
    }
    let found = alice.get("/api/accounts?pattern=car?&limit=2").await;
    assert_eq!(found.json["total_count"], 2, "{}", found.json);
    let names: Vec<&str> = found.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cara", "carl"]);
    let second = alice.get("/api/accounts?pattern=c*&offset=2&limit=2").await;
    assert_eq!(second.json["total_count"], 3);
    assert_eq!(second.json["accounts"][0]["username"], "carol");

    // Delete: only the caller's own inbox is touched.
    let theirs = sent.json["id"].as_i64().unwrap();
    let mine = reply.json["id"].as_i64().unwrap();
    let deleted = alice
        .post("/api/messages/delete", json!({"ids": [mine, theirs]}))
        .await;
    assert_eq!(deleted.json["deleted_count"], 1, "{}", deleted.json);
    assert_eq!(alice.get("/api/messages").await.json["total_count"], 0);
    assert_eq!(bob.get("/api/messages").await.json["total_count"], 1);

    // Log out: the cookie is deleted and the old token no longer works.
    let old_cookie = bob.cookie.clone();
    let out = bob.post("/api/logout", json!({})).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(bob.cookie.is_none());
    bob.cookie = old_cookie;
    let after = bob.get("/api/me").await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.code(), "session_ended");

    // Delete the account: a wrong password keeps the session; the right one ends it.
    let refused = alice
        .post(
            "/api/account/delete",
            json!({"password": hash_password("nope")}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.field(), Some("password"));
    assert!(alice.cookie.is_some(), "a typo does not log the user out");
    assert_eq!(alice.get("/api/me").await.status, StatusCode::OK);
    let gone = alice
        .post(
            "/api/account/delete",
            json!({"password": hash_password("pw-a")}),
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.json);
    assert!(alice.cookie.is_none());
    assert!(library.log_in("alice", "pw-a").await.is_err());
}

#[tokio::test]
async fn live_events_resume_without_gaps_or_repeats() {
    let node = common::node().await;
    let web = WebServer::start(&[node.address()]).await;
    let mut alice = web_user(&web, "alice").await;
    let mut bob = web_user(&web, "bob").await;

    let first = bob
        .post(
            "/api/messages",
            json!({"recipient": "alice", "content": "before"}),
        )
        .await;
    let first_id = first.json["id"].as_i64().unwrap();

    // From message `first_id` on: the stream starts with what came after it.
    let response = alice
        .open_stream(&format!("/api/events?after={first_id}"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut ids = Vec::new();
    for n in 0..3 {
        let sent = bob
            .post(
                "/api/messages",
                json!({"recipient": "alice", "content": format!("live {n}")}),
            )
            .await;
        ids.push(sent.json["id"].as_i64().unwrap());
    }
    let events = read_events(&mut body, 3).await;
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), ids);
    assert_eq!(events[0].1["content"], "live 0");
    assert_eq!(events[0].1["sender"], "bob");
    drop(body);

    // The browser reconnects with the last id it received: only later messages come, even
    // those sent while it was away.
    let missed = bob
        .post(
            "/api/messages",
            json!({"recipient": "alice", "content": "while away"}),
        )
        .await;
    let resumed = alice
        .open_stream(
            "/api/events?after=0",
            &[("last-event-id", &ids[1].to_string())],
        )
        .await;
    let events = read_events(&mut resumed.into_body(), 2).await;
    assert_eq!(
        events.iter().map(|e| e.0).collect::<Vec<_>>(),
        [ids[2], missed.json["id"].as_i64().unwrap()]
    );

    // A dead session is refused before any stream opens.
    alice.post("/api/logout", json!({})).await;
    let mut stale = Http::new(&web.base);
    stale.cookie = Some(format!("jochat_session={}.alice", "0".repeat(64)));
    let refused = stale.open_stream("/api/events", &[]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let bad = bob.open_stream("/api/events?after=-4", &[]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = bob
        .open_stream("/api/events", &[("last-event-id", "x")])
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn every_call_needs_a_session() {
    let node = common::node().await;
    let web = WebServer::start(&[node.address()]).await;
    let mut anonymous = Http::new(&web.base);
    let calls: [(Method, &str, Value); 8] = [
        (Method::GET, "/api/me", Value::Null),
        (Method::GET, "/api/messages", Value::Null),
        (
            Method::POST,
            "/api/messages",
            json!({"recipient": "a", "content": "x"}),
        ),
        (Method::POST, "/api/messages/delete", json!({"ids": [1]})),
        (Method::POST, "/api/away", json!({})),
        (Method::GET, "/api/accounts", Value::Null),
        (Method::POST, "/api/account/delete", json!({"password": ""})),
        (Method::GET, "/api/events", Value::Null),
    ];
    for (method, path, body) in &calls {
        let body = (!body.is_null()).then_some(body);
        let request = anonymous.request(method.clone(), path, body);
        let answer = anonymous.send(request).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(answer.code(), "session_ended", "{method} {path}");
    }
    // A forged or malformed cookie is no better.
    anonymous.cookie = Some(format!("jochat_session={}.alice", "ab".repeat(32)));
    assert_eq!(
        anonymous.get("/api/messages").await.status,
        StatusCode::UNAUTHORIZED
    );
    anonymous.cookie = Some("jochat_session=alice".to_owned());
    assert_eq!(
        anonymous.get("/api/me").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_and_changes_nothing() {
    let node = common::node().await;
    let web = WebServer::start(&[node.address()]).await;
    let mut alice = web_user(&web, "alice").await;
    let before = common::dump(&node);

    // The server's rules, each beside its field.
    let cases: [(&str, Value, StatusCode, &str); 7] = [
        (
            "/api/signup",
            credentials("", "pw"),
            StatusCode::BAD_REQUEST,
            "username",
        ),
        (
            "/api/signup",
            json!({"username": "dave", "password": "plain text"}),
            StatusCode::BAD_REQUEST,
            "password",
        ),
        (
            "/api/signup",
            json!({"username": "dave", "password": ""}),
            StatusCode::BAD_REQUEST,
            "password",
        ),
        (
            "/api/messages",
            json!({"recipient": "nobody", "content": "x"}),
            StatusCode::NOT_FOUND,
            "recipient",
        ),
        (
            "/api/messages",
            json!({"recipient": "alice", "content": ""}),
            StatusCode::BAD_REQUEST,
            "content",
        ),
        (
            "/api/messages",
            json!({"recipient": "alice"}),
            StatusCode::BAD_REQUEST,
            "content",
        ),
        (
            "/api/messages/delete",
            json!({"ids": "all"}),
            StatusCode::BAD_REQUEST,
            "ids",
        ),
    ];
    for (path, body, status, field) in cases {
        let answer = alice.post(path, body.clone()).await;
        assert_eq!(answer.status, status, "{path} {body}: {}", answer.json);
        assert_eq!(
            answer.field(),
            Some(field),
            "{path} {body}: {}",
            answer.json
        );
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    let bad_page = alice.get("/api/messages?limit=many").await;
    assert_eq!(bad_page.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_page.field(), Some("limit"), "{}", bad_page.json);
    let too_many = alice.get("/api/accounts?limit=5000").await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_many.field(), Some("limit"), "{}", too_many.json);
    let pattern = alice
        .get(&format!("/api/accounts?pattern={}", "a".repeat(65)))
        .await;
    assert_eq!(pattern.field(), Some("pattern"), "{}", pattern.json);

    // Malformed bodies.
    let mut request = alice.request(Method::POST, "/api/messages", None);
    *request.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{not json"));
    let answer = alice.send(request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.code(), "invalid_body");
    let unknown = alice
        .post(
            "/api/messages",
            json!({"recipient": "alice", "content": "x", "admin": true}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.json);
    let mut form = alice.request(Method::POST, "/api/messages", None);
    form.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    assert_eq!(
        alice.send(form).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let huge = "x".repeat(jochat_web::BODY_BYTES_MAX + 1);
    let answer = alice
        .post(
            "/api/messages",
            json!({"recipient": "alice", "content": huge}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
    assert_eq!(
        alice.get("/api/nothing-here").await.status,
        StatusCode::NOT_FOUND
    );

    // Cross-site writes: without the request header, from another origin, or marked
    // cross-site by the browser, they are refused before anything runs.
    let mut bare = alice.request(
        Method::POST,
        "/api/messages",
        Some(&json!({"recipient": "alice", "content": "forged"})),
    );
    bare.headers_mut().remove("x-jochat-request");
    let answer = alice.send(bare).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let mut forged = alice.request(
            Method::POST,
            "/api/messages",
            Some(&json!({"recipient": "alice", "content": "forged"})),
        );
        forged
            .headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
        let answer = alice.send(forged).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{name}: {value}");
    }

    // None of it changed anything.
    assert_eq!(common::dump(&node), before);
}

#[tokio::test]
async fn behind_an_https_proxy_writes_come_from_the_public_origin_and_cookies_are_secure() {
    // 1. The gateway as a TLS-terminating proxy forwards to it: browsers see
    //    https://chat.example.com, the proxy keeps its own Host header.
    let node = common::node().await;
    let public = jochat_web::PublicOrigin::parse("https://chat.example.com").unwrap();
    let web = WebServer::start_with(
        &[node.address()],
        jochat_web::WebOptions::with_public_origin(public),
    )
    .await;
    let mut browser = Http::new(&web.base);
    let through_proxy = |http: &Http, path: &str, body: Value, origin: &'static str| {
        let mut request = http.request(http::Method::POST, path, Some(&body));
        request
            .headers_mut()
            .insert("origin", http::HeaderValue::from_static(origin));
        request
    };

    // 2. A write from the public origin is served, and its session cookie is Secure.
    let signed = browser
        .send(through_proxy(
            &browser,
            "/api/signup",
            credentials("carol", "pw-c"),
            "https://chat.example.com",
        ))
        .await;
    assert_eq!(signed.status, StatusCode::CREATED, "{}", signed.json);
    let logged = browser
        .send(through_proxy(
            &browser,
            "/api/login",
            credentials("carol", "pw-c"),
            "https://chat.example.com",
        ))
        .await;
    assert_eq!(logged.status, StatusCode::OK, "{}", logged.json);
    let cookie = logged.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.ends_with("; Secure"),
        "{cookie}"
    );

    // 3. The same write from the gateway's own plain-HTTP origin is refused.
    let mut other = Http::new(&web.base);
    let refused = other
        .send(through_proxy(
            &other,
            "/api/login",
            credentials("carol", "pw-c"),
            "http://127.0.0.1",
        ))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert!(other.cookie.is_none());

    // 4. Logging out deletes the cookie, Secure too.
    let out = browser
        .send(through_proxy(
            &browser,
            "/api/logout",
            json!({}),
            "https://chat.example.com",
        ))
        .await;
    let deleted = out.headers["set-cookie"].to_str().unwrap();
    assert!(
        deleted.contains("Max-Age=0") && deleted.ends_with("; Secure"),
        "{deleted}"
    );
}
