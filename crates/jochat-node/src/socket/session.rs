//! One socket connection's session: the prototype's operations on [`Node`] calls.
//!
//! A log-in binds the connection to a JoChat session (its token stays on the node, in this
//! connection's memory); log-out, account deletion and the connection ending unbind it and
//! revoke the session. Checks run in the prototype's order with its texts
//! (`legacy/SOCKET.md` section 2, kept in [`text`]); conditions it never checked (a name
//! JoChat could not sign up, oversized fields, a cluster without a leader) answer "error"
//! with JoChat's own message naming the field and the rule.
//!
//! Two rules meet at log-in. The prototype allowed one connection per account: on one node
//! that still holds, through [`Registry`] (a second log-in while a connection of this node
//! holds the name answers "This user is already logged in."). JoChat allows one session per
//! account: a log-in anywhere else (another node's socket front end, `jochat.v1`) opens a
//! new session and revokes this one; this connection then answers its next request as
//! logged out and lets go of the name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jochat_core::store::MessageRecord;
use jochat_core::{ChatError, Pattern};

use super::protocol::{Limit, Op, Reply, Request, WireMessage};
use crate::error::NodeError;
use crate::node::{Consistency, Node};
use crate::service::observed;

/// The socket prototype's reply texts (`legacy/SOCKET.md` section 2).
pub mod text {
    /// signup with a field missing or empty.
    pub const SIGNUP_INVALID: &str = "Invalid data";
    /// signup with a name taken.
    pub const SIGNUP_TAKEN: &str = "Username taken";
    /// signup done.
    pub const SIGNUP_OK: &str = "Signup successful";
    /// login with a field missing or empty.
    pub const LOGIN_INVALID: &str = "Invalid login data.";
    /// login of a name a connection holds.
    pub const LOGIN_HELD: &str = "This user is already logged in.";
    /// login on a connection that holds another name.
    pub const LOGIN_OTHER: &str = "Client is already logged in with another user.";
    /// login of a name that is no account.
    pub const LOGIN_UNKNOWN: &str = "Username not found.";
    /// login with the wrong password.
    pub const LOGIN_WRONG: &str = "Wrong password.";
    /// login done.
    pub const LOGIN_OK: &str = "Login successful.";
    /// Most operations without a log-in.
    pub const NOT_LOGGED_IN: &str = "You are not currently logged in.";
    /// delete_messages without a log-in (the prototype's text has no "currently").
    pub const DELETE_NOT_LOGGED_IN: &str = "You are not logged in.";
    /// logout done.
    pub const LOGOUT_OK: &str = "You have been logged out.";
    /// count_unread done.
    pub const COUNT_OK: &str = "Count of away messages.";
    /// send_message with a field missing or empty.
    pub const SEND_INVALID: &str = "Sender, recipient, and content required.";
    /// send_message as someone else (or without a log-in).
    pub const SEND_NOT_SENDER: &str = "You are not logged in as this sender.";
    /// send_message to a name that is no account.
    pub const SEND_NO_RECIPIENT: &str = "Recipient does not exist.";
    /// send_message done.
    pub const SEND_OK: &str = "Message stored.";
    /// fetch_away_msgs with no limit (or 0).
    pub const NO_LIMIT: &str = "No limit specified.";
    /// list_accounts without a pattern.
    pub const NO_PATTERN: &str = "No pattern provided.";
    /// list_accounts with start or count not integers.
    pub const BAD_PAGINATION: &str = "Invalid pagination parameters.";
    /// delete_messages without ids.
    pub const NO_IDS: &str = "No valid message IDs provided.";
    /// delete_account done.
    pub const ACCOUNT_DELETED: &str =
        "Account has been deleted. All associated messages are removed.";
    /// reset_db done.
    pub const RESET_OK: &str = "Database reset.";
    /// An unknown operation.
    pub const UNKNOWN: &str = "Unknown action";
}

/// Messages a poll or a fetch returns at most (JoChat's page limit); the binary format
/// carries at most 255 of a poll in any case.
const LIST_MAX: u32 = 1000;

