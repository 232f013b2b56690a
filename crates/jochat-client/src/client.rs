//! [`ChatServerClient`] and its builder.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jochat_proto::v1;

use crate::error::ClientError;
use crate::routing::{names_tls, Inner, Server};
use crate::tls::{TlsSettings, Transport};
use crate::types::*;
use crate::{hash_password, idempotency_key};

/// Default time one call may take, retries included.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// Default time to establish a connection to a server.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// First pause between retries; it doubles up to [`BACKOFF_MAX`], with jitter.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(20);
/// Longest pause between retries: short, because the usual reason to wait is a leader
/// election, which takes a few hundred milliseconds.
pub const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Largest reply accepted, in bytes. Servers cap the content of one reply at 4 MiB.
pub const REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Builds a [`ChatServerClient`].
#[derive(Debug, Clone)]
pub struct ChatServerClientBuilder {
    servers: Vec<String>,
    deadline: Duration,
    connect_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    discover: bool,
    tls: TlsSettings,
}

impl Default for ChatServerClientBuilder {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            deadline: DEADLINE_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            discover: true,
            tls: TlsSettings::default(),
        }
    }
}

impl ChatServerClientBuilder {
    /// The servers, as `host:port`, `http://host:port` or `https://host:port`. With
    /// `https://` (or a [CA certificate](Self::ca_certificate)) every server is called over
    /// TLS; the host is resolved at each connection.
    #[must_use]
    pub fn servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// How long one call may take, retries included (default 10 s).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long connecting to a server may take (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether to learn the cluster's other members from ClusterInfo (default true), so that
    /// a client given one address can still fail over to servers it was not told about.
    /// Without it the client calls only the servers given and the leaders they name.
    #[must_use]
    pub fn discover_members(mut self, discover: bool) -> Self {
        self.discover = discover;
        self
    }

    /// The pause after a round of failed attempts: `initial` (default 20 ms), doubling up to
    /// `max` (default 100 ms), each drawn with jitter from its upper half.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Calls the servers over TLS, trusting the CA certificates in `pem` (PEM, for example the
    /// `ca.crt` of `jochat cert create-ca`) instead of the system's roots. Server addresses
    /// may then be given with or without `https://`.
    ///
    /// ```
    /// use jochat_client::{ChatServerClient, ClientError};
    ///
    /// let error = ChatServerClient::builder()
    ///     .servers(["127.0.0.1:5001"])
    ///     .ca_certificate("not a certificate")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(error, ClientError::InvalidTls(_)), "{error}");
    /// ```
    #[must_use]
    pub fn ca_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls.ca_pem = Some(pem.as_ref().to_vec());
        self
    }

    /// Presents a client certificate (PEM certificate and key) on every TLS connection, for
    /// servers that ask for one (`jochat cert create-client`).
    #[must_use]
    pub fn client_identity(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls.identity = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// The client. Nothing is connected yet: each server's connection is made on the first
    /// call that needs it, so `build` needs no Tokio runtime and succeeds while servers are
    /// down.
    ///
    /// # Errors
    /// [`ClientError::InvalidAddress`], naming the address, when the list is empty or an
    /// address is not `host:port` (with an optional `http://` or `https://` prefix; IPv6 hosts
    /// in brackets, as in `[::1]:5001`). [`ClientError::InvalidTls`] when the servers mix
    /// `http://` and `https://`, name `http://` beside TLS settings, or a certificate or key
    /// is not PEM.
    ///
    /// ```
    /// use jochat_client::{ChatServerClient, ClientError};
    ///
    /// let client = ChatServerClient::builder().servers(["http://127.0.0.1:5001"]).build()?;
    /// assert_eq!(client.servers(), ["127.0.0.1:5001"]);
    ///
    /// let error = ChatServerClient::builder().servers(["localhost"]).build().unwrap_err();
    /// let ClientError::InvalidAddress { address, .. } = error else { panic!("{error}") };
    /// assert_eq!(address, "localhost");
    /// # Ok::<(), ClientError>(())
    /// ```
    pub fn build(self) -> Result<ChatServerClient, ClientError> {
        if self.servers.is_empty() {
            return Err(ClientError::InvalidAddress {
                address: String::new(),
                reason: "no server given: at least one HOST:PORT is needed".into(),
            });
        }
        let schemes: Vec<bool> = self.servers.iter().filter_map(|s| names_tls(s)).collect();
        let https = schemes.contains(&true);
        if https && schemes.contains(&false) {
            return Err(ClientError::InvalidTls(
                "servers: mix http:// and https://; one cluster is called one way".into(),
            ));
        }
        if self.tls.any() && schemes.contains(&false) {
            return Err(ClientError::InvalidTls(
                "servers: an http:// server with a CA certificate or client identity; use \
                 https:// (or HOST:PORT)"
                    .into(),
            ));
        }
        let transport = Transport::new(self.connect_timeout, https || self.tls.any(), &self.tls)?;
        let servers = self
            .servers
            .iter()
            .map(|address| Server::new(address, &transport).map(Arc::new))
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(ChatServerClient {
            inner: Arc::new(Inner {
                servers: RwLock::new(servers),
                leader: Mutex::new(None),
                cursor: AtomicUsize::new(0),
                discover: self.discover,
                discovered: AtomicBool::new(false),
                deadline: self.deadline,
                transport,
                backoff_initial: self.backoff_initial,
                backoff_max: self.backoff_max,
            }),
        })
    }
}

