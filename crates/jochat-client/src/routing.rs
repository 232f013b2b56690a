//! How every call of [`ChatServerClient`] reaches the cluster: the servers it knows and the
//! one it believes leads, NOT-LEADER hints, moving on from a failed server, backoff with
//! jitter, and learning the members (ClusterInfo). The typed methods in `client` all go
//! through [`ChatServerClient::call`].

use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jochat_proto::v1;
use jochat_proto::v1::chat_client::ChatClient;
use tonic::transport::{Channel, Endpoint};

use crate::tls::Transport;
use tonic::{Request, Response, Status};

use crate::client::{ChatServerClient, REPLY_BYTES_MAX};
use crate::error::ClientError;
use crate::types::SessionToken;

/// How many NOT-LEADER hints in a row are followed at once, before the client pauses (a
/// follower can still name a leader that just died, for up to an election timeout).
const HINTS_FOLLOWED_AT_ONCE: u32 = 2;
/// The metadata key naming the leader's address on a NOT-LEADER answer.
pub(crate) const LEADER_ADDRESS_HEADER: &str = "jochat-leader-addr";

/// The scheme `raw` names: `Some(true)` for `https://`, `Some(false)` for `http://`, `None`
/// for a bare `host:port`.
pub(crate) fn names_tls(raw: &str) -> Option<bool> {
    let trimmed = raw.trim();
    if trimmed.starts_with("https://") {
        Some(true)
    } else if trimmed.starts_with("http://") {
        Some(false)
    } else {
        None
    }
}

