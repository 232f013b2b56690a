//! The state machine: [`apply`] turns a [`Command`] into changes of a [`ChatStore`].
//!
//! It answers retries from remembered outcomes, hands each kind of write to its
//! [`Operation`](crate::ops::Operation) (one file each in [`crate::ops`], where the rules
//! are), and remembers the outcome under the command's idempotency key. A refused command
//! changes nothing; nothing here reads a clock or a random source: the command carries its
//! time.

use crate::command::{Action, Command, Outcome};
use crate::error::ChatError;
use crate::limits::{
    IDEMPOTENCY_ENTRIES_MAX, IDEMPOTENCY_FORGET_CHUNK, IDEMPOTENCY_FORGET_SLACK_MS,
    IDEMPOTENCY_TTL_MS,
};
use crate::ops::run;
use crate::store::{ChatStore, Remembered};

/// Whether remembered outcomes are forgotten before a new one is remembered at `at_ms`, given
/// how many there are and the oldest one's time: when the store is full
/// ([`IDEMPOTENCY_ENTRIES_MAX`]; the oldest [`IDEMPOTENCY_FORGET_CHUNK`] then go at once), or
/// when the oldest has been kept [`IDEMPOTENCY_FORGET_SLACK_MS`] past its day (every expired
/// one then goes). Forgetting in groups keeps the write path off the key index's random pages.
/// An outcome is therefore kept at least one day unless the newest 99,000 crowd it out, and at
/// most a day and a minute.
fn forget_due(count: u64, oldest_ms: Option<i64>, at_ms: i64) -> bool {
    let overdue = at_ms
        .saturating_sub(IDEMPOTENCY_TTL_MS)
        .saturating_sub(IDEMPOTENCY_FORGET_SLACK_MS);
    count >= IDEMPOTENCY_ENTRIES_MAX || oldest_ms.is_some_and(|oldest| oldest < overdue)
}

/// Applies one command.
///
/// # Errors
/// The rule the command breaks (unknown session, name taken, unknown recipient, ...), or a
/// storage failure. In every case the store is unchanged.
pub fn apply<S: ChatStore + ?Sized>(
    store: &mut S,
    command: &Command,
) -> Result<Outcome, ChatError> {
    let scope = command.action.idempotency_scope();
    if let (Some(key), Some(scope)) = (&command.idempotency_key, &scope) {
        if let Some(first) = store.remembered(key)? {
            if first.scope == *scope && first.kind == command.action.kind() {
                return Ok(first.outcome);
            }
            return Err(ChatError::IdempotencyKeyReused);
        }
    }

    let at_ms = command.at_ms;
    let outcome = match &command.action {
        Action::SignUp(op) => run(op, store, at_ms)?,
        Action::CreateSession(op) => run(op, store, at_ms)?,
        Action::RevokeSession(op) => run(op, store, at_ms)?,
        Action::SendMessage(op) => run(op, store, at_ms)?,
        Action::MarkDelivered(op) => run(op, store, at_ms)?,
        Action::DeleteMessages(op) => run(op, store, at_ms)?,
        Action::DeleteAccount(op) => run(op, store, at_ms)?,
        Action::ResetAll(op) => run(op, store, at_ms)?,
        Action::ResetAnonymous(op) => run(op, store, at_ms)?,
    };

    if let (Some(key), Some(scope)) = (&command.idempotency_key, scope) {
        let (count, oldest_ms) = store.remembered_span()?;
        if forget_due(count, oldest_ms, at_ms) {
            store.forget_remembered(
                at_ms.saturating_sub(IDEMPOTENCY_TTL_MS),
                IDEMPOTENCY_ENTRIES_MAX - IDEMPOTENCY_FORGET_CHUNK,
            )?;
        }
        store.remember(
            key,
            &Remembered {
                scope,
                kind: command.action.kind().to_owned(),
                outcome: outcome.clone(),
                at_ms,
            },
        )?;
    }
    Ok(outcome)
}

