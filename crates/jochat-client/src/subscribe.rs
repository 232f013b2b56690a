//! [`ChatServerClient::subscribe`]: a live stream of the messages addressed to a session's
//! account, which survives the loss of the server it streams from.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use jochat_proto::v1;
use jochat_proto::v1::chat_client::ChatClient;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status};

use crate::client::{ChatServerClient, REPLY_BYTES_MAX};
use crate::error::ClientError;
use crate::routing::jittered;
use crate::types::{Message, SessionToken};

/// Messages handed over but not yet taken by the application.
const HANDED_OVER: usize = 64;

/// A live stream of messages, from [`ChatServerClient::subscribe`]. Each message comes once,
/// in id order. After a final error (the session ended, or the application read so slowly
/// that the server dropped it) the stream ends. Dropping it ends the subscription.
///
/// It is a [`futures::Stream`]; [`MessageStream::next`] serves without `StreamExt`.
pub struct MessageStream {
    messages: mpsc::Receiver<Result<Message, ClientError>>,
    /// An item taken from `messages` by [`MessageStream::started`], handed out first.
    pending: Option<Result<Message, ClientError>>,
    /// Becomes `true` once a server has accepted the subscription.
    live: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    resumed: Arc<AtomicU64>,
}

impl MessageStream {
    /// How many times the stream lost its server and resumed on another (or the same) one.
    pub fn resumptions(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    /// Waits until a server has accepted the subscription, which fixes where a stream
    /// started "from now on" (`after_id` 0) begins: every message applied after this returns
    /// comes on the stream. [`ChatServerClient::subscribe`] returns at once and connects in
    /// the background, so a message sent right after it may otherwise be applied before the
    /// server has seen the subscription, and be counted as already stored.
    ///
    /// # Errors
    /// The stream's final error when it ended before any server accepted it (for example
    /// [`ClientError::Unauthenticated`] for a bad session); the same error is also the
    /// stream's next item.
    pub async fn started(&mut self) -> Result<(), ClientError> {
        if let Some(Err(error)) = &self.pending {
            return Err(error.clone());
        }
        let accepted = self.live.wait_for(|live| *live).await.is_ok();
        // The task may have ended right after a server accepted it.
        if accepted || *self.live.borrow() {
            return Ok(());
        }
        // The task ended without a server accepting: its last act was to queue the final error.
        match self.messages.recv().await {
            Some(item) => {
                let outcome = match &item {
                    Ok(_) => Ok(()),
                    Err(error) => Err(error.clone()),
                };
                self.pending = Some(item);
                outcome
            }
            None => Err(ClientError::Unavailable(
                "the subscription ended before a server accepted it".into(),
            )),
        }
    }

    /// The next message, a final error, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Message, ClientError>> {
        if let Some(item) = self.pending.take() {
            return Some(item);
        }
        self.messages.recv().await
    }
}

impl Stream for MessageStream {
    type Item = Result<Message, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(item) = self.pending.take() {
            return Poll::Ready(Some(item));
        }
        self.messages.poll_recv(cx)
    }
}

impl Drop for MessageStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one connection's stream ended.
enum Ended {
    /// The application dropped the stream.
    Dropped,
    /// Reconnect (to another server) and resume.
    Resume,
    /// A final error, handed to the application.
    Final,
}

