//! The storage traits the state machine and the queries are written against, and the rows
//! they exchange. `jochat-node` implements them on SQLite; [`crate::MemoryStore`] in memory.

use serde::{Deserialize, Serialize};

use crate::command::Outcome;
use crate::error::StoreError;
use crate::pattern::Pattern;
use crate::types::{IdempotencyKey, MessageId, Page, TokenDigest, UserId, Username};

/// A row of `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Never reused.
    pub id: UserId,
    /// As given at sign-up; unique ignoring case.
    pub username: Username,
    /// argon2id PHC string.
    pub password_hash: String,
    /// When the account was created.
    pub created_at_ms: i64,
}

/// A row of `sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the token; the token itself is never stored.
    pub token_digest: TokenDigest,
    /// Whose session.
    pub user_id: UserId,
    /// When it was opened.
    pub created_at_ms: i64,
    /// When it stops being valid.
    pub expires_at_ms: i64,
}

/// A row of `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Never reused; increases in commit order.
    pub id: MessageId,
    /// The sender's name as given at sign-up.
    pub sender: Username,
    /// The recipient's name as given at sign-up.
    pub recipient: Username,
    /// The text.
    pub content: String,
    /// When it was sent.
    pub timestamp_ms: i64,
    /// `to_deliver` in SQLite: true once delivered, false while away.
    pub delivered: bool,
}

/// An account as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The account's id.
    pub id: UserId,
    /// Its name as given at sign-up.
    pub username: Username,
}

/// The remembered outcome of a write that carried an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Who may replay it (see [`crate::Action::idempotency_scope`]).
    pub scope: String,
    /// The action's kind.
    pub kind: String,
    /// What the first application returned.
    pub outcome: Outcome,
    /// The first application's command time.
    pub at_ms: i64,
}

/// The highest ids handed out so far; the next are one more. Kept apart from the tables so
/// that deleting the newest row never lets an id be handed out twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastIds {
    /// Highest user id handed out.
    pub user: i64,
    /// Highest message id handed out.
    pub message: i64,
}

/// Everything a store holds, in a canonical order: users by id, sessions by digest, messages
/// by id, remembered outcomes by key. Two replicas at the same applied index have equal dumps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDump {
    /// Every user.
    pub users: Vec<UserRecord>,
    /// Every session.
    pub sessions: Vec<SessionRecord>,
    /// Every message.
    pub messages: Vec<MessageRecord>,
    /// Every remembered outcome, with its key.
    pub remembered: Vec<(IdempotencyKey, Remembered)>,
    /// The id counters.
    pub last_ids: LastIds,
}

/// Read access to chat state. Implementations must answer from one consistent view.
pub trait ChatRead {
    /// The user with this name, ignoring case.
    fn user_by_name(&self, name: &Username) -> Result<Option<UserRecord>, StoreError>;
    /// The user with this id.
    fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// The session with this token digest, expired or not.
    fn session(&self, digest: &TokenDigest) -> Result<Option<SessionRecord>, StoreError>;
    /// Whether `user` has a session that has not expired at `at_ms`.
    fn has_live_session(&self, user: UserId, at_ms: i64) -> Result<bool, StoreError>;
    /// How many away messages `recipient` has.
    fn away_count(&self, recipient: &Username) -> Result<u64, StoreError>;
    /// The `limit` oldest away messages of `recipient`, oldest first.
    fn away_messages(
        &self,
        recipient: &Username,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError>;
    /// The `limit` oldest delivered messages of `recipient`, oldest first.
    fn delivered_messages(
        &self,
        recipient: &Username,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError>;
    /// The message with this id, if it exists.
    fn message_by_id(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError>;
    /// Up to `limit` messages addressed to `recipient` with ids above `after`, oldest first
    /// (what a resumed subscription has missed).
    fn messages_after(
        &self,
        recipient: &Username,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError>;
    /// A page of `owner`'s inbox, newest first, with the total: messages addressed to `owner`;
    /// with `with`, the conversation between the two in both directions.
    fn inbox(
        &self,
        owner: &Username,
        with: Option<&Username>,
        page: Page,
    ) -> Result<(Vec<MessageRecord>, u64), StoreError>;
    /// A page of the accounts matching `pattern`, ordered by name ignoring case, with the total.
    fn accounts(
        &self,
        pattern: &Pattern,
        page: Page,
    ) -> Result<(Vec<AccountRecord>, u64), StoreError>;
    /// The remembered outcome under `key`.
    fn remembered(&self, key: &IdempotencyKey) -> Result<Option<Remembered>, StoreError>;
    /// How many outcomes are remembered, and the oldest one's time (`None` when there is none).
    fn remembered_span(&self) -> Result<(u64, Option<i64>), StoreError>;
    /// The id counters.
    fn last_ids(&self) -> Result<LastIds, StoreError>;
    /// Everything, in canonical order (for tests and replica comparison; not for hot paths).
    fn dump(&self) -> Result<StateDump, StoreError>;
}

/// Write access to chat state, used only by [`crate::apply`].
///
/// Each method is one primitive change. Implementations run a whole command inside one
/// transaction (or equivalent), so that a command that fails part-way changes nothing.
pub trait ChatStore: ChatRead {
    /// Adds a user; the caller checked that the name is free.
    fn insert_user(&mut self, user: &UserRecord) -> Result<(), StoreError>;
    /// Removes a user row.
    fn delete_user(&mut self, id: UserId) -> Result<(), StoreError>;
    /// Adds a session.
    fn insert_session(&mut self, session: &SessionRecord) -> Result<(), StoreError>;
    /// Removes one session; whether it existed.
    fn delete_session(&mut self, digest: &TokenDigest) -> Result<bool, StoreError>;
    /// Removes every session of `user`.
    fn delete_sessions_of(&mut self, user: UserId) -> Result<(), StoreError>;
    /// Removes every session expired at `at_ms`.
    fn delete_expired_sessions(&mut self, at_ms: i64) -> Result<(), StoreError>;
    /// Adds a message.
    fn insert_message(&mut self, message: &MessageRecord) -> Result<(), StoreError>;
    /// Marks these messages delivered.
    fn mark_delivered(&mut self, ids: &[MessageId]) -> Result<(), StoreError>;
    /// Deletes those of `ids` addressed to `recipient`; how many.
    fn delete_inbox_messages(
        &mut self,
        recipient: &Username,
        ids: &[MessageId],
    ) -> Result<u64, StoreError>;
    /// Deletes every message `user` sent or received; how many.
    fn delete_messages_of(&mut self, user: &Username) -> Result<u64, StoreError>;
    /// Remembers an outcome under `key`.
    fn remember(&mut self, key: &IdempotencyKey, entry: &Remembered) -> Result<(), StoreError>;
    /// Forgets outcomes first applied before `before_ms`, then the oldest ones until at most
    /// `keep_max` remain.
    fn forget_remembered(&mut self, before_ms: i64, keep_max: u64) -> Result<(), StoreError>;
    /// Moves the id counters from `from` (what [`ChatRead::last_ids`] returned in this
    /// command) to `to`; a store may write only the counters that differ.
    fn set_last_ids(&mut self, from: LastIds, to: LastIds) -> Result<(), StoreError>;
    /// Removes every user, session, message and remembered outcome; keeps the id counters.
    fn clear_chat_state(&mut self) -> Result<(), StoreError>;
}