/// The JoChat client: one typed async method per chat operation.
///
/// Cheap to clone and safe to share between tasks (`Clone + Send + Sync`); clones share the
/// connections. Every call has a deadline (10 s by default) that covers its retries. Every
/// write carries an idempotency key generated once per call, so a write retried after a lost
/// reply is applied once.
///
/// The connection to a server is made by the first call that needs it and belongs to the
/// Tokio runtime of that call: use a client (and its clones) within one runtime.
///
/// Give it some or all of the cluster's servers: it finds the leader, follows NOT-LEADER
/// hints, moves to another server when one fails, and learns the cluster's other members,
/// so a leader change looks like one slower call. Reads marked stale are served by whichever
/// server the client is using.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let node = jochat_node::spawn_ephemeral().await?;
/// use jochat_client::{ChatServerClient, InboxQuery, MessageStatus};
///
/// let client = ChatServerClient::builder().servers([node.address()]).build()?;
/// client.sign_up("alice", "correct horse").await?;
/// client.sign_up("bob", "battery staple").await?;
///
/// let alice = client.log_in("alice", "correct horse").await?;
/// let sent = client.send_message(&alice.token, "bob", "hi Bob").await?;
/// assert_eq!(sent.status, MessageStatus::Away); // Bob has not logged in.
///
/// let bob = client.log_in("bob", "battery staple").await?;
/// assert_eq!(bob.unread_count, 1);
/// let inbox = client.list_messages(&bob.token, &InboxQuery::default()).await?;
/// assert_eq!(inbox.messages[0].content, "hi Bob");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ChatServerClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ChatServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatServerClient")
            .field("servers", &self.servers())
            .field("deadline", &self.inner.deadline)
            .finish()
    }
}

fn wire_password(password: &str) -> String {
    // An empty password is sent as such so that the server, the one place input is
    // validated, answers with its rule ("password: must not be empty").
    if password.is_empty() {
        String::new()
    } else {
        hash_password(password)
    }
}

impl ChatServerClient {
    /// A builder; give it at least one server.
    pub fn builder() -> ChatServerClientBuilder {
        ChatServerClientBuilder::default()
    }

    /// The time one call may take, retries included.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// The servers this client knows, as `host:port`: those given to the builder, then those
    /// learned from the cluster (NOT-LEADER hints and ClusterInfo).
    pub fn servers(&self) -> Vec<String> {
        self.inner
            .servers
            .read()
            .expect("the server list's lock is never held across a panic")
            .iter()
            .map(|s| s.address.clone())
            .collect()
    }

    pub(crate) fn backoff_initial(&self) -> Duration {
        self.inner.backoff_initial
    }

    pub(crate) fn backoff_max(&self) -> Duration {
        self.inner.backoff_max
    }

