//! `ChatService`: the Python prototype's service, served beside `jochat.v1` so that its
//! clients keep working.
//!
//! A thin adapter: every call maps onto the same [`Node`] operation `jochat.v1` uses, with the
//! prototype's shapes around it. Replies carry `status` "ok" or "error" and a human `msg`
//! instead of gRPC codes; the session token travels in the body as `auth_token`; passwords
//! are taken as the prototype's client sent them (and stored as argon2id like any other);
//! account search follows the prototype's rules (`*` lists all, other text is a substring).
//! The prototype's own replication calls are refused: Raft replicates in JoChat.
//!
//! Every reply carries the status and text the prototype gave for that call and condition
//! (`legacy/REPLIES.md`, kept in [`text`]), since its scripts compare them exactly. Where
//! JoChat deliberately differs: one text for every failed log-in ("wrong username or
//! password", so that nobody learns which names exist), and conditions the prototype never
//! checked (oversized input, foreign ids, rate limits, ResetDB by someone other than
//! `--admin-user`) answer "error" with JoChat's own message naming the field and the rule.

use std::sync::Arc;

use jochat_core::{ChatError, Pattern};
use jochat_proto::legacy as pb;
use jochat_proto::legacy::chat_service_server::ChatService;
use tonic::{Request, Response, Status};

use super::observe;
use crate::error::NodeError;
use crate::node::{Consistency, Node};

const OK: &str = "ok";
const ERROR: &str = "error";

/// The prototype's reply texts, call by call (`legacy/REPLIES.md`).
pub mod text {
    /// What the prototype's client looks for to move on to the leader.
    pub const NOT_LEADER: &str = "NOT_LEADER";
    /// Sign-up or log-in with an empty username or password.
    pub const REQUIRED: &str = "Username/password required";
    /// Sign-up with a name taken (JoChat: ignoring case).
    pub const TAKEN: &str = "Username already taken";
    /// Any call that needs a session, without a valid one.
    pub const NOT_LOGGED_IN: &str = "Not logged in";
    /// SendMessage to a name that is no account.
    pub const NO_RECIPIENT: &str = "Recipient not found";
    /// Signup done.
    pub const SIGNED_UP: &str = "Signup successful";
    /// Login done.
    pub const LOGGED_IN: &str = "Login successful";
    /// Logout done.
    pub const LOGGED_OUT: &str = "You have been logged out.";
    /// CountUnread done.
    pub const UNREAD: &str = "Unread count fetched";
    /// SendMessage done.
    pub const SENT: &str = "Message sent";
    /// ListMessages and FetchAwayMsgs done.
    pub const MESSAGES: &str = "Messages retrieved successfully";
    /// ListAccounts done.
    pub const ACCOUNTS: &str = "Accounts retrieved successfully";
    /// DeleteMessages done.
    pub const DELETED_MESSAGES: &str = "Messages deleted successfully";
    /// DeleteAccount done.
    pub const DELETED_ACCOUNT: &str = "Account deleted successfully";
    /// ResetDB done.
    pub const RESET: &str = "Database reset successfully";
    /// ClusterInfo on the leader.
    pub const LEADER: &str = "Success. There is a leader.";
}
use text::NOT_LEADER;

/// The prototype's `ChatService` over one [`Node`].
#[derive(Clone)]
pub struct LegacyApi {
    node: Arc<Node>,
}

