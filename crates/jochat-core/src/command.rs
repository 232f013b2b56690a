//! The replicated command: the only way chat state changes.
//!
//! A [`Command`] is decided completely by the node that accepts the request: the time, the
//! finished argon2id hash, the session token's digest. Applying it (see [`crate::apply`]) is
//! then a pure function of the state and the command, so every replica that applies the same
//! log holds the same rows.

use serde::{Deserialize, Serialize};

use crate::types::{
    Content, FetchLimit, IdempotencyKey, MessageId, MessageIds, TokenDigest, UserId, Username,
};

/// One replicated write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// When the accepting node built the command, in milliseconds since the Unix epoch. Every
    /// time-dependent rule (session expiry, message timestamps) uses this value, never a clock.
    pub at_ms: i64,
    /// Makes the write exactly-once: a command whose key was applied before (by the same
    /// caller, for the same kind of write) returns the first outcome and changes nothing.
    pub idempotency_key: Option<IdempotencyKey>,
    /// What to do.
    pub action: Action,
}

impl Command {
    /// About how many bytes this command holds in memory: its variable parts (content,
    /// password hash, ids) plus a fixed amount for the rest. For memory budgets, not exact.
    pub fn approximate_bytes(&self) -> usize {
        const FIXED: usize = 192;
        let variable = match &self.action {
            Action::SignUp { password_hash, .. } => password_hash.len(),
            Action::SendMessage { content, .. } => content.as_str().len(),
            Action::DeleteMessages { ids, .. } => std::mem::size_of_val(ids.as_slice()),
            Action::CreateSession { .. }
            | Action::RevokeSession { .. }
            | Action::MarkDelivered { .. }
            | Action::DeleteAccount { .. }
            | Action::ResetAll { .. } => 0,
        };
        FIXED + variable
    }
}

/// The kinds of write. Actions that act for a user carry the digest of that user's session
/// token; the state machine checks the session at [`Command::at_ms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Create an account. `password_hash` is the finished argon2id PHC string.
    SignUp {
        /// The name, unique ignoring case.
        username: Username,
        /// argon2id PHC string of the credential the client sent.
        password_hash: String,
    },
    /// Open a session after the accepting node checked the password; revokes the user's
    /// other sessions.
    CreateSession {
        /// Whose session.
        user_id: UserId,
        /// SHA-256 of the token handed to the client.
        token_digest: TokenDigest,
        /// When the session stops being valid.
        expires_at_ms: i64,
    },
    /// Revoke a session (log out).
    RevokeSession {
        /// The session to revoke.
        session: TokenDigest,
    },
    /// Send a message to another account.
    SendMessage {
        /// The sender's session.
        session: TokenDigest,
        /// The recipient, resolved ignoring case.
        recipient: Username,
        /// The text.
        content: Content,
    },
    /// Mark the caller's oldest away messages delivered (fetching them).
    MarkDelivered {
        /// The caller's session.
        session: TokenDigest,
        /// How many at most.
        limit: FetchLimit,
    },
    /// Delete messages from the caller's inbox; ids that are not the caller's are ignored.
    DeleteMessages {
        /// The caller's session.
        session: TokenDigest,
        /// The messages.
        ids: MessageIds,
    },
    /// Delete the caller's account, sessions, and every message it sent or received. The
    /// accepting node checked the password again before building this.
    DeleteAccount {
        /// The caller's session.
        session: TokenDigest,
    },
    /// Delete every account, session and message (the prototype's `ResetDB`). The accepting
    /// node checked that the session belongs to its configured administrator. Id counters are
    /// kept, so ids are still never reused.
    ResetAll {
        /// The administrator's session.
        session: TokenDigest,
    },
}

impl Action {
    /// A stable name for logs and for the idempotency record.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SignUp { .. } => "sign_up",
            Self::CreateSession { .. } => "create_session",
            Self::RevokeSession { .. } => "revoke_session",
            Self::SendMessage { .. } => "send_message",
            Self::MarkDelivered { .. } => "mark_delivered",
            Self::DeleteMessages { .. } => "delete_messages",
            Self::DeleteAccount { .. } => "delete_account",
            Self::ResetAll { .. } => "reset_all",
        }
    }

    /// The session this action acts through, if any.
    pub fn session(&self) -> Option<&TokenDigest> {
        match self {
            Self::SignUp { .. } | Self::CreateSession { .. } => None,
            Self::RevokeSession { session }
            | Self::SendMessage { session, .. }
            | Self::MarkDelivered { session, .. }
            | Self::DeleteMessages { session, .. }
            | Self::DeleteAccount { session }
            | Self::ResetAll { session } => Some(session),
        }
    }

    /// Who may replay this action's remembered outcome: a retry must come from the same
    /// session (or, for sign-up, name the same account). `None` for actions whose outcome is
    /// not remembered: a repeated log-in opens a fresh session, because the token of the
    /// first one was never stored and cannot be handed out again.
    pub fn idempotency_scope(&self) -> Option<String> {
        match self {
            Self::SignUp { username, .. } => Some(format!("sign_up:{}", username.folded())),
            Self::CreateSession { .. } => None,
            _ => self
                .session()
                .map(|digest| format!("session:{}", digest.as_str())),
        }
    }
}