    /// The server this client believes leads, if any: learned from NOT-LEADER hints and
    /// ClusterInfo, forgotten when it fails.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// assert_eq!(client.leader(), None); // nothing asked yet
    /// client.cluster_info().await?;
    /// // The first call also asks the cluster who leads, in the background.
    /// # for _ in 0..100 { if client.leader().is_some() { break } tokio::time::sleep(std::time::Duration::from_millis(10)).await }
    /// assert_eq!(client.leader(), Some(node.address()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn leader(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .expect("the leader's lock is never held across a panic")
            .clone()
    }

    /// Creates an account. The password is sent as its SHA-256 ([`hash_password`]).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a name outside 1–32 letters, digits, `_`, `-`,
    /// `.`, or an empty password; [`ClientError::AlreadyExists`] when the name is taken,
    /// ignoring case.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// let account = client.sign_up("Alice", "correct horse").await?;
    /// assert_eq!(account.username, "Alice");
    /// assert!(client.sign_up("alice", "other").await.is_err()); // taken, ignoring case
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sign_up(&self, username: &str, password: &str) -> Result<SignedUp, ClientError> {
        self.sign_up_hashed(username, &wire_password(password))
            .await
    }

    /// [`sign_up`](Self::sign_up) for a caller that hashed the password itself, such as a
    /// browser: `password_sha256` is sent as it is, so it must be what [`hash_password`]
    /// returns for the password (or empty, which the server refuses with its rule).
    ///
    /// # Errors
    /// As [`sign_up`](Self::sign_up).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// let digest = jochat_client::hash_password("correct horse");
    /// client.sign_up_hashed("alice", &digest).await?;
    /// // The same account as if the plain password had been given.
    /// client.log_in("alice", "correct horse").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sign_up_hashed(
        &self,
        username: &str,
        password_sha256: &str,
    ) -> Result<SignedUp, ClientError> {
        let message = v1::SignUpRequest {
            username: username.to_owned(),
            password: password_sha256.to_owned(),
            idempotency_key: idempotency_key(),
        };
        let reply = self
            .call("sign_up", None, |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.sign_up(request?).await }
            })
            .await?;
        Ok(SignedUp {
            user_id: reply.user_id,
            username: reply.username,
        })
    }

    /// Opens a session, ending the account's other sessions, and returns its token with the
    /// unread count.
    ///
    /// # Errors
    /// [`ClientError::Unauthenticated`] ("wrong username or password") for an unknown name or
    /// a wrong password; [`ClientError::RateLimited`] after repeated failures for the name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// client.sign_up("alice", "correct horse").await?;
    /// let session = client.log_in("ALICE", "correct horse").await?;
    /// assert_eq!(session.username, "alice");
    /// assert_eq!(session.unread_count, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn log_in(&self, username: &str, password: &str) -> Result<LoggedIn, ClientError> {
        self.log_in_hashed(username, &wire_password(password)).await
    }

    /// [`log_in`](Self::log_in) with the password already hashed by the caller (see
    /// [`sign_up_hashed`](Self::sign_up_hashed)).
    ///
    /// # Errors
    /// As [`log_in`](Self::log_in).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// client.sign_up("alice", "pw").await?;
    /// let session = client
    ///     .log_in_hashed("alice", &jochat_client::hash_password("pw"))
    ///     .await?;
    /// assert_eq!(session.username, "alice");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn log_in_hashed(
        &self,
        username: &str,
        password_sha256: &str,
    ) -> Result<LoggedIn, ClientError> {
        let message = v1::LogInRequest {
            username: username.to_owned(),
            password: password_sha256.to_owned(),
            idempotency_key: idempotency_key(),
        };
        let reply = self
            .call("log_in", None, |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.log_in(request?).await }
            })
            .await?;
        if reply.token.is_empty() {
            return Err(ClientError::InvalidResponse(
                "LogInResponse.token is missing".into(),
            ));
        }
        Ok(LoggedIn {
            token: SessionToken::from(reply.token),
            username: reply.username,
            user_id: reply.user_id,
            unread_count: non_negative("unread_count", reply.unread_count)?,
            expires_at_ms: reply.expires_at_ms,
        })
    }

    /// Ends the session.
    ///
    /// # Errors
    /// [`ClientError::Unauthenticated`] when the session is not valid.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// let session = client.log_in("alice", "pw").await?;
    /// client.log_out(&session.token).await?;
    /// assert!(client.unread_count(&session.token).await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn log_out(&self, token: &SessionToken) -> Result<(), ClientError> {
        let message = v1::LogOutRequest {
            idempotency_key: idempotency_key(),
        };
        self.call("log_out", Some(token), |mut client, attempt| {
            let request = attempt.request(message.clone());
            async move { client.log_out(request?).await }
        })
        .await?;
        Ok(())
    }

    /// Sends `content` to `recipient` (matched ignoring case). The message is delivered if
    /// the recipient has a live session, and waits as away otherwise.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for empty or oversized content;
    /// [`ClientError::NotFound`] for an unknown recipient; [`ClientError::Unauthenticated`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// # client.sign_up("bob", "pw").await?;
    /// let alice = client.log_in("alice", "pw").await?;
    /// let sent = client.send_message(&alice.token, "Bob", "lunch?").await?;
    /// assert!(sent.id > 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_message(
        &self,
        token: &SessionToken,
        recipient: &str,
        content: &str,
    ) -> Result<SentMessage, ClientError> {
        let message = v1::SendMessageRequest {
            recipient: recipient.to_owned(),
            content: content.to_owned(),
            idempotency_key: idempotency_key(),
        };
        let reply = self
            .call("send_message", Some(token), |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.send_message(request?).await }
            })
            .await?;
        Ok(SentMessage {
            id: reply.id,
            timestamp_ms: reply.timestamp_ms,
            status: status_of(reply.status)?,
        })
    }

    /// The number of messages that arrived while the account was away and are not fetched.
    ///
    /// # Errors
    /// [`ClientError::Unauthenticated`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// let alice = client.log_in("alice", "pw").await?;
    /// assert_eq!(client.unread_count(&alice.token).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unread_count(&self, token: &SessionToken) -> Result<u64, ClientError> {
        let reply = self
            .call("unread_count", Some(token), |mut client, attempt| {
                let request = attempt.request(v1::UnreadCountRequest::default());
                async move { client.unread_count(request?).await }
            })
            .await?;
        non_negative("unread_count", reply.unread_count)
    }

    /// Fetches up to `limit` (1–1000; 0 for 100) of the oldest away messages and marks them
    /// delivered.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a limit above 1000; [`ClientError::Unauthenticated`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// # client.sign_up("bob", "pw").await?;
    /// # let alice = client.log_in("alice", "pw").await?;
    /// client.send_message(&alice.token, "bob", "while you were out").await?;
    /// let bob = client.log_in("bob", "pw").await?;
    /// let away = client.fetch_away(&bob.token, 10).await?;
    /// assert_eq!(away.messages[0].content, "while you were out");
    /// assert_eq!(client.unread_count(&bob.token).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_away(
        &self,
        token: &SessionToken,
        limit: u32,
    ) -> Result<AwayMessages, ClientError> {
        let message = v1::FetchAwayRequest {
            limit: i64::from(limit),
            idempotency_key: idempotency_key(),
        };
        let reply = self
            .call("fetch_away", Some(token), |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.fetch_away(request?).await }
            })
            .await?;
        Ok(AwayMessages {
            messages: messages(reply.messages)?,
            remaining: non_negative("remaining", reply.remaining)?,
        })
    }

    /// A page of the inbox, newest first, or of one conversation.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a limit above 1000 or an offset above
    /// 1,000,000,000; [`ClientError::NotFound`] for an unknown `with_user`;
    /// [`ClientError::Unauthenticated`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// # let alice = client.log_in("alice", "pw").await?;
    /// use jochat_client::InboxQuery;
    /// client.send_message(&alice.token, "alice", "note to self").await?;
    /// let query = InboxQuery::new().limit(20).with_user("alice");
    /// let page = client.list_messages(&alice.token, &query).await?;
    /// assert_eq!(page.total_count, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_messages(
        &self,
        token: &SessionToken,
        query: &InboxQuery,
    ) -> Result<MessagePage, ClientError> {
        let message = v1::ListMessagesRequest {
            offset: i64::try_from(query.offset).unwrap_or(i64::MAX),
            limit: i64::from(query.limit),
            with_user: query.with_user.clone().unwrap_or_default(),
            consistency: query.consistency.wire(),
        };
        let reply = self
            .call("list_messages", Some(token), |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.list_messages(request?).await }
            })
            .await?;
        Ok(MessagePage {
            messages: messages(reply.messages)?,
            total_count: non_negative("total_count", reply.total_count)?,
        })
    }

    /// Deletes messages from the caller's inbox (at most 1000 ids); returns how many were
    /// deleted. Ids of messages that are not the caller's are left alone.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for no ids, more than 1000, or ids that are not
    /// positive; [`ClientError::Unauthenticated`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// # let alice = client.log_in("alice", "pw").await?;
    /// let sent = client.send_message(&alice.token, "alice", "to delete").await?;
    /// assert_eq!(client.delete_messages(&alice.token, &[sent.id]).await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_messages(
        &self,
        token: &SessionToken,
        ids: &[i64],
    ) -> Result<u64, ClientError> {
        let message = v1::DeleteMessagesRequest {
            ids: ids.to_vec(),
            idempotency_key: idempotency_key(),
        };
        let reply = self
            .call("delete_messages", Some(token), |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.delete_messages(request?).await }
            })
            .await?;
        non_negative("deleted_count", reply.deleted_count)
    }

    /// A page of the accounts matching a pattern: `*` any run, `?` one character, plain text
    /// as a substring, empty for all; ignoring case; ordered by name.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a pattern over 64 characters or with control
    /// characters, or a bad page; [`ClientError::Unauthenticated`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// # client.sign_up("alice", "pw").await?;
    /// # client.sign_up("albert", "pw").await?;
    /// # let alice = client.log_in("alice", "pw").await?;
    /// use jochat_client::AccountQuery;
    /// let query = AccountQuery::new("al*");
    /// let page = client.list_accounts(&alice.token, &query).await?;
    /// let names: Vec<_> = page.accounts.iter().map(|a| a.username.as_str()).collect();
    /// assert_eq!(names, ["albert", "alice"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_accounts(
        &self,
        token: &SessionToken,
        query: &AccountQuery,
    ) -> Result<AccountPage, ClientError> {
        let message = v1::ListAccountsRequest {
            pattern: query.pattern.clone(),
            offset: i64::try_from(query.offset).unwrap_or(i64::MAX),
            limit: i64::from(query.limit),
            consistency: query.consistency.wire(),
        };
        let reply = self
            .call("list_accounts", Some(token), |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.list_accounts(request?).await }
            })
            .await?;
        Ok(AccountPage {
            accounts: reply
                .accounts
                .into_iter()
                .map(|a| Account {
                    id: a.id,
                    username: a.username,
                })
                .collect(),
            total_count: non_negative("total_count", reply.total_count)?,
        })
    }

    /// Deletes the caller's account, its sessions and every message it sent or received,
    /// after checking the password again. Returns how many messages were deleted.
    ///
    /// # Errors
    /// [`ClientError::Unauthenticated`] for a wrong password or an invalid session.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// client.sign_up("alice", "pw").await?;
    /// let alice = client.log_in("alice", "pw").await?;
    /// assert!(client.delete_account(&alice.token, "not the password").await.is_err());
    /// client.delete_account(&alice.token, "pw").await?;
    /// assert!(client.log_in("alice", "pw").await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_account(
        &self,
        token: &SessionToken,
        password: &str,
    ) -> Result<u64, ClientError> {
        self.delete_account_hashed(token, &wire_password(password))
            .await
    }

    /// [`delete_account`](Self::delete_account) with the password already hashed by the
    /// caller (see [`sign_up_hashed`](Self::sign_up_hashed)).
    ///
    /// # Errors
    /// As [`delete_account`](Self::delete_account).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// client.sign_up("alice", "pw").await?;
    /// let alice = client.log_in("alice", "pw").await?;
    /// let digest = jochat_client::hash_password("pw");
    /// assert_eq!(client.delete_account_hashed(&alice.token, &digest).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_account_hashed(
        &self,
        token: &SessionToken,
        password_sha256: &str,
    ) -> Result<u64, ClientError> {
        let message = v1::DeleteAccountRequest {
            password: password_sha256.to_owned(),
            idempotency_key: idempotency_key(),
        };
        let reply = self
            .call("delete_account", Some(token), |mut client, attempt| {
                let request = attempt.request(message.clone());
                async move { client.delete_account(request?).await }
            })
            .await?;
        non_negative("deleted_messages", reply.deleted_messages)
    }

    /// The cluster as the answering node sees it. Needs no session.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] or [`ClientError::DeadlineExceeded`] when no server
    /// answers.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// let info = client.cluster_info().await?;
    /// assert_eq!(info.leader_id, Some(info.node_id));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ClientError> {
        let reply = self
            .call("cluster_info", None, |mut client, attempt| {
                let request = attempt.request(v1::ClusterInfoRequest {});
                async move { client.cluster_info(request?).await }
            })
            .await?;
        ClusterInfo::try_from(reply)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tonic::{Code, Status};

    use super::*;
    use crate::mock::{MockChat, MockServer};
    use crate::routing::{jittered, parse_address, LEADER_ADDRESS_HEADER};

    /// A client of `server` with a short deadline.
    fn client_of(server: &MockServer, deadline: Duration) -> ChatServerClient {
        ChatServerClient::builder()
            .servers([server.address()])
            .discover_members(false)
            .deadline(deadline)
            .build()
            .unwrap()
    }

    fn token() -> SessionToken {
        SessionToken::from("t0k3n".to_owned())
    }

    #[test]
    fn addresses_are_checked() {
        let parsed = |raw: &str| parse_address(raw).unwrap();
        assert_eq!(parsed("127.0.0.1:5001"), "127.0.0.1:5001");
        assert_eq!(parsed(" http://node-1:80/ "), "node-1:80");
        assert_eq!(parsed("https://node-1:5001"), "node-1:5001");
        assert_eq!(parsed("[::1]:5001"), "[::1]:5001");
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:99999",
            "host:port",
            ":5001",
            "ftp://host:5001",
            "host:5001/path",
            "::1:5001",
            "[nope]:5001",
            "a b:1",
            "",
        ] {
            let error = parse_address(bad).unwrap_err();
            assert!(
                matches!(&error, ClientError::InvalidAddress { address, .. } if address == bad),
                "{bad:?}: {error:?}"
            );
        }
        let error = ChatServerClient::builder()
            .servers(["127.0.0.1:5001", "nope"])
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid server address \"nope\": expected HOST:PORT"
        );
        assert!(matches!(
            ChatServerClient::builder().build(),
            Err(ClientError::InvalidAddress { .. })
        ));
    }

    #[test]
    fn tls_is_one_way_for_every_server_and_its_settings_are_checked_at_build() {
        // https:// alone turns TLS on (with the system's roots); bare addresses follow.
        let client = ChatServerClient::builder()
            .servers(["https://db1.example:5001", "db2.example:5001"])
            .build()
            .unwrap();
        assert!(client.inner.transport.is_tls());
        assert_eq!(client.servers(), ["db1.example:5001", "db2.example:5001"]);
        // A CA turns TLS on for bare addresses too.
        let with_ca = ChatServerClient::builder()
            .servers(["127.0.0.1:5001"])
            .ca_certificate(TEST_CA)
            .build()
            .unwrap();
        assert!(with_ca.inner.transport.is_tls());
        let plain = ChatServerClient::builder()
            .servers(["127.0.0.1:5001"])
            .build()
            .unwrap();
        assert!(!plain.inner.transport.is_tls());

        let refused = |builder: ChatServerClientBuilder, wanted: &str| {
            let error = builder.build().unwrap_err();
            assert!(
                matches!(&error, ClientError::InvalidTls(m) if m.contains(wanted)),
                "{error}"
            );
        };
        refused(
            ChatServerClient::builder().servers(["https://a:1", "http://b:2"]),
            "mix http:// and https://",
        );
        refused(
            ChatServerClient::builder()
                .servers(["http://a:1"])
                .ca_certificate(TEST_CA),
            "an http:// server",
        );
        refused(
            ChatServerClient::builder().servers(["a:1"]).ca_certificate(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
            "ca_certificate",
        );
        refused(
            ChatServerClient::builder()
                .servers(["a:1"])
                .ca_certificate(TEST_CA)
                .client_identity(TEST_CA, "no key here"),
            "client_identity",
        );
    }

    /// A CA certificate in PEM (made once with `jochat cert create-ca`).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBezCCASKgAwIBAgIUCLxFOfHeAwHs1xY4Hcr7Ubpdlc4wCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRSm9DaGF0IGNsdXN0ZXIgQ0EwHhcNMjYxMTMwMTMxMDE1WhcN
MzYxMTI3MTQxMDE1WjAcMRowGAYDVQQDDBFKb0NoYXQgY2x1c3RlciBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABOLMBxJHBmdsKlmq3azoFJ+WMRiJeKjdFVU1
XHX/hkTtHwzbAUzorN2gGF0GpbjOd+KCRSx0W4s6tpfv/iVk2UejQjBAMA4GA1Ud
DwEB/wQEAwIBhjAdBgNVHQ4EFgQUOBBqhZyv8SZDRHWGYNDB7ViilcowDwYDVR0T
AQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiB8ud6Dl2yBrONLFcGyrurpz3ab
H7cRmjqzYutuWsoeNgIgSjzV73dSWQSDbJ/8x6RY9njSNAkq7MnMNRRBxtsflEg=
-----END CERTIFICATE-----
";

    #[test]
    fn building_needs_no_runtime_and_the_client_is_shareable() {
        fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
        fn sendable<T: Send>(_: T) {}
        // 1. No Tokio runtime here: `build` must not connect or spawn.
        let client = ChatServerClient::builder()
            .servers(["127.0.0.1:5001", "http://127.0.0.1:5002"])
            .build()
            .unwrap();
        assert_eq!(client.servers(), ["127.0.0.1:5001", "127.0.0.1:5002"]);
        // 2. Clones share one state, and the calls can be spawned onto other threads.
        shareable(&client);
        assert!(Arc::ptr_eq(&client.inner, &client.clone().inner));
        let token = token();
        sendable(client.send_message(&token, "bob", "hi"));
        sendable(client.cluster_info());
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let pause = jittered(Duration::from_millis(100));
            assert!(
                pause >= Duration::from_millis(50) && pause <= Duration::from_millis(100),
                "{pause:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_write_is_retried_with_its_key_until_it_succeeds() {
        // 1. The server is unavailable for the first two attempts.
        let server = MockServer::start(MockChat::failing_first([
            Status::unavailable("warming up"),
            Status::unavailable("warming up"),
        ]))
        .await;
        let client = client_of(&server, Duration::from_secs(5));

        // 2. The send succeeds on the third attempt.
        let sent = client.send_message(&token(), "bob", "hi").await.unwrap();
        assert_eq!(sent.id, 7);
        assert_eq!(sent.status, MessageStatus::Away);

        // 3. Every attempt carried the same key, the bearer token and a grpc-timeout.
        let seen = server.chat.seen();
        assert_eq!(seen.len(), 3);
        let key = &seen[0].idempotency_key;
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|c| c.is_ascii_hexdigit()));
        for attempt in &seen {
            assert_eq!(&attempt.idempotency_key, key);
            assert_eq!(attempt.authorization.as_deref(), Some("Bearer t0k3n"));
            assert!(attempt.has_grpc_timeout);
        }

        // 4. The next logical call has a fresh key.
        client.send_message(&token(), "bob", "again").await.unwrap();
        assert_ne!(&server.chat.seen()[3].idempotency_key, key);
    }

    #[tokio::test]
    async fn final_errors_are_not_retried() {
        // 1. The server refuses the request once, with a final error.
        let server = MockServer::start(MockChat::failing_first([Status::invalid_argument(
            "content: must be 1 to 65536 bytes",
        )]))
        .await;
        let client = client_of(&server, Duration::from_secs(5));

        // 2. The caller gets the server's message verbatim, after one attempt.
        let error = client.send_message(&token(), "bob", "").await.unwrap_err();
        assert_eq!(
            error,
            ClientError::InvalidArgument("content: must be 1 to 65536 bytes".into())
        );
        assert_eq!(server.chat.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_slow_server_gets_deadline_exceeded() {
        // 1. The server answers after a second; the deadline is 200 ms.
        let server = MockServer::start(MockChat {
            delay: Duration::from_secs(1),
            ..MockChat::default()
        })
        .await;
        let deadline = Duration::from_millis(200);
        let client = client_of(&server, deadline);

        // 2. The call gives up at the deadline and names the operation.
        let started = Instant::now();
        let error = client.cluster_info().await.unwrap_err();
        assert_eq!(
            error,
            ClientError::DeadlineExceeded {
                operation: "cluster_info",
                deadline,
            }
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!error.is_retryable());
        assert_eq!(error.code(), Some(Code::DeadlineExceeded));
    }

    #[tokio::test]
    async fn passwords_are_sent_hashed_except_an_empty_one() {
        let server = MockServer::start(MockChat::default()).await;
        let client = client_of(&server, Duration::from_secs(5));

        // 1. A password is sent as its SHA-256, without a session.
        client.sign_up("alice", "abc").await.unwrap();
        // 2. An empty one is sent empty, for the server to refuse with its own rule.
        client.sign_up("bob", "").await.unwrap();
        client.delete_account(&token(), "abc").await.unwrap();

        let seen = server.chat.seen();
        assert_eq!(
            seen[0].password.as_deref(),
            Some(hash_password("abc").as_str())
        );
        assert_eq!(seen[0].authorization, None);
        assert_eq!(seen[1].password.as_deref(), Some(""));
        assert_eq!(
            seen[2].password.as_deref(),
            Some(hash_password("abc").as_str())
        );
        assert_eq!(seen[2].authorization.as_deref(), Some("Bearer t0k3n"));
    }

    #[tokio::test]
    async fn replies_that_break_the_protocol_are_invalid_responses() {
        let server = MockServer::start(MockChat::default()).await;
        let client = client_of(&server, Duration::from_secs(5));
        // The mock answers a login without a token and a negative unread count.
        assert!(matches!(
            client.log_in("alice", "pw").await,
            Err(ClientError::InvalidResponse(_))
        ));
        assert!(matches!(
            client.unread_count(&token()).await,
            Err(ClientError::InvalidResponse(_))
        ));
    }

    #[tokio::test]
    async fn a_malformed_token_is_refused_before_sending() {
        let server = MockServer::start(MockChat::default()).await;
        let client = client_of(&server, Duration::from_secs(5));
        let token = SessionToken::from("line\nbreak".to_owned());
        assert!(matches!(
            client.unread_count(&token).await,
            Err(ClientError::Unauthenticated(_))
        ));
        assert!(server.chat.seen().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_until_the_deadline() {
        // 1. A port that was just free refuses connections at once.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = ChatServerClient::builder()
            .servers([format!("127.0.0.1:{port}")])
            .deadline(Duration::from_millis(300))
            .build()
            .unwrap();

        // 2. The call keeps trying until the deadline, then says why it failed.
        let started = Instant::now();
        let error = client.cluster_info().await.unwrap_err();
        match &error {
            ClientError::Unavailable(message) => assert!(
                message.starts_with(&format!("cannot reach 127.0.0.1:{port}: ")),
                "{message}"
            ),
            ClientError::DeadlineExceeded { .. } => {}
            other => panic!("neither unavailable nor past the deadline: {other:?}"),
        }
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "it retried before giving up"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "it respected the deadline"
        );
    }

    /// A NOT-LEADER status naming `leader`, as a follower sends it.
    fn not_leader(leader: &str) -> Status {
        let mut status =
            Status::unavailable(format!("not the leader: the leader is node 1 at {leader}"));
        status
            .metadata_mut()
            .insert("jochat-leader-id", "1".parse().unwrap());
        status
            .metadata_mut()
            .insert(LEADER_ADDRESS_HEADER, leader.parse().unwrap());
        status
    }

    #[tokio::test]
    async fn a_not_leader_hint_is_followed_at_once_and_remembered() {
        // 1. A follower that names the leader, and the leader.
        let leader = MockServer::start(MockChat::default()).await;
        let follower =
            MockServer::start(MockChat::failing_first([not_leader(&leader.address())])).await;
        let client = ChatServerClient::builder()
            .servers([follower.address()])
            .discover_members(false)
            .build()
            .unwrap();

        // 2. The write goes to the follower, then to the leader, with the same key.
        client.send_message(&token(), "bob", "hi").await.unwrap();
        let (asked, led) = (follower.chat.seen(), leader.chat.seen());
        assert_eq!((asked.len(), led.len()), (1, 1));
        assert_eq!(asked[0].idempotency_key, led[0].idempotency_key);

        // 3. The leader is learned: the next call goes straight to it.
        assert_eq!(client.leader(), Some(leader.address()));
        assert_eq!(client.servers(), [follower.address(), leader.address()]);
        client.send_message(&token(), "bob", "again").await.unwrap();
        assert_eq!(leader.chat.seen().len(), 2);
        assert_eq!(follower.chat.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_dead_server_is_passed_over() {
        // 1. The first server refuses connections; the second answers.
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let alive = MockServer::start(MockChat::default()).await;
        let client = ChatServerClient::builder()
            .servers([dead, alive.address()])
            .discover_members(false)
            .build()
            .unwrap();

        // 2. The write succeeds on the second server without waiting for a backoff round.
        client.send_message(&token(), "bob", "hi").await.unwrap();
        assert_eq!(alive.chat.seen().len(), 1);
    }
}
