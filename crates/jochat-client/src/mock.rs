//! A scripted `jochat.v1.Chat` server for the call path's unit tests: it records what each
//! request carried, answers with scripted failures first, and can be slow on purpose.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jochat_proto::v1;
use jochat_proto::v1::chat_server::{Chat, ChatServer};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// What one request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The method called.
    pub(crate) method: &'static str,
    /// The request's idempotency key (empty for reads).
    pub(crate) idempotency_key: String,
    /// The request's password field, for the methods that have one.
    pub(crate) password: Option<String>,
    /// The `authorization` metadata, if any.
    pub(crate) authorization: Option<String>,
    /// Whether the request carried a `grpc-timeout`.
    pub(crate) has_grpc_timeout: bool,
}

/// The scripted server's state.
#[derive(Debug, Default)]
pub(crate) struct MockChat {
    /// Returned, in order, by the next requests instead of their answer. A std mutex: it is
    /// held only to push or pop, never across an `.await`.
    pub(crate) failures: Mutex<VecDeque<Status>>,
    /// Every request received, in order (same locking as `failures`).
    pub(crate) seen: Mutex<Vec<Seen>>,
    /// How long each request waits before answering.
    pub(crate) delay: Duration,
}

impl MockChat {
    /// A server that fails its first requests with `failures`, then answers.
    pub(crate) fn failing_first(failures: impl IntoIterator<Item = Status>) -> Self {
        Self {
            failures: Mutex::new(failures.into_iter().collect()),
            ..Self::default()
        }
    }

    /// Every request received so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("no test panics while holding it")
            .clone()
    }

    /// Records `request`, waits the delay, and returns the next scripted failure, if any.
    async fn receive<M>(
        &self,
        method: &'static str,
        request: &Request<M>,
        idempotency_key: &str,
        password: Option<&str>,
    ) -> Result<(), Status> {
        let metadata = request.metadata();
        self.seen
            .lock()
            .expect("no test panics while holding it")
            .push(Seen {
                method,
                idempotency_key: idempotency_key.to_owned(),
                password: password.map(str::to_owned),
                authorization: metadata
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned),
                has_grpc_timeout: metadata.get("grpc-timeout").is_some(),
            });
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let failure = self
            .failures
            .lock()
            .expect("no test panics while holding it")
            .pop_front();
        failure.map_or(Ok(()), Err)
    }
}

/// The answer of the methods these tests do not use.
fn unused() -> Status {
    Status::unimplemented("not scripted")
}

#[tonic::async_trait]
impl Chat for MockChat {
    async fn sign_up(
        &self,
        request: Request<v1::SignUpRequest>,
    ) -> Result<Response<v1::SignUpResponse>, Status> {
        let body = request.get_ref().clone();
        self.receive(
            "sign_up",
            &request,
            &body.idempotency_key,
            Some(&body.password),
        )
        .await?;
        Ok(Response::new(v1::SignUpResponse {
            user_id: 1,
            username: body.username,
        }))
    }

    async fn log_in(
        &self,
        request: Request<v1::LogInRequest>,
    ) -> Result<Response<v1::LogInResponse>, Status> {
        let body = request.get_ref().clone();
        self.receive(
            "log_in",
            &request,
            &body.idempotency_key,
            Some(&body.password),
        )
        .await?;
        // An empty token breaks the protocol: the client must refuse it.
        Ok(Response::new(v1::LogInResponse {
            username: body.username,
            ..v1::LogInResponse::default()
        }))
    }

    async fn log_out(
        &self,
        _: Request<v1::LogOutRequest>,
    ) -> Result<Response<v1::LogOutResponse>, Status> {
        Err(unused())
    }

    async fn send_message(
        &self,
        request: Request<v1::SendMessageRequest>,
    ) -> Result<Response<v1::SendMessageResponse>, Status> {
        let key = request.get_ref().idempotency_key.clone();
        self.receive("send_message", &request, &key, None).await?;
        Ok(Response::new(v1::SendMessageResponse {
            id: 7,
            timestamp_ms: 1_700_000_000_000,
            status: v1::MessageStatus::Away as i32,
        }))
    }

    async fn unread_count(
        &self,
        request: Request<v1::UnreadCountRequest>,
    ) -> Result<Response<v1::UnreadCountResponse>, Status> {
        self.receive("unread_count", &request, "", None).await?;
        // A negative count breaks the protocol: the client must refuse it.
        Ok(Response::new(v1::UnreadCountResponse { unread_count: -1 }))
    }

    async fn fetch_away(
        &self,
        _: Request<v1::FetchAwayRequest>,
    ) -> Result<Response<v1::FetchAwayResponse>, Status> {
        Err(unused())
    }

    async fn list_messages(
        &self,
        _: Request<v1::ListMessagesRequest>,
    ) -> Result<Response<v1::ListMessagesResponse>, Status> {
        Err(unused())
    }

    async fn delete_messages(
        &self,
        _: Request<v1::DeleteMessagesRequest>,
    ) -> Result<Response<v1::DeleteMessagesResponse>, Status> {
        Err(unused())
    }

    async fn list_accounts(
        &self,
        _: Request<v1::ListAccountsRequest>,
    ) -> Result<Response<v1::ListAccountsResponse>, Status> {
        Err(unused())
    }

    async fn delete_account(
        &self,
        request: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        let body = request.get_ref().clone();
        self.receive(
            "delete_account",
            &request,
            &body.idempotency_key,
            Some(&body.password),
        )
        .await?;
        Ok(Response::new(v1::DeleteAccountResponse {
            deleted_messages: 3,
        }))
    }

    type SubscribeStream = tokio_stream::Empty<Result<v1::Message, Status>>;

    async fn subscribe(
        &self,
        _: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(unused())
    }

    async fn cluster_info(
        &self,
        request: Request<v1::ClusterInfoRequest>,
    ) -> Result<Response<v1::ClusterInfoResponse>, Status> {
        self.receive("cluster_info", &request, "", None).await?;
        Ok(Response::new(v1::ClusterInfoResponse {
            node_id: 1,
            leader_id: 1,
            leader_address: "127.0.0.1:1".into(),
            ..v1::ClusterInfoResponse::default()
        }))
    }
}

/// A running [`MockChat`]; the server task is stopped when this is dropped.
pub(crate) struct MockServer {
    /// The server's state, shared with the running service.
    pub(crate) chat: Arc<MockChat>,
    /// Where it listens.
    address: SocketAddr,
    /// The serving task, aborted on drop.
    task: JoinHandle<()>,
}

impl MockServer {
    /// Serves `chat` on a fresh loopback port.
    pub(crate) async fn start(chat: MockChat) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener
            .local_addr()
            .expect("a bound socket has an address");
        let chat = Arc::new(chat);
        let service = ChatServer::from_arc(Arc::clone(&chat));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            served.expect("the mock server runs until aborted");
        });
        Self {
            chat,
            address,
            task,
        }
    }

    /// `host:port` to give the client.
    pub(crate) fn address(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
