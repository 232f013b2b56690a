//! The page of `jochat web` in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs), driven over WebDriver: a person signs up, logs in, sends, sees a
//! reply sent through the `jochat` CLI appear without a reload, sees a `<script>` message as
//! text, searches and pages, deletes, logs out and deletes the account; and the page keeps
//! working while the cluster's leader is stopped. A failing test saves a screenshot under
//! `target/tmp/web-screenshots/`.
//!
//! `JOCHAT_CHROMIUM` and `JOCHAT_CHROMEDRIVER` override the browser and driver paths. Without
//! a browser each test says on stderr that it was skipped and why, and passes; with `CI=true`
//! a missing browser fails it.

use jochat_testkit as common;

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use common::cluster::{led_by_node_1, Setup};
use common::web::WebServer;

/// How long the page may take to show something.
const PATIENCE: Duration = Duration::from_secs(30);

/// The browser and its driver: `$JOCHAT_CHROMIUM` / `$JOCHAT_CHROMEDRIVER`, else Debian's
/// paths.
struct Programs {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

fn program(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The browser and driver, or `None` after saying loudly that the test is skipped. In CI
/// (`CI=true`) a missing browser fails the test instead: there it must run.
fn programs_or_skip(test: &str) -> Option<Programs> {
    let programs = Programs {
        chromium: program("JOCHAT_CHROMIUM", "/usr/bin/chromium"),
        chromedriver: program("JOCHAT_CHROMEDRIVER", "/usr/bin/chromedriver"),
    };
    let missing: Vec<String> = [&programs.chromium, &programs.chromedriver]
        .into_iter()
        .filter(|path| !path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(programs);
    }
    let why = format!(
        "{} not found: the browser tests need Debian's chromium and chromium-driver \
         (`apt-get install chromium chromium-driver`, or `make test`, which installs them), \
         or JOCHAT_CHROMIUM / JOCHAT_CHROMEDRIVER",
        missing.join(" and ")
    );
    common::runs_here(&format!("web_browser::{test}"), Some(why));
    None
}

/// A headless Chromium session through its own chromedriver.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the driver and a browser with `extra_args` beside the usual headless ones.
    async fn start(programs: Programs, extra_args: &[&str]) -> Self {
        let Programs {
            chromium,
            chromedriver,
        } = programs;
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("a temporary profile folder");
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ]
        .iter()
        .chain(extra_args)
        .map(|arg| (*arg).to_owned())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": args,
            }),
        );
        let started = Instant::now();
        let client = loop {
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match attempt {
                Ok(client) => break client,
                // chromedriver is still starting.
                Err(_) if started.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("no WebDriver session with chromedriver: {error}"),
            }
        };
        Self {
            driver,
            client,
            _profile: profile,
        }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot folder can be made");
    dir
}

/// Runs `test` against a fresh browser; on failure saves a screenshot of the page first.
async fn in_browser<F, Fut>(programs: Programs, name: &str, test: F)
where
    F: FnOnce(Page) -> Fut,
    Fut: Future<Output = ()>,
{
    in_browser_with(programs, name, &[], test).await;
}