/// Checks a server address, `host:port` with an optional `http://` or `https://` prefix, and
/// returns it as `host:port`. Anything else (another scheme, a path, a missing or zero port)
/// is refused here rather than failing on every call later.
pub(crate) fn parse_address(raw: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        address: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = raw.trim();
    let without_scheme = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .unwrap_or(trimmed);
    let host_port = without_scheme.strip_suffix('/').unwrap_or(without_scheme);
    if host_port.contains("://") {
        return Err(invalid(
            "only http:// and https:// servers are supported: expected HOST:PORT",
        ));
    }
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected HOST:PORT"))?;
    let host_is_valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<Ipv6Addr>().is_ok(),
        None if host.contains(':') => {
            return Err(invalid(
                "an IPv6 host must be in brackets, as in [::1]:5001",
            ))
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !host_is_valid {
        return Err(invalid("expected HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(host_port.to_owned()),
        _ => Err(invalid("the port must be a number from 1 to 65535")),
    }
}

/// One server the client may call.
pub(crate) struct Server {
    /// `host:port`, as checked by [`parse_address`].
    pub(crate) address: String,
    /// How to reach it: its URI, the connect timeout, TCP and TLS options.
    pub(crate) endpoint: Endpoint,
    /// The one HTTP/2 channel to it, shared by every clone of the client and made on first
    /// use. Making a channel spawns its connection task, which needs a Tokio runtime that
    /// `build` may not run in. A `OnceLock` suffices: making the channel does no I/O, so the
    /// lock is held for microseconds and never across an `.await`.
    pub(crate) channel: OnceLock<Channel>,
}

impl Server {
    /// A server at `address` (checked by [`parse_address`]), called as `transport` says;
    /// nothing is connected yet.
    pub(crate) fn new(address: &str, transport: &Transport) -> Result<Self, ClientError> {
        let host_port = parse_address(address)?;
        let endpoint = transport.endpoint(&host_port, address)?;
        Ok(Self {
            address: host_port,
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// The channel to this server, made on the first call.
    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

/// What every clone of a [`ChatServerClient`] shares. The std locks are held for
/// microseconds and never across an `.await`.
pub(crate) struct Inner {
    /// Every server known: those given to the builder, in that order, then those learned
    /// from NOT-LEADER hints and ClusterInfo. Never empty; servers are never removed (one
    /// that is gone is skipped when it fails).
    pub(crate) servers: RwLock<Vec<Arc<Server>>>,
    /// The address of the server believed to lead, if any.
    pub(crate) leader: Mutex<Option<String>>,
    /// Which server to try next when no leader is known.
    pub(crate) cursor: AtomicUsize,
    /// Whether to learn members from ClusterInfo at all.
    pub(crate) discover: bool,
    /// Whether the cluster's members have been asked for once (the first call does).
    pub(crate) discovered: AtomicBool,
    /// The time one call may take, retries included.
    pub(crate) deadline: Duration,
    /// How servers are called (plaintext or TLS, the connect timeout).
    pub(crate) transport: Transport,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

impl Inner {
    /// The known server at `address`, added if new.
    fn server(&self, address: &str) -> Option<Arc<Server>> {
        let address = parse_address(address).ok()?;
        if let Some(known) = self
            .servers
            .read()
            .expect("the server list's lock is never held across a panic")
            .iter()
            .find(|s| s.address == address)
        {
            return Some(Arc::clone(known));
        }
        let server = Arc::new(Server::new(&address, &self.transport).ok()?);
        let mut servers = self
            .servers
            .write()
            .expect("the server list's lock is never held across a panic");
        if let Some(known) = servers.iter().find(|s| s.address == address) {
            return Some(Arc::clone(known));
        }
        tracing::debug!(server = %address, "learned a server");
        servers.push(Arc::clone(&server));
        Some(server)
    }

    /// Where the next attempt goes: the leader if one is believed, else the next server in
    /// turn.
    fn pick(&self) -> Arc<Server> {
        let leader = self
            .leader
            .lock()
            .expect("the leader's lock is never held across a panic")
            .clone();
        if let Some(server) = leader.and_then(|address| self.server(&address)) {
            return server;
        }
        let servers = self
            .servers
            .read()
            .expect("the server list's lock is never held across a panic");
        let index = self.cursor.load(Ordering::Relaxed) % servers.len();
        Arc::clone(&servers[index])
    }

    /// After a failure on `server` without a usable hint: stop believing it leads, and move
    /// on to the next server.
    fn passed_over(&self, server: &Server) {
        let mut leader = self
            .leader
            .lock()
            .expect("the leader's lock is never held across a panic");
        if leader.as_deref() == Some(server.address.as_str()) {
            *leader = None;
        }
        drop(leader);
        let servers = self
            .servers
            .read()
            .expect("the server list's lock is never held across a panic");
        let position = servers
            .iter()
            .position(|s| s.address == server.address)
            .unwrap_or(0);
        self.cursor.store(position + 1, Ordering::Relaxed);
    }

    /// Believes `address` leads (from a NOT-LEADER hint).
    fn follow(&self, address: &str) -> bool {
        if self.server(address).is_none() {
            return false;
        }
        *self
            .leader
            .lock()
            .expect("the leader's lock is never held across a panic") = Some(address.to_owned());
        true
    }

    fn server_count(&self) -> usize {
        self.servers
            .read()
            .expect("the server list's lock is never held across a panic")
            .len()
    }
}

/// The leader's address a NOT-LEADER status names, if any.
fn leader_hint(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(LEADER_ADDRESS_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|address| !address.is_empty())
}

/// The metadata key a call's id travels in: the same on every attempt of one call, so the
/// servers' log lines of all its attempts share it.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// A new call id: 16 random hex digits (a counter's value if randomness fails).
pub(crate) fn new_request_id() -> String {
    static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => hex::encode(bytes),
        Err(_) => format!("{:016x}", FALLBACK.fetch_add(1, Ordering::Relaxed)),
    }
}

/// What every attempt of a call carries: the session token, the time left and the call's id.
#[derive(Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub(crate) token: Option<&'a SessionToken>,
    pub(crate) remaining: Duration,
    pub(crate) request_id: &'a str,
}

impl Attempt<'_> {
    /// Wraps `message` with the `authorization` and `x-request-id` metadata and the
    /// `grpc-timeout` header.
    pub(crate) fn request<M>(self, message: M) -> Result<Request<M>, Status> {
        let mut request = Request::new(message);
        request.set_timeout(self.remaining);
        if let Ok(id) = self.request_id.parse() {
            request.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        if let Some(token) = self.token {
            let value = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| Status::unauthenticated("session token is malformed"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A pause of about `base`, drawn uniformly from `[base/2, base]` so that many clients
/// retrying at once spread out.
pub(crate) fn jittered(base: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    // Without randomness the pause is simply `base`; jitter is an optimisation.
    let fraction = match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) % 1000) as u32,
        Err(_) => 1000,
    };
    base / 2 + base / 2 * fraction / 1000
}

impl ChatServerClient {
    /// Asks one server for the cluster's members and leader, and learns them. Runs in the
    /// background: after the first call, and after a round of failures.
    pub(crate) fn discover(&self) {
        if !self.inner.discover {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            let server = client.inner.pick();
            let mut chat = ChatClient::new(server.channel());
            let mut request = Request::new(v1::ClusterInfoRequest {});
            request.set_timeout(client.inner.transport.connect_timeout);
            let asked = tokio::time::timeout(
                client.inner.transport.connect_timeout,
                chat.cluster_info(request),
            );
            let info = match asked.await {
                Ok(Ok(info)) => info.into_inner(),
                Ok(Err(status)) => {
                    tracing::debug!(server = %server.address, %status, "could not learn the members");
                    return;
                }
                Err(_) => {
                    tracing::debug!(server = %server.address, "could not learn the members in time");
                    return;
                }
            };
            for member in &info.members {
                client.inner.server(&member.address);
            }
            if info.leader_id != 0 && !info.leader_address.is_empty() {
                client.inner.follow(&info.leader_address);
            }
        });
    }

    /// The one path every call takes: it applies the deadline (a Tokio timeout around each
    /// attempt, and `grpc-timeout` so the server gives up too), attaches the session token,
    /// maps the status to a [`ClientError`], and handles failover:
    ///
    /// - each attempt goes to the server believed to lead, else to the next server in turn;
    /// - a NOT-LEADER answer naming the leader is followed at once (its address is learned
    ///   if new);
    /// - any other retryable failure (a transport error, no quorum, no leader known) moves on
    ///   to the next server, and after a round of every server the client pauses with
    ///   jittered exponential backoff and asks the cluster for its members again;
    /// - a final error (bad input, wrong password, not found...) is returned at once.
    ///
    /// `attempt` makes one attempt on the given server's client; it builds its request from
    /// values fixed before the first attempt (so every retry of a write reuses its idempotency
    /// key, and the state machine answers a retry of a write that did commit with its first
    /// outcome).
    ///
    /// When the next pause would pass the deadline, the last retryable error is returned (it
    /// says why no server answered, which a bare "deadline exceeded" would hide).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        token: Option<&SessionToken>,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(ChatClient<Channel>, Attempt<'_>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = self.inner.deadline;
        let exceeded = ClientError::DeadlineExceeded {
            operation,
            deadline,
        };
        if !self.inner.discovered.swap(true, Ordering::Relaxed) {
            self.discover();
        }
        let started = Instant::now();
        let request_id = new_request_id();
        let mut backoff = self.inner.backoff_initial;
        let mut hints_followed = 0;
        let mut failed_in_round = 0;
        // When the deadline cuts a retry short, the failure that made it retry says more
        // than "no answer" (for example a certificate the client does not trust).
        let mut last_failure: Option<ClientError> = None;
        loop {
            let Some(remaining) = deadline.checked_sub(started.elapsed()) else {
                return Err(last_failure.unwrap_or(exceeded));
            };
            let server = self.inner.pick();
            let client =
                ChatClient::new(server.channel()).max_decoding_message_size(REPLY_BYTES_MAX);
            let outcome = tokio::time::timeout(
                remaining,
                attempt(
                    client,
                    Attempt {
                        token,
                        remaining,
                        request_id: &request_id,
                    },
                ),
            )
            .await;
            let status = match outcome {
                Err(_elapsed) => return Err(last_failure.unwrap_or(exceeded)),
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
            };
            let mut error = ClientError::from_status(&status, operation, deadline, &server.address);
            if !self.inner.transport.is_tls() {
                error = error.with_plaintext_hint();
            }
            if !error.is_retryable() {
                return Err(error);
            }
            let hint = leader_hint(&status).filter(|hint| *hint != server.address);
            if let Some(hint) = hint.filter(|_| hints_followed < HINTS_FOLLOWED_AT_ONCE) {
                if self.inner.follow(hint) {
                    tracing::debug!(operation, from = %server.address, leader = hint, "following the leader hint");
                    hints_followed += 1;
                    continue;
                }
            }
            tracing::debug!(operation, server = %server.address, %error, "trying another server");
            last_failure = Some(error.clone());
            self.inner.passed_over(&server);
            failed_in_round += 1;
            if failed_in_round < self.inner.server_count() {
                continue;
            }
            // Every server failed once: pause, and ask the cluster who is in it now.
            failed_in_round = 0;
            hints_followed = 0;
            let pause = jittered(backoff);
            if started.elapsed() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.inner.backoff_max);
            self.discover();
        }
    }

    /// The server the next call would go to, as its address and channel.
    pub(crate) fn pick_server(&self) -> (String, Channel) {
        let server = self.inner.pick();
        (server.address.clone(), server.channel())
    }

    /// Moves past the server at `address` after it failed.
    pub(crate) fn server_failed(&self, address: &str) {
        if let Some(server) = self.inner.server(address) {
            self.inner.passed_over(&server);
        }
    }
}
