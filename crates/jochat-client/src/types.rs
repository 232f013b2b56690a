//! The values the client's methods take and return.

use std::fmt;

use jochat_proto::v1;

use crate::error::ClientError;

/// A session token, as returned by [`crate::ChatServerClient::log_in`]. Treat it as a
/// password: its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// The token text (to store, for example, in a file only its owner can read).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SessionToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A created account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUp {
    /// The account's id.
    pub user_id: i64,
    /// The name as given.
    pub username: String,
}

/// An open session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// The session token; pass it to every other call.
    pub token: SessionToken,
    /// The account's name as given at sign-up.
    pub username: String,
    /// The account's id.
    pub user_id: i64,
    /// Messages that arrived while the account was away.
    pub unread_count: u64,
    /// When the session expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Whether a message has reached its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageStatus {
    /// The recipient had a live session, or has fetched it.
    Delivered,
    /// Sent while the recipient was away; unread until fetched.
    Away,
}

impl MessageStatus {
    /// `"delivered"` or `"away"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Away => "away",
        }
    }

    fn from_wire(raw: i32) -> Result<Self, ClientError> {
        match v1::MessageStatus::try_from(raw) {
            Ok(v1::MessageStatus::Delivered) => Ok(Self::Delivered),
            Ok(v1::MessageStatus::Away) => Ok(Self::Away),
            _ => Err(ClientError::InvalidResponse(format!(
                "unknown message status {raw}"
            ))),
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored message's id, time and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMessage {
    /// The message id.
    pub id: i64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Delivered at once, or waiting while the recipient is away.
    pub status: MessageStatus,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id; ids increase in the order messages were accepted.
    pub id: i64,
    /// Who sent it.
    pub sender: String,
    /// Who it is for.
    pub recipient: String,
    /// The text.
    pub content: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Delivered or away.
    pub status: MessageStatus,
}

impl TryFrom<v1::Message> for Message {
    type Error = ClientError;

    fn try_from(wire: v1::Message) -> Result<Self, ClientError> {
        Ok(Self {
            id: wire.id,
            sender: wire.sender,
            recipient: wire.recipient,
            content: wire.content,
            timestamp_ms: wire.timestamp_ms,
            status: MessageStatus::from_wire(wire.status)?,
        })
    }
}

pub(crate) fn messages(wire: Vec<v1::Message>) -> Result<Vec<Message>, ClientError> {
    wire.into_iter().map(Message::try_from).collect()
}

pub(crate) fn status_of(raw: i32) -> Result<MessageStatus, ClientError> {
    MessageStatus::from_wire(raw)
}

/// Away messages just fetched (and now marked delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwayMessages {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Away messages still waiting.
    pub remaining: u64,
}

/// A page of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    /// Newest first. May hold fewer than asked when the server's reply size limit is reached:
    /// advance the offset by the number received.
    pub messages: Vec<Message>,
    /// Messages in the whole listing.
    pub total_count: u64,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its id.
    pub id: i64,
    /// Its name as given at sign-up.
    pub username: String,
}

/// A page of accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPage {
    /// Ordered by name, ignoring case.
    pub accounts: Vec<Account>,
    /// Accounts matching in all.
    pub total_count: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadConsistency {
    /// Up to date with every acknowledged write (served by the leader).
    #[default]
    Linearizable,
    /// From whichever server answers; may lag behind the leader.
    Stale,
}

impl ReadConsistency {
    pub(crate) fn wire(self) -> i32 {
        match self {
            Self::Linearizable => v1::ReadConsistency::Linearizable as i32,
            Self::Stale => v1::ReadConsistency::Stale as i32,
        }
    }
}

/// Which part of an inbox to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxQuery {
    /// Messages to skip.
    pub offset: u64,
    /// Messages to return, up to 1000; 0 for the server's default (50).
    pub limit: u32,
    /// Only the conversation with this user, both directions.
    pub with_user: Option<String>,
    /// How fresh.
    pub consistency: ReadConsistency,
}

impl InboxQuery {
    /// The first page of the whole inbox, at the server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skips the first `offset` messages.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Returns at most `limit` messages (0 for the server's default).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Lists only the conversation with `username`, in both directions.
    #[must_use]
    pub fn with_user(mut self, username: impl Into<String>) -> Self {
        self.with_user = Some(username.into());
        self
    }

    /// Reads at this consistency.
    #[must_use]
    pub fn consistency(mut self, consistency: ReadConsistency) -> Self {
        self.consistency = consistency;
        self
    }
}

/// Which accounts to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountQuery {
    /// `*` any run of characters, `?` one; without wildcards, a substring; empty for all.
    pub pattern: String,
    /// Accounts to skip.
    pub offset: u64,
    /// Accounts to return, up to 1000; 0 for the server's default (50).
    pub limit: u32,
    /// How fresh.
    pub consistency: ReadConsistency,
}

