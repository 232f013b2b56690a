//! A bot: account `echo` subscribes to its messages and answers each one with
//! "echo: <the text>". It follows the cluster through failovers, like any `ChatServerClient`.
//!
//! Start a node or a cluster first (`cargo run --release --bin jochat-node`), then:
//!
//! ```sh
//! cargo run --example echo_bot                           # against 127.0.0.1:5001
//! cargo run --example echo_bot -- HOST:PORT,HOST:PORT    # against a cluster
//! ```
//!
//! and talk to it from another terminal:
//!
//! ```sh
//! jochat login alice && jochat chat echo                 # type a line; the echo comes back
//! ```
//!
//! The bot signs up on its first run (password from `ECHO_BOT_PASSWORD`, default
//! `echo-bot-password`) and stops with Ctrl-C, or when its session ends (someone logged in
//! as `echo` elsewhere).

#![forbid(unsafe_code)]

use jochat_client::{ChatServerClient, ClientError};

const NAME: &str = "echo";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let servers = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5001".to_owned());
    let password =
        std::env::var("ECHO_BOT_PASSWORD").unwrap_or_else(|_| "echo-bot-password".to_owned());
    let client = ChatServerClient::builder()
        .servers(servers.split(','))
        .build()?;

    // 1. The bot's account: made on the first run, reused after.
    match client.sign_up(NAME, &password).await {
        Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let session = client.log_in(NAME, &password).await?;
    // Live before saying so: every message from here on gets its echo.
    let mut incoming = client.subscribe(&session.token, 0);
    incoming.started().await?;
    println!(
        "{NAME} is listening on {servers} ({} message(s) were waiting)",
        session.unread_count
    );

    // 2. Every message that arrives gets its echo, until Ctrl-C or the session ends.
    loop {
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            message = incoming.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(error.into()),
            None => break,
        };
        let reply = format!("echo: {}", message.content);
        match client
            .send_message(&session.token, &message.sender, &reply)
            .await
        {
            Ok(sent) => println!(
                "{} said {:?}; answered (id {})",
                message.sender, message.content, sent.id
            ),
            // The sender deleted their account meanwhile, or the echo is too long: skip it.
            Err(error) if !error.is_retryable() => {
                println!("could not answer {}: {error}", message.sender)
            }
            Err(error) => return Err(error.into()),
        }
    }
    println!("{NAME} stops");
    Ok(())
}
