//! `jochat.v1.Chat`: the chat API.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use jochat_core::store::{AccountRecord, MessageRecord};
use jochat_core::ChatError;
use jochat_proto::v1;
use jochat_proto::v1::chat_server::Chat;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::observe;
use crate::error::NodeError;
use crate::node::{Consistency, Node};

/// The `jochat.v1.Chat` service over one [`Node`].
#[derive(Clone)]
pub struct ChatApi {
    node: Arc<Node>,
}

impl ChatApi {
    /// The service for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// The token of `authorization: Bearer <token>`, or "" when absent or not of that form (the
/// node then answers UNAUTHENTICATED).
fn bearer(metadata: &MetadataMap) -> String {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Checks the `consistency` field: LINEARIZABLE (the default) reads are served by the leader
/// after it confirms its leadership; STALE reads by any node from what it has applied.
fn check_consistency(raw: i32) -> Result<Consistency, NodeError> {
    match v1::ReadConsistency::try_from(raw) {
        Ok(v1::ReadConsistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(v1::ReadConsistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(ChatError::invalid("consistency", format!("unknown value {raw}")).into()),
    }
}

fn message(record: MessageRecord) -> v1::Message {
    let status = if record.delivered {
        v1::MessageStatus::Delivered
    } else {
        v1::MessageStatus::Away
    };
    v1::Message {
        id: record.id.0,
        sender: record.sender.to_string(),
        recipient: record.recipient.to_string(),
        content: record.content,
        timestamp_ms: record.timestamp_ms,
        status: status as i32,
    }
}

fn account(record: AccountRecord) -> v1::Account {
    v1::Account {
        id: record.id.0,
        username: record.username.to_string(),
    }
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<v1::Message, Status>> + Send>>;

#[tonic::async_trait]
impl Chat for ChatApi {
    async fn sign_up(
        &self,
        request: Request<v1::SignUpRequest>,
    ) -> Result<Response<v1::SignUpResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "sign_up", async move {
            let signed_up = node
                .sign_up(
                    &request.username,
                    &request.password,
                    &request.idempotency_key,
                )
                .await?;
            Ok(v1::SignUpResponse {
                user_id: signed_up.user_id.0,
                username: signed_up.username.to_string(),
            })
        })
        .await
    }

    async fn log_in(
        &self,
        request: Request<v1::LogInRequest>,
    ) -> Result<Response<v1::LogInResponse>, Status> {
        let node = &self.node;
        let request = request.into_inner();
        observe(node, "log_in", async move {
            let logged_in = node.log_in(&request.username, &request.password).await?;
            Ok(v1::LogInResponse {
                token: logged_in.token.as_str().to_owned(),
                unread_count: count(logged_in.unread_count),
                expires_at_ms: logged_in.expires_at_ms,
                username: logged_in.username.to_string(),
                user_id: logged_in.user_id.0,
            })
        })
        .await
    }

    async fn log_out(
        &self,
        request: Request<v1::LogOutRequest>,
    ) -> Result<Response<v1::LogOutResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "log_out", async move {
            node.log_out(&token, &request.idempotency_key).await?;
            Ok(v1::LogOutResponse {})
        })
        .await
    }

    async fn send_message(
        &self,
        request: Request<v1::SendMessageRequest>,
    ) -> Result<Response<v1::SendMessageResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "send_message", async move {
            let sent = node
                .send_message(
                    &token,
                    &request.recipient,
                    request.content,
                    &request.idempotency_key,
                )
                .await?;
            let status = if sent.delivered {
                v1::MessageStatus::Delivered
            } else {
                v1::MessageStatus::Away
            };
            Ok(v1::SendMessageResponse {
                id: sent.id.0,
                timestamp_ms: sent.timestamp_ms,
                status: status as i32,
            })
        })
        .await
    }

    async fn unread_count(
        &self,
        request: Request<v1::UnreadCountRequest>,
    ) -> Result<Response<v1::UnreadCountResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "unread_count", async move {
            let consistency = check_consistency(request.consistency)?;
            let unread = node.unread_count(&token, consistency).await?;
            Ok(v1::UnreadCountResponse {
                unread_count: count(unread),
            })
        })
        .await
    }

    async fn fetch_away(
        &self,
        request: Request<v1::FetchAwayRequest>,
    ) -> Result<Response<v1::FetchAwayResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "fetch_away", async move {
            let fetched = node
                .fetch_away(&token, request.limit, &request.idempotency_key)
                .await?;
            Ok(v1::FetchAwayResponse {
                messages: fetched.messages.into_iter().map(message).collect(),
                remaining: count(fetched.remaining),
            })
        })
        .await
    }

    async fn list_messages(
        &self,
        request: Request<v1::ListMessagesRequest>,
    ) -> Result<Response<v1::ListMessagesResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "list_messages", async move {
            let consistency = check_consistency(request.consistency)?;
            let page = node
                .list_messages(
                    &token,
                    request.offset,
                    request.limit,
                    &request.with_user,
                    consistency,
                )
                .await?;
            Ok(v1::ListMessagesResponse {
                messages: page.messages.into_iter().map(message).collect(),
                total_count: count(page.total_count),
            })
        })
        .await
    }

    async fn delete_messages(
        &self,
        request: Request<v1::DeleteMessagesRequest>,
    ) -> Result<Response<v1::DeleteMessagesResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "delete_messages", async move {
            let deleted = node
                .delete_messages(&token, &request.ids, &request.idempotency_key)
                .await?;
            Ok(v1::DeleteMessagesResponse {
                deleted_count: count(deleted),
            })
        })
        .await
    }

    async fn list_accounts(
        &self,
        request: Request<v1::ListAccountsRequest>,
    ) -> Result<Response<v1::ListAccountsResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "list_accounts", async move {
            let consistency = check_consistency(request.consistency)?;
            let page = node
                .list_accounts(
                    &token,
                    &request.pattern,
                    request.offset,
                    request.limit,
                    consistency,
                )
                .await?;
            Ok(v1::ListAccountsResponse {
                accounts: page.accounts.into_iter().map(account).collect(),
                total_count: count(page.total_count),
            })
        })
        .await
    }

    async fn delete_account(
        &self,
        request: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        let node = &self.node;
        let token = bearer(request.metadata());
        let request = request.into_inner();
        observe(node, "delete_account", async move {
            let deleted = node
                .delete_account(&token, &request.password, &request.idempotency_key)
                .await?;
            Ok(v1::DeleteAccountResponse {
                deleted_messages: count(deleted),
            })
        })
        .await
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let node = Arc::clone(&self.node);
        let token = bearer(request.metadata());
        let after_id = request.into_inner().after_id;
        let subscription = observe(&self.node, "subscribe", async move {
            crate::subscription::subscribe(node, &token, after_id).await
        })
        .await?
        .into_inner();
        let stream = tokio_stream::wrappers::ReceiverStream::new(subscription)
            .map(|item| item.map(message).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cluster_info(
        &self,
        _request: Request<v1::ClusterInfoRequest>,
    ) -> Result<Response<v1::ClusterInfoResponse>, Status> {
        let node = &self.node;
        observe(node, "cluster_info", async move {
            let view = node.cluster_view();
            let (leader_id, leader_address) = view.leader.clone().unwrap_or_default();
            Ok(v1::ClusterInfoResponse {
                members: view
                    .members
                    .iter()
                    .map(|m| v1::Member {
                        id: m.id,
                        address: m.address.clone(),
                        role: if m.voter {
                            v1::MemberRole::Voter
                        } else {
                            v1::MemberRole::Learner
                        } as i32,
                        reachable: m.reachable,
                        applied_index: m.matched_index,
                    })
                    .collect(),
                leader_id,
                leader_address,
                term: view.term,
                commit_index: view.applied_index,
                node_id: view.node_id,
                alarms: node.state_alarms().lines(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer(&metadata), "");
        metadata.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&metadata), "abc");
        metadata.insert("authorization", "bearer  def ".parse().unwrap());
        assert_eq!(bearer(&metadata), "def");
        metadata.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&metadata), "");
    }
}