/// Which connection of this node holds each account name (folded to lower case).
#[derive(Default)]
pub struct Registry {
    held: Mutex<HashMap<String, u64>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held
            .lock()
            .expect("the registry's mutex is never held across a panic")
    }

    /// Takes `name` for `connection`; false when a connection holds it already.
    fn take(&self, name: &str, connection: u64) -> bool {
        let mut held = self.lock();
        if held.contains_key(name) {
            return false;
        }
        held.insert(name.to_owned(), connection);
        true
    }

    /// Whether a connection holds `name`.
    fn is_held(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Lets go of `name` if `connection` holds it.
    fn release(&self, name: &str, connection: u64) {
        let mut held = self.lock();
        if held.get(name) == Some(&connection) {
            held.remove(name);
        }
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The account a connection is logged in as.
struct Bound {
    /// The name folded to lower case (the registry's key).
    folded: String,
    /// The session token; only its digest is stored anywhere else.
    token: String,
}

/// What the connection does after a request's replies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Reads the next request.
    Continue,
    /// Closes (the prototype's `fetch_away_msgs` without a limit).
    Close,
}

/// One connection's session.
pub struct Session {
    node: Arc<Node>,
    registry: Arc<Registry>,
    connection: u64,
    bound: Option<Bound>,
}

/// A text field the prototype treats as missing when absent or empty.
fn given(field: Option<String>) -> Option<String> {
    field.filter(|value| !value.is_empty())
}

/// JoChat's message for a refusal the prototype had no text for (internal details stay in
/// the node's log).
fn message(error: NodeError) -> String {
    tonic::Status::from(error).message().to_owned()
}

fn wire(messages: Vec<MessageRecord>) -> Vec<WireMessage> {
    messages
        .into_iter()
        .map(|m| WireMessage {
            id: u64::try_from(m.id.0).unwrap_or(0),
            sender: m.sender.to_string(),
            content: m.content,
        })
        .collect()
}

impl Session {
    /// A session for connection number `connection`, logged in as nobody.
    pub fn new(node: Arc<Node>, registry: Arc<Registry>, connection: u64) -> Self {
        Self {
            node,
            registry,
            connection,
            bound: None,
        }
    }

    /// Runs one node operation as the socket front end does: observed (span, log, metrics)
    /// and forwarded to the leader when this node is a follower.
    async fn call<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, NodeError>>,
    ) -> Result<T, NodeError> {
        observed(&self.node, operation, self.node.forwarding(work)).await
    }

    /// Forgets the log-in (the session is already gone, or is being revoked).
    fn unbind(&mut self) {
        if let Some(bound) = self.bound.take() {
            self.registry.release(&bound.folded, self.connection);
        }
    }

    /// The token of the log-in, if any.
    fn token(&self) -> Option<String> {
        self.bound.as_ref().map(|b| b.token.clone())
    }

    /// A refusal of a session-bound operation: an ended session (revoked by a log-in
    /// elsewhere, a reset, expiry) unbinds the connection and answers `logged_out`.
    fn refused(&mut self, error: NodeError, logged_out: &str) -> String {
        if error.is_unauthenticated() {
            self.unbind();
            return logged_out.to_owned();
        }
        message(error)
    }

    /// Answers one request; more than one reply only for `fetch_away_msgs` with limit 0, as
    /// the prototype did.
    pub async fn handle(&mut self, request: Request) -> (Vec<Reply>, After) {
        let reply = match request {
            Request::Signup { username, password } => self.sign_up(username, password).await,
            Request::Login { username, password } => self.log_in(username, password).await,
            Request::Logout => self.log_out().await,
            Request::CountUnread => self.count_unread().await,
            Request::SendMessage {
                sender,
                recipient,
                content,
            } => self.send(sender, recipient, content).await,
            Request::Poll => self.poll().await,
            Request::FetchAway { limit } => return self.fetch_away(limit).await,
            Request::ListAccounts {
                pattern,
                pagination,
            } => self.list_accounts(pattern, pagination).await,
            Request::DeleteMessages { ids } => self.delete_messages(ids).await,
            Request::DeleteAccount => self.delete_account().await,
            Request::ResetDb => self.reset().await,
            Request::Unknown => Reply::Status {
                op: Op::Signup,
                result: Err(text::UNKNOWN.into()),
            },
        };
        (vec![reply], After::Continue)
    }

    async fn sign_up(&mut self, username: Option<String>, password: Option<String>) -> Reply {
        let (Some(username), Some(password)) = (given(username), given(password)) else {
            return Reply::Status {
                op: Op::Signup,
                result: Err(text::SIGNUP_INVALID.into()),
            };
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.signup",
                node.sign_up_prototype(&username, &password),
            )
            .await;
        Reply::Status {
            op: Op::Signup,
            result: match result {
                Ok(_) => Ok(text::SIGNUP_OK.into()),
                Err(NodeError::Chat(ChatError::AlreadyExists { .. })) => {
                    Err(text::SIGNUP_TAKEN.into())
                }
                Err(error) => Err(message(error)),
            },
        }
    }

    async fn log_in(&mut self, username: Option<String>, password: Option<String>) -> Reply {
        let refuse = |text: String| Reply::Count {
            op: Op::Login,
            result: Err(text),
        };
        let (Some(username), Some(password)) = (given(username), given(password)) else {
            return refuse(text::LOGIN_INVALID.into());
        };
        let folded = username.to_ascii_lowercase();
        if self.bound.is_some() {
            // The prototype's order: the name held by any connection (this one included)
            // first, then this connection holding another name.
            return refuse(
                if self.registry.is_held(&folded) {
                    text::LOGIN_HELD
                } else {
                    text::LOGIN_OTHER
                }
                .into(),
            );
        }
        if !self.registry.take(&folded, self.connection) {
            return refuse(text::LOGIN_HELD.into());
        }
        let node = Arc::clone(&self.node);
        let exists = self
            .call(
                "socket.login",
                node.account_exists(&username, Consistency::Linearizable),
            )
            .await;
        let result = match exists {
            Ok(false) => Err(text::LOGIN_UNKNOWN.to_owned()),
            Err(error) => Err(message(error)),
            Ok(true) => match self
                .call("socket.login", node.log_in_prototype(&username, &password))
                .await
            {
                Ok(session) => Ok(session),
                Err(NodeError::Chat(ChatError::WrongCredentials)) => {
                    Err(text::LOGIN_WRONG.to_owned())
                }
                Err(error) => Err(message(error)),
            },
        };
        match result {
            Ok(session) => {
                self.bound = Some(Bound {
                    folded,
                    token: session.token.as_str().to_owned(),
                });
                Reply::Count {
                    op: Op::Login,
                    result: Ok((session.unread_count, text::LOGIN_OK.into())),
                }
            }
            Err(text) => {
                self.registry.release(&folded, self.connection);
                refuse(text)
            }
        }
    }

    async fn log_out(&mut self) -> Reply {
        let Some(token) = self.token() else {
            return Reply::Status {
                op: Op::Logout,
                result: Err(text::NOT_LOGGED_IN.into()),
            };
        };
        let node = Arc::clone(&self.node);
        let result = match self.call("socket.logout", node.log_out(&token, "")).await {
            // Ended already (a log-in elsewhere, a reset): logged out all the same.
            Err(error) if error.is_unauthenticated() => Ok(()),
            other => other,
        };
        Reply::Status {
            op: Op::Logout,
            result: match result {
                Ok(()) => {
                    self.unbind();
                    Ok(text::LOGOUT_OK.into())
                }
                Err(error) => Err(message(error)),
            },
        }
    }

    async fn count_unread(&mut self) -> Reply {
        let Some(token) = self.token() else {
            return Reply::Count {
                op: Op::CountUnread,
                result: Err(text::NOT_LOGGED_IN.into()),
            };
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.count_unread",
                node.unread_count(&token, Consistency::Linearizable),
            )
            .await;
        Reply::Count {
            op: Op::CountUnread,
            result: match result {
                Ok(count) => Ok((count, text::COUNT_OK.into())),
                Err(error) => Err(self.refused(error, text::NOT_LOGGED_IN)),
            },
        }
    }

    async fn send(
        &mut self,
        sender: Option<String>,
        recipient: Option<String>,
        content: Option<String>,
    ) -> Reply {
        let refuse = |text: String| Reply::Status {
            op: Op::SendMessage,
            result: Err(text),
        };
        let (Some(sender), Some(recipient), Some(content)) =
            (given(sender), given(recipient), given(content))
        else {
            return refuse(text::SEND_INVALID.into());
        };
        let token = match &self.bound {
            Some(bound) if bound.folded == sender.to_ascii_lowercase() => bound.token.clone(),
            _ => return refuse(text::SEND_NOT_SENDER.into()),
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.send_message",
                node.send_message(&token, &recipient, content, ""),
            )
            .await;
        match result {
            Ok(_) => Reply::Status {
                op: Op::SendMessage,
                result: Ok(text::SEND_OK.into()),
            },
            Err(NodeError::Chat(ChatError::NotFound { .. })) => {
                refuse(text::SEND_NO_RECIPIENT.into())
            }
            Err(error) => {
                let text = self.refused(error, text::SEND_NOT_SENDER);
                refuse(text)
            }
        }
    }

    async fn poll(&mut self) -> Reply {
        let Some(token) = self.token() else {
            return Reply::Poll(Err(text::NOT_LOGGED_IN.into()));
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.send_messages_to_client",
                node.delivered_messages(&token, LIST_MAX, Consistency::Linearizable),
            )
            .await;
        Reply::Poll(match result {
            Ok(messages) => Ok(wire(messages)),
            Err(error) => Err(self.refused(error, text::NOT_LOGGED_IN)),
        })
    }

    async fn fetch_away(&mut self, limit: Limit) -> (Vec<Reply>, After) {
        let Some(token) = self.token() else {
            return (
                vec![Reply::Fetched(Err(text::NOT_LOGGED_IN.into()))],
                After::Continue,
            );
        };
        let no_limit = || Reply::Fetched(Err(text::NO_LIMIT.into()));
        let limit = match limit {
            // The prototype answered, then failed on the missing limit and dropped the
            // connection.
            Limit::Missing => return (vec![no_limit()], After::Close),
            // It answered the error, then an empty list.
            Limit::Zero => {
                return (
                    vec![no_limit(), Reply::Fetched(Ok(Vec::new()))],
                    After::Continue,
                )
            }
            Limit::Unlimited => LIST_MAX,
            Limit::Count(count) => u32::try_from(count).map_or(LIST_MAX, |c| c.min(LIST_MAX)),
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.fetch_away_msgs",
                node.fetch_away(&token, i64::from(limit), ""),
            )
            .await;
        let reply = Reply::Fetched(match result {
            Ok(fetched) => Ok(wire(fetched.messages)),
            Err(error) => Err(self.refused(error, text::NOT_LOGGED_IN)),
        });
        (vec![reply], After::Continue)
    }

    async fn list_accounts(
        &mut self,
        pattern: Option<String>,
        pagination: Option<(i64, i64)>,
    ) -> Reply {
        let Some(pattern) = given(pattern) else {
            return Reply::Accounts(Err(text::NO_PATTERN.into()));
        };
        let Some((start, count)) = pagination else {
            return Reply::Accounts(Err(text::BAD_PAGINATION.into()));
        };
        // SQLite's rules, as the prototype's query had them: a negative offset is 0 and a
        // negative count no limit (here JoChat's page limit).
        let start = start.max(0);
        let count = if count < 0 {
            i64::from(LIST_MAX)
        } else {
            count.min(i64::from(LIST_MAX))
        };
        let pattern = match Pattern::like(&pattern) {
            Ok(pattern) => pattern,
            Err(error) => return Reply::Accounts(Err(message(error.into()))),
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.list_accounts",
                node.list_accounts_anonymous(pattern, start, count, Consistency::Linearizable),
            )
            .await;
        Reply::Accounts(match result {
            Ok(page) => Ok(page
                .accounts
                .into_iter()
                .map(|a| (u64::try_from(a.id.0).unwrap_or(0), a.username.to_string()))
                .collect()),
            Err(error) => Err(message(error)),
        })
    }

    async fn delete_messages(&mut self, ids: Option<Vec<i64>>) -> Reply {
        let Some(token) = self.token() else {
            return Reply::Deleted(Err(text::DELETE_NOT_LOGGED_IN.into()));
        };
        let Some(mut ids) = ids else {
            return Reply::Deleted(Err(text::NO_IDS.into()));
        };
        // Ids that name no message are ignored, as the prototype's `IN (...)` did.
        ids.retain(|id| *id > 0);
        ids.sort_unstable();
        ids.dedup();
        let deleted =
            |count: u64| Reply::Deleted(Ok((count, format!("Deleted {count} messages."))));
        if ids.is_empty() {
            return deleted(0);
        }
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.delete_messages",
                node.delete_messages(&token, &ids, ""),
            )
            .await;
        match result {
            Ok(count) => deleted(count),
            Err(error) => Reply::Deleted(Err(self.refused(error, text::DELETE_NOT_LOGGED_IN))),
        }
    }

    async fn delete_account(&mut self) -> Reply {
        let Some(token) = self.token() else {
            return Reply::Status {
                op: Op::DeleteAccount,
                result: Err(text::NOT_LOGGED_IN.into()),
            };
        };
        let node = Arc::clone(&self.node);
        let result = self
            .call(
                "socket.delete_account",
                node.delete_account_by_session(&token),
            )
            .await;
        Reply::Status {
            op: Op::DeleteAccount,
            result: match result {
                Ok(_) => {
                    self.unbind();
                    Ok(text::ACCOUNT_DELETED.into())
                }
                Err(error) => Err(self.refused(error, text::NOT_LOGGED_IN)),
            },
        }
    }

    async fn reset(&mut self) -> Reply {
        let node = Arc::clone(&self.node);
        let result = self.call("socket.reset_db", node.reset_anonymous()).await;
        Reply::Status {
            op: Op::ResetDb,
            result: result.map(|()| text::RESET_OK.to_owned()).map_err(message),
        }
    }

    /// Ends the session as the connection closes: the name is free on this node at once, and
    /// the session is revoked in the background (forwarded to the leader like any write).
    pub fn close(mut self) {
        let Some(bound) = self.bound.take() else {
            return;
        };
        self.registry.release(&bound.folded, self.connection);
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            let revoke = node.log_out(&bound.token, "");
            match observed(&node, "socket.disconnect", node.forwarding(revoke)).await {
                Ok(()) => {}
                Err(error) if error.is_unauthenticated() => {}
                Err(error) => {
                    tracing::info!(%error, "the session of a closed socket connection was not revoked; it ends when it expires");
                }
            }
        });
    }
}
