//! The replicated command: the only way chat state changes.
//!
//! A [`Command`] is decided completely by the node that accepts the request: the time, the
//! finished argon2id hash, the session token's digest. Applying it (see [`crate::apply`]) is
//! then a pure function of the state and the command, so every replica that applies the same
//! log holds the same rows.

use serde::{Deserialize, Serialize};

use crate::ops::{
    AccountDeleted, CreateSession, DeleteAccount, DeleteMessages, Delivered, MarkDelivered,
    MessageSent, MessagesDeleted, ResetAll, ResetAnonymous, RevokeSession, SendMessage,
    SessionCreated, SignUp, SignedUp,
};
use crate::types::{IdempotencyKey, TokenDigest};

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
            Action::SignUp(op) => op.password_hash.len(),
            Action::SendMessage(op) => op.content.as_str().len(),
            Action::DeleteMessages(op) => std::mem::size_of_val(op.ids.as_slice()),
            Action::CreateSession(_)
            | Action::RevokeSession(_)
            | Action::MarkDelivered(_)
            | Action::DeleteAccount(_)
            | Action::ResetAll(_)
            | Action::ResetAnonymous(_) => 0,
        };
        FIXED + variable
    }
}

/// The kinds of write, one variant per [`Operation`](crate::ops::Operation) (the structs
/// live in [`crate::ops`], one file each). Actions that act for a user carry the digest of
/// that user's session token; the state machine checks the session at [`Command::at_ms`].
///
/// Encoded as serde's externally tagged form, `{"SendMessage": {"session": …}}`, the same
/// bytes as when the variants held their fields inline, so logs and remembered outcomes
/// written by earlier builds decode unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Create an account.
    SignUp(SignUp),
    /// Open a session after the accepting node checked the password.
    CreateSession(CreateSession),
    /// Revoke a session (log out).
    RevokeSession(RevokeSession),
    /// Send a message to another account.
    SendMessage(SendMessage),
    /// Mark the caller's oldest away messages delivered (fetching them).
    MarkDelivered(MarkDelivered),
    /// Delete messages from the caller's inbox.
    DeleteMessages(DeleteMessages),
    /// Delete the caller's account and everything of it.
    DeleteAccount(DeleteAccount),
    /// Delete every account, session and message (the prototype's `ResetDB`).
    ResetAll(ResetAll),
    /// Delete every account, session and message without a session (the socket
    /// prototype's `reset_db`, on a node started with `--allow-anonymous-reset`).
    ResetAnonymous(ResetAnonymous),
}

impl Action {
    /// A stable name for logs and for the idempotency record.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SignUp(_) => "sign_up",
            Self::CreateSession(_) => "create_session",
            Self::RevokeSession(_) => "revoke_session",
            Self::SendMessage(_) => "send_message",
            Self::MarkDelivered(_) => "mark_delivered",
            Self::DeleteMessages(_) => "delete_messages",
            Self::DeleteAccount(_) => "delete_account",
            Self::ResetAll(_) => "reset_all",
            Self::ResetAnonymous(_) => "reset_anonymous",
        }
    }

    /// The session this action acts through, if any.
    pub fn session(&self) -> Option<&TokenDigest> {
        match self {
            Self::SignUp(_) | Self::CreateSession(_) | Self::ResetAnonymous(_) => None,
            Self::RevokeSession(RevokeSession { session })
            | Self::SendMessage(SendMessage { session, .. })
            | Self::MarkDelivered(MarkDelivered { session, .. })
            | Self::DeleteMessages(DeleteMessages { session, .. })
            | Self::DeleteAccount(DeleteAccount { session })
            | Self::ResetAll(ResetAll { session }) => Some(session),
        }
    }

    /// Who may replay this action's remembered outcome: a retry must come from the same
    /// session (or, for sign-up, name the same account). `None` for actions whose outcome is
    /// not remembered: a repeated log-in opens a fresh session, because the token of the
    /// first one was never stored and cannot be handed out again.
    pub fn idempotency_scope(&self) -> Option<String> {
        let by_session = |session: &TokenDigest| Some(format!("session:{}", session.as_str()));
        match self {
            Self::SignUp(op) => Some(format!("sign_up:{}", op.username.folded())),
            Self::CreateSession(_) => None,
            Self::ResetAnonymous(_) => Some("reset_anonymous".to_owned()),
            Self::RevokeSession(RevokeSession { session })
            | Self::SendMessage(SendMessage { session, .. })
            | Self::MarkDelivered(MarkDelivered { session, .. })
            | Self::DeleteMessages(DeleteMessages { session, .. })
            | Self::DeleteAccount(DeleteAccount { session })
            | Self::ResetAll(ResetAll { session }) => by_session(session),
        }
    }
}