/// What an applied command did. Small on purpose: outcomes are remembered for retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// An account was created.
    SignedUp {
        /// The new account's id.
        user_id: UserId,
        /// Its name as given.
        username: Username,
    },
    /// A session was opened.
    SessionCreated {
        /// Whose.
        user_id: UserId,
        /// The account's name as given at sign-up.
        username: Username,
        /// When it expires.
        expires_at_ms: i64,
    },
    /// A session was revoked.
    SessionRevoked,
    /// A message was stored.
    MessageSent {
        /// Its id.
        id: MessageId,
        /// Its timestamp (the command's time).
        timestamp_ms: i64,
        /// Whether the recipient had a live session (delivered) or not (away).
        delivered: bool,
    },
    /// Away messages were marked delivered.
    Delivered {
        /// Which, oldest first.
        ids: Vec<MessageId>,
        /// Away messages left.
        remaining: u64,
    },
    /// Messages were deleted from an inbox.
    MessagesDeleted {
        /// How many.
        count: u64,
    },
    /// An account was deleted.
    AccountDeleted {
        /// How many messages went with it.
        messages_deleted: u64,
    },
    /// All chat state was cleared.
    Reset,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::types::SessionToken;

    fn digest() -> impl Strategy<Value = TokenDigest> {
        any::<[u8; 32]>().prop_map(|bytes| SessionToken::from_random_bytes(bytes).digest())
    }

    fn username() -> impl Strategy<Value = Username> {
        "[A-Za-z0-9_.-]{1,32}"
            .prop_map(|raw| Username::new(&raw).expect("generated names are valid"))
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (username(), ".{0,100}").prop_map(|(username, password_hash)| Action::SignUp {
                username,
                password_hash
            }),
            (any::<i64>(), digest(), any::<i64>()).prop_map(
                |(user, token_digest, expires_at_ms)| {
                    Action::CreateSession {
                        user_id: UserId(user),
                        token_digest,
                        expires_at_ms,
                    }
                }
            ),
            digest().prop_map(|session| Action::RevokeSession { session }),
            // Any Unicode text, quotes and control characters included.
            (
                digest(),
                username(),
                "\\PC{1,200}|[\"\\\\\u{0}-\u{1f}]{1,20}"
            )
                .prop_map(|(session, recipient, text)| {
                    Action::SendMessage {
                        session,
                        recipient,
                        content: Content::new(text, usize::MAX).expect("non-empty"),
                    }
                }),
            (digest(), 0..=1000i64).prop_map(|(session, limit)| Action::MarkDelivered {
                session,
                limit: FetchLimit::new(limit).expect("in range"),
            }),
            (digest(), proptest::collection::vec(1..i64::MAX, 1..50)).prop_map(|(session, ids)| {
                Action::DeleteMessages {
                    session,
                    ids: MessageIds::new(&ids).expect("valid ids"),
                }
            }),
            digest().prop_map(|session| Action::DeleteAccount { session }),
            digest().prop_map(|session| Action::ResetAll { session }),
        ]
    }

    proptest! {
        /// The replicated log stores commands encoded; decoding must give back exactly the
        /// command that was applied on the leader.
        #[test]
        fn commands_survive_encoding(
            at_ms in any::<i64>(),
            key in proptest::option::of("[A-Za-z0-9_.:-]{1,64}"),
            action in action(),
        ) {
            let command = Command {
                at_ms,
                idempotency_key: key.map(|k| IdempotencyKey::optional(&k).unwrap().unwrap()),
                action,
            };
            let encoded = serde_json::to_vec(&command).unwrap();
            let decoded: Command = serde_json::from_slice(&encoded).unwrap();
            prop_assert_eq!(decoded, command);
        }

        /// Remembered outcomes are stored encoded too.
        #[test]
        fn outcomes_survive_encoding(id in any::<i64>(), ids in proptest::collection::vec(any::<i64>(), 0..20), count in any::<u64>()) {
            for outcome in [
                Outcome::MessageSent { id: MessageId(id), timestamp_ms: id, delivered: count % 2 == 0 },
                Outcome::Delivered { ids: ids.iter().copied().map(MessageId).collect(), remaining: count },
                Outcome::MessagesDeleted { count },
                Outcome::AccountDeleted { messages_deleted: count },
                Outcome::Reset,
            ] {
                let decoded: Outcome = serde_json::from_str(&serde_json::to_string(&outcome).unwrap()).unwrap();
                prop_assert_eq!(decoded, outcome);
            }
        }
    }
}