impl LegacyApi {
    /// The service for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// The prototype's way to report a refusal: its own text where it had one for the
/// condition, otherwise the message `jochat.v1` sends with its status code (internal details
/// stay in the log).
fn refusal(error: NodeError) -> String {
    tracing::info!(%error, "refused (answered with status \"error\")");
    match &error {
        NodeError::NotLeader { .. } => NOT_LEADER.into(),
        NodeError::Chat(ChatError::Unauthenticated(_)) => text::NOT_LOGGED_IN.into(),
        NodeError::Chat(ChatError::AlreadyExists { field, .. }) if field == "username" => {
            text::TAKEN.into()
        }
        NodeError::Chat(ChatError::NotFound { field, .. }) if field == "recipient" => {
            text::NO_RECIPIENT.into()
        }
        _ => Status::from(error).message().to_owned(),
    }
}

/// The prototype's first checks of Signup and Login: a node that does not lead answers
/// NOT_LEADER, and the leader wants both fields.
fn require_both(node: &Node, username: &str, password: &str) -> Result<(), String> {
    if username.is_empty() || password.is_empty() {
        return Err(if node.is_leader() {
            text::REQUIRED
        } else {
            NOT_LEADER
        }
        .into());
    }
    Ok(())
}

fn generic(result: Result<String, NodeError>) -> pb::GenericResponse {
    match result {
        Ok(msg) => pb::GenericResponse {
            status: OK.into(),
            msg,
        },
        Err(error) => pb::GenericResponse {
            status: ERROR.into(),
            msg: refusal(error),
        },
    }
}

/// The prototype's 32-bit counts; larger values are shown as the largest it can carry.
fn count32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The prototype's 32-bit message ids. JoChat's are 64-bit; an id past 2^31 cannot be shown
/// to these clients, which is reported rather than truncated.
fn id32(id: i64) -> Result<i32, NodeError> {
    i32::try_from(id).map_err(|_| {
        jochat_core::ChatError::invalid(
            "id",
            format!("message id {id} does not fit the prototype's 32-bit ids: use jochat.v1"),
        )
        .into()
    })
}

fn chat_messages(
    records: Vec<jochat_core::store::MessageRecord>,
) -> Result<Vec<pb::ChatMessage>, NodeError> {
    records
        .into_iter()
        .map(|m| {
            Ok(pb::ChatMessage {
                id: id32(m.id.0)?,
                sender: m.sender.to_string(),
                content: m.content,
            })
        })
        .collect()
}

/// Checks the prototype's paging fields, naming them as it does.
fn legacy_page(start: i32, count: i32) -> Result<(i64, i64), NodeError> {
    if start < 0 {
        return Err(jochat_core::ChatError::invalid(
            "start",
            format!("must not be negative, got {start}"),
        )
        .into());
    }
    if !(0..=1000).contains(&count) {
        return Err(jochat_core::ChatError::invalid(
            "count",
            format!("must be between 0 and 1000, got {count}"),
        )
        .into());
    }
    Ok((i64::from(start), i64::from(count)))
}

fn refuse_internal(operation: &'static str, caller: Option<std::net::SocketAddr>) -> Status {
    tracing::warn!(operation, caller = ?caller, "refused the prototype's internal replication call");
    Status::permission_denied(format!(
        "{operation} is not served: JoChat nodes replicate through Raft, not through the prototype's calls"
    ))
}

#[tonic::async_trait]
impl ChatService for LegacyApi {
    async fn signup(
        &self,
        request: Request<pb::SignupRequest>,
    ) -> Result<Response<pb::GenericResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.signup", async move {
            if let Err(msg) = require_both(node, &request.username, &request.password) {
                return Ok(pb::GenericResponse {
                    status: ERROR.into(),
                    msg,
                });
            }
            let result = node
                .sign_up_prototype(&request.username, &request.password)
                .await;
            Ok(generic(result.map(|_| text::SIGNED_UP.to_owned())))
        })
        .await
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.login", async move {
            if let Err(msg) = require_both(node, &request.username, &request.password) {
                return Ok(pb::LoginResponse {
                    status: ERROR.into(),
                    msg,
                    ..Default::default()
                });
            }
            Ok(
                match node
                    .log_in_prototype(&request.username, &request.password)
                    .await
                {
                    Ok(session) => pb::LoginResponse {
                        auth_token: session.token.as_str().to_owned(),
                        status: OK.into(),
                        msg: text::LOGGED_IN.into(),
                        unread_count: count32(session.unread_count),
                    },
                    Err(error) => pb::LoginResponse {
                        status: ERROR.into(),
                        msg: refusal(error),
                        ..Default::default()
                    },
                },
            )
        })
        .await
    }

    async fn logout(
        &self,
        request: Request<pb::EmptyRequest>,
    ) -> Result<Response<pb::GenericResponse>, Status> {
        let node = &self.node;
        let token = request.into_inner().auth_token.unwrap_or_default();
        observe(node, "legacy.logout", async move {
            Ok(generic(
                node.log_out(&token, "")
                    .await
                    .map(|()| text::LOGGED_OUT.to_owned()),
            ))
        })
        .await
    }

    async fn count_unread(
        &self,
        request: Request<pb::CountUnreadRequest>,
    ) -> Result<Response<pb::CountUnreadResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.count_unread", async move {
            let unread = async {
                node.unread_count(&request.auth_token, Consistency::Linearizable)
                    .await
            };
            Ok(match unread.await {
                Ok(unread) => pb::CountUnreadResponse {
                    status: OK.into(),
                    msg: text::UNREAD.into(),
                    unread_count: count32(unread),
                },
                Err(error) => pb::CountUnreadResponse {
                    status: ERROR.into(),
                    msg: refusal(error),
                    unread_count: 0,
                },
            })
        })
        .await
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::GenericResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.send_message", async move {
            let result = node
                .send_message(&request.auth_token, &request.recipient, request.content, "")
                .await;
            Ok(generic(result.map(|_| text::SENT.to_owned())))
        })
        .await
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.list_messages", async move {
            let result = async {
                let (offset, limit) = legacy_page(request.start, request.count)?;
                let page = node
                    .list_messages(
                        &request.auth_token,
                        offset,
                        limit,
                        "",
                        Consistency::Linearizable,
                    )
                    .await?;
                Ok::<_, NodeError>((chat_messages(page.messages)?, page.total_count))
            }
            .await;
            Ok(match result {
                Ok((messages, total)) => pb::ListMessagesResponse {
                    status: OK.into(),
                    msg: text::MESSAGES.into(),
                    messages,
                    total_count: count32(total),
                },
                Err(error) => pb::ListMessagesResponse {
                    status: ERROR.into(),
                    msg: refusal(error),
                    ..Default::default()
                },
            })
        })
        .await
    }

    async fn fetch_away_msgs(
        &self,
        request: Request<pb::FetchAwayMsgsRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.fetch_away_msgs", async move {
            let result = async {
                let fetched = node
                    .fetch_away(&request.auth_token, i64::from(request.limit), "")
                    .await?;
                chat_messages(fetched.messages)
            }
            .await;
            Ok(match result {
                Ok(messages) => pb::ListMessagesResponse {
                    status: OK.into(),
                    msg: text::MESSAGES.into(),
                    total_count: count32(messages.len() as u64),
                    messages,
                },
                Err(error) => pb::ListMessagesResponse {
                    status: ERROR.into(),
                    msg: refusal(error),
                    ..Default::default()
                },
            })
        })
        .await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.list_accounts", async move {
            let result = async {
                let (offset, limit) = legacy_page(request.start, request.count)?;
                let pattern = Pattern::substring(&request.pattern)?;
                node.list_accounts_matching(
                    &request.auth_token,
                    pattern,
                    offset,
                    limit,
                    Consistency::Linearizable,
                )
                .await
            }
            .await;
            Ok(match result {
                Ok(page) => pb::ListAccountsResponse {
                    status: OK.into(),
                    msg: text::ACCOUNTS.into(),
                    users: page
                        .accounts
                        .into_iter()
                        .map(|a| pb::UserRecord {
                            id: i32::try_from(a.id.0).unwrap_or(i32::MAX),
                            username: a.username.to_string(),
                        })
                        .collect(),
                },
                Err(error) => pb::ListAccountsResponse {
                    status: ERROR.into(),
                    msg: refusal(error),
                    users: Vec::new(),
                },
            })
        })
        .await
    }

    async fn delete_messages(
        &self,
        request: Request<pb::DeleteMessagesRequest>,
    ) -> Result<Response<pb::DeleteMessagesResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "legacy.delete_messages", async move {
            let ids: Vec<i64> = request
                .message_ids_to_delete
                .iter()
                .map(|&id| i64::from(id))
                .collect();
            Ok(
                match node.delete_messages(&request.auth_token, &ids, "").await {
                    Ok(deleted) => pb::DeleteMessagesResponse {
                        status: OK.into(),
                        msg: text::DELETED_MESSAGES.into(),
                        deleted_count: count32(deleted),
                    },
                    Err(error) => pb::DeleteMessagesResponse {
                        status: ERROR.into(),
                        msg: refusal(error),
                        deleted_count: 0,
                    },
                },
            )
        })
        .await
    }

    async fn delete_account(
        &self,
        request: Request<pb::EmptyRequest>,
    ) -> Result<Response<pb::GenericResponse>, Status> {
        let node = &self.node;
        let token = request.into_inner().auth_token.unwrap_or_default();
        observe(node, "legacy.delete_account", async move {
            let result = node.delete_account_by_session(&token).await;
            Ok(generic(result.map(|_| text::DELETED_ACCOUNT.to_owned())))
        })
        .await
    }

    async fn reset_db(
        &self,
        request: Request<pb::EmptyRequest>,
    ) -> Result<Response<pb::GenericResponse>, Status> {
        let node = &self.node;
        let token = request.into_inner().auth_token.unwrap_or_default();
        observe(node, "legacy.reset_db", async move {
            Ok(generic(
                node.reset_all(&token)
                    .await
                    .map(|()| text::RESET.to_owned()),
            ))
        })
        .await
    }

    async fn replicate(
        &self,
        request: Request<pb::ReplicationRequest>,
    ) -> Result<Response<pb::GenericResponse>, Status> {
        Err(refuse_internal("Replicate", request.remote_addr()))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Err(refuse_internal("Heartbeat", request.remote_addr()))
    }

    async fn cluster_info(
        &self,
        _request: Request<pb::EmptyRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let node = &self.node;
        observe(node, "legacy.cluster_info", async move {
            // As the prototype did: the servers and the leader, "ok" only on the leader.
            let view = node.cluster_view();
            let server = |id: u64, address: String| pb::ServerInfo {
                server_id: i32::try_from(id).unwrap_or(i32::MAX),
                address,
            };
            let leads = view
                .leader
                .as_ref()
                .is_some_and(|(id, _)| *id == view.node_id);
            Ok(pb::ClusterInfoResponse {
                status: if leads { OK } else { ERROR }.into(),
                msg: if leads {
                    text::LEADER.into()
                } else {
                    NOT_LEADER.into()
                },
                servers: view
                    .members
                    .iter()
                    .map(|m| server(m.id, m.address.clone()))
                    .collect(),
                leader: view.leader.map(|(id, address)| server(id, address)),
            })
        })
        .await
    }

    async fn get_full_snapshot(
        &self,
        request: Request<pb::EmptyRequest>,
    ) -> Result<Response<pb::FullSnapshot>, Status> {
        Err(refuse_internal("GetFullSnapshot", request.remote_addr()))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::AddReplicaResponse>, Status> {
        Err(refuse_internal("AddReplica", request.remote_addr()))
    }
}