/// [`in_browser`] with `extra_args` for the browser.
async fn in_browser_with<F, Fut>(programs: Programs, name: &str, extra_args: &[&str], test: F)
where
    F: FnOnce(Page) -> Fut,
    Fut: Future<Output = ()>,
{
    let browser = Browser::start(programs, extra_args).await;
    let page = Page {
        client: browser.client.clone(),
    };
    let outcome = AssertUnwindSafe(test(page)).catch_unwind().await;
    if outcome.is_err() {
        if let Ok(png) = browser.client.screenshot().await {
            let path = screenshot_dir().join(format!("{name}-failure.png"));
            if std::fs::write(&path, png).is_ok() {
                eprintln!("screenshot of the failure: {}", path.display());
            }
        }
    }
    browser.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The page in the browser, with the few gestures the tests need.
#[derive(Clone)]
struct Page {
    client: Client,
}

impl Page {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("the page opens");
    }

    async fn fill(&self, id: &str, text: &str) {
        let field = self.client.find(Locator::Id(id)).await.expect(id);
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("typing works");
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .expect(css)
            .click()
            .await
            .unwrap_or_else(|error| panic!("clicking {css}: {error}"));
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn script(&self, body: &str) -> Value {
        self.client
            .execute(body, Vec::new())
            .await
            .expect("the script runs")
    }

    /// Waits until the text of `css` contains `wanted`.
    async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{css} never showed {wanted:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `#id` is shown.
    async fn wait_shown(&self, id: &str) {
        let started = Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Id(id)).await {
                if element.is_displayed().await.unwrap_or(false) {
                    return;
                }
            }
            let notice = self.text("#notice").await;
            assert!(
                started.elapsed() < PATIENCE,
                "#{id} was never shown (notice: {notice:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn save(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(screenshot_dir().join(name), png).expect("the screenshot is saved");
    }

    async fn log_in(&self, username: &str, password: &str) {
        self.wait_shown("auth-view").await;
        self.click("#mode-login").await;
        self.fill("auth-username", username).await;
        self.fill("auth-password", password).await;
        // By keyboard: Enter in the password field submits the form.
        let field = self
            .client
            .find(Locator::Id("auth-password"))
            .await
            .expect("the password field");
        field.send_keys("\u{E007}").await.expect("Enter");
        self.wait_shown("chat-view").await;
        self.wait_text("#live", "live").await;
    }

    /// Sends `content` to `recipient` with the keyboard (Enter in the message box).
    async fn send(&self, recipient: &str, content: &str) {
        self.fill("send-recipient", recipient).await;
        self.fill("send-content", content).await;
        let textarea = self
            .client
            .find(Locator::Id("send-content"))
            .await
            .expect("the message box");
        textarea.send_keys("\u{E007}").await.expect("Enter");
        self.wait_text("#notice", &format!("Sent to {recipient}"))
            .await;
    }
}

/// The `jochat` binary built beside this test (`cargo test --workspace` builds it).
fn jochat_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let binary = dir.join(format!("jochat{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p jochat-cli`",
        binary.display()
    );
    binary
}

/// Runs the CLI as `session`'s user (password from `JOCHAT_PASSWORD`) and returns its JSON.
async fn cli(servers: &str, session: &Path, password: &str, args: &[&str]) -> Value {
    let mut command = Command::new(jochat_binary());
    command
        .args(["--json", "--servers", servers, "--session-file"])
        .arg(session)
        .args(args)
        .env("JOCHAT_PASSWORD", password)
        .env_remove("JOCHAT_SERVERS")
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the CLI's thread")
        .expect("the CLI runs");
    assert!(
        output.status.success(),
        "jochat {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_chats_in_the_browser() {
    let Some(programs) = programs_or_skip("a_person_chats_in_the_browser") else {
        return;
    };
    let node = common::node().await;
    let server = node.address();
    let web = WebServer::start(std::slice::from_ref(&server)).await;
    let files = tempfile::tempdir().unwrap();
    let bob = files.path().join("bob.json");
    let carol = files.path().join("carol.json");
    cli(&server, &bob, "pw-bob", &["signup", "bob"]).await;
    cli(&server, &bob, "pw-bob", &["login", "bob"]).await;
    let base = web.base.clone();

    in_browser(programs, "chat", |page| async move {
        page.open(&base).await;
        page.wait_shown("auth-view").await;

        // Sign up: mismatched confirmation and a taken name are shown beside their fields.
        page.click("#mode-signup").await;
        page.fill("auth-username", "BOB").await;
        page.fill("auth-password", "pw-alice").await;
        page.fill("auth-confirm", "pw-alice-typo").await;
        page.click("#auth-submit").await;
        page.wait_text("#auth-confirm-error", "differ").await;
        page.fill("auth-confirm", "pw-alice").await;
        page.click("#auth-submit").await;
        page.wait_text("#auth-username-error", "username").await;
        page.fill("auth-username", "alice").await;
        page.click("#auth-submit").await;
        page.wait_shown("chat-view").await;
        page.wait_text("#me-name", "alice").await;
        page.wait_text("#live", "live").await;

        // A reply sent through the CLI appears without a reload.
        page.script("window.stillTheSamePage = true; return null")
            .await;
        cli(
            &server,
            &bob,
            "pw-bob",
            &["send", "alice", "hello from the CLI"],
        )
        .await;
        page.wait_text("#messages", "hello from the CLI").await;
        page.wait_text("#notice", "New message from bob").await;
        assert_eq!(
            page.script("return window.stillTheSamePage === true").await,
            json!(true),
            "the page was not reloaded"
        );

        // Send with the keyboard; bob reads it through the CLI.
        page.send("bob", "hi bob, from the page").await;
        let bobs = cli(&server, &bob, "pw-bob", &["inbox"]).await;
        assert_eq!(bobs["messages"][0]["content"], "hi bob, from the page");
        assert_eq!(bobs["messages"][0]["sender"], "alice");
        // Errors from the server are shown beside their field.
        page.fill("send-recipient", "nobody").await;
        page.fill("send-content", "hello?").await;
        page.click("#send-submit").await;
        page.wait_text("#send-recipient-error", "no account named")
            .await;

        // What people write is text, never markup.
        let hostile = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">";
        cli(&server, &bob, "pw-bob", &["send", "alice", hostile]).await;
        page.wait_text("#messages", "<script>window.pwned = 1</script>")
            .await;
        let harm = page
            .script(
                "return [typeof window.pwned, \
                 document.querySelectorAll('#messages script, #messages img').length]",
            )
            .await;
        assert_eq!(harm, json!(["undefined", 0]));

        // Search with wildcards, and page through the results.
        let people = common::client(&node);
        for n in 1..=22 {
            people.sign_up(&format!("pal{n:02}"), "pw").await.unwrap();
        }
        page.fill("search-pattern", "pal*").await;
        page.click("#search-form button").await;
        page.wait_text("#accounts-range", "1–20 of 22").await;
        page.click("#accounts-next").await;
        page.wait_text("#accounts-range", "21–22 of 22").await;
        page.wait_text("#accounts", "pal22").await;
        page.fill("search-pattern", "pal?2").await;
        page.click("#search-form button").await;
        page.wait_text("#accounts-range", "1–3 of 3").await;
        let found = page.text("#accounts").await;
        assert!(
            found.contains("pal02") && found.contains("pal12") && found.contains("pal22"),
            "{found}"
        );

        // A conversation shows both directions.
        page.fill("search-pattern", "bob").await;
        page.click("#search-form button").await;
        page.wait_text("#accounts", "bob").await;
        page.click("#accounts .account").await;
        page.wait_text("#view-title", "Conversation with bob").await;
        let conversation = page.wait_text("#messages", "hi bob, from the page").await;
        assert!(
            conversation.contains("hello from the CLI"),
            "{conversation}"
        );

        // The inbox pages, newest first.
        cli(&server, &carol, "pw-carol", &["signup", "carol"]).await;
        let carol_session = people.log_in("carol", "pw-carol").await.unwrap();
        for n in 1..=25 {
            people
                .send_message(&carol_session.token, "alice", &format!("note {n}"))
                .await
                .unwrap();
        }
        page.click("#show-inbox").await;
        page.wait_text("#messages-range", "1–20 of 27").await;
        page.wait_text("#messages", "note 25").await;
        page.click("#messages-next").await;
        page.wait_text("#messages-range", "21–27 of 27").await;
        page.wait_text("#messages", "hello from the CLI").await;
        page.click("#messages-prev").await;
        page.wait_text("#messages-range", "1–20 of 27").await;

        // Select and delete.
        page.click("#messages .select").await;
        page.wait_text("#delete-selected", "Delete 1 selected")
            .await;
        page.click("#delete-selected").await;
        page.wait_text("#messages-range", "of 26").await;
        page.script("window.scrollTo(0, 0); return null").await;
        page.save("chat-wide.png").await;

        // On a phone-sized screen nothing spills sideways.
        page.client.set_window_size(390, 844).await.unwrap();
        let fits = page
            .script("return document.documentElement.scrollWidth <= window.innerWidth")
            .await;
        assert_eq!(fits, json!(true), "the page fits a 390 px wide screen");
        page.script("window.scrollTo(0, 0); return null").await;
        page.save("chat-narrow.png").await;
        page.client.set_window_size(1280, 900).await.unwrap();

        // Log out; what arrives meanwhile waits, and the unread count shows it at log-in.
        page.click("#logout").await;
        page.wait_shown("auth-view").await;
        page.wait_text("#notice", "Logged out").await;
        let waiting = cli(
            &server,
            &bob,
            "pw-bob",
            &["send", "alice", "while you were out"],
        )
        .await;
        assert_eq!(waiting["status"], "away");
        page.log_in("alice", "pw-alice").await;
        page.wait_text("#unread", "1 unread").await;
        page.wait_text("#messages .badge", "unread").await;
        page.click("#unread").await;
        page.wait_text("#notice", "1 message(s) marked as read")
            .await;
        page.wait_text("#unread", "0 unread").await;

        // The browser hashed the password as the client library does: the CLI logs in with
        // the plain password, which ends the page's session, and the page says so.
        let alice = files.path().join("alice.json");
        cli(&server, &alice, "pw-alice", &["login", "alice"]).await;
        page.wait_shown("auth-view").await;
        page.wait_text("#notice", "session ended").await;

        // Delete the account: a wrong password is shown beside the field.
        page.log_in("alice", "pw-alice").await;
        page.click("#danger-title").await;
        page.fill("delete-password", "not it").await;
        page.click("#delete-account").await;
        page.wait_text("#delete-password-error", "wrong").await;
        page.fill("delete-password", "pw-alice").await;
        page.click("#delete-account").await;
        page.wait_shown("auth-view").await;
        page.wait_text("#notice", "Account deleted").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_working_when_the_leader_stops() {
    let Some(programs) = programs_or_skip("the_page_keeps_working_when_the_leader_stops") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _first, _) = led_by_node_1(dir.path(), 3, &Setup::default()).await;
    let servers: Vec<String> = nodes.iter().map(|node| node.address.clone()).collect();
    let web = WebServer::start(&servers).await;
    let base = web.base.clone();
    let bob = jochat_client::ChatServerClient::builder()
        .servers(servers.iter().skip(1).cloned())
        .build()
        .unwrap();
    let bob_session = bob.log_in("bob", "pw").await.unwrap();

    let leader = nodes.remove(0);
    in_browser(programs, "failover", |page| async move {
        page.open(&base).await;
        page.log_in("alice", "pw").await;
        bob.send_message(&bob_session.token, "alice", "before the stop")
            .await
            .unwrap();
        page.wait_text("#messages", "before the stop").await;

        leader.stop().await;

        // Sending still works, and bob's messages still arrive live, once each.
        page.send("bob", "after the stop").await;
        bob.send_message(&bob_session.token, "alice", "from bob after the stop")
            .await
            .unwrap();
        page.wait_text("#messages", "from bob after the stop").await;
        let copies = page
            .script(
                "return Array.from(document.querySelectorAll('#messages .content'))\
                 .filter((p) => p.textContent === 'from bob after the stop').length",
            )
            .await;
        assert_eq!(copies, json!(1));
        let received = bob
            .list_messages(&bob_session.token, &jochat_client::InboxQuery::new())
            .await
            .unwrap();
        assert_eq!(received.messages[0].content, "after the stop");
    })
    .await;
    common::cluster::stop_all(nodes).await;
}

/// `jochat web` serving HTTPS itself, in front of a node that serves TLS: the page works, its
/// session cookie is `Secure` (and `HttpOnly`), and its writes pass the same-origin check for
/// an `https://` origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_over_https_with_secure_cookies() {
    let Some(programs) = programs_or_skip("the_page_works_over_https_with_secure_cookies") else {
        return;
    };
    let certs = common::tls::TestCerts::new();
    let node = jochat_node::spawn_ephemeral_with(
        certs.node_config(jochat_node::config::NodeConfig::default()),
    )
    .await
    .expect("a TLS node starts");
    let web = WebServer::start_tls(&[node.address()], &certs).await;
    let base = web.base.clone();
    // Bob, to write to, through the client library over TLS.
    let client = jochat_client::ChatServerClient::builder()
        .servers([node.address()])
        .ca_certificate(certs.pem("ca.crt"))
        .build()
        .unwrap();
    client
        .sign_up("bob", "pw-bob")
        .await
        .expect("bob signs up over TLS");
    assert!(base.starts_with("https://"), "{base}");

    // The test CA is not in the browser's store; only certificate errors are waived.
    in_browser_with(
        programs,
        "https",
        &["--ignore-certificate-errors"],
        |page| async move {
            page.open(&base).await;
            page.wait_shown("auth-view").await;
            page.click("#mode-signup").await;
            page.fill("auth-username", "alice").await;
            page.fill("auth-password", "pw-alice").await;
            page.fill("auth-confirm", "pw-alice").await;
            page.click("#auth-submit").await;
            page.wait_shown("chat-view").await;
            page.wait_text("#live", "live").await;
            page.send("bob", "a note over https").await;

            let cookies = page.client.get_all_cookies().await.expect("the cookies");
            let session = cookies
                .iter()
                .find(|cookie| cookie.name() == jochat_web::SESSION_COOKIE)
                .expect("the session cookie is set");
            assert_eq!(session.secure(), Some(true), "{session}");
            assert_eq!(session.http_only(), Some(true), "{session}");
        },
    )
    .await;
    let bob = client.log_in("bob", "pw-bob").await.unwrap();
    let inbox = client
        .list_messages(&bob.token, &jochat_client::InboxQuery::default())
        .await
        .unwrap();
    assert_eq!(inbox.messages[0].content, "a note over https");
    assert_eq!(inbox.messages[0].sender, "alice");
    drop(web);
    node.shutdown().await.expect("the node stops");
}
