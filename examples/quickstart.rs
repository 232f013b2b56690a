//! Quick start: sign up two users, log in, send a message, read it.
//!
//! Start a node first (`cargo run --release --bin jochat-node`), then:
//!
//! ```sh
//! cargo run --example quickstart                  # against 127.0.0.1:5001
//! cargo run --example quickstart -- HOST:PORT     # against another node
//! cargo run --example quickstart -- A:P,B:P,C:P   # against a cluster (any member will do)
//! ```
//!
//! It makes two accounts with random names, so it can run again and again.

#![forbid(unsafe_code)]

use jochat_client::{ChatServerClient, InboxQuery};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5001".to_owned());
    let client = ChatServerClient::builder()
        .servers(server.split(','))
        .build()?;

    // 1. Two fresh accounts (the suffix keeps repeated runs apart).
    let suffix = std::process::id();
    let (alice, bob) = (format!("alice{suffix}"), format!("bob{suffix}"));
    client.sign_up(&alice, "alice's password").await?;
    client.sign_up(&bob, "bob's password").await?;
    println!("signed up {alice} and {bob} on {server}");

    // 2. Alice writes to Bob, who is not logged in: the message waits as "away".
    let alice_session = client.log_in(&alice, "alice's password").await?;
    let sent = client
        .send_message(&alice_session.token, &bob, "Hi Bob, lunch at noon?")
        .await?;
    println!("{alice} sent message {} ({:?})", sent.id, sent.status);

    // 3. Bob logs in, sees one unread message, fetches it, then reads his inbox.
    let bob_session = client.log_in(&bob, "bob's password").await?;
    println!(
        "{bob} logged in with {} unread message(s)",
        bob_session.unread_count
    );
    for message in client.fetch_away(&bob_session.token, 10).await?.messages {
        println!("  from {}: {}", message.sender, message.content);
    }
    let inbox = client
        .list_messages(&bob_session.token, &InboxQuery::default())
        .await?;
    println!("{bob}'s inbox holds {} message(s)", inbox.total_count);

    client.log_out(&alice_session.token).await?;
    client.log_out(&bob_session.token).await?;
    Ok(())
}