impl ChatServerClient {
    /// Subscribes to every message addressed to the account of `token`, as soon as the
    /// serving node applies it: those after message `after_id` first (0: only messages from
    /// now on), then live ones. Any server serves it. When the server fails or stops, the
    /// stream moves to another server and resumes after the last message it delivered, with
    /// no gap and no duplicate; the application sees nothing but a pause.
    ///
    /// Final errors end the stream: [`ClientError::Unauthenticated`] when the session is
    /// revoked, replaced by a newer log-in or expired; [`ClientError::RateLimited`] when
    /// the application left over a thousand messages unread and the server dropped it (it may
    /// subscribe again from the last id it got).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// client.sign_up("alice", "pw-a").await?;
    /// client.sign_up("bob", "pw-b").await?;
    /// let alice = client.log_in("alice", "pw-a").await?;
    /// let bob = client.log_in("bob", "pw-b").await?;
    ///
    /// let mut incoming = client.subscribe(&bob.token, 0);
    /// incoming.started().await?; // from here on, nothing addressed to bob is missed
    /// client.send_message(&alice.token, "bob", "are you there?").await?;
    /// let message = incoming.next().await.expect("the stream is live")?;
    /// assert_eq!((message.sender.as_str(), message.content.as_str()), ("alice", "are you there?"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self, token: &SessionToken, after_id: i64) -> MessageStream {
        let (sender, messages) = mpsc::channel(HANDED_OVER);
        let (accepted, live) = watch::channel(false);
        let client = self.clone();
        let token = token.clone();
        let resumed = Arc::new(AtomicU64::new(0));
        let resuming = Arc::clone(&resumed);
        let task = tokio::spawn(async move {
            let mut last = after_id;
            let mut backoff = client.backoff_initial();
            loop {
                let server = client.pick_server();
                match client
                    .stream_from(
                        &server.0,
                        server.1.clone(),
                        &token,
                        &mut last,
                        &sender,
                        &accepted,
                    )
                    .await
                {
                    Ended::Dropped | Ended::Final => return,
                    Ended::Resume => {
                        resuming.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(client.backoff_max());
            }
        });
        MessageStream {
            messages,
            pending: None,
            live,
            task,
            resumed,
        }
    }

    /// Streams from one server until it fails, handing each new message over.
    async fn stream_from(
        &self,
        address: &str,
        channel: tonic::transport::Channel,
        token: &SessionToken,
        last: &mut i64,
        sender: &mpsc::Sender<Result<Message, ClientError>>,
        accepted: &watch::Sender<bool>,
    ) -> Ended {
        let mut chat = ChatClient::new(channel).max_decoding_message_size(REPLY_BYTES_MAX);
        let mut request = Request::new(v1::SubscribeRequest { after_id: *last });
        let Ok(value) = format!("Bearer {}", token.as_str()).parse() else {
            let _ = sender
                .send(Err(ClientError::Unauthenticated(
                    "session token is malformed".into(),
                )))
                .await;
            return Ended::Final;
        };
        request.metadata_mut().insert("authorization", value);
        let mut stream = match chat.subscribe(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return self.ended(&status, address, sender).await,
        };
        // The server answers once it has fixed the stream's starting point.
        accepted.send_replace(true);
        loop {
            match stream.message().await {
                Ok(Some(wire)) => {
                    if wire.id <= *last {
                        continue;
                    }
                    let id = wire.id;
                    let message = Message::try_from(wire);
                    let failed = message.is_err();
                    if sender.send(message).await.is_err() {
                        return Ended::Dropped;
                    }
                    if failed {
                        return Ended::Final;
                    }
                    *last = id;
                }
                // A stream that ends without a status: the server went away cleanly.
                Ok(None) => {
                    self.server_failed(address);
                    return Ended::Resume;
                }
                Err(status) => return self.ended(&status, address, sender).await,
            }
        }
    }

    /// Classifies a failed stream: retryable ones resume elsewhere; final ones are handed over.
    async fn ended(
        &self,
        status: &Status,
        address: &str,
        sender: &mpsc::Sender<Result<Message, ClientError>>,
    ) -> Ended {
        let error = ClientError::from_status(status, "subscribe", self.deadline(), address);
        if error.is_retryable() {
            tracing::debug!(server = address, %error, "subscription lost; resuming elsewhere");
            self.server_failed(address);
            return Ended::Resume;
        }
        let _ = sender.send(Err(error)).await;
        Ended::Final
    }
}