/// What an applied command did: one variant per kind of write, holding that kind's
/// [`Operation::Output`](crate::ops::Operation::Output) (none for the two that answer
/// nothing). Small on purpose: outcomes are remembered for retries. Encoded like
/// [`Action`], the same bytes as when the variants held their fields inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// An account was created.
    SignedUp(SignedUp),
    /// A session was opened.
    SessionCreated(SessionCreated),
    /// A session was revoked.
    SessionRevoked,
    /// A message was stored.
    MessageSent(MessageSent),
    /// Away messages were marked delivered.
    Delivered(Delivered),
    /// Messages were deleted from an inbox.
    MessagesDeleted(MessagesDeleted),
    /// An account was deleted.
    AccountDeleted(AccountDeleted),
    /// All chat state was cleared.
    Reset,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::types::{
        Content, FetchLimit, MessageId, MessageIds, SessionToken, UserId, Username,
    };

    fn digest() -> impl Strategy<Value = TokenDigest> {
        any::<[u8; 32]>().prop_map(|bytes| SessionToken::from_random_bytes(bytes).digest())
    }

    fn username() -> impl Strategy<Value = Username> {
        "[A-Za-z0-9_.-]{1,32}"
            .prop_map(|raw| Username::new(&raw).expect("generated names are valid"))
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (username(), ".{0,100}").prop_map(|(username, password_hash)| Action::SignUp(SignUp {
                username,
                password_hash
            })),
            (any::<i64>(), digest(), any::<i64>()).prop_map(
                |(user, token_digest, expires_at_ms)| {
                    Action::CreateSession(CreateSession {
                        user_id: UserId(user),
                        token_digest,
                        expires_at_ms,
                    })
                }
            ),
            digest().prop_map(|session| Action::RevokeSession(RevokeSession { session })),
            // Any Unicode text, quotes and control characters included.
            (
                digest(),
                username(),
                "\\PC{1,200}|[\"\\\\\u{0}-\u{1f}]{1,20}"
            )
                .prop_map(|(session, recipient, text)| {
                    Action::SendMessage(SendMessage {
                        session,
                        recipient,
                        content: Content::new(text, usize::MAX).expect("non-empty"),
                    })
                }),
            (digest(), 0..=1000i64).prop_map(|(session, limit)| Action::MarkDelivered(
                MarkDelivered {
                    session,
                    limit: FetchLimit::new(limit).expect("in range"),
                }
            )),
            (digest(), proptest::collection::vec(1..i64::MAX, 1..50)).prop_map(|(session, ids)| {
                Action::DeleteMessages(DeleteMessages {
                    session,
                    ids: MessageIds::new(&ids).expect("valid ids"),
                })
            }),
            digest().prop_map(|session| Action::DeleteAccount(DeleteAccount { session })),
            digest().prop_map(|session| Action::ResetAll(ResetAll { session })),
            Just(Action::ResetAnonymous(ResetAnonymous {})),
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
                Outcome::MessageSent(MessageSent { id: MessageId(id), timestamp_ms: id, delivered: count % 2 == 0 }),
                Outcome::Delivered(Delivered { ids: ids.iter().copied().map(MessageId).collect(), remaining: count }),
                Outcome::MessagesDeleted(MessagesDeleted { count }),
                Outcome::AccountDeleted(AccountDeleted { messages_deleted: count }),
                Outcome::Reset,
            ] {
                let decoded: Outcome = serde_json::from_str(&serde_json::to_string(&outcome).unwrap()).unwrap();
                prop_assert_eq!(decoded, outcome);
            }
        }
    }

    /// Logs and remembered outcomes written by earlier builds, whose variants held their
    /// fields inline, decode to the same values, and new ones encode to the same bytes.
    #[test]
    fn the_encoding_is_the_one_earlier_builds_wrote() {
        let session = SessionToken::from_random_bytes([7; 32]).digest();
        let command = Command {
            at_ms: 5,
            idempotency_key: IdempotencyKey::optional("k-1").unwrap(),
            action: Action::SendMessage(SendMessage {
                session: session.clone(),
                recipient: Username::new("bob").unwrap(),
                content: Content::new("hi".into(), 100).unwrap(),
            }),
        };
        let earlier = format!(
            r#"{{"at_ms":5,"idempotency_key":"k-1","action":{{"SendMessage":{{"session":"{}","recipient":"bob","content":"hi"}}}}}}"#,
            session.as_str()
        );
        assert_eq!(serde_json::to_string(&command).unwrap(), earlier);
        assert_eq!(serde_json::from_str::<Command>(&earlier).unwrap(), command);
        let outcomes = [
            (
                Outcome::MessageSent(MessageSent {
                    id: MessageId(3),
                    timestamp_ms: 9,
                    delivered: true,
                }),
                r#"{"MessageSent":{"id":3,"timestamp_ms":9,"delivered":true}}"#,
            ),
            (Outcome::SessionRevoked, r#""SessionRevoked""#),
            (Outcome::Reset, r#""Reset""#),
            (
                Outcome::Delivered(Delivered {
                    ids: vec![MessageId(1)],
                    remaining: 2,
                }),
                r#"{"Delivered":{"ids":[1],"remaining":2}}"#,
            ),
        ];
        for (outcome, earlier) in outcomes {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), earlier);
            assert_eq!(serde_json::from_str::<Outcome>(earlier).unwrap(), outcome);
        }
    }
}
