//! The client library with one embedded node on a single-threaded runtime, the set-up of the
//! library's doc examples: whatever the two share, nothing may wait on a wake-up that only a
//! second thread would send, and a stream started "from now on" sees the next message.

use std::time::Duration;

use jochat_client::{ChatServerClient, ClientError};

/// Bounds each step, so that a hang fails the test with the step's name.
async fn step<T>(
    name: &str,
    work: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(20), work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{name}: {error}")),
        Err(_) => Err(format!("{name}: no answer within 20 s")),
    }
}

async fn sign_up_subscribe_and_send() -> Result<(), String> {
    let node = jochat_node::spawn_ephemeral()
        .await
        .map_err(|error| format!("node: {error}"))?;
    let client = ChatServerClient::builder()
        .servers([node.address()])
        .build()
        .map_err(|error| format!("client: {error}"))?;
    step("sign up alice", client.sign_up("alice", "pw-a")).await?;
    step("sign up bob", client.sign_up("bob", "pw-b")).await?;
    let alice = step("log in alice", client.log_in("alice", "pw-a")).await?;
    let bob = step("log in bob", client.log_in("bob", "pw-b")).await?;
    step(
        "send before",
        client.send_message(&alice.token, "bob", "before"),
    )
    .await?;

    let mut incoming = client.subscribe(&bob.token, 0);
    step("start the stream", incoming.started()).await?;
    for i in 0..5 {
        let text = format!("live {i}");
        step("send", client.send_message(&alice.token, "bob", &text)).await?;
        let message = step("receive", async {
            incoming
                .next()
                .await
                .unwrap_or_else(|| Err(ClientError::Unavailable("the stream ended".into())))
        })
        .await?;
        // The message sent before the stream started is not replayed.
        assert_eq!(
            (message.sender.as_str(), message.content.as_str()),
            ("alice", text.as_str())
        );
    }
    node.shutdown()
        .await
        .map_err(|error| format!("shut down: {error}"))?;
    Ok(())
}

#[test]
fn a_stream_started_from_now_on_gets_every_later_message_on_a_current_thread_runtime() {
    // Each round is a fresh node: its first writes race the saving of its first vote.
    for round in 0..10 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        if let Err(failure) = runtime.block_on(sign_up_subscribe_and_send()) {
            panic!("round {round}: {failure}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stream_with_a_bad_session_says_so_when_started() {
    let node = jochat_node::spawn_ephemeral().await.expect("node starts");
    let client = ChatServerClient::builder()
        .servers([node.address()])
        .build()
        .expect("client builds");
    let token = jochat_client::SessionToken::from("0".repeat(64));
    let mut incoming = client.subscribe(&token, 0);
    let started = step("start the stream", incoming.started()).await;
    assert!(
        started
            .as_ref()
            .is_err_and(|e| e.contains("start the stream:")),
        "{started:?}"
    );
    // The same final error is the stream's next item, then it ends.
    assert!(matches!(
        incoming.next().await,
        Some(Err(ClientError::Unauthenticated(_)))
    ));
    assert!(incoming.next().await.is_none());
}