impl AccountQuery {
    /// The first page of the accounts matching `pattern`, at the server's default page size.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            ..Self::default()
        }
    }

    /// Skips the first `offset` accounts.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Returns at most `limit` accounts (0 for the server's default).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Reads at this consistency.
    #[must_use]
    pub fn consistency(mut self, consistency: ReadConsistency) -> Self {
        self.consistency = consistency;
        self
    }
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its server id.
    pub id: u64,
    /// `host:port`.
    pub address: String,
    /// Voter or learner.
    pub role: MemberRole,
    /// Whether the answering node can reach it.
    pub reachable: bool,
    /// The last log index it applied, as far as the answering node knows.
    pub applied_index: u64,
}

/// A member's part in consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberRole {
    /// Votes and counts toward the majority.
    Voter,
    /// Receives the log but does not vote.
    Learner,
}

impl MemberRole {
    /// `"voter"` or `"learner"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voter => "voter",
            Self::Learner => "learner",
        }
    }

    fn from_wire(raw: i32) -> Result<Self, ClientError> {
        match v1::MemberRole::try_from(raw) {
            Ok(v1::MemberRole::Voter) => Ok(Self::Voter),
            Ok(v1::MemberRole::Learner) => Ok(Self::Learner),
            _ => Err(ClientError::InvalidResponse(format!(
                "unknown member role {raw}"
            ))),
        }
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The node that answered.
    pub node_id: u64,
    /// The leader, if one is known.
    pub leader_id: Option<u64>,
    /// The leader's address, if known.
    pub leader_address: Option<String>,
    /// The current term.
    pub term: u64,
    /// The last log index applied on the answering node (trails the commit index briefly).
    pub commit_index: u64,
    /// Every member.
    pub members: Vec<Member>,
    /// Alarms the answering node knows of, one line each (a member whose chat state differs
    /// from the majority's); empty when all is well.
    pub alarms: Vec<String>,
}

impl TryFrom<v1::ClusterInfoResponse> for ClusterInfo {
    type Error = ClientError;

    fn try_from(wire: v1::ClusterInfoResponse) -> Result<Self, ClientError> {
        let members = wire
            .members
            .into_iter()
            .map(|m| {
                Ok(Member {
                    id: m.id,
                    address: m.address,
                    role: MemberRole::from_wire(m.role)?,
                    reachable: m.reachable,
                    applied_index: m.applied_index,
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self {
            node_id: wire.node_id,
            // The wire says "no leader known" with 0 and an empty address.
            leader_id: (wire.leader_id != 0).then_some(wire.leader_id),
            leader_address: (!wire.leader_address.is_empty()).then_some(wire.leader_address),
            term: wire.term,
            commit_index: wire.commit_index,
            members,
            alarms: wire.alarms,
        })
    }
}

pub(crate) fn non_negative(field: &str, value: i64) -> Result<u64, ClientError> {
    u64::try_from(value)
        .map_err(|_| ClientError::InvalidResponse(format!("{field} is negative: {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_in_debug_output() {
        let token = SessionToken::from("secret-token".to_owned());
        assert_eq!(format!("{token:?}"), "SessionToken(<redacted>)");
        assert_eq!(token.as_str(), "secret-token");
    }

    #[test]
    fn queries_are_built_with_setters() {
        let query = InboxQuery::new()
            .offset(20)
            .limit(10)
            .with_user("bob")
            .consistency(ReadConsistency::Stale);
        assert_eq!(
            query,
            InboxQuery {
                offset: 20,
                limit: 10,
                with_user: Some("bob".into()),
                consistency: ReadConsistency::Stale,
            }
        );
        let query = AccountQuery::new("al*").offset(5).limit(1);
        assert_eq!(query.pattern, "al*");
        assert_eq!((query.offset, query.limit), (5, 1));
        assert_eq!(query.consistency, ReadConsistency::Linearizable);
        assert_eq!(
            InboxQuery::new().limit,
            0,
            "0 asks for the server's default"
        );
    }

    #[test]
    fn cluster_info_maps_the_no_leader_sentinels_and_refuses_unknown_roles() {
        let member = |role: v1::MemberRole| v1::Member {
            id: 2,
            address: "127.0.0.1:5002".into(),
            role: role as i32,
            reachable: true,
            applied_index: 9,
        };
        let wire = v1::ClusterInfoResponse {
            members: vec![member(v1::MemberRole::Learner)],
            leader_id: 0,
            leader_address: String::new(),
            term: 3,
            commit_index: 9,
            node_id: 2,
            alarms: vec!["an alarm".into()],
        };
        let info = ClusterInfo::try_from(wire.clone()).unwrap();
        assert_eq!(info.alarms, ["an alarm"]);
        assert_eq!((info.leader_id, info.leader_address), (None, None));
        assert_eq!(info.members[0].role, MemberRole::Learner);
        let unknown = v1::ClusterInfoResponse {
            members: vec![member(v1::MemberRole::Unspecified)],
            ..wire
        };
        assert!(matches!(
            ClusterInfo::try_from(unknown),
            Err(ClientError::InvalidResponse(_))
        ));
    }

    #[test]
    fn unknown_statuses_are_invalid_responses() {
        assert!(status_of(99).is_err());
        assert_eq!(
            status_of(v1::MessageStatus::Away as i32).unwrap(),
            MessageStatus::Away
        );
    }
}