pub use crate::ops::within_reply_budget;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::ops::*;
    use crate::store::ChatRead;
    use crate::types::{
        Content, FetchLimit, IdempotencyKey, MessageId, MessageIds, SessionToken, TokenDigest,
        UserId, Username,
    };

    const HOUR_MS: i64 = 3_600_000;

    fn command(at_ms: i64, action: Action) -> Command {
        Command {
            at_ms,
            idempotency_key: None,
            action,
        }
    }

    fn name(raw: &str) -> Username {
        Username::new(raw).expect("test names are valid")
    }

    fn sign_up(store: &mut MemoryStore, raw: &str) -> UserId {
        let outcome = apply(
            store,
            &command(
                1,
                Action::SignUp(SignUp {
                    username: name(raw),
                    password_hash: format!("hash-of-{raw}"),
                }),
            ),
        )
        .expect("sign-up succeeds");
        match outcome {
            Outcome::SignedUp(SignedUp { user_id, .. }) => user_id,
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn log_in(store: &mut MemoryStore, user_id: UserId, seed: u8, at_ms: i64) -> TokenDigest {
        let digest = SessionToken::from_random_bytes([seed; 32]).digest();
        apply(
            store,
            &command(
                at_ms,
                Action::CreateSession(CreateSession {
                    user_id,
                    token_digest: digest.clone(),
                    expires_at_ms: at_ms + HOUR_MS,
                }),
            ),
        )
        .expect("log-in succeeds");
        digest
    }

    fn send(
        store: &mut MemoryStore,
        session: &TokenDigest,
        to: &str,
        at_ms: i64,
    ) -> Result<Outcome, ChatError> {
        apply(
            store,
            &command(
                at_ms,
                Action::SendMessage(SendMessage {
                    session: session.clone(),
                    recipient: name(to),
                    content: Content::new("hello".into(), 100).expect("valid content"),
                }),
            ),
        )
    }

    #[test]
    fn names_are_unique_ignoring_case_and_a_refusal_changes_nothing() {
        let mut store = MemoryStore::new();
        sign_up(&mut store, "Alice");
        let before = store.dump().unwrap();
        let refused = apply(
            &mut store,
            &command(
                2,
                Action::SignUp(SignUp {
                    username: name("ALICE"),
                    password_hash: "h".into(),
                }),
            ),
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "username: \"Alice\" is already taken"
        );
        assert_eq!(store.dump().unwrap(), before);
    }

    #[test]
    fn messages_are_delivered_or_away_by_the_recipients_session() {
        let mut store = MemoryStore::new();
        let alice = sign_up(&mut store, "alice");
        let bob = sign_up(&mut store, "bob");
        let alice_session = log_in(&mut store, alice, 1, 10);

        // 1. Bob has no session: the message waits as away.
        let away = send(&mut store, &alice_session, "BOB", 20).unwrap();
        assert_eq!(
            away,
            Outcome::MessageSent(MessageSent {
                id: MessageId(1),
                timestamp_ms: 20,
                delivered: false
            })
        );
        assert_eq!(store.away_count(&name("bob")).unwrap(), 1);

        // 2. Bob logs in: the next message is delivered at once.
        let bob_session = log_in(&mut store, bob, 2, 30);
        let delivered = send(&mut store, &alice_session, "bob", 40).unwrap();
        assert!(matches!(
            delivered,
            Outcome::MessageSent(MessageSent {
                delivered: true,
                ..
            })
        ));

        // 3. Fetching marks the away one delivered.
        let fetched = apply(
            &mut store,
            &command(
                50,
                Action::MarkDelivered(MarkDelivered {
                    session: bob_session.clone(),
                    limit: FetchLimit::new(0).unwrap(),
                }),
            ),
        )
        .unwrap();
        assert_eq!(
            fetched,
            Outcome::Delivered(Delivered {
                ids: vec![MessageId(1)],
                remaining: 0
            })
        );

        // 4. After the session expires, messages are away again and the session is refused.
        let later = 30 + HOUR_MS;
        assert!(matches!(
            send(&mut store, &alice_session, "bob", later).unwrap_err(),
            ChatError::Unauthenticated(_)
        ));
    }

    #[test]
    fn a_new_login_revokes_the_old_session() {
        let mut store = MemoryStore::new();
        let alice = sign_up(&mut store, "alice");
        sign_up(&mut store, "bob");
        let first = log_in(&mut store, alice, 1, 10);
        let second = log_in(&mut store, alice, 2, 20);
        assert!(matches!(
            send(&mut store, &first, "bob", 30),
            Err(ChatError::Unauthenticated(_))
        ));
        assert!(send(&mut store, &second, "bob", 30).is_ok());
    }

    #[test]
    fn deleting_only_touches_the_callers_inbox() {
        let mut store = MemoryStore::new();
        let alice = sign_up(&mut store, "alice");
        let bob = sign_up(&mut store, "bob");
        let a = log_in(&mut store, alice, 1, 10);
        let b = log_in(&mut store, bob, 2, 10);
        send(&mut store, &a, "bob", 11).unwrap(); // id 1, bob's
        send(&mut store, &b, "alice", 12).unwrap(); // id 2, alice's
        let outcome = apply(
            &mut store,
            &command(
                13,
                Action::DeleteMessages(DeleteMessages {
                    session: b.clone(),
                    ids: MessageIds::new(&[1, 2, 99]).unwrap(),
                }),
            ),
        )
        .unwrap();
        assert_eq!(
            outcome,
            Outcome::MessagesDeleted(MessagesDeleted { count: 1 })
        );
        assert_eq!(
            crate::query::messages_by_ids(&store, &[MessageId(1), MessageId(2)])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn deleting_an_account_removes_its_sessions_and_messages_and_ids_are_not_reused() {
        let mut store = MemoryStore::new();
        let alice = sign_up(&mut store, "alice");
        let bob = sign_up(&mut store, "bob");
        sign_up(&mut store, "carol");
        let a = log_in(&mut store, alice, 1, 10);
        let b = log_in(&mut store, bob, 2, 10);
        send(&mut store, &a, "bob", 11).unwrap();
        send(&mut store, &b, "alice", 12).unwrap();
        send(&mut store, &b, "carol", 13).unwrap();
        let outcome = apply(
            &mut store,
            &command(
                14,
                Action::DeleteAccount(DeleteAccount { session: a.clone() }),
            ),
        )
        .unwrap();
        assert_eq!(
            outcome,
            Outcome::AccountDeleted(AccountDeleted {
                messages_deleted: 2
            })
        );
        let dump = store.dump().unwrap();
        assert_eq!(dump.users.len(), 2);
        assert_eq!(dump.sessions.len(), 1);
        assert_eq!(dump.messages.len(), 1);
        // A new account with the same name gets a fresh id.
        assert_eq!(sign_up(&mut store, "Alice"), UserId(4));
    }

    #[test]
    fn a_repeated_key_returns_the_first_outcome_and_writes_nothing() {
        let mut store = MemoryStore::new();
        let alice = sign_up(&mut store, "alice");
        sign_up(&mut store, "bob");
        let a = log_in(&mut store, alice, 1, 10);
        let key = IdempotencyKey::optional("retry-1").unwrap();
        let mut first = command(
            20,
            Action::SendMessage(SendMessage {
                session: a.clone(),
                recipient: name("bob"),
                content: Content::new("once".into(), 100).unwrap(),
            }),
        );
        first.idempotency_key = key.clone();
        let outcome = apply(&mut store, &first).unwrap();
        let mut retry = first.clone();
        retry.at_ms = 25;
        assert_eq!(apply(&mut store, &retry).unwrap(), outcome);
        assert_eq!(store.dump().unwrap().messages.len(), 1);

        // The same key for another kind of write is refused.
        let mut other = command(30, Action::RevokeSession(RevokeSession { session: a }));
        other.idempotency_key = key;
        assert_eq!(
            apply(&mut store, &other).unwrap_err(),
            ChatError::IdempotencyKeyReused
        );
    }

    #[test]
    fn forgetting_is_due_when_full_or_a_minute_past_the_day() {
        let day = IDEMPOTENCY_TTL_MS;
        let now = 10 * day;
        assert!(!forget_due(0, None, now));
        assert!(!forget_due(IDEMPOTENCY_ENTRIES_MAX - 1, Some(now), now));
        assert!(forget_due(IDEMPOTENCY_ENTRIES_MAX, Some(now), now));
        // Expired but within the slack: kept until the slack has passed too.
        assert!(!forget_due(5, Some(now - day - 1), now));
        assert!(!forget_due(
            5,
            Some(now - day - IDEMPOTENCY_FORGET_SLACK_MS),
            now
        ));
        assert!(forget_due(
            5,
            Some(now - day - IDEMPOTENCY_FORGET_SLACK_MS - 1),
            now
        ));
    }

    #[test]
    fn expired_outcomes_are_forgotten_together_once_the_slack_has_passed() {
        let mut store = MemoryStore::new();
        let alice = sign_up(&mut store, "alice");
        sign_up(&mut store, "bob");
        let keyed = |at_ms: i64, key: &str, session: &TokenDigest| Command {
            at_ms,
            idempotency_key: IdempotencyKey::optional(key).expect("test keys are valid"),
            action: Action::SendMessage(SendMessage {
                session: session.clone(),
                recipient: name("bob"),
                content: Content::new("hello".into(), 100).expect("valid content"),
            }),
        };
        let day = IDEMPOTENCY_TTL_MS;
        let session = log_in(&mut store, alice, 1, 0);
        apply(&mut store, &keyed(0, "k-0", &session)).unwrap();
        apply(&mut store, &keyed(10, "k-10", &session)).unwrap();
        // A day later (a new session: the first expired) both are still remembered.
        let session = log_in(&mut store, alice, 2, day + 20);
        apply(&mut store, &keyed(day + 20, "k-a", &session)).unwrap();
        assert_eq!(store.remembered_span().unwrap(), (3, Some(0)));
        // Past the slack, both expired ones go at once; the newer one stays.
        let late = day + IDEMPOTENCY_FORGET_SLACK_MS + 20;
        apply(&mut store, &keyed(late, "k-b", &session)).unwrap();
        assert_eq!(store.remembered_span().unwrap(), (2, Some(day + 20)));
        let key = IdempotencyKey::optional("k-0").unwrap().expect("a key");
        assert!(store.remembered(&key).unwrap().is_none());
    }
}
